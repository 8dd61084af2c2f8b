"""Likelihoods, the Gaussian KL and the ELBO, with explicit reductions.

Conventions used everywhere in aejax:
- A decoder returns `logits_BxHxWxC`, unconstrained. The reconstruction (the
  mean of the likelihood) is `sigmoid(logits)` for both likelihoods, so pixel
  values stay in [0, 1].
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

LIKELIHOODS = ("bernoulli", "gaussian")
_LOG_2PI = math.log(2.0 * math.pi)


def bernoulli_nll(logits: jax.Array, target: jax.Array) -> jax.Array:
  """-log Bernoulli(target | sigmoid(logits)), per pixel, in nats.

  Written as softplus(logits) - target * logits, which is stable for large
  |logits| (no log(0)). Targets may be grey levels in [0, 1] (the lesson's
  "BCE on grey levels"); it is then a cross-entropy, not a likelihood.

  softplus(l) is spelled max(l, 0) + log1p(exp(-|l|)) (exact, and its gradient
  is sigmoid(l), 1/2 at 0): jax.nn.softplus goes through logaddexp's NaN and
  infinity handling and is 3x slower on CPU, where this term is a third of the
  5000-sample NLL's time (docs/performance.md).
  """
  softplus = jnp.maximum(logits, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  return softplus - target * logits


def gaussian_nll(logits: jax.Array, target: jax.Array, log_scale: jax.Array) -> jax.Array:
  """-log N(target | sigmoid(logits), exp(log_scale)^2), per pixel, in nats."""
  mean = jax.nn.sigmoid(logits)
  return 0.5 * jnp.square((target - mean) * jnp.exp(-log_scale)) + log_scale + 0.5 * _LOG_2PI


def reconstruction_nll(
  likelihood: str, logits: jax.Array, target: jax.Array, log_scale: jax.Array | None = None
) -> jax.Array:
  """Negative log-likelihood of each image, summed over pixels: shape (B,), nats per image.

  `log_scale` (Gaussian only) is one number for every pixel. The images are
  flattened to (B, pixels) before the per-pixel terms: on CPU XLA runs the
  elementwise terms and the sum over (B, H, W, C) arrays much slower, and this
  is the NLL estimator's inner loop (docs/performance.md has the numbers).
  """
  logits_BxP = logits.reshape(logits.shape[0], -1)
  target_BxP = target.reshape(target.shape[0], -1)
  if likelihood == "bernoulli":
    per_pixel = bernoulli_nll(logits_BxP, target_BxP)
  elif likelihood == "gaussian":
    if log_scale is None:
      raise errors.ConfigError("gaussian likelihood needs log_scale (fixed or learned)")
    per_pixel = gaussian_nll(logits_BxP, target_BxP, log_scale)
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
