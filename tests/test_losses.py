"""Tests for aejax/losses.py: KL, likelihoods, reductions, warm-up."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from aejax import configs, errors, losses


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


# ---------------------------------------------------------------------------
# The discretized logistic of 8-bit pixels, against SciPy's logistic in float64.

LEVELS = np.arange(256.0)
# Logits whose sigmoid is near 0, inside, and near 1 (1e-7 and 1 - 1e-7 at the ends).
EDGE_LOGITS = (-16.0, -4.0, 0.3, 2.0, 16.0)


def _reference_probs(mean, scale):
  """P(k) for k in 0..255 in float64: logistic CDF differences over each level's bin, open ends."""
  edges = (np.arange(257.0) - 0.5) / 255.0  # edges[k], edges[k + 1] bound level k.
  cdf = stats.logistic.cdf(edges, loc=mean, scale=scale)
  cdf[0], cdf[-1] = 0.0, 1.0
  return np.diff(cdf)


_log_prob = jax.jit(losses.discretized_logistic_log_prob)  # One compilation for all the cases.


def _log_probs(logit, log_scale):
  logits = jnp.full(256, logit, jnp.float32)
  return np.asarray(_log_prob(logits, jnp.asarray(LEVELS), jnp.float32(log_scale)), np.float64)


@pytest.mark.parametrize("log_scale", [-14.0, -8.0, -4.0, 0.0, 4.0])
@pytest.mark.parametrize("logit", EDGE_LOGITS + (math.log(76.5 / 178.5),))  # mu = 76.5 / 255.
def test_discretized_logistic_sums_to_one_over_the_256_levels(logit, log_scale):
  # The last logit puts mu on the edge between levels 76 and 77, where a tiny scale gives the
  # mass to two bins whose edges must meet exactly.
  log_p = _log_probs(logit, log_scale)
  assert np.all(np.isfinite(log_p)) and np.all(log_p <= 1e-6)
  assert np.exp(log_p).sum() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("log_scale", [math.log(0.004), math.log(0.05), math.log(0.7)])
@pytest.mark.parametrize("logit", EDGE_LOGITS)
def test_discretized_logistic_matches_scipy_cdf_differences(logit, log_scale):
  # mu as float32 computes it, so that only the likelihood's own error is measured.
  mean = float(jax.nn.sigmoid(jnp.float32(logit)))
  expected = _reference_probs(mean, math.exp(log_scale))
  log_p = _log_probs(logit, log_scale)
  big = expected > 1e-6  # Where the float64 difference of CDFs is itself accurate.
  assert big.sum() >= 2
  np.testing.assert_allclose(log_p[big], np.log(expected[big]), rtol=0, atol=2e-4)


def test_discretized_logistic_is_finite_with_finite_gradients_at_extremes():
  # sigmoid(+-80) is 1 and 0 in float32: mu on the edges of the range; scales from 1e-7 to 2e4.
  logits = jnp.array([-80.0, -80.0, 80.0, 80.0, 0.0, 0.0])
  levels = jnp.array([0.0, 255.0, 255.0, 0.0, 1.0, 254.0])

  def total(logits, log_scale):
    return jnp.sum(losses.discretized_logistic_log_prob(logits, levels, log_scale))

  grad = jax.jit(jax.grad(total, argnums=(0, 1)))  # One compilation for every scale.
  for log_scale in (-16.0, -6.0, 0.0, 10.0):
    log_p = _log_prob(logits, levels, jnp.float32(log_scale))
    assert np.all(np.isfinite(log_p)) and np.all(np.asarray(log_p) <= 0.0), log_scale
    grad_logits, grad_scale = grad(logits, jnp.float32(log_scale))
    assert np.all(np.isfinite(grad_logits)) and np.isfinite(grad_scale), log_scale
  # A far miss costs a lot but stays exact: mu = 0, level 255, s = e^-16, where
  # log P = log sigma(-(254.5 / 255) / s), about -(254.5 / 255) e^16 = -8.9e6 nats.
  far = losses.discretized_logistic_log_prob(jnp.array([-80.0]), jnp.array([255.0]), -16.0)
  assert float(far[0]) == pytest.approx(-254.5 / 255 * math.exp(16.0), rel=1e-5)


def test_discretized_logistic_nll_is_the_sum_of_per_pixel_terms():
  rng = np.random.default_rng(0)
  logits = rng.normal(0.0, 2.0, (2, 3, 3, 1)).astype(np.float32)
  target = (rng.integers(0, 256, (2, 3, 3, 1)) / 255.0).astype(np.float32)
  log_scale = math.log(0.03)
  nll = losses.reconstruction_nll(
    "discretized_logistic", jnp.asarray(logits), jnp.asarray(target), jnp.float32(log_scale)
  )
  assert nll.shape == (2,)
  mean = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
  expected = np.zeros(2)
  for b, y, x in np.ndindex(2, 3, 3):
    k = round(target[b, y, x, 0] * 255)
    expected[b] -= np.log(_reference_probs(mean[b, y, x, 0], math.exp(log_scale))[k])
  np.testing.assert_allclose(nll, expected, rtol=1e-5)


def test_quantise_rounds_to_the_nearest_of_256_levels():
  k = np.array([0.0, 1.0, 77.0, 254.0])
  np.testing.assert_array_equal(losses.quantise(jnp.asarray((k + 0.49) / 255)), k)
  np.testing.assert_array_equal(losses.quantise(jnp.asarray((k + 0.51) / 255)), k + 1)
  np.testing.assert_array_equal(losses.quantise(jnp.asarray((k + 1 - 0.49) / 255)), k + 1)
  np.testing.assert_array_equal(losses.quantise(jnp.array([-0.2, 0.0, 1.0, 1.3])), [0, 0, 255, 255])
  # The NLL of a grey level off the 8-bit grid is that of its level.
  logits, log_scale = jnp.array([0.4, -1.0]), jnp.float32(-3.0)
  off_grid = losses.discretized_logistic_nll(logits, jnp.array([0.301, 12.4 / 255]), log_scale)
  on_grid = losses.discretized_logistic_nll(logits, jnp.array([77 / 255, 12 / 255]), log_scale)
  np.testing.assert_array_equal(off_grid, on_grid)


def test_discrete_bits_per_dim():
  assert losses.discrete_bits_per_dim(784 * math.log(2.0), 784) == pytest.approx(1.0)
  # A uniform distribution over 256 levels is 8 bits per pixel.
  assert losses.discrete_bits_per_dim(3 * 32 * 32 * math.log(256.0), 3 * 32 * 32) == pytest.approx(
    8.0
  )


def test_config_accepts_discretized_logistic_and_names_the_field_otherwise():
  c = configs.default_config()
  c.model.likelihood = "discretized_logistic"
  configs.validate(c, num_devices=8)
  c.model.likelihood = "logistic"
  with pytest.raises(errors.ConfigError, match="config.model.likelihood: .*discretized_logistic"):
    configs.validate(c, num_devices=8)
