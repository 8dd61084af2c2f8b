"""The VAE with a VampPrior: the prior is the mixture of the posteriors of K learned pseudo-inputs.

Tomczak & Welling (2018), "VAE with a VampPrior", AISTATS. The encoder
q(z|x) = N(mean, diag(exp(logvar))) and the decoder are a VAE's; the prior is
  p(z) = (1/K) sum_k q(z | u_k),
where u_1..u_K are K learned images (option `num_pseudo_inputs`, the paper's
500). log p(z) is computed as logsumexp_k log q(z|u_k) - log K, stable for any z.

Pseudo-inputs (option `pseudo_inputs`): "hardtanh" (default, the paper's):
u_k = clip(w_k, 0, 1) of a free parameter w (its hard-tanh of a bias-free
linear layer applied to one-hot rows, which is the same function), w
initialised N(0.05, 0.01) per pixel as in the paper's MNIST runs; pixels that
leave [0, 1] stop moving, as in the paper. "sigmoid": u_k = sigmoid(w_k), with
w initialised to the logit of the same N(0.05, 0.01) draw (clipped to
[0.001, 0.999]); every pixel keeps a gradient. Either way a pseudo-input is an
image in [0, 1] of the model's output shape.

Loss per image, nats (each (B,); the trainer takes the batch mean), with
k = config.objective.num_samples reparameterised draws z_i ~ q(z|x):
  log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x),
  recon = mean_i -log p(x|z_i)  (summed over pixels),
  kl = mean_i [log q(z_i|x) - log p(z_i)]  (a Monte Carlo estimate: no closed form),
  neg_elbo = recon + kl, neg_iwae_bound = -(logsumexp_i log w_i - log k),
  loss = recon + kl_weight * kl  (objective "elbo"; kl_weight is beta with its warm-up, the
    paper's linear KL warm-up is config.objective.kl_warmup_steps), or
  loss = neg_iwae_bound  (objective "iwae", Burda et al.'s L_k).
The per-pixel metrics (bce_per_pixel, mse_per_pixel, psnr) are means over the k
samples. Without a key (a deterministic evaluation pass) z is the posterior
mean, and kl is log q(mean|x) - log p(mean).

Networks (option `network`): "dense" and "conv" are aejax's
(models.build_networks: config.model.hidden_widths / conv_channels);
"gated" is the paper's MLP: gated dense layers h = (W x + b) * sigmoid(V x + c)
of config.model.hidden_widths (the paper: 300, 300) in the encoder and,
mirrored, in the decoder, then a linear layer.

Deviations from the paper: the encoder's log-variance is a linear output (the
paper bounds it with a hard-tanh to [-6, 2]); Flax's LeCun-normal
initialisation (the paper: He et al.'s); plain Adam (the paper's code
normalises the gradients of Adam, "AdamNormGrad"); no data-dependent
initialisation of the pseudo-inputs; no early stopping.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from aejax import errors, losses, models, networks
from aejax.autoencoder import LikelihoodScale, reconstruction_terms, resize_to
from aejax.zoo import options

_LOG_2PI = math.log(2.0 * math.pi)
NETWORKS = ("dense", "conv", "gated")
PSEUDO_INPUTS = ("hardtanh", "sigmoid")
# The paper's MNIST initialisation of the pseudo-inputs' pixels: N(0.05, 0.01).
PSEUDO_INPUT_INIT_MEAN = 0.05
PSEUDO_INPUT_INIT_STD = 0.01

DEFAULTS = {
  "num_pseudo_inputs": 500,  # K, the paper's MNIST value.
  "pseudo_inputs": "hardtanh",  # How the free parameters become images in [0, 1].
  "network": "dense",  # dense | conv (aejax's networks) | gated (the paper's MLP).
}


def log_normal_diag(z: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """log N(z; mean, diag(exp(logvar))), summed over the last axis; leading axes broadcast."""
  return -0.5 * jnp.sum(_LOG_2PI + logvar + jnp.square(z - mean) * jnp.exp(-logvar), axis=-1)


def log_normal_of_noise(eps: jax.Array, logvar: jax.Array) -> jax.Array:
  """log N(z; mean, diag(exp(logvar))) at z = mean + exp(logvar / 2) * eps, from eps itself.

  (z - mean) / std is eps exactly, so no rounding of z - mean enters.
  """
  return -0.5 * jnp.sum(_LOG_2PI + logvar + jnp.square(eps), axis=-1)


def log_mixture_density(
  z_NxD: jax.Array, means_KxD: jax.Array, logvars_KxD: jax.Array
) -> jax.Array:
  """log (1/K) sum_k N(z; means_k, diag(exp(logvars_k))) per row of z: (N,), nats.

  The log-sum-exp over the K components subtracts their largest log-density
  before exponentiating, so a z far from every component gives a large
  negative number, never -inf or NaN. The (N, K, D) differences are one fused
  elementwise-and-reduce: XLA need not hold them in memory.
  """
  log_components_NxK = log_normal_diag(z_NxD[:, None, :], means_KxD[None], logvars_KxD[None])
  return jax.nn.logsumexp(log_components_NxK, axis=-1) - math.log(means_KxD.shape[0])


def _init_pseudo_inputs(parameterisation: str):
  def init(key, shape):
    pixels = PSEUDO_INPUT_INIT_MEAN + PSEUDO_INPUT_INIT_STD * jax.random.normal(key, shape)
    if parameterisation == "sigmoid":
      pixels = jnp.clip(pixels, 1e-3, 1.0 - 1e-3)
      return jnp.log(pixels) - jnp.log1p(-pixels)
    return pixels

  return init


class PseudoInputs(nn.Module):
  """K learned images in [0, 1], (K, H, W, C): clip(w, 0, 1) ("hardtanh") or sigmoid(w)."""

  num_inputs: int
  image_shape: tuple[int, int, int]
  parameterisation: str = "hardtanh"

  @nn.compact
  def __call__(self) -> jax.Array:
    shape = (self.num_inputs, *self.image_shape)
    raw = self.param("raw", _init_pseudo_inputs(self.parameterisation), shape)
    if self.parameterisation == "sigmoid":
      return jax.nn.sigmoid(raw)
    return jnp.clip(raw, 0.0, 1.0)


class GatedDense(nn.Module):
  """(W h + b) * sigmoid(V h + c): the gated layer of the paper's MLPs (Dauphin et al., 2017)."""

  width: int
  dtype: Any = None

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:
    value = nn.Dense(self.width, dtype=self.dtype, name="value")(h)
    gate = nn.Dense(self.width, dtype=self.dtype, name="gate")(h)
    return value * nn.sigmoid(gate)


class GatedEncoder(nn.Module):
  """Flatten, gated dense layers of `widths`, then Dense(out_dim)."""

  widths: tuple[int, ...]
  out_dim: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    h = x_BxHxWxC.reshape(x_BxHxWxC.shape[0], -1)
    for width in self.widths:
      h = GatedDense(width, self.dtype)(h)
    return nn.Dense(self.out_dim, dtype=self.dtype)(h)


class GatedDecoder(nn.Module):
  """Gated dense layers of `widths`, then Dense to all pixels (logits), reshaped to the image."""

  widths: tuple[int, ...]
  output_shape: tuple[int, int, int]
  dtype: Any = None

  @nn.compact
  def __call__(self, z_BxD: jax.Array) -> jax.Array:
    h = z_BxD
    for width in self.widths:
      h = GatedDense(width, self.dtype)(h)
    h = nn.Dense(math.prod(self.output_shape), dtype=self.dtype)(h)
    return h.reshape(z_BxD.shape[0], *self.output_shape)


def check_pseudo_input_options(model_config, opts) -> None:
  options.check(
    opts["num_pseudo_inputs"] >= 1, model_config, "num_pseudo_inputs",
    f"must be >= 1, got {opts['num_pseudo_inputs']}",
  )  # fmt: skip
  options.check(
    opts["pseudo_inputs"] in PSEUDO_INPUTS, model_config, "pseudo_inputs",
    f"unknown parameterisation {opts['pseudo_inputs']!r}; valid: {', '.join(PSEUDO_INPUTS)}",
  )  # fmt: skip


def check_not_conditional(model_config) -> None:
  if int(model_config.get("num_classes", 0)):
    raise errors.ConfigError(
      f"config.model.num_classes: model {model_config.name!r} is not conditional; set it to 0"
    )


class VampVAE(nn.Module):
  """A VAE whose prior is the VampPrior (1/K) sum_k q(z | u_k); see the module docstring."""

  encoder: nn.Module  # image -> 2 * latent_dim numbers: mean, then log-variance.
  decoder: nn.Module  # latent -> logits.
  output_shape: tuple[int, int, int]
  latent_dim: int
  num_pseudo_inputs: int = 500
  pseudo_inputs: str = "hardtanh"
  likelihood_name: str = "bernoulli"  # config.model.likelihood, for the hooks (no config there).
  learn_log_scale: bool = False
  init_log_scale: float = 0.0

  is_variational = True
  num_classes = 0  # Not conditional: label arguments are accepted and ignored.

  def setup(self):
    self.pseudo = PseudoInputs(self.num_pseudo_inputs, self.output_shape, self.pseudo_inputs)
    if self.learn_log_scale:
      # Named "likelihood" like the core families': objectives.likelihood_log_scale reads it.
      self.likelihood = LikelihoodScale(self.init_log_scale)

  def encode(self, x_BxHxWxC: jax.Array, label_B: jax.Array | None = None) -> dict[str, jax.Array]:
    del label_B
    h = self.encoder(resize_to(x_BxHxWxC, self.output_shape)).astype(jnp.float32)
    mean, logvar = jnp.split(h, 2, axis=-1)
    return {"mean": mean, "logvar": logvar}

  def decode(self, z_BxD: jax.Array, label_B: jax.Array | None = None) -> jax.Array:
    del label_B
    return self.decoder(z_BxD).astype(jnp.float32)

  def prior_components(self) -> tuple[jax.Array, jax.Array]:
    """The means and log-variances (K, D) of q(z | u_k), the prior's components."""
    codes = self.encode(self.pseudo())
    return codes["mean"], codes["logvar"]

  def log_prior(self, z_NxD: jax.Array) -> jax.Array:
    """log p(z) = logsumexp_k log q(z | u_k) - log K per row: (N,), nats."""
    return log_mixture_density(z_NxD, *self.prior_components())

  def _log_scale(self, config=None) -> jax.Array:
    if self.learn_log_scale:
      return self.likelihood()
    value = self.init_log_scale if config is None else config.model.log_scale
    return jnp.asarray(value, jnp.float32)

  def __call__(
    self, x_BxHxWxC: jax.Array, key: jax.Array | None = None, label_B: jax.Array | None = None
  ) -> dict[str, jax.Array]:
    """With a key, z is a reparameterised draw from q(z|x); without, the posterior mean.

    Creates every parameter (encoder, decoder, pseudo-inputs, the learned scale).
    """
    out = self.encode(x_BxHxWxC)
    if key is None:
      out["z"] = out["mean"]
    else:
      out["z"] = losses.sample_gaussian(key, out["mean"], out["logvar"])
    out["logits"] = self.decode(out["z"])
    out["log_prior"] = self.log_prior(out["z"])
    if self.learn_log_scale:
      out["log_scale"] = self.likelihood()
    return out

  def _log_weight_parts(self, mean_BxD, logvar_BxD, eps_KxBxD, target, likelihood, log_scale):
    """The per-sample parts of log w for z_i = mean + std * eps_i: (K, B) each, and logits."""
    k, batch_size, latent_dim = eps_KxBxD.shape
    z_KxBxD = mean_BxD[None] + jnp.exp(0.5 * logvar_BxD[None]) * eps_KxBxD
    z_NxD = z_KxBxD.reshape(k * batch_size, latent_dim)
    logits = self.decode(z_NxD)
    targets = jnp.broadcast_to(target[None], (k, *target.shape)).reshape(
      k * batch_size, *target.shape[1:]
    )
    terms = reconstruction_terms(logits, targets, likelihood, log_scale)
    terms = {name: value.reshape(k, batch_size) for name, value in terms.items()}
    terms["log_qz"] = log_normal_of_noise(eps_KxBxD, logvar_BxD[None])
    terms["log_pz"] = self.log_prior(z_NxD).reshape(k, batch_size)
    return terms

  def losses(self, batch, key, config, kl_weight) -> dict[str, jax.Array]:
    """Loss terms per image, (B,) each, nats per image (per pixel for *_per_pixel, dB for psnr).

    See the module docstring; z_i = mean + std * eps_i with eps = normal(key, (k, B, D)).
    """
    k = config.objective.num_samples
    post = self.encode(batch["input"])
    mean_BxD, logvar_BxD = post["mean"], post["logvar"]
    shape = (k, *mean_BxD.shape)
    if key is None:
      eps_KxBxD = jnp.zeros(shape, mean_BxD.dtype)
    else:
      eps_KxBxD = jax.random.normal(key, shape, mean_BxD.dtype)
    parts = self._log_weight_parts(
      mean_BxD, logvar_BxD, eps_KxBxD, batch["target"], config.model.likelihood,
      self._log_scale(config),
    )  # fmt: skip
    kl_KxB = parts["log_qz"] - parts["log_pz"]
    log_w_KxB = -parts["recon"] - kl_KxB
    neg_iwae_B = -(jax.nn.logsumexp(log_w_KxB, axis=0) - math.log(k))
    recon_B, kl_B = parts["recon"].mean(axis=0), kl_KxB.mean(axis=0)
    if config.objective.name == "iwae":
      loss_B = neg_iwae_B
    else:
      loss_B = recon_B + kl_weight * kl_B
    terms = {name: parts[name].mean(axis=0) for name in ("bce_per_pixel", "mse_per_pixel", "psnr")}
    terms.update(
      recon=recon_B, kl=kl_B, neg_elbo=recon_B + kl_B, neg_iwae_bound=neg_iwae_B, loss=loss_B
    )
    return terms

  def log_weight_terms(self, codes, target, label_B, key) -> dict[str, jax.Array]:
    """One draw z ~ q(z|x) (eps = normal(key, (1, B, D))): log p(x|z) and log p(z) - log q(z|x)."""
    del label_B
    mean_BxD, logvar_BxD = codes["mean"], codes["logvar"]
    shape = (1, *mean_BxD.shape)
    if key is None:
      eps = jnp.zeros(shape, mean_BxD.dtype)
    else:
      eps = jax.random.normal(key, shape, mean_BxD.dtype)
    parts = self._log_weight_parts(
      mean_BxD, logvar_BxD, eps, target, self.likelihood_name, self._log_scale()
    )
    return {
      "log_px_given_z": -parts["recon"][0],
      "log_pz_minus_log_qz": (parts["log_pz"] - parts["log_qz"])[0],
    }

  def sample(self, key, num_samples: int, label_B=None) -> jax.Array:
    """Logits of `num_samples` images: k uniform over the pseudo-inputs, z ~ q(z|u_k), decoded."""
    del label_B
    key_component, key_z = jax.random.split(key)
    means_KxD, logvars_KxD = self.prior_components()
    index_N = jax.random.randint(key_component, (num_samples,), 0, self.num_pseudo_inputs)
    eps_NxD = jax.random.normal(key_z, (num_samples, self.latent_dim), means_KxD.dtype)
    z_NxD = means_KxD[index_N] + jnp.exp(0.5 * logvars_KxD[index_N]) * eps_NxD
    return self.decode(z_NxD)


def build(model_config, image_shape) -> VampVAE:
  """The VampPrior VAE of `model_config` (options: num_pseudo_inputs, pseudo_inputs, network)."""
  opts = options.read_options(model_config, DEFAULTS)
  check_pseudo_input_options(model_config, opts)
  options.check(
    opts["network"] in NETWORKS, model_config, "network",
    f"unknown network {opts['network']!r}; valid: {', '.join(NETWORKS)}",
  )  # fmt: skip
  check_not_conditional(model_config)
  image_shape = tuple(image_shape)
  out_dim = 2 * model_config.latent_dim
  if opts["network"] == "gated":
    widths = tuple(model_config.hidden_widths)
    dtype = networks.get_dtype(model_config.get("dtype", "float32"))
    encoder = GatedEncoder(widths, out_dim, dtype)
    decoder = GatedDecoder(tuple(reversed(widths)), image_shape, dtype)
  else:
    encoder, decoder = models.build_networks(
      model_config, image_shape, out_dim, opts["network"], model_config.name
    )
  return VampVAE(
    encoder=encoder,
    decoder=decoder,
    output_shape=image_shape,
    latent_dim=model_config.latent_dim,
    num_pseudo_inputs=opts["num_pseudo_inputs"],
    pseudo_inputs=opts["pseudo_inputs"],
    likelihood_name=model_config.likelihood,
    learn_log_scale=bool(model_config.get("learn_log_scale", False)),
    init_log_scale=float(model_config.get("log_scale", 0.0)),
  )
