"""FactorVAE: a VAE whose codes are pushed to a factorial distribution by a density-ratio critic.

Kim & Mnih (2018), "Disentangling by Factorising" (ICML; arXiv 1802.05983),
Eq. 2, as disentanglement_lib implements it (Locatello et al. 2019). A VAE
(q(z|x) = N(mean, diag(exp(logvar))), prior N(0, I)) is penalised by the total
correlation TC(z) = KL(q(z) || prod_j q(z_j)) of its aggregate posterior q(z),
estimated with a discriminator D: z (D,) -> two logits (class 0: a code
z ~ q(z); class 1: a draw of prod_j q(z_j)). Since D's log-odds estimate
log q(z) / prod_j q(z_j),

  TC_hat(z_i) = D(z_i)[0] - D(z_i)[1]                        (nats),

and the two players descend, per image i (each (B,)):

  loss               = recon_i + kl_weight * kl_i + gamma * TC_hat(z_i),
  loss_discriminator = 0.5 * (-log softmax(D(z_i))[0] - log softmax(D(zperm_i))[1]),

with z_i = mean_i + exp(logvar_i / 2) * eps_i one reparameterised draw,
`recon` the reconstruction NLL (nats per image, summed over pixels), `kl` the
analytic KL(q(z|x_i) || N(0, I)) summed over the latent dimensions, and
zperm = permute_dims(z): each latent dimension (column) of the batch's codes
permuted independently across the batch, which draws from prod_j q(z_j) (Kim
& Mnih's permute_dims). kl_weight is config.objective.beta with its warm-up (1
in disentanglement_lib, which has no beta here). The batch means of the two
terms are dlib's `factor_VAE_loss` and minus its `discriminator_loss`.

Who trains on what: the discriminator is the extra parameter group
"discriminator" (aejax/steps.py: it descends `loss_discriminator` with its own
optimizer state, the rest descends `loss`). Both directions are also cut in
the model, so the gradients are exactly zero, not merely dropped: `loss` sees
D's parameters through a stop-gradient (the VAE cannot move D), and
`loss_discriminator` sees stop-gradient codes (D cannot move the encoder).
Other terms: `neg_elbo` = recon + kl; `tc_estimate` = TC_hat; and
`discriminator_accuracy` (a fraction, not nats) = 0.5 * ([D(z_i) says class 0]
+ [D(zperm_i) says class 1]), 0.5 when D cannot tell them apart.

Keys: the step's key is split into the draw of z and the permutations; with no
key (a deterministic pass) z is the posterior mean and the permutations use
jax.random.key(0). The permutations mix the whole (global) batch; in
evaluation the last, padded batch counts its padding images among the codes
that are permuted (the model does not see the mask).

Options (`config.model.options`): `network` (any of models.build_networks',
e.g. "dlib_conv" for dlib's 64x64 networks, "dense"); `gamma` (default 10.0:
disentanglement_lib has no default (gin.REQUIRED); 10 is the smallest value of
its study's grid {10, 20, 30, 40, 50, 100}, unsupervised_study_v1/sweep.py);
`discriminator_widths` (default six hidden layers of 1000 units, dlib's
fc_discriminator after Kim & Mnih's Appendix A), each followed by a leaky ReLU
of slope 0.2 (TensorFlow's default, which dlib uses), then a dense layer to the
two logits; Glorot-uniform kernels, as TensorFlow's dense layers in dlib.

Deviations from disentanglement_lib: dlib clips D's probabilities to
[1e-6, 1 - 1e-6] before the log in the discriminator's loss; here the
cross-entropy is the exact log-softmax (no clipping, so no zero gradient for a
confident D). As in dlib, the discriminator has its own Adam (options
`discriminator_learning_rate` 1e-4, `discriminator_b1` 0.5, `discriminator_b2`
0.9, on a constant schedule: `group_optimizer`), the VAE config.optimizer.
Both players take one simultaneous step on the same batch, as in
dlib (Kim & Mnih's training algorithm, as we read it, permutes the codes of a
second batch).
Only the one-sample ELBO objective (objective.name "elbo", num_samples 1).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from aejax import errors, losses, models, networks
from aejax.autoencoder import reconstruction_terms
from aejax.vae import VAE
from aejax.zoo import options

# TensorFlow's tf.nn.leaky_relu default slope, which dlib's fc_discriminator uses (Flax's: 0.01).
LEAKY_RELU_SLOPE = 0.2
DEFAULTS = {
  "network": "dense",
  "gamma": 10.0,
  "discriminator_widths": (1000,) * 6,
  # dlib's discriminator_optimizer: Adam, lr 1e-4, beta1 0.5, beta2 0.9 (Kim & Mnih, App. A).
  "discriminator_learning_rate": 1e-4,
  "discriminator_b1": 0.5,
  "discriminator_b2": 0.9,
}


def permute_dims(key: jax.Array, z_BxD: jax.Array) -> jax.Array:
  """Each column of z permuted independently across the batch: (B, D).

  Column j is z[perm_j, j] with perm_j = jax.random.permutation(keys[j], B)
  and keys = jax.random.split(key, D). Every column keeps its values (so each
  marginal q(z_j) is kept) while the rows are mixed (so the dependence between
  dimensions is broken): a draw of prod_j q(z_j).
  """
  if z_BxD.ndim != 2:
    raise ValueError(f"z_BxD: expected a (B, D) array of codes, got shape {z_BxD.shape}")
  batch_size, latent_dim = z_BxD.shape
  keys_D = jax.random.split(key, latent_dim)
  perm_DxB = jax.vmap(lambda k: jax.random.permutation(k, batch_size))(keys_D)
  return jnp.take_along_axis(z_BxD, perm_DxB.T, axis=0)


def discriminator_terms(
  code_logits_Bx2: jax.Array, permuted_logits_Bx2: jax.Array
) -> dict[str, jax.Array]:
  """The discriminator's cross-entropy (nats) and accuracy per image, (B,) each.

  Class 0 is a code z ~ q(z), class 1 a permuted code ~ prod_j q(z_j).
  """
  log_p_code_Bx2 = jax.nn.log_softmax(code_logits_Bx2, axis=-1)
  log_p_permuted_Bx2 = jax.nn.log_softmax(permuted_logits_Bx2, axis=-1)
  loss_B = -0.5 * (log_p_code_Bx2[:, 0] + log_p_permuted_Bx2[:, 1])
  right_code_B = code_logits_Bx2[:, 0] > code_logits_Bx2[:, 1]
  right_permuted_B = permuted_logits_Bx2[:, 1] > permuted_logits_Bx2[:, 0]
  accuracy_B = 0.5 * (right_code_B.astype(jnp.float32) + right_permuted_B.astype(jnp.float32))
  return {"loss_discriminator": loss_B, "discriminator_accuracy": accuracy_B}


class Discriminator(nn.Module):
  """z (B, D) -> logits (B, 2): dense layers of `widths` with leaky ReLUs, then Dense(2).

  Glorot-uniform kernels and zero biases: TensorFlow's defaults, which dlib kept.
  """

  widths: tuple[int, ...]
  negative_slope: float = LEAKY_RELU_SLOPE
  dtype: object = None

  @nn.compact
  def __call__(self, z_BxD: jax.Array) -> jax.Array:
    dense = functools.partial(
      nn.Dense, dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform()
    )
    h = z_BxD
    for width in self.widths:
      h = nn.leaky_relu(dense(width)(h), self.negative_slope)
    return dense(2)(h).astype(jnp.float32)


class FactorVAE(VAE):
  """aejax's VAE plus a discriminator on its codes in its own parameter group; see the module."""

  discriminator: nn.Module | None = None
  gamma: float = 10.0
  discriminator_learning_rate: float = 1e-4
  discriminator_b1: float = 0.5
  discriminator_b2: float = 0.9

  extra_param_groups: tuple[str, ...] = ("discriminator",)  # Descends loss_discriminator.

  def group_optimizer(self, group: str) -> dict:
    """The discriminator's own Adam: the config.optimizer fields steps.make_optimizer replaces."""
    if group != "discriminator":
      return {}
    return {
      "name": "adam", "schedule": "constant", "learning_rate": self.discriminator_learning_rate,
      "b1": self.discriminator_b1, "b2": self.discriminator_b2,
    }  # fmt: skip

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, key=None, label_B=None) -> dict[str, jax.Array]:
    """The VAE's outputs and the discriminator's logits on z (which creates its parameters)."""
    out = super().__call__(x_BxHxWxC, key, label_B)
    out["discriminator_logits"] = self.discriminator(out["z"])
    return out

  def _frozen_discriminator(self, z_BxD: jax.Array) -> jax.Array:
    """D(z) through a stop-gradient of D's parameters: the VAE's loss cannot move D."""
    params = jax.lax.stop_gradient(self.variables["params"]["discriminator"])
    # An unbound copy applied to the frozen parameters: the same function, no gradient path.
    return self.discriminator.clone(parent=None).apply({"params": params}, z_BxD)

  def losses(self, batch, key, config, kl_weight) -> dict[str, jax.Array]:
    """Per image, (B,): see the module docstring (nats; discriminator_accuracy a fraction)."""
    if config.objective.name != "elbo" or config.objective.num_samples != 1:
      raise errors.ConfigError(
        f"config.objective: model {config.model.name!r} trains on the one-sample ELBO; got "
        f"name {config.objective.name!r} with num_samples {config.objective.num_samples}"
      )
    post = self.encode(batch["input"])
    mean_BxD, logvar_BxD = post["mean"], post["logvar"]
    if key is None:
      z_BxD, permutation_key = mean_BxD, jax.random.key(0)
    else:
      sample_key, permutation_key = jax.random.split(key)
      z_BxD = losses.sample_gaussian(sample_key, mean_BxD, logvar_BxD)
    out = {"logits": self.decode(z_BxD)}
    if self.learn_log_scale:
      out["log_scale"] = self.variables["params"]["likelihood"]["log_scale"]
    terms = reconstruction_terms(
      out["logits"], batch["target"], config.model.likelihood, self.log_scale(out, config)
    )
    kl_B = losses.gaussian_kl(mean_BxD, logvar_BxD).sum(axis=-1)
    tc_logits_Bx2 = self._frozen_discriminator(z_BxD)
    tc_B = tc_logits_Bx2[:, 0] - tc_logits_Bx2[:, 1]
    # The discriminator learns from the codes without moving the encoder.
    code_BxD = jax.lax.stop_gradient(z_BxD)
    permuted_BxD = permute_dims(permutation_key, code_BxD)
    terms.update(
      discriminator_terms(self.discriminator(code_BxD), self.discriminator(permuted_BxD))
    )
    terms.update(
      kl=kl_B,
      tc_estimate=tc_B,
      neg_elbo=terms["recon"] + kl_B,
      loss=terms["recon"] + kl_weight * kl_B + self.gamma * tc_B,
    )
    return terms


def check_positive_widths(model_config, name: str, widths) -> None:
  options.check(
    len(widths) > 0
    and all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths),
    model_config,
    name,
    f"must be a non-empty list of positive integers, got {widths!r}",
  )


def build(model_config, image_shape) -> FactorVAE:
  """The FactorVAE of `model_config` (options: network, gamma, discriminator_widths)."""
  opts = options.read_options(model_config, DEFAULTS)
  gamma = opts["gamma"]
  options.check(gamma >= 0.0, model_config, "gamma", f"must be >= 0, got {gamma}")
  check_positive_widths(model_config, "discriminator_widths", opts["discriminator_widths"])
  rate = opts["discriminator_learning_rate"]
  options.check(rate > 0.0, model_config, "discriminator_learning_rate", f"must be > 0, got {rate}")
  for name in ("discriminator_b1", "discriminator_b2"):
    options.check(
      0.0 <= opts[name] < 1.0, model_config, name, f"must lie in [0, 1), got {opts[name]}"
    )
  if int(model_config.get("num_classes", 0)):
    raise errors.ConfigError(
      f"config.model.num_classes: model {model_config.name!r} is not conditional; set it to 0"
    )
  encoder, decoder = models.build_networks(
    model_config, image_shape, 2 * model_config.latent_dim, opts["network"], model_config.name
  )
  dtype = networks.get_dtype(model_config.get("dtype", "float32"))
  return FactorVAE(
    encoder=encoder,
    decoder=decoder,
    output_shape=tuple(image_shape),
    learn_log_scale=bool(model_config.get("learn_log_scale", False)),
    init_log_scale=float(model_config.get("log_scale", 0.0)),
    latent_dim=int(model_config.latent_dim),
    discriminator=Discriminator(tuple(int(w) for w in opts["discriminator_widths"]), dtype=dtype),
    gamma=float(gamma),
    discriminator_learning_rate=float(opts["discriminator_learning_rate"]),
    discriminator_b1=float(opts["discriminator_b1"]),
    discriminator_b2=float(opts["discriminator_b2"]),
  )
