"""The MMD family of the zoo: aejax/zoo/mmd.py, wae_mmd.py and info_vae.py.

The kernels and the unbiased MMD are checked against a Python double loop over
pairs in float64, and each model's loss terms against an independent NumPy
float64 computation from the same parameters and the same noise: the networks
are re-run layer by layer in NumPy.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import expit

from aejax import configs, errors, models
from aejax.zoo import mmd

SHAPE = (4, 4, 1)
BATCH = 8
LATENT = 3


def _config(name, **opts):
  c = configs.default_config()
  c.model.name = name
  c.model.latent_dim = LATENT
  c.model.hidden_widths = (6, 5)
  c.model.activation = "tanh"
  c.model.options.update(opts)
  return c


def _setup(config, seed=0):
  model = models.build_model(config.model, SHAPE)
  x = np.asarray(jax.random.uniform(jax.random.key(seed), (BATCH, *SHAPE)), np.float32)
  sample_key = jax.random.key(2) if model.is_variational else None
  params = model.init(jax.random.key(seed + 1), jnp.asarray(x), sample_key, None)["params"]
  return model, jax.tree.map(np.asarray, params), x


def _losses(model, params, x, config, kl_weight, key):
  batch = {"input": jnp.asarray(x), "target": jnp.asarray(x)}
  fn = jax.jit(lambda p, w: model.apply({"params": p}, batch, key, config, w, method="losses"))
  return {k: np.asarray(v) for k, v in fn(params, jnp.float32(kl_weight)).items()}


# -- NumPy float64 references ----------------------------------------------------------------


def _mlp(layers, h):
  """Dense_0..Dense_n with tanh between, in float64."""
  h = h.reshape(h.shape[0], -1).astype(np.float64)
  for i in range(len(layers)):
    h = h @ layers[f"Dense_{i}"]["kernel"].astype(np.float64) + layers[f"Dense_{i}"]["bias"]
    if i < len(layers) - 1:
      h = np.tanh(h)
  return h


def _np_kernel(name, a, b, c):
  d = float(np.sum((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
  return c / (c + d) if name == "imq" else math.exp(-d / c)


def _np_multiscale(name, a, b, latent_dim, scales):
  return sum(_np_kernel(name, a, b, 2.0 * latent_dim * s) for s in scales)


def _np_mmd(x, y, name, latent_dim, scales):
  """The unbiased MMD^2 by a double loop over pairs."""
  n, m = len(x), len(y)
  k = lambda a, b: _np_multiscale(name, a, b, latent_dim, scales)  # noqa: E731
  xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
  yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
  return xx + yy - 2.0 * xy


def _bernoulli_nll(logits, target):
  logits, target = logits.reshape(len(logits), -1), target.reshape(len(target), -1)
  return np.sum(np.logaddexp(0.0, logits) - target * logits, axis=1)


def _gaussian_nll(logits, target, log_scale):
  mean = expit(logits.reshape(len(logits), -1))
  sq = (target.reshape(len(target), -1) - mean) ** 2
  return np.sum(0.5 * sq * np.exp(-2.0 * log_scale) + log_scale + 0.5 * math.log(2 * math.pi), 1)


# -- Kernels and the MMD -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["imq", "rbf"])
def test_kernels_and_unbiased_mmd_match_a_double_loop(name):
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(5, 3)), rng.normal(size=(4, 3)) + 0.3
  single = {"imq": mmd.imq_kernel, "rbf": mmd.rbf_kernel}[name](
    jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), 1.7
  )
  want = [[_np_kernel(name, a, b, 1.7) for b in y] for a in x]
  np.testing.assert_allclose(single, want, rtol=1e-5)

  kernel = mmd.multiscale_kernel(name, 3, mmd.WAE_SCALES)
  got = kernel(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
  want = [[_np_multiscale(name, a, b, 3, mmd.WAE_SCALES) for b in y] for a in x]
  np.testing.assert_allclose(got, want, rtol=1e-5)

  got = mmd.mmd_unbiased(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), kernel)
  want = _np_mmd(x, y, name, 3, mmd.WAE_SCALES)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  # Symmetric in its two samples.
  swapped = mmd.mmd_unbiased(jnp.asarray(y, jnp.float32), jnp.asarray(x, jnp.float32), kernel)
  np.testing.assert_allclose(swapped, got, rtol=1e-5, atol=1e-7)


def test_unbiased_mmd_is_zero_in_expectation_for_equal_and_positive_for_shifted_samples():
  kernel = mmd.multiscale_kernel("imq", 4, mmd.WAE_SCALES)

  def draw(key, shift):
    kx, ky = jax.random.split(key)
    x = jax.random.normal(kx, (50, 4)) + shift
    return mmd.mmd_unbiased(x, jax.random.normal(ky, (50, 4)), kernel)

  keys = jax.random.split(jax.random.key(0), 400)
  same = np.asarray(jax.jit(jax.vmap(lambda k: draw(k, 0.0)))(keys), np.float64)
  stderr = same.std() / math.sqrt(len(same))
  # The V-statistic (diagonals kept) would be biased up by about 0.1 here, > 50 standard errors.
  assert abs(same.mean()) < 4 * stderr, (same.mean(), stderr)
  assert same.min() < 0.0  # An unbiased estimate of 0 takes both signs.
  shifted = np.asarray(jax.jit(jax.vmap(lambda k: draw(k, 1.0)))(keys), np.float64)
  assert shifted.mean() > 20 * shifted.std() / math.sqrt(len(shifted))
  assert shifted.mean() > same.mean() + 10 * same.std()


def test_mmd_needs_two_draws_and_a_known_kernel():
  kernel = mmd.multiscale_kernel("rbf", 2, (1.0,))
  with pytest.raises(errors.ConfigError, match="config.batch_size"):
    mmd.mmd_unbiased(jnp.zeros((1, 2)), jnp.zeros((3, 2)), kernel)
  with pytest.raises(errors.ConfigError, match="config.model.options.kernel"):
    mmd.multiscale_kernel("cosine", 2, (1.0,))


# -- WAE-MMD -----------------------------------------------------------------------------------


def test_wae_mmd_terms_match_numpy():
  c = _config("wae_mmd", kernel_scales=(0.5, 2.0))
  c.model.likelihood = "gaussian"
  c.model.log_scale = math.log(math.sqrt(0.5))
  model, params, x = _setup(c)
  assert not model.is_variational and not hasattr(model, "log_weight_terms")
  key, kl_weight = jax.random.key(7), 3.0
  got = _losses(model, params, x, c, kl_weight, key)

  z = _mlp(params["encoder"], x)
  logits = _mlp(params["decoder"], z)
  recon = _gaussian_nll(logits, x.astype(np.float64), c.model.log_scale)
  # The prior draws are N(0, I) of the step's key, one per image.
  prior = np.asarray(jax.random.normal(key, (BATCH, LATENT)), np.float64)
  want_mmd = _np_mmd(z, prior, "imq", LATENT, (0.5, 2.0))
  np.testing.assert_allclose(got["recon"], recon, rtol=1e-5)
  # A batch statistic, broadcast: every image carries it, so the batch mean is the statistic.
  assert got["mmd"].shape == (BATCH,)
  np.testing.assert_allclose(got["mmd"], np.full(BATCH, want_mmd), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(got["loss"], recon + kl_weight * want_mmd, rtol=1e-5)
  # Without a key (a deterministic pass) the prior draws use the fixed key 0.
  fixed = _losses(model, params, x, c, kl_weight, None)
  np.testing.assert_allclose(
    fixed["loss"], _losses(model, params, x, c, kl_weight, jax.random.key(0))["loss"]
  )


def test_wae_mmd_sample_hook_decodes_prior_draws():
  c = _config("wae_mmd")
  model, params, _ = _setup(c)
  key = jax.random.key(3)
  got = np.asarray(model.apply({"params": params}, key, 5, None, method="sample"))
  z = np.asarray(jax.random.normal(key, (5, LATENT)), np.float64)
  assert got.shape == (5, *SHAPE)
  np.testing.assert_allclose(got.reshape(5, -1), _mlp(params["decoder"], z), rtol=1e-5, atol=1e-6)


# -- InfoVAE -----------------------------------------------------------------------------------


def test_info_vae_terms_match_numpy():
  alpha, lam, kl_weight = 0.3, 5.0, 0.7
  c = _config("info_vae", alpha=alpha, lambda_=lam, kernel="rbf", kernel_scales=(1.0, 3.0))
  model, params, x = _setup(c)
  assert model.is_variational
  key = jax.random.key(11)
  got = _losses(model, params, x, c, kl_weight, key)

  h = _mlp(params["encoder"], x)
  mean, logvar = h[:, :LATENT], h[:, LATENT:]
  key_post, key_prior = jax.random.split(key)
  eps = np.asarray(jax.random.normal(key_post, (BATCH, LATENT)), np.float64)
  z = mean + np.exp(0.5 * logvar) * eps
  recon = _bernoulli_nll(_mlp(params["decoder"], z), x.astype(np.float64))
  kl = 0.5 * np.sum(np.exp(logvar) + mean**2 - 1.0 - logvar, axis=1)
  prior = np.asarray(jax.random.normal(key_prior, (BATCH, LATENT)), np.float64)
  want_mmd = _np_mmd(z, prior, "rbf", LATENT, (1.0, 3.0))
  np.testing.assert_allclose(got["recon"], recon, rtol=1e-5)
  np.testing.assert_allclose(got["kl"], kl, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got["mmd"], np.full(BATCH, want_mmd), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(got["neg_elbo"], recon + kl, rtol=1e-5)
  want = recon + kl_weight * ((1 - alpha) * kl + (alpha + lam - 1) * want_mmd)
  np.testing.assert_allclose(got["loss"], want, rtol=1e-5)

  # Without a key: z is the posterior mean, the prior draws use the fixed key 0.
  got = _losses(model, params, x, c, kl_weight, None)
  recon = _bernoulli_nll(_mlp(params["decoder"], mean), x.astype(np.float64))
  prior = np.asarray(jax.random.normal(jax.random.key(0), (BATCH, LATENT)), np.float64)
  want_mmd = _np_mmd(mean, prior, "rbf", LATENT, (1.0, 3.0))
  want = recon + kl_weight * ((1 - alpha) * kl + (alpha + lam - 1) * want_mmd)
  np.testing.assert_allclose(got["loss"], want, rtol=1e-5)


def test_info_vae_at_alpha_0_lambda_1_is_the_vae():
  c = _config("info_vae", alpha=0.0, lambda_=1.0)
  model, params, x = _setup(c)
  got = _losses(model, params, x, c, 1.0, jax.random.key(4))
  np.testing.assert_allclose(got["loss"], got["neg_elbo"], rtol=1e-6)


# -- Options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "name, opts, field",
  [
    ("wae_mmd", {"kernel": "cosine"}, "kernel"),
    ("wae_mmd", {"kernel_scales": ()}, "kernel_scales"),
    ("wae_mmd", {"kernel_scales": (1.0, -2.0)}, "kernel_scales"),
    ("wae_mmd", {"network": "gated"}, "network"),
    ("wae_mmd", {"lambda_": 3.0}, "lambda_"),
    ("info_vae", {"alpha": 1.5}, "alpha"),
    ("info_vae", {"alpha": 0.0, "lambda_": 0.5}, "lambda_"),
    ("info_vae", {"kernel": "linear"}, "kernel"),
    ("info_vae", {"alpha": "zero"}, "alpha"),
  ],
)
def test_bad_option_names_its_field(name, opts, field):
  with pytest.raises(errors.ConfigError, match=rf"config\.model\.options\.{field}\b"):
    models.build_model(_config(name, **opts).model, SHAPE)


def test_not_conditional_and_info_vae_only_trains_its_own_objective():
  c = _config("wae_mmd")
  c.model.num_classes = 10
  with pytest.raises(errors.ConfigError, match="config.model.num_classes"):
    models.build_model(c.model, SHAPE)
  c = _config("info_vae")
  model, params, x = _setup(c)
  c.objective.name = "iwae"
  with pytest.raises(errors.ConfigError, match="config.objective.name"):
    _losses(model, params, x, c, 1.0, jax.random.key(0))
