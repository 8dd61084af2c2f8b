"""Tolstikhin et al. (2018), "Wasserstein Auto-Encoders" (ICLR): WAE-MMD on MNIST.

What: a deterministic autoencoder with 8-D codes whose aggregate posterior is
  pulled to N(0, I) by the MMD (inverse multiquadratic kernel summed over the
  scales 0.1 ... 10 of C = 2 * 8, the paper's released code), on MNIST grey
  levels (60,000 train, 10,000 test). The paper's squared-error cost
  c(x, y) = ||x - y||^2 is aejax's Gaussian likelihood with sigma^2 = 1/2
  (log_scale = log sqrt(1/2)): recon = c + 448.7 nats, a constant. The
  released code minimises 0.05 * c + 10 * MMD, i.e. c + 200 * MMD, so beta =
  200 (`lambda10`: beta = 10, the paper's written lambda on c). Adam (lr 1e-3,
  b1 0.5; the learning rate halved at epoch 30 and divided by 5 more at epoch
  50), batch 100, 100 epochs: the released code's MNIST settings.
  Differences from the paper: dense ReLU networks 784-512-512-8 (the paper's
  are DCGAN-style convolutional nets with batch norm); no encoder pre-training
  or encoder noise; Flax's default initialisation.
Arguments (comma-separated, e.g. `:lambda10,cpu`):
  lambda10  beta = 10: the lambda of the paper's text on the cost c;
  cpu       a short run: 3 epochs; NOT the reproduction, it checks the
            pipeline on a CPU;
  tiny      seconds, for tests.
Expected: the paper reports no number for MNIST (its MNIST results are
  pictures: reconstructions, samples, interpolations); its quantitative
  comparison is the FID of CelebA samples (Table 1), with 64-D codes and
  convolutional networks, not comparable with this run. What to look for
  here: eval/mmd near 0 (the estimate is unbiased; for codes that are exactly
  N(0, I) its standard deviation is about 0.013 at batch 100 and 0.0013 at
  the evaluation batch of 1000), mse_per_pixel well below a VAE's of the same networks, and
  samples (decoded z ~ N(0, I), samples.png, the FID of `aejax.evaluate`)
  that look like digits. Measured: not yet.
Runtime: 60,000 steps; unmeasured (no accelerator was available when this
  was written); `cpu` (1,800 steps) takes minutes on a CPU.
Command:
  AEJAX_DATA_DIR=/path/to/data python -m aejax.main \
    --config=experiments/zoo/wae_mmd.py --workdir=runs/wae_mmd
  python -m aejax.evaluate --workdir=runs/wae_mmd
"""

import math

from aejax import configs

ARGS = ("lambda10", "cpu", "tiny")
NUM_TRAIN = 60_000
CPU_EPOCHS = 3


def get_config(arg=None):
  words = configs.parse_arg(arg, ARGS)
  c = configs.default_config()
  c.data.name = "mnist"
  c.model.name = "wae_mmd"
  c.model.latent_dim = 8
  c.model.hidden_widths = (512, 512)
  c.model.activation = "relu"
  # N(x | sigmoid(logits), 1/2): the NLL is ||x - x_hat||^2 plus a constant, the paper's cost.
  c.model.likelihood = "gaussian"
  c.model.log_scale = math.log(math.sqrt(0.5))
  c.model.options.network = "dense"
  c.model.options.kernel = "imq"
  c.model.options.kernel_scales = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
  c.objective.beta = 10.0 if "lambda10" in words else 200.0
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.b1 = 0.5
  c.batch_size = 100
  c.num_epochs = 100
  steps_per_epoch = NUM_TRAIN // c.batch_size
  c.optimizer.schedule = "piecewise"
  c.optimizer.piecewise_boundaries = (30 * steps_per_epoch, 50 * steps_per_epoch)
  c.optimizer.piecewise_scales = (0.5, 0.2)
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
