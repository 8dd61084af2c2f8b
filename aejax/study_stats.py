"""Statistics of a population of runs: rank correlations between metrics and variance shares.

A study (experiments/disentanglement_study.py) trains models x hyper-parameters x seeds and
asks two questions of each metric (Locatello et al. 2019, Sec. 5): do the metrics agree on
which runs are better (Spearman rank correlation over runs), and how much of a metric's spread
is the model, its hyper-parameter or the seed (a nested decomposition of the sum of squares).
Pure NumPy on (runs,) arrays; reports draw them (aejax/report.py).
"""

from collections.abc import Sequence

import numpy as np

from aejax import errors


def _finite_column(values, name: str) -> np.ndarray:
  column = np.asarray(values, dtype=np.float64)
  if column.ndim != 1:
    raise errors.InputError(f"{name}: expected one value per run (a 1-D array), got {column.shape}")
  return column


def ranks(values) -> np.ndarray:
  """Ranks 1..N of a 1-D array, ties given their average rank (as scipy.stats.rankdata)."""
  column = _finite_column(values, "values")
  order = np.argsort(column, kind="stable")
  sorted_values = column[order]
  # Runs of equal values share the mean of the ranks they span.
  starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
  ends = np.r_[starts[1:], len(column)]
  out = np.empty(len(column))
  for start, end in zip(starts, ends, strict=True):
    out[order[start:end]] = (start + 1 + end) / 2.0
  return out


def spearman_matrix(columns: dict[str, Sequence[float]]) -> tuple[list[str], np.ndarray, int]:
  """Spearman's rank correlation between every pair of metrics over the runs that have all.

  `columns` maps a metric to one value per run (NaN where a run lacks it). Runs with a NaN
  in any column are left out of every pair, so all pairs compare the same runs. A metric
  constant over those runs has no ranking: its row and column are NaN.

  Returns (names, (M, M) matrix, number of runs used).
  """
  names = list(columns)
  table = np.stack([_finite_column(columns[n], n) for n in names], axis=1)
  table = table[np.all(np.isfinite(table), axis=1)]
  matrix = np.full((len(names), len(names)), np.nan)
  if len(table) < 3:
    return names, matrix, len(table)
  ranked = np.stack([ranks(table[:, i]) for i in range(len(names))], axis=1)
  ranked -= ranked.mean(axis=0)
  norms = np.sqrt((ranked**2).sum(axis=0))
  varies = norms > 0
  safe = np.where(varies, norms, 1.0)
  matrix = (ranked.T @ ranked) / np.outer(safe, safe)
  matrix[~varies, :] = np.nan
  matrix[:, ~varies] = np.nan
  return names, matrix, len(table)


def variance_shares(values, models: Sequence[str], configurations: Sequence[str]) -> dict:
  """How much of a metric's spread over runs is the model, the hyper-parameter and the seed.

  With y the metric of each run, nested groups model > configuration (model plus
  hyper-parameters) > run (a seed), the total sum of squares splits exactly:
    sum (y - mean)^2 = SS_model + SS_hyper + SS_seed,
  SS_model = sum over runs of (model mean - grand mean)^2, SS_hyper = sum of
  (configuration mean - its model mean)^2, SS_seed = sum of (y - configuration mean)^2.
  Each share is its SS over the total (they sum to 1): the descriptive (eta-squared) split
  of a nested one-way analysis of variance, no test. Runs with a NaN metric are left out.

  Returns {"model", "hyperparameters", "seed"} shares in [0, 1] (NaN if every run scores the
  same, or fewer than 2 runs have the metric) and "runs", the number used.
  """
  y = _finite_column(values, "values")
  if not len(models) == len(configurations) == len(y):
    raise errors.InputError(
      f"values, models, configurations: expected one of each per run, got {len(y)}, "
      f"{len(models)} and {len(configurations)}"
    )
  keep = np.isfinite(y)
  y = y[keep]
  model_of = np.asarray(models, dtype=object)[keep]
  config_of = np.asarray([f"{m}\0{c}" for m, c in zip(models, configurations, strict=True)])[keep]
  out = {"model": np.nan, "hyperparameters": np.nan, "seed": np.nan, "runs": int(len(y))}
  total = float(((y - y.mean()) ** 2).sum()) if len(y) else 0.0
  if len(y) < 2 or total <= 0:
    return out

  def group_means(groups) -> np.ndarray:
    means = {g: y[groups == g].mean() for g in set(groups.tolist())}
    return np.array([means[g] for g in groups.tolist()])

  model_mean, config_mean = group_means(model_of), group_means(config_of)
  out["model"] = float(((model_mean - y.mean()) ** 2).sum() / total)
  out["hyperparameters"] = float(((config_mean - model_mean) ** 2).sum() / total)
  out["seed"] = float(((y - config_mean) ** 2).sum() / total)
  return out
