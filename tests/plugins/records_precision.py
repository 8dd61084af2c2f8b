"""A dense VAE that records, each time its encoder is traced, the matmul precision JAX traces it
at (jax_default_matmul_precision): the tests check that a run's config.matmul_precision reaches
every program it compiles."""

import jax

from aejax import models
from aejax.vae import VAE

TRACED_AT = []


class RecordsPrecision(VAE):
  def encode(self, x_BxHxWxC, label_B=None):
    TRACED_AT.append(jax.config.jax_default_matmul_precision)
    return super().encode(x_BxHxWxC, label_B)


def build(model_config, image_shape):
  encoder, decoder = models.build_networks(
    model_config, image_shape, 2 * model_config.latent_dim, "dense", model_config.name
  )
  return RecordsPrecision(
    encoder=encoder, decoder=decoder, output_shape=tuple(image_shape),
    latent_dim=model_config.latent_dim,
  )  # fmt: skip
