"""The beta-TCVAE: the ELBO with the total correlation of the aggregate posterior weighted by beta.

Chen, Li, Grosse & Duvenaud (2018), "Isolating Sources of Disentanglement in
Variational Autoencoders" (NeurIPS): the decomposed ELBO with alpha = gamma = 1,
as disentanglement_lib (Locatello et al., 2019) trains it. A VAE (Gaussian q(z|x),
prior N(0, I), aejax/vae.py's parameterisation) trained on

  loss = recon + KL + (beta - 1) * TC,   beta = kl_weight,

per image, (B,), nats: `recon` is -log p(x|z) of one reparameterised draw z ~
q(z|x) summed over pixels, `kl` the analytic KL(q(z|x) || N(0, I)) summed over
latent units, `tc` the image's term of the batch estimate of the total
correlation KL(q(z) || prod_d q(z_d)) below, `neg_elbo` = recon + kl. beta = 1 is
the ELBO. beta is kl_weight (config.objective.beta), so a population sweep over
beta sweeps the TC weight; a KL warm-up is refused (it would ramp beta from 0 and
reward TC with weight beta - 1 < 0; disentanglement_lib uses none).

The TC estimate (`total_correlation`). With the batch's draws z_1..z_B (z_i ~
q(z|x_i)) and log q(z_id | x_j) = log N(z_id; mean_jd, exp(logvar_jd)):

  log q(z_i)   ~ logsumexp_j sum_d log q(z_id | x_j)   [- log(N B)],
  log q(z_id)  ~ logsumexp_j log q(z_id | x_j)        [- log(N B)],
  tc_i = log q(z_i) - sum_d log q(z_id),

every log-sum-exp over all B members j, the sample's own posterior included; the
batch mean of tc_i is the estimate. Chen et al.'s minibatch-weighted sampling
(MWS) keeps the bracketed -log(N B) terms (N the data set's size); they add the
constant (D - 1) * log(N B) to every tc_i. The default (option dataset_size 0)
is disentanglement_lib's `total_correlation`, which drops that constant: its
gradient is the same, so training is the same, and it needs no data set size
(which the model contract does not carry). It is then not an estimate of the TC's
value (it can be negative); dataset_size = N > 0 adds the constant, giving the
MWS estimate. `tc` is reported per image as tc_i, whose batch mean is the batch
estimate: tc_i depends on the whole (global) batch, like a broadcast statistic,
but an image's own term is its own row, so a masked mean over a padded
evaluation batch leaves out the padding's rows (the padding still enters the
other rows' log-sum-exps, as it would a broadcast estimate).

Options (`config.model.options`): `network` ("dense", "conv" or "dlib_conv",
aejax/models.py build_networks), `dataset_size` (default 0: the constant-free
estimate above).

The prior is N(0, I), so aejax's sampling, IWAE bounds and NLL apply as for any
VAE. Deviations: only config.objective.name "elbo" with num_samples 1; not
conditional; minibatch-weighted sampling, not Chen et al.'s stratified variant.
"""

import math

import jax
import jax.numpy as jnp

from aejax import errors, losses, models
from aejax.autoencoder import reconstruction_terms
from aejax.vae import VAE
from aejax.zoo import options

_LOG_2PI = math.log(2.0 * math.pi)
DEFAULTS = {
  "network": "dense",  # dense | conv | dlib_conv (models.build_networks).
  "dataset_size": 0,  # N of the MWS constant; 0: disentanglement_lib's estimate without it.
}


def gaussian_log_density(z: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """log N(z; mean, exp(logvar)) elementwise (arguments broadcast), nats."""
  return -0.5 * (_LOG_2PI + logvar + jnp.square(z - mean) * jnp.exp(-logvar))


def total_correlation(
  z_BxD: jax.Array, mean_BxD: jax.Array, logvar_BxD: jax.Array, dataset_size: int = 0
) -> jax.Array:
  """Each draw's term tc_i of the batch estimate of the total correlation: (B,), nats.

  tc_i = logsumexp_j sum_d log q(z_id|x_j) - sum_d logsumexp_j log q(z_id|x_j), the
  log-sum-exps over the batch's posteriors j (module docstring); with dataset_size N > 0
  plus (D - 1) * log(N * B), Chen et al.'s minibatch-weighted sampling. The log-sum-exps
  subtract their maximum, so codes far from every other posterior give finite terms.
  """
  batch_size, latent_dim = z_BxD.shape
  # [i, j, d]: log q(z_id | x_j), the density of draw i under member j's posterior.
  log_q_BxBxD = gaussian_log_density(z_BxD[:, None, :], mean_BxD[None], logvar_BxD[None])
  log_qz_B = jax.nn.logsumexp(log_q_BxBxD.sum(axis=-1), axis=1)
  log_prod_qzd_B = jax.nn.logsumexp(log_q_BxBxD, axis=1).sum(axis=-1)
  tc_B = log_qz_B - log_prod_qzd_B
  if dataset_size > 0:
    tc_B = tc_B + (latent_dim - 1) * math.log(dataset_size * batch_size)
  return tc_B


class BetaTCVAE(VAE):
  """A Gaussian-posterior VAE trained on recon + KL + (beta - 1) * TC; see the module docstring."""

  dataset_size: int = 0

  def losses(self, batch, key, config, kl_weight) -> dict[str, jax.Array]:
    """Per image, (B,): recon + kl + (kl_weight - 1) * tc."""
    if config.objective.name != "elbo" or config.objective.num_samples != 1:
      raise errors.ConfigError(
        f"config.objective.name: model {config.model.name!r} trains the beta-TCVAE objective; "
        f"use objective.name='elbo' with num_samples=1, got {config.objective.name!r} with "
        f"num_samples={config.objective.num_samples}"
      )
    if config.objective.kl_warmup_steps:
      raise errors.ConfigError(
        f"config.objective.kl_warmup_steps: model {config.model.name!r} weights the total "
        "correlation by beta - 1, and a warm-up ramps beta from 0 (a weight of -1 rewards "
        f"TC); use 0, got {config.objective.kl_warmup_steps}"
      )
    out = self(batch["input"], key)
    terms = reconstruction_terms(
      out["logits"], batch["target"], config.model.likelihood, self.log_scale(out, config)
    )
    recon_B = terms["recon"]
    kl_B = losses.gaussian_kl(out["mean"], out["logvar"]).sum(axis=-1)
    tc_B = total_correlation(out["z"], out["mean"], out["logvar"], self.dataset_size)
    beta = jnp.asarray(kl_weight, jnp.float32)
    terms.update(
      kl=kl_B, tc=tc_B, neg_elbo=recon_B + kl_B, loss=recon_B + kl_B + (beta - 1.0) * tc_B
    )
    return terms


def build(model_config, image_shape) -> BetaTCVAE:
  """The beta-TCVAE of `model_config` (options: network, dataset_size)."""
  opts = options.read_options(model_config, DEFAULTS)
  options.check(
    opts["network"] in models.NETWORKS, model_config, "network",
    f"unknown network {opts['network']!r}; valid: {', '.join(models.NETWORKS)}",
  )  # fmt: skip
  options.check(
    opts["dataset_size"] >= 0, model_config, "dataset_size",
    f"must be >= 0 (0: no MWS constant), got {opts['dataset_size']}",
  )  # fmt: skip
  if int(model_config.get("num_classes", 0)):
    raise errors.ConfigError(
      f"config.model.num_classes: model {model_config.name!r} is not conditional; set it to 0"
    )
  encoder, decoder = models.build_networks(
    model_config, image_shape, 2 * model_config.latent_dim, opts["network"], model_config.name
  )
  return BetaTCVAE(
    encoder=encoder,
    decoder=decoder,
    output_shape=tuple(image_shape),
    learn_log_scale=bool(model_config.get("learn_log_scale", False)),
    init_log_scale=float(model_config.get("log_scale", 0.0)),
    latent_dim=int(model_config.latent_dim),
    dataset_size=int(opts["dataset_size"]),
  )
