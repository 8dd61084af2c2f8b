"""Quickstart: a 2-D dense VAE on scikit-learn's embedded 8x8 digits (no download).

What: VAE 64-256-2 (ReLU), Bernoulli decoder on grey levels, Adam 1e-3,
  batch 64, 150 epochs of the 1,437 training digits; evaluated on the 360
  held-out digits.
Expected: eval/neg_elbo about 24.6 nats per image (measured: docs/results.md);
  reconstructions.png, samples.png and curves.png (training curves) in the workdir.
Runtime: well under a minute on a laptop CPU.
Command:
  python -m aejax.main --config=experiments/quickstart.py --workdir=runs/quickstart
"""

from aejax import configs


def get_config(arg=None):
  words = configs.parse_arg(arg, ("tiny",))
  c = configs.default_config()
  c.data.name = "digits"
  c.model.name = "dense_vae"
  c.model.latent_dim = 2
  c.model.hidden_widths = (256,)
  c.batch_size = 64
  c.eval_batch_size = 360
  c.num_epochs = 150
  c.log_every_steps = 50
  c.eval_every_steps = 22 * 25  # 22 steps per epoch: every 25 epochs.
  c.checkpoint_every_steps = 22 * 25
  c.num_figure_images = 12
  if "tiny" in words:
    configs.make_tiny(c)
  return c
