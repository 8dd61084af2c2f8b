"""The regularised autoencoders of the zoo (aejax/zoo/sparse_ae.py, contractive_ae.py, rae.py).

Each loss term is checked against an independent NumPy float64 computation from
the same parameters: the networks are re-run layer by layer in NumPy, and the
Jacobians of the contractive and gradient penalties are built by the chain
rule, one layer at a time, not by JAX.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import expit

from aejax import configs, errors, models, parallel
from aejax.zoo import sparse_ae

SHAPE = (4, 4, 1)  # 16 pixels: NumPy Jacobians stay small.
BATCH = 8


def _config(name, latent_dim=3, widths=(6, 5), activation="tanh", **opts):
  c = configs.default_config()
  c.model.name = name
  c.model.latent_dim = latent_dim
  c.model.hidden_widths = widths
  c.model.activation = activation
  c.model.options.update(opts)
  return c


def _setup(config, seed=0):
  model = models.build_model(config.model, SHAPE)
  x = np.asarray(jax.random.uniform(jax.random.key(seed), (BATCH, *SHAPE)), np.float32)
  params = model.init(jax.random.key(seed + 1), jnp.asarray(x), jax.random.key(2), None)["params"]
  params = jax.tree.map(np.asarray, params)
  return model, params, x


def _losses(model, params, x, config, kl_weight, key=None):
  batch = {"input": jnp.asarray(x), "target": jnp.asarray(x)}
  fn = jax.jit(lambda p, w: model.apply({"params": p}, batch, key, config, w, method="losses"))
  return {k: np.asarray(v) for k, v in fn(params, jnp.float32(kl_weight)).items()}


# -- NumPy float64 re-implementations ----------------------------------------------------------


def _act(name):
  if name == "tanh":
    return np.tanh, lambda a: 1.0 - np.tanh(a) ** 2
  return (lambda a: np.maximum(a, 0.0)), (lambda a: (a > 0).astype(np.float64))


def _mlp(layers, h, activation):
  """The Dense stack Dense_0..Dense_n with `activation` between: (output, Jacobians (B, out, in)).

  The Jacobian is accumulated by the chain rule, layer by layer.
  """
  f, df = _act(activation)
  num = len(layers)
  h = h.astype(np.float64)
  jac = np.broadcast_to(np.eye(h.shape[1]), (h.shape[0], h.shape[1], h.shape[1]))
  for i in range(num):
    kernel = layers[f"Dense_{i}"]["kernel"].astype(np.float64)
    bias = layers[f"Dense_{i}"]["bias"].astype(np.float64)
    a = h @ kernel + bias
    jac = np.einsum("oi,bij->boj", kernel.T, jac)
    if i < num - 1:
      jac = df(a)[:, :, None] * jac
      h = f(a)
    else:
      h = a
  return h, jac


def _bernoulli_nll(logits_BxP, target_BxP):
  return np.sum(np.logaddexp(0.0, logits_BxP) - target_BxP * logits_BxP, axis=1)


def _np_encoder(params, x, activation="tanh"):
  return _mlp(params["encoder"], x.reshape(len(x), -1), activation)


def _np_decoder(params, z, activation="tanh"):
  return _mlp(params["decoder"], z, activation)


# -- sparse autoencoder ------------------------------------------------------------------------


def test_sparse_l1_terms_match_numpy():
  config = _config("sparse_ae", penalty="l1")
  model, params, x = _setup(config)
  got = _losses(model, params, x, config, kl_weight=0.7)
  z, _ = _np_encoder(params, x)
  logits, _ = _np_decoder(params, z)
  recon = _bernoulli_nll(logits, x.reshape(BATCH, -1))
  l1 = np.sum(np.abs(z), axis=1)
  np.testing.assert_allclose(got["recon"], recon, rtol=1e-5)
  np.testing.assert_allclose(got["l1"], l1, rtol=1e-5)
  np.testing.assert_allclose(got["loss"], recon + 0.7 * l1, rtol=1e-5)
  assert "kl_sparsity" not in got and got["loss"].shape == (BATCH,)
  # The code is the linear encoder output.
  codes = model.apply({"params": params}, jnp.asarray(x), method="encode")
  np.testing.assert_allclose(codes["z"], z, rtol=1e-5, atol=1e-6)


def _np_kl_sparsity(h, rho):
  # rho_hat and 1 - rho_hat as batch means of sigmoids, in float64.
  log_rho_hat = np.log(np.mean(expit(h), axis=0))
  log_one_minus = np.log(np.mean(expit(-h), axis=0))
  return np.sum(rho * (np.log(rho) - log_rho_hat) + (1 - rho) * (np.log(1 - rho) - log_one_minus))


def test_sparse_kl_terms_match_numpy():
  config = _config("sparse_ae", penalty="kl", sparsity_target=0.1)
  model, params, x = _setup(config)
  got = _losses(model, params, x, config, kl_weight=2.5)
  h, _ = _np_encoder(params, x)
  z = expit(h)  # The decoder reads the sigmoid activations.
  logits, _ = _np_decoder(params, z)
  recon = _bernoulli_nll(logits, x.reshape(BATCH, -1))
  kl = _np_kl_sparsity(h, 0.1)
  np.testing.assert_allclose(got["recon"], recon, rtol=1e-5)
  # A batch statistic, broadcast: every image carries the same value.
  np.testing.assert_allclose(got["kl_sparsity"], np.full(BATCH, kl), rtol=1e-5)
  np.testing.assert_allclose(got["loss"], recon + 2.5 * kl, rtol=1e-5)
  codes = model.apply({"params": params}, jnp.asarray(x), method="encode")
  np.testing.assert_allclose(codes["z"], z, rtol=1e-5)
  assert np.all((codes["z"] > 0) & (codes["z"] < 1))


def test_kl_sparsity_is_zero_at_target_and_finite_when_saturated():
  rho = 0.05
  at_target = np.full((BATCH, 4), np.log(rho / (1 - rho)), np.float32)  # sigmoid = rho exactly.
  assert abs(float(sparse_ae.kl_sparsity(jnp.asarray(at_target), rho))) < 1e-6
  # Every unit saturated at 1 in float32: the penalty and its gradient stay finite and correct.
  saturated = np.full((BATCH, 4), 60.0)
  value, grad = jax.value_and_grad(sparse_ae.kl_sparsity)(jnp.asarray(saturated, jnp.float32), rho)
  np.testing.assert_allclose(value, _np_kl_sparsity(saturated, rho), rtol=1e-5)
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad) > 0)  # Pushes the units down.


def test_kl_sparsity_is_a_statistic_of_the_global_batch_when_sharded():
  config = _config("sparse_ae", penalty="kl")
  model, params, x = _setup(config)
  single = _losses(model, params, x, config, kl_weight=1.0)
  mesh = parallel.make_mesh()
  assert mesh.size == 8
  sharded_x = jax.device_put(jnp.asarray(x), parallel.batch_sharded(mesh))
  replicated = jax.device_put(params, parallel.replicated(mesh))
  fn = jax.jit(lambda p, b: model.apply({"params": p}, b, None, config, 1.0, method="losses"))
  sharded = fn(replicated, {"input": sharded_x, "target": sharded_x})
  assert len(sharded_x.sharding.device_set) == 8
  # One image per device: a per-device statistic would differ from the global one.
  np.testing.assert_allclose(sharded["kl_sparsity"], single["kl_sparsity"], rtol=1e-5)


# -- contractive autoencoder -------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_contractive_penalty_matches_the_numpy_jacobian(activation):
  config = _config("contractive_ae", activation=activation)
  model, params, x = _setup(config)
  got = _losses(model, params, x, config, kl_weight=0.3)
  z, jac_BxDxP = _np_encoder(params, x, activation)
  logits, _ = _np_decoder(params, z, activation)
  recon = _bernoulli_nll(logits, x.reshape(BATCH, -1))
  frobenius = np.sum(jac_BxDxP**2, axis=(1, 2))
  np.testing.assert_allclose(got["recon"], recon, rtol=1e-5)
  np.testing.assert_allclose(got["contractive"], frobenius, rtol=1e-4)
  np.testing.assert_allclose(got["loss"], recon + 0.3 * frobenius, rtol=1e-5)
  # The Jacobian itself, entry by entry, and a central finite difference of one entry.
  _, jac = model.apply({"params": params}, jnp.asarray(x), method="jacobian")
  np.testing.assert_allclose(
    np.moveaxis(np.asarray(jac).reshape(3, BATCH, -1), 0, 1), jac_BxDxP, rtol=1e-4, atol=1e-6
  )
  step = np.zeros_like(x)
  step[2, 1, 3, 0] = 1e-3
  z_plus, _ = _np_encoder(params, x + step, activation)
  z_minus, _ = _np_encoder(params, x - step, activation)
  difference = (z_plus[2] - z_minus[2]) / 2e-3
  np.testing.assert_allclose(jac_BxDxP[2, :, 1 * 4 + 3], difference, rtol=1e-3, atol=1e-5)


def test_contractive_conv_jacobian_is_per_image():
  # A conv encoder: the batched vector-Jacobian products equal each image's own Jacobian.
  config = _config("contractive_ae", network="conv", activation="tanh")
  config.model.conv_channels = (2,)
  model, params, x = _setup(config)
  _, jac = model.apply({"params": params}, jnp.asarray(x), method="jacobian")

  def encode_one(image):
    return model.apply({"params": params}, image[None], method="encode")["z"][0]

  for b in (0, 5):
    want = jax.jacrev(encode_one)(jnp.asarray(x[b]))  # (D, H, W, C), one image alone.
    np.testing.assert_allclose(jac[:, b], want, rtol=1e-5, atol=1e-7)
  got = _losses(model, params, x, config, kl_weight=1.0)
  np.testing.assert_allclose(
    got["contractive"], np.sum(np.square(jac), axis=(0, 2, 3, 4)), rtol=1e-5
  )


# -- RAE ---------------------------------------------------------------------------------------


def test_rae_l2_terms_match_numpy():
  config = _config("rae", regulariser="l2", decoder_weight=0.01)
  model, params, x = _setup(config)
  got = _losses(model, params, x, config, kl_weight=0.2)
  z, _ = _np_encoder(params, x)
  logits, _ = _np_decoder(params, z)
  recon = _bernoulli_nll(logits, x.reshape(BATCH, -1))
  code = 0.5 * np.sum(z**2, axis=1)
  decoder_l2 = sum(
    np.sum(leaf.astype(np.float64) ** 2) for leaf in jax.tree.leaves(params["decoder"])
  )
  np.testing.assert_allclose(got["recon"], recon, rtol=1e-5)
  np.testing.assert_allclose(got["code_l2"], code, rtol=1e-5)
  np.testing.assert_allclose(got["decoder_l2"], np.full(BATCH, decoder_l2), rtol=1e-5)
  np.testing.assert_allclose(got["loss"], recon + 0.2 * code + 0.01 * decoder_l2, rtol=1e-5)
  assert "decoder_gp" not in got


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_rae_gradient_penalty_matches_the_numpy_jacobian(activation):
  config = _config("rae", activation=activation, regulariser="gp", decoder_weight=0.5)
  model, params, x = _setup(config)
  got = _losses(model, params, x, config, kl_weight=0.1)
  z, _ = _np_encoder(params, x, activation)
  logits, jac_BxPxD = _np_decoder(params, z, activation)
  image = expit(logits)
  jac_image = (image * (1 - image))[:, :, None] * jac_BxPxD  # d sigmoid(logits) / dz.
  gp = np.sum(jac_image**2, axis=(1, 2))
  recon = _bernoulli_nll(logits, x.reshape(BATCH, -1))
  code = 0.5 * np.sum(z**2, axis=1)
  np.testing.assert_allclose(got["decoder_gp"], gp, rtol=1e-4)
  np.testing.assert_allclose(got["loss"], recon + 0.1 * code + 0.5 * gp, rtol=1e-5)
  assert "decoder_l2" not in got


def test_gaussian_likelihood_uses_the_learned_log_scale():
  config = _config("rae", decoder_weight=0.0)
  config.model.likelihood, config.model.learn_log_scale, config.model.log_scale = (
    "gaussian",
    True,
    -1.0,
  )
  model, params, x = _setup(config)
  params["likelihood"]["log_scale"] = np.float32(-0.5)
  got = _losses(model, params, x, config, kl_weight=0.0)
  z, _ = _np_encoder(params, x)
  logits, _ = _np_decoder(params, z)
  mean, target = expit(logits), x.reshape(BATCH, -1)
  nll = np.sum(0.5 * ((target - mean) / np.exp(-0.5)) ** 2 - 0.5 + 0.5 * np.log(2 * np.pi), axis=1)
  np.testing.assert_allclose(got["recon"], nll, rtol=1e-5)
  np.testing.assert_allclose(got["loss"], nll, rtol=1e-5)


# -- the contract ------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "name, opts",
  [
    ("sparse_ae", {}),
    ("sparse_ae", {"penalty": "kl"}),
    ("contractive_ae", {}),
    ("rae", {}),
    ("rae", {"regulariser": "gp", "network": "conv"}),
  ],
)
def test_contract_and_gradients(name, opts):
  config = _config(name, **opts)
  config.model.conv_channels = (2, 4)
  model, params, x = _setup(config)
  assert model.is_variational is False and model.num_classes == 0
  assert not hasattr(model, "sample")  # Deterministic: generated only through the ex-post GMM.
  codes = model.apply({"params": params}, jnp.asarray(x), None, method="encode")
  assert set(codes) == {"z"} and codes["z"].shape == (BATCH, 3)
  logits = model.apply({"params": params}, codes["z"], None, method="decode")
  out = model.apply({"params": params}, jnp.asarray(x), jax.random.key(0), None)
  np.testing.assert_allclose(out["logits"], logits, rtol=1e-6)
  # A key changes nothing: the model is deterministic.
  with_key = _losses(model, params, x, config, 0.5, key=jax.random.key(3))
  without = _losses(model, params, x, config, 0.5)
  for term, value in without.items():
    assert value.shape == (BATCH,), term
    np.testing.assert_array_equal(value, with_key[term])
  batch = {"input": jnp.asarray(x), "target": jnp.asarray(x)}

  def mean_loss(p):
    return model.apply({"params": p}, batch, None, config, 0.5, method="losses")["loss"].mean()

  grads = jax.jit(jax.grad(mean_loss))(params)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert any(np.any(g != 0) for g in jax.tree.leaves(grads["encoder"]))


@pytest.mark.parametrize(
  "name, opts, field",
  [
    ("sparse_ae", {"penalty": "l2"}, "penalty"),
    ("sparse_ae", {"penalty": 1}, "penalty"),
    ("sparse_ae", {"sparsity_target": 0.0}, "sparsity_target"),
    ("sparse_ae", {"sparsity_target": 1.5}, "sparsity_target"),
    ("sparse_ae", {"rho": 0.1}, "rho"),
    ("contractive_ae", {"penalty": "l1"}, "penalty"),
    ("contractive_ae", {"network": "mlp"}, "network"),
    ("rae", {"regulariser": "sn"}, "regulariser"),
    ("rae", {"decoder_weight": -1.0}, "decoder_weight"),
    ("rae", {"decoder_weight": "big"}, "decoder_weight"),
  ],
)
def test_bad_option_is_a_config_error_naming_it(name, opts, field):
  with pytest.raises(errors.ConfigError, match=rf"^config\.model\.options\.{field}:"):
    models.build_model(_config(name, **opts).model, SHAPE)


@pytest.mark.parametrize("name", ["sparse_ae", "contractive_ae", "rae"])
def test_conditional_config_is_rejected(name):
  config = _config(name)
  config.model.num_classes = 10
  with pytest.raises(errors.ConfigError, match=r"^config\.model\.num_classes:.*not conditional"):
    models.build_model(config.model, SHAPE)
