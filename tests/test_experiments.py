"""Every experiment config loads, and its `:tiny` variant trains end to end with its outputs."""

import contextlib
import importlib.util
import json
import math
import pathlib
import re
import subprocess
import sys

import PIL.Image
import pytest
from helpers import GOLDEN, assert_golden, read_tensorboard

from aejax import configs, data, errors, metrics, train, visualize

ROOT = pathlib.Path(__file__).resolve().parent.parent
# experiments/__init__.py makes the folder the installed package aejax.experiments; not a config.
EXPERIMENTS = sorted(p for p in (ROOT / "experiments").glob("*.py") if p.stem != "__init__")
# The model zoo's experiments (experiments/zoo/): checked here, trained by tests/test_zoo.py.
ZOO_EXPERIMENTS = sorted(
  p for p in (ROOT / "experiments" / "zoo").glob("*.py") if p.stem != "__init__"
)
REQUIRED = {
  "quickstart",
  "lesson_conv_ae",
  "lesson_vae",
  "conv_vae",
  "denoise",
  "superres",
  "flax_vae_parity",
  "cvae",
  "pca_vs_ae",
}


def load_experiment(path: pathlib.Path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_required_experiments_exist():
  assert REQUIRED <= {p.stem for p in EXPERIMENTS}


def _id(path: pathlib.Path) -> str:
  return path.relative_to(ROOT / "experiments").with_suffix("").as_posix()


@pytest.mark.parametrize("path", EXPERIMENTS + ZOO_EXPERIMENTS, ids=_id)
def test_config_loads_and_validates(path):
  module = load_experiment(path)
  doc = module.__doc__ or ""
  for word in ("What:", "Expected:", "Runtime:", "Command:"):
    assert word in doc, f"{path.name} docstring lacks {word!r}"
  # Full configs must run on one device (Burda et al.'s batch 20 does not split over 8);
  # tiny ones run in the tests, on 8.
  for arg, num_devices in ((None, 1), ("tiny", 8)):
    c = module.get_config(arg)
    run = c.ae if c.get("ae") is not None else c  # pca_vs_ae wraps the config of its AE runs.
    configs.validate(run, num_devices=num_devices)
    assert c.seed == 0 and run.batch_size > 0 and (run.num_epochs > 0 or run.total_steps > 0)
  with pytest.raises(errors.ConfigError, match="unknown"):
    module.get_config("tiny,nonsense")


# pca_vs_ae.py configures a comparison of several runs, not one run; test_pca_vs_ae.py runs it.
SINGLE_RUN_EXPERIMENTS = [p for p in EXPERIMENTS if p.stem != "pca_vs_ae"]


@pytest.mark.parametrize("path", SINGLE_RUN_EXPERIMENTS, ids=lambda p: p.stem)
def test_tiny_variant_trains_end_to_end(path, tmp_path, data_dir, monkeypatch):
  c = load_experiment(path).get_config("tiny")
  c.data.data_dir = str(data_dir)
  with contextlib.ExitStack() as stack:
    if c.data.source == "tfds":
      # No internet here: tfds's mock data stands in for the download (random images of the
      # data set's real shape), as in the flax examples' tests.
      import tensorflow_datasets as tfds

      monkeypatch.setattr(data, "_network_available", lambda *a, **k: True)
      stack.enter_context(tfds.testing.mock_data(num_examples=c.data.train_limit))
    train.train_and_evaluate(c, str(tmp_path))
    # What the training CLI does next: the final figures and task metrics.
    visualize.finalize(tmp_path)
  last_eval = [r for r in metrics.read_metrics(tmp_path) if "eval/loss" in r][-1]
  assert last_eval["step"] == c.total_steps
  if path.stem == "quickstart":
    # The same numbers as the version before the package was layered (tests/test_golden.py).
    assert_golden(
      json.loads((tmp_path / "final_metrics.json").read_text()), GOLDEN["quickstart_tiny"]
    )
  assert math.isfinite(last_eval["eval/loss"]) and math.isfinite(last_eval["eval/bce_per_pixel"])
  assert (tmp_path / "checkpoints" / str(c.total_steps)).is_dir()
  expected = {
    "config.json",
    "reconstructions.png",
    "curves.png",
    "interpolation.png",
    "latent_noise.png",
    "traversals.png",
  }
  if json.loads((tmp_path / "run_info.json").read_text())["has_labels"]:
    expected.add("latent_scatter.png")
  if c.model.latent_dim == 2:
    expected.add("latent_grid.png")
  if c.model.num_classes:
    expected.add("class_grid.png")
  if c.model.name.endswith("vae"):
    expected.add("samples.png")
  if c.task.name in ("denoise", "superres"):
    expected |= {"task_metrics.json", "task_metrics.md"}
  if c.task.name == "superres":
    expected.add("superres_from_noise.png")
  assert expected <= {p.name for p in tmp_path.iterdir()}
  # TensorBoard, read back with its own reader: the scalars, the pictures of every evaluation,
  # and the final pictures at the last step, each the size of its PNG.
  board = read_tensorboard(tmp_path / "tensorboard")["."]
  eval_steps = [r["step"] for r in metrics.read_metrics(tmp_path) if "eval/loss" in r]
  assert [step for step, _ in board["scalars"]["eval/loss"]] == eval_steps
  assert board["scalars"]["eval/loss"][-1][1] == pytest.approx(last_eval["eval/loss"])
  assert [step for step, *_ in board["images"]["figures/reconstructions"]] == eval_steps
  pngs = {p.stem for p in tmp_path.glob("*.png")} - {"curves"}
  assert {tag.removeprefix("figures/") for tag in board["images"]} == pngs
  for tag, events in board["images"].items():
    step, width, height = events[-1]
    with PIL.Image.open(tmp_path / f"{tag.removeprefix('figures/')}.png") as png:
      assert (step, width, height) == (c.total_steps, *png.size), tag


def _cli(*args, timeout=300):
  return subprocess.run(
    [sys.executable, "-m", "aejax.main", *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def test_cli_runs_with_overrides(tmp_path):
  result = _cli(
    "--config=experiments/quickstart.py:tiny",
    f"--workdir={tmp_path}",
    "--config.seed=3",
    "--config.model.latent_dim=3",
    # Mixed precision from the command line: bf16 compute, float32 parameters.
    "--config.model.dtype=bfloat16",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  # The log starts with what a reader needs: the devices, then model, data, steps and the
  # workdir; JAX's probes of backends this machine lacks (TPU, GPU plug-ins) are not in it.
  lines = result.stderr.splitlines()
  assert "training on 8 cpu devices" in lines[0], lines[:3]
  assert re.search(
    r"dense_vae on digits/digits: .* 16 steps .* workdir " + re.escape(str(tmp_path)), lines[1]
  )
  assert "Unable to initialize backend" not in result.stderr
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["seed"] == 3 and saved["model"]["latent_dim"] == 3
  assert saved["model"]["dtype"] == "bfloat16"
  final = json.loads((tmp_path / "final_metrics.json").read_text())
  assert math.isfinite(final["eval/loss"])
  assert (tmp_path / "samples.png").exists()
  # The CLI finalizes the run after training: the latent figures of the trained model.
  assert (tmp_path / "latent_noise.png").exists() and (tmp_path / "interpolation.png").exists()


# The program each experiment's docstring names, and the kind of config that program runs.
PROGRAMS = {
  "python -m aejax.main": configs.TRAIN_COMMAND,
  "python scripts/sweep.py": configs.TRAIN_COMMAND,
  "python -m aejax.pca_vs_ae": configs.PCA_VS_AE_COMMAND,
}


@pytest.mark.parametrize("path", EXPERIMENTS + ZOO_EXPERIMENTS, ids=_id)
def test_docstring_command_is_the_program_that_runs_the_config(path):
  module = load_experiment(path)
  command = " ".join(module.__doc__.split("Command:", 1)[1].replace("\\\n", " ").split())
  program = next((p for p in PROGRAMS if p in command), None)
  assert program is not None, f"{path.name}: its command names none of {list(PROGRAMS)}"
  assert f"--config=experiments/{_id(path)}.py" in command
  assert configs.command_for(module.get_config("tiny")) == PROGRAMS[program]


@pytest.mark.parametrize(
  "program,config",
  [
    (["-m", "aejax.main"], "pca_vs_ae.py:tiny"),
    (["scripts/sweep.py"], "pca_vs_ae.py:tiny"),
    (["-m", "aejax.pca_vs_ae"], "quickstart.py:tiny"),
  ],
  ids=["main-given-pca_vs_ae", "sweep-given-pca_vs_ae", "pca_vs_ae-given-quickstart"],
)
def test_experiment_given_to_the_wrong_program_names_the_right_one(program, config, tmp_path):
  flag = "--sweep_dir" if "sweep" in program[0] else "--workdir"
  result = subprocess.run(
    [sys.executable, *program, f"--config=experiments/{config}", f"{flag}={tmp_path / 'out'}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 2, result.stderr[-3000:]
  right = "aejax.pca_vs_ae" if "pca_vs_ae.py" in config else "aejax.main"
  assert f"run: python -m {right} --config=experiments/{config} --workdir=DIR" in result.stderr
  assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_cli_bad_config_is_one_clear_line(tmp_path):
  result = _cli(
    "--config=experiments/quickstart.py:tiny", f"--workdir={tmp_path}", "--config.model.name=resnet"
  )
  assert result.returncode == 2
  assert "config.model.name: unknown model 'resnet'; valid: dense_ae" in result.stderr
  assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
  "entry,flag",
  [("aejax.main:run", "--workdir"), ("aejax.sweep:cli", "--sweep_dir")],
  ids=["aejax-train", "aejax-sweep"],
)
def test_console_scripts_list_their_flags_in_help(entry, flag):
  # What pip's launcher does: argv[0] is the script's name, the entry point is called.
  module, function = entry.split(":")
  launcher = f"import sys; sys.argv[0] = 'launcher'; from {module} import {function}; {function}()"
  result = subprocess.run(
    [sys.executable, "-c", launcher, "--help"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  # absl exits 1 after --help.
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert f"  {flag}:" in result.stdout, result.stdout[-2000:]
