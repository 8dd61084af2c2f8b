"""The loss terms per image of any model, through its family's `losses` (the model contract).

`per_image_losses` returns a dict of (B,) arrays in nats per image (per pixel
for *_per_pixel, dB for psnr); the entry `loss` is what training minimises,
and every entry becomes a metric (`train/NAME`, `eval/NAME`). Training,
evaluation and the API all compute them here, so they agree.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections


def per_image_losses(
  model: nn.Module,
  params,
  batch: dict[str, jax.Array],
  key: jax.Array | None,
  config: ml_collections.ConfigDict,
  kl_weight: jax.Array,
  member=None,
) -> dict[str, jax.Array]:
  """The family's loss terms per image (aejax/autoencoder.py, aejax/vae.py, or a plug-in).

  `member`: a padded population member's padding.Member, for the models whose losses take one
  (aejax/padding.py); a plain run's losses are called without it.
  """
  if member is None:
    return model.apply({"params": params}, batch, key, config, kl_weight, method="losses")
  return model.apply(
    {"params": params}, batch, key, config, kl_weight, member=member, method="losses"
  )


def likelihood_log_scale(params, config) -> jax.Array:
  """The Gaussian decoder's log standard deviation: learned (a parameter) or fixed (config)."""
  if config.model.learn_log_scale:
    return params["likelihood"]["log_scale"]
  return jnp.asarray(config.model.log_scale, jnp.float32)
