"""Tests for aejax/models.py and aejax/layers.py: shapes, lookups, conv formulations, bf16."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from aejax import configs, errors, layers, losses, models, networks, steps

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
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
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
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
  out = jax.jit(model.apply)({"params": params}, jnp.ones((2, 7, 7, 1)))
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


# ---------------------------------------------------------------------------
# Convolutions: the im2col formulation against Flax's, layer by layer.

CONV_LAYERS = [
  # transposed, features, kernel, strides, padding, input height
  (False, 8, (3, 3), (1, 1), "SAME", 7),
  (False, 8, (3, 3), (2, 2), "SAME", 7),
  (False, 5, (4, 4), (2, 2), ((1, 1), (1, 1)), 7),  # Pythae's encoder convs.
  (False, 5, (4, 4), (2, 2), ((1, 1), (1, 1)), 3),  # ... its last one, 3x3 -> 1x1.
  (False, 8, (3, 3), (1, 1), "VALID", 9),
  (False, 1, (3, 2), (2, 1), "SAME", 9),
  (True, 8, (3, 3), (2, 2), "SAME", 7),  # conv_vae's decoder.
  (True, 8, (3, 3), (2, 2), ((1, 1), (1, 1)), 4),  # Pythae's decoder: 4 -> 7,
  (True, 8, (3, 3), (2, 2), ((1, 2), (1, 2)), 7),  # 7 -> 14 (output_padding 1).
  (True, 3, (4, 4), (2, 2), "VALID", 5),
  (True, 3, (1, 1), (3, 3), "SAME", 4),  # Stride above the kernel size: empty phases.
  (True, 3, (5, 3), (2, 3), ((3, 0), (0, 4)), 4),
]


@pytest.mark.parametrize("transposed,features,kernel,strides,padding,height", CONV_LAYERS)
def test_conv_layers_match_flax(transposed, features, kernel, strides, padding, height):
  """Same parameters (names, shapes, initial values) and outputs and gradients as Flax's layers."""
  x = jax.random.normal(jax.random.key(0), (2, height, height + 1, 3))
  flax_cls = nn.ConvTranspose if transposed else nn.Conv
  ours_cls = layers.ConvTranspose if transposed else layers.Conv
  reference = flax_cls(features, kernel, strides=strides, padding=padding)
  params = reference.init(jax.random.key(1), x)
  # One jitted function per module: a compilation each instead of many eager ops.
  value_and_grads = lambda m: jax.jit(  # noqa: E731
    lambda p, x: (
      m.apply(p, x),
      jax.grad(lambda p, x: jnp.sum(jnp.sin(m.apply(p, x))), (0, 1))(p, x),
    )
  )
  expected, expected_grads = value_and_grads(reference)(params, x)
  for impl in ("xla", "im2col"):
    ours = ours_cls(features, kernel, strides=strides, padding=padding, impl=impl)
    own_init = jax.jit(ours.init)(jax.random.key(1), x)
    jax.tree.map(np.testing.assert_array_equal, own_init, params)  # Checkpoints interchange.
    out, grads = value_and_grads(ours)(params, x)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), grads, expected_grads
    )


@pytest.mark.parametrize("name", ["conv_vae", "lesson_conv_ae"])
def test_conv_impls_compute_the_same_model(name):
  """conv_impl changes how a model computes, not its parameters: one checkpoint serves both."""
  fields = {"latent_dim": 128} if name == "lesson_conv_ae" else {"latent_dim": 4}
  x = jax.random.uniform(jax.random.key(0), (3, 28, 28, 1))
  xla = models.build_model(_model_config(name, conv_impl="xla", **fields), (28, 28, 1))
  im2col = models.build_model(_model_config(name, conv_impl="im2col", **fields), (28, 28, 1))
  params = jax.jit(xla.init)(jax.random.key(1), x)["params"]
  abstract = jax.eval_shape(im2col.init, jax.random.key(1), x)["params"]
  assert jax.tree.structure(abstract) == jax.tree.structure(params)
  out_xla = jax.jit(xla.apply)({"params": params}, x)["logits"]
  out_im2col = jax.jit(im2col.apply)({"params": params}, x)["logits"]
  np.testing.assert_allclose(out_im2col, out_xla, rtol=1e-4, atol=1e-4)


def test_conv_impl_auto_is_im2col_on_cpu_only():
  assert layers.resolve_conv_impl("auto") == ("im2col" if jax.default_backend() == "cpu" else "xla")
  assert layers.resolve_conv_impl("xla") == "xla"
  with pytest.raises(errors.ConfigError, match="config.model.conv_impl"):
    models.build_model(_model_config("conv_vae", conv_impl="winograd"), (28, 28, 1))


@pytest.mark.parametrize("height", [7, 8, 14])
def test_max_pool_matches_flax(height):
  """The lesson's pooling as a reshape is Flax's max_pool ("SAME" pads odd sizes), gradient too."""
  x = jax.random.normal(jax.random.key(0), (2, height, height, 3))  # No ties.
  expected = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
  np.testing.assert_array_equal(networks._max_pool_2(x, "SAME"), expected)
  grad = jax.grad(lambda x: jnp.sum(jnp.sin(networks._max_pool_2(x, "SAME"))))(x)
  expected_grad = jax.grad(
    lambda x: jnp.sum(jnp.sin(nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")))
  )(x)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-6)


# ---------------------------------------------------------------------------
# Pythae's benchmark conv VAE.


def test_pythae_conv_vae_layers_and_parameter_count():
  """Pythae's Encoder_Conv_VAE_MNIST + Decoder_Conv_AE_MNIST: 17,232,033 parameters at latent 16."""
  model = models.build_model(_model_config("pythae_conv_vae", latent_dim=16), (28, 28, 1))
  x = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))
  params = jax.jit(model.init)(jax.random.key(1), x, jax.random.key(2))["params"]
  conv = lambda k, cin, cout: k * k * cin * cout + cout  # noqa: E731
  dense = lambda cin, cout: cin * cout + cout  # noqa: E731
  batch_norm = lambda c: 2 * c  # noqa: E731 Scale and bias (running statistics are not parameters).
  encoder = sum(
    conv(4, a, b) + batch_norm(b) for a, b in ((1, 128), (128, 256), (256, 512), (512, 1024))
  )
  encoder += 2 * dense(1024, 16)
  decoder = dense(16, 1024 * 4 * 4) + conv(3, 1024, 512) + batch_norm(512)
  decoder += conv(3, 512, 256) + batch_norm(256) + conv(3, 256, 1)
  assert steps.count_params(params) == encoder + decoder == 17_232_033
  assert params["encoder"]["Conv_3"]["kernel"].shape == (4, 4, 512, 1024)
  assert params["decoder"]["ConvTranspose_0"]["kernel"].shape == (3, 3, 1024, 512)
  out = jax.jit(model.apply)({"params": params}, x, jax.random.key(3))
  assert out["logits"].shape == (4, 28, 28, 1) and out["mean"].shape == (4, 16)
  assert bool(jnp.all(jnp.isfinite(out["logits"])))


def test_batch_norm_normalises_with_batch_statistics():
  x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (16, 5, 5, 4))
  bn = networks.BatchNorm()
  params = bn.init(jax.random.key(1), x)
  assert set(params["params"]) == {"scale", "bias"}
  y = bn.apply(params, x)
  np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(y.var(axis=(0, 1, 2)), 1.0, rtol=1e-3)


def test_pythae_conv_vae_needs_28x28x1_images():
  with pytest.raises(errors.ConfigError, match="28x28x1"):
    models.build_model(_model_config("pythae_conv_vae", latent_dim=16), (32, 32, 3))


# ---------------------------------------------------------------------------
# Mixed precision.


@pytest.mark.parametrize(
  "name,shape,fields",
  [
    ("dense_vae", (28, 28, 1), {"latent_dim": 8, "hidden_widths": (64, 32), "activation": "tanh"}),
    ("conv_vae", (28, 28, 1), {"latent_dim": 4, "conv_channels": (8, 16)}),
    ("lesson_conv_ae", (28, 28, 1), {"latent_dim": 128}),
  ],
)
def test_bfloat16_computes_close_to_float32_with_float32_params(name, shape, fields):
  x = jax.random.uniform(jax.random.key(0), (4, *shape))
  fp32 = models.build_model(_model_config(name, **fields), shape)
  bf16 = models.build_model(_model_config(name, dtype="bfloat16", **fields), shape)
  params = jax.jit(bf16.init)(jax.random.key(1), x, jax.random.key(2))["params"]
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  out16 = jax.jit(bf16.apply)({"params": params}, x)
  out32 = jax.jit(fp32.apply)({"params": params}, x)
  for key in out32:
    assert out16[key].dtype == jnp.float32, key  # What reaches the losses is float32.
    scale = float(jnp.max(jnp.abs(out32[key]))) + 1e-3
    np.testing.assert_allclose(out16[key], out32[key], atol=0.05 * scale)
  # Gradients flow to float32 parameters.
  loss = lambda p: jnp.mean(bf16.apply({"params": p}, x)["logits"] ** 2)  # noqa: E731
  grads = jax.jit(jax.grad(loss))(params)
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_unknown_dtype_names_the_field():
  with pytest.raises(errors.ConfigError, match="config.model.dtype"):
    models.build_model(_model_config("dense_vae", dtype="float8"), (8, 8, 1))
