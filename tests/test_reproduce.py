"""scripts/reproduce.py --zoo and --burda: their published rows agree with the experiments'
docstrings, and the table is computed from the runs' results (mean and sample std over seeds, the
share of the run)."""

import json
import pathlib

import numpy as np
import pytest
from helpers import load_script

ROOT = pathlib.Path(__file__).resolve().parent.parent


reproduce = load_script("reproduce")


@pytest.mark.parametrize(
  "row", reproduce.ZOO_ROWS + reproduce.BURDA_ROWS, ids=lambda r: r.experiment
)
def test_each_published_row_is_cited_by_its_experiment(row):
  """The number in the table is the number the experiment's docstring measures itself against."""
  path = ROOT / "experiments" / row.experiment.partition(":")[0]
  module_doc = path.read_text().split('"""')[1]
  cited = {f"{row.published:.2f}", f"{row.published:g}"}
  assert any(text in module_doc for text in cited), f"{path.name} does not cite {row.published}"
  # The paper's run, in steps, from the experiment's full configuration.
  assert reproduce.paper_steps(row) > 100_000


def test_burdas_table_is_six_rows_of_the_full_protocol():
  rows = {row.experiment: row.published for row in reproduce.BURDA_ROWS}
  assert rows == {
    "iwae_burda.py:vae,k1": 86.76, "iwae_burda.py:vae,k5": 86.47, "iwae_burda.py:vae,k50": 86.35,
    "iwae_burda.py:iwae,k1": 86.76, "iwae_burda.py:iwae,k5": 85.54,
    "iwae_burda.py:iwae,k50": 84.78,
  }  # fmt: skip
  # 3,280 passes over 60,000 images at batch 20.
  assert {reproduce.paper_steps(row) for row in reproduce.BURDA_ROWS} == {3280 * 3000}


def test_the_zoo_row_is_the_mean_and_sample_std_over_seeds(tmp_path):
  for seed, nll in enumerate((90.0, 91.0, 95.0)):
    run = tmp_path / f"seed={seed}"
    run.mkdir()
    (run / "eval_results.json").write_text(json.dumps({"nll": nll, "step": 3000 + seed}))
  (tmp_path / "unfinished").mkdir()  # No eval_results.json: not counted.
  seeds = reproduce.read_seed_results(tmp_path)
  assert [s["nll"] for s in seeds] == [90.0, 91.0, 95.0]
  row = reproduce.PublishedRow("m", "zoo/miwae.py", 84.97, "src", "proto")
  line = reproduce.zoo_table_row(row, seeds, 600_000)
  std = np.std([90.0, 91.0, 95.0], ddof=1)
  assert f"92.00 ± {std:.2f} (n=3)" in line
  assert "+7.03" in line  # measured - published
  assert "3,000 of 600,000 (0.50%)" in line  # the shortest seed's steps
  assert "not measured" in reproduce.zoo_table_row(row, [], 600_000)


def test_the_population_table_takes_each_rows_runs_from_the_one_sweep(tmp_path):
  """--burda --population: one sweep of experiments/burda_table.py; each row reads
  the runs trained with its objective and k."""
  module, _ = reproduce.sweep_grid.load_config_module(str(ROOT / "experiments" / "burda_table.py"))
  added = []
  module.sweep(lambda **fields: added.append(fields))
  expected = {reproduce.burda_objective(row) for row in reproduce.BURDA_ROWS}
  assert {(a["objective.name"], a["objective.num_samples"]) for a in added} == expected
  assert len(added) == len(expected) == 6
  for i, (objective, k) in enumerate(sorted(expected)):
    run = tmp_path / f"run{i}"
    run.mkdir()
    config = {"objective": {"name": objective, "num_samples": k}}
    (run / "config.json").write_text(json.dumps(config))
    (run / "eval_results.json").write_text(json.dumps({"nll": 80.0 + k, "step": 10}))
  for row in reproduce.BURDA_ROWS:
    (seed,) = reproduce.read_seed_results(tmp_path, reproduce.burda_objective(row))
    assert seed["nll"] == 80.0 + reproduce.burda_objective(row)[1]
