"""InfoVAE with the MMD divergence (the MMD-VAE family).

Zhao, Song & Ermon (2019), "InfoVAE: Balancing Learning and Inference in
Variational Autoencoders" (AAAI). A VAE (Gaussian q(z|x), prior N(0, I),
aejax/vae.py's parameterisation) trained on

  loss = recon + kl_weight * [(1 - alpha) * KL(q(z|x) || p(z))
                              + (alpha + lambda - 1) * MMD^2(q(z), p(z))],

per image, (B,), nats: `recon` is -log p(x|z) of one reparameterised draw z ~
q(z|x) summed over pixels, `kl` the analytic KL summed over latent units, and
`mmd` the unbiased MMD^2 (aejax/zoo/mmd.py) between those B draws (a sample
of the aggregate posterior q(z)) and B draws from N(0, I), a statistic of the
whole (global) batch returned broadcast to (B,) so that its batch mean is the
statistic. With alpha = 0 and lambda = 1 it is the ELBO; alpha = 1 drops the
KL (the pure MMD-VAE). `neg_elbo` = recon + kl is reported for comparison.

kl_weight (config.objective.beta times its warm-up) multiplies the whole
regulariser, so beta = 1 is the paper's objective, a warm-up ramps the KL and
the MMD together, and a beta sweep scales both; alpha and lambda are options.
Draws use the step's key (split for the posterior and the prior); without a
key z is the posterior mean and the prior draws use jax.random.key(0).

Options (`config.model.options`): `network` ("dense" or "conv"), `alpha`
(default 0, at most 1), `lambda_` (default 1000; alpha + lambda - 1 >= 0, so
the MMD is never rewarded), `kernel` (default "rbf", a Gaussian kernel) and
`kernel_scales` (default (1.0,): exp(-||x - y||^2 / (2 latent_dim))).
Defaults: alpha = 0 and lambda = 1000, the setting commonly reported for the
paper's MNIST MMD-VAE; its Gaussian kernel's bandwidth is ours. The size of an
MMD (and so the meaning of lambda) depends on the kernel and its bandwidth.

The prior is N(0, I), so aejax's sampling, IWAE bounds and NLL apply as for
any VAE, and they are valid bounds: the decoder and q(z|x) define the same
latent variable model whatever the training objective.

Deviations: aejax's networks (option `network`) instead of the paper's; one
posterior draw per image (the paper's q(z) sample is the batch's draws, as
here). Only config.objective.name "elbo" with num_samples 1 is accepted: the
k-sample and IWAE objectives are not defined for this regulariser.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from aejax import errors, losses, models
from aejax.autoencoder import reconstruction_terms
from aejax.vae import VAE
from aejax.zoo import mmd, options

DEFAULTS = {
  "network": "dense",
  "alpha": 0.0,
  "lambda_": 1000.0,
  "kernel": "rbf",
  "kernel_scales": (1.0,),
}


class InfoVAE(VAE):
  """A Gaussian-posterior VAE trained on the InfoVAE objective with the MMD divergence."""

  alpha: float = 0.0
  lambda_: float = 1000.0
  kernel: str = "rbf"
  kernel_scales: tuple[float, ...] = (1.0,)

  def losses(self, batch, key, config, kl_weight) -> dict[str, jax.Array]:
    """Per image, (B,): recon + kl_weight * ((1 - alpha) kl + (alpha + lambda - 1) mmd)."""
    if config.objective.name != "elbo" or config.objective.num_samples != 1:
      raise errors.ConfigError(
        f"config.objective.name: model {config.model.name!r} trains the InfoVAE objective; "
        f"use objective.name='elbo' with num_samples=1, got {config.objective.name!r} with "
        f"num_samples={config.objective.num_samples}"
      )
    if key is None:
      key_post, key_prior = None, jax.random.key(0)
    else:
      key_post, key_prior = jax.random.split(key)
    out = self(batch["input"], key_post)
    terms = reconstruction_terms(
      out["logits"], batch["target"], config.model.likelihood, self.log_scale(out, config)
    )
    z_BxD = out["z"]
    prior_BxD = jax.random.normal(key_prior, z_BxD.shape, z_BxD.dtype)
    kernel = mmd.multiscale_kernel(self.kernel, self.latent_dim, self.kernel_scales)
    mmd_B = jnp.broadcast_to(mmd.mmd_unbiased(z_BxD, prior_BxD, kernel), terms["recon"].shape)
    kl_B = losses.gaussian_kl(out["mean"], out["logvar"]).sum(axis=-1)
    regulariser_B = (1.0 - self.alpha) * kl_B + (self.alpha + self.lambda_ - 1.0) * mmd_B
    terms.update(
      kl=kl_B,
      mmd=mmd_B,
      neg_elbo=terms["recon"] + kl_B,
      loss=terms["recon"] + kl_weight * regulariser_B,
    )
    return terms


def build(model_config, image_shape) -> nn.Module:
  opts = options.read_options(model_config, DEFAULTS)
  mmd.check_kernel_options(model_config, opts)
  alpha, lam = opts["alpha"], opts["lambda_"]
  options.check(
    alpha <= 1.0, model_config, "alpha", f"must be <= 1 (a KL weight 1 - alpha >= 0), got {alpha}"
  )
  options.check(
    alpha + lam - 1.0 >= 0.0,
    model_config,
    "lambda_",
    f"alpha + lambda_ - 1 (the MMD's weight) must be >= 0, got alpha={alpha}, lambda_={lam}",
  )
  if model_config.get("num_classes", 0):
    raise errors.ConfigError(
      f"config.model.num_classes: model {model_config.name!r} is not conditional; set it to 0"
    )
  encoder, decoder = models.build_networks(
    model_config, image_shape, 2 * model_config.latent_dim, opts["network"], model_config.name
  )
  return InfoVAE(
    encoder=encoder,
    decoder=decoder,
    output_shape=tuple(image_shape),
    learn_log_scale=bool(model_config.get("learn_log_scale", False)),
    init_log_scale=float(model_config.get("log_scale", 0.0)),
    latent_dim=int(model_config.latent_dim),
    alpha=float(alpha),
    lambda_=float(lam),
    kernel=opts["kernel"],
    kernel_scales=tuple(float(s) for s in opts["kernel_scales"]),
  )
