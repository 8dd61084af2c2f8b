"""beta-VAE: the VAE objective with the KL weighted by beta, on any of the zoo's networks.

Higgins et al. (2017), "beta-VAE: Learning Basic Visual Concepts with a
Constrained Variational Framework" (ICLR), Eq. 4, as disentanglement_lib
implements it (Locatello et al. 2019). q(z|x) = N(mu(x), diag(exp(logvar(x)))),
prior N(0, I), one reparameterised draw of z per image. Per image, (B,):

  loss = recon_i + beta * kl_i,

with `recon` the reconstruction NLL (nats per image, summed over pixels; a
Bernoulli decoder in dlib) and `kl` the analytic KL(q(z|x_i) || N(0, I)) summed
over the latent dimensions; beta is config.objective.beta (aejax's kl_weight,
with its optional warm-up; dlib's study grid is {1, 2, 4, 6, 8, 16}).
`neg_elbo` = recon + kl. This is aejax's VAE (aejax/vae.py) unchanged: the model
only adds the choice of network, so that the beta-VAE of a disentanglement study
runs on disentanglement_lib's convolutional encoder and decoder.

Options (`config.model.options`): `network` ("dense", "conv" or "dlib_conv",
models.build_networks; default "dlib_conv", dlib's 64x64 networks). The k-sample
objectives of aejax's VAE apply as well (they are not dlib's).
"""

from aejax import errors, models
from aejax.vae import VAE
from aejax.zoo import options

DEFAULTS = {"network": "dlib_conv"}  # dense | conv | dlib_conv (models.build_networks).


def build(model_config, image_shape) -> VAE:
  """aejax's VAE on the encoder and decoder named by `options.network`."""
  opts = options.read_options(model_config, DEFAULTS)
  if int(model_config.get("num_classes", 0)):
    raise errors.ConfigError(
      f"config.model.num_classes: model {model_config.name!r} is not conditional; set it to 0"
    )
  encoder, decoder = models.build_networks(
    model_config, image_shape, 2 * model_config.latent_dim, opts["network"], model_config.name
  )
  return VAE(
    encoder=encoder,
    decoder=decoder,
    output_shape=tuple(image_shape),
    learn_log_scale=bool(model_config.get("learn_log_scale", False)),
    init_log_scale=float(model_config.get("log_scale", 0.0)),
    latent_dim=int(model_config.latent_dim),
  )
