"""The annealed VAE of the zoo (aejax/zoo/annealed_vae.py): recon + gamma * |KL - C(t)|.

The loss terms are checked against an independent NumPy float64 computation from
the same parameters and noise (the networks re-run layer by layer), both penalties
against their definitions, the capacity schedule through the real train step, and
the option and objective checks.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from aejax import configs, errors, models, steps

SHAPE = (4, 4, 1)
BATCH = 8
LATENT = 3
GAMMA = 10.0


def _config(**opts):
  c = configs.default_config()
  c.model.name = "annealed_vae"
  c.model.latent_dim = LATENT
  c.model.hidden_widths = (6, 5)
  c.model.activation = "tanh"
  c.model.options.update({"gamma": GAMMA, **opts})
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


def _reference(params, x, key):
  """recon and kl per image in float64, with the model's noise eps = normal(key, (B, D))."""
  h = _mlp(params["encoder"], x)
  mean, logvar = h[:, :LATENT], h[:, LATENT:]
  eps = np.asarray(jax.random.normal(key, (BATCH, LATENT)), np.float64)
  z = mean + np.exp(0.5 * logvar) * eps
  logits = _mlp(params["decoder"], z)
  target = x.reshape(BATCH, -1).astype(np.float64)
  recon = np.sum(np.logaddexp(0.0, logits) - target * logits, axis=1)
  kl = 0.5 * np.sum(np.exp(logvar) + mean**2 - 1.0 - logvar, axis=1)
  return recon, kl


@pytest.mark.parametrize("penalty", ["batch", "image"])
def test_terms_match_a_numpy_reference(penalty):
  key = jax.random.key(7)
  c = _config(penalty=penalty)
  model, params, x = _setup(c)
  recon, kl = _reference(params, x, key)
  # A capacity between the images' KLs: some above C, some below, so the penalties differ.
  c_max = float(np.median(kl)) / 0.5
  c.model.options.c_max = c_max
  model = models.build_model(c.model, SHAPE)
  got = _losses(model, params, x, c, 0.5, key)
  capacity = 0.5 * c_max
  assert np.sum(kl > capacity) and np.sum(kl < capacity)
  np.testing.assert_allclose(got["recon"], recon, rtol=1e-5)
  np.testing.assert_allclose(got["kl"], kl, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(got["capacity"], np.full(BATCH, capacity), rtol=1e-6)
  np.testing.assert_allclose(got["neg_elbo"], recon + kl, rtol=1e-5)
  if penalty == "image":
    want = recon + GAMMA * np.abs(kl - capacity)
  else:
    want = recon + GAMMA * np.sign(kl.mean() - capacity) * (kl - capacity)
    # Its batch mean is disentanglement_lib's penalty on the batch mean KL.
    np.testing.assert_allclose(
      got["loss"].mean(), recon.mean() + GAMMA * abs(kl.mean() - capacity), rtol=1e-5
    )
  np.testing.assert_allclose(got["loss"], want, rtol=1e-5, atol=1e-4)
  assert set(got) >= {"recon", "kl", "capacity", "loss", "neg_elbo", "bce_per_pixel"}
  assert all(v.shape == (BATCH,) for v in got.values())


def test_penalties_agree_when_every_kl_is_on_one_side_of_the_capacity():
  key = jax.random.key(3)
  c = _config(penalty="batch", c_max=1e4)  # C far above every KL: |KL_i - C| = C - KL_i.
  model, params, x = _setup(c)
  batch = _losses(model, params, x, c, 1.0, key)
  c.model.options.penalty = "image"
  image = _losses(models.build_model(c.model, SHAPE), params, x, c, 1.0, key)
  np.testing.assert_allclose(batch["loss"], image["loss"], rtol=1e-6)


def test_batch_penalty_gradient_is_that_of_the_penalty_on_the_mean_kl():
  key = jax.random.key(5)
  c = _config(penalty="batch")
  model, params, x = _setup(c)
  batch = {"input": jnp.asarray(x), "target": jnp.asarray(x)}
  _, kl = _reference(params, x, key)
  c.model.options.c_max = float(np.median(kl))
  model = models.build_model(c.model, SHAPE)

  def terms(p):
    return model.apply({"params": p}, batch, key, c, jnp.float32(1.0), method="losses")

  def direct(p):  # GAMMA * |mean KL - C| written as such.
    t = terms(p)
    return t["recon"].mean() + GAMMA * jnp.abs(t["kl"].mean() - t["capacity"][0])

  got = jax.jit(jax.grad(lambda p: terms(p)["loss"].mean()))(params)
  want = jax.jit(jax.grad(direct))(params)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_capacity_follows_the_step_through_the_train_steps_kl_weight():
  # C(t) = c_max * beta * min(1, t / T): the KL warm-up of the real step is the ramp.
  c_max, ramp = 4.0, 10
  c = _config(c_max=c_max)
  c.objective.kl_warmup_steps = ramp
  model, params, x = _setup(c)
  tx = optax.adam(1e-3)
  step = jax.jit(functools.partial(steps.guarded_train_step, model=model, tx=tx, config=c))
  batch = {"input": jnp.asarray(x), "target": jnp.asarray(x)}
  for t, beta in [(0, 1.0), (3, 1.0), (10, 1.0), (25, 1.0), (5, 2.0)]:
    state = steps.TrainState(step=jnp.int32(t), params=params, opt_state=tx.init(params))
    hp = {"beta": jnp.float32(beta), "learning_rate": jnp.float32(1e-3)}
    _, metrics, finite, _ = step(state, batch, jax.random.key(0), hp)
    assert bool(finite)
    want = c_max * beta * min(1.0, t / ramp)
    assert float(metrics["capacity"]) == pytest.approx(want, rel=1e-6, abs=1e-7), (t, beta)
    assert float(metrics["kl_weight"]) == pytest.approx(beta * min(1.0, t / ramp), abs=1e-7)


def test_builds_on_the_dlib_networks_for_64x64_images_only():
  c = _config(network="dlib_conv")
  c.model.latent_dim = 10
  model = models.build_model(c.model, (64, 64, 1))
  x = jax.ShapeDtypeStruct((4, 64, 64, 1), jnp.float32)
  key = jax.random.key(0)
  params = jax.eval_shape(lambda x: model.init(key, x, key)["params"], x)
  terms = jax.eval_shape(
    lambda p, x: model.apply(
      {"params": p}, {"input": x, "target": x}, key, c, 1.0, method="losses"
    ),
    params, x,
  )  # fmt: skip
  assert {name: t.shape for name, t in terms.items()}["capacity"] == (4,)
  assert all(t.shape == (4,) for t in terms.values())
  with pytest.raises(errors.ConfigError, match=r"options\.network.*\(28, 28, 1\)"):
    models.build_model(c.model, (28, 28, 1))


@pytest.mark.parametrize(
  "opts, match",
  [
    ({"penalty": "median"}, r"options\.penalty: unknown penalty"),
    ({"gamma": -1.0}, r"options\.gamma: must be >= 0"),
    ({"c_max": -5.0}, r"options\.c_max: must be >= 0"),
    ({"network": "gated"}, r"options\.network: unknown network"),
    ({"capacity": 3.0}, r"options\.capacity: unknown option"),
  ],
)
def test_bad_options_are_config_errors(opts, match):
  with pytest.raises(errors.ConfigError, match=match):
    models.build_model(_config(**opts).model, SHAPE)


def test_conditional_and_multi_sample_objectives_are_refused():
  c = _config()
  c.model.num_classes = 10
  with pytest.raises(errors.ConfigError, match=r"num_classes.*not conditional"):
    models.build_model(c.model, SHAPE)
  c = _config()
  model, params, x = _setup(c)
  c.objective.name = "iwae"
  with pytest.raises(errors.ConfigError, match=r"objective\.name.*'elbo'"):
    _losses(model, params, x, c, 1.0, jax.random.key(0))
