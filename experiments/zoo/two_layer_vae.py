"""Burda, Grosse & Salakhutdinov (2016), "Importance Weighted Autoencoders": Table 1, two layers.

What: two stochastic layers, 784-(200-200)-100-(100-100)-50 with tanh
  deterministic layers (the generative path mirrors it), p(z2) = N(0, I),
  Bernoulli decoder, dynamically binarized MNIST (60,000 train, 10,000
  test); trained with the k-sample VAE objective (`vae`) or the IWAE bound
  L_k (`iwae`) for k = 1, 5, 50; Adam (b1 0.9, b2 0.999, eps 1e-4), batch
  20, 3^i passes over the data at learning rate 1e-3 * 10^(-i/7), i = 0..7
  (3,280 passes, schedule "burda"), as experiments/iwae_burda.py.
  Differences from the paper: Flax's default LeCun-normal initialisation
  (the paper used Glorot & Bengio's heuristic); the networks predict
  log-variances (the paper exponentiated a linear output for the std); the
  test set is binarized once with the evaluation seed.
Arguments (comma-separated, e.g. `:iwae,k50`):
  vae | iwae     the training objective (default vae);
  k1 | k5 | k50  samples per image in the objective (default k1);
  vamp           a VampPrior (500 pseudo-inputs) on z2 instead of N(0, I):
                 aejax/zoo/two_layer_vae.py says how the pseudo-inputs reach
                 z2; not in Burda et al.;
  cpu            a short run: the first two stages of the schedule (4
                 passes); NOT the reproduction, it checks the pipeline on a CPU;
  tiny           seconds, for tests.
Expected: test NLL (-L_5000, nats), Burda et al.'s Table 1, two stochastic
  layers (as we recall the table; check it against the paper): VAE 85.33 /
  85.01 / 84.78 and IWAE 85.33 / 83.89 / 82.90 for k = 1 / 5 / 50 (the
  one-layer rows are in experiments/iwae_burda.py). `vamp` has no published
  number for this architecture: Tomczak & Welling (2018) report about 83.19
  (as we recall, unsure) for their two-layer HVAE + VampPrior, a different
  inference model, network and training protocol. Measured: not yet.
Runtime: the full protocol is 9.84M steps at batch 20; unmeasured on an
  accelerator (the one-layer model takes about 3-4 hours on one GPU for
  k = 1, experiments/iwae_burda.py; this one somewhat more). On a shared
  2-core CPU one pass for k = 1 (3,000 steps, with one evaluation) took 37 s,
  so `cpu` (4 passes) takes about 2-3 minutes for k = 1, more for k = 50.
Command:
  AEJAX_DATA_DIR=/path/to/data python -m aejax.main \
    --config=experiments/zoo/two_layer_vae.py:iwae,k50 --workdir=runs/two_layer_vae
  python -m aejax.evaluate --workdir=runs/two_layer_vae --nll_samples=5000
"""

from aejax import configs, errors

ARGS = ("vae", "iwae", "k1", "k5", "k50", "vamp", "cpu", "tiny")
CPU_PASSES = 4  # Stages i = 0 and 1 of the schedule: 1 pass at 1e-3, 3 at 1e-3 * 10^(-1/7).
NUM_TRAIN = 60_000


def get_config(arg=None):
  words = configs.parse_arg(arg, ARGS)
  if {"vae", "iwae"} <= words or len(words & {"k1", "k5", "k50"}) > 1:
    raise errors.ConfigError(
      f"config argument {arg!r}: choose one of vae/iwae and one of k1/k5/k50"
    )
  c = configs.default_config()
  c.data.name = "mnist"
  c.data.dynamic_binarization = True
  c.model.name = "two_layer_vae"
  c.model.activation = "tanh"
  c.model.latent_dim = 50  # z2; z1 and the widths are the model's defaults (the paper's).
  c.model.likelihood = "bernoulli"
  c.model.options.hidden1 = (200, 200)
  c.model.options.hidden2 = (100, 100)
  c.model.options.z1_dim = 100
  c.model.options.prior = "vamp" if "vamp" in words else "normal"
  if "vamp" in words:
    c.model.options.num_pseudo_inputs = 500
  c.objective.name = "iwae" if "iwae" in words else "elbo"
  c.objective.num_samples = next((int(w[1:]) for w in ("k5", "k50") if w in words), 1)
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.eps = 1e-4
  c.optimizer.schedule = "burda"
  c.batch_size = 20
  c.num_epochs = 3280
  steps_per_epoch = NUM_TRAIN // c.batch_size
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
