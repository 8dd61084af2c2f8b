"""docs/extending.md stays true: its complete model file trains through the CLI and loads."""

import json
import math
import os
import pathlib
import re
import subprocess
import sys

import numpy as np

import aejax

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "extending.md"


def test_the_documented_model_file_trains_by_import_path_and_loads(tmp_path, monkeypatch):
  text = DOC.read_text()
  section = text[text.index("## A complete model file") :]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  (tmp_path / "l1_ae.py").write_text(code)
  workdir = tmp_path / "run"
  env = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
  }
  result = subprocess.run(
    [sys.executable, "-m", "aejax.main", "--config=experiments/quickstart.py:tiny",
     f"--workdir={workdir}", "--config.model.name=l1_ae:build",
     "--config.model.latent_dim=4", "--config.objective.beta=0.01",
     "--config.final_figures=false"],
    cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  assert result.returncode == 0, result.stderr[-3000:]
  final = json.loads((workdir / "final_metrics.json").read_text())
  assert math.isfinite(final["eval/l1"]) and final["eval/l1"] > 0
  want = final["eval/recon"] + 0.01 * final["eval/l1"]
  assert math.isclose(final["eval/loss"], want, rel_tol=1e-5)
  monkeypatch.syspath_prepend(str(tmp_path))
  model = aejax.load(workdir, trust_model_code=True)
  images = np.random.default_rng(0).uniform(size=(3, 8, 8, 1)).astype(np.float32)
  assert model.encode(images).shape == (3, 4)
