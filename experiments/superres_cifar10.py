"""Super-resolution on CIFAR-10 (through tensorflow-datasets): 16x16 -> 32x32 (2x) or 8x8 -> 32x32.

What: input = the 32x32x3 image average-pooled by the factor; the model
  upsamples it to 32x32 (nearest neighbour) and runs a convolutional
  autoencoder (3 stride-2 convolutions 64-128-256, a 512-d bottleneck,
  mirrored decoder), Gaussian likelihood (squared error, sigma fixed at 0.1),
  Adam 1e-3, batch 128, 30 epochs. Arguments: `tiny`, `4x`.
Expected: task_metrics.md compares PSNR/SSIM against bicubic upsampling (not
  yet measured here: these machines have no internet for tfds).
Runtime: minutes on a GPU.
Command: (a machine with internet; tfds downloads CIFAR-10 once)
  python -m aejax.main --config=experiments/superres_cifar10.py:4x --workdir=runs/sr_cifar_4x
"""

import math

from aejax import configs


def get_config(arg=None):
  words = configs.parse_arg(arg, ("tiny", "4x"))
  c = configs.default_config()
  c.data.name = "cifar10"
  c.data.source = "tfds"
  c.task.name = "superres"
  c.task.superres_factor = 4 if "4x" in words else 2
  c.model.name = "conv_ae"
  c.model.conv_channels = (64, 128, 256)
  c.model.latent_dim = 512
  c.model.likelihood = "gaussian"
  c.model.log_scale = math.log(0.1)
  c.batch_size = 128
  c.num_epochs = 30
  c.eval_batch_size = 1000
  if "tiny" in words:
    configs.make_tiny(c)
    c.model.conv_channels = (8, 8, 8)
    c.model.latent_dim = 16
  return c
