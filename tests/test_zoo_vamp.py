"""Tests for aejax/zoo/vamp_vae.py: the VampPrior's density, the loss terms and the hooks.

Every number is checked against NumPy/SciPy float64 computed from the same
parameters, inputs and noise (the model's MLPs are re-run in NumPy).
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from aejax import configs, errors, models
from aejax.zoo import vamp_vae

SHAPE = (4, 4, 1)  # Small images: the NumPy forward passes stay cheap.


def _config(**opts):
  c = configs.default_config()
  c.model.name = "vamp_vae"
  c.model.latent_dim = 3
  c.model.hidden_widths = (8,)
  c.model.activation = "tanh"
  for name, value in {"num_pseudo_inputs": 5, **opts}.items():
    c.model.options[name] = value
  return c


def _init(c, batch_size=3, seed=0):
  model = models.build_model(c.model, SHAPE)
  x = (jax.random.uniform(jax.random.key(seed), (batch_size, *SHAPE)) > 0.5).astype(jnp.float32)
  params = model.init(jax.random.key(seed + 1), x, jax.random.key(seed + 2))["params"]
  return model, params, x


# -- NumPy float64 reference ---------------------------------------------------


def _np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), flax.core.unfreeze(tree))


def _dense_mlp(p, h, activation):
  """aejax's DenseEncoder/DenseDecoder: activation after every Dense but the last."""
  names = sorted(p, key=lambda n: int(n.split("_")[1]))
  for name in names[:-1]:
    h = activation(h @ p[name]["kernel"] + p[name]["bias"])
  return h @ p[names[-1]]["kernel"] + p[names[-1]]["bias"]


def _gated_mlp(p, h):
  """Gated layers (W h + b) * sigmoid(V h + c), then a linear layer."""
  names = sorted((n for n in p if n.startswith("GatedDense")), key=lambda n: int(n.split("_")[1]))
  for name in names:
    value = h @ p[name]["value"]["kernel"] + p[name]["value"]["bias"]
    gate = h @ p[name]["gate"]["kernel"] + p[name]["gate"]["bias"]
    h = value * special.expit(gate)
  return h @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]


def _mlp(p, h, network):
  return _gated_mlp(p, h) if network == "gated" else _dense_mlp(p, h, np.tanh)


def _np_encode(p, x, network):
  out = _mlp(p["encoder"], x.reshape(len(x), -1), network)
  d = out.shape[1] // 2
  return out[:, :d], out[:, d:]


def _np_log_prior(p, z, network, parameterisation="hardtanh"):
  raw = p["pseudo"]["raw"]
  u = special.expit(raw) if parameterisation == "sigmoid" else np.clip(raw, 0.0, 1.0)
  means, logvars = _np_encode(p, u, network)
  log_comp = np.stack(
    [
      stats.multivariate_normal(m, np.diag(np.exp(lv))).logpdf(z)
      for m, lv in zip(means, logvars, strict=True)
    ],
    axis=-1,
  ).reshape(len(z), len(means))
  return special.logsumexp(log_comp, axis=-1) - np.log(len(means))


def _np_log_weight_parts(p, x, eps_KxBxD, network):
  """recon, log q(z|x), log p(z) for z = mean + std * eps: (K, B) each, float64."""
  mean, logvar = _np_encode(p, x, network)
  eps = np.asarray(eps_KxBxD, np.float64)
  k, b, d = eps.shape
  z = mean[None] + np.exp(0.5 * logvar[None]) * eps
  logits = _mlp(p["decoder"], z.reshape(k * b, d), network).reshape(k, b, -1)
  target = x.reshape(1, b, -1)
  recon = np.sum(np.logaddexp(0.0, logits) - target * logits, axis=-1)
  log_q = np.stack(
    [
      [
        stats.multivariate_normal(mean[j], np.diag(np.exp(logvar[j]))).logpdf(z[i, j])
        for j in range(b)
      ]
      for i in range(k)
    ]
  )
  log_p = _np_log_prior(p, z.reshape(k * b, d), network).reshape(k, b)
  return recon, log_q, log_p


# -- the mixture density ------------------------------------------------------


def test_mixture_density_matches_scipy():
  rng = np.random.default_rng(0)
  means = rng.normal(size=(4, 3))
  logvars = rng.normal(scale=0.5, size=(4, 3))
  z = rng.normal(scale=2.0, size=(6, 3))
  got = vamp_vae.log_mixture_density(jnp.asarray(z), jnp.asarray(means), jnp.asarray(logvars))
  log_comp = np.stack(
    [
      stats.multivariate_normal(m, np.diag(np.exp(lv))).logpdf(z)
      for m, lv in zip(means, logvars, strict=True)
    ],
    axis=-1,
  )
  want = special.logsumexp(log_comp, axis=-1) - np.log(4)
  assert got.shape == (6,)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_mixture_density_is_finite_far_from_every_component():
  rng = np.random.default_rng(1)
  means = rng.normal(size=(5, 4))
  logvars = np.full((5, 4), -3.0)  # Narrow components: log-densities near -10^5 at |z| = 50.
  z = np.array([[50.0, -50.0, 50.0, -50.0], [-50.0] * 4, [0.1, 0.2, -0.1, 0.0]])
  got = np.asarray(
    vamp_vae.log_mixture_density(jnp.asarray(z), jnp.asarray(means), jnp.asarray(logvars))
  )
  assert np.all(np.isfinite(got))
  log_comp = np.stack(
    [
      stats.multivariate_normal(m, np.diag(np.exp(lv))).logpdf(z)
      for m, lv in zip(means, logvars, strict=True)
    ],
    axis=-1,
  )
  want = special.logsumexp(log_comp, axis=-1) - np.log(5)
  assert want[0] < -5e4  # Far indeed: the naive mean of densities underflows to 0, even in float64.
  with np.errstate(divide="ignore"):
    assert np.log(np.mean(np.exp(log_comp[0]))) == -np.inf
  np.testing.assert_allclose(got, want, rtol=1e-6)


# -- the loss terms -----------------------------------------------------------


@pytest.mark.parametrize("network", ["dense", "gated"])
@pytest.mark.parametrize("objective,k", [("elbo", 1), ("elbo", 3), ("iwae", 3)])
def test_losses_match_numpy(network, objective, k):
  c = _config(network=network)
  c.objective.name, c.objective.num_samples = objective, k
  model, params, x = _init(c)
  key, kl_weight = jax.random.key(7), 0.3
  terms = model.apply(
    {"params": params}, {"input": x, "target": x}, key, c, kl_weight, method="losses"
  )
  # The documented noise: eps = normal(key, (k, B, D)).
  eps = jax.random.normal(key, (k, 3, c.model.latent_dim))
  recon, log_q, log_p = _np_log_weight_parts(_np(params), np.asarray(x, np.float64), eps, network)
  kl = log_q - log_p
  neg_iwae = -(special.logsumexp(-recon - kl, axis=0) - np.log(k))
  want = {
    "recon": recon.mean(0),
    "kl": kl.mean(0),
    "neg_elbo": (recon + kl).mean(0),
    "neg_iwae_bound": neg_iwae,
    "loss": neg_iwae if objective == "iwae" else recon.mean(0) + kl_weight * kl.mean(0),
  }
  for name, value in want.items():
    assert terms[name].shape == (3,), name
    np.testing.assert_allclose(terms[name], value, rtol=1e-5, atol=1e-4, err_msg=name)
  assert {"bce_per_pixel", "mse_per_pixel", "psnr"} <= set(terms)


def test_losses_without_key_use_the_posterior_mean():
  c = _config()
  model, params, x = _init(c)
  terms = model.apply({"params": params}, {"input": x, "target": x}, None, c, 1.0, method="losses")
  recon, log_q, log_p = _np_log_weight_parts(
    _np(params), np.asarray(x, np.float64), np.zeros((1, 3, 3)), "dense"
  )
  np.testing.assert_allclose(terms["recon"], recon[0], rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(terms["kl"], (log_q - log_p)[0], rtol=1e-5, atol=1e-4)


def test_log_weight_terms_hook_matches_numpy():
  c = _config()
  model, params, x = _init(c, batch_size=4)
  codes = model.apply({"params": params}, x, None, method="encode")
  key = jax.random.key(11)
  got = model.apply({"params": params}, codes, x, None, key, method="log_weight_terms")
  eps = jax.random.normal(key, (1, 4, 3))  # One draw: normal(key, (1, B, D)).
  recon, log_q, log_p = _np_log_weight_parts(_np(params), np.asarray(x, np.float64), eps, "dense")
  np.testing.assert_allclose(got["log_px_given_z"], -recon[0], rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(got["log_pz_minus_log_qz"], (log_p - log_q)[0], rtol=1e-5, atol=1e-4)


def test_gradient_reaches_the_pseudo_inputs():
  c = _config()
  model, params, x = _init(c)

  def loss(p):
    terms = model.apply({"params": p}, {"input": x, "target": x}, jax.random.key(0), c, 1.0,
                        method="losses")  # fmt: skip
    return terms["loss"].mean()

  grad = jax.grad(loss)(params)["pseudo"]["raw"]
  assert float(jnp.abs(grad).max()) > 0.0


# -- the pseudo-inputs and sampling -------------------------------------------


@pytest.mark.parametrize("parameterisation", ["hardtanh", "sigmoid"])
def test_pseudo_inputs_are_images_in_unit_interval(parameterisation):
  module = vamp_vae.PseudoInputs(50, SHAPE, parameterisation)
  variables = module.init(jax.random.key(0))
  u = np.asarray(module.apply(variables))
  assert u.shape == (50, *SHAPE)
  # The paper's initialisation, N(0.05, 0.01) per pixel, in image space.
  assert abs(u.mean() - 0.05) < 0.005 and 0.005 < u.std() < 0.02
  extreme = {"params": {"raw": jnp.linspace(-30.0, 30.0, 50 * 16).reshape(50, *SHAPE)}}
  u = np.asarray(module.apply(extreme))
  assert u.min() >= 0.0 and u.max() <= 1.0 and u.min() < 0.01 and u.max() > 0.99


def test_log_prior_with_sigmoid_pseudo_inputs_matches_numpy():
  c = _config(pseudo_inputs="sigmoid")
  model, params, _ = _init(c)
  z = np.random.default_rng(2).normal(size=(6, 3))
  got = model.apply({"params": params}, jnp.asarray(z, jnp.float32), method="log_prior")
  want = _np_log_prior(_np(params), z, "dense", "sigmoid")
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_sample_draws_from_the_pseudo_inputs_posteriors():
  # A linear model whose first pixel's logit is z, 1-D latent, two pseudo-inputs with narrow,
  # well separated posteriors: every sample must sit at one of the two component means, and
  # each component must be picked about half the time.
  c = _config(num_pseudo_inputs=2)
  c.model.latent_dim, c.model.hidden_widths = 1, ()
  model, params, _ = _init(c)
  pixels = SHAPE[0] * SHAPE[1]
  enc_kernel = np.zeros((pixels, 2), np.float32)
  enc_kernel[:, 0] = 1.0  # mean = sum of the pixels.
  dec_kernel = np.zeros((1, pixels), np.float32)
  dec_kernel[0, 0] = 1.0
  raw = np.zeros((2, *SHAPE), np.float32)
  raw[1] = 0.5  # Pixel sums 0 and 8: component means 0 and 8.
  params = {
    "encoder": {"Dense_0": {"kernel": enc_kernel, "bias": np.array([0.0, -10.0], np.float32)}},
    "decoder": {"Dense_0": {"kernel": dec_kernel, "bias": np.zeros(pixels, np.float32)}},
    "pseudo": {"raw": raw},
  }
  n = 2000
  logits = model.apply({"params": params}, jax.random.key(3), n, None, method="sample")
  assert logits.shape == (n, *SHAPE)
  z = np.asarray(logits)[:, 0, 0, 0]
  std = np.exp(-5.0)
  near_0, near_8 = np.abs(z) < 5 * std, np.abs(z - 8.0) < 5 * std
  assert np.all(near_0 | near_8)
  assert abs(near_8.mean() - 0.5) < 4 * np.sqrt(0.25 / n)  # Binomial: 4 standard deviations.
  assert np.std(z[near_8]) == pytest.approx(std, rel=0.1)


def test_call_creates_every_parameter_and_reconstructs_with_the_mean():
  c = _config()
  model, params, x = _init(c)
  assert set(params) == {"encoder", "decoder", "pseudo"}
  out = model.apply({"params": params}, x)
  np.testing.assert_array_equal(out["z"], out["mean"])
  decoded = model.apply({"params": params}, out["mean"], method="decode")
  np.testing.assert_allclose(out["logits"], decoded, rtol=1e-6)
  c.model.learn_log_scale, c.model.likelihood = True, "gaussian"
  model, params, _ = _init(c)
  assert "likelihood" in params


# -- options ------------------------------------------------------------------


@pytest.mark.parametrize(
  "name,value",
  [
    ("num_pseudo_inputs", 0),
    ("num_pseudo_inputs", "500"),
    ("pseudo_inputs", "tanh"),
    ("network", "mlp"),
    ("pseudo_input", "hardtanh"),  # Unknown option.
  ],
)
def test_bad_option_is_a_config_error_naming_it(name, value):
  with pytest.raises(errors.ConfigError, match=f"config.model.options.{name}"):
    models.build_model(_config(**{name: value}).model, SHAPE)


def test_conditional_config_is_rejected():
  c = _config()
  c.model.num_classes = 10
  with pytest.raises(errors.ConfigError, match="config.model.num_classes"):
    models.build_model(c.model, SHAPE)
