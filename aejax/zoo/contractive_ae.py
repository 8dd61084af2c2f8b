"""A contractive autoencoder: the reconstruction NLL plus the encoder Jacobian's Frobenius norm.

Rifai, Vincent, Muller, Glorot & Bengio (2011), "Contractive Auto-Encoders:
Explicit Invariance During Feature Extraction" (ICML). The penalty
||J(x)||_F^2 = sum_{j, p} (dz_j / dx_p)^2 makes the code insensitive to
small moves of the input, except along the directions the data needs.

Loss per image, (B,), nats for `recon`:
  loss = recon + kl_weight * contractive,
recon the reconstruction NLL summed over pixels, contractive = ||dz/dx||_F^2
of that image's code w.r.t. its encoder input (batch["input"], summed over all
latent units and input pixels), kl_weight = config.objective.beta (times its
warm-up). Terms: `recon`, `contractive`, the per-pixel metrics, `loss`.

The Jacobian is exact: one encoder pass, then one vector-Jacobian product per
latent unit (vmapped over the D units), each with the cotangent e_j for every
image at once. Because the encoder maps each image on its own (no batch
statistics), d(sum_b z_bj)/dx_b is row j of image b's Jacobian, so D backward
passes give all B Jacobians. Cost: about D times the encoder's backward pass
per step (and another D for the penalty's own gradient), and D x B x pixels
floats for the Jacobian; at D = 16 on MNIST's dense network a few times the
plain autoencoder's step.

Deviations: Rifai et al.'s encoder was one sigmoid layer, whose Jacobian has a
closed form; here it is any of aejax's networks (option `network`: "dense" or
"conv"), differentiated by JAX, and the likelihood is the config's.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from aejax import autoencoder, errors, models
from aejax.zoo import options

DEFAULTS = {"network": "dense"}


class ContractiveAE(autoencoder.AutoEncoder):
  """z = encoder(x), logits = decoder(z); trained with ||dz/dx||_F^2."""

  def jacobian(self, x_BxHxWxC: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(z (B, D), dz/dx (D, B, H, W, C)): entry [j, b] is d z_bj / d x_b."""
    z_BxD, vjp_fn = jax.vjp(lambda x: self.encode(x)["z"], x_BxHxWxC)

    def row(j):  # Row j of every image's Jacobian: the cotangent e_j for all images at once.
      cotangent_BxD = jnp.broadcast_to(
        jax.nn.one_hot(j, z_BxD.shape[1], dtype=z_BxD.dtype), z_BxD.shape
      )
      return vjp_fn(cotangent_BxD)[0]

    return z_BxD, jax.vmap(row)(jnp.arange(z_BxD.shape[1]))

  def losses(self, batch, key, config, kl_weight) -> dict[str, jax.Array]:
    """Per image, (B,): recon + kl_weight * ||dz/dx||_F^2."""
    del key  # Deterministic.
    z_BxD, jacobian = self.jacobian(batch["input"])
    logits = self.decode(z_BxD)
    if self.learn_log_scale:
      log_scale = self.variables["params"]["likelihood"]["log_scale"]
    else:
      log_scale = jnp.asarray(config.model.log_scale, jnp.float32)
    terms = autoencoder.reconstruction_terms(
      logits, batch["target"], config.model.likelihood, log_scale
    )
    jacobian_DxBxP = jacobian.reshape(jacobian.shape[0], jacobian.shape[1], -1)
    terms["contractive"] = jnp.sum(jnp.square(jacobian_DxBxP), axis=(0, 2))
    terms["loss"] = terms["recon"] + kl_weight * terms["contractive"]
    return terms


def build(model_config, image_shape) -> nn.Module:
  opts = options.read_options(model_config, DEFAULTS)
  if model_config.get("num_classes", 0):
    raise errors.ConfigError(
      f"config.model.num_classes: model {model_config.name!r} is not conditional; set it to 0"
    )
  encoder, decoder = models.build_networks(
    model_config, image_shape, model_config.latent_dim, opts["network"], model_config.name
  )
  return ContractiveAE(
    encoder=encoder,
    decoder=decoder,
    output_shape=tuple(image_shape),
    learn_log_scale=bool(model_config.get("learn_log_scale", False)),
    init_log_scale=float(model_config.get("log_scale", 0.0)),
  )
