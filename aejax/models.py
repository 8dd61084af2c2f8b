"""Encoders, decoders, the autoencoder and the VAE as Flax Linen modules.

All modules are pure functions of their parameters:
`model.apply({"params": params}, x_BxHxWxC, key)`. Decoders return logits;
the reconstruction is `sigmoid(logits)` (see aejax/losses.py). The VAE's
encoder predicts mean and log-variance; that parameterisation is the only one
in aejax.

Two model-config fields change how a model computes, never its parameters:
`conv_impl` (auto/xla/im2col: how convolutions are formed, see aejax/layers.py)
and `dtype` ("float32", or "bfloat16" for mixed precision: bf16 compute with
float32 parameters, optimizer state, outputs and losses).
"""

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from aejax import errors, layers, losses

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


# ---------------------------------------------------------------------------
# Autoencoders.


def _resize_to(x_BxHxWxC: jax.Array, output_shape: tuple[int, int, int]) -> jax.Array:
  """Nearest-neighbour upsampling of a low-resolution input to the output size.

  Super-resolution feeds the model a smaller image than it must produce; the
  model resizes it first, so every encoder sees the size it was built for.
  """
  height, width, _ = output_shape
  if x_BxHxWxC.shape[1:3] == (height, width):
    return x_BxHxWxC
  new_shape = (x_BxHxWxC.shape[0], height, width, x_BxHxWxC.shape[3])
  return jax.image.resize(x_BxHxWxC, new_shape, method="nearest")


class _LikelihoodScale(nn.Module):
  """Holds the Gaussian decoder's log standard deviation when it is learned."""

  init_log_scale: float

  @nn.compact
  def __call__(self) -> jax.Array:
    return self.param("log_scale", nn.initializers.constant(self.init_log_scale), ())


def _with_label_channels(x_BxHxWxC: jax.Array, label_B: jax.Array, num_classes: int) -> jax.Array:
  """Appends the one-hot label as constant image channels, so any encoder can condition on it."""
  onehot_BxK = jax.nn.one_hot(label_B, num_classes, dtype=x_BxHxWxC.dtype)
  planes = jnp.broadcast_to(onehot_BxK[:, None, None, :], (*x_BxHxWxC.shape[:3], num_classes))
  return jnp.concatenate([x_BxHxWxC, planes], axis=-1)


def _with_label(z_BxD: jax.Array, label_B: jax.Array, num_classes: int) -> jax.Array:
  return jnp.concatenate([z_BxD, jax.nn.one_hot(label_B, num_classes, dtype=z_BxD.dtype)], -1)


class AutoEncoder(nn.Module):
  """Deterministic autoencoder: z = encoder(x), logits = decoder(z).

  With num_classes > 0 it is conditional: encoder and decoder also see the
  one-hot class label (as extra input channels and appended to z).
  """

  encoder: nn.Module
  decoder: nn.Module
  output_shape: tuple[int, int, int]
  learn_log_scale: bool = False
  init_log_scale: float = 0.0
  num_classes: int = 0

  is_variational = False

  def _encoder_input(self, x_BxHxWxC, label_B):
    x = _resize_to(x_BxHxWxC, self.output_shape)
    if self.num_classes:
      x = _with_label_channels(x, _require_label(label_B), self.num_classes)
    return x

  def _decode(self, z_BxD, label_B):
    if self.num_classes:
      z_BxD = _with_label(z_BxD, _require_label(label_B), self.num_classes)
    # Mixed precision computes in bf16; what leaves the model (and enters the losses) is float32.
    return self.decoder(z_BxD).astype(jnp.float32)

  def encode(self, x_BxHxWxC: jax.Array, label_B: jax.Array | None = None) -> dict[str, jax.Array]:
    return {"z": self.encoder(self._encoder_input(x_BxHxWxC, label_B)).astype(jnp.float32)}

  def decode(self, z_BxD: jax.Array, label_B: jax.Array | None = None) -> jax.Array:
    return self._decode(z_BxD, label_B)

  @nn.compact
  def __call__(
    self, x_BxHxWxC: jax.Array, key: jax.Array | None = None, label_B: jax.Array | None = None
  ) -> dict[str, jax.Array]:
    del key  # A plain autoencoder is deterministic.
    out = self.encode(x_BxHxWxC, label_B)
    out["logits"] = self.decode(out["z"], label_B)
    if self.learn_log_scale:
      out["log_scale"] = _LikelihoodScale(self.init_log_scale, name="likelihood")()
    return out


class VAE(AutoEncoder):
  """Variational autoencoder with q(z|x) = N(mean, diag(exp(logvar))) and prior N(0, I).

  The encoder outputs 2 * latent_dim numbers: the first half is the mean, the
  second the log-variance. With num_classes > 0 it is a conditional VAE
  (q(z|x, y), p(x|z, y)).
  """

  latent_dim: int = 2

  is_variational = True

  def encode(self, x_BxHxWxC: jax.Array, label_B: jax.Array | None = None) -> dict[str, jax.Array]:
    h = self.encoder(self._encoder_input(x_BxHxWxC, label_B)).astype(jnp.float32)
    mean, logvar = jnp.split(h, 2, axis=-1)
    return {"mean": mean, "logvar": logvar}

  @nn.compact
  def __call__(
    self, x_BxHxWxC: jax.Array, key: jax.Array | None = None, label_B: jax.Array | None = None
  ) -> dict[str, jax.Array]:
    """With a key, z is a reparameterised sample; without one, z is the posterior mean."""
    out = self.encode(x_BxHxWxC, label_B)
    if key is None:
      out["z"] = out["mean"]
    else:
      out["z"] = losses.sample_gaussian(key, out["mean"], out["logvar"])
    out["logits"] = self.decode(out["z"], label_B)
    if self.learn_log_scale:
      out["log_scale"] = _LikelihoodScale(self.init_log_scale, name="likelihood")()
    return out


def _require_label(label_B):
  if label_B is None:
    raise errors.ConfigError(
      "a conditional model (config.model.num_classes > 0) needs class labels; "
      "the data set must have labels"
    )
  return label_B


# ---------------------------------------------------------------------------
# The model lookup: name -> builder(model_config, image_shape).


def _check_divisible(image_shape, num_layers: int, name: str) -> None:
  factor = 2**num_layers
  if image_shape[0] % factor or image_shape[1] % factor:
    raise errors.ConfigError(
      f"config.model.conv_channels: {num_layers} stride-2 layers need image height and width "
      f"divisible by {factor}, got image shape {tuple(image_shape)} for model {name!r}; "
      "use fewer conv_channels"
    )


def _wrap(cfg, encoder, decoder, image_shape, variational: bool) -> nn.Module:
  common = dict(
    encoder=encoder,
    decoder=decoder,
    output_shape=tuple(image_shape),
    learn_log_scale=bool(cfg.get("learn_log_scale", False)),
    init_log_scale=float(cfg.get("log_scale", 0.0)),
    num_classes=int(cfg.get("num_classes", 0)),
  )
  if variational:
    return VAE(latent_dim=cfg.latent_dim, **common)
  return AutoEncoder(**common)


def _compute(cfg) -> dict[str, Any]:
  """How a model computes (never what its parameters are): dtype and, for conv models, conv_impl.

  Read with defaults so that configs without these fields keep working.
  """
  impl = cfg.get("conv_impl", "auto")
  layers.resolve_conv_impl(impl)  # Fails now, naming the field, rather than inside a trace.
  return {"dtype": get_dtype(cfg.get("dtype", "float32")), "conv_impl": impl}


def _dense(cfg, image_shape, variational):
  out = 2 * cfg.latent_dim if variational else cfg.latent_dim
  widths = tuple(cfg.hidden_widths)
  dtype = _compute(cfg)["dtype"]
  enc = DenseEncoder(widths, out, cfg.activation, dtype=dtype)
  dec = DenseDecoder(tuple(reversed(widths)), tuple(image_shape), cfg.activation, dtype=dtype)
  return _wrap(cfg, enc, dec, image_shape, variational)


def _conv(cfg, image_shape, variational, name):
  channels = tuple(cfg.conv_channels)
  _check_divisible(image_shape, len(channels), name)
  out = 2 * cfg.latent_dim if variational else cfg.latent_dim
  enc = ConvEncoder(channels, out, cfg.activation, **_compute(cfg))
  dec = ConvDecoder(channels, tuple(image_shape), cfg.activation, **_compute(cfg))
  return _wrap(cfg, enc, dec, image_shape, variational)


def _lesson_conv_ae(cfg, image_shape):
  if tuple(image_shape[:2]) != (28, 28):
    raise errors.ConfigError(
      f"model 'lesson_conv_ae' is the lesson's fixed 28x28 architecture; image shape is "
      f"{tuple(image_shape)}. Use 'conv_ae' for other sizes"
    )
  if cfg.latent_dim != 128:
    raise errors.ConfigError(
      "config.model.latent_dim must be 128 for 'lesson_conv_ae' (its latent is 4x4x8), "
      f"got {cfg.latent_dim}"
    )
  compute = _compute(cfg)
  enc, dec = LessonConvEncoder(**compute), LessonConvDecoder(image_shape[2], **compute)
  return _wrap(cfg, enc, dec, image_shape, False)


def _pythae_conv_vae(cfg, image_shape):
  if tuple(image_shape) != (28, 28, 1):
    raise errors.ConfigError(
      f"model 'pythae_conv_vae' is Pythae's fixed 28x28x1 MNIST architecture; image shape is "
      f"{tuple(image_shape)}. Use 'conv_vae' for other sizes"
    )
  compute = _compute(cfg)
  enc = PythaeConvEncoder(cfg.latent_dim, **compute)
  return _wrap(cfg, enc, PythaeConvDecoder(**compute), image_shape, True)


MODELS: dict[str, Callable[[ml_collections.ConfigDict, tuple[int, int, int]], nn.Module]] = {
  "dense_ae": lambda cfg, shape: _dense(cfg, shape, variational=False),
  "conv_ae": lambda cfg, shape: _conv(cfg, shape, False, "conv_ae"),
  "lesson_conv_ae": _lesson_conv_ae,
  "dense_vae": lambda cfg, shape: _dense(cfg, shape, variational=True),
  "conv_vae": lambda cfg, shape: _conv(cfg, shape, True, "conv_vae"),
  # Pythae's MNIST benchmark conv VAE (17.2M parameters at latent_dim 16), for benchmarks;
  # its batch norm always uses batch statistics (see BatchNorm).
  "pythae_conv_vae": _pythae_conv_vae,
}


def build_model(model_config: ml_collections.ConfigDict, image_shape) -> nn.Module:
  """Builds the model named by `model_config.name` for images of `image_shape` (H, W, C)."""
  name = model_config.name
  if name not in MODELS:
    raise errors.ConfigError(
      f"config.model.name: unknown model {name!r}; valid: {', '.join(MODELS)}"
    )
  if model_config.latent_dim < 1:
    raise errors.ConfigError(f"config.model.latent_dim must be >= 1, got {model_config.latent_dim}")
  return MODELS[name](model_config, tuple(image_shape))
