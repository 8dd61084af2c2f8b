"""The Fréchet distance between two sets of image features, and the feature-extractor interface.

FID (Heusel et al., 2017) fits a Gaussian to the features of each image set
and reports the Fréchet (2-Wasserstein) distance between the two Gaussians:

    FD = ||mu_1 - mu_2||^2 + Tr(C_1) + Tr(C_2) - 2 Tr((C_1 C_2)^(1/2)).

aejax/fid.py trains the default feature network; any `FeatureExtractor` works.
"""

import dataclasses
from collections.abc import Callable

import numpy as np

from aejax import errors

# ---------------------------------------------------------------------------
# The distance: float64 NumPy on the host.


def feature_statistics(features_NxF) -> tuple[np.ndarray, np.ndarray]:
  """(mean (F,), covariance (F, F)) of the features in float64; the covariance with 1 / (N - 1)."""
  x = np.asarray(features_NxF, np.float64)
  if x.ndim != 2 or len(x) < 2:
    raise errors.InputError(f"feature_statistics: expected (N >= 2, F) features, got {x.shape}")
  if not np.all(np.isfinite(x)):
    raise errors.InputError("feature_statistics: the features contain NaN or inf")
  return x.mean(axis=0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1])


def _sqrt_psd(cov_FxF: np.ndarray) -> np.ndarray:
  """The symmetric square root of a covariance; rounding's tiny negative eigenvalues become 0."""
  eigenvalues, vectors = np.linalg.eigh(cov_FxF)
  return (vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ vectors.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
  """||mu1 - mu2||^2 + Tr(C1) + Tr(C2) - 2 Tr((C1 C2)^(1/2)), in float64: the squared W2 distance.

  C1 C2 is not symmetric, and scipy.linalg.sqrtm of it returns complex
  values and loses accuracy when the covariances are (near) singular, as they
  are with fewer images than features or with dead ReLU units. Instead:
  C1 C2 = S (S C2) with S = C1^(1/2), and S C2 S = (S C2) S has the same
  eigenvalues (AB and BA do), and is symmetric positive semi-definite. So
  Tr((C1 C2)^(1/2)) = sum_i sqrt(lambda_i(S C2 S)), from a symmetric
  eigen-decomposition, with rounding's tiny negative eigenvalues set to 0.
  The result is clipped at 0 (it can come out at -1e-12 for equal inputs).
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
  f = mu1.shape[0] if mu1.ndim == 1 else -1
  if mu2.shape != (f,) or cov1.shape != (f, f) or cov2.shape != (f, f):
    raise errors.InputError(
      "frechet_distance: expected means (F,) and covariances (F, F) of one F, got "
      f"{mu1.shape}, {cov1.shape}, {mu2.shape}, {cov2.shape}"
    )
  if not all(np.all(np.isfinite(a)) for a in (mu1, mu2, cov1, cov2)):
    raise errors.InputError("frechet_distance: the statistics contain NaN or inf")
  # Symmetrise first: a covariance computed in floating point is symmetric only to rounding.
  cov1, cov2 = 0.5 * (cov1 + cov1.T), 0.5 * (cov2 + cov2.T)
  sqrt_cov1 = _sqrt_psd(cov1)
  product = sqrt_cov1 @ cov2 @ sqrt_cov1
  eigenvalues = np.linalg.eigvalsh(0.5 * (product + product.T))
  trace_sqrt = np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None)))
  diff = mu1 - mu2
  distance = diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt
  return float(max(distance, 0.0))


# ---------------------------------------------------------------------------
# Feature extractors.


def check_images(images, what: str, image_shape: tuple[int, ...] | None = None) -> np.ndarray:
  x = np.asarray(images)
  if x.ndim != 4 or len(x) == 0:
    raise errors.InputError(f"{what}: expected images (N >= 1, H, W, C), got shape {x.shape}")
  if image_shape is not None and tuple(x.shape[1:]) != tuple(image_shape):
    raise errors.InputError(
      f"{what}: images of shape {tuple(x.shape[1:])}, but it takes {tuple(image_shape)}"
    )
  if not np.issubdtype(x.dtype, np.floating):
    raise errors.InputError(f"{what}: dtype {x.dtype}; expected floats in [0, 1]")
  if not (np.all(np.isfinite(x)) and x.min() >= 0.0 and x.max() <= 1.0):
    raise errors.InputError(f"{what}: values must be finite and lie in [0, 1]")
  return x.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class FeatureExtractor:
  """A named map from images (N, H, W, C) in [0, 1] to features (N, F).

  Attributes:
    name: says exactly which network and weights make the features; written beside every FID.
    fn: images_NxHxWxC (float32 in [0, 1]) -> features (N, F).
    image_shape: (H, W, C) the network takes, or None for any.
    test_accuracy: the network's test accuracy where it is a classifier aejax measured.
  """

  name: str
  fn: Callable[[np.ndarray], np.ndarray]
  image_shape: tuple[int, ...] | None = None
  test_accuracy: float | None = None

  def __call__(self, images_NxHxWxC) -> np.ndarray:
    x = check_images(images_NxHxWxC, f"feature extractor {self.name}", self.image_shape)
    features = np.asarray(self.fn(x))
    if features.ndim != 2 or len(features) != len(x):
      raise errors.InputError(
        f"feature extractor {self.name}: returned shape {features.shape} for {len(x)} images; "
        "expected (N, F)"
      )
    return features


def fid(extractor, images_a, images_b) -> float:
  """FID between two image sets (N, H, W, C) in [0, 1] on `extractor`'s features.

  FID is biased upwards at small N (the covariances are estimated): compare
  numbers computed with the same numbers of images and the same extractor.
  """
  stats_a = feature_statistics(extractor(images_a))
  stats_b = feature_statistics(extractor(images_b))
  return frechet_distance(*stats_a, *stats_b)
