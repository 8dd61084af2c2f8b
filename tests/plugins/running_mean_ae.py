"""An autoencoder with a state group: `params["running"]["mean"]`, a running mean of the
batches' mean pixel that `update_state` replaces each step (an exponential moving average, as a
VQ-VAE's EMA codebook is), never a gradient. The reconstruction uses it, so a gradient reaches it
and must be dropped.
"""

import flax.linen as nn
import jax.numpy as jnp

from aejax import autoencoder, networks

DECAY = 0.9


class Running(nn.Module):
  @nn.compact
  def __call__(self):
    return self.param("mean", nn.initializers.zeros, ())


class RunningMeanAE(nn.Module):
  latent_dim: int
  output_shape: tuple[int, int, int]
  num_classes: int = 0

  is_variational = False
  state_param_groups = ("running",)  # Replaced by update_state, not trained.

  def setup(self):
    self.encoder = networks.DenseEncoder((16,), self.latent_dim)
    self.decoder = networks.DenseDecoder((16,), self.output_shape)
    self.running = Running()

  def encode(self, x_BxHxWxC, label_B=None):
    return {"z": self.encoder(x_BxHxWxC)}

  def decode(self, z_BxD, label_B=None):
    return self.decoder(z_BxD) + self.running()

  def __call__(self, x_BxHxWxC, key=None, label_B=None):
    out = self.encode(x_BxHxWxC)
    out["logits"] = self.decode(out["z"])
    return out

  def losses(self, batch, key, config, kl_weight):
    logits = self(batch["input"])["logits"]
    terms = autoencoder.reconstruction_terms(logits, batch["target"], config.model.likelihood, 0.0)
    terms["loss"] = terms["recon"]
    return terms

  def update_state(self, batch, key, config):
    del key, config
    new = DECAY * self.running() + (1.0 - DECAY) * jnp.mean(batch["input"])
    return {"running": {"mean": new}}


def build(model_config, image_shape):
  return RunningMeanAE(model_config.latent_dim, tuple(image_shape))
