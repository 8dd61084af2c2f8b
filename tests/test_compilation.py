"""--compilation_cache_dir: a second process with the same programs (another seed, beta or
learning rate) loads them from JAX's persistent cache instead of compiling."""

import pathlib
import re
import subprocess
import sys

from aejax import compilation

ROOT = pathlib.Path(__file__).resolve().parent.parent
RUN = [
  "--config=experiments/quickstart.py:tiny",
  "--config.total_steps=8",
  "--config.final_figures=False",
]
USE = re.compile(r"compilation cache (\S+): (\d+) programs loaded, (\d+) compiled and saved")


def _train(workdir, cache, *overrides) -> tuple[int, int]:
  """(programs loaded, programs compiled) of one CLI run."""
  done = subprocess.run(
    [sys.executable, "-m", "aejax.main", *RUN, *overrides, f"--workdir={workdir}"]
    + [f"--compilation_cache_dir={cache}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  (use,) = USE.findall(done.stderr)
  assert use[0] == str(cache)
  return int(use[1]), int(use[2])


def test_a_second_process_with_another_seed_beta_and_learning_rate_compiles_nothing(tmp_path):
  cache = tmp_path / "cache"
  loaded, compiled = _train(tmp_path / "first", cache)
  assert loaded == 0 and compiled > 10  # The step, evaluation, figures' programs, ...
  saved = len(list(cache.iterdir()))
  assert saved >= compiled
  other = [
    "--config.seed=7",
    "--config.objective.beta=2.0",
    "--config.optimizer.learning_rate=0.003",
  ]
  loaded, compiled_again = _train(tmp_path / "second", cache, *other)
  assert (loaded, compiled_again) == (compiled, 0)
  assert len(list(cache.iterdir())) == saved


def test_no_folder_and_no_variable_is_no_cache(monkeypatch):
  monkeypatch.delenv(compilation.ENV_VAR, raising=False)
  assert compilation.use_cache(None) is None
  assert compilation.use_cache("") is None


def test_without_the_flag_the_variable_is_used_as_jax_uses_it(monkeypatch):
  monkeypatch.setenv(compilation.ENV_VAR, "/some/folder")
  assert compilation.use_cache(None) == "/some/folder"
