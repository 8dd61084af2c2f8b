"""Disentanglement metrics: MIG, SAP, DCI, modularity, the beta-VAE and FactorVAE scores.

Each metric follows its paper and pins its hyper-parameters to the defaults of
disentanglement_lib (Locatello et al. 2019, "Challenging Common Assumptions in
the Unsupervised Learning of Disentangled Representations"), so numbers compare
with published tables. Definitions are in each function's docstring.

Conventions:
- `codes_NxD`: (N, num_codes) float codes, usually the posterior mean of an
  encoder; `factors_NxF`: (N, num_factors) ground-truth factors, integer
  indices (or floats for continuous factors where a metric allows them).
- Mutual information and entropies are in nats (natural logarithm).
- Table metrics (MIG, SAP, DCI, modularity, unsupervised scores) take arrays;
  `sample_codes_and_factors` makes them from a ground-truth data set
  (aejax.ground_truth). The beta-VAE and FactorVAE scores sample their own
  batches with fixed factors, so they take the data set and `encode` directly.
"""

import logging
import math
import warnings
from collections.abc import Callable

import jax
import numpy as np
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.svm import LinearSVC

from aejax import errors, ground_truth

# disentanglement_lib's defaults (its metric .gin configs and function defaults).
NUM_BINS = 20  # discretizer.num_bins, histogram discretizer.
SAP_SVM_C = 0.01  # sap_score: LinearSVC(C=0.01, class_weight="balanced").
SAP_MIN_CODE_VARIANCE = 1e-12  # sap_score, continuous factors: a flatter code scores 0.
DCI_NUM_TREES = 100  # GradientBoostingClassifier() defaults: 100 trees of depth 3.
BATCH_SIZE = 64  # beta_vae_sklearn / factor_vae_score.batch_size.
NUM_TRAIN = 10_000  # *.num_train.
NUM_EVAL = 5_000  # *.num_eval / *.num_test.
NUM_VARIANCE_ESTIMATE = 10_000  # factor_vae_score.num_variance_estimate.
PRUNE_STD = 0.05  # prune_dims.threshold: a code dim with a smaller std is collapsed.

# How many images one call of `encode` gets. It changes no value unless the data
# set's images are random given their factors (each call gets its own image key).
ENCODE_BATCH_SIZE = 4096

Encode = Callable[[np.ndarray], np.ndarray]


# ---------------------------------------------------------------------------
# Input checks.


def _check_matrix(name: str, array, *, finite: bool = True) -> np.ndarray:
  """`array` as a 2-D NumPy array with 2+ rows and 1+ columns, else DataError naming `name`."""
  out = np.asarray(array)
  if out.ndim != 2:
    raise errors.DataError(f"{name}: expected a 2-D (N, columns) array, got shape {out.shape}")
  if out.shape[0] < 2 or out.shape[1] < 1:
    raise errors.DataError(f"{name}: expected at least 2 rows and 1 column, got shape {out.shape}")
  if finite and np.issubdtype(out.dtype, np.number) and not np.all(np.isfinite(out)):
    bad = np.argwhere(~np.isfinite(out))[0]
    raise errors.DataError(
      f"{name}: expected finite values, got {out[tuple(bad)]} at {tuple(int(i) for i in bad)} "
      f"(shape {out.shape})"
    )
  return out


def _check_pair(
  codes, factors, codes_name: str = "codes", factors_name: str = "factors"
) -> tuple[np.ndarray, np.ndarray]:
  """(codes as float64, factors) checked: 2-D, finite, the same number of rows."""
  codes_NxD = _check_matrix(codes_name, codes)
  factors_NxF = _check_matrix(factors_name, factors)
  if not np.issubdtype(codes_NxD.dtype, np.number):
    raise errors.DataError(f"{codes_name}: expected numbers, got dtype {codes_NxD.dtype}")
  if codes_NxD.shape[0] != factors_NxF.shape[0]:
    raise errors.DataError(
      f"{codes_name} and {factors_name}: expected the same number of rows N, got "
      f"{codes_name} {codes_NxD.shape} and {factors_name} {factors_NxF.shape}"
    )
  return codes_NxD.astype(np.float64), factors_NxF


def _check_test_set(codes_NxD, factors_NxF, codes_test, factors_test):
  """The test split checked like the train split, with the same columns."""
  test_MxD, test_MxF = _check_pair(codes_test, factors_test, "codes_test", "factors_test")
  if test_MxD.shape[1] != codes_NxD.shape[1] or test_MxF.shape[1] != factors_NxF.shape[1]:
    raise errors.DataError(
      f"codes_test and factors_test: expected {codes_NxD.shape[1]} codes and "
      f"{factors_NxF.shape[1]} factors like codes {codes_NxD.shape} and factors "
      f"{factors_NxF.shape}, got {test_MxD.shape} and {test_MxF.shape}"
    )
  return test_MxD, test_MxF


def _check_num_bins(num_bins) -> int:
  if isinstance(num_bins, bool) or not isinstance(num_bins, int | np.integer) or num_bins < 2:
    raise ValueError(f"num_bins: expected an integer >= 2, got {num_bins!r}")
  return int(num_bins)


def _check_positive(name: str, value, minimum: int = 1) -> int:
  if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
    raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
  return int(value)


def _check_min_columns(name: str, array: np.ndarray, minimum: int, why: str) -> None:
  if array.shape[1] < minimum:
    raise errors.DataError(
      f"{name}: expected at least {minimum} columns ({why}), got shape {array.shape}"
    )


def _check_factors_vary(factors_NxF: np.ndarray, name: str = "factors") -> None:
  """Every factor must take two values at least: a constant one has no entropy to explain."""
  for f in range(factors_NxF.shape[1]):
    column = factors_NxF[:, f]
    if np.all(column == column[0]):
      raise errors.DataError(
        f"{name}[:, {f}]: takes the single value {column[0]} in all {len(column)} rows; "
        "the metric needs every factor to vary"
      )


def _fit_quietly(model, x, y, what: str):
  """model.fit(x, y), logging (not raising) when the solver stops before converging."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", ConvergenceWarning)
    model.fit(x, y)
  if any(issubclass(w.category, ConvergenceWarning) for w in caught):
    logging.warning("%s: the solver did not converge (disentanglement_lib's defaults kept)", what)
  return model


# ---------------------------------------------------------------------------
# Discretization, mutual information and entropy.


def discretize(codes, num_bins: int = NUM_BINS) -> np.ndarray:
  """Histogram binning of each code dimension on its own: (N, D) int bin indices in [1, num_bins].

  disentanglement_lib's histogram discretizer: per column, `num_bins` equal-width
  bins spanning [min, max] (the edges of np.histogram), and each value gets
  np.digitize against the left edges, so the minimum falls in bin 1 and the
  maximum in bin num_bins. The bins follow the column's own range, so a positive
  rescaling or a shift of a column leaves its bins unchanged. A constant column
  falls in a single bin.
  """
  num_bins = _check_num_bins(num_bins)
  codes_NxD = _check_matrix("codes", codes)
  out_NxD = np.empty(codes_NxD.shape, dtype=np.int64)
  for d in range(codes_NxD.shape[1]):
    edges = np.histogram_bin_edges(codes_NxD[:, d], bins=num_bins)
    out_NxD[:, d] = np.digitize(codes_NxD[:, d], edges[:-1])
  return out_NxD


def _labels(column: np.ndarray) -> tuple[np.ndarray, int]:
  """(the column's values as indices 0..k-1, k): any discrete labels, integer or float."""
  values, inverse = np.unique(column, return_inverse=True)
  return inverse.reshape(-1), len(values)


def _mutual_info(a: tuple[np.ndarray, int], b: tuple[np.ndarray, int]) -> float:
  """I(a; b) in nats of two discrete label columns, from their contingency table."""
  (labels_a, num_a), (labels_b, num_b) = a, b
  joint_AxB = np.bincount(labels_a * num_b + labels_b, minlength=num_a * num_b).reshape(
    num_a, num_b
  ) / len(labels_a)
  p_a, p_b = joint_AxB.sum(axis=1), joint_AxB.sum(axis=0)
  i, j = np.nonzero(joint_AxB)
  p = joint_AxB[i, j]
  mi = float(np.sum(p * (np.log(p) - np.log(p_a[i]) - np.log(p_b[j]))))
  # Rounding can leave -1e-17 for independent columns; MI is never negative.
  return max(mi, 0.0)


def mutual_info_matrix(codes_disc, factors) -> np.ndarray:
  """(num_codes, num_factors) mutual information I(code_i; factor_j) in nats.

  The plug-in estimate from the empirical joint distribution (the contingency
  table) of discrete columns: I = sum_ab p(a, b) log(p(a, b) / (p(a) p(b))), the
  value of sklearn.metrics.mutual_info_score that disentanglement_lib uses.
  `codes_disc` are discrete codes (see `discretize`); the columns of both arrays
  are treated as labels (each distinct value one label).
  """
  codes_NxD = _check_matrix("codes_disc", codes_disc)
  factors_NxF = _check_matrix("factors", factors)
  if codes_NxD.shape[0] != factors_NxF.shape[0]:
    raise errors.DataError(
      f"codes_disc and factors: expected the same number of rows N, got codes_disc "
      f"{codes_NxD.shape} and factors {factors_NxF.shape}"
    )
  code_labels = [_labels(codes_NxD[:, d]) for d in range(codes_NxD.shape[1])]
  factor_labels = [_labels(factors_NxF[:, f]) for f in range(factors_NxF.shape[1])]
  return np.array([[_mutual_info(c, f) for f in factor_labels] for c in code_labels])


def factor_entropies(factors) -> np.ndarray:
  """(num_factors,) entropy H(factor_j) = -sum_a p(a) log p(a) in nats, of the empirical law."""
  factors_NxF = _check_matrix("factors", factors)
  out = np.empty(factors_NxF.shape[1])
  for f in range(factors_NxF.shape[1]):
    labels, num = _labels(factors_NxF[:, f])
    p = np.bincount(labels, minlength=num) / len(labels)
    out[f] = float(-np.sum(p * np.log(p)))
  return out


# ---------------------------------------------------------------------------
# Table metrics: codes and factors in, a score out.


def mig(codes, factors, num_bins: int = NUM_BINS) -> dict:
  """Mutual Information Gap, MIG (Chen et al. 2018), unitless in [0, 1].

  "Isolating Sources of Disentanglement in Variational Autoencoders".

  For each factor j, with codes discretized into `num_bins` histogram bins and
  the code dimensions sorted by I(code; factor_j) (mutual_info_matrix):
    gap_j = (I(top-1 code; factor_j) - I(top-2 code; factor_j)) / H(factor_j),
  and MIG = mean_j gap_j, in [0, 1] (unitless: nats over nats). 1 when one code
  alone holds each factor. disentanglement_lib's "discrete_mig": num_bins=20 on
  10,000 points.

  Returns {"mig": float, "mig_per_factor": (num_factors,) array}.
  """
  codes_NxD, factors_NxF = _check_pair(codes, factors)
  _check_min_columns("codes", codes_NxD, 2, "MIG compares the two most informative codes")
  _check_factors_vary(factors_NxF)
  mi_DxF = mutual_info_matrix(discretize(codes_NxD, num_bins), factors_NxF)
  sorted_DxF = np.sort(mi_DxF, axis=0)
  per_factor = (sorted_DxF[-1] - sorted_DxF[-2]) / factor_entropies(factors_NxF)
  return {"mig": float(np.mean(per_factor)), "mig_per_factor": per_factor}


def sap_score_matrix(
  codes,
  factors,
  codes_test=None,
  factors_test=None,
  continuous_factors: bool = False,
  svm_c: float = SAP_SVM_C,
) -> np.ndarray:
  """(num_codes, num_factors) SAP scores: how well each single code predicts each factor.

  Discrete factors: the test accuracy of a linear SVM on the one code
  (sklearn LinearSVC, C=`svm_c`, balanced class weights, fitted on the train
  split). Continuous factors: R^2 of a 1-D linear regression, i.e. the squared
  Pearson correlation cov(z, y)^2 / (var z var y) on the train split (the test
  split is unused, as in disentanglement_lib); 0 for a code with variance below
  1e-12.
  """
  codes_NxD, factors_NxF = _check_pair(codes, factors)
  num_codes, num_factors = codes_NxD.shape[1], factors_NxF.shape[1]
  scores_DxF = np.zeros((num_codes, num_factors))
  if continuous_factors:
    y_NxF = factors_NxF.astype(np.float64)
    z_NxD = codes_NxD - codes_NxD.mean(axis=0)
    y_NxF = y_NxF - y_NxF.mean(axis=0)
    n = codes_NxD.shape[0]
    cov_DxF = z_NxD.T @ y_NxF / (n - 1)
    var_D = np.sum(z_NxD**2, axis=0) / (n - 1)
    var_F = np.sum(y_NxF**2, axis=0) / (n - 1)
    _check_factors_vary(factors_NxF)
    ok_D = var_D > SAP_MIN_CODE_VARIANCE
    scores_DxF[ok_D] = cov_DxF[ok_D] ** 2 / (var_D[ok_D, None] * var_F[None, :])
    return scores_DxF
  if codes_test is None or factors_test is None:
    raise ValueError(
      "codes_test, factors_test: the discrete SAP score is a test accuracy and needs both, "
      f"got codes_test {None if codes_test is None else np.shape(codes_test)} and "
      f"factors_test {None if factors_test is None else np.shape(factors_test)}"
    )
  test_MxD, test_MxF = _check_test_set(codes_NxD, factors_NxF, codes_test, factors_test)
  _check_factors_vary(factors_NxF)
  for d in range(num_codes):
    for f in range(num_factors):
      # random_state pins the solver's coordinate order; the score is otherwise deterministic.
      svm = LinearSVC(C=svm_c, class_weight="balanced", random_state=0)
      _fit_quietly(svm, codes_NxD[:, d : d + 1], factors_NxF[:, f], f"sap: code {d}, factor {f}")
      scores_DxF[d, f] = np.mean(svm.predict(test_MxD[:, d : d + 1]) == test_MxF[:, f])
  return scores_DxF


def sap(
  codes,
  factors,
  codes_test=None,
  factors_test=None,
  continuous_factors: bool = False,
  svm_c: float = SAP_SVM_C,
) -> float:
  """Separated Attribute Predictability, SAP (Kumar et al. 2018), unitless.

  "Variational Inference of Disentangled Latent Concepts from Unlabeled
  Observations", Sec. 3.

  With S the (num_codes, num_factors) matrix of sap_score_matrix (test accuracy
  of a 1-D linear SVM per code and factor, or R^2 for continuous factors):
    SAP = mean_j (largest S[:, j] - second largest S[:, j]),
  unitless (an accuracy or R^2 difference). disentanglement_lib: C=0.01,
  10,000 train and 5,000 test points. With discrete factors the best code's
  rivals still score chance (about 1/k for a factor with k values), so SAP stays
  below 1 - 1/k even for a perfectly disentangled code; with a continuous factor
  it reaches 1.
  """
  scores_DxF = sap_score_matrix(codes, factors, codes_test, factors_test, continuous_factors, svm_c)
  if scores_DxF.shape[0] < 2:
    raise errors.DataError(
      f"codes: expected at least 2 columns (SAP compares the two most predictive codes), got "
      f"shape {np.shape(codes)}"
    )
  sorted_DxF = np.sort(scores_DxF, axis=0)
  return float(np.mean(sorted_DxF[-1] - sorted_DxF[-2]))


def _normalized_entropy(p_RxK: np.ndarray) -> np.ndarray:
  """Entropy of each row of p (rows summing to 1) with logarithm base K (the row length).

  0 log 0 = 0. A row of zeros (no importance to spread) gets entropy 1, the
  uniform row's, so its score 1 - H is 0.
  """
  total_R = p_RxK.sum(axis=1)
  safe_R = np.where(total_R > 0, total_R, 1.0)
  p_RxK = p_RxK / safe_R[:, None]
  with np.errstate(divide="ignore", invalid="ignore"):
    terms = np.where(p_RxK > 0, p_RxK * np.log(p_RxK), 0.0)
  entropy_R = -terms.sum(axis=1) / math.log(p_RxK.shape[1])
  return np.where(total_R > 0, entropy_R, 1.0)


def dci_from_importance(importance) -> dict:
  """Disentanglement and completeness of an importance matrix (Eastwood & Williams 2018).

  `importance` R is (num_codes, num_factors), R_ij >= 0 how much code i helps to
  predict factor j. With P_ij = R_ij / sum_k R_ik (code i's importance spread
  over the factors) and Q_ij = R_ij / sum_k R_kj (factor j's spread over codes):
    disentanglement of code i:  D_i = 1 - H_{num_factors}(P_i.),
    completeness of factor j:   C_j = 1 - H_{num_codes}(Q_.j),
  with H_K the entropy in base K (so each lies in [0, 1]). The totals weight by
  relative importance, as in the paper and disentanglement_lib:
    D = sum_i rho_i D_i, rho_i = sum_j R_ij / sum_kj R_kj,
    C = sum_j w_j C_j,   w_j = sum_i R_ij / sum_ik R_ik
  (uniform weights if R is all zeros). disentanglement_lib adds 1e-11 to R before
  the entropies; here 0 log 0 = 0 exactly, a difference below 1e-9.

  Returns {"disentanglement", "completeness", "disentanglement_per_code",
  "completeness_per_factor"}.
  """
  r_DxF = _check_matrix("importance", importance).astype(np.float64)
  if r_DxF.shape[0] < 2 or r_DxF.shape[1] < 2:
    raise errors.DataError(
      "importance: expected at least 2 codes (rows) and 2 factors (columns) for base-K "
      f"entropies, got shape {r_DxF.shape}"
    )
  if np.any(r_DxF < 0):
    raise errors.DataError(f"importance: expected non-negative values, got min {r_DxF.min()}")
  per_code = 1.0 - _normalized_entropy(r_DxF)
  per_factor = 1.0 - _normalized_entropy(r_DxF.T)
  total = r_DxF.sum()
  weights = r_DxF if total > 0 else np.ones_like(r_DxF)
  code_weight = weights.sum(axis=1) / weights.sum()
  factor_weight = weights.sum(axis=0) / weights.sum()
  return {
    "disentanglement": float(np.sum(code_weight * per_code)),
    "completeness": float(np.sum(factor_weight * per_factor)),
    "disentanglement_per_code": per_code,
    "completeness_per_factor": per_factor,
  }


def dci(
  codes,
  factors,
  codes_test,
  factors_test,
  num_trees: int = DCI_NUM_TREES,
  seed: int = 0,
) -> dict:
  """Disentanglement, Completeness and Informativeness, DCI (Eastwood & Williams 2018).

  "A Framework for the Quantitative Evaluation of Disentangled Representations".

  Per factor j, a gradient-boosted tree classifier (sklearn
  GradientBoostingClassifier with its defaults as in disentanglement_lib:
  `num_trees`=100 trees of depth 3, learning rate 0.1; `seed` its random_state)
  predicts factor j from all codes; its feature importances (mean impurity
  decrease, summing to 1) form column j of the importance matrix. Disentanglement
  and completeness come from that matrix (dci_from_importance). Informativeness
  is the classifiers' mean accuracy on the train and on the test split, as
  disentanglement_lib reports it (higher is better; the paper states it as the
  prediction error, 1 - accuracy).

  Returns {"disentanglement", "completeness", "informativeness_train",
  "informativeness_test", "importance_matrix" (num_codes, num_factors)}.
  """
  codes_NxD, factors_NxF = _check_pair(codes, factors)
  test_MxD, test_MxF = _check_test_set(codes_NxD, factors_NxF, codes_test, factors_test)
  num_trees = _check_positive("num_trees", num_trees)
  _check_min_columns("codes", codes_NxD, 2, "DCI's entropies are in base num_codes")
  _check_min_columns("factors", factors_NxF, 2, "DCI's entropies are in base num_factors")
  _check_factors_vary(factors_NxF)
  importance_DxF = np.zeros((codes_NxD.shape[1], factors_NxF.shape[1]))
  train_accuracy, test_accuracy = [], []
  for f in range(factors_NxF.shape[1]):
    model = GradientBoostingClassifier(n_estimators=num_trees, random_state=seed)
    model.fit(codes_NxD, factors_NxF[:, f])
    importance_DxF[:, f] = np.abs(model.feature_importances_)
    train_accuracy.append(np.mean(model.predict(codes_NxD) == factors_NxF[:, f]))
    test_accuracy.append(np.mean(model.predict(test_MxD) == test_MxF[:, f]))
  scores = dci_from_importance(importance_DxF)
  return {
    "disentanglement": scores["disentanglement"],
    "completeness": scores["completeness"],
    "informativeness_train": float(np.mean(train_accuracy)),
    "informativeness_test": float(np.mean(test_accuracy)),
    "importance_matrix": importance_DxF,
  }


def modularity_from_mi(mutual_info) -> float:
  """Modularity (Ridgeway & Mozer 2018) of a (num_codes, num_factors) mutual information matrix.

  For code i with m_ij = I(code_i; factor_j) and its best factor's m_i* = max_j m_ij:
    delta_i = (sum_j m_ij^2 - m_i*^2) / (m_i*^2 (num_factors - 1)),
    modularity_i = 1 - delta_i (0 for a code that holds no information),
  and the modularity is the mean over codes, in [0, 1]: 1 when every code
  depends on one factor only.
  """
  mi_DxF = _check_matrix("mutual_info", mutual_info).astype(np.float64)
  _check_min_columns("mutual_info", mi_DxF, 2, "modularity compares a code's factors")
  squared_DxF = np.square(mi_DxF)
  best_D = squared_DxF.max(axis=1)
  safe_D = np.where(best_D > 0, best_D, 1.0)
  delta_D = (squared_DxF.sum(axis=1) - best_D) / (safe_D * (mi_DxF.shape[1] - 1))
  return float(np.mean(np.where(best_D > 0, 1.0 - delta_D, 0.0)))


def _mean_one_vs_rest_auc(model, x_NxD: np.ndarray, y_N: np.ndarray) -> float:
  """Macro ROC AUC of predict_proba over the model's classes that occur (and not alone) in y."""
  proba_NxK = model.predict_proba(x_NxD)
  aucs = []
  for k, label in enumerate(model.classes_):
    positive = y_N == label
    if positive.any() and not positive.all():
      aucs.append(roc_auc_score(positive, proba_NxK[:, k]))
  return float(np.mean(aucs)) if aucs else float("nan")


def modularity_explicitness(
  codes, factors, codes_test, factors_test, num_bins: int = NUM_BINS
) -> dict:
  """Modularity and explicitness (Ridgeway & Mozer 2018), both in [0, 1].

  "Learning Deep Disentangled Embeddings With the F-Statistic Loss".

  Modularity: modularity_from_mi of the mutual information between the
  histogram-discretized codes (`num_bins`=20) and the factors on the train split.
  Explicitness of factor j: a logistic regression (sklearn defaults) on all codes,
  standardized with the train split's mean and std, predicts factor j; its
  one-vs-rest ROC AUC averaged over the factor's values, then over factors, on
  the train and on the test split (0.5 chance, 1 perfect). disentanglement_lib
  used the sklearn default of its time (liblinear, one-vs-rest); today's default
  is a multinomial lbfgs fit, whose probabilities rank the values alike.

  Returns {"modularity", "explicitness_train", "explicitness_test"}.
  """
  codes_NxD, factors_NxF = _check_pair(codes, factors)
  test_MxD, test_MxF = _check_test_set(codes_NxD, factors_NxF, codes_test, factors_test)
  _check_min_columns("factors", factors_NxF, 2, "modularity compares a code's factors")
  _check_factors_vary(factors_NxF)
  modularity = modularity_from_mi(mutual_info_matrix(discretize(codes_NxD, num_bins), factors_NxF))
  mean_D, std_D = codes_NxD.mean(axis=0), codes_NxD.std(axis=0)
  # A constant code would divide by zero; it carries nothing, so any scale will do.
  std_D = np.where(std_D > 0, std_D, 1.0)
  train_NxD, test_MxD = (codes_NxD - mean_D) / std_D, (test_MxD - mean_D) / std_D
  train_auc, test_auc = [], []
  for f in range(factors_NxF.shape[1]):
    model = _fit_quietly(
      LogisticRegression(), train_NxD, factors_NxF[:, f], f"explicitness: factor {f}"
    )
    train_auc.append(_mean_one_vs_rest_auc(model, train_NxD, factors_NxF[:, f]))
    test_auc.append(_mean_one_vs_rest_auc(model, test_MxD, test_MxF[:, f]))
  return {
    "modularity": modularity,
    "explicitness_train": float(np.mean(train_auc)),
    "explicitness_test": float(np.mean(test_auc)),
  }


# ---------------------------------------------------------------------------
# Unsupervised scores: the codes alone.


def _check_covariance(cov) -> np.ndarray:
  cov_DxD = _check_matrix("cov", cov).astype(np.float64)
  if cov_DxD.shape[0] != cov_DxD.shape[1]:
    raise errors.DataError(f"cov: expected a square (D, D) matrix, got shape {cov_DxD.shape}")
  if not np.allclose(cov_DxD, cov_DxD.T, rtol=1e-10, atol=1e-12 * np.abs(cov_DxD).max()):
    raise errors.DataError(f"cov: expected a symmetric matrix (shape {cov_DxD.shape})")
  if np.any(np.diag(cov_DxD) < 0):
    raise errors.DataError(f"cov: expected non-negative variances, got {np.diag(cov_DxD)}")
  return cov_DxD


def gaussian_total_correlation(cov) -> float:
  """Total correlation in nats of a Gaussian with covariance `cov` (D, D).

  TC = KL(N(0, cov) || N(0, diag(cov))) = sum_i H(z_i) - H(z)
     = 0.5 (sum_i log cov_ii - log det cov),
  0 for independent dimensions, +inf for linearly dependent ones. A dimension
  with zero variance is a constant, independent of the rest: it adds nothing and
  is dropped before the log-determinant (which it would make -inf).
  """
  cov_DxD = _check_covariance(cov)
  keep = np.diag(cov_DxD) > 0
  cov_DxD = cov_DxD[np.ix_(keep, keep)]
  if cov_DxD.size == 0:
    return 0.0
  sign, logdet = np.linalg.slogdet(cov_DxD)
  if sign <= 0:
    return math.inf
  return float(0.5 * (np.sum(np.log(np.diag(cov_DxD))) - logdet))


def gaussian_wasserstein_correlation(cov) -> float:
  """Squared 2-Wasserstein distance between N(0, cov) and N(0, diag(cov)), in code units squared.

  W2^2 = tr cov + tr D - 2 tr (D^1/2 cov D^1/2)^1/2 with D = diag(cov), and
  tr D = tr cov, so 2 tr cov - 2 tr (D^1/2 cov D^1/2)^1/2 (disentanglement_lib's
  "gaussian_wasserstein_correlation"; it writes the root as sqrtm(D cov), which
  has the same trace). The symmetric form's square root is taken from its
  eigenvalues. 0 for independent dimensions.
  """
  cov_DxD = _check_covariance(cov)
  root_D = np.sqrt(np.diag(cov_DxD))
  eigenvalues = np.linalg.eigvalsh(root_D[:, None] * cov_DxD * root_D[None, :])
  return float(2 * np.trace(cov_DxD) - 2 * np.sum(np.sqrt(np.clip(eigenvalues, 0, None))))


def mutual_info_between_latents(codes, num_bins: int = NUM_BINS) -> float:
  """Mean mutual information in nats between distinct code dimensions.

  The codes are histogram-discretized (`num_bins`=20) and
    score = sum_{i != k} I(code_i; code_k) / (D^2 - D),
  disentanglement_lib's unsupervised "mutual_info_score": 0 for independent codes.
  """
  codes_NxD = _check_matrix("codes", codes)
  _check_min_columns("codes", codes_NxD, 2, "it compares pairs of code dimensions")
  disc_NxD = discretize(codes_NxD, num_bins)
  mi_DxD = mutual_info_matrix(disc_NxD, disc_NxD)
  np.fill_diagonal(mi_DxD, 0.0)
  num = codes_NxD.shape[1]
  return float(mi_DxD.sum() / (num * num - num))


def unsupervised_scores(codes, num_bins: int = NUM_BINS) -> dict:
  """The unsupervised scores of disentanglement_lib on codes (N, D), from their covariance.

  Returns {"gaussian_total_correlation" (nats), "gaussian_wasserstein_correlation",
  "gaussian_wasserstein_correlation_norm" (the latter over tr cov, unitless),
  "mutual_info_score" (nats)}, with cov the sample covariance (ddof=1).
  """
  codes_NxD = _check_matrix("codes", codes).astype(np.float64)
  _check_min_columns("codes", codes_NxD, 2, "the scores compare code dimensions")
  cov_DxD = np.cov(codes_NxD, rowvar=False)
  wasserstein = gaussian_wasserstein_correlation(cov_DxD)
  trace = float(np.trace(cov_DxD))
  return {
    "gaussian_total_correlation": gaussian_total_correlation(cov_DxD),
    "gaussian_wasserstein_correlation": wasserstein,
    "gaussian_wasserstein_correlation_norm": wasserstein / trace if trace > 0 else 0.0,
    "mutual_info_score": mutual_info_between_latents(codes_NxD, num_bins),
  }


# ---------------------------------------------------------------------------
# Sampling from a ground-truth data set.


def _encode(encode: Encode, images, num: int) -> np.ndarray:
  """encode(images) as a checked (num, D) float64 array."""
  codes = np.asarray(encode(images), dtype=np.float64)
  if codes.ndim != 2 or codes.shape[0] != num:
    raise errors.DataError(
      f"encode: expected codes of shape ({num}, D) for {num} images of shape "
      f"{tuple(np.shape(images))}, got shape {codes.shape}"
    )
  if not np.all(np.isfinite(codes)):
    raise errors.DataError(f"encode: returned NaN or inf codes (shape {codes.shape})")
  return codes


def _encode_factors(
  data: ground_truth.GroundTruthData,
  encode: Encode,
  factors_MxF: np.ndarray,
  key: jax.Array,
  batch_size: int,
) -> np.ndarray:
  """Codes (M, D) of the images of `factors_MxF`, `batch_size` images per call of `encode`.

  Call c's images get the key fold_in(key, c) (used only by data sets whose
  images are random given their factors).
  """
  codes = []
  for c, start in enumerate(range(0, len(factors_MxF), batch_size)):
    chunk = factors_MxF[start : start + batch_size]
    images = data.images_from_factors(chunk, jax.random.fold_in(key, c))
    codes.append(_encode(encode, images, len(chunk)))
  return np.concatenate(codes)


def _sample_factors(data: ground_truth.GroundTruthData, num: int, key: jax.Array) -> np.ndarray:
  """num factor rows from the data set, checked, as a writable NumPy array."""
  return np.array(ground_truth.check_factors(data, np.asarray(data.sample_factors(num, key))))


def sample_codes_and_factors(
  data: ground_truth.GroundTruthData,
  encode: Encode,
  num: int,
  key: jax.Array,
  batch_size: int = ENCODE_BATCH_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
  """(codes (num, D) float64, factors (num, num_factors) int): a table for the table metrics.

  `num` factor rows drawn uniformly by `data.sample_factors`, their images
  encoded `batch_size` at a time by `encode(images (B, H, W, C) float32) -> (B, D)`
  (the posterior mean). Keys: split(key) gives the factors' key and the images'
  key; images of call c use fold_in(images' key, c). The same key gives the same
  table; use different keys for the train and the test split.
  """
  num = _check_positive("num", num, 2)
  batch_size = _check_positive("batch_size", batch_size)
  key_factors, key_images = jax.random.split(key)
  factors_NxF = _sample_factors(data, num, key_factors)
  return _encode_factors(data, encode, factors_NxF, key_images, batch_size), factors_NxF


def _beta_vae_points(
  data: ground_truth.GroundTruthData,
  encode: Encode,
  key: jax.Array,
  batch_size: int,
  num_points: int,
  encode_batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
  """(features (num_points, D), fixed factor (num_points,)) for the beta-VAE score."""
  num_factors = len(data.factor_sizes)
  key_index, key_first, key_second, key_images = jax.random.split(key, 4)
  fixed_P = np.asarray(jax.random.randint(key_index, (num_points,), 0, num_factors))
  # All factors up front (small); images are made and encoded in chunks (large).
  first_PxBxF = _sample_factors(data, num_points * batch_size, key_first).reshape(
    num_points, batch_size, num_factors
  )
  second_PxBxF = _sample_factors(data, num_points * batch_size, key_second).reshape(
    num_points, batch_size, num_factors
  )
  points = np.arange(num_points)
  second_PxBxF[points, :, fixed_P] = first_PxBxF[points, :, fixed_P]
  # Both halves of a chunk of points in one call of `encode`.
  per_call = max(1, encode_batch_size // (2 * batch_size))
  features = []
  for c, start in enumerate(range(0, num_points, per_call)):
    stop = min(start + per_call, num_points)
    pairs = np.concatenate([first_PxBxF[start:stop], second_PxBxF[start:stop]])
    factors_MxF = pairs.reshape(-1, num_factors)
    images = data.images_from_factors(factors_MxF, jax.random.fold_in(key_images, c))
    codes = _encode(encode, images, len(factors_MxF)).reshape(2, stop - start, batch_size, -1)
    features.append(np.mean(np.abs(codes[0] - codes[1]), axis=1))
  return np.concatenate(features), fixed_P


def _check_sampling(data, batch_size: int, minimum_batch: int, **nums) -> None:
  if not isinstance(data, ground_truth.GroundTruthData):
    raise errors.DataError(
      f"data: expected a ground-truth data set (aejax.ground_truth.GroundTruthData), got "
      f"{type(data).__name__}"
    )
  if len(data.factor_sizes) < 2:
    raise errors.DataError(
      f"data: the score predicts which factor was fixed and needs 2 factors at least, got "
      f"{len(data.factor_sizes)} ({data.factor_names})"
    )
  _check_positive("batch_size", batch_size, minimum_batch)
  for name, value in nums.items():
    _check_positive(name, value, 2 if name == "num_variance_estimate" else 1)


def beta_vae_score(
  data: ground_truth.GroundTruthData,
  encode: Encode,
  key: jax.Array,
  batch_size: int = BATCH_SIZE,
  num_train: int = NUM_TRAIN,
  num_eval: int = NUM_EVAL,
  *,
  encode_batch_size: int = ENCODE_BATCH_SIZE,
) -> dict:
  """The beta-VAE score (Higgins et al. 2017): accuracy of predicting which factor was fixed.

  "beta-VAE: Learning Basic Visual Concepts with a Constrained Variational
  Framework".

  One point: draw a factor k uniformly, then `batch_size` pairs of factor rows
  that agree on factor k (the rest independent and uniform); its feature is the
  mean over pairs of |z1 - z2| per code dimension (z = encode(images), the
  posterior mean), its label k. A logistic regression (sklearn defaults, as in
  disentanglement_lib's beta_vae_sklearn) fitted on `num_train` points predicts k;
  the score is its accuracy on those and on `num_eval` fresh points, in [0, 1]
  (chance about 1/num_factors). disentanglement_lib: batch 64, 10,000 and 5,000
  points.

  Keys: split(key) gives the train and the eval set's keys; each splits into the
  fixed factors', the first and second rows', and the images' keys (one
  fold_in per call of `encode`). `encode_batch_size` images go into one call; it
  changes the result only through those image keys.

  Returns {"train_accuracy", "eval_accuracy"}.
  """
  _check_sampling(data, batch_size, 1, num_train=num_train, num_eval=num_eval)
  encode_batch_size = _check_positive("encode_batch_size", encode_batch_size)
  key_train, key_eval = jax.random.split(key)
  train_x, train_y = _beta_vae_points(
    data, encode, key_train, batch_size, num_train, encode_batch_size
  )
  if len(np.unique(train_y)) < 2:
    raise ValueError(f"num_train: {num_train} points drew one fixed factor only; use more")
  model = _fit_quietly(LogisticRegression(), train_x, train_y, "beta_vae_score")
  eval_x, eval_y = _beta_vae_points(data, encode, key_eval, batch_size, num_eval, encode_batch_size)
  return {
    "train_accuracy": float(np.mean(model.predict(train_x) == train_y)),
    "eval_accuracy": float(np.mean(model.predict(eval_x) == eval_y)),
  }


def _factor_vae_votes(
  data: ground_truth.GroundTruthData,
  encode: Encode,
  key: jax.Array,
  batch_size: int,
  num_points: int,
  global_variance_D: np.ndarray,
  active_D: np.ndarray,
  encode_batch_size: int,
) -> np.ndarray:
  """(num_factors, D) votes: how often fixing factor k made code dim d the least variable."""
  num_factors, num_codes = len(data.factor_sizes), len(global_variance_D)
  key_index, key_factors, key_images = jax.random.split(key, 3)
  fixed_P = np.asarray(jax.random.randint(key_index, (num_points,), 0, num_factors))
  factors_PxBxF = _sample_factors(data, num_points * batch_size, key_factors).reshape(
    num_points, batch_size, num_factors
  )
  points = np.arange(num_points)
  factors_PxBxF[points, :, fixed_P] = factors_PxBxF[points, 0, fixed_P][:, None]
  per_call = max(1, encode_batch_size // batch_size)
  least_P = np.empty(num_points, dtype=np.int64)
  for c, start in enumerate(range(0, num_points, per_call)):
    stop = min(start + per_call, num_points)
    factors_MxF = factors_PxBxF[start:stop].reshape(-1, num_factors)
    images = data.images_from_factors(factors_MxF, jax.random.fold_in(key_images, c))
    codes = _encode(encode, images, len(factors_MxF)).reshape(stop - start, batch_size, -1)
    ratio_PxD = np.var(codes, axis=1, ddof=1) / np.where(active_D, global_variance_D, 1.0)
    # Collapsed dims never win: their near-zero variance says nothing about the factor.
    ratio_PxD[:, ~active_D] = np.inf
    least_P[start:stop] = np.argmin(ratio_PxD, axis=1)
  return np.bincount(fixed_P * num_codes + least_P, minlength=num_factors * num_codes).reshape(
    num_factors, num_codes
  )


def factor_vae_score(
  data: ground_truth.GroundTruthData,
  encode: Encode,
  key: jax.Array,
  batch_size: int = BATCH_SIZE,
  num_train: int = NUM_TRAIN,
  num_eval: int = NUM_EVAL,
  num_variance_estimate: int = NUM_VARIANCE_ESTIMATE,
  *,
  prune_std: float = PRUNE_STD,
  encode_batch_size: int = ENCODE_BATCH_SIZE,
) -> dict:
  """The FactorVAE score (Kim & Mnih 2018, "Disentangling by Factorising"): a majority vote.

  The global std s_d of each code dimension is estimated from
  `num_variance_estimate` random images (ddof=1); dims with s_d < `prune_std`
  (0.05) are collapsed and take no part. One point: draw a factor k uniformly,
  fix it to one random value across `batch_size` otherwise random factor rows,
  and take d* = argmin_d var(z_d / s_d) over the batch among the active dims;
  a vote (k, d*). The classifier is the majority vote: dim d predicts the factor
  that most often made it the least variable in the `num_train` training points.
  The score is the share of points whose k the classifier gets right, on the
  training votes and on `num_eval` fresh points, in [0, 1] (chance about
  1/num_factors). With no active dim both accuracies are 0. disentanglement_lib:
  batch 64, 10,000 train, 5,000 eval and 10,000 variance points.

  Keys: split(key, 3) gives the variance estimate's (see
  sample_codes_and_factors), the train and the eval set's keys; each set's key
  splits into the fixed factors', the rows' and the images' keys (one fold_in per
  call of `encode`, `encode_batch_size` images a call).

  Returns {"train_accuracy", "eval_accuracy", "num_active_dims" (int)}. Unlike
  disentanglement_lib, whose "num_active_dims" counts every dim, this counts the
  active ones.
  """
  _check_sampling(
    data,
    batch_size,
    2,
    num_train=num_train,
    num_eval=num_eval,
    num_variance_estimate=num_variance_estimate,
  )
  encode_batch_size = _check_positive("encode_batch_size", encode_batch_size)
  if not prune_std >= 0:
    raise ValueError(f"prune_std: expected a non-negative std, got {prune_std!r}")
  key_variance, key_train, key_eval = jax.random.split(key, 3)
  codes_NxD, _ = sample_codes_and_factors(
    data, encode, num_variance_estimate, key_variance, encode_batch_size
  )
  global_variance_D = np.var(codes_NxD, axis=0, ddof=1)
  active_D = np.sqrt(global_variance_D) >= prune_std
  # A dim with zero variance cannot be normalised, whatever the threshold.
  active_D &= global_variance_D > 0
  num_active = int(active_D.sum())
  if num_active == 0:
    return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}

  def votes(key_set, num_points):
    return _factor_vae_votes(
      data, encode, key_set, batch_size, num_points, global_variance_D, active_D, encode_batch_size
    )

  train_votes_FxD, eval_votes_FxD = votes(key_train, num_train), votes(key_eval, num_eval)
  classifier_D = np.argmax(train_votes_FxD, axis=0)
  dims = np.arange(len(classifier_D))
  return {
    "train_accuracy": float(train_votes_FxD[classifier_D, dims].sum() / num_train),
    "eval_accuracy": float(eval_votes_FxD[classifier_D, dims].sum() / num_eval),
    "num_active_dims": num_active,
  }


# ---------------------------------------------------------------------------
# Every score of one model.

# The scalar scores `scores` returns, in the order reports list them: (key, what it is).
SCORES = (
  ("beta_vae_score", "beta-VAE score, eval accuracy"),
  ("factor_vae_score", "FactorVAE score, eval accuracy"),
  ("mig", "MIG"),
  ("dci_disentanglement", "DCI disentanglement"),
  ("dci_completeness", "DCI completeness"),
  ("dci_informativeness", "DCI informativeness, test accuracy"),
  ("sap", "SAP"),
  ("modularity", "modularity"),
  ("explicitness", "explicitness, test ROC AUC"),
  ("gaussian_total_correlation", "Gaussian total correlation of the codes (nats)"),
  ("mutual_info_score", "mutual information between code dimensions (nats)"),
)


def scores(
  data: ground_truth.GroundTruthData,
  encode: Encode,
  key: jax.Array,
  num_train: int = NUM_TRAIN,
  num_eval: int = NUM_EVAL,
  *,
  num_trees: int = DCI_NUM_TREES,
  encode_batch_size: int = ENCODE_BATCH_SIZE,
) -> dict:
  """Every metric of this module for one encoder, as disentanglement_lib's evaluation runs them.

  One table of `num_train` codes and factors (sample_codes_and_factors) serves
  MIG, the train side of DCI, SAP, modularity and explicitness and the
  unsupervised scores; a second of `num_eval` codes their test side. The
  beta-VAE and FactorVAE scores draw their own points: `num_train` training and
  `num_eval` evaluation points, and `num_train` images for FactorVAE's variance
  estimate. disentanglement_lib uses 10,000 and 5,000 throughout (the defaults);
  fewer make every score cheaper and noisier. The beta-VAE score encodes
  2 x 64 x (num_train + num_eval) images, most of the cost.

  Keys: split(key, 4) gives the train table's, the test table's, the beta-VAE
  and the FactorVAE score's keys.

  Returns the SCORES keys (floats) and "mutual_info_matrix", (num_codes,
  num_factors) nats: I(code_d; factor_j) of the train table's discretized codes,
  what the MI heat map draws.
  """
  key_train, key_test, key_beta, key_factor = jax.random.split(key, 4)
  table = dict(encode_batch_size=encode_batch_size)
  codes_NxD, factors_NxF = sample_codes_and_factors(
    data, encode, num_train, key_train, encode_batch_size
  )
  test_MxD, test_MxF = sample_codes_and_factors(data, encode, num_eval, key_test, encode_batch_size)
  dci_scores = dci(codes_NxD, factors_NxF, test_MxD, test_MxF, num_trees=num_trees)
  modular = modularity_explicitness(codes_NxD, factors_NxF, test_MxD, test_MxF)
  unsupervised = unsupervised_scores(codes_NxD)
  beta = beta_vae_score(data, encode, key_beta, num_train=num_train, num_eval=num_eval, **table)
  factor = factor_vae_score(
    data, encode, key_factor, num_train=num_train, num_eval=num_eval,
    num_variance_estimate=num_train, **table,
  )  # fmt: skip
  return {
    "beta_vae_score": beta["eval_accuracy"],
    "factor_vae_score": factor["eval_accuracy"],
    "mig": mig(codes_NxD, factors_NxF)["mig"],
    "dci_disentanglement": dci_scores["disentanglement"],
    "dci_completeness": dci_scores["completeness"],
    "dci_informativeness": dci_scores["informativeness_test"],
    "sap": sap(codes_NxD, factors_NxF, test_MxD, test_MxF),
    "modularity": modular["modularity"],
    "explicitness": modular["explicitness_test"],
    "gaussian_total_correlation": unsupervised["gaussian_total_correlation"],
    "mutual_info_score": unsupervised["mutual_info_score"],
    "mutual_info_matrix": mutual_info_matrix(discretize(codes_NxD), factors_NxF),
  }
