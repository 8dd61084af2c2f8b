"""Encoders and decoders as Flax Linen modules: the networks a model family is built from.

Encoders map an image (B, H, W, C) to features (B, out_dim); decoders map a
latent (B, D) to logits (B, H, W, C). Two model-config fields change how they
compute, never their parameters: `conv_impl` (auto/xla/im2col: how
convolutions are formed, see aejax/layers.py) and `dtype` ("float32", or
"bfloat16" for mixed precision: bf16 compute with float32 parameters).
"""

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from aejax import errors, layers

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
  "relu": nn.relu,
  "tanh": nn.tanh,
  "gelu": nn.gelu,
  "elu": nn.elu,
  "leaky_relu": nn.leaky_relu,
  "silu": nn.silu,
}


# Compute dtypes by config name. None lets Flax infer float32 from the float32 parameters.
DTYPES: dict[str, Any] = {"float32": None, "bfloat16": jnp.bfloat16}


def get_dtype(name: str):
  if name not in DTYPES:
    raise errors.ConfigError(
      f"config.model.dtype: unknown dtype {name!r}; valid: {', '.join(DTYPES)}"
    )
  return DTYPES[name]


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
  if name not in ACTIVATIONS:
    raise errors.ConfigError(
      f"config.model.activation: unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}"
    )
  return ACTIVATIONS[name]


# ---------------------------------------------------------------------------
# Encoders: image (B, H, W, C) -> features (B, out_dim).
# Decoders: latent (B, D) -> logits (B, H, W, C) of `output_shape`.


class DenseEncoder(nn.Module):
  """Flatten, then Dense layers of `widths` with `activation`, then Dense(out_dim)."""

  widths: Sequence[int]
  out_dim: int
  activation: str = "relu"
  dtype: Any = None

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    act = get_activation(self.activation)
    h = x_BxHxWxC.reshape(x_BxHxWxC.shape[0], -1)
    for width in self.widths:
      h = act(nn.Dense(width, dtype=self.dtype)(h))
    return nn.Dense(self.out_dim, dtype=self.dtype)(h)


class DenseDecoder(nn.Module):
  """Dense layers of `widths`, then Dense to all pixels, reshaped to `output_shape`."""

  widths: Sequence[int]
  output_shape: tuple[int, int, int]
  activation: str = "relu"
  dtype: Any = None

  @nn.compact
  def __call__(self, z_BxD: jax.Array) -> jax.Array:
    act = get_activation(self.activation)
    h = z_BxD
    for width in self.widths:
      h = act(nn.Dense(width, dtype=self.dtype)(h))
    h = nn.Dense(math.prod(self.output_shape), dtype=self.dtype)(h)
    return h.reshape(z_BxD.shape[0], *self.output_shape)


class ConvEncoder(nn.Module):
  """Stride-2 3x3 convolutions (one per entry of `channels`), flatten, Dense(out_dim)."""

  channels: Sequence[int]
  out_dim: int
  activation: str = "relu"
  conv_impl: str = "auto"
  dtype: Any = None

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    act = get_activation(self.activation)
    conv = functools.partial(layers.Conv, impl=self.conv_impl, dtype=self.dtype)
    h = x_BxHxWxC
    for c in self.channels:
      h = act(conv(c, (3, 3), strides=(2, 2), padding="SAME")(h))
    h = h.reshape(h.shape[0], -1)
    return nn.Dense(self.out_dim, dtype=self.dtype)(h)


class ConvDecoder(nn.Module):
  """Dense to a (H/2^n, W/2^n, channels[0]) map, n stride-2 transposed convs, 3x3 conv to logits.

  `channels` lists the encoder's widths; the decoder mirrors them. H and W must
  be divisible by 2^len(channels) (checked when the model is built).
  """

  channels: Sequence[int]
  output_shape: tuple[int, int, int]
  activation: str = "relu"
  conv_impl: str = "auto"
  dtype: Any = None

  @nn.compact
  def __call__(self, z_BxD: jax.Array) -> jax.Array:
    act = get_activation(self.activation)
    conv = functools.partial(layers.Conv, impl=self.conv_impl, dtype=self.dtype)
    conv_t = functools.partial(layers.ConvTranspose, impl=self.conv_impl, dtype=self.dtype)
    height, width, out_channels = self.output_shape
    factor = 2 ** len(self.channels)
    widths = list(reversed(self.channels))
    h = nn.Dense((height // factor) * (width // factor) * widths[0], dtype=self.dtype)(z_BxD)
    h = act(h).reshape(z_BxD.shape[0], height // factor, width // factor, widths[0])
    for c in widths:
      h = act(conv_t(c, (3, 3), strides=(2, 2), padding="SAME")(h))
    return conv(out_channels, (3, 3), padding="SAME")(h)


# disentanglement_lib's convolutional encoder and decoder (Locatello et al., 2019: the networks
# of its unsupervised study, architectures.conv_encoder and deconv_decoder), for 64x64 images.
DLIB_IMAGE_SIZE = (64, 64)
# (channels, kernel size) of the encoder's stride-2 convolutions. disentanglement_lib's code uses
# 2x2 kernels in the last two (the beta-VAE paper's table lists 4x4 for all four); we follow the
# code, whose networks produced the study's published numbers.
DLIB_ENCODER_CONVS = ((32, 4), (32, 4), (64, 2), (64, 2))
DLIB_HIDDEN = 256  # The dense layer after the encoder's convolutions and before the decoder's.
DLIB_DECODER_CHANNELS = (64, 32, 32)  # 4x4 stride-2 transposed convolutions, then one to C.
# TensorFlow's default initialisation, which disentanglement_lib kept: Glorot-uniform kernels
# (fan-average of kh*kw*in and kh*kw*out for convolutions), zero biases.
_dlib_init = nn.initializers.xavier_uniform()


def check_dlib_image_shape(image_shape, name: str = "") -> None:
  """A ConfigError unless `image_shape` is (64, 64, C): the only size the dlib networks take."""
  shape = tuple(int(n) for n in image_shape)
  if len(shape) != 3 or shape[:2] != DLIB_IMAGE_SIZE:
    model = f" for model {name!r}" if name else ""
    raise errors.ConfigError(
      "config.model.options.network: 'dlib_conv' (disentanglement_lib's conv encoder and "
      f"decoder) needs 64x64 images, shape (64, 64, C); got image shape {shape}{model}; "
      "use 'conv' or 'dense' for other sizes"
    )


class DlibConvEncoder(nn.Module):
  """disentanglement_lib's conv encoder: 64x64xC image -> (B, out_dim) features.

  Stride-2 "SAME" convolutions with ReLU: 32 channels 4x4, 32 4x4, 64 2x2, 64 2x2
  (64 -> 32 -> 16 -> 8 -> 4), flatten (4*4*64 = 1024), Dense(256) + ReLU, then
  Dense(out_dim) (a VAE's out_dim = 2 * latent: disentanglement_lib's two heads
  for the mean and the log-variance are the two halves of this one layer).
  """

  out_dim: int
  conv_impl: str = "auto"
  dtype: Any = None

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    check_dlib_image_shape(x_BxHxWxC.shape[1:])
    conv = functools.partial(
      layers.Conv, strides=(2, 2), padding="SAME", impl=self.conv_impl, dtype=self.dtype,
      kernel_init=_dlib_init,
    )  # fmt: skip
    h = x_BxHxWxC
    for channels, kernel in DLIB_ENCODER_CONVS:
      h = nn.relu(conv(channels, (kernel, kernel))(h))
    h_BxF = h.reshape(h.shape[0], -1)
    h_BxF = nn.relu(nn.Dense(DLIB_HIDDEN, dtype=self.dtype, kernel_init=_dlib_init)(h_BxF))
    return nn.Dense(self.out_dim, dtype=self.dtype, kernel_init=_dlib_init)(h_BxF)


class DlibConvDecoder(nn.Module):
  """disentanglement_lib's deconv decoder: (B, D) latent -> (B, 64, 64, C) logits.

  Dense(256) + ReLU, Dense(4*4*64) + ReLU reshaped to 4x4x64, 4x4 stride-2 "SAME"
  transposed convolutions with ReLU to 64, 32 and 32 channels (4 -> 8 -> 16 ->
  32), and a last one to C channels (-> 64), the logits (no activation).
  """

  output_shape: tuple[int, int, int]
  conv_impl: str = "auto"
  dtype: Any = None

  @nn.compact
  def __call__(self, z_BxD: jax.Array) -> jax.Array:
    check_dlib_image_shape(self.output_shape)
    conv_t = functools.partial(
      layers.ConvTranspose, kernel_size=(4, 4), strides=(2, 2), padding="SAME",
      impl=self.conv_impl, dtype=self.dtype, kernel_init=_dlib_init,
    )  # fmt: skip
    dense = functools.partial(nn.Dense, dtype=self.dtype, kernel_init=_dlib_init)
    first = DLIB_DECODER_CHANNELS[0]
    h = nn.relu(dense(DLIB_HIDDEN)(z_BxD))
    h = nn.relu(dense(4 * 4 * first)(h)).reshape(z_BxD.shape[0], 4, 4, first)
    for channels in DLIB_DECODER_CHANNELS:
      h = nn.relu(conv_t(channels)(h))
    return conv_t(self.output_shape[2])(h)


def _max_pool_2(x_BxHxWxC: jax.Array, padding: str) -> jax.Array:
  """2x2 max pooling with stride 2 (Keras' MaxPooling2D); "SAME" pads odd sizes at the end.

  Written as a reshape and a max over the 2x2 blocks rather than `nn.max_pool`:
  the windows do not overlap, so this is the same function, and its gradient
  is elementwise instead of XLA's select-and-scatter, which is slow on CPUs.
  (At exact ties the gradient is shared between the tied inputs instead of
  going to the first one; after a ReLU the only ties are zeros, whose
  gradient the ReLU drops anyway.)
  """
  b, h, w, c = x_BxHxWxC.shape
  if padding == "SAME" and (h % 2 or w % 2):
    x_BxHxWxC = jnp.pad(
      x_BxHxWxC, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=-jnp.inf
    )
  ho, wo = x_BxHxWxC.shape[1] // 2, x_BxHxWxC.shape[2] // 2
  x = x_BxHxWxC[:, : 2 * ho, : 2 * wo].reshape(b, ho, 2, wo, 2, c)
  return x.max(axis=(2, 4))


def _upsample_2(x: jax.Array) -> jax.Array:
  # Keras' UpSampling2D: nearest neighbour, each pixel repeated 2x2.
  b, h, w, c = x.shape
  return jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)


class LessonConvEncoder(nn.Module):
  """The lesson's encoder: 28x28x1 -> 4x4x8, flattened to 128 features.

  Conv(16,3)+ReLU+MaxPool2 -> Conv(8,3)+ReLU+MaxPool2 -> Conv(8,3)+ReLU+MaxPool2(same).
  """

  conv_impl: str = "auto"
  dtype: Any = None

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    conv = functools.partial(layers.Conv, impl=self.conv_impl, dtype=self.dtype)
    h = _max_pool_2(nn.relu(conv(16, (3, 3), padding="SAME")(x_BxHxWxC)), "SAME")  # 14x14
    h = _max_pool_2(nn.relu(conv(8, (3, 3), padding="SAME")(h)), "SAME")  # 7x7
    h = _max_pool_2(nn.relu(conv(8, (3, 3), padding="SAME")(h)), "SAME")  # 4x4 (7 padded)
    return h.reshape(h.shape[0], -1)


class LessonConvDecoder(nn.Module):
  """The lesson's decoder: 4x4x8 -> 28x28 logits.

  Conv(8)+Up2 -> Conv(8)+Up2 -> Conv(16, valid)+Up2 -> Conv(1) (+ sigmoid in the loss).
  """

  output_channels: int = 1
  conv_impl: str = "auto"
  dtype: Any = None

  @nn.compact
  def __call__(self, z_BxD: jax.Array) -> jax.Array:
    conv = functools.partial(layers.Conv, impl=self.conv_impl, dtype=self.dtype)
    h = z_BxD.reshape(z_BxD.shape[0], 4, 4, 8)
    h = _upsample_2(nn.relu(conv(8, (3, 3), padding="SAME")(h)))  # 8x8
    h = _upsample_2(nn.relu(conv(8, (3, 3), padding="SAME")(h)))  # 16x16
    h = _upsample_2(nn.relu(conv(16, (3, 3), padding="VALID")(h)))  # 14x14 -> 28x28
    return conv(self.output_channels, (3, 3), padding="SAME")(h)


class BatchNorm(nn.Module):
  """Batch normalisation with the current batch's statistics, in training and evaluation alike.

  Parameters `scale` and `bias` as flax.linen.BatchNorm's (and PyTorch's
  affine BatchNorm2d); no running averages, because aejax's state holds
  parameters only. The output therefore depends on the other images of the
  batch: evaluate in batches of many images. Statistics over (B, H, W) in
  float32, biased variance, eps 1e-5 (PyTorch's).
  """

  epsilon: float = 1e-5
  dtype: Any = None

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    features = x_BxHxWxC.shape[-1]
    scale = self.param("scale", nn.initializers.ones_init(), (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (features,), jnp.float32)
    x = x_BxHxWxC.astype(jnp.float32)
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axis=axes, keepdims=True)
    var = jnp.square(x - mean).mean(axis=axes, keepdims=True)
    shape = (1,) * (x.ndim - 1) + (features,)
    y = (x - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale.reshape(shape)) + bias.reshape(
      shape
    )
    return y.astype(self.dtype or x_BxHxWxC.dtype)


class PythaeConvEncoder(nn.Module):
  """Pythae's MNIST benchmark VAE encoder (Encoder_Conv_VAE_MNIST), layer by layer.

  Four Conv(k4, s2, p1)+BatchNorm+ReLU with 128, 256, 512, 1024 channels
  (28 -> 14 -> 7 -> 3 -> 1), flatten, then two Dense(latent) heads: the mean
  and the log-variance, concatenated (the VAE splits them again).
  """

  latent_dim: int
  conv_impl: str = "auto"
  dtype: Any = None

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    conv = functools.partial(layers.Conv, impl=self.conv_impl, dtype=self.dtype)
    h = x_BxHxWxC
    for c in (128, 256, 512, 1024):
      h = conv(c, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)))(h)
      h = nn.relu(BatchNorm(dtype=self.dtype)(h))
    h = h.reshape(h.shape[0], -1)
    mean = nn.Dense(self.latent_dim, dtype=self.dtype, name="mean")(h)
    logvar = nn.Dense(self.latent_dim, dtype=self.dtype, name="logvar")(h)
    return jnp.concatenate([mean, logvar], axis=-1)


class PythaeConvDecoder(nn.Module):
  """Pythae's MNIST benchmark decoder (Decoder_Conv_AE_MNIST), layer by layer.

  Dense(1024*4*4), reshape to 4x4x1024, ConvTranspose(512, k3, s2, p1)+BN+ReLU
  (-> 7x7), ConvTranspose(256, k3, s2, p1, output_padding 1)+BN+ReLU (-> 14x14),
  ConvTranspose(1, k3, s2, p1, output_padding 1) (-> 28x28) logits; the sigmoid
  is in the loss. PyTorch's padding p with output_padding q is the dilated
  input padded by (k-1-p, k-1-p+q): here (1, 1) and (1, 2). (No activation
  after the Dense layer, as in Pythae.)
  """

  conv_impl: str = "auto"
  dtype: Any = None

  @nn.compact
  def __call__(self, z_BxD: jax.Array) -> jax.Array:
    conv_t = functools.partial(
      layers.ConvTranspose,
      kernel_size=(3, 3),
      strides=(2, 2),
      impl=self.conv_impl,
      dtype=self.dtype,
    )
    h = nn.Dense(1024 * 4 * 4, dtype=self.dtype)(z_BxD).reshape(z_BxD.shape[0], 4, 4, 1024)
    h = nn.relu(BatchNorm(dtype=self.dtype)(conv_t(512, padding=((1, 1), (1, 1)))(h)))  # 7x7
    h = nn.relu(BatchNorm(dtype=self.dtype)(conv_t(256, padding=((1, 2), (1, 2)))(h)))  # 14x14
    return conv_t(1, padding=((1, 2), (1, 2)))(h)  # 28x28
