"""The annealed VAE: a beta-VAE whose KL is pulled towards a capacity C that grows in training.

Burgess et al. (2018), "Understanding disentangling in beta-VAE" (arXiv:1804.03599),
eq. 8, as disentanglement_lib (Locatello et al., 2019) trains it. A VAE (Gaussian
q(z|x), prior N(0, I), aejax/vae.py's parameterisation) trained on

  loss = recon + gamma * |KL - C(t)|,   C(t) = c_max * kl_weight(t),

per image, (B,), nats: `recon` is -log p(x|z) of one reparameterised draw z ~
q(z|x) summed over pixels, `kl` the analytic KL(q(z|x) || N(0, I)) summed over
latent units, `capacity` the current C (the same for every image),
`neg_elbo` = recon + kl.

The capacity schedule. The model contract passes no step to `losses`, but
kl_weight is config.objective.beta * min(1, step / config.objective.kl_warmup_steps)
(aejax.losses.kl_weight; beta alone when kl_warmup_steps is 0), a function of the
step computed by the trainer. With beta = 1 and kl_warmup_steps = T, C(t) =
c_max * min(1, t / T) is exactly the paper's linear increase from 0 to c_max over
T steps (disentanglement_lib's `iteration_threshold`, 100,000), then constant: the
warm-up IS the capacity ramp, and no trainer change is needed. With
kl_warmup_steps = 0 the capacity is c_max from the start. A population sweep over
beta sweeps the final capacity beta * c_max (c_max = 1 with beta in {5, ..., 100}
is disentanglement_lib's c_max grid). Evaluation uses the final kl_weight (beta),
so `eval/capacity` is beta * c_max and `eval/loss` the end-of-ramp objective even
before the ramp ends.

The penalty (option `penalty`):
- "batch" (default, disentanglement_lib's): gamma * |mean_b KL_b - C| on the batch
  mean KL. Returned per image as gamma * s * (KL_i - C) with s = sign(mean_b KL_b -
  C): its batch mean is exactly the batch penalty and so is its gradient (the sign
  is piecewise constant). Single images can have a negative loss.
- "image": gamma * |KL_i - C| per image, eq. 8 read per data point.
They differ only when some images are above C and others below.

Options (`config.model.options`): `network` ("dense", "conv" or "dlib_conv",
aejax/models.py build_networks), `gamma` (default 1000), `c_max` (nats, default
25), `penalty`. Defaults: gamma = 1000, c_max = 25 nats over 100,000 steps are the
paper's dSprites setting, and disentanglement_lib's study uses gamma 1000 with
c_max in {5, 10, 25, 50, 75, 100} and the same threshold.

The prior is N(0, I), so aejax's sampling, IWAE bounds and NLL apply as for any
VAE. Deviations: only config.objective.name "elbo" with num_samples 1 (the
k-sample objectives are not defined for this penalty); not conditional.
"""

import jax
import jax.numpy as jnp

from aejax import errors, losses, models
from aejax.autoencoder import reconstruction_terms
from aejax.vae import VAE
from aejax.zoo import options

PENALTIES = ("batch", "image")
DEFAULTS = {
  "network": "dense",  # dense | conv | dlib_conv (models.build_networks).
  "gamma": 1000.0,  # Weight of |KL - C|: the paper's and disentanglement_lib's.
  "c_max": 25.0,  # Final capacity, nats per image: the paper's dSprites value.
  "penalty": "batch",  # batch | image: see the module docstring.
}


def capacity_penalty(kl_B: jax.Array, capacity: jax.Array, penalty: str) -> jax.Array:
  """|KL - C| per image ("image"), or the batch's |mean KL - C| as (B,) terms ("batch").

  "batch" returns s * (KL_i - C), s = sign(mean KL - C): its mean over the batch is
  |mean KL - C| and its gradient that of |mean KL - C| (s has zero gradient).
  """
  gap_B = kl_B - capacity
  if penalty == "image":
    return jnp.abs(gap_B)
  return jnp.sign(jnp.mean(gap_B)) * gap_B


class AnnealedVAE(VAE):
  """A Gaussian-posterior VAE trained on recon + gamma * |KL - C(t)|; see the module docstring."""

  gamma: float = 1000.0
  c_max: float = 25.0
  penalty: str = "batch"

  def losses(self, batch, key, config, kl_weight) -> dict[str, jax.Array]:
    """Per image, (B,): recon + gamma * penalty(KL, C) with C = c_max * kl_weight."""
    if config.objective.name != "elbo" or config.objective.num_samples != 1:
      raise errors.ConfigError(
        f"config.objective.name: model {config.model.name!r} trains the annealed-capacity "
        f"objective; use objective.name='elbo' with num_samples=1, got "
        f"{config.objective.name!r} with num_samples={config.objective.num_samples}"
      )
    out = self(batch["input"], key)
    terms = reconstruction_terms(
      out["logits"], batch["target"], config.model.likelihood, self.log_scale(out, config)
    )
    recon_B = terms["recon"]
    kl_B = losses.gaussian_kl(out["mean"], out["logvar"]).sum(axis=-1)
    # The capacity follows the step through kl_weight (beta times the warm-up ramp).
    capacity = self.c_max * jnp.asarray(kl_weight, jnp.float32)
    terms.update(
      kl=kl_B,
      capacity=jnp.broadcast_to(capacity, kl_B.shape),
      neg_elbo=recon_B + kl_B,
      loss=recon_B + self.gamma * capacity_penalty(kl_B, capacity, self.penalty),
    )
    return terms


def build(model_config, image_shape) -> AnnealedVAE:
  """The annealed VAE of `model_config` (options: network, gamma, c_max, penalty)."""
  opts = options.read_options(model_config, DEFAULTS)
  options.check(
    opts["network"] in models.NETWORKS, model_config, "network",
    f"unknown network {opts['network']!r}; valid: {', '.join(models.NETWORKS)}",
  )  # fmt: skip
  options.check(opts["gamma"] >= 0, model_config, "gamma", f"must be >= 0, got {opts['gamma']}")
  options.check(opts["c_max"] >= 0, model_config, "c_max", f"must be >= 0, got {opts['c_max']}")
  options.check(
    opts["penalty"] in PENALTIES, model_config, "penalty",
    f"unknown penalty {opts['penalty']!r}; valid: {', '.join(PENALTIES)}",
  )  # fmt: skip
  if int(model_config.get("num_classes", 0)):
    raise errors.ConfigError(
      f"config.model.num_classes: model {model_config.name!r} is not conditional; set it to 0"
    )
  encoder, decoder = models.build_networks(
    model_config, image_shape, 2 * model_config.latent_dim, opts["network"], model_config.name
  )
  return AnnealedVAE(
    encoder=encoder,
    decoder=decoder,
    output_shape=tuple(image_shape),
    learn_log_scale=bool(model_config.get("learn_log_scale", False)),
    init_log_scale=float(model_config.get("log_scale", 0.0)),
    latent_dim=int(model_config.latent_dim),
    gamma=float(opts["gamma"]),
    c_max=float(opts["c_max"]),
    penalty=opts["penalty"],
  )
