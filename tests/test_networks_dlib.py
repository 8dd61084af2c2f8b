"""disentanglement_lib's conv encoder and decoder (aejax/networks.py, network "dlib_conv").

Parameter counts and kernel shapes against a hand count of the published layers,
output shapes, the Glorot-uniform initialisation, the encoder's first layer
against a NumPy convolution, and the 64x64 shape check.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aejax import configs, errors, models, networks


def _params(module, x):
  # Jitted: un-jitted initialisation runs the convolutions op by op, seconds on a CPU.
  init = jax.jit(lambda key, x: module.init(key, x)["params"])
  return jax.tree.map(np.asarray, init(jax.random.key(0), x))


def _shapes(module, x):
  """The parameters' shapes, traced without computing anything."""
  return jax.eval_shape(lambda x: module.init(jax.random.key(0), x)["params"], x)


@pytest.fixture(scope="module")
def encoder_params():
  """One initialisation of a one-channel encoder to 20 outputs, shared (it compiles for seconds)."""
  return _params(networks.DlibConvEncoder(20), jnp.zeros((1, 64, 64, 1), jnp.float32))


def _count(params) -> int:
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))


def _hand_count_encoder(channels: int, outputs: int) -> int:
  # conv 4x4 C->32, 4x4 32->32, 2x2 32->64, 2x2 64->64 (weights + biases), dense 1024->256,
  # dense 256->outputs.
  convs = (4 * 4 * channels * 32 + 32) + (4 * 4 * 32 * 32 + 32)
  convs += (2 * 2 * 32 * 64 + 64) + (2 * 2 * 64 * 64 + 64)
  return convs + (4 * 4 * 64 * 256 + 256) + (256 * outputs + outputs)


def _hand_count_decoder(latent: int, channels: int) -> int:
  # dense latent->256, 256->1024; transposed convs 4x4 64->64, 64->32, 32->32, 32->C.
  dense = (latent * 256 + 256) + (256 * 1024 + 1024)
  convs = (16 * 64 * 64 + 64) + (16 * 64 * 32 + 32) + (16 * 32 * 32 + 32)
  return dense + convs + (16 * 32 * channels + channels)


@pytest.mark.parametrize("channels", [1, 3])
def test_parameter_counts_and_kernel_shapes_match_the_published_layers(channels):
  x = jnp.zeros((2, 64, 64, channels), jnp.float32)
  enc = _shapes(networks.DlibConvEncoder(20), x)
  assert _count(enc) == _hand_count_encoder(channels, 20)
  # The hand count for one channel and a 10-D Gaussian code: 309,204 numbers.
  if channels == 1:
    assert _count(enc) == 309_204
  kernels = [enc[f"Conv_{i}"]["kernel"].shape for i in range(4)]
  assert kernels == [(4, 4, channels, 32), (4, 4, 32, 32), (2, 2, 32, 64), (2, 2, 64, 64)]
  assert enc["Dense_0"]["kernel"].shape == (1024, 256)

  dec = _shapes(networks.DlibConvDecoder((64, 64, channels)), jnp.zeros((2, 10), jnp.float32))
  assert _count(dec) == _hand_count_decoder(10, channels)
  kernels = [dec[f"ConvTranspose_{i}"]["kernel"].shape for i in range(4)]
  assert kernels == [(4, 4, 64, 64), (4, 4, 64, 32), (4, 4, 32, 32), (4, 4, 32, channels)]
  assert [dec[f"Dense_{i}"]["kernel"].shape for i in range(2)] == [(10, 256), (256, 1024)]


def test_output_shapes_and_the_models_build_networks_entry():
  c = configs.default_config()
  c.model.latent_dim = 10
  enc, dec = models.build_networks(c.model, (64, 64, 3), 20, "dlib_conv", "test")
  assert isinstance(enc, networks.DlibConvEncoder) and isinstance(dec, networks.DlibConvDecoder)
  # Shapes only (jax.eval_shape traces without computing): the values are tested below.
  x = jax.ShapeDtypeStruct((5, 64, 64, 3), jnp.float32)
  h = jax.eval_shape(enc.apply, {"params": _shapes(enc, x)}, x)
  assert h.shape == (5, 20)
  z = jax.ShapeDtypeStruct((5, 10), jnp.float32)
  logits = jax.eval_shape(dec.apply, {"params": _shapes(dec, z)}, z)
  assert logits.shape == (5, 64, 64, 3)
  assert "dlib_conv" in models.NETWORKS


def test_first_layer_is_a_4x4_stride_2_same_convolution(encoder_params):
  # Re-run the encoder's first convolution in NumPy: TF/XLA "SAME" with a 4x4 kernel and
  # stride 2 on 64 pixels pads one row and column on each side (total (32-1)*2+4-64 = 2).
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(2, 64, 64, 1)).astype(np.float32)
  enc = networks.DlibConvEncoder(20, conv_impl="xla")
  params = encoder_params
  out, state = enc.apply(
    {"params": params}, jnp.asarray(x), capture_intermediates=True, mutable=["intermediates"]
  )
  got = np.asarray(state["intermediates"]["Conv_0"]["__call__"][0])
  kernel = params["Conv_0"]["kernel"].astype(np.float64)
  padded = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  want = np.zeros((2, 32, 32, 32))
  for i in range(32):
    for j in range(32):
      patch = padded[:, 2 * i : 2 * i + 4, 2 * j : 2 * j + 4, :]
      want[:, i, j, :] = np.einsum("bhwc,hwcf->bf", patch, kernel)
  want += params["Conv_0"]["bias"]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)  # The conv before its ReLU.
  assert out.shape == (2, 20) and np.all(np.isfinite(out))


def test_kernels_are_glorot_uniform_and_biases_zero(encoder_params):
  # TensorFlow's default, which disentanglement_lib kept: U(-a, a), a = sqrt(6 / (fan_in +
  # fan_out)), fans kh*kw*in and kh*kw*out.
  params = encoder_params
  kernel = params["Conv_1"]["kernel"]  # 4x4, 32 -> 32: 16,384 numbers.
  limit = math.sqrt(6.0 / (16 * 32 + 16 * 32))
  assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.99 * limit
  # A uniform's standard deviation is a / sqrt(3).
  assert kernel.std() == pytest.approx(limit / math.sqrt(3.0), rel=0.03)
  assert all(np.all(params[name]["bias"] == 0) for name in params)


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3), (64, 32, 1)])
def test_other_image_sizes_are_a_config_error_naming_the_option_and_shape(shape):
  c = configs.default_config()
  c.model.latent_dim = 10
  with pytest.raises(errors.ConfigError, match=r"config\.model\.options\.network") as info:
    models.build_networks(c.model, shape, 20, "dlib_conv", "annealed_vae")
  assert str(shape) in str(info.value) and "64x64" in str(info.value)
  assert "'annealed_vae'" in str(info.value)
  # The modules check too, before any convolution, when used outside build_networks.
  with pytest.raises(errors.ConfigError, match=r"needs 64x64 images"):
    networks.DlibConvEncoder(20).init(jax.random.key(0), jnp.zeros((1, *shape)))
  with pytest.raises(errors.ConfigError, match=r"needs 64x64 images"):
    networks.DlibConvDecoder(shape).init(jax.random.key(0), jnp.zeros((1, 10)))
