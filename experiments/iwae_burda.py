"""Burda, Grosse & Salakhutdinov (2016), "Importance Weighted Autoencoders": Table 1 and App. D.

What: one stochastic layer, 784-200-200-50 with tanh (two deterministic
  layers on each side, the decoder mirrors the encoder), Bernoulli decoder,
  dynamically binarized MNIST (60,000 train, 10,000 test); trained with the
  k-sample VAE ELBO (`vae`) or the IWAE bound L_k (`iwae`) for k = 1, 5, 50;
  Adam (b1 0.9, b2 0.999, eps 1e-4), batch 20, 3^i passes over the data at
  learning rate 1e-3 * 10^(-i/7), i = 0..7 (3,280 passes, schedule "burda").
  Differences from the paper: Flax's default LeCun-normal initialisation
  (the paper used Glorot & Bengio's heuristic); the encoder predicts the
  log-variance (the paper exponentiated a linear output for the std).
Arguments (comma-separated, e.g. `:iwae,k50`):
  vae | iwae     the training objective (default vae);
  k1 | k5 | k50  samples per image in the objective (default k1);
  fixed          Appendix D: Larochelle's fixed binarization (50,000 train);
  batch128       the larger-batch variant (batch 128, same passes);
  cpu            a short run: the first two stages of the schedule (4 passes);
                 this is NOT the reproduction, it checks the pipeline on a CPU;
  tiny           seconds, for tests.
Expected: test NLL (-L_5000, nats) in the paper: VAE 86.76 / 86.47 / 86.35 and
  IWAE 86.76 / 85.54 / 84.78 for k = 1 / 5 / 50; fixed binarization VAE
  88.71, IWAE k=50 87.10; 19-25 active units. Measured: docs/iwae.md.
Runtime: full protocol 9.84M steps at batch 20: about 3-4 hours on one GPU
  for k = 1 with the per-step loop; `cpu` about 10 minutes for k = 1.
Command:
  AEJAX_DATA_DIR=/path/to/data python -m aejax.main \
    --config=experiments/iwae_burda.py:iwae,k50 --workdir=runs/iwae_k50
  python -m aejax.evaluate --workdir=runs/iwae_k50 --nll_samples=5000
  The whole table as one program: experiments/burda_table.py.
"""

from aejax import configs, errors

ARGS = ("vae", "iwae", "k1", "k5", "k50", "fixed", "batch128", "cpu", "tiny")
CPU_PASSES = 4  # Stages i = 0 and 1 of the schedule: 1 pass at 1e-3, 3 at 1e-3 * 10^(-1/7).


def get_config(arg=None):
  words = configs.parse_arg(arg, ARGS)
  if {"vae", "iwae"} <= words or len(words & {"k1", "k5", "k50"}) > 1:
    raise errors.ConfigError(
      f"config argument {arg!r}: choose one of vae/iwae and one of k1/k5/k50"
    )
  c = configs.default_config()
  if "fixed" in words:
    c.data.name = "binarized_mnist"
  else:
    c.data.name = "mnist"
    c.data.dynamic_binarization = True
  c.model.name = "dense_vae"
  c.model.hidden_widths = (200, 200)
  c.model.activation = "tanh"
  c.model.latent_dim = 50
  c.model.likelihood = "bernoulli"
  c.objective.name = "iwae" if "iwae" in words else "elbo"
  c.objective.num_samples = next((int(w[1:]) for w in ("k5", "k50") if w in words), 1)
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.eps = 1e-4
  c.optimizer.schedule = "burda"
  c.batch_size = 128 if "batch128" in words else 20
  c.num_epochs = 3280
  num_train = 50_000 if "fixed" in words else 60_000
  steps_per_epoch = num_train // c.batch_size
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
