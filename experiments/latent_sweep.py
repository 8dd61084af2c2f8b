"""Kingma & Welling (2014)'s latent-size ablation: dense VAEs on binarized MNIST, latent 2 to 200.

What: one VAE per latent size in (2, 3, 5, 10, 20, 50, 200) (`sweep(add)` below),
  K&W's MNIST model: 784-500-z encoder and z-500-784 decoder, one tanh hidden
  layer each, Bernoulli decoder. The data are dynamically binarized MNIST (a
  fresh Bernoulli draw of each grey-level image whenever it is used, as in
  Burda et al.; evaluation uses one fixed draw), so the NLL is a likelihood of
  binary data. Adam 1e-3 instead of K&W's Adagrad, batch 128 instead of 100
  (it divides over 8 devices), 100 epochs (46,800 steps; K&W ran to 10^8
  samples, about 1,700 epochs). Arguments: `cpu` (1,000 steps, about 2
  epochs: the whole sweep in 20 minutes on a 2-core CPU, the committed report),
  `tiny` (the 8x8 digits, seconds; tests).
Expected: the shape of K&W's Fig. 2: the bound (and the NLL) improves steeply
  from 2 to about 10-20 latents and then flattens, with no overfitting at 200
  latents: the KL term switches off the latents the data do not need, so the
  active units stop growing. Measured with :cpu (docs/latent_sweep.md): test
  NLL 166 (2 latents), 136 (5), 121 (10), 113 (20), 110 (50); 200 latents are
  still behind (118) after so few steps, and every unit is still active.
Runtime: :cpu 19.5 minutes for 7 sizes x 2 seeds with the command below, on
  a 2-core CPU shared with other jobs (12.8 of training, 5.6 of evaluation);
  :tiny seconds per run. The full schedule needs a GPU.
Command:
  AEJAX_DATA_DIR=/path/to/data python scripts/sweep.py \
    --config=experiments/latent_sweep.py:cpu --sweep_dir=runs/latent_sweep_cpu --seeds=0,1 \
    --nll_samples=200 --eval_limit=1000 --probe_train_size=2000
  (full: --config=experiments/latent_sweep.py --seeds=0,1,2 --nll_samples=5000)
"""

from aejax import configs

ARGS = ("tiny", "cpu")
LATENT_DIMS = (2, 3, 5, 10, 20, 50, 200)  # K&W Fig. 2 has 3, 5, 10, 20, 200; 2 draws the manifold.


def get_config(arg=None):
  words = configs.parse_arg(arg, ARGS)
  c = configs.default_config()
  c.data.name = "mnist"
  c.data.dynamic_binarization = True
  c.model.name = "dense_vae"
  c.model.latent_dim = 20  # Each run of the sweep sets its own.
  c.model.hidden_widths = (500,)
  c.model.activation = "tanh"
  c.model.likelihood = "bernoulli"
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.batch_size = 128
  c.num_epochs = 100
  c.eval_every_steps = 468 * 10  # Every 10 epochs (468 steps per epoch).
  c.checkpoint_every_steps = 468 * 10
  c.progress_bar = False  # The sweep shows the progress of all runs.
  if "cpu" in words:
    c.total_steps = 1000
    c.eval_every_steps = 1000  # Once, at the end.
    c.checkpoint_every_steps = 250
  if "tiny" in words:
    c.data.name = "digits"
    c.model.hidden_widths = (64,)
    configs.make_tiny(c)
    c.eval_every_steps = c.total_steps  # One evaluation (and its figures), at the end.
  return c


def sweep(add, arg=None):
  """One run per latent size (the seeds come from --seeds)."""
  words = configs.parse_arg(arg, ARGS)
  for latent_dim in (2, 3) if "tiny" in words else LATENT_DIMS:
    add(**{"model.latent_dim": latent_dim})
