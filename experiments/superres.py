"""Super-resolution on MNIST: 14x14 -> 28x28 (2x, default) or 7x7 -> 28x28 (`4x`).

What: input = the 28x28 image average-pooled by the factor; the model
  upsamples it to 28x28 (nearest neighbour) and runs the lesson's conv
  autoencoder; per-pixel Bernoulli cross-entropy against the full-resolution
  image; Adam 1e-3, batch 128, 25 epochs. Arguments: `tiny`, `4x`.
Expected: 2x eval/bce_per_pixel at or below the lesson's 0.0955.
Runtime: about a minute on a GPU; tens of minutes on a 2-core CPU.
Command:
  AEJAX_DATA_DIR=/path/to/data python -m aejax.main \
    --config=experiments/superres.py:4x --workdir=runs/superres_4x
"""

from aejax import configs


def get_config(arg=None):
  words = configs.parse_arg(arg, ("tiny", "4x"))
  c = configs.default_config()
  c.data.name = "mnist"
  c.task.name = "superres"
  c.task.superres_factor = 4 if "4x" in words else 2
  c.model.name = "lesson_conv_ae"
  c.model.latent_dim = 128
  c.batch_size = 128
  c.num_epochs = 25
  if "tiny" in words:
    configs.make_tiny(c)
  return c
