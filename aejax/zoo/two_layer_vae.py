"""The VAE with two stochastic layers of Burda, Grosse & Salakhutdinov (2016), section 5.

"Importance Weighted Autoencoders", ICLR 2016: the architecture
784-(200-200)-100-(100-100)-50 with tanh deterministic layers,
  inference  q(z1|x) q(z2|z1),   generative  p(z2) p(z1|z2) p(x|z1),
every q and p(z1|z2) a diagonal Gaussian N(mean, diag(exp(logvar))) whose mean
and log-variance are the two halves of an MLP's output, p(z2) = N(0, I) and
p(x|z1) Bernoulli (or aejax's Gaussian). Options: `hidden1` (the x <-> z1
MLPs, (200, 200)), `hidden2` (the z1 <-> z2 MLPs, (100, 100)), `z1_dim` (100);
z2 has config.model.latent_dim units (the paper's 50); the activation is
config.model.activation (the paper's tanh); the generative MLPs mirror the
inference ones. `network` "conv" replaces the x <-> z1 MLPs by aejax's
convolutional pair (config.model.conv_channels).

Loss per image, nats (each (B,); the trainer takes the batch mean), with
k = config.objective.num_samples draws (z1_i ~ q(z1|x), z2_i ~ q(z2|z1_i)):
  log w_i = log p(x|z1_i) + log p(z1_i|z2_i) + log p(z2_i) - log q(z1_i|x) - log q(z2_i|z1_i),
  recon = mean_i -log p(x|z1_i)  (summed over pixels),
  kl = mean_i [log q(z1_i|x) + log q(z2_i|z1_i) - log p(z1_i|z2_i) - log p(z2_i)]  (Monte Carlo),
  neg_elbo = recon + kl, neg_iwae_bound = -(logsumexp_i log w_i - log k),
  loss = recon + kl_weight * kl  (objective "elbo": the k-sample VAE objective), or
  loss = neg_iwae_bound  (objective "iwae": L_k).
Every term is Monte Carlo (no part of the KL is analytic, unlike aejax's
one-layer VAE); the per-pixel metrics are means over the k samples. Without a
key (a deterministic evaluation pass) every draw is its distribution's mean.

The contract's single latent is z2, the top one:
- `encode(x)` returns "mean"/"logvar" of q(z2 | z1 = the mean of q(z1|x)),
  the posterior of z2 along the deterministic path (plus "z1_mean" and
  "z1_logvar" of q(z1|x), which `log_weight_terms` draws from);
- `decode(z2)` returns the logits of p(x | z1 = the mean of p(z1|z2));
- `sample` draws the whole generative model: z2 ~ p(z2), z1 ~ p(z1|z2), the
  logits of p(x|z1);
- `log_weight_terms` gives log p(x|z1) and the rest of the full log w above.

Option `prior` "vamp": p(z2) is a VampPrior on the top latent (Tomczak &
Welling, 2018, "VAE with a VampPrior"; aejax/zoo/vamp_vae.py), here
  p(z2) = (1/K) sum_k q(z2 | z1 = m1(u_k)),
m1(u) the mean of q(z1|u) of the pseudo-input u_k: each pseudo-input is
passed through the inference path deterministically, and the component is
the Gaussian q(z2|.) there. It is an exact mixture density (so every bound
stays a bound), but not Tomczak & Welling's HVAE, whose inference model is
q(z2|x) q(z1|x, z2), so that q(z2|u_k) is their exact component. Options
`num_pseudo_inputs` and `pseudo_inputs` as in vamp_vae.

Deviations from Burda et al.: Flax's LeCun-normal initialisation (the paper:
Glorot & Bengio's heuristic); the networks predict log-variances (the paper
exponentiated a linear output for the standard deviation).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from aejax import losses, models, networks
from aejax.autoencoder import LikelihoodScale, reconstruction_terms, resize_to
from aejax.zoo import options
from aejax.zoo.vamp_vae import (
  PseudoInputs,
  check_not_conditional,
  check_pseudo_input_options,
  log_mixture_density,
  log_normal_diag,
  log_normal_of_noise,
)

_LOG_2PI = math.log(2.0 * math.pi)
PRIORS = ("normal", "vamp")
NETWORKS = ("dense", "conv")

DEFAULTS = {
  "hidden1": (200, 200),  # x <-> z1 deterministic layers (the paper's).
  "hidden2": (100, 100),  # z1 <-> z2 deterministic layers (the paper's).
  "z1_dim": 100,  # z2 is config.model.latent_dim (the paper's 50).
  "prior": "normal",  # p(z2): "normal" N(0, I) or "vamp" (see the module docstring).
  "num_pseudo_inputs": 500,  # prior "vamp" only.
  "pseudo_inputs": "hardtanh",  # prior "vamp" only: as in vamp_vae.
  "network": "dense",  # The x <-> z1 networks: dense (hidden1) or conv (conv_channels).
}


def _split(h: jax.Array) -> tuple[jax.Array, jax.Array]:
  mean, logvar = jnp.split(h.astype(jnp.float32), 2, axis=-1)
  return mean, logvar


class TwoLayerVAE(nn.Module):
  """q(z1|x) q(z2|z1), p(z2) p(z1|z2) p(x|z1); see the module docstring."""

  encoder_z1: nn.Module  # x -> 2 * z1_dim: mean and log-variance of q(z1|x).
  encoder_z2: nn.Module  # z1 -> 2 * latent_dim: q(z2|z1).
  decoder_z1: nn.Module  # z2 -> 2 * z1_dim: p(z1|z2).
  decoder_x: nn.Module  # z1 -> logits of p(x|z1).
  output_shape: tuple[int, int, int]
  latent_dim: int  # z2.
  z1_dim: int
  prior: str = "normal"
  num_pseudo_inputs: int = 500
  pseudo_inputs: str = "hardtanh"
  likelihood_name: str = "bernoulli"  # config.model.likelihood, for the hooks (no config there).
  learn_log_scale: bool = False
  init_log_scale: float = 0.0

  is_variational = True
  num_classes = 0  # Not conditional: label arguments are accepted and ignored.

  def setup(self):
    if self.prior == "vamp":
      self.pseudo = PseudoInputs(self.num_pseudo_inputs, self.output_shape, self.pseudo_inputs)
    if self.learn_log_scale:
      # Named "likelihood" like the core families': objectives.likelihood_log_scale reads it.
      self.likelihood = LikelihoodScale(self.init_log_scale)

  # -- the four conditionals ---------------------------------------------

  def q_z1(self, x_BxHxWxC: jax.Array) -> tuple[jax.Array, jax.Array]:
    return _split(self.encoder_z1(resize_to(x_BxHxWxC, self.output_shape)))

  def q_z2(self, z1_BxD1: jax.Array) -> tuple[jax.Array, jax.Array]:
    return _split(self.encoder_z2(z1_BxD1))

  def p_z1(self, z2_BxD2: jax.Array) -> tuple[jax.Array, jax.Array]:
    return _split(self.decoder_z1(z2_BxD2))

  def p_x(self, z1_BxD1: jax.Array) -> jax.Array:
    return self.decoder_x(z1_BxD1).astype(jnp.float32)

  def prior_components(self) -> tuple[jax.Array, jax.Array]:
    """prior "vamp": means and log-variances (K, latent_dim) of q(z2 | z1 = mean of q(z1|u_k))."""
    mean1_KxD1, _ = self.q_z1(self.pseudo())
    return self.q_z2(mean1_KxD1)

  def log_prior(self, z2_NxD2: jax.Array) -> jax.Array:
    """log p(z2) per row: (N,), nats."""
    if self.prior == "vamp":
      return log_mixture_density(z2_NxD2, *self.prior_components())
    return -0.5 * jnp.sum(_LOG_2PI + jnp.square(z2_NxD2), axis=-1)

  def _log_scale(self, config=None) -> jax.Array:
    if self.learn_log_scale:
      return self.likelihood()
    value = self.init_log_scale if config is None else config.model.log_scale
    return jnp.asarray(value, jnp.float32)

  # -- the contract -------------------------------------------------------

  def encode(self, x_BxHxWxC: jax.Array, label_B: jax.Array | None = None) -> dict[str, jax.Array]:
    """q(z2 | z1 = mean of q(z1|x)) as "mean"/"logvar", and q(z1|x) as "z1_mean"/"z1_logvar"."""
    del label_B
    mean1, logvar1 = self.q_z1(x_BxHxWxC)
    mean2, logvar2 = self.q_z2(mean1)
    return {"mean": mean2, "logvar": logvar2, "z1_mean": mean1, "z1_logvar": logvar1}

  def decode(self, z2_BxD2: jax.Array, label_B: jax.Array | None = None) -> jax.Array:
    """Logits of p(x | z1 = mean of p(z1|z2))."""
    del label_B
    mean1, _ = self.p_z1(z2_BxD2)
    return self.p_x(mean1)

  def __call__(
    self, x_BxHxWxC: jax.Array, key: jax.Array | None = None, label_B: jax.Array | None = None
  ) -> dict[str, jax.Array]:
    """Without a key: "logits" = decode(encode(x)["mean"]), the API's reconstruction. With one:
    z1 ~ q(z1|x), z2 ~ q(z2|z1), "logits" of p(x|z1). Creates every parameter."""
    out = self.encode(x_BxHxWxC)
    if key is None:
      z1, z2 = out["z1_mean"], out["mean"]
      out["logits"] = self.decode(z2)
    else:
      key1, key2 = jax.random.split(key)
      z1 = losses.sample_gaussian(key1, out["z1_mean"], out["z1_logvar"])
      z2 = losses.sample_gaussian(key2, *self.q_z2(z1))
      out["logits"] = self.p_x(z1)
      out["prior_z1_mean"], out["prior_z1_logvar"] = self.p_z1(z2)
    out["z1"], out["z"] = z1, z2
    out["log_prior"] = self.log_prior(z2)
    if self.learn_log_scale:
      out["log_scale"] = self.likelihood()
    return out

  def noise(self, key, k: int, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """eps1 (k, B, z1_dim) and eps2 (k, B, latent_dim): normal(split(key)[i]); zeros if no key."""
    shape1, shape2 = (k, batch_size, self.z1_dim), (k, batch_size, self.latent_dim)
    if key is None:
      return jnp.zeros(shape1, jnp.float32), jnp.zeros(shape2, jnp.float32)
    key1, key2 = jax.random.split(key)
    return jax.random.normal(key1, shape1), jax.random.normal(key2, shape2)

  def log_weight_parts(
    self, mean1_BxD1, logvar1_BxD1, eps1_KxBxD1, eps2_KxBxD2, target, likelihood, log_scale
  ) -> dict[str, jax.Array]:
    """The parts of log w of z1_i = mean1 + std1 * eps1_i, z2_i = mean2(z1_i) + std2 * eps2_i.

    (K, B) each: recon (-log p(x|z1)), the per-pixel metrics, log_qz1, log_qz2,
    log_pz1 (log p(z1|z2)), log_pz2.
    """
    k, batch_size, _ = eps1_KxBxD1.shape
    z1_KxBxD1 = mean1_BxD1[None] + jnp.exp(0.5 * logvar1_BxD1[None]) * eps1_KxBxD1
    z1_NxD1 = z1_KxBxD1.reshape(k * batch_size, self.z1_dim)
    eps2_NxD2 = eps2_KxBxD2.reshape(k * batch_size, self.latent_dim)
    mean2_NxD2, logvar2_NxD2 = self.q_z2(z1_NxD1)
    z2_NxD2 = mean2_NxD2 + jnp.exp(0.5 * logvar2_NxD2) * eps2_NxD2
    prior_mean1_NxD1, prior_logvar1_NxD1 = self.p_z1(z2_NxD2)
    targets = jnp.broadcast_to(target[None], (k, *target.shape)).reshape(
      k * batch_size, *target.shape[1:]
    )
    parts = reconstruction_terms(self.p_x(z1_NxD1), targets, likelihood, log_scale)
    parts["log_qz2"] = log_normal_of_noise(eps2_NxD2, logvar2_NxD2)
    parts["log_pz1"] = log_normal_diag(z1_NxD1, prior_mean1_NxD1, prior_logvar1_NxD1)
    parts["log_pz2"] = self.log_prior(z2_NxD2)
    parts = {name: value.reshape(k, batch_size) for name, value in parts.items()}
    parts["log_qz1"] = log_normal_of_noise(eps1_KxBxD1, logvar1_BxD1[None])
    return parts

  def losses(self, batch, key, config, kl_weight) -> dict[str, jax.Array]:
    """Loss terms per image, (B,) each, nats per image (per pixel for *_per_pixel, dB for psnr).

    See the module docstring; the noise is `noise(key, k, B)`.
    """
    k = config.objective.num_samples
    mean1, logvar1 = self.q_z1(batch["input"])
    eps1, eps2 = self.noise(key, k, mean1.shape[0])
    parts = self.log_weight_parts(
      mean1, logvar1, eps1, eps2, batch["target"], config.model.likelihood,
      self._log_scale(config),
    )  # fmt: skip
    kl_KxB = parts["log_qz1"] + parts["log_qz2"] - parts["log_pz1"] - parts["log_pz2"]
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
    """One draw (noise(key, 1, B)): log p(x|z1), and log p(z1|z2) + log p(z2) - log q(z1, z2|x)."""
    del label_B
    mean1, logvar1 = codes["z1_mean"], codes["z1_logvar"]
    eps1, eps2 = self.noise(key, 1, mean1.shape[0])
    parts = self.log_weight_parts(
      mean1, logvar1, eps1, eps2, target, self.likelihood_name, self._log_scale()
    )
    rest = parts["log_pz1"] + parts["log_pz2"] - parts["log_qz1"] - parts["log_qz2"]
    return {"log_px_given_z": -parts["recon"][0], "log_pz_minus_log_qz": rest[0]}

  def sample(self, key, num_samples: int, label_B=None) -> jax.Array:
    """Logits of p(x|z1) for z2 ~ p(z2), z1 ~ p(z1|z2): (N, H, W, C)."""
    del label_B
    key_component, key_z2, key_z1 = jax.random.split(key, 3)
    eps2_NxD2 = jax.random.normal(key_z2, (num_samples, self.latent_dim))
    if self.prior == "vamp":
      means_KxD2, logvars_KxD2 = self.prior_components()
      index_N = jax.random.randint(key_component, (num_samples,), 0, self.num_pseudo_inputs)
      z2_NxD2 = means_KxD2[index_N] + jnp.exp(0.5 * logvars_KxD2[index_N]) * eps2_NxD2
    else:
      z2_NxD2 = eps2_NxD2
    mean1, logvar1 = self.p_z1(z2_NxD2)
    return self.p_x(losses.sample_gaussian(key_z1, mean1, logvar1))


def _check_widths(model_config, opts, name: str) -> None:
  widths = opts[name]
  ok = all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths)
  options.check(ok, model_config, name, f"must be a sequence of integers >= 1, got {widths!r}")


def build(model_config, image_shape) -> TwoLayerVAE:
  """The two-stochastic-layer VAE of `model_config` (options: see DEFAULTS)."""
  opts = options.read_options(model_config, DEFAULTS)
  _check_widths(model_config, opts, "hidden1")
  _check_widths(model_config, opts, "hidden2")
  options.check(opts["z1_dim"] >= 1, model_config, "z1_dim", f"must be >= 1, got {opts['z1_dim']}")
  options.check(
    opts["prior"] in PRIORS, model_config, "prior",
    f"unknown prior {opts['prior']!r}; valid: {', '.join(PRIORS)}",
  )  # fmt: skip
  options.check(
    opts["network"] in NETWORKS, model_config, "network",
    f"unknown network {opts['network']!r}; valid: {', '.join(NETWORKS)}",
  )  # fmt: skip
  check_pseudo_input_options(model_config, opts)
  check_not_conditional(model_config)
  image_shape = tuple(image_shape)
  activation = model_config.activation
  dtype = networks.get_dtype(model_config.get("dtype", "float32"))
  z1_dim, z2_dim = opts["z1_dim"], model_config.latent_dim
  hidden1, hidden2 = tuple(opts["hidden1"]), tuple(opts["hidden2"])
  if opts["network"] == "conv":
    encoder_z1, decoder_x = models.build_networks(
      model_config, image_shape, 2 * z1_dim, "conv", model_config.name
    )
  else:
    encoder_z1 = networks.DenseEncoder(hidden1, 2 * z1_dim, activation, dtype=dtype)
    decoder_x = networks.DenseDecoder(hidden1[::-1], image_shape, activation, dtype=dtype)
  return TwoLayerVAE(
    encoder_z1=encoder_z1,
    encoder_z2=networks.DenseEncoder(hidden2, 2 * z2_dim, activation, dtype=dtype),
    decoder_z1=networks.DenseEncoder(hidden2[::-1], 2 * z1_dim, activation, dtype=dtype),
    decoder_x=decoder_x,
    output_shape=image_shape,
    latent_dim=z2_dim,
    z1_dim=z1_dim,
    prior=opts["prior"],
    num_pseudo_inputs=opts["num_pseudo_inputs"],
    pseudo_inputs=opts["pseudo_inputs"],
    likelihood_name=model_config.likelihood,
    learn_log_scale=bool(model_config.get("learn_log_scale", False)),
    init_log_scale=float(model_config.get("log_scale", 0.0)),
  )
