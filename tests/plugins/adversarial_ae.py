"""An adversarial autoencoder defined outside aejax: a model with a second parameter group.

Trained by the tests through the CLI as `--config.model.name=adversarial_ae:build`
(with this folder on PYTHONPATH). The critic tells prior samples from codes;
the autoencoder reconstructs and fools it (Makhzani et al. 2015, one step of
both players per batch).
"""

import flax.linen as nn
import jax

from aejax import autoencoder, networks


class Critic(nn.Module):
  """z -> the logit that z came from the prior N(0, I)."""

  @nn.compact
  def __call__(self, z_BxD):
    return nn.Dense(1)(nn.relu(nn.Dense(16)(z_BxD)))[:, 0]


class AdversarialAE(nn.Module):
  latent_dim: int
  output_shape: tuple[int, int, int]
  num_classes: int = 0  # Not conditional.

  is_variational = False
  extra_param_groups = ("critic",)  # params["critic"] descends loss_critic.

  def setup(self):
    self.encoder = networks.DenseEncoder((32,), self.latent_dim)
    self.decoder = networks.DenseDecoder((32,), self.output_shape)
    self.critic = Critic()

  def encode(self, x_BxHxWxC, label_B=None):
    return {"z": self.encoder(x_BxHxWxC)}

  def decode(self, z_BxD, label_B=None):
    return self.decoder(z_BxD)

  def __call__(self, x_BxHxWxC, key=None, label_B=None):
    out = self.encode(x_BxHxWxC)
    out["logits"] = self.decode(out["z"])
    out["critic"] = self.critic(out["z"])  # Creates the critic's parameters at init.
    return out

  def losses(self, batch, key, config, kl_weight):
    z_BxD = self.encoder(batch["input"])
    terms = autoencoder.reconstruction_terms(
      self.decoder(z_BxD), batch["target"], config.model.likelihood, 0.0
    )
    key = jax.random.key(0) if key is None else key
    prior_BxD = jax.random.normal(key, z_BxD.shape)
    # The autoencoder wants its codes called "prior"; the critic wants them told apart.
    fool_B = jax.nn.softplus(-self.critic(z_BxD))
    real_B = jax.nn.softplus(-self.critic(prior_BxD))
    fake_B = jax.nn.softplus(self.critic(jax.lax.stop_gradient(z_BxD)))
    terms.update(adversarial=fool_B, loss=terms["recon"] + fool_B, loss_critic=real_B + fake_B)
    return terms


def build(model_config, image_shape):
  return AdversarialAE(model_config.latent_dim, tuple(image_shape))
