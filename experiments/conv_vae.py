"""The lesson's assignment: a CNN-based VAE on MNIST, 2-D latent.

What: two stride-2 3x3 convolutions (32, 64 channels, ReLU), Dense to the
  mean and log-variance of a 2-D Gaussian; decoder Dense to 7x7x64 and two
  stride-2 transposed convolutions; Bernoulli decoder on grey levels; Adam
  1e-3, batch 128, 30 epochs.
Expected: eval/neg_elbo about 153 nats per image on grey-level MNIST
  (a 2-D latent is a tight bottleneck; see docs/results.md).
Runtime: a minute on a GPU; slower on a CPU (XLA CPU convolutions).
Command:
  AEJAX_DATA_DIR=/path/to/data python -m aejax.main \
    --config=experiments/conv_vae.py --workdir=runs/conv_vae
"""

from aejax import configs


def get_config(arg=None):
  words = configs.parse_arg(arg, ("tiny",))
  c = configs.default_config()
  c.data.name = "mnist"
  c.model.name = "conv_vae"
  c.model.latent_dim = 2
  c.model.conv_channels = (32, 64)
  c.batch_size = 128
  c.num_epochs = 30
  c.eval_every_steps = 0  # Every epoch.
  if "tiny" in words:
    configs.make_tiny(c)
  return c
