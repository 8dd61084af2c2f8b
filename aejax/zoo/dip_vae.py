"""DIP-VAE-I and DIP-VAE-II: a VAE whose aggregate posterior's covariance is pulled to the identity.

Kumar, Sattigeri & Balakrishnan (2018), "Variational Inference of
Disentangled Latent Concepts from Unlabeled Observations" (ICLR; arXiv
1711.00848), Eqs. 6 and 7, as disentanglement_lib implements them (Locatello et
al. 2019). A VAE (q(z|x) = N(mu(x), diag(sigma^2(x))), sigma^2 = exp(logvar),
prior N(0, I)) plus a penalty on a D x D covariance C estimated on the batch:

  DIP-VAE-I:  C = Cov_batch[mu(x)],
  DIP-VAE-II: C = E_batch[diag(sigma^2(x))] + Cov_batch[mu(x)]  (the covariance of q(z)),
  dip_regularizer = lambda_od * sum_{i != j} C_ij^2 + lambda_d * sum_i (C_ii - 1)^2,

where E_batch is the mean over the B images of the batch and Cov_batch[mu] =
E_batch[mu mu^T] - E_batch[mu] E_batch[mu]^T, the biased (divide by B, NumPy's
ddof=0) estimator that dlib's compute_covariance_z_mean uses. Per image, (B,):

  loss = recon_i + kl_weight * kl_i + dip_regularizer,

with `recon` the reconstruction NLL (nats per image, summed over pixels) and
`kl` the analytic KL(q(z|x_i) || N(0, I)) summed over the latent dimensions
(aejax's VAE objective, aejax/vae.py, with one reparameterised draw of z with
the step's key, or z = the posterior mean without a key; kl_weight is
config.objective.beta with its warm-up, 1 in dlib). The regulariser is one
number per batch (it is not a per-image quantity, and not in nats): it is
reported broadcast to every image of the batch, so that its batch mean, and
the batch mean of `loss`, are dlib's numbers. `neg_elbo` = recon + kl. The
covariance is over the whole (global) batch; in evaluation the last, padded
batch counts its padding images (the model does not see the mask).

Options (`config.model.options`): `network` (any of models.build_networks',
e.g. "dlib_conv" for dlib's 64x64 networks, "dense"); `lambda_od` (default
10.0: dlib has no default (gin.REQUIRED); its study's grid is
{1, 2, 5, 10, 20, 50}, unsupervised_study_v1/sweep.py, and its own tests use
10); `lambda_d_factor` (lambda_d = lambda_d_factor * lambda_od; default 10 for
DIP-VAE-I and 1 for DIP-VAE-II, dlib's study values). Models "dip_vae_i" and
"dip_vae_ii" choose the covariance. Not conditional.

Deviations from disentanglement_lib: none in the objective. Only the
one-sample ELBO objective (objective.name "elbo", num_samples 1), as in dlib.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from aejax import errors, losses, models
from aejax.autoencoder import reconstruction_terms
from aejax.vae import VAE
from aejax.zoo import options

DIP_TYPES = ("i", "ii")
DEFAULTS = {"network": "dense", "lambda_od": 10.0}
# dlib's unsupervised_study_v1: lambda_d = 10 * lambda_od for DIP-VAE-I, = lambda_od for II.
LAMBDA_D_FACTOR = {"i": 10.0, "ii": 1.0}


def latent_covariance(mean_BxD: jax.Array, logvar_BxD: jax.Array, dip_type: str) -> jax.Array:
  """C (D, D): Cov_batch[mean] ("i"), plus E_batch[diag(exp(logvar))] ("ii"); see the module.

  The covariance divides by B (E[mu mu^T] - E[mu] E[mu]^T), as dlib does.
  """
  if dip_type not in DIP_TYPES:
    raise ValueError(f"dip_type: expected one of {DIP_TYPES}, got {dip_type!r}")
  if mean_BxD.ndim != 2 or logvar_BxD.shape != mean_BxD.shape:
    raise ValueError(
      f"mean and logvar: expected two (B, D) arrays of the same shape, got {mean_BxD.shape} "
      f"and {logvar_BxD.shape}"
    )
  # Centred before the product: the same number as E[mu mu^T] - E[mu] E[mu]^T without its
  # cancellation when the means are large.
  centred_BxD = mean_BxD - mean_BxD.mean(axis=0, keepdims=True)
  cov_DxD = centred_BxD.T @ centred_BxD / mean_BxD.shape[0]
  if dip_type == "ii":
    cov_DxD = cov_DxD + jnp.diag(jnp.exp(logvar_BxD).mean(axis=0))
  return cov_DxD


def dip_regularizer(cov_DxD: jax.Array, lambda_od: float, lambda_d: float) -> jax.Array:
  """lambda_od * sum_{i != j} C_ij^2 + lambda_d * sum_i (C_ii - 1)^2: a scalar."""
  diagonal_D = jnp.diagonal(cov_DxD)
  off_diagonal_DxD = cov_DxD - jnp.diag(diagonal_D)
  return lambda_od * jnp.sum(jnp.square(off_diagonal_DxD)) + lambda_d * jnp.sum(
    jnp.square(diagonal_D - 1.0)
  )


class DIPVAE(VAE):
  """aejax's VAE plus the DIP penalty on the batch covariance of its codes; see the module."""

  dip_type: str = "i"
  lambda_od: float = 10.0
  lambda_d: float = 100.0

  def losses(self, batch, key, config, kl_weight) -> dict[str, jax.Array]:
    """The VAE's one-sample ELBO terms per image, (B,), plus `dip_regularizer` (broadcast)."""
    if config.objective.name != "elbo" or config.objective.num_samples != 1:
      raise errors.ConfigError(
        f"config.objective: model {config.model.name!r} trains on the one-sample ELBO; got "
        f"name {config.objective.name!r} with num_samples {config.objective.num_samples}"
      )
    # One encoder pass for both the ELBO and the covariance (calling the VAE's losses and
    # encoding again would run and differentiate the encoder twice: XLA does not merge them).
    out = self(batch["input"], key)
    terms = reconstruction_terms(
      out["logits"], batch["target"], config.model.likelihood, self.log_scale(out, config)
    )
    kl_B = losses.gaussian_kl(out["mean"], out["logvar"]).sum(axis=-1)
    cov_DxD = latent_covariance(out["mean"], out["logvar"], self.dip_type)
    regularizer_B = jnp.full(kl_B.shape, dip_regularizer(cov_DxD, self.lambda_od, self.lambda_d))
    terms.update(
      kl=kl_B,
      neg_elbo=terms["recon"] + kl_B,
      dip_regularizer=regularizer_B,
      loss=terms["recon"] + kl_weight * kl_B + regularizer_B,
    )
    return terms


def _build(model_config, image_shape, dip_type: str) -> DIPVAE:
  defaults = {**DEFAULTS, "lambda_d_factor": LAMBDA_D_FACTOR[dip_type]}
  opts = options.read_options(model_config, defaults)
  for name in ("lambda_od", "lambda_d_factor"):
    options.check(opts[name] >= 0.0, model_config, name, f"must be >= 0, got {opts[name]}")
  if int(model_config.get("num_classes", 0)):
    raise errors.ConfigError(
      f"config.model.num_classes: model {model_config.name!r} is not conditional; set it to 0"
    )
  encoder, decoder = models.build_networks(
    model_config, image_shape, 2 * model_config.latent_dim, opts["network"], model_config.name
  )
  return DIPVAE(
    encoder=encoder,
    decoder=decoder,
    output_shape=tuple(image_shape),
    learn_log_scale=bool(model_config.get("learn_log_scale", False)),
    init_log_scale=float(model_config.get("log_scale", 0.0)),
    latent_dim=int(model_config.latent_dim),
    dip_type=dip_type,
    lambda_od=float(opts["lambda_od"]),
    lambda_d=float(opts["lambda_d_factor"] * opts["lambda_od"]),
  )


def build_dip_vae_i(model_config, image_shape) -> nn.Module:
  """DIP-VAE-I: the penalty on Cov_batch[mu(x)] (options: network, lambda_od, lambda_d_factor)."""
  return _build(model_config, image_shape, "i")


def build_dip_vae_ii(model_config, image_shape) -> nn.Module:
  """DIP-VAE-II: the penalty on the covariance of q(z) (options as DIP-VAE-I's)."""
  return _build(model_config, image_shape, "ii")
