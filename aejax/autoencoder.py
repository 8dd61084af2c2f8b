"""The autoencoder family: z = encoder(x), logits = decoder(z), trained on the reconstruction NLL.

A model family is one module class that keeps aejax's model contract (see
aejax/models.py): `__call__(x, key, label)` for initialisation and pictures,
`encode` and `decode` for the API, and `losses(batch, key, config,
kl_weight)`, the loss terms per image. This file is also the base of the VAE
family (aejax/vae.py) and the example to copy for a new one.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from aejax import errors, losses


def resize_to(x_BxHxWxC: jax.Array, output_shape: tuple[int, int, int]) -> jax.Array:
  """Nearest-neighbour upsampling of a low-resolution input to the output size.

  Super-resolution feeds the model a smaller image than it must produce; the
  model resizes it first, so every encoder sees the size it was built for.
  """
  height, width, _ = output_shape
  if x_BxHxWxC.shape[1:3] == (height, width):
    return x_BxHxWxC
  new_shape = (x_BxHxWxC.shape[0], height, width, x_BxHxWxC.shape[3])
  return jax.image.resize(x_BxHxWxC, new_shape, method="nearest")


class LikelihoodScale(nn.Module):
  """Holds the Gaussian decoder's log standard deviation when it is learned."""

  init_log_scale: float

  @nn.compact
  def __call__(self) -> jax.Array:
    return self.param("log_scale", nn.initializers.constant(self.init_log_scale), ())


def with_label_channels(x_BxHxWxC: jax.Array, label_B: jax.Array, num_classes: int) -> jax.Array:
  """Appends the one-hot label as constant image channels, so any encoder can condition on it."""
  onehot_BxK = jax.nn.one_hot(label_B, num_classes, dtype=x_BxHxWxC.dtype)
  planes = jnp.broadcast_to(onehot_BxK[:, None, None, :], (*x_BxHxWxC.shape[:3], num_classes))
  return jnp.concatenate([x_BxHxWxC, planes], axis=-1)


def with_label(z_BxD: jax.Array, label_B: jax.Array, num_classes: int) -> jax.Array:
  return jnp.concatenate([z_BxD, jax.nn.one_hot(label_B, num_classes, dtype=z_BxD.dtype)], -1)


def require_label(label_B):
  if label_B is None:
    raise errors.ConfigError(
      "a conditional model (config.model.num_classes > 0) needs class labels; "
      "the data set must have labels"
    )
  return label_B


def reconstruction_terms(logits, target, likelihood: str, log_scale) -> dict[str, jax.Array]:
  """`recon` (the NLL of target under the decoder, nats per image) and the per-pixel metrics."""
  terms = {"recon": losses.reconstruction_nll(likelihood, logits, target, log_scale)}
  terms.update(losses.per_pixel_metrics(logits, target))
  return terms


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
  # Members of one population may differ in latent size (aejax/padding.py). Declared by each
  # class itself, never inherited: a subclass with other losses must check its own.
  population_padding = True
  # Parameter groups besides the model's own (a critic, a discriminator): top-level names in
  # the parameters, each trained on the loss term `loss_<name>` with its own optimizer state.
  extra_param_groups: tuple[str, ...] = ()

  def _encoder_input(self, x_BxHxWxC, label_B):
    x = resize_to(x_BxHxWxC, self.output_shape)
    if self.num_classes:
      x = with_label_channels(x, require_label(label_B), self.num_classes)
    return x

  def _decode(self, z_BxD, label_B):
    if self.num_classes:
      z_BxD = with_label(z_BxD, require_label(label_B), self.num_classes)
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
      out["log_scale"] = LikelihoodScale(self.init_log_scale, name="likelihood")()
    return out

  def log_scale(self, out: dict, config) -> jax.Array:
    """The Gaussian decoder's log standard deviation: learned (in `out`) or fixed (config)."""
    return out.get("log_scale", jnp.asarray(config.model.log_scale, jnp.float32))

  def losses(self, batch, key, config, kl_weight) -> dict[str, jax.Array]:
    """Loss terms per image, (B,) each; `loss` is the reconstruction NLL (nats per image)."""
    del key, kl_weight  # Deterministic, and no KL term.
    label = batch.get("label") if self.num_classes else None
    out = self(batch["input"], None, label)
    terms = reconstruction_terms(
      out["logits"], batch["target"], config.model.likelihood, self.log_scale(out, config)
    )
    terms["loss"] = terms["recon"]
    return terms
