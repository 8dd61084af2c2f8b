"""The beta-TCVAE of the zoo (aejax/zoo/beta_tcvae.py): recon + KL + (beta - 1) * TC.

The total-correlation estimator is checked against a Python double loop over the
batch with scipy.stats.norm.logpdf in float64 (disentanglement_lib's form and Chen
et al.'s MWS constant), its log-sum-exps on codes whose densities underflow, and
the model's loss terms against an independent NumPy float64 computation from the
same parameters and noise (the networks re-run layer by layer).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import norm

from aejax import configs, errors, models
from aejax.zoo import beta_tcvae

SHAPE = (4, 4, 1)
BATCH = 8
LATENT = 3


def _np_total_correlation(z, mean, logvar, dataset_size=0):
  """tc_i by explicit loops over the draw i, the member j and the unit d, float64."""
  batch, latent = z.shape
  std = np.exp(0.5 * np.asarray(logvar, np.float64))
  tc = np.zeros(batch)
  for i in range(batch):
    joint = [
      sum(norm.logpdf(z[i, d], mean[j, d], std[j, d]) for d in range(latent)) for j in range(batch)
    ]
    marginals = [
      logsumexp([norm.logpdf(z[i, d], mean[j, d], std[j, d]) for j in range(batch)])
      for d in range(latent)
    ]
    tc[i] = logsumexp(joint) - sum(marginals)
    if dataset_size:
      tc[i] += (latent - 1) * math.log(dataset_size * batch)
  return tc


_jit_tc = jax.jit(beta_tcvae.total_correlation, static_argnames="dataset_size")


def _tc(z, mean, logvar, dataset_size=0):
  args = [jnp.asarray(a, jnp.float32) for a in (z, mean, logvar)]
  return np.asarray(_jit_tc(*args, dataset_size=dataset_size))


@pytest.mark.parametrize("dataset_size", [0, 737_280])
def test_total_correlation_matches_a_double_loop(dataset_size):
  rng = np.random.default_rng(0)
  mean = rng.normal(size=(6, 4))
  logvar = rng.normal(scale=0.5, size=(6, 4)) - 0.5
  # Correlated draws (unit 1 follows unit 0), so the TC is not near its constant.
  z = mean + np.exp(0.5 * logvar) * rng.normal(size=(6, 4))
  z[:, 1] = z[:, 0] + 0.1 * rng.normal(size=6)
  want = _np_total_correlation(z, mean, logvar, dataset_size)
  np.testing.assert_allclose(_tc(z, mean, logvar, dataset_size), want, rtol=1e-5, atol=1e-4)
  # The MWS estimate differs from disentanglement_lib's by (D - 1) * log(N * B) exactly.
  if dataset_size:
    constant = 3 * math.log(dataset_size * 6)
    np.testing.assert_allclose(want - _np_total_correlation(z, mean, logvar), constant)


def test_one_draw_has_no_total_correlation():
  # With one member, log q(z) and sum_d log q(z_d) are the same Gaussian's: tc = 0.
  rng = np.random.default_rng(1)
  z, mean, logvar = rng.normal(size=(3, 1, 5))
  np.testing.assert_allclose(_tc(z, mean, logvar), [0.0], atol=1e-5)


def test_log_sum_exps_stay_finite_for_codes_far_from_every_posterior():
  # Members 100 apart, every draw 40 standard deviations from its own mean (60 from the next):
  # each log density is below -800 per unit, whose exp is 0 even in float64, so exp-then-log
  # would give -inf - -inf.
  mean = 100.0 * np.arange(5, dtype=np.float64)[:, None] * np.ones((5, 3))
  logvar = np.zeros((5, 3))
  z = mean + 40.0
  with np.errstate(divide="ignore"):
    naive = np.log(np.sum(np.exp(norm.logpdf(z[0, 0], mean[:, 0], 1.0))))
  assert naive == -np.inf
  got = _tc(z, mean, logvar)
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, _np_total_correlation(z, mean, logvar), rtol=1e-5, atol=1e-3)


# -- The model's loss terms --------------------------------------------------------------------


def _config(**opts):
  c = configs.default_config()
  c.model.name = "beta_tcvae"
  c.model.latent_dim = LATENT
  c.model.hidden_widths = (6, 5)
  c.model.activation = "tanh"
  c.model.options.update(opts)
  return c


def _setup(config, seed=0):
  model = models.build_model(config.model, SHAPE)
  x = np.asarray(jax.random.uniform(jax.random.key(seed), (BATCH, *SHAPE)), np.float32)
  params = jax.jit(model.init)(jax.random.key(seed + 1), jnp.asarray(x), jax.random.key(2))
  return model, jax.tree.map(np.asarray, params["params"]), x


def _losses(model, params, x, config, kl_weight, key):
  batch = {"input": jnp.asarray(x), "target": jnp.asarray(x)}
  fn = jax.jit(lambda p, w: model.apply({"params": p}, batch, key, config, w, method="losses"))
  return {k: np.asarray(v) for k, v in fn(params, jnp.float32(kl_weight)).items()}


def _mlp(layers, h):
  """Dense_0..Dense_n with tanh between, in float64."""
  h = h.reshape(h.shape[0], -1).astype(np.float64)
  for i in range(len(layers)):
    h = h @ layers[f"Dense_{i}"]["kernel"].astype(np.float64) + layers[f"Dense_{i}"]["bias"]
    if i < len(layers) - 1:
      h = np.tanh(h)
  return h


@pytest.mark.parametrize("beta, dataset_size", [(1.0, 0), (4.5, 0), (6.0, 1000)])
def test_terms_match_a_numpy_reference(beta, dataset_size):
  key = jax.random.key(11)
  c = _config(dataset_size=dataset_size)
  model, params, x = _setup(c)
  got = _losses(model, params, x, c, beta, key)

  h = _mlp(params["encoder"], x)
  mean, logvar = h[:, :LATENT], h[:, LATENT:]
  eps = np.asarray(jax.random.normal(key, (BATCH, LATENT)), np.float64)
  z = mean + np.exp(0.5 * logvar) * eps
  logits = _mlp(params["decoder"], z)
  target = x.reshape(BATCH, -1).astype(np.float64)
  recon = np.sum(np.logaddexp(0.0, logits) - target * logits, axis=1)
  kl = 0.5 * np.sum(np.exp(logvar) + mean**2 - 1.0 - logvar, axis=1)
  tc = _np_total_correlation(z, mean, logvar, dataset_size)

  np.testing.assert_allclose(got["recon"], recon, rtol=1e-5)
  np.testing.assert_allclose(got["kl"], kl, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(got["tc"], tc, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(got["neg_elbo"], recon + kl, rtol=1e-5)
  np.testing.assert_allclose(got["loss"], recon + kl + (beta - 1.0) * tc, rtol=1e-5, atol=1e-4)
  if beta == 1.0:  # The ELBO.
    np.testing.assert_allclose(got["loss"], got["neg_elbo"], rtol=1e-6)
  assert all(v.shape == (BATCH,) for v in got.values())


def test_builds_on_the_dlib_networks_for_64x64_images():
  c = _config(network="dlib_conv")
  c.model.latent_dim = 10
  model = models.build_model(c.model, (64, 64, 1))
  x = jax.ShapeDtypeStruct((4, 64, 64, 1), jnp.float32)
  key = jax.random.key(0)
  params = jax.eval_shape(lambda x: model.init(key, x, key)["params"], x)
  terms = jax.eval_shape(
    lambda p, x: model.apply(
      {"params": p}, {"input": x, "target": x}, key, c, 6.0, method="losses"
    ),
    params, x,
  )  # fmt: skip
  assert {"recon", "kl", "tc", "loss", "neg_elbo"} <= set(terms)
  assert all(t.shape == (4,) for t in terms.values())


def test_bad_options_warm_up_and_objectives_are_config_errors():
  with pytest.raises(errors.ConfigError, match=r"options\.dataset_size: must be >= 0"):
    models.build_model(_config(dataset_size=-1).model, SHAPE)
  with pytest.raises(errors.ConfigError, match=r"options\.network: unknown network"):
    models.build_model(_config(network="gated").model, SHAPE)
  c = _config()
  c.model.num_classes = 10
  with pytest.raises(errors.ConfigError, match=r"num_classes.*not conditional"):
    models.build_model(c.model, SHAPE)
  c = _config()
  model, params, x = _setup(c)
  c.objective.kl_warmup_steps = 100
  with pytest.raises(errors.ConfigError, match=r"kl_warmup_steps.*use 0, got 100"):
    _losses(model, params, x, c, 1.0, jax.random.key(0))
  c.objective.kl_warmup_steps = 0
  c.objective.num_samples = 4
  with pytest.raises(errors.ConfigError, match=r"objective\.name.*num_samples=4"):
    _losses(model, params, x, c, 1.0, jax.random.key(0))
