"""Probes of what a latent code holds: linear read-out and nearest-neighbour accuracy of labels."""

import logging
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

PROBE_MAX_ITER = 1000
KNN_NEIGHBOURS = 5


def linear_probe_accuracy(
  train_codes: np.ndarray,
  train_labels: np.ndarray,
  test_codes: np.ndarray,
  test_labels: np.ndarray,
  seed: int = 0,
) -> float:
  """Test accuracy of a logistic regression on standardized codes (how linearly readable)."""
  # Standardizing puts PCA components (variances spanning orders of magnitude) and AE codes
  # (arbitrary scale) on the same footing for the regularized regression.
  probe = make_pipeline(
    StandardScaler(), LogisticRegression(max_iter=PROBE_MAX_ITER, random_state=seed)
  )
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", ConvergenceWarning)
    probe.fit(np.asarray(train_codes, np.float64), np.asarray(train_labels))
  if any(issubclass(w.category, ConvergenceWarning) for w in caught):
    logging.warning(
      "linear probe: logistic regression did not converge in %d iterations", PROBE_MAX_ITER
    )
  return float(probe.score(np.asarray(test_codes, np.float64), np.asarray(test_labels)))


def knn_accuracy(
  train_codes: np.ndarray,
  train_labels: np.ndarray,
  test_codes: np.ndarray,
  test_labels: np.ndarray,
  k: int = KNN_NEIGHBOURS,
) -> float:
  """Test accuracy of a k-nearest-neighbour classifier (Euclidean) on standardised codes."""
  # Standardised like the linear probe, so an AE's arbitrary code scale per unit does not decide.
  knn = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=k))
  knn.fit(np.asarray(train_codes, np.float64), np.asarray(train_labels))
  return float(knn.score(np.asarray(test_codes, np.float64), np.asarray(test_labels)))
