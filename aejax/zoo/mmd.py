"""Kernels and the unbiased maximum mean discrepancy (MMD) between two samples of codes.

MMD^2(P, Q) = E k(x, x') + E k(y, y') - 2 E k(x, y) for x, x' ~ P and y, y' ~ Q
(Gretton et al. 2012, "A kernel two-sample test", JMLR). `mmd_unbiased` is its
U-statistic: the diagonals of the within-sample kernel matrices (k(x_i, x_i))
are left out, so those sums are divided by N(N-1) and M(M-1); the cross term
is divided by N*M. Its expectation is MMD^2 exactly, so it is 0 in expectation
when both samples come from one distribution, and a single draw can be
negative.

The kernels are those of Tolstikhin et al. (2018), "Wasserstein Auto-Encoders"
(ICLR): the inverse multiquadratic C / (C + ||x - y||^2) with C = 2 * D *
sigma^2 for a N(0, sigma^2 I) prior in D dimensions (sigma^2 = 1 here), summed
over the scales C * s, s in `WAE_SCALES`, as in the paper's released code; and
the Gaussian (RBF) kernel exp(-||x - y||^2 / C) on the same scales.
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from aejax import errors
from aejax.zoo import options

KERNELS = ("imq", "rbf")
# The scales of Tolstikhin et al.'s released code: the kernel is summed over C * s.
WAE_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)

Kernel = Callable[[jax.Array, jax.Array], jax.Array]


def squared_distances(x_NxD: jax.Array, y_MxD: jax.Array) -> jax.Array:
  """||x_i - y_j||^2 for every pair: (N, M).

  Formed from the differences, not as |x|^2 + |y|^2 - 2 x.y: exact (never
  negative, 0 on the diagonal) and free of the reduced-precision matmuls that
  accelerators use by default for float32; the (N, M, D) difference is small
  for the batch sizes and latent dimensions of this zoo.
  """
  return jnp.sum(jnp.square(x_NxD[:, None, :] - y_MxD[None, :, :]), axis=-1)


def imq_kernel(x_NxD: jax.Array, y_MxD: jax.Array, scale) -> jax.Array:
  """The inverse multiquadratic kernel C / (C + ||x - y||^2), C = `scale`: (N, M)."""
  return scale / (scale + squared_distances(x_NxD, y_MxD))


def rbf_kernel(x_NxD: jax.Array, y_MxD: jax.Array, scale) -> jax.Array:
  """The Gaussian kernel exp(-||x - y||^2 / C), C = `scale` (= 2 * bandwidth^2): (N, M)."""
  return jnp.exp(-squared_distances(x_NxD, y_MxD) / scale)


_KERNELS = {"imq": imq_kernel, "rbf": rbf_kernel}


def multiscale_kernel(
  name: str, latent_dim: int, scales: Sequence[float], prior_variance: float = 1.0
) -> Kernel:
  """(x, y) -> sum over s in `scales` of kernel `name` at C * s, C = 2 * latent_dim * prior var.

  C is the expected squared distance between two draws of N(0, prior_variance I).
  """
  if name not in _KERNELS:
    raise errors.ConfigError(
      f"config.model.options.kernel: unknown kernel {name!r}; valid: {', '.join(KERNELS)}"
    )
  kernel = _KERNELS[name]
  base = 2.0 * latent_dim * prior_variance
  scales = tuple(float(s) for s in scales)

  def k(x_NxD: jax.Array, y_MxD: jax.Array) -> jax.Array:
    return sum(kernel(x_NxD, y_MxD, base * s) for s in scales)

  return k


def _sum_off_diagonal(k_NxN: jax.Array) -> jax.Array:
  n = k_NxN.shape[0]
  return jnp.sum(jnp.where(jnp.eye(n, dtype=bool), 0.0, k_NxN))


def mmd_unbiased(x_NxD: jax.Array, y_MxD: jax.Array, kernel: Kernel) -> jax.Array:
  """The unbiased estimate of MMD^2 between the samples x and y: a scalar ().

  sum_{i != j} k(x_i, x_j) / (N(N-1)) + sum_{i != j} k(y_i, y_j) / (M(M-1))
  - 2 sum_{i, j} k(x_i, y_j) / (N M). Needs N, M >= 2.
  """
  n, m = x_NxD.shape[0], y_MxD.shape[0]
  if n < 2 or m < 2:
    raise errors.ConfigError(
      f"config.batch_size: the MMD's unbiased estimate needs at least 2 codes and 2 prior "
      f"draws per batch, got {n} and {m}"
    )
  within_x = _sum_off_diagonal(kernel(x_NxD, x_NxD)) / (n * (n - 1))
  within_y = _sum_off_diagonal(kernel(y_MxD, y_MxD)) / (m * (m - 1))
  cross = jnp.sum(kernel(x_NxD, y_MxD)) / (n * m)
  return within_x + within_y - 2.0 * cross


def check_kernel_options(model_config, opts: dict) -> None:
  """The options `kernel` and `kernel_scales` a MMD model reads: ConfigErrors naming them."""
  options.check(
    opts["kernel"] in KERNELS,
    model_config,
    "kernel",
    f"unknown kernel {opts['kernel']!r}; valid: {', '.join(KERNELS)}",
  )
  scales = opts["kernel_scales"]
  options.check(
    len(scales) > 0
    and all(isinstance(s, int | float) and not isinstance(s, bool) and s > 0 for s in scales),
    model_config,
    "kernel_scales",
    f"must be a non-empty list of positive numbers, got {scales!r}",
  )
