"""The Wasserstein autoencoder with the MMD penalty (WAE-MMD).

Tolstikhin, Bousquet, Gelly & Schoelkopf (2018), "Wasserstein Auto-Encoders"
(ICLR), Algorithm 2. A deterministic encoder z = encoder(x) and a decoder are
trained on a reconstruction cost plus lambda times the MMD between the codes of
the batch and as many draws from the prior N(0, I):

  loss = recon + kl_weight * MMD^2(codes of the batch, prior draws),

per image, (B,). `recon` is aejax's reconstruction NLL (nats per image, summed
over pixels); `mmd` is the unbiased U-statistic of aejax/zoo/mmd.py over the
whole (global) batch, returned broadcast to (B,) so that its batch mean is the
statistic; kl_weight is config.objective.beta (times its warm-up): lambda.
The prior draws use the step's key (a fixed key, jax.random.key(0), when the
key is None). In evaluation the last, padded batch counts its padding images
among the codes (the model does not see the mask).

Options (`config.model.options`): `network` ("dense" or "conv"), `kernel`
("imq", the paper's, or "rbf") and `kernel_scales` (the kernel is summed over
C * s, C = 2 * latent_dim; default the paper's code's 0.1 ... 10).

The scale of lambda. The paper's cost is c(x, y) = ||x - y||^2 with lambda =
10 (MNIST, sigma_z^2 = 1); its released code minimises 0.05 * c + 10 * MMD,
that is c + 200 * MMD. aejax's Gaussian likelihood with log_scale = log
sqrt(1/2) gives recon = ||x - sigmoid(logits)||^2 + a constant (448.7 nats
for 784 pixels), so beta = 200 there is the released code's weighting and
beta = 10 the paper's written one; with log_scale 0 (sigma 1) recon is half
the squared error and beta halves. A Bernoulli recon (a cross-entropy) is a
few times larger than the squared error in nats for the same
reconstructions, and its gradients differ in form: beta does not translate.

Deviations: a dense or conv network of aejax's rather than the paper's
DCGAN-style ones with batch norm; no encoder pre-training and no encoder
noise; the decoder mean is sigmoid(logits) as everywhere in aejax.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from aejax import autoencoder, errors, models
from aejax.zoo import mmd, options

DEFAULTS = {"network": "dense", "kernel": "imq", "kernel_scales": mmd.WAE_SCALES}


class WAEMMD(autoencoder.AutoEncoder):
  """z = encoder(x), logits = decoder(z); the codes' distribution is pulled to N(0, I) by MMD."""

  latent_dim: int = 2
  kernel: str = "imq"
  kernel_scales: tuple[float, ...] = mmd.WAE_SCALES

  def sample(self, key: jax.Array, num_samples: int, label_B=None) -> jax.Array:
    """Decoded draws z ~ N(0, I): logits (N, H, W, C)."""
    del label_B  # Not conditional.
    return self.decode(jax.random.normal(key, (num_samples, self.latent_dim)))

  def losses(self, batch, key, config, kl_weight) -> dict[str, jax.Array]:
    """Per image, (B,): recon + kl_weight * mmd (the batch's MMD^2, broadcast)."""
    out = self(batch["input"])
    terms = autoencoder.reconstruction_terms(
      out["logits"], batch["target"], config.model.likelihood, self.log_scale(out, config)
    )
    z_BxD = out["z"]
    key = jax.random.key(0) if key is None else key
    prior_BxD = jax.random.normal(key, z_BxD.shape, z_BxD.dtype)
    kernel = mmd.multiscale_kernel(self.kernel, self.latent_dim, self.kernel_scales)
    mmd_B = jnp.broadcast_to(mmd.mmd_unbiased(z_BxD, prior_BxD, kernel), terms["recon"].shape)
    terms["mmd"] = mmd_B
    terms["loss"] = terms["recon"] + kl_weight * mmd_B
    return terms


def build(model_config, image_shape) -> nn.Module:
  opts = options.read_options(model_config, DEFAULTS)
  mmd.check_kernel_options(model_config, opts)
  if model_config.get("num_classes", 0):
    raise errors.ConfigError(
      f"config.model.num_classes: model {model_config.name!r} is not conditional; set it to 0"
    )
  encoder, decoder = models.build_networks(
    model_config, image_shape, model_config.latent_dim, opts["network"], model_config.name
  )
  return WAEMMD(
    encoder=encoder,
    decoder=decoder,
    output_shape=tuple(image_shape),
    learn_log_scale=bool(model_config.get("learn_log_scale", False)),
    init_log_scale=float(model_config.get("log_scale", 0.0)),
    latent_dim=int(model_config.latent_dim),
    kernel=opts["kernel"],
    kernel_scales=tuple(float(s) for s in opts["kernel_scales"]),
  )
