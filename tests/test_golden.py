"""Today's code against numbers and a workdir recorded before the package was layered.

tests/fixtures/golden_metrics.json holds final metrics of runs made with the
version before the restructuring; tests/fixtures/workdir_before_layers is a
workdir that version wrote (a tiny dense VAE, finished at step 8). A
restructuring that changes what a run computes, or stops reading old
workdirs, fails here.
"""

import copy
import json
import pathlib
import shutil

import pytest
from helpers import tiny_digits_config

import aejax
from aejax import configs, train

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
GOLDEN = json.loads((FIXTURES / "golden_metrics.json").read_text())
# Float32 sums over the same data in the same order; another CPU's XLA build may fuse and
# vectorise them differently, hence a relative tolerance rather than bitwise equality.
REL = 1e-4


def _assert_metrics(got: dict, want: dict) -> None:
  assert got.keys() == want.keys()
  for name, value in want.items():
    assert got[name] == pytest.approx(value, rel=REL, abs=1e-5), name


def _quickstart_tiny():
  c = configs.default_config()
  c.data.name, c.model.name, c.model.latent_dim = "digits", "dense_vae", 2
  c.model.hidden_widths = (256,)
  c.batch_size, c.eval_batch_size, c.num_figure_images = 64, 360, 12
  configs.make_tiny(c)
  c.final_figures = False
  return c


def test_quickstart_tiny_gives_the_recorded_final_metrics(tmp_path):
  train.train_and_evaluate(_quickstart_tiny(), str(tmp_path))
  got = json.loads((tmp_path / "final_metrics.json").read_text())
  _assert_metrics(got, GOLDEN["quickstart_tiny"])


def test_a_vmapped_group_gives_the_recorded_final_metrics(tmp_path):
  base = tiny_digits_config(total_steps=8)
  base.objective.kl_warmup_steps = 4
  group = []
  for seed, beta, learning_rate in ((0, 1.0, 1e-3), (1, 1.0, 1e-3), (2, 4.0, 3e-3)):
    c = copy.deepcopy(base)
    c.seed, c.objective.beta, c.optimizer.learning_rate = seed, beta, learning_rate
    group.append(c)
  dirs = [tmp_path / f"m{i}" for i in range(len(group))]
  train.train_population(group, dirs)
  for d, want in zip(dirs, GOLDEN["group"], strict=True):
    _assert_metrics(json.loads((d / "final_metrics.json").read_text()), want)


def test_a_workdir_of_the_earlier_version_loads_and_resumes(tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(FIXTURES / "workdir_before_layers", workdir)
  loaded = aejax.load(workdir)
  assert loaded.step == 8 and loaded.image_shape == (8, 8, 1)
  c = tiny_digits_config(total_steps=16)
  c.eval_every_steps = c.checkpoint_every_steps = 8
  train.train_and_evaluate(c, str(workdir))
  # Resumed at step 8 and trained on: exactly the metrics of an uninterrupted 16-step run.
  got = json.loads((workdir / "final_metrics.json").read_text())
  _assert_metrics(got, GOLDEN["fixture_resumed_to_16"])
  assert (workdir / "checkpoints" / "16").is_dir()
