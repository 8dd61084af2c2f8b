"""A dense VAE on 8-bit MNIST with a discretized logistic decoder, scored in bits/dim.

What: dense VAE 784-512-256-32 (ReLU; the decoder mirrors it), on MNIST's
  grey levels as stored (k / 255, not binarized; 60,000 train, 10,000 test);
  the decoder's likelihood is the discretized logistic of Salimans et al.
  (2017) with one component: pixel level k gets the mass of a logistic with
  location sigmoid(logits) and scale s over its bin [(k - 1/2) / 255,
  (k + 1/2) / 255], the end bins open, so it is a proper distribution over
  the 256 levels (aejax/losses.py). s is one learned number for all pixels
  (config.model.log_scale, initial log s = -3, s about 13 levels); a
  per-pixel scale would need a decoder with a second output. Adam 1e-3,
  batch 128, 50 epochs, one-sample ELBO. `aejax.evaluate` reports the
  5000-sample IWAE NLL and, because the likelihood is discrete, the NLL in
  bits per dimension, nll_bits_per_dim = nll / (784 log 2): a bound on the
  cost of coding the 8-bit test images, with no dequantisation step.
Arguments (comma-separated, e.g. `:cpu`):
  cpu   a short run: 3 epochs; NOT the full run, it checks the pipeline on a
        CPU;
  tiny  seconds, for tests.
Expected: no published bits/dim of a dense one-layer VAE on 8-bit MNIST
  was verified for this file. For orientation only (unverified: read on a
  results listing, not in the paper): Kingma, Abbeel & Ho (2019, Bit-Swap)
  are listed at about 1.27 bits/dim on MNIST with hierarchical convolutional
  VAEs and a discretized logistic, a far larger model than this one; a
  dense VAE with one shared scale should be well above it. 8 bits/dim is
  the cost of storing the raw pixels, so any trained model must be below 8.
  Measured (`cpu` run, 3 epochs, on a shared 2-core CPU): learned s = 0.089
  (23 levels); on the first 1,000 test images nll (k = 5000) 1309.2 +- 7.9
  nats per image = 2.41 bits/dim, ELBO -1336.4. The full run is unmeasured.
Runtime: 23,400 steps, unmeasured; the `cpu` run trains in about a minute on
  2 CPU cores. On a CPU the discretized logistic costs about 5x the
  Bernoulli term per pixel, and the 5000-sample NLL of 1,000 test images
  took 3.6 min on the same busy CPU (4.6 images/s), so the full 10,000 take
  over half an hour there; use `--limit` or an accelerator.
Command:
  AEJAX_DATA_DIR=/path/to/data python -m aejax.main \
    --config=experiments/vae_8bit.py --workdir=runs/vae_8bit
  python -m aejax.evaluate --workdir=runs/vae_8bit
"""

from aejax import configs

ARGS = ("cpu", "tiny")
NUM_TRAIN = 60_000
CPU_EPOCHS = 3


def get_config(arg=None):
  words = configs.parse_arg(arg, ARGS)
  c = configs.default_config()
  c.data.name = "mnist"
  c.data.dynamic_binarization = False  # The 8-bit grey levels are the data.
  c.model.name = "dense_vae"
  c.model.latent_dim = 32
  c.model.hidden_widths = (512, 256)
  c.model.activation = "relu"
  c.model.likelihood = "discretized_logistic"
  c.model.log_scale = -3.0
  c.model.learn_log_scale = True
  c.objective.name = "elbo"
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.batch_size = 128
  c.num_epochs = 50
  steps_per_epoch = NUM_TRAIN // c.batch_size
  c.log_every_steps = steps_per_epoch // 4
  c.eval_every_steps = 5 * steps_per_epoch
  c.checkpoint_every_steps = 5 * steps_per_epoch
  c.eval_batch_size = 1000
  if "cpu" in words:
    c.num_epochs = CPU_EPOCHS
    c.eval_every_steps = c.checkpoint_every_steps = steps_per_epoch
  if "tiny" in words:
    configs.make_tiny(c)
  return c
