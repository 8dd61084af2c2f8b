"""Likelihoods, the Gaussian KL and the ELBO, with explicit reductions.

Conventions used everywhere in aejax:
- A decoder returns `logits_BxHxWxC`, unconstrained. The reconstruction (the
  mean of the likelihood; the logistic's location for "discretized_logistic")
  is `sigmoid(logits)` for every likelihood, so pixel values stay in [0, 1].
- Per-image quantities are SUMMED over pixels (nats per image); batch
  quantities are the MEAN over images. Per-pixel means (the lesson's BCE,
  MSE) are reported separately and are never what an ELBO is made of.
- The encoder of a VAE predicts the posterior mean and the LOG-VARIANCE of a
  diagonal Gaussian: q(z|x) = N(mean, diag(exp(logvar))). The sample is
  `mean + exp(0.5 * logvar) * eps` and the KL below uses the same variance
  exp(logvar), so sampling and KL cannot disagree (the Keras-blog bug of
  sampling with a standard deviation but computing the KL of a variance).
"""

import math

import jax
import jax.numpy as jnp

from aejax import errors

LIKELIHOODS = ("bernoulli", "gaussian", "discretized_logistic")
# The likelihoods with a scale exp(log_scale) (config.model.log_scale, learned or fixed).
SCALED_LIKELIHOODS = ("gaussian", "discretized_logistic")
NUM_LEVELS = 256  # Grey levels of 8-bit images: pixel k / 255 for k in 0..255.
_LOG_2PI = math.log(2.0 * math.pi)
_OPEN_EDGE = 1e30  # Stands for an infinite bin edge (see discretized_logistic_log_prob).


def _softplus(x: jax.Array) -> jax.Array:
  """log(1 + exp(x)), exact and stable; see bernoulli_nll for why not jax.nn.softplus."""
  return jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


def bernoulli_nll(logits: jax.Array, target: jax.Array) -> jax.Array:
  """-log Bernoulli(target | sigmoid(logits)), per pixel, in nats.

  Written as softplus(logits) - target * logits, which is stable for large
  |logits| (no log(0)). Targets may be grey levels in [0, 1] (the lesson's
  "BCE on grey levels"); it is then a cross-entropy, not a likelihood.

  softplus(l) is spelled max(l, 0) + log1p(exp(-|l|)) in _softplus (exact, and its gradient
  is sigmoid(l), 1/2 at 0): jax.nn.softplus goes through logaddexp's NaN and
  infinity handling and is 3x slower on CPU, where this term is a third of the
  5000-sample NLL's time (docs/performance.md).
  """
  return _softplus(logits) - target * logits


def gaussian_nll(logits: jax.Array, target: jax.Array, log_scale: jax.Array) -> jax.Array:
  """-log N(target | sigmoid(logits), exp(log_scale)^2), per pixel, in nats."""
  mean = jax.nn.sigmoid(logits)
  return 0.5 * jnp.square((target - mean) * jnp.exp(-log_scale)) + log_scale + 0.5 * _LOG_2PI


def quantise(target: jax.Array) -> jax.Array:
  """Pixel values in [0, 1] -> the nearest of the 256 levels k in 0..255 (as floats).

  Level k takes the values within 1/2 / 255 of k / 255 (a value exactly
  between two levels goes to the even one, as jnp.round); values outside
  [0, 1] go to the edge levels.
  """
  return jnp.clip(jnp.round(target * (NUM_LEVELS - 1)), 0.0, NUM_LEVELS - 1.0)


def discretized_logistic_log_prob(logits: jax.Array, level: jax.Array, log_scale) -> jax.Array:
  """log P(level | mu = sigmoid(logits), s = exp(log_scale)) per pixel, nats; level in 0..255.

  One logistic component of Salimans et al. (2017, PixelCNN++) on 8-bit
  pixels: mu and s are in the [0, 1] units of the image, and level k gets the
  logistic's mass over its bin [(k - 1/2) / 255, (k + 1/2) / 255], with the
  edge bins open (k = 0 takes everything below 1/2 / 255, k = 255 everything
  above 254.5 / 255), so the 256 probabilities sum to one: a proper discrete
  likelihood. With a = ((k + 1/2) / 255 - mu) / s, b = ((k - 1/2) / 255 - mu) / s,
    sigma(a) - sigma(b) = sigma(a) sigma(-b) (1 - exp(b - a)),
  so log P = log sigma(a) + log sigma(-b) + log(-expm1(-1 / (255 s))): three
  finite terms for any finite mu and s, where subtracting two sigmoids would
  round to 0 (log 0) far from mu or for a small s. k = 0 keeps only
  log sigma(a), k = 255 only log sigma(-b). `level` must hold whole numbers
  (see `quantise`).
  """
  mean = jax.nn.sigmoid(logits)
  inv_scale = jnp.exp(-log_scale)
  # 1 at level 0 (resp. 255), else 0, by arithmetic: selects (jnp.where) made this function 1.6x
  # slower on CPU, where it is the inner loop of the 5000-sample NLL.
  bottom = jnp.maximum(1.0 - level, 0.0)
  top = jnp.maximum(level - (NUM_LEVELS - 2), 0.0)
  # Each bin edge is computed by the same float operations whether it is the upper edge of level
  # k or the lower edge of k + 1, so neighbouring bins meet exactly and the 256 probabilities sum
  # to one even when s is below float32's resolution of mu. The open ends move the outer edge to
  # +-1e30 (sigma = 1 or 0 exactly, zero gradient; finite, unlike inf, so 0 * edge stays 0).
  upper = ((level + 0.5) / (NUM_LEVELS - 1) - mean) * inv_scale + top * _OPEN_EDGE
  lower = ((level - 0.5) / (NUM_LEVELS - 1) - mean) * inv_scale - bottom * _OPEN_EDGE
  # log(1 - exp(b - a)) with b - a = -1 / (255 s) exactly: the same for every pixel of one scale;
  # an open bin has no such factor.
  log_bin_width = jnp.log(-jnp.expm1(-inv_scale / (NUM_LEVELS - 1)))
  # log sigma(x) = -softplus(-x).
  return -_softplus(-upper) - _softplus(lower) + (1.0 - bottom - top) * log_bin_width


def discretized_logistic_nll(logits: jax.Array, target: jax.Array, log_scale) -> jax.Array:
  """-log P(quantise(target) | sigmoid(logits), exp(log_scale)), per pixel, in nats.

  `target` in [0, 1] is rounded to its 8-bit level first (see `quantise`), so
  grey levels k / 255 are scored exactly and binary 0 / 1 targets as levels 0
  and 255.
  """
  return -discretized_logistic_log_prob(logits, quantise(target), log_scale)


def discrete_bits_per_dim(nll_nats, num_dims: int):
  """A discrete NLL in nats per image -> bits per dimension: nll / (num_dims * ln 2).

  Only meaningful for a likelihood of discrete data (the discretized logistic,
  or a Bernoulli on binary data); for a density of dequantised data see
  estimators.bits_per_dim.
  """
  return nll_nats / (num_dims * math.log(2.0))


def reconstruction_nll(
  likelihood: str, logits: jax.Array, target: jax.Array, log_scale: jax.Array | None = None
) -> jax.Array:
  """Negative log-likelihood of each image, summed over pixels: shape (B,), nats per image.

  `log_scale` (Gaussian and discretized logistic) is one number for every pixel. The images are
  flattened to (B, pixels) before the per-pixel terms: on CPU XLA runs the
  elementwise terms and the sum over (B, H, W, C) arrays much slower, and this
  is the NLL estimator's inner loop (docs/performance.md has the numbers).
  """
  logits_BxP = logits.reshape(logits.shape[0], -1)
  target_BxP = target.reshape(target.shape[0], -1)
  if likelihood == "bernoulli":
    per_pixel = bernoulli_nll(logits_BxP, target_BxP)
  elif likelihood in SCALED_LIKELIHOODS:
    if log_scale is None:
      raise errors.ConfigError(f"{likelihood} likelihood needs log_scale (fixed or learned)")
    nll = gaussian_nll if likelihood == "gaussian" else discretized_logistic_nll
    per_pixel = nll(logits_BxP, target_BxP, log_scale)
  else:
    raise errors.ConfigError(
      f"config.model.likelihood: unknown likelihood {likelihood!r}; valid: {', '.join(LIKELIHOODS)}"
    )
  return jnp.sum(per_pixel, axis=-1)


def gaussian_kl(mean_BxD: jax.Array, logvar_BxD: jax.Array) -> jax.Array:
  """KL(N(mean, diag(exp(logvar))) || N(0, I)) per latent dimension: shape (B, D), nats."""
  return 0.5 * (jnp.exp(logvar_BxD) + jnp.square(mean_BxD) - 1.0 - logvar_BxD)


def sample_gaussian(key: jax.Array, mean_BxD: jax.Array, logvar_BxD: jax.Array) -> jax.Array:
  """Reparameterised sample z = mean + exp(logvar / 2) * eps, eps ~ N(0, I)."""
  eps = jax.random.normal(key, mean_BxD.shape, mean_BxD.dtype)
  return mean_BxD + jnp.exp(0.5 * logvar_BxD) * eps


def log_prior_minus_log_posterior(
  z_BxD: jax.Array, mean_BxD: jax.Array, logvar_BxD: jax.Array
) -> jax.Array:
  """log N(z; 0, I) - log N(z; mean, diag(exp(logvar))) per image: (B,), nats.

  The 0.5 * log(2 pi) of both densities cancels. Leading axes broadcast, so a
  (K, B, D) stack of samples against (1, B, D) posteriors gives (K, B).
  """
  eps = (z_BxD - mean_BxD) * jnp.exp(-0.5 * logvar_BxD)
  return jnp.sum(0.5 * jnp.square(eps) + 0.5 * logvar_BxD - 0.5 * jnp.square(z_BxD), axis=-1)


def per_pixel_metrics(logits: jax.Array, target: jax.Array) -> dict[str, jax.Array]:
  """Per-image means over pixels of BCE and MSE, and PSNR (dB, peak 1), each of shape (B,).

  These compare with the lesson's numbers (Keras' per-pixel mean BCE); the
  reconstruction is sigmoid(logits) whatever the likelihood.
  """
  num_pixels = math.prod(target.shape[1:])
  # Flattened first, as in reconstruction_nll: over (B, H, W, C) arrays XLA's CPU backend fuses
  # these sums badly (docs/performance.md: they once doubled the MLP's training step).
  logits_BxP = logits.reshape(logits.shape[0], -1)
  target_BxP = target.reshape(target.shape[0], -1)
  bce = jnp.sum(bernoulli_nll(logits_BxP, target_BxP), axis=-1) / num_pixels
  mse = jnp.sum(jnp.square(jax.nn.sigmoid(logits_BxP) - target_BxP), axis=-1) / num_pixels
  psnr = -10.0 * jnp.log10(jnp.maximum(mse, 1e-10))
  return {"bce_per_pixel": bce, "mse_per_pixel": mse, "psnr": psnr}


def kl_weight(step: jax.Array, beta: float, warmup_steps: int) -> jax.Array:
  """beta times a linear warm-up from 0 at step 0 to 1 at `warmup_steps` (0: no warm-up)."""
  if warmup_steps <= 0:
    return jnp.asarray(beta, jnp.float32)
  ramp = jnp.minimum(1.0, step.astype(jnp.float32) / warmup_steps)
  return beta * ramp
