"""A Gaussian VAE that draws and weighs its samples through the optional hooks, the same way
aejax's default path does for an N(0, I) prior: the tests compare the two paths number for number.
"""

import jax
import jax.numpy as jnp

from aejax import losses, models
from aejax.vae import VAE


class HookedVAE(VAE):
  def sample(self, key, num_samples, label_B=None):
    z_NxD = jax.random.normal(key, (num_samples, self.latent_dim))
    return self.decode(z_NxD, label_B)

  def log_weight_terms(self, codes, target, label_B, key):
    mean_BxD, logvar_BxD = codes["mean"], codes["logvar"]
    eps_BxD = jax.random.normal(key, mean_BxD.shape)
    z_BxD = mean_BxD + jnp.exp(0.5 * logvar_BxD) * eps_BxD
    nll_B = losses.reconstruction_nll("bernoulli", self.decode(z_BxD, label_B), target, 0.0)
    # log N(z; 0, I) - log N(z; mean, exp(logvar)), the 0.5 log(2 pi) of both cancelling.
    log_ratio_B = jnp.sum(0.5 * eps_BxD**2 + 0.5 * logvar_BxD - 0.5 * z_BxD**2, axis=-1)
    return {"log_px_given_z": -nll_B, "log_pz_minus_log_qz": log_ratio_B}


def build(model_config, image_shape):
  encoder, decoder = models.build_networks(
    model_config, image_shape, 2 * model_config.latent_dim, "dense", model_config.name
  )
  return HookedVAE(
    encoder=encoder, decoder=decoder, output_shape=tuple(image_shape),
    latent_dim=model_config.latent_dim,
  )  # fmt: skip
