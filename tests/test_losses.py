"""Tests for aejax/losses.py: KL, likelihoods, reductions, warm-up."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aejax import errors, losses


def test_kl_of_prior_against_itself_is_zero():
  mean = jnp.zeros((4, 3))
  logvar = jnp.zeros((4, 3))
  np.testing.assert_array_equal(losses.gaussian_kl(mean, logvar), 0.0)


def test_kl_matches_hand_computed_value():
  # KL(N(1, 4) || N(0, 1)) = 0.5 * (4 + 1 - 1 - log 4) = 2 - log 2.
  kl = losses.gaussian_kl(jnp.array([[1.0]]), jnp.array([[math.log(4.0)]]))
  np.testing.assert_allclose(kl, [[2.0 - math.log(2.0)]], rtol=1e-6)


def test_kl_matches_monte_carlo_estimate():
  # Sampling and KL use the same variance exp(logvar): the MC estimate of
  # E_q[log q - log p] must agree with the analytic KL.
  mean, logvar = jnp.array([[0.7, -1.2]]), jnp.array([[-0.5, 0.8]])
  z = losses.sample_gaussian(
    jax.random.key(0), jnp.repeat(mean, 200_000, 0), jnp.repeat(logvar, 200_000, 0)
  )
  var = jnp.exp(logvar)
  log_q = -0.5 * ((z - mean) ** 2 / var + logvar + math.log(2 * math.pi))
  log_p = -0.5 * (z**2 + math.log(2 * math.pi))
  mc = jnp.mean(log_q - log_p, axis=0)
  np.testing.assert_allclose(mc, losses.gaussian_kl(mean, logvar)[0], atol=0.02)


def test_bernoulli_nll_equals_binary_cross_entropy_and_is_stable():
  logits = jnp.array([-3.0, 0.0, 2.0])
  target = jnp.array([0.0, 1.0, 0.25])
  p = jax.nn.sigmoid(logits)
  expected = -(target * jnp.log(p) + (1 - target) * jnp.log(1 - p))
  np.testing.assert_allclose(losses.bernoulli_nll(logits, target), expected, rtol=1e-5)
  extreme = losses.bernoulli_nll(jnp.array([1e4, -1e4]), jnp.array([0.0, 1.0]))
  np.testing.assert_allclose(extreme, [1e4, 1e4])


def test_reconstruction_sums_pixels_per_image():
  logits = jnp.zeros((2, 4, 4, 1))
  target = jnp.ones((2, 4, 4, 1))
  nll = losses.reconstruction_nll("bernoulli", logits, target)
  assert nll.shape == (2,)
  np.testing.assert_allclose(nll, 16 * math.log(2.0), rtol=1e-6)


def test_gaussian_nll_with_half_variance_is_squared_error_plus_constant():
  logits = jnp.array([[[[0.3]], [[-1.0]]]])  # (1, 2, 1, 1)
  target = jnp.array([[[[0.9]], [[0.1]]]])
  log_scale = jnp.asarray(0.5 * math.log(0.5))
  nll = losses.reconstruction_nll("gaussian", logits, target, log_scale)
  sq = jnp.sum((jax.nn.sigmoid(logits) - target) ** 2)
  np.testing.assert_allclose(nll, [sq + 2 * 0.5 * math.log(math.pi)], rtol=1e-5)


def test_unknown_likelihood_names_the_valid_ones():
  with pytest.raises(errors.ConfigError, match="bernoulli, gaussian"):
    losses.reconstruction_nll("poisson", jnp.zeros((1, 2, 2, 1)), jnp.zeros((1, 2, 2, 1)))


def test_per_pixel_metrics():
  logits = jnp.zeros((1, 2, 2, 1))  # Reconstruction 0.5 everywhere.
  target = jnp.ones((1, 2, 2, 1))
  m = losses.per_pixel_metrics(logits, target)
  np.testing.assert_allclose(m["bce_per_pixel"], [math.log(2.0)], rtol=1e-6)
  np.testing.assert_allclose(m["mse_per_pixel"], [0.25])
  np.testing.assert_allclose(m["psnr"], [-10 * math.log10(0.25)], rtol=1e-6)


def test_kl_warmup_is_linear_then_flat():
  weights = [float(losses.kl_weight(jnp.asarray(s), 2.0, 10)) for s in (0, 5, 10, 50)]
  np.testing.assert_allclose(weights, [0.0, 1.0, 2.0, 2.0])
  assert float(losses.kl_weight(jnp.asarray(0), 0.5, 0)) == 0.5
