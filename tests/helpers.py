"""Shared test helpers: the tiny run configs several test modules train, and the golden values."""

import fcntl
import importlib.util
import json
import os
import pathlib
import shutil
import socket

import pytest

from aejax import configs

# Final metrics recorded with the version before the package was layered (see
# tests/fixtures/golden_metrics.json). Float32 sums over the same data in the same order;
# another CPU's XLA build may fuse and vectorise them differently, hence a relative tolerance.
GOLDEN = json.loads(
  (pathlib.Path(__file__).parent / "fixtures" / "golden_metrics.json").read_text()
)
GOLDEN_REL = 1e-4


def assert_golden(got: dict, want: dict) -> None:
  """`got` final metrics equal the recorded `want`, name by name."""
  assert got.keys() == want.keys()
  for name, value in want.items():
    assert got[name] == pytest.approx(value, rel=GOLDEN_REL, abs=1e-5), name


def tiny_digits_config(total_steps: int | None = None, **model):
  """A seconds-long dense VAE run on the embedded digits; `model` overrides config.model fields.

  With total_steps, the run evaluates and checkpoints once, at the end.
  """
  c = configs.default_config()
  c.data.name = "digits"
  c.model.name = "dense_vae"
  c.model.latent_dim = 2
  c.model.hidden_widths = (64,)
  for k, v in model.items():
    c.model[k] = v
  c = configs.make_tiny(c)
  c.final_figures = False
  if total_steps is not None:
    c.total_steps = c.eval_every_steps = c.checkpoint_every_steps = total_steps
  return c


def read_tensorboard(logdir) -> dict:
  """Every run under `logdir` as TensorBoard itself reads it (its event multiplexer).

  Returns {run: {"scalars": {tag: [(step, value)]}, "images": {tag: [(step, width, height)]},
  "hparams": {name: value} of the run's HParams session, "hparams_metrics": [metric tags]}}.
  """
  from tensorboard.backend.event_processing import event_multiplexer
  from tensorboard.plugins.hparams import plugin_data_pb2

  # 0: keep every event (the default samples images and scalars).
  mux = event_multiplexer.EventMultiplexer(size_guidance={"images": 0, "scalars": 0})
  mux.AddRunsFromDirectory(str(logdir))
  mux.Reload()
  runs = {}
  for run, tags in mux.Runs().items():
    out = {
      "scalars": {t: [(e.step, e.value) for e in mux.Scalars(run, t)] for t in tags["scalars"]},
      "images": {
        t: [(e.step, e.width, e.height) for e in mux.Images(run, t)] for t in tags["images"]
      },
      "hparams": {},
      "hparams_metrics": [],
    }
    for content in mux.PluginRunToTagToContent("hparams").get(run, {}).values():
      data = plugin_data_pb2.HParamsPluginData.FromString(content)
      if data.HasField("session_start_info"):
        for name, value in data.session_start_info.hparams.items():
          out["hparams"][name] = getattr(value, value.WhichOneof("kind"))
      if data.HasField("experiment"):
        out["hparams_metrics"] = [m.name.tag for m in data.experiment.metric_infos]
    runs[run] = out
  return runs


def built_once(tmp_path_factory, name: str, build) -> pathlib.Path:
  """The folder `name` that `build(folder)` fills, built once per test session.

  With pytest-xdist each worker has its own module fixtures, so an expensive one (a trained
  run, executed notebooks) would be built by every worker whose tests use it. The workers'
  temporary folders share a parent: the first worker to get there builds the folder under a
  lock while the others wait, and then they all read it. Tests must not change it.
  """
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent
  folder = root / name
  with open(root / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (folder / ".built").exists():
      shutil.rmtree(folder, ignore_errors=True)
      folder.mkdir()
      build(folder)
      (folder / ".built").touch()
  return folder


def free_port() -> int:
  """A TCP port on localhost that nothing listens on now (for a coordinator or a server)."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def load_script(name: str):
  """scripts/NAME.py as a module (scripts/ is not a package)."""
  path = pathlib.Path(__file__).resolve().parent.parent / "scripts" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
