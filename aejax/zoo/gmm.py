"""The ex-post density estimator of regularised autoencoders: a Gaussian mixture fitted by EM.

Ghosh, Sajjadi, Vergari, Black & Schölkopf (2020), "From Variational to
Deterministic Autoencoders" (ICLR), sec. 4: a deterministic autoencoder has no
prior to sample, so after training a 10-component Gaussian mixture with full
covariances is fitted to the codes of the training images, and new images are
decoded from its samples. It also improves the samples of VAEs (their Table 1).

Pure NumPy in float64, no JAX: the fit runs once per checkpoint on at most a
few thousand codes of a few dozen dimensions, where EM takes seconds on a CPU.
- `fit_gmm`: k-means++ seeding from `seed` (Arthur & Vassilvitskii 2007), each
  code assigned to its nearest seed, then EM until the mean log-likelihood per
  code rises by less than `tol` nats (or `max_iter` M-steps). `reg_covar` is
  added to every covariance's diagonal so that a component on a flat set of
  codes stays positive definite.
- `log_density`: log p(x) per row through Cholesky factors and a log-sum-exp.
- `sample`: component index ~ Categorical(weights), then mean + L @ eps.
- `save` / `load`: one .npz (no pickle), written atomically, so a fit can be
  cached next to a checkpoint.
"""

import dataclasses
import math
import os
import pathlib
import tempfile

import numpy as np

from aejax import errors

_LOG_2PI = math.log(2.0 * math.pi)
_FORMAT_VERSION = 1
_FIELDS = ("weights", "means", "covariances", "log_likelihood", "history", "iterations", "version")


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianMixture:
  """A fitted mixture: p(x) = sum_k weights_K[k] N(x; means_KxD[k], covariances_KxDxD[k]).

  `log_likelihood` is the mean log p(code) over the codes it was fitted to (nats
  per code) for these very parameters; `history` holds that mean after the
  initialisation and after every M-step (EM never lowers it, up to the
  `reg_covar` added to the covariances); `iterations` counts the M-steps.
  """

  weights_K: np.ndarray
  means_KxD: np.ndarray
  covariances_KxDxD: np.ndarray
  log_likelihood: float
  iterations: int
  history: tuple[float, ...] = ()

  @property
  def num_components(self) -> int:
    return int(self.weights_K.shape[0])

  @property
  def dim(self) -> int:
    return int(self.means_KxD.shape[1])


# -- checks -----------------------------------------------------------------


def _as_codes(name: str, x, dim: int | None = None) -> np.ndarray:
  """`x` as a finite float64 (N, D) array, else an InputError naming `name` and the shape."""
  try:
    array = np.asarray(x, dtype=np.float64)
  except (TypeError, ValueError) as error:
    raise errors.InputError(
      f"{name}: expected a numeric (N, D) array, got {type(x).__name__}"
    ) from error
  if array.ndim != 2:
    raise errors.InputError(
      f"{name}: expected a 2-D array (N codes, D dimensions), got shape {array.shape}"
    )
  if array.shape[1] < 1:
    raise errors.InputError(f"{name}: codes need at least one dimension, got shape {array.shape}")
  if dim is not None and array.shape[1] != dim:
    raise errors.InputError(
      f"{name}: the mixture has {dim} dimensions, got codes of shape {array.shape}"
    )
  bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
  if bad:
    raise errors.InputError(
      f"{name}: {bad} NaN or infinite values in the array of shape {array.shape}"
    )
  return array


def _check_int(name: str, value, minimum: int) -> int:
  if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < minimum:
    raise errors.InputError(f"{name}: expected an integer >= {minimum}, got {value!r}")
  return int(value)


def _check_float(name: str, value) -> float:
  ok = isinstance(value, int | float | np.floating) and not isinstance(value, bool)
  if not ok or not math.isfinite(value) or value < 0:
    raise errors.InputError(f"{name}: expected a finite number >= 0, got {value!r}")
  return float(value)


# -- the pieces of EM -------------------------------------------------------


def _logsumexp(a_NxK: np.ndarray) -> np.ndarray:
  """log sum_k exp(a[:, k]), shifted by the row maximum so that nothing overflows."""
  shift_N = np.max(a_NxK, axis=1)
  shift_N = np.where(np.isfinite(shift_N), shift_N, 0.0)
  return shift_N + np.log(np.sum(np.exp(a_NxK - shift_N[:, None]), axis=1))


def _component_log_densities(
  x_NxD: np.ndarray, means_KxD: np.ndarray, covariances_KxDxD: np.ndarray
) -> np.ndarray:
  """log N(x_n; mean_k, cov_k) for every pair: (N, K).

  With cov = L L^T (Cholesky), the Mahalanobis term is |L^{-1} (x - mean)|^2 and
  log det cov = 2 sum log diag L; no covariance is ever inverted directly.
  """
  num, dim = x_NxD.shape
  out_NxK = np.empty((num, means_KxD.shape[0]))
  eye_DxD = np.eye(dim)
  for k, (mean_D, cov_DxD) in enumerate(zip(means_KxD, covariances_KxDxD, strict=True)):
    try:
      chol_DxD = np.linalg.cholesky(cov_DxD)
    except np.linalg.LinAlgError as error:
      raise errors.InputError(
        f"covariances_KxDxD: component {k} is not positive definite; fit with a larger reg_covar"
      ) from error
    inv_chol_DxD = np.linalg.solve(chol_DxD, eye_DxD)
    white_NxD = (x_NxD - mean_D) @ inv_chol_DxD.T
    log_det = 2.0 * np.sum(np.log(np.diag(chol_DxD)))
    out_NxK[:, k] = -0.5 * (dim * _LOG_2PI + log_det + np.sum(white_NxD**2, axis=1))
  return out_NxK


def _e_step(x_NxD, weights_K, means_KxD, covariances_KxDxD):
  """(mean log p(x) per code, responsibilities (N, K))."""
  with np.errstate(divide="ignore"):  # A component whose weight underflowed to 0: log 0 = -inf.
    joint_NxK = np.log(weights_K) + _component_log_densities(x_NxD, means_KxD, covariances_KxDxD)
  log_px_N = _logsumexp(joint_NxK)
  return float(np.mean(log_px_N)), np.exp(joint_NxK - log_px_N[:, None])


def _m_step(x_NxD, resp_NxK, reg_covar: float):
  """Maximum-likelihood weights, means and covariances for the responsibilities."""
  # A tiny floor keeps an emptied component finite (mean 0, covariance reg_covar I, weight ~0).
  counts_K = resp_NxK.sum(axis=0) + 10.0 * np.finfo(np.float64).eps
  means_KxD = (resp_NxK.T @ x_NxD) / counts_K[:, None]
  dim = x_NxD.shape[1]
  covariances_KxDxD = np.empty((len(counts_K), dim, dim))
  for k in range(len(counts_K)):
    # W^T W with W = sqrt(resp) * (x - mean): a symmetric product, which BLAS does fastest.
    weighted_NxD = np.sqrt(resp_NxK[:, k, None]) * (x_NxD - means_KxD[k])
    cov_DxD = weighted_NxD.T @ weighted_NxD / counts_K[k]
    # Symmetrised: the product is symmetric only up to rounding, and Cholesky reads one triangle.
    covariances_KxDxD[k] = 0.5 * (cov_DxD + cov_DxD.T) + reg_covar * np.eye(dim)
  return counts_K / counts_K.sum(), means_KxD, covariances_KxDxD


def _kmeans_plus_plus(x_NxD: np.ndarray, num_components: int, rng: np.random.Generator):
  """Indices of `num_components` seeds: the first uniform, each next with prob. ~ D(x)^2."""
  num = x_NxD.shape[0]
  chosen = [int(rng.integers(num))]
  dist2_N = np.sum((x_NxD - x_NxD[chosen[0]]) ** 2, axis=1)
  for _ in range(1, num_components):
    total = dist2_N.sum()
    if total > 0:
      index = int(rng.choice(num, p=dist2_N / total))
    else:  # Every code coincides with a seed: any unused code will do.
      index = int(rng.choice(np.setdiff1d(np.arange(num), chosen)))
    chosen.append(index)
    dist2_N = np.minimum(dist2_N, np.sum((x_NxD - x_NxD[index]) ** 2, axis=1))
  return np.asarray(chosen)


# -- the API ----------------------------------------------------------------


def fit_gmm(
  codes_NxD,
  num_components: int = 10,
  seed: int = 0,
  max_iter: int = 100,
  tol: float = 1e-6,
  reg_covar: float = 1e-6,
) -> GaussianMixture:
  """A full-covariance Gaussian mixture fitted to `codes_NxD` by EM; deterministic in `seed`.

  Stops when an M-step raises the mean log-likelihood per code by less than
  `tol` nats, or after `max_iter` M-steps.
  """
  x_NxD = _as_codes("codes_NxD", codes_NxD)
  num_components = _check_int("num_components", num_components, 1)
  if x_NxD.shape[0] < num_components:
    raise errors.InputError(
      f"codes_NxD: {x_NxD.shape[0]} codes (shape {x_NxD.shape}) are fewer than "
      f"num_components={num_components}"
    )
  seed = _check_int("seed", seed, 0)
  max_iter = _check_int("max_iter", max_iter, 1)
  tol, reg_covar = _check_float("tol", tol), _check_float("reg_covar", reg_covar)

  rng = np.random.default_rng(seed)
  seeds_KxD = x_NxD[_kmeans_plus_plus(x_NxD, num_components, rng)]
  # Hard assignment to the nearest seed gives the first responsibilities.
  dist2_NxK = np.sum((x_NxD[:, None, :] - seeds_KxD[None, :, :]) ** 2, axis=-1)
  resp_NxK = np.eye(num_components)[np.argmin(dist2_NxK, axis=1)]
  params = _m_step(x_NxD, resp_NxK, reg_covar)
  log_likelihood, resp_NxK = _e_step(x_NxD, *params)
  history = [log_likelihood]
  for _ in range(max_iter):
    params = _m_step(x_NxD, resp_NxK, reg_covar)
    new_log_likelihood, resp_NxK = _e_step(x_NxD, *params)
    history.append(new_log_likelihood)
    converged = abs(new_log_likelihood - log_likelihood) < tol
    log_likelihood = new_log_likelihood
    if converged:
      break
  weights_K, means_KxD, covariances_KxDxD = params
  return GaussianMixture(
    weights_K=weights_K,
    means_KxD=means_KxD,
    covariances_KxDxD=covariances_KxDxD,
    log_likelihood=float(log_likelihood),
    iterations=len(history) - 1,
    history=tuple(float(v) for v in history),
  )


def log_density(gmm: GaussianMixture, x_NxD) -> np.ndarray:
  """log p(x) of each row of `x_NxD` under the mixture: (N,), float64, nats."""
  x_NxD = _as_codes("x_NxD", x_NxD, dim=gmm.dim)
  with np.errstate(divide="ignore"):
    joint_NxK = np.log(gmm.weights_K) + _component_log_densities(
      x_NxD, gmm.means_KxD, gmm.covariances_KxDxD
    )
  return _logsumexp(joint_NxK)


def sample(gmm: GaussianMixture, n: int, seed: int = 0) -> np.ndarray:
  """`n` draws from the mixture, (n, D) float32; deterministic in `seed`."""
  n = _check_int("n", n, 1)
  seed = _check_int("seed", seed, 0)
  rng = np.random.default_rng(seed)
  component_n = rng.choice(gmm.num_components, size=n, p=gmm.weights_K / gmm.weights_K.sum())
  eps_nxD = rng.standard_normal((n, gmm.dim))
  chol_KxDxD = np.linalg.cholesky(gmm.covariances_KxDxD)
  draws_nxD = gmm.means_KxD[component_n] + np.einsum("nij,nj->ni", chol_KxDxD[component_n], eps_nxD)
  return draws_nxD.astype(np.float32)


def save(gmm: GaussianMixture, path) -> None:
  """Writes the mixture to `path` (.npz): a temporary file in the same folder, then a rename.

  The rename is atomic, so a reader sees the old file or the whole new one,
  never a half-written cache.
  """
  path = pathlib.Path(path)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(
        f,
        weights=gmm.weights_K,
        means=gmm.means_KxD,
        covariances=gmm.covariances_KxDxD,
        log_likelihood=np.float64(gmm.log_likelihood),
        history=np.asarray(gmm.history, np.float64),
        iterations=np.int64(gmm.iterations),
        version=np.int64(_FORMAT_VERSION),
      )
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def load(path) -> GaussianMixture:
  """The mixture that `save` wrote to `path`; an InputError if the file is not one."""
  path = pathlib.Path(path)
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {name: np.asarray(f[name]) for name in f.files}
  except (OSError, ValueError, EOFError) as error:
    raise errors.InputError(f"{path}: not a readable Gaussian mixture file ({error})") from error
  missing = [name for name in _FIELDS if name not in arrays]
  if missing:
    raise errors.InputError(f"{path}: not a Gaussian mixture file (missing {', '.join(missing)})")
  if int(arrays["version"]) != _FORMAT_VERSION:
    raise errors.InputError(
      f"{path}: mixture file version {int(arrays['version'])}, expected {_FORMAT_VERSION}"
    )
  weights_K, means_KxD, cov_KxDxD = arrays["weights"], arrays["means"], arrays["covariances"]
  k, d = means_KxD.shape if means_KxD.ndim == 2 else (-1, -1)
  if weights_K.shape != (k,) or cov_KxDxD.shape != (k, d, d) or k < 1:
    raise errors.InputError(
      f"{path}: inconsistent shapes weights {weights_K.shape}, means {means_KxD.shape}, "
      f"covariances {cov_KxDxD.shape}"
    )
  return GaussianMixture(
    weights_K=weights_K.astype(np.float64),
    means_KxD=means_KxD.astype(np.float64),
    covariances_KxDxD=cov_KxDxD.astype(np.float64),
    log_likelihood=float(arrays["log_likelihood"]),
    iterations=int(arrays["iterations"]),
    history=tuple(float(v) for v in arrays["history"]),
  )
