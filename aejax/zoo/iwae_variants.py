"""MIWAE, PIWAE and CIWAE: the importance-weighted objectives of Rainforth et al. (2018).

Tom Rainforth, Adam R. Kosiorek, Tuan Anh Le, Chris J. Maddison, Maximilian
Igl, Frank Wood and Yee Whye Teh (2018), "Tighter Variational Bounds are Not
Necessarily Better", ICML. A tighter bound (IWAE's L_K with large K) helps the
generative network but lowers the signal-to-noise ratio of the inference
network's gradient; these objectives trade the two off.

All three are aejax's Gaussian VAE (aejax/vae.py: q(z|x) = N(mean,
diag(exp(logvar))), prior N(0, I), Bernoulli or Gaussian decoder), so encode,
decode, generate and the NLL evaluation are the VAE's. Per image, N samples
z_n = mean + exp(logvar / 2) * eps_n, with eps of shape (N, B, D) drawn by one
`jax.random.normal(key, ...)` (the draw of aejax's "iwae" objective), give
log w_n = log p(x|z_n) + log N(z_n; 0, I) - log q(z_n|x), nats per image. For
MIWAE and PIWAE, N = M * K and group m holds the samples m*K .. m*K + K - 1.
- MIWAE(M, K): loss = -(1/M) sum_m [logsumexp_k log w_mk - log K], the mean of
  M independent K-sample IWAE bounds (M = 1: IWAE; K = 1: the Monte Carlo ELBO
  with M samples).
- PIWAE(M, K): the decoder (and a learned likelihood scale) descends
  loss = -IWAE(M * K) = -(logsumexp_n log w_n - log(M K)); the encoder, the
  parameter group "encoder" with its own optimizer state, descends
  loss_encoder = -MIWAE(M, K), computed from the same samples.
- CIWAE(beta): loss = -(beta * ELBO_K + (1 - beta) * IWAE_K) on the same K
  samples, ELBO_K = (1/K) sum_k log w_k (beta = 1: the Monte Carlo ELBO,
  beta = 0: IWAE).
Every term is per image, (B,); training takes the batch mean. Each model also
reports `recon` (mean over all N samples of -log p(x|z)), `kl` (analytic),
`neg_elbo` = recon + kl (as aejax/vae.py), `neg_iwae_bound` (-IWAE with all N
samples) and the per-pixel metrics of the first sample's reconstruction; MIWAE
and PIWAE add `neg_miwae_bound`, CIWAE `neg_elbo_mc` (-ELBO_K). Without a key
(never in training) every sample is the posterior mean.

Options (`config.model.options`): `network` ("dense" or "conv"),
`num_groups` M and `samples_per_group` K (MIWAE, PIWAE; default 8 and 8, the
paper's MIWAE(8, 8) and PIWAE(8, 8)), `num_samples` K and `ciwae_beta` (CIWAE;
default 64 and 0.5, as Pythae's reproduction script). The sample counts live
here, not in config.objective.num_samples, which must stay 1; the objectives
have no KL weight, so config.objective.beta must be 1 and kl_warmup_steps 0
and the `kl_weight` argument of `losses` is unused. config.objective.name must
stay "elbo" (it names the VAE's objectives, not these).

Deviations from the paper: none in the objectives; the paper's encoder
exponentiates a linear output for the standard deviation, aejax's predicts the
log-variance. The config checks run when `losses` is first traced (the builder
sees only config.model), before the first training step.
"""

import math

import jax
import jax.numpy as jnp

from aejax import errors, losses, models
from aejax.vae import VAE
from aejax.zoo import options

MIWAE_DEFAULTS = {"network": "dense", "num_groups": 8, "samples_per_group": 8}
CIWAE_DEFAULTS = {"network": "dense", "num_samples": 64, "ciwae_beta": 0.5}


def check_objective_config(config, name: str) -> None:
  """These models have their own objective: config.objective must keep its neutral defaults."""
  counts = "options.num_samples" if name == "ciwae" else "options.num_groups, samples_per_group"
  counts = f"config.model.{counts}"
  if config.objective.name != "elbo":
    raise errors.ConfigError(
      f"config.objective.name: model {name!r} trains on its own bound (aejax/zoo/iwae_variants.py)"
      f"; leave objective.name 'elbo', got {config.objective.name!r}"
    )
  if config.objective.num_samples != 1:
    raise errors.ConfigError(
      f"config.objective.num_samples: model {name!r} takes its sample counts from {counts}; "
      f"leave objective.num_samples 1, got {config.objective.num_samples}"
    )
  if config.objective.beta != 1:
    raise errors.ConfigError(
      f"config.objective.beta: model {name!r} is an importance-weighted objective with no KL "
      f"term to weight: use beta=1, got {config.objective.beta}"
    )
  if config.objective.kl_warmup_steps:
    raise errors.ConfigError(
      f"config.objective.kl_warmup_steps: model {name!r} is an importance-weighted objective "
      f"with no KL term to warm up: use 0, got {config.objective.kl_warmup_steps}"
    )


class _ImportanceWeightedVAE(VAE):
  """The VAE with N = num_draws samples per image and their log weights."""

  def _log_weights(self, batch, key, config, num_draws: int) -> dict[str, jax.Array]:
    """log w (N, B) and the terms every model reports (recon, kl, neg_elbo, neg_iwae_bound over
    all N samples, the first sample's per-pixel metrics), from one encoder pass and one decoder
    pass over all N * B codes."""
    post = self.encode(batch["input"])
    mean_BxD, logvar_BxD = post["mean"], post["logvar"]
    batch_size, latent_dim = mean_BxD.shape
    shape = (num_draws, batch_size, latent_dim)
    if key is None:
      eps_NxBxD = jnp.zeros(shape, mean_BxD.dtype)
    else:
      eps_NxBxD = jax.random.normal(key, shape, mean_BxD.dtype)
    mean_1xBxD, logvar_1xBxD = mean_BxD[None], logvar_BxD[None]
    z_NxBxD = mean_1xBxD + jnp.exp(0.5 * logvar_1xBxD) * eps_NxBxD
    logits = self.decode(z_NxBxD.reshape(num_draws * batch_size, latent_dim))
    target = batch["target"]
    targets = jnp.broadcast_to(target, (num_draws, *target.shape)).reshape(
      num_draws * batch_size, *target.shape[1:]
    )
    if self.learn_log_scale:
      log_scale = self.variables["params"]["likelihood"]["log_scale"]
    else:
      log_scale = jnp.asarray(config.model.log_scale, jnp.float32)
    recon_NxB = losses.reconstruction_nll(config.model.likelihood, logits, targets, log_scale)
    recon_NxB = recon_NxB.reshape(num_draws, batch_size)
    log_w_NxB = -recon_NxB + losses.log_prior_minus_log_posterior(z_NxBxD, mean_1xBxD, logvar_1xBxD)
    kl_B = losses.gaussian_kl(mean_BxD, logvar_BxD).sum(axis=-1)
    recon_B = recon_NxB.mean(axis=0)
    terms = {
      "recon": recon_B,
      "kl": kl_B,
      "neg_elbo": recon_B + kl_B,
      "neg_iwae_bound": -(jax.nn.logsumexp(log_w_NxB, axis=0) - math.log(num_draws)),
    }
    terms.update(losses.per_pixel_metrics(logits[:batch_size], target))
    return log_w_NxB, terms


def miwae_bound(log_w_MxKxB: jax.Array) -> jax.Array:
  """(1/M) sum_m [logsumexp_k log w_mk - log K]: (B,), nats per image."""
  num_per_group = log_w_MxKxB.shape[1]
  return (jax.nn.logsumexp(log_w_MxKxB, axis=1) - math.log(num_per_group)).mean(axis=0)


class MIWAE(_ImportanceWeightedVAE):
  """The multiply importance weighted autoencoder: the mean of M K-sample IWAE bounds."""

  num_groups: int = 8
  samples_per_group: int = 8

  objective_name = "miwae"

  def _miwae_terms(self, batch, key, config):
    check_objective_config(config, self.objective_name)
    m, k = self.num_groups, self.samples_per_group
    log_w_NxB, terms = self._log_weights(batch, key, config, m * k)
    terms["neg_miwae_bound"] = -miwae_bound(log_w_NxB.reshape(m, k, -1))
    return terms

  def losses(self, batch, key, config, kl_weight) -> dict[str, jax.Array]:
    """Loss terms per image, (B,), nats; `loss` = -MIWAE(M, K). `kl_weight` is unused."""
    del kl_weight  # No KL term: checked to be 1 (check_objective_config).
    terms = self._miwae_terms(batch, key, config)
    terms["loss"] = terms["neg_miwae_bound"]
    return terms


class PIWAE(MIWAE):
  """The partially importance weighted autoencoder: decoder on IWAE(M*K), encoder on MIWAE(M, K)."""

  # params["encoder"] descends loss_encoder with its own optimizer state (aejax/steps.py);
  # annotated, so that it is this dataclass field's default and not shadowed by the base's ().
  extra_param_groups: tuple[str, ...] = ("encoder",)

  objective_name = "piwae"

  def losses(self, batch, key, config, kl_weight) -> dict[str, jax.Array]:
    """Loss terms per image, (B,), nats: `loss` = -IWAE(M * K) for the decoder and the rest,
    `loss_encoder` = -MIWAE(M, K) for the encoder, from the same samples. `kl_weight` is unused."""
    del kl_weight
    terms = self._miwae_terms(batch, key, config)
    terms["loss"] = terms["neg_iwae_bound"]
    terms["loss_encoder"] = terms["neg_miwae_bound"]
    return terms


class CIWAE(_ImportanceWeightedVAE):
  """The combination importance weighted autoencoder: beta * ELBO_K + (1 - beta) * IWAE_K."""

  num_samples: int = 64
  ciwae_beta: float = 0.5

  def losses(self, batch, key, config, kl_weight) -> dict[str, jax.Array]:
    """Loss terms per image, (B,), nats; `loss` = -(beta ELBO_K + (1 - beta) IWAE_K) with
    beta = ciwae_beta, on the same K samples. `kl_weight` is unused."""
    del kl_weight
    check_objective_config(config, "ciwae")
    log_w_KxB, terms = self._log_weights(batch, key, config, self.num_samples)
    terms["neg_elbo_mc"] = -log_w_KxB.mean(axis=0)
    beta = self.ciwae_beta
    terms["loss"] = beta * terms["neg_elbo_mc"] + (1.0 - beta) * terms["neg_iwae_bound"]
    return terms


def _networks_and_common(model_config, image_shape, network: str) -> dict:
  if model_config.get("num_classes", 0):
    raise errors.ConfigError(
      f"config.model.num_classes: model {model_config.name!r} is not conditional; use 0, got "
      f"{model_config.num_classes}"
    )
  encoder, decoder = models.build_networks(
    model_config, image_shape, 2 * model_config.latent_dim, network, model_config.name
  )
  return dict(
    encoder=encoder,
    decoder=decoder,
    output_shape=tuple(image_shape),
    learn_log_scale=bool(model_config.get("learn_log_scale", False)),
    init_log_scale=float(model_config.get("log_scale", 0.0)),
    num_classes=0,
    latent_dim=model_config.latent_dim,
  )


def _read_miwae_options(model_config) -> dict:
  opts = options.read_options(model_config, MIWAE_DEFAULTS)
  for name in ("num_groups", "samples_per_group"):
    options.check(opts[name] >= 1, model_config, name, f"must be >= 1, got {opts[name]}")
  return opts


def build_miwae(model_config, image_shape) -> MIWAE:
  opts = _read_miwae_options(model_config)
  return MIWAE(
    **_networks_and_common(model_config, image_shape, opts["network"]),
    num_groups=opts["num_groups"],
    samples_per_group=opts["samples_per_group"],
  )


def build_piwae(model_config, image_shape) -> PIWAE:
  opts = _read_miwae_options(model_config)
  return PIWAE(
    **_networks_and_common(model_config, image_shape, opts["network"]),
    num_groups=opts["num_groups"],
    samples_per_group=opts["samples_per_group"],
  )


def build_ciwae(model_config, image_shape) -> CIWAE:
  opts = options.read_options(model_config, CIWAE_DEFAULTS)
  options.check(
    opts["num_samples"] >= 1,
    model_config,
    "num_samples",
    f"must be >= 1, got {opts['num_samples']}",
  )
  beta = opts["ciwae_beta"]
  options.check(0.0 <= beta <= 1.0, model_config, "ciwae_beta", f"must be in [0, 1], got {beta}")
  return CIWAE(
    **_networks_and_common(model_config, image_shape, opts["network"]),
    num_samples=opts["num_samples"],
    ciwae_beta=beta,
  )
