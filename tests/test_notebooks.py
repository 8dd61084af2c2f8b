"""The notebooks in notebooks/ run top to bottom (small settings) and show what their text promises.

Each is executed once per session (also under pytest-xdist: helpers.built_once) with
scripts/run_notebooks.py's `execute_notebook`, in a python3 kernel of this interpreter, with
AEJAX_NOTEBOOK_SMALL=1 and its runs in a temporary folder (AEJAX_NOTEBOOK_RUNS).
"""

import json
import math
import os
import pathlib
import re
import sys

import nbformat
import pytest
from helpers import built_once, load_script

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = ROOT / "notebooks"


run_notebooks = load_script("run_notebooks")


def _kernel_env(data_dir) -> dict:
  """This process's environment for the kernels, less the 8 fake devices of conftest.py: the
  notebooks should run as they do for a reader, on one CPU device."""
  env = dict(os.environ, AEJAX_DATA_DIR=str(data_dir))
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
  env["XLA_FLAGS"] = flags.strip()
  return env


def _executed(tmp_path_factory, data_dir, name: str):
  """Notebook `name` executed, once per session: (the executed notebook, the folder it trained
  in)."""

  def build(out):
    run_notebooks.execute_notebook(
      NOTEBOOKS_DIR / f"{name}.ipynb",
      out / f"{name}.ipynb",
      small=True,
      runs_dir=out / "runs",
      env=_kernel_env(data_dir),
    )

  out = built_once(tmp_path_factory, f"notebook_{name}", build)
  return nbformat.read(out / f"{name}.ipynb", as_version=4), out / "runs"


def _outputs(nb, cell_text: str) -> list:
  """The outputs of the one code cell whose source contains `cell_text`."""
  cells = [c for c in nb.cells if c.cell_type == "code" and cell_text in c.source]
  assert len(cells) == 1, f"{len(cells)} code cells contain {cell_text!r}"
  return cells[0].outputs


def _pngs(outputs) -> int:
  return sum("image/png" in o.get("data", {}) for o in outputs)


def _text(outputs) -> str:
  return "".join(o.get("text", "") for o in outputs if o.output_type == "stream")


@pytest.mark.parametrize("name", run_notebooks.NOTEBOOKS)
def test_committed_notebooks_carry_no_outputs(name):
  nb = nbformat.read(NOTEBOOKS_DIR / f"{name}.ipynb", as_version=4)
  nbformat.validate(nb)
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]


def test_kernel_is_this_python(tmp_path):
  nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.prefix)")])
  run_notebooks.execute(nb, tmp_path)
  assert _text(nb.cells[0].outputs).strip() == sys.prefix


def test_cell_error_fails_the_run(tmp_path, monkeypatch):
  """A cell that raises: the executed copy is still written (with the error), and exit status 1."""
  cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("raise ValueError(x)")]
  (tmp_path / "in").mkdir()
  nbformat.write(nbformat.v4.new_notebook(cells=cells), tmp_path / "in" / "broken.ipynb")
  monkeypatch.setattr(run_notebooks, "NOTEBOOKS_DIR", tmp_path / "in")
  monkeypatch.setattr(run_notebooks, "NOTEBOOKS", ("broken",))
  assert run_notebooks.main([f"--out={tmp_path / 'out'}"]) == 1
  executed = nbformat.read(tmp_path / "out" / "broken.ipynb", as_version=4)
  assert executed.cells[1].outputs[0].ename == "ValueError"


def test_autoencoders_notebook(tmp_path_factory, data_dir):
  nb, runs = _executed(tmp_path_factory, data_dir, "autoencoders")
  assert "small settings: True" in _text(_outputs(nb, "SMALL = os.environ"))
  # The pictures the text talks about, each drawn inline by its cell.
  for cell_text in (
    'show(conv_ae_dir, "reconstructions.png")',  # Conv AE reconstructions.
    'show(conv_ae_dir, "latent_scatter.png")',
    "made-up codes",
    'show(denoise_dir, "reconstructions.png")',
    "denoiser.reconstruct(noisy)",
    'show(superres_dir, "reconstructions.png")',
    "superres_from_noise.png",
    'show(vae_dir, "latent_grid.png")',
    'show(vae_dir, "latent_scatter.png")',
    'show(cvae_dir, "class_grid.png")',  # The CVAE's digits by class ...
    "labels=digits",  # ... and the digits chosen in the notebook.
    'show(conv_vae_dir, "latent_grid.png")',
  ):
    assert _pngs(_outputs(nb, cell_text)) >= 1, cell_text
  assert "PSNR" in str(_outputs(nb, '(denoise_dir / "task_metrics.md")'))

  trained = {"conv_ae", "denoise", "superres", "vae", "cvae", "conv_vae"}
  assert {p.name for p in (runs / "autoencoders").iterdir()} == trained
  for name in trained:
    metrics = json.loads((runs / "autoencoders" / name / "final_metrics.json").read_text())
    assert metrics["step"] == 16, name  # configs.make_tiny's schedule.
    values = [v for k, v in metrics.items() if k.startswith("eval/")]
    assert values and all(math.isfinite(v) for v in values), (name, metrics)
  for name, picture in (("vae", "latent_grid.png"), ("cvae", "class_grid.png")):
    assert (runs / "autoencoders" / name / picture).is_file()


def test_latent_sizes_notebook(tmp_path_factory, data_dir):
  nb, runs = _executed(tmp_path_factory, data_dir, "latent_sizes")
  sweep_dir = runs / "latent_sizes"
  report = (sweep_dir / "report.md").read_text()
  latent_dims = (2, 8, 32)
  for latent_dim in latent_dims:
    assert f"| {latent_dim} |" in report, latent_dim  # Its row in the results table.
    eval_results = json.loads(
      (sweep_dir / f"latent_dim={latent_dim},seed=0" / "eval_results.json").read_text()
    )
    assert math.isfinite(eval_results["nll"]), eval_results
  # The report drawn inline: its tables as Markdown, metrics.png and the contact sheets as PNGs.
  shown = _outputs(nb, "show_report(SWEEP_DIR)")
  markdown = "".join(o.data.get("text/markdown", "") for o in shown if "data" in o)
  assert "## Results" in markdown
  assert _pngs(shown) >= 4  # metrics, reconstructions, samples, the 2-D grid and scatter.
  printed = _text(_outputs(nb, "results.csv"))
  assert [line.split()[0] for line in printed.splitlines()[1:]] == [str(d) for d in latent_dims]
