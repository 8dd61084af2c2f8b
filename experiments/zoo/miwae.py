"""MIWAE(8, 8) of Rainforth et al. (2018) on dynamically binarized MNIST, Pythae's protocol.

Rainforth, Kosiorek, Le, Maddison, Igl, Wood & Teh (2018), "Tighter Variational
Bounds are Not Necessarily Better", ICML: the multiply importance weighted
autoencoder, trained on the mean of M = 8 independent K = 8-sample IWAE bounds
(64 samples per image; aejax/zoo/iwae_variants.py).
What: Pythae's reproduction script (clementchadebec/benchmark_VAE,
  examples/scripts/reproducibility/miwae.py) as far as aejax's trainer follows
  it: Burda et al.'s one-stochastic-layer network 784-200-200-50 with tanh
  (the decoder mirrors it), Bernoulli decoder, MNIST dynamically binarized
  (a fresh Bernoulli draw of every image each time it is used; 60,000 train,
  10,000 test, binarized once for the test NLL); Adam (lr 1e-3, eps 1e-4),
  batch 20, 3,280 passes with Burda's schedule (lr 1e-3 * 10^(-i/7) for 3^i
  passes, i = 0..7). Differences: Pythae initialises with Glorot-uniform
  weights and zero biases (aejax: Flax's LeCun normal) and decays the rate by
  10^(-1/7) at epochs 2, 5, 14, 28, 41, 122, 365 and 1094 (Burda's stage ends
  shifted by one epoch, plus one at 28); both encoders predict the
  log-variance. aejax trains on MNIST's 60,000 training images (Pythae: its
  train and eval files together), without early stopping.
Arguments (comma-separated, e.g. `:cpu`):
  cpu   a short run: the first two stages of the schedule (4 passes); NOT the
        reproduction, it checks the pipeline on a CPU;
  tiny  seconds, for tests.
Expected: test NLL (-log p(x) by importance sampling with 5000 samples, nats):
  Pythae's README (examples/scripts/reproducibility/README.md, row "MIWAE
  (M=8, K=8)", Dyn. Binarized MNIST, NLL (5000 IS)) gives 85.09 (0.00)
  obtained by Pythae and 84.97 (0.10) as the reference value, which it cites
  from the paper (the paper's own table was not checked here). `cpu` is far
  from converged and reproduces nothing; measured results belong in docs/.
Runtime: 20 steps/s on two CPU cores (64 decoder passes per image), so `cpu`
  (12,000 steps) takes about 10-15 minutes with its evaluations; the full
  protocol (9.84M steps) is for a GPU: a few hours, as experiments/iwae_burda.py
  (not measured for this model).
Command: (MNIST from $AEJAX_DATA_DIR; evaluate's NLL uses 5000 samples by default)
  python -m aejax.main --config=experiments/zoo/miwae.py --workdir=runs/miwae
  python -m aejax.evaluate --workdir=runs/miwae
"""

from aejax import configs

ARGS = ("cpu", "tiny")
CPU_PASSES = 4  # Stages i = 0 and 1 of Burda's schedule: 1 pass at 1e-3, 3 at 1e-3 * 10^(-1/7).


def get_config(arg=None):
  words = configs.parse_arg(arg, ARGS)
  c = configs.default_config()
  c.data.name = "mnist"
  c.data.dynamic_binarization = True
  c.model.name = "miwae"
  c.model.hidden_widths = (200, 200)
  c.model.activation = "tanh"
  c.model.latent_dim = 50
  c.model.likelihood = "bernoulli"
  c.model.options.num_groups = 8  # M
  c.model.options.samples_per_group = 8  # K
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.eps = 1e-4
  c.optimizer.schedule = "burda"
  c.batch_size = 20
  c.num_epochs = 3280
  steps_per_epoch = 60_000 // c.batch_size
  c.log_every_steps = steps_per_epoch // 10
  c.eval_every_steps = 50 * steps_per_epoch
  c.checkpoint_every_steps = 10 * steps_per_epoch
  c.eval_batch_size = 1000
  if "cpu" in words:
    c.num_epochs = CPU_PASSES
    c.eval_every_steps = c.checkpoint_every_steps = steps_per_epoch
  if "tiny" in words:
    configs.make_tiny(c)
  return c
