"""aejax/study_stats.py against scipy and against sums of squares written out by hand."""

import numpy as np
import pytest
from scipy import stats

from aejax import errors, study_stats


def test_ranks_match_scipy_with_ties():
  values = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0, 5.0])
  np.testing.assert_allclose(study_stats.ranks(values), stats.rankdata(values))


def test_spearman_matrix_matches_scipy_on_the_runs_that_have_every_metric():
  rng = np.random.default_rng(0)
  a = rng.normal(size=40)
  columns = {"a": a, "b": a + rng.normal(size=40), "c": -(a**3), "d": rng.normal(size=40)}
  columns["d"][[3, 7]] = np.nan  # Two runs lack one metric: they leave every pair.
  names, matrix, used = study_stats.spearman_matrix(columns)
  assert names == ["a", "b", "c", "d"] and used == 38
  keep = np.isfinite(columns["d"])
  want = stats.spearmanr(np.stack([columns[n][keep] for n in names], axis=1)).statistic
  np.testing.assert_allclose(matrix, want, atol=1e-12)
  assert matrix[0, 2] == pytest.approx(-1.0)


def test_a_constant_metric_has_no_correlation_and_few_runs_have_none():
  names, matrix, _ = study_stats.spearman_matrix({"x": [1.0, 2.0, 3.0, 4.0], "y": [2.0] * 4})
  assert np.isnan(matrix[1]).all() and np.isnan(matrix[:, 1]).all()
  assert matrix[0, 0] == pytest.approx(1.0)
  assert np.isnan(study_stats.spearman_matrix({"x": [1.0, 2.0], "y": [2.0, 1.0]})[1]).all()


def test_variance_shares_are_the_nested_sums_of_squares():
  # Two models; model a has two hyper-parameter values, b one; seeds within each.
  values = [1.0, 2.0, 5.0, 7.0, 10.0, 10.5, 11.5, np.nan]
  models = ["a", "a", "a", "a", "b", "b", "b", "b"]
  configurations = ["h=1", "h=1", "h=2", "h=2", "h=1", "h=1", "h=1", "h=1"]
  shares = study_stats.variance_shares(values, models, configurations)
  y = np.array(values[:7])
  grand = y.mean()
  model_mean = np.array([3.75] * 4 + [32 / 3] * 3)
  config_mean = np.array([1.5, 1.5, 6.0, 6.0] + [32 / 3] * 3)
  total = ((y - grand) ** 2).sum()
  assert shares["runs"] == 7
  assert shares["model"] == pytest.approx(((model_mean - grand) ** 2).sum() / total)
  assert shares["hyperparameters"] == pytest.approx(((config_mean - model_mean) ** 2).sum() / total)
  assert shares["seed"] == pytest.approx(((y - config_mean) ** 2).sum() / total)
  assert shares["model"] + shares["hyperparameters"] + shares["seed"] == pytest.approx(1.0)


def test_variance_shares_of_a_constant_metric_are_undefined_and_lengths_must_agree():
  shares = study_stats.variance_shares([0.5, 0.5, 0.5], ["a", "a", "b"], ["x", "y", "x"])
  assert np.isnan(shares["seed"]) and shares["runs"] == 3
  with pytest.raises(errors.InputError, match="one of each per run, got 3, 2 and 3"):
    study_stats.variance_shares([1.0, 2.0, 3.0], ["a", "b"], ["x", "y", "z"])
