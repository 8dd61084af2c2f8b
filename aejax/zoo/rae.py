"""A regularised (deterministic) autoencoder, RAE: a code penalty plus a decoder regulariser.

Ghosh, Sajjadi, Vergari, Black & Schölkopf (2020), "From Variational to
Deterministic Autoencoders" (ICLR). A Gaussian VAE's sampling noise is read
as a regulariser of the decoder; RAE drops the noise and regularises
explicitly: L = L_REC + beta * L_Z + lambda * L_REG, with L_Z = ||z||^2 / 2
and L_REG one of
- "l2" (RAE-L2): ||theta||_2^2, the squared L2 norm of all of the decoder's
  parameters (kernels and biases). A constant of the batch: returned
  broadcast to (B,), so its batch mean is the norm itself;
- "gp" (RAE-GP): ||grad_z D(z)||^2 at z = E(x), per image, defined here as
  the squared Frobenius norm of the Jacobian of the decoder's mean image
  sigmoid(logits) (the paper's D(z), which ends in a sigmoid) w.r.t. the
  code: sum_{p, j} (d sigmoid(logits_p) / d z_j)^2. Computed exactly with one
  Jacobian-vector product per latent unit (vmapped), about D times the
  decoder's forward pass.
The generative model is ex-post: after training, a 10-component full-covariance
Gaussian mixture is fitted to the training codes (aejax/zoo/gmm.py, sec. 4 of
the paper) and sampled, `aejax.load(workdir).generate(n, sampler="gmm")`. The
model has no prior of its own, hence no `sample` hook.

Loss per image, (B,), nats for `recon`:
  loss = recon + kl_weight * code_l2 + decoder_weight * (decoder_l2 | decoder_gp),
recon the reconstruction NLL summed over pixels, code_l2 = ||z||^2 / 2,
kl_weight = config.objective.beta (times its warm-up), decoder_weight the
option (lambda). Terms: `recon`, `code_l2`, `decoder_l2` or `decoder_gp`, the
per-pixel metrics, `loss`. decoder_weight = 0 is the paper's plain "RAE" row.

Defaults, from the authors' released code for the paper's MNIST runs
(github.com/ParthaEth/Regularized_autoencoders-RAE-: configurations/config.py
and models/rae/rae_mnist.py): latent 16, batch 100, 100 epochs, Adam 5e-4, a
squared-error reconstruction averaged over pixels, beta = 1e-4 on mean_j z_j^2,
lambda = 1e-7 for RAE-L2 (a Keras kernel regulariser on the decoder's
transposed convolutions) and 0.5e-7 for RAE-GP. aejax sums its losses over the
784 pixels and uses ||z||^2 / 2, so the same balance is beta ~ 784 * 1e-4 * 2
/ 16 ~ 0.01 (set by the experiment) and lambda ~ 784 * 1e-7 ~ 1e-4 (the
default `decoder_weight`).

Deviations: the paper's MNIST networks are convolutional with batch norm on a
32x32 padded MNIST and an L2 reconstruction loss; here the networks are
aejax's (option `network`: "dense" or "conv") and the likelihood is the
config's. The authors' code penalises the gradient of sum_p D(z)_p^2 w.r.t. z
for RAE-GP and only the transposed convolutions' kernels for RAE-L2; here
the full Jacobian norm and every decoder parameter, as in the paper's equations.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from aejax import autoencoder, errors, models
from aejax.zoo import options

REGULARISERS = ("l2", "gp")
DEFAULTS = {"network": "dense", "regulariser": "l2", "decoder_weight": 1e-4}


class RAE(autoencoder.AutoEncoder):
  """z = encoder(x), logits = decoder(z); trained with ||z||^2 / 2 and a decoder regulariser."""

  regulariser: str = "l2"
  decoder_weight: float = 1e-4

  def decoder_jacobian(self, z_BxD: jax.Array) -> jax.Array:
    """d sigmoid(decoder(z)) / dz, (D, B, H, W, C): entry [j, b] is d image_b / d z_bj."""

    def image(z):
      return jax.nn.sigmoid(self.decode(z))

    def column(j):  # The tangent e_j for every image at once: images are decoded independently.
      tangent_BxD = jnp.broadcast_to(
        jax.nn.one_hot(j, z_BxD.shape[1], dtype=z_BxD.dtype), z_BxD.shape
      )
      return jax.jvp(image, (z_BxD,), (tangent_BxD,))[1]

    return jax.vmap(column)(jnp.arange(z_BxD.shape[1]))

  def decoder_l2(self) -> jax.Array:
    """||theta_decoder||_2^2: the sum of squares of every decoder parameter, ()."""
    leaves = jax.tree.leaves(self.variables["params"]["decoder"])
    return sum(jnp.sum(jnp.square(leaf.astype(jnp.float32))) for leaf in leaves)

  def losses(self, batch, key, config, kl_weight) -> dict[str, jax.Array]:
    """Per image, (B,): recon + kl_weight * ||z||^2 / 2 + decoder_weight * regulariser."""
    del key  # Deterministic.
    z_BxD = self.encode(batch["input"])["z"]
    logits = self.decode(z_BxD)
    if self.learn_log_scale:
      log_scale = self.variables["params"]["likelihood"]["log_scale"]
    else:
      log_scale = jnp.asarray(config.model.log_scale, jnp.float32)
    terms = autoencoder.reconstruction_terms(
      logits, batch["target"], config.model.likelihood, log_scale
    )
    terms["code_l2"] = 0.5 * jnp.sum(jnp.square(z_BxD), axis=-1)
    if self.regulariser == "l2":
      name, reg_B = "decoder_l2", jnp.broadcast_to(self.decoder_l2(), (z_BxD.shape[0],))
    else:
      jacobian = self.decoder_jacobian(z_BxD)
      jacobian_DxBxP = jacobian.reshape(jacobian.shape[0], jacobian.shape[1], -1)
      name, reg_B = "decoder_gp", jnp.sum(jnp.square(jacobian_DxBxP), axis=(0, 2))
    terms[name] = reg_B
    terms["loss"] = terms["recon"] + kl_weight * terms["code_l2"] + self.decoder_weight * reg_B
    return terms


def build(model_config, image_shape) -> nn.Module:
  opts = options.read_options(model_config, DEFAULTS)
  options.check(
    opts["regulariser"] in REGULARISERS,
    model_config,
    "regulariser",
    f"unknown regulariser {opts['regulariser']!r}; valid: {', '.join(REGULARISERS)}",
  )
  weight = opts["decoder_weight"]
  options.check(
    math.isfinite(weight) and weight >= 0.0,
    model_config,
    "decoder_weight",
    f"must be a finite number >= 0, got {weight}",
  )
  if model_config.get("num_classes", 0):
    raise errors.ConfigError(
      f"config.model.num_classes: model {model_config.name!r} is not conditional; set it to 0"
    )
  encoder, decoder = models.build_networks(
    model_config, image_shape, model_config.latent_dim, opts["network"], model_config.name
  )
  return RAE(
    encoder=encoder,
    decoder=decoder,
    output_shape=tuple(image_shape),
    learn_log_scale=bool(model_config.get("learn_log_scale", False)),
    init_log_scale=float(model_config.get("log_scale", 0.0)),
    regulariser=opts["regulariser"],
    decoder_weight=float(weight),
  )
