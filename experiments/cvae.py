"""Conditional VAE on MNIST: generate a chosen digit.

What: a dense VAE 784-512-2 whose encoder and decoder both see the one-hot
  digit label (q(z|x, y), p(x|z, y)), Bernoulli decoder on grey levels, Adam
  1e-3, batch 128, 20 epochs. With the class given, the 2-D latent is free to
  hold style (slant, thickness) instead of identity.
Expected: class_grid.png with one row per digit and columns sharing z (the
  same style across digits); eval/neg_elbo below the unconditional 2-D VAE's.
Runtime: a few minutes on a 2-core CPU.
Command:
  AEJAX_DATA_DIR=/path/to/data python -m aejax.main \
    --config=experiments/cvae.py --workdir=runs/cvae
  python -m aejax.use generate --workdir=runs/cvae --n=16 --label=7 --out=sevens.npy \
    --png=sevens.png
"""

from aejax import configs


def get_config(arg=None):
  words = configs.parse_arg(arg, ("tiny",))
  c = configs.default_config()
  c.data.name = "mnist"
  c.model.name = "dense_vae"
  c.model.num_classes = 10
  c.model.latent_dim = 2
  c.model.hidden_widths = (512,)
  c.batch_size = 128
  c.num_epochs = 20
  c.eval_every_steps = 468 * 5  # Every 5 epochs (468 steps per epoch).
  c.checkpoint_every_steps = 468 * 5
  if "tiny" in words:
    configs.make_tiny(c)
  return c
