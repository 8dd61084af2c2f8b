"""The VAE family: q(z|x) = N(mean, diag(exp(logvar))), prior N(0, I), the ELBO and IWAE bounds.

The encoder outputs 2 * latent_dim numbers: the first half is the mean, the
second the log-variance; the sample is mean + exp(logvar / 2) * eps and the KL
uses the same variance (the one parameterisation in aejax). With
num_classes > 0 it is the conditional VAE (q(z|x, y), p(x|z, y)).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from aejax import losses
from aejax.autoencoder import AutoEncoder, LikelihoodScale, reconstruction_terms


class VAE(AutoEncoder):
  """Variational autoencoder; `losses` is the objective named by config.objective."""

  latent_dim: int = 2

  is_variational = True
  # Members of one population may differ in latent size, objective and k (aejax/padding.py).
  population_padding = True

  def encode(self, x_BxHxWxC: jax.Array, label_B: jax.Array | None = None) -> dict[str, jax.Array]:
    h = self.encoder(self._encoder_input(x_BxHxWxC, label_B)).astype(jnp.float32)
    mean, logvar = jnp.split(h, 2, axis=-1)
    return {"mean": mean, "logvar": logvar}

  @nn.compact
  def __call__(
    self, x_BxHxWxC: jax.Array, key: jax.Array | None = None, label_B: jax.Array | None = None
  ) -> dict[str, jax.Array]:
    """With a key, z is a reparameterised sample; without one, z is the posterior mean."""
    out = self.encode(x_BxHxWxC, label_B)
    if key is None:
      out["z"] = out["mean"]
    else:
      out["z"] = losses.sample_gaussian(key, out["mean"], out["logvar"])
    out["logits"] = self.decode(out["z"], label_B)
    if self.learn_log_scale:
      out["log_scale"] = LikelihoodScale(self.init_log_scale, name="likelihood")()
    return out

  def losses(self, batch, key, config, kl_weight, member=None) -> dict[str, jax.Array]:
    """Loss terms per image, (B,) each, nats per image (per pixel for *_per_pixel, dB for psnr).

    `loss` is NLL + kl_weight * KL (one sample, analytic KL), or a k-sample
    objective (`_multi_sample_losses`); `neg_elbo` is NLL + KL (kl_weight 1).
    `member` (a padding.Member): this is one member of a population padded to
    config's latent size and k, whose own objective and k the Member holds.
    """
    if member is not None or config.objective.name != "elbo" or config.objective.num_samples > 1:
      return self._multi_sample_losses(batch, key, config, kl_weight, member)
    label = batch.get("label") if self.num_classes else None
    out = self(batch["input"], key, label)
    terms = reconstruction_terms(
      out["logits"], batch["target"], config.model.likelihood, self.log_scale(out, config)
    )
    kl_B = losses.gaussian_kl(out["mean"], out["logvar"]).sum(axis=-1)
    terms.update(kl=kl_B, neg_elbo=terms["recon"] + kl_B, loss=terms["recon"] + kl_weight * kl_B)
    return terms

  def _multi_sample_losses(self, batch, key, config, kl_weight, member=None) -> dict:
    """The k-sample objectives of Burda et al. (2016), k = config.objective.num_samples.

    Draws z_1..z_k ~ q(z|x) (one encoder pass, one decoder pass over all k*B
    codes) and forms log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x).
    - "elbo": the k-sample VAE objective, recon averaged over the k samples
      plus kl_weight * the analytic KL: an unbiased estimate of the ELBO with
      k times fewer noisy reconstruction terms.
    - "iwae": loss = -L_k = -(logsumexp_i log w_i - log k), the importance-
      weighted bound; at k = 1 it is the fully Monte Carlo ELBO.
    Both also report `neg_elbo` (k-sample mean recon + analytic KL), so runs
    with different objectives compare on the same scale, and `neg_iwae_bound`.
    Without a key (never in training) z_i is the posterior mean.

    With `member` the objective and k are the member's: k samples of the
    config's K are kept (the rest masked out of both bounds), and its noise is
    drawn as its separate run draws it (`_member_noise`). At k = 1 with "elbo"
    this is the one-sample ELBO of `losses`, which also reports neg_iwae_bound.
    """
    k = config.objective.num_samples
    label = batch.get("label") if self.num_classes else None
    post = self.encode(batch["input"], label)
    mean_BxD, logvar_BxD = post["mean"], post["logvar"]
    batch_size, latent_dim = mean_BxD.shape
    if key is None:
      eps_KxBxD = jnp.zeros((k, batch_size, latent_dim), mean_BxD.dtype)
    elif member is not None:
      eps_KxBxD = _member_noise(key, member, k, batch_size, latent_dim, mean_BxD.dtype)
    else:
      eps_KxBxD = jax.random.normal(key, (k, batch_size, latent_dim), mean_BxD.dtype)
    mean_1xBxD, logvar_1xBxD = mean_BxD[None], logvar_BxD[None]
    z_KxBxD = mean_1xBxD + jnp.exp(0.5 * logvar_1xBxD) * eps_KxBxD
    labels = None if label is None else jnp.tile(label, k)
    logits = self.decode(z_KxBxD.reshape(k * batch_size, latent_dim), labels)
    target = batch["target"]
    targets = jnp.broadcast_to(target, (k, *target.shape)).reshape(
      k * batch_size, *target.shape[1:]
    )
    if self.learn_log_scale:
      log_scale = self.variables["params"]["likelihood"]["log_scale"]
    else:
      log_scale = jnp.asarray(config.model.log_scale, jnp.float32)
    recon_KxB = losses.reconstruction_nll(config.model.likelihood, logits, targets, log_scale)
    recon_KxB = recon_KxB.reshape(k, batch_size)
    log_w_KxB = -recon_KxB + losses.log_prior_minus_log_posterior(z_KxBxD, mean_1xBxD, logvar_1xBxD)
    kl_B = losses.gaussian_kl(mean_BxD, logvar_BxD).sum(axis=-1)
    if member is None:
      iwae_bound_B = jax.nn.logsumexp(log_w_KxB, axis=0) - math.log(k)
      recon_B = recon_KxB.mean(axis=0)
      is_iwae = config.objective.name == "iwae"
      loss_B = -iwae_bound_B if is_iwae else recon_B + kl_weight * kl_B
    else:
      # The member's k of the K samples; the others weigh nothing (log w = -inf).
      own_k = jnp.asarray([shape[0] for shape in member.shapes])[member.index]
      kept_Kx1 = (jnp.arange(k) < own_k)[:, None]
      log_w_KxB = jnp.where(kept_Kx1, log_w_KxB, -jnp.inf)
      iwae_bound_B = jax.nn.logsumexp(log_w_KxB, axis=0) - jnp.log(own_k.astype(jnp.float32))
      recon_B = jnp.where(kept_Kx1, recon_KxB, 0.0).sum(axis=0) / own_k
      loss_B = jnp.where(member.iwae, -iwae_bound_B, recon_B + kl_weight * kl_B)
    terms = {
      "recon": recon_B,
      "kl": kl_B,
      "neg_elbo": recon_B + kl_B,
      "neg_iwae_bound": -iwae_bound_B,
      "loss": loss_B,
    }
    terms.update(losses.per_pixel_metrics(logits[:batch_size], target))
    return terms


def _member_noise(key, member, num_samples: int, batch_size: int, latent_dim: int, dtype):
  """A padded population member's eps, (K, B, D): what its separate run draws at its own
  (k, d), zero-padded. Random draws are not prefix-stable in shape, so each of the population's
  distinct shapes is drawn at that shape (every member draws them all) and the member's taken."""
  draws = [
    jnp.pad(
      jax.random.normal(key, (k, batch_size, d), dtype),
      ((0, num_samples - k), (0, 0), (0, latent_dim - d)),
    )
    for k, d in member.shapes
  ]
  return jnp.stack(draws)[member.index]
