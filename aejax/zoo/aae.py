"""The adversarial autoencoder (AAE), deterministic-encoder variant.

Makhzani, Shlens, Jaitly, Goodfellow & Frey (2016), "Adversarial
Autoencoders" (ICLR workshop; arXiv 1511.05644). A deterministic encoder z =
encoder(x) and a decoder reconstruct; a critic (discriminator) D(z), an MLP
giving a logit, tells draws of the prior p(z) from codes, and the encoder is
trained to fool it, which pulls the aggregate posterior q(z) to p(z).

Two players, two objectives, one step on the same batch (aejax/steps.py:
the parameter group `critic` descends `loss_critic`, everything else `loss`):

  loss        = recon + kl_weight * adversarial,
  adversarial = softplus(-D(z_i))                    (-log sigmoid D(z_i)),
  loss_critic = softplus(-D(p_i)) + softplus(D(z_i)) (the critic's cross-entropy),

per image, (B,): `recon` is the reconstruction NLL (nats per image, summed over
pixels), z_i the code of image i and p_i one prior draw per image, drawn with
the step's key (jax.random.key(0) when the key is None). The generator term is
the non-saturating one; the critic's gradient does not flow into the encoder
(and the critic group ignores the gradient of `loss`). kl_weight is
config.objective.beta (times its warm-up). `critic_accuracy` (a fraction, not
nats) is the mean of [D(p_i) > 0] and [D(z_i) < 0]: 0.5 when the critic is
fooled.

Priors (option `prior`):
- "normal": N(0, I);
- "mixture": Makhzani et al.'s mixture of Gaussians (the paper shows 10
  components on 2-D codes): K = `mixture_components` equally weighted components
  whose means lie on a circle of radius `mixture_radius` in the first two
  coordinates, mean_k = (r cos(2 pi k / K), r sin(2 pi k / K), 0, ..., 0),
  with standard deviation `mixture_std` in those two coordinates and 1 in the
  others (other coordinates N(0, 1), zero mean). Needs latent_dim >= 2. Each
  component is round in the circle's plane (the paper's plotted ones are
  not; their covariances are not given here).
The hook `sample` decodes draws of the chosen prior (generate, FID).

Options (`config.model.options`): `network` ("dense" or "conv"), `prior`,
`critic_widths` (the critic's hidden ReLU layers, default (1000, 1000): two
hidden layers, the shape of the paper's MNIST discriminator),
`mixture_components` (10), `mixture_radius` (4.0), `mixture_std` (0.5); with
the defaults neighbouring components' means are 4.9 stds apart.

Deviations: the paper alternates a reconstruction phase and a
regularisation phase (critic, then encoder) per mini-batch, with SGD and
momentum; here both players take one simultaneous step per batch with their
own copies of config.optimizer. The encoder's adversarial term is the
non-saturating -log D(z) of Goodfellow et al. (2014)'s practical advice.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from aejax import autoencoder, errors, models, networks
from aejax.zoo import options

PRIORS = ("normal", "mixture")
DEFAULTS = {
  "network": "dense",
  "prior": "normal",
  "critic_widths": (1000, 1000),
  "mixture_components": 10,
  "mixture_radius": 4.0,
  "mixture_std": 0.5,
}


def mixture_means(num_components: int, radius: float, latent_dim: int) -> jax.Array:
  """The component means (K, D): on a circle of `radius` in the first two coordinates."""
  angle_K = 2.0 * math.pi * jnp.arange(num_components) / num_components
  circle_Kx2 = radius * jnp.stack([jnp.cos(angle_K), jnp.sin(angle_K)], axis=-1)
  return jnp.pad(circle_Kx2, ((0, 0), (0, latent_dim - 2)))


def mixture_stds(std: float, latent_dim: int) -> jax.Array:
  """The per-coordinate standard deviation (D,): `std` in the first two, 1 in the others."""
  return jnp.concatenate([jnp.full((2,), std), jnp.ones((latent_dim - 2,))])


def sample_mixture(
  key: jax.Array, num_samples: int, means_KxD: jax.Array, stds_D: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Draws (N, D) of the equal-weight mixture of N(mean_k, diag(stds^2)), and their components."""
  key_component, key_noise = jax.random.split(key)
  component_N = jax.random.randint(key_component, (num_samples,), 0, means_KxD.shape[0])
  eps_NxD = jax.random.normal(key_noise, (num_samples, means_KxD.shape[1]))
  return means_KxD[component_N] + stds_D[None, :] * eps_NxD, component_N


class Critic(nn.Module):
  """z (B, D) -> the logit (B,) that z is a prior draw: ReLU MLP of `widths`, then Dense(1)."""

  widths: tuple[int, ...]
  dtype: object = None

  @nn.compact
  def __call__(self, z_BxD: jax.Array) -> jax.Array:
    h = z_BxD
    for width in self.widths:
      h = nn.relu(nn.Dense(width, dtype=self.dtype)(h))
    return nn.Dense(1, dtype=self.dtype)(h)[:, 0].astype(jnp.float32)


class AdversarialAE(autoencoder.AutoEncoder):
  """z = encoder(x), logits = decoder(z), and a critic on z in its own parameter group."""

  critic: nn.Module | None = None
  latent_dim: int = 2
  prior: str = "normal"
  mixture_components: int = 10
  mixture_radius: float = 4.0
  mixture_std: float = 0.5

  extra_param_groups: tuple[str, ...] = ("critic",)  # params["critic"] descends loss_critic.

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, key=None, label_B=None) -> dict[str, jax.Array]:
    """The code, the logits, and the critic's logit on the code (which creates its parameters)."""
    del key, label_B  # Deterministic; not conditional.
    out = self.encode(x_BxHxWxC)
    out["logits"] = self.decode(out["z"])
    out["critic_logit"] = self.critic(out["z"])
    if self.learn_log_scale:
      out["log_scale"] = autoencoder.LikelihoodScale(self.init_log_scale, name="likelihood")()
    return out

  def prior_sample(self, key: jax.Array, num_samples: int) -> jax.Array:
    """Draws (N, D) of the prior named by `prior`."""
    if self.prior == "normal":
      return jax.random.normal(key, (num_samples, self.latent_dim))
    means_KxD = mixture_means(self.mixture_components, self.mixture_radius, self.latent_dim)
    stds_D = mixture_stds(self.mixture_std, self.latent_dim)
    return sample_mixture(key, num_samples, means_KxD, stds_D)[0]

  def sample(self, key: jax.Array, num_samples: int, label_B=None) -> jax.Array:
    """Decoded draws of the prior: logits (N, H, W, C)."""
    del label_B  # Not conditional.
    return self.decode(self.prior_sample(key, num_samples))

  def losses(self, batch, key, config, kl_weight) -> dict[str, jax.Array]:
    """Per image, (B,): loss = recon + kl_weight * adversarial; loss_critic for the critic."""
    out = self(batch["input"])
    terms = autoencoder.reconstruction_terms(
      out["logits"], batch["target"], config.model.likelihood, self.log_scale(out, config)
    )
    z_BxD = out["z"]
    key = jax.random.key(0) if key is None else key
    prior_BxD = self.prior_sample(key, z_BxD.shape[0])
    code_logit_B = out["critic_logit"]
    prior_logit_B = self.critic(prior_BxD)
    # The critic learns from the codes without moving the encoder.
    fake_logit_B = self.critic(jax.lax.stop_gradient(z_BxD))
    adversarial_B = jax.nn.softplus(-code_logit_B)
    terms["adversarial"] = adversarial_B
    terms["loss"] = terms["recon"] + kl_weight * adversarial_B
    terms["loss_critic"] = jax.nn.softplus(-prior_logit_B) + jax.nn.softplus(fake_logit_B)
    terms["critic_accuracy"] = 0.5 * (
      (prior_logit_B > 0).astype(jnp.float32) + (fake_logit_B < 0).astype(jnp.float32)
    )
    return terms


def build(model_config, image_shape) -> nn.Module:
  opts = options.read_options(model_config, DEFAULTS)
  options.check(
    opts["prior"] in PRIORS,
    model_config,
    "prior",
    f"unknown prior {opts['prior']!r}; valid: {', '.join(PRIORS)}",
  )
  widths = opts["critic_widths"]
  options.check(
    all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths),
    model_config,
    "critic_widths",
    f"must be a list of positive integers, got {widths!r}",
  )
  options.check(
    opts["mixture_components"] >= 1,
    model_config,
    "mixture_components",
    f"must be >= 1, got {opts['mixture_components']}",
  )
  options.check(
    opts["mixture_radius"] >= 0.0,
    model_config,
    "mixture_radius",
    f"must be >= 0, got {opts['mixture_radius']}",
  )
  std = opts["mixture_std"]
  options.check(std > 0.0, model_config, "mixture_std", f"must be > 0, got {std}")
  options.check(
    opts["prior"] != "mixture" or model_config.latent_dim >= 2,
    model_config,
    "prior",
    f"the mixture prior lies in the first two coordinates: needs latent_dim >= 2, got "
    f"{model_config.latent_dim}",
  )
  if model_config.get("num_classes", 0):
    raise errors.ConfigError(
      f"config.model.num_classes: model {model_config.name!r} is not conditional; set it to 0"
    )
  encoder, decoder = models.build_networks(
    model_config, image_shape, model_config.latent_dim, opts["network"], model_config.name
  )
  dtype = networks.get_dtype(model_config.get("dtype", "float32"))
  return AdversarialAE(
    encoder=encoder,
    decoder=decoder,
    output_shape=tuple(image_shape),
    learn_log_scale=bool(model_config.get("learn_log_scale", False)),
    init_log_scale=float(model_config.get("log_scale", 0.0)),
    critic=Critic(tuple(int(w) for w in widths), dtype=dtype),
    latent_dim=int(model_config.latent_dim),
    prior=opts["prior"],
    mixture_components=int(opts["mixture_components"]),
    mixture_radius=float(opts["mixture_radius"]),
    mixture_std=float(opts["mixture_std"]),
  )
