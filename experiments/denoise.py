"""Denoising with the lesson's conv autoencoder on MNIST.

What: input = clip(x + 0.5 + 0.5 * N(0, 1)) (the lesson's shifted Gaussian
  noise, drawn fresh every step), target = clean x; the lesson's conv AE,
  per-pixel Bernoulli cross-entropy, Adam 1e-3, batch 128, 25 epochs.
  Arguments: `tiny`, `saltpepper` (20% salt-and-pepper noise instead).
Expected: eval/bce_per_pixel at or below the lesson's 0.1398.
Runtime: about a minute on a GPU; tens of minutes on a 2-core CPU.
Command:
  AEJAX_DATA_DIR=/path/to/data python -m aejax.main \
    --config=experiments/denoise.py --workdir=runs/denoise \
    [--config.task.noise_std=0.3]
"""

from aejax import configs


def get_config(arg=None):
  words = configs.parse_arg(arg, ("tiny", "saltpepper"))
  c = configs.default_config()
  c.data.name = "mnist"
  c.task.name = "denoise"
  c.task.noise_type = "gaussian"
  c.task.noise_mean = 0.5
  c.task.noise_std = 0.5
  if "saltpepper" in words:
    c.task.noise_type = "salt_and_pepper"
    c.task.noise_amount = 0.2
  c.model.name = "lesson_conv_ae"
  c.model.latent_dim = 128
  c.batch_size = 128
  c.num_epochs = 25
  if "tiny" in words:
    configs.make_tiny(c)
  return c
