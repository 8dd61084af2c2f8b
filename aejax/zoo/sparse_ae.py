"""A sparse autoencoder: the reconstruction NLL plus a sparsity penalty on the code.

Two classic penalties (`config.model.options.penalty`):
- "l1": the L1 activity penalty sum_j |z_j| per image on the linear code (as
  in Keras' `activity_regularizer=l1`, Chollet 2016, "Building autoencoders
  in Keras");
- "kl": Ng's KL-sparsity (A. Ng, 2011, "Sparse autoencoder", CS294A lecture
  notes): the code units are squashed by a sigmoid, z_j = sigmoid(h_j), and
  the decoder reads these activations in (0, 1); with rho_hat_j the batch mean
  of z_j, the penalty is sum_j KL(rho || rho_hat_j) = sum_j [rho log(rho /
  rho_hat_j) + (1 - rho) log((1 - rho) / (1 - rho_hat_j))], with rho
  `sparsity_target` (default 0.05, Ng's notes).

Loss per image, (B,), nats for `recon`:
  loss = recon + kl_weight * penalty,
recon the reconstruction NLL summed over pixels, kl_weight = config.objective.beta
(times its warm-up). The terms are `recon`, `l1` or `kl_sparsity`, the per-pixel
metrics and `loss`. The KL-sparsity is a statistic of the whole batch (the
global batch, all devices): it is returned broadcast to (B,), so its batch
mean is the statistic. Evaluation's last, padded batch counts its padding
images in rho_hat (the model does not see the mask).

Deviations: Ng's network is one sigmoid hidden layer trained with squared
error and weight decay; here the encoder and decoder are aejax's networks
(option `network`: "dense" or "conv") and the likelihood is the config's. log
rho_hat and log(1 - rho_hat) are computed as log-mean-exp of log-sigmoids, so
the penalty and its gradient stay finite when every unit saturates.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from aejax import autoencoder, errors, models
from aejax.zoo import options

PENALTIES = ("l1", "kl")
DEFAULTS = {"network": "dense", "penalty": "l1", "sparsity_target": 0.05}


def kl_sparsity(pre_code_BxD: jax.Array, rho: float) -> jax.Array:
  """sum_j KL(Bernoulli(rho) || Bernoulli(rho_hat_j)), rho_hat_j = mean_b sigmoid(h_bj): ()."""
  log_count = math.log(pre_code_BxD.shape[0])
  # log mean_b sigmoid(h) and log mean_b sigmoid(-h) = log(1 - rho_hat), without forming 1 - x.
  log_rho_hat_D = jax.nn.logsumexp(jax.nn.log_sigmoid(pre_code_BxD), axis=0) - log_count
  log_one_minus_D = jax.nn.logsumexp(jax.nn.log_sigmoid(-pre_code_BxD), axis=0) - log_count
  kl_D = rho * (math.log(rho) - log_rho_hat_D) + (1.0 - rho) * (
    math.log(1.0 - rho) - log_one_minus_D
  )
  return jnp.sum(kl_D)


class SparseAE(autoencoder.AutoEncoder):
  """z = encoder(x) (sigmoid-squashed for the KL penalty), logits = decoder(z)."""

  penalty: str = "l1"
  sparsity_target: float = 0.05

  def pre_code(self, x_BxHxWxC: jax.Array) -> jax.Array:
    """The encoder's output h (B, D), before the KL penalty's sigmoid."""
    return self.encoder(self._encoder_input(x_BxHxWxC, None)).astype(jnp.float32)

  def _code(self, pre_code_BxD: jax.Array) -> jax.Array:
    return jax.nn.sigmoid(pre_code_BxD) if self.penalty == "kl" else pre_code_BxD

  def encode(self, x_BxHxWxC: jax.Array, label_B: jax.Array | None = None) -> dict[str, jax.Array]:
    del label_B  # Not conditional.
    return {"z": self._code(self.pre_code(x_BxHxWxC))}

  def losses(self, batch, key, config, kl_weight) -> dict[str, jax.Array]:
    """Per image, (B,): recon + kl_weight * (L1 of z, or the batch's KL-sparsity)."""
    del key  # Deterministic.
    pre_code_BxD = self.pre_code(batch["input"])
    z_BxD = self._code(pre_code_BxD)
    logits = self.decode(z_BxD)
    if self.learn_log_scale:
      log_scale = self.variables["params"]["likelihood"]["log_scale"]
    else:
      log_scale = jnp.asarray(config.model.log_scale, jnp.float32)
    terms = autoencoder.reconstruction_terms(
      logits, batch["target"], config.model.likelihood, log_scale
    )
    if self.penalty == "l1":
      name, penalty_B = "l1", jnp.sum(jnp.abs(z_BxD), axis=-1)
    else:
      name = "kl_sparsity"
      penalty_B = jnp.broadcast_to(
        kl_sparsity(pre_code_BxD, self.sparsity_target), (z_BxD.shape[0],)
      )
    terms[name] = penalty_B
    terms["loss"] = terms["recon"] + kl_weight * penalty_B
    return terms


def build(model_config, image_shape) -> nn.Module:
  opts = options.read_options(model_config, DEFAULTS)
  options.check(
    opts["penalty"] in PENALTIES,
    model_config,
    "penalty",
    f"unknown penalty {opts['penalty']!r}; valid: {', '.join(PENALTIES)}",
  )
  rho = opts["sparsity_target"]
  options.check(0.0 < rho < 1.0, model_config, "sparsity_target", f"must be in (0, 1), got {rho}")
  if model_config.get("num_classes", 0):
    raise errors.ConfigError(
      f"config.model.num_classes: model {model_config.name!r} is not conditional; set it to 0"
    )
  encoder, decoder = models.build_networks(
    model_config, image_shape, model_config.latent_dim, opts["network"], model_config.name
  )
  return SparseAE(
    encoder=encoder,
    decoder=decoder,
    output_shape=tuple(image_shape),
    learn_log_scale=bool(model_config.get("learn_log_scale", False)),
    init_log_scale=float(model_config.get("log_scale", 0.0)),
    penalty=opts["penalty"],
    sparsity_target=float(rho),
  )
