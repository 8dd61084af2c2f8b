"""The beta-VAE of the zoo (aejax/zoo/beta_vae.py): aejax's VAE objective on a chosen network.

The loss against a NumPy float64 KL of the encoder's own mean and log-variance: recon +
beta * KL, so the loss moves by exactly (beta' - beta) * KL between two betas at the same
parameters and noise; the network option builds dlib's conv networks for 64x64 images.
"""

import jax
import numpy as np
import pytest

from aejax import configs, errors, networks
from aejax.zoo import beta_vae

SHAPE = (4, 4, 1)


def _config(**opts):
  c = configs.default_config()
  c.model.name = "beta_vae"
  c.model.latent_dim = 3
  c.model.hidden_widths = (6,)
  c.model.options.network = "dense"
  c.model.options.update(opts)
  return c


def test_loss_is_recon_plus_beta_times_the_analytic_kl():
  c = _config()
  model = beta_vae.build(c.model, SHAPE)
  x = jax.random.uniform(jax.random.key(0), (8, *SHAPE))
  params = model.init(jax.random.key(1), x, None, None)["params"]
  batch = {"input": x, "target": x}

  def losses(kl_weight):
    return model.apply(
      {"params": params}, batch, jax.random.key(2), c, kl_weight, method="losses"
    )  # fmt: skip

  one, four = losses(1.0), losses(4.0)
  out = model.apply({"params": params}, x, None, method="encode")
  mean, logvar = np.asarray(out["mean"], np.float64), np.asarray(out["logvar"], np.float64)
  kl = 0.5 * np.sum(mean**2 + np.exp(logvar) - 1.0 - logvar, axis=1)
  np.testing.assert_allclose(one["kl"], kl, rtol=1e-5)
  np.testing.assert_allclose(four["loss"], np.asarray(four["recon"]) + 4.0 * kl, rtol=1e-5)
  np.testing.assert_allclose(four["loss"] - one["loss"], 3.0 * kl, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(four["neg_elbo"], one["neg_elbo"], rtol=1e-6)


def test_default_network_is_disentanglement_libs_and_conditioning_is_refused():
  c = configs.default_config()
  c.model.name, c.model.latent_dim = "beta_vae", 10
  model = beta_vae.build(c.model, (64, 64, 1))
  assert isinstance(model.encoder, networks.DlibConvEncoder)
  assert isinstance(model.decoder, networks.DlibConvDecoder)
  c.model.num_classes = 10
  with pytest.raises(errors.ConfigError, match="config.model.num_classes: model 'beta_vae'"):
    beta_vae.build(c.model, (64, 64, 1))
  with pytest.raises(errors.ConfigError, match="config.model.options.gamma: unknown option"):
    beta_vae.build(_config(gamma=1.0).model, SHAPE)
