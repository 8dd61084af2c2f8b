"""A workdir written before the package was layered still loads and resumes.

tests/fixtures/workdir_before_layers is a workdir that version wrote (a tiny
dense VAE, finished at step 8). The final metrics recorded with that version
(tests/fixtures/golden_metrics.json) are checked here and where the same runs
are trained anyway: quickstart:tiny in tests/test_experiments.py, a vmapped
group in tests/test_population.py.
"""

import json
import pathlib
import shutil

from helpers import GOLDEN, assert_golden, tiny_digits_config

import aejax
from aejax import train

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


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
  assert_golden(got, GOLDEN["fixture_resumed_to_16"])
  assert (workdir / "checkpoints" / "16").is_dir()
