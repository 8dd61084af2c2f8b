"""aejax as a built wheel (what `pip install .` installs): the experiments travel with it.

The wheel is built offline from a copy of the sources (no build folder in the checkout),
installed into a folder of its own, and run from a folder without experiments/.
"""

import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "aejax", "experiments")


def _run(args, cwd, env=None, ok=(0,), timeout=600):
  result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
  assert result.returncode in ok, f"{args}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
  return result


def test_wheel_ships_the_experiments_and_runs_the_quickstart_from_anywhere(tmp_path):
  source = tmp_path / "source"
  source.mkdir()
  for name in SOURCES:
    path = ROOT / name
    if path.is_dir():
      shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    elif path.exists():
      shutil.copy(path, source / name)
  pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
  # Offline: the build backend of this environment, no dependencies fetched.
  _run(
    [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), "."], source
  )
  (wheel,) = (tmp_path / "dist").glob("aejax-*.whl")
  with zipfile.ZipFile(wheel) as archive:
    names = set(archive.namelist())
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = archive.read(entry_points).decode()
  experiments = {p.name for p in (ROOT / "experiments").glob("*.py")}
  assert {f"aejax/experiments/{name}" for name in experiments} <= names
  assert "aejax-train = aejax.main:run" in scripts and "aejax-sweep = aejax.sweep:cli" in scripts

  site = tmp_path / "site"
  _run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], tmp_path)
  env = {**os.environ, "PYTHONPATH": str(site)}
  elsewhere = tmp_path / "elsewhere"  # A working folder without experiments/.
  elsewhere.mkdir()
  where = _run(
    [sys.executable, "-c", "import aejax.experiments as e; print(e.__file__)"], elsewhere, env
  )
  assert pathlib.Path(where.stdout.strip()).is_relative_to(site)  # The installed copy, not ours.

  train = site / "bin" / "aejax-train"
  help_text = _run([str(train), "--help"], elsewhere, env, ok=(0, 1)).stdout  # absl's --help: 1.
  assert "--workdir" in help_text and "--config" in help_text
  workdir = elsewhere / "runs" / "quickstart"
  _run(
    [str(train), "--config=experiments/quickstart.py:tiny", f"--workdir={workdir}"], elsewhere, env
  )
  final = json.loads((workdir / "final_metrics.json").read_text())
  assert math.isfinite(final["eval/loss"]) and (workdir / "latent_grid.png").is_file()
