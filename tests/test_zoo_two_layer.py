"""Tests for aejax/zoo/two_layer_vae.py: log w, the k-sample objectives, the hooks, the options.

Every number is checked against NumPy/SciPy float64 computed from the same
parameters, inputs and noise (the model's four MLPs are re-run in NumPy).
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from aejax import configs, errors, models

SHAPE = (4, 4, 1)
Z1, Z2 = 4, 3


def _config(**opts):
  c = configs.default_config()
  c.model.name = "two_layer_vae"
  c.model.latent_dim = Z2
  c.model.activation = "tanh"
  defaults = {"hidden1": (8, 6), "hidden2": (5,), "z1_dim": Z1, "num_pseudo_inputs": 3}
  for name, value in {**defaults, **opts}.items():
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


def _mlp(p, h):
  """aejax's DenseEncoder/DenseDecoder with tanh: activation after every Dense but the last."""
  names = sorted(p, key=lambda n: int(n.split("_")[1]))
  h = h.reshape(len(h), -1)
  for name in names[:-1]:
    h = np.tanh(h @ p[name]["kernel"] + p[name]["bias"])
  return h @ p[names[-1]]["kernel"] + p[names[-1]]["bias"]


def _gaussian(p, h):
  out = _mlp(p, h)
  d = out.shape[1] // 2
  return out[:, :d], out[:, d:]


def _log_normal(z, mean, logvar):
  """Row by row with SciPy: log N(z_n; mean_n, diag(exp(logvar_n)))."""
  return np.array(
    [
      stats.multivariate_normal(m, np.diag(np.exp(lv))).logpdf(v)
      for v, m, lv in zip(z, mean, logvar, strict=True)
    ]
  )


def _np_log_prior(p, z2, prior):
  if prior == "normal":
    return stats.multivariate_normal(np.zeros(Z2), np.eye(Z2)).logpdf(z2).reshape(len(z2))
  u = np.clip(p["pseudo"]["raw"], 0.0, 1.0)
  mean1, _ = _gaussian(p["encoder_z1"], u)  # Each pseudo-input through the mean of q(z1|u)...
  means, logvars = _gaussian(p["encoder_z2"], mean1)  # ...then q(z2|z1).
  log_comp = np.stack(
    [
      stats.multivariate_normal(m, np.diag(np.exp(lv))).logpdf(z2).reshape(len(z2))
      for m, lv in zip(means, logvars, strict=True)
    ],
    axis=-1,
  )
  return special.logsumexp(log_comp, axis=-1) - np.log(len(means))


def _np_log_w_parts(p, x, eps1_KxBxD1, eps2_KxBxD2, prior):
  """log p(x|z1), log p(z1|z2), log p(z2), log q(z1|x), log q(z2|z1): (K, B) each, float64."""
  eps1, eps2 = np.asarray(eps1_KxBxD1, np.float64), np.asarray(eps2_KxBxD2, np.float64)
  k, b, _ = eps1.shape
  mean1, logvar1 = _gaussian(p["encoder_z1"], x)
  z1 = (mean1[None] + np.exp(0.5 * logvar1[None]) * eps1).reshape(k * b, Z1)
  mean2, logvar2 = _gaussian(p["encoder_z2"], z1)
  z2 = mean2 + np.exp(0.5 * logvar2) * eps2.reshape(k * b, Z2)
  prior_mean1, prior_logvar1 = _gaussian(p["decoder_z1"], z2)
  logits = _mlp(p["decoder_x"], z1)
  target = np.tile(x.reshape(b, -1), (k, 1))
  parts = {
    "log_px": -np.sum(np.logaddexp(0.0, logits) - target * logits, axis=-1),
    "log_pz1": _log_normal(z1, prior_mean1, prior_logvar1),
    "log_pz2": _np_log_prior(p, z2, prior),
    "log_qz1": _log_normal(z1, np.tile(mean1, (k, 1)), np.tile(logvar1, (k, 1))),
    "log_qz2": _log_normal(z2, mean2, logvar2),
  }
  return {name: value.reshape(k, b) for name, value in parts.items()}


def _noise(key, k, b):
  """The documented noise: key1, key2 = split(key); eps_i = normal(key_i, (k, B, D_i))."""
  key1, key2 = jax.random.split(key)
  return jax.random.normal(key1, (k, b, Z1)), jax.random.normal(key2, (k, b, Z2))


# -- log w and the objectives -------------------------------------------------


@pytest.mark.parametrize("prior", ["normal", "vamp"])
def test_log_weight_terms_hook_matches_numpy(prior):
  c = _config(prior=prior)
  model, params, x = _init(c, batch_size=4)
  codes = model.apply({"params": params}, x, None, method="encode")
  key = jax.random.key(5)
  got = model.apply({"params": params}, codes, x, None, key, method="log_weight_terms")
  parts = _np_log_w_parts(_np(params), np.asarray(x, np.float64), *_noise(key, 1, 4), prior)
  rest = parts["log_pz1"] + parts["log_pz2"] - parts["log_qz1"] - parts["log_qz2"]
  assert got["log_px_given_z"].shape == got["log_pz_minus_log_qz"].shape == (4,)
  np.testing.assert_allclose(got["log_px_given_z"], parts["log_px"][0], rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(got["log_pz_minus_log_qz"], rest[0], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("prior", ["normal", "vamp"])
@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_k_sample_objectives_match_hand_logsumexp(objective, prior):
  k = 4
  c = _config(prior=prior)
  c.objective.name, c.objective.num_samples = objective, k
  model, params, x = _init(c)
  key, kl_weight = jax.random.key(9), 0.4
  terms = model.apply(
    {"params": params}, {"input": x, "target": x}, key, c, kl_weight, method="losses"
  )
  parts = _np_log_w_parts(_np(params), np.asarray(x, np.float64), *_noise(key, k, 3), prior)
  recon = -parts["log_px"]
  kl = parts["log_qz1"] + parts["log_qz2"] - parts["log_pz1"] - parts["log_pz2"]
  log_w = -recon - kl
  neg_iwae = -(special.logsumexp(log_w, axis=0) - np.log(k))
  want = {
    "recon": recon.mean(0),
    "kl": kl.mean(0),
    "neg_elbo": -log_w.mean(0),
    "neg_iwae_bound": neg_iwae,
    "loss": neg_iwae if objective == "iwae" else recon.mean(0) + kl_weight * kl.mean(0),
  }
  for name, value in want.items():
    assert terms[name].shape == (3,), name
    np.testing.assert_allclose(terms[name], value, rtol=1e-5, atol=1e-4, err_msg=name)
  assert np.all(want["neg_iwae_bound"] <= want["neg_elbo"] + 1e-9)  # L_k >= the ELBO estimate.
  assert {"bce_per_pixel", "mse_per_pixel", "psnr"} <= set(terms)


def test_losses_without_key_use_the_means():
  c = _config()
  model, params, x = _init(c)
  terms = model.apply({"params": params}, {"input": x, "target": x}, None, c, 1.0, method="losses")
  parts = _np_log_w_parts(
    _np(params), np.asarray(x, np.float64), np.zeros((1, 3, Z1)), np.zeros((1, 3, Z2)), "normal"
  )
  np.testing.assert_allclose(terms["recon"], -parts["log_px"][0], rtol=1e-5, atol=1e-4)


# -- encode, decode, sample ---------------------------------------------------


def test_encode_and_decode_follow_the_means():
  c = _config()
  model, params, x = _init(c)
  p, xn = _np(params), np.asarray(x, np.float64)
  codes = model.apply({"params": params}, x, None, method="encode")
  mean1, logvar1 = _gaussian(p["encoder_z1"], xn)
  mean2, logvar2 = _gaussian(p["encoder_z2"], mean1)  # q(z2 | z1 = the mean of q(z1|x)).
  for name, value in [
    ("z1_mean", mean1), ("z1_logvar", logvar1), ("mean", mean2), ("logvar", logvar2)
  ]:  # fmt: skip
    np.testing.assert_allclose(codes[name], value, rtol=1e-5, atol=1e-5, err_msg=name)
  z2 = np.random.default_rng(0).normal(size=(5, Z2))
  logits = model.apply({"params": params}, jnp.asarray(z2, jnp.float32), method="decode")
  prior_mean1, _ = _gaussian(p["decoder_z1"], z2)  # z1 = the mean of p(z1|z2).
  want = _mlp(p["decoder_x"], prior_mean1).reshape(5, *SHAPE)
  np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
  # The reconstruction without a key is decode(encode(x)["mean"]), as aejax.load's.
  out = model.apply({"params": params}, x)
  decoded = model.apply({"params": params}, codes["mean"], method="decode")
  np.testing.assert_allclose(out["logits"], decoded, rtol=1e-6)


@pytest.mark.parametrize("prior", ["normal", "vamp"])
def test_sample_shapes_and_prior_draws(prior):
  c = _config(prior=prior)
  model, params, _ = _init(c)
  expected = {"encoder_z1", "encoder_z2", "decoder_z1", "decoder_x"}
  assert set(params) == (expected | {"pseudo"} if prior == "vamp" else expected)
  logits = model.apply({"params": params}, jax.random.key(0), 7, None, method="sample")
  assert logits.shape == (7, *SHAPE) and bool(jnp.all(jnp.isfinite(logits)))
  again = model.apply({"params": params}, jax.random.key(0), 7, None, method="sample")
  np.testing.assert_array_equal(logits, again)
  other = model.apply({"params": params}, jax.random.key(1), 7, None, method="sample")
  assert not np.allclose(logits, other)
  out = model.apply({"params": params}, jnp.zeros((2, *SHAPE)), jax.random.key(2))
  assert out["logits"].shape == (2, *SHAPE)
  assert out["z1"].shape == (2, Z1) and out["z"].shape == (2, Z2)


def test_normal_prior_sample_reproduces_the_documented_draws():
  c = _config()
  model, params, _ = _init(c)
  key = jax.random.key(4)
  logits = model.apply({"params": params}, key, 6, None, method="sample")
  _, key_z2, key_z1 = jax.random.split(key, 3)
  z2 = np.asarray(jax.random.normal(key_z2, (6, Z2)), np.float64)
  p = _np(params)
  mean1, logvar1 = _gaussian(p["decoder_z1"], z2)
  eps1 = np.asarray(jax.random.normal(key_z1, (6, Z1)), np.float64)
  want = _mlp(p["decoder_x"], mean1 + np.exp(0.5 * logvar1) * eps1).reshape(6, *SHAPE)
  np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)


def test_conv_network_gives_finite_terms():
  c = _config(network="conv")
  c.model.conv_channels = (4,)
  model, params, x = _init(c)
  terms = model.apply(
    {"params": params}, {"input": x, "target": x}, jax.random.key(0), c, 1.0, method="losses"
  )
  assert all(bool(jnp.all(jnp.isfinite(v))) and v.shape == (3,) for v in terms.values())


# -- options ------------------------------------------------------------------


@pytest.mark.parametrize(
  "name,value",
  [
    ("prior", "gaussian"),
    ("hidden1", (0,)),
    ("hidden2", (4, "8")),
    ("z1_dim", 0),
    ("network", "gated"),
    ("num_pseudo_inputs", 0),
    ("pseudo_inputs", "relu"),
    ("z3_dim", 4),  # Unknown option.
  ],
)
def test_bad_option_is_a_config_error_naming_it(name, value):
  with pytest.raises(errors.ConfigError, match=f"config.model.options.{name}"):
    models.build_model(_config(**{name: value}).model, SHAPE)
