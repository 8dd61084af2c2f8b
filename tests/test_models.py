"""Tests for aejax/models.py: every model's shapes and finiteness, lookups, the lesson's model."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from aejax import configs, errors, losses, models

CASES = [
  # name, image shape, extra model fields
  ("dense_ae", (28, 28, 1), {"latent_dim": 32, "hidden_widths": (64,)}),
  ("conv_ae", (28, 28, 1), {"latent_dim": 2, "conv_channels": (8, 16)}),
  ("lesson_conv_ae", (28, 28, 1), {"latent_dim": 128}),
  ("dense_vae", (8, 8, 1), {"latent_dim": 2, "hidden_widths": (32, 16)}),
  ("conv_vae", (28, 28, 1), {"latent_dim": 4, "conv_channels": (8, 16)}),
  ("conv_vae", (32, 32, 3), {"latent_dim": 8, "conv_channels": (8, 8, 8)}),
]


def _model_config(name, **fields):
  c = configs.default_config().model
  c.name = name
  for k, v in fields.items():
    c[k] = v
  return c


@pytest.mark.parametrize("name,shape,fields", CASES)
def test_shapes_and_finiteness(name, shape, fields):
  model = models.build_model(_model_config(name, **fields), shape)
  x = jax.random.uniform(jax.random.key(0), (3, *shape))
  # jit: one compilation instead of one per op keeps this fast on CPU.
  params = jax.jit(model.init)(jax.random.key(1), x, jax.random.key(2))["params"]
  apply = jax.jit(model.apply, static_argnames="method")
  out = apply({"params": params}, x, jax.random.key(3))
  assert out["logits"].shape == (3, *shape)
  assert out["z"].shape == (3, fields["latent_dim"])
  assert bool(jnp.all(jnp.isfinite(out["logits"])))
  if model.is_variational:
    assert out["mean"].shape == out["logvar"].shape == (3, fields["latent_dim"])
    # Without a key the VAE decodes its posterior mean.
    det = apply({"params": params}, x)
    np.testing.assert_array_equal(det["z"], det["mean"])
  decoded = apply({"params": params}, out["z"], method=model.decode)
  np.testing.assert_allclose(decoded, out["logits"], rtol=1e-6, atol=1e-6)


def test_lesson_conv_ae_parameter_count():
  # Seven 3x3 convolutions with biases, counted by hand from the lesson's layers.
  model = models.build_model(_model_config("lesson_conv_ae", latent_dim=128), (28, 28, 1))
  params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
  n = sum(p.size for p in jax.tree.leaves(params))
  conv = lambda k, cin, cout: k * k * cin * cout + cout
  expected = (
    conv(3, 1, 16)
    + conv(3, 16, 8)
    + conv(3, 8, 8)
    + conv(3, 8, 8)
    + conv(3, 8, 8)
    + conv(3, 8, 16)
    + conv(3, 16, 1)
  )
  assert n == expected == 4385


def test_superres_input_is_upsampled_inside_the_model():
  model = models.build_model(_model_config("lesson_conv_ae", latent_dim=128), (28, 28, 1))
  params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
  out = model.apply({"params": params}, jnp.ones((2, 7, 7, 1)))
  assert out["logits"].shape == (2, 28, 28, 1)


def test_learned_log_scale_is_a_parameter():
  cfg = _model_config(
    "dense_vae",
    latent_dim=2,
    hidden_widths=(8,),
    likelihood="gaussian",
    learn_log_scale=True,
    log_scale=-1.0,
  )
  model = models.build_model(cfg, (8, 8, 1))
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), jax.random.key(1))["params"]
  assert float(params["likelihood"]["log_scale"]) == -1.0
  out = model.apply({"params": params}, jnp.zeros((1, 8, 8, 1)), jax.random.key(1))
  assert float(out["log_scale"]) == -1.0


def test_unknown_model_lists_valid_names():
  with pytest.raises(errors.ConfigError, match="dense_ae, conv_ae, lesson_conv_ae"):
    models.build_model(_model_config("resnet"), (28, 28, 1))


@pytest.mark.parametrize(
  "name,shape,fields,match",
  [
    ("lesson_conv_ae", (8, 8, 1), {"latent_dim": 128}, "fixed 28x28"),
    ("lesson_conv_ae", (28, 28, 1), {"latent_dim": 2}, "latent_dim must be 128"),
    ("conv_vae", (28, 28, 1), {"conv_channels": (8, 8, 8)}, "divisible by 8"),
    ("dense_ae", (28, 28, 1), {"latent_dim": 0}, "latent_dim must be >= 1"),
    ("dense_ae", (28, 28, 1), {"activation": "swish2"}, "unknown activation"),
  ],
)
def test_bad_model_configs_name_the_field(name, shape, fields, match):
  with pytest.raises(errors.ConfigError, match=match):
    model = models.build_model(_model_config(name, **fields), shape)
    model.init(jax.random.key(0), jnp.zeros((1, *shape)))


def test_dense_ae_overfits_one_batch():
  x = jax.random.uniform(jax.random.key(0), (8, 8, 8, 1))
  model = models.build_model(
    _model_config("dense_ae", latent_dim=16, hidden_widths=(64,)), (8, 8, 1)
  )
  params = model.init(jax.random.key(1), x)["params"]
  tx = optax.adam(1e-2)
  opt_state = tx.init(params)

  def loss_fn(p):
    logits = model.apply({"params": p}, x)["logits"]
    return jnp.mean((jax.nn.sigmoid(logits) - x) ** 2)

  @jax.jit
  def step(p, s):
    loss, g = jax.value_and_grad(loss_fn)(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s, loss

  first = float(loss_fn(params))
  for _ in range(300):
    params, opt_state, loss = step(params, opt_state)
  assert first > 0.05
  assert float(loss) < 1e-3, f"MSE after 300 steps {float(loss)} (start {first})"
  nll = losses.reconstruction_nll("bernoulli", model.apply({"params": params}, x)["logits"], x)
  assert nll.shape == (8,)
