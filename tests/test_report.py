"""aejax/report.py: the table, CSVs and staleness check on run folders written by hand."""

import csv
import json
import os

import numpy as np
import pytest
from helpers import tiny_digits_config

from aejax import report, study_stats, sweep_grid


def _fake_run(sweep_dir, latent_dim, seed, nll=None, seconds=10.0, group=1):
  """A run folder as the sweep leaves it; nll None: stopped before its evaluation."""
  c = tiny_digits_config(total_steps=16, latent_dim=latent_dim)
  c.seed = seed
  overrides = {"model.latent_dim": latent_dim, "seed": seed}
  name = sweep_grid.run_names([overrides])[0]
  workdir = sweep_dir / name
  workdir.mkdir(parents=True)
  config = json.loads(c.to_json_best_effort())
  (workdir / "config.json").write_text(json.dumps(config))
  record = {"name": name, "overrides": overrides, "config": config}
  (workdir / sweep_grid.RUN_RECORD).write_text(json.dumps(record))
  info = {"image_shape": [8, 8, 1], "data": "digits/digits", "num_train": 256, "has_labels": True}
  (workdir / "run_info.json").write_text(json.dumps(info))
  attempt = {"stage": "train", "group": [f"m{i}" for i in range(group)], "seconds": seconds}
  (workdir / sweep_grid.ATTEMPTS).write_text(json.dumps({**attempt, "device": "cpu"}) + "\n")
  if nll is not None:
    (workdir / "final_metrics.json").write_text(json.dumps({"step": 16}))
    results = {"step": 16, "nll": nll, "elbo": -nll - 1.0, "recon": nll - 2.0, "kl": 3.0}
    results.update(active_units=latent_dim, linear_probe_accuracy=0.5, nll_samples=8)
    (workdir / "eval_results.json").write_text(json.dumps(results))
  return name


def test_table_and_csvs_are_mean_and_std_over_finished_seeds(tmp_path):
  _fake_run(tmp_path, 2, 0, nll=30.0, seconds=20.0, group=2)
  _fake_run(tmp_path, 2, 1, nll=32.0, seconds=20.0, group=2)
  _fake_run(tmp_path, 8, 0, nll=25.0)
  _fake_run(tmp_path, 8, 1)  # Not evaluated: left out of the means.
  path = report.write_report(tmp_path, figures_too=False)
  text = path.read_text()
  # latent 2: NLL mean 31, sample std sqrt(2); each vmapped member is charged half the time.
  assert "| 2 | 2 (0, 1) | 31.00 ± 1.41 | -32.00 ± 1.41 |" in text
  assert "| 8 | 1 (0, 1) | 25.00 | -26.00 |" in text
  assert "| latent_dim=8,seed=1 | not started | – | alone |" in text
  rows = list(csv.DictReader((tmp_path / report.RESULTS_CSV).read_text().splitlines()))
  assert [r["configuration"] for r in rows] == ["latent_dim=2", "latent_dim=8"]
  assert float(rows[0]["nll_mean"]) == pytest.approx(31.0)
  assert float(rows[0]["nll_std"]) == pytest.approx(2**0.5)
  assert float(rows[0]["train_seconds_mean"]) == pytest.approx(10.0)
  assert rows[1]["nll_std"] == "" and rows[1]["nll_n"] == "1"
  # Parameters from the shapes of the model: 64-64-2 VAE (mean and log-variance heads).
  assert int(float(rows[0]["num_params_mean"])) == report.count_parameters(
    tiny_digits_config(latent_dim=2), (8, 8, 1)
  )
  runs = list(csv.DictReader((tmp_path / report.RUNS_CSV).read_text().splitlines()))
  assert [r["status"] for r in runs] == ["finished", "finished", "finished", "not started"]


def test_report_is_stale_once_a_run_changes(tmp_path):
  name = _fake_run(tmp_path, 2, 0, nll=30.0)
  assert not report.is_up_to_date(tmp_path)
  report.write_report(tmp_path, figures_too=False)
  assert report.is_up_to_date(tmp_path)
  # A run evaluated again after the report was written.
  written = (tmp_path / report.REPORT_MD).stat().st_mtime
  os.utime(tmp_path / name / "eval_results.json", (written + 1, written + 1))
  assert not report.is_up_to_date(tmp_path)


def test_no_runs_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no runs"):
    report.write_report(tmp_path)


def test_the_two_stage_fid_is_a_column(tmp_path):
  assert ("fid_two_stage", "FID, two-stage VAE samples", 2) in report.METRICS
  name = _fake_run(tmp_path, 2, 0, nll=30.0)
  results_path = tmp_path / name / "eval_results.json"
  results = json.loads(results_path.read_text())
  results.update(fid=40.0, fid_two_stage=12.5)
  results_path.write_text(json.dumps(results))
  text = report.write_report(tmp_path, figures_too=False).read_text()
  assert "FID, two-stage VAE samples" in text and "12.50" in text
  rows = list(csv.DictReader((tmp_path / report.RESULTS_CSV).read_text().splitlines()))
  assert float(rows[0]["fid_two_stage_mean"]) == pytest.approx(12.5)


def test_a_sweep_over_models_names_them_and_draws_no_latent_size_plot(tmp_path):
  for model, seed in [("dense_vae", 0), ("dense_vae", 1), ("dense_ae", 0)]:
    name = _fake_run(tmp_path, 2, seed, nll=30.0 + seed * 1e-3)
    config = json.loads((tmp_path / name / "config.json").read_text())
    config["model"]["name"] = model
    (tmp_path / name / "config.json").write_text(json.dumps(config))
    record = json.loads((tmp_path / name / sweep_grid.RUN_RECORD).read_text())
    record["overrides"] = {"model.name": model, **record["overrides"]}
    (tmp_path / name / sweep_grid.RUN_RECORD).write_text(json.dumps(record))
    os.rename(tmp_path / name, tmp_path / f"{name},{model}")
  text = report.write_report(tmp_path).read_text()
  assert "2 models on digits" in text.splitlines()[0]
  # Every run has latent size 2: a plot against latent size would have one point per line.
  assert not (tmp_path / report.METRICS_PNG).exists() and "against latent size" not in text
  # NLL 30.000 and 30.001 differ below the column's 2 digits: the spread keeps one digit.
  assert "30.00 ± 0.0007" in text and "± 0.00 " not in text
  # Equal shares of a vmapped group's time differ by rounding alone: no spread is shown.
  assert report._fmt(109.0, 2e-14, 0) == "109"


def test_disentanglement_runs_get_the_study_section(tmp_path):
  # Two models, model a at two betas, two seeds each; MIG rises with beta, SAP follows it.
  mig = {
    ("dense_vae", 1.0): [0.10, 0.12], ("dense_vae", 4.0): [0.30, 0.26],
    ("dense_ae", 1.0): [0.05, 0.09],
  }  # fmt: skip
  for (model, beta), values in mig.items():
    for seed, value in enumerate(values):
      name = _fake_run(tmp_path, 2, seed, nll=30.0)
      results_path = tmp_path / name / "eval_results.json"
      results = json.loads(results_path.read_text())
      results.update(
        mig=value, sap=value / 2, factor_vae_score=0.5 + seed, disentanglement_points=9
      )
      results_path.write_text(json.dumps(results))
      record = json.loads((tmp_path / name / sweep_grid.RUN_RECORD).read_text())
      record["overrides"] = {"model.name": model, "objective.beta": beta, "seed": seed}
      record["config"]["model"]["name"] = model
      (tmp_path / name / sweep_grid.RUN_RECORD).write_text(json.dumps(record))
      (tmp_path / name / "config.json").write_text(json.dumps(record["config"]))
      os.rename(tmp_path / name, tmp_path / f"{model},{beta},{seed}")
  text = report.write_report(tmp_path).read_text()
  assert (tmp_path / report.DISENTANGLEMENT_PNG).is_file()
  assert "Spearman rank correlation between the scores over the 6 runs" in text
  # MIG and SAP rank the runs alike; the FactorVAE score here is the seed alone.
  assert "| mig | 0.10 | 1.00 | 1.00 |" in text
  assert "| factor_vae_score | 0 | 0 | 100 | 6 |" in text
  values = np.array([v for vs in mig.values() for v in vs])
  models = ["dense_vae"] * 4 + ["dense_ae"] * 2
  share = study_stats.variance_shares(values, models, ["1", "1", "4", "4", "1", "1"])
  cells = [f"{100 * share[k]:.0f}" for k in ("model", "hyperparameters", "seed")]
  assert f"| mig | {' | '.join(cells)} | 6 |" in text
  rows = list(csv.DictReader((tmp_path / report.RESULTS_CSV).read_text().splitlines()))
  assert sorted(float(r["mig_mean"]) for r in rows) == pytest.approx([0.07, 0.11, 0.28])
