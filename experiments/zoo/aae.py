"""Makhzani et al. (2016), "Adversarial Autoencoders" (ICLR workshop): the AAE on MNIST.

What: the deterministic adversarial autoencoder: 8-D codes, dense ReLU
  networks 784-1000-1000-8 (the decoder mirrors them) and a critic on the codes
  with two hidden layers of 1000 ReLU units (the paper's MNIST networks are
  also two-hidden-layer MLPs; we did not check their widths); the prior
  N(0, I) (`mixture`: the paper's mixture of 10 Gaussians on a circle, with
  2-D codes as in the paper's pictures of it); MNIST grey levels (60,000
  train, 10,000 test) with the Bernoulli cross-entropy as the reconstruction
  cost; loss = recon + beta * softplus(-D(z)) for the autoencoder (beta 1) and
  the critic's cross-entropy for the critic; Adam (lr 2e-4, b1 0.5) for each
  player, batch 100, 100 epochs.
  Differences from the paper: the paper alternates a reconstruction phase and
  a regularisation phase per batch, with SGD and momentum; here both players
  take one simultaneous Adam step per batch; the non-saturating generator
  term; Flax's default initialisation; no dropout.
Arguments (comma-separated, e.g. `:mixture,cpu`):
  mixture  the mixture-of-10-Gaussians prior (radius 4, std 0.5) on 2-D codes;
  cpu      a short run: 3 epochs; NOT the reproduction, it checks the
           pipeline on a CPU;
  tiny     seconds, for tests.
Expected: the paper's Table 1 (MNIST column, AAE row) gives a Parzen window
  estimate of the test log-likelihood, 340 +/- 2 nats (10K samples, the
  window's width chosen on a validation set). aejax does not compute Parzen
  estimates (they are known to be unreliable for images; Theis et al. 2016,
  "A note on the evaluation of generative models"), and the AAE has no
  likelihood bound, so nothing here compares with that number. aejax's
  measures are the reconstruction metrics and the FID of decoded prior draws
  (`aejax.evaluate`); eval/critic_accuracy near 0.5 means the critic can no
  longer tell codes from prior draws. Measured: not yet.
Runtime: 60,000 steps; unmeasured (no accelerator was available when this
  was written); `cpu` (1,800 steps) takes minutes on a CPU.
Command:
  AEJAX_DATA_DIR=/path/to/data python -m aejax.main \
    --config=experiments/zoo/aae.py --workdir=runs/aae
  python -m aejax.evaluate --workdir=runs/aae
"""

from aejax import configs

ARGS = ("mixture", "cpu", "tiny")
NUM_TRAIN = 60_000
CPU_EPOCHS = 3


def get_config(arg=None):
  words = configs.parse_arg(arg, ARGS)
  c = configs.default_config()
  c.data.name = "mnist"
  c.model.name = "aae"
  c.model.latent_dim = 8
  c.model.hidden_widths = (1000, 1000)
  c.model.activation = "relu"
  c.model.likelihood = "bernoulli"
  c.model.options.network = "dense"
  c.model.options.prior = "normal"
  c.model.options.critic_widths = (1000, 1000)
  if "mixture" in words:
    c.model.latent_dim = 2
    c.model.options.prior = "mixture"
    c.model.options.mixture_components = 10
    c.model.options.mixture_radius = 4.0
    c.model.options.mixture_std = 0.5
  c.objective.beta = 1.0
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 2e-4
  c.optimizer.b1 = 0.5
  c.batch_size = 100
  c.num_epochs = 100
  steps_per_epoch = NUM_TRAIN // c.batch_size
  c.log_every_steps = steps_per_epoch // 10
  c.eval_every_steps = 10 * steps_per_epoch
  c.checkpoint_every_steps = 10 * steps_per_epoch
  c.eval_batch_size = 1000
  if "cpu" in words:
    c.num_epochs = CPU_EPOCHS
    c.eval_every_steps = c.checkpoint_every_steps = steps_per_epoch
  if "tiny" in words:
    configs.make_tiny(c)
  return c
