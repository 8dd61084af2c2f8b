"""A sparse autoencoder on MNIST: the L1 activity penalty, or Ng's KL-sparsity (`:kl`).

What: a deterministic autoencoder with 16-D codes, dense ReLU networks
  784-512-256-16 (the decoder mirrors them), MNIST grey levels (60,000 train,
  10,000 test) with the Bernoulli cross-entropy as the reconstruction NLL
  (aejax's usual MNIST setting), Adam lr 1e-3, batch 100, 50 epochs;
  loss = recon + beta * penalty per image with
  - l1 (default): sum_j |z_j| of the linear code, beta 0.1;
  - kl: the code squashed by a sigmoid, penalty sum_j KL(rho || rho_hat_j)
    over the batch means rho_hat_j, rho = 0.05 and beta 3 (the target and
    weight of A. Ng's 2011 CS294A notes, "Sparse autoencoder").
  Differences from Ng's notes: one sigmoid hidden layer, squared error and
  weight decay there; aejax's dense networks and the Bernoulli NLL here.
Arguments (comma-separated, e.g. `:kl,cpu`):
  l1 | kl  the penalty (default l1);
  cpu      a short run: 3 epochs; NOT the full run, it checks the pipeline
           on a CPU;
  tiny     seconds, for tests.
Expected: no published number applies (the sparse autoencoder is a feature
  learner, with no sample-quality or likelihood benchmark on MNIST). The
  qualitative behaviour: eval/l1 (or eval/kl_sparsity) falls well below its
  value at the first evaluation while eval/recon ends a few nats above the
  same network without the penalty (`--config.objective.beta=0`); with `kl`
  the batch mean of each code unit approaches 0.05. `aejax.evaluate` gives
  the reconstruction metrics, the linear probe on the codes and, for any
  unconditional model, the FID of samples of the ex-post Gaussian mixture of
  the training codes (fid_gmm). Measured: only the `tiny` run (below).
Runtime: 30,000 steps; unmeasured (no accelerator was available when this
  was written); `tiny` trains in seconds on a CPU.
Command:
  AEJAX_DATA_DIR=/path/to/data python -m aejax.main \
    --config=experiments/zoo/sparse_ae.py --workdir=runs/sparse_ae
  python -m aejax.evaluate --workdir=runs/sparse_ae
"""

from aejax import configs, errors

ARGS = ("l1", "kl", "cpu", "tiny")
NUM_TRAIN = 60_000
CPU_EPOCHS = 3


def get_config(arg=None):
  words = configs.parse_arg(arg, ARGS)
  if {"l1", "kl"} <= words:
    raise errors.ConfigError(f"config argument {arg!r}: choose one of l1/kl")
  c = configs.default_config()
  c.data.name = "mnist"
  c.model.name = "sparse_ae"
  c.model.latent_dim = 16
  c.model.hidden_widths = (512, 256)
  c.model.activation = "relu"
  c.model.likelihood = "bernoulli"
  c.model.options.network = "dense"
  if "kl" in words:
    c.model.options.penalty = "kl"
    c.model.options.sparsity_target = 0.05
    c.objective.beta = 3.0
  else:
    c.model.options.penalty = "l1"
    c.objective.beta = 0.1
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.batch_size = 100
  c.num_epochs = 50
  steps_per_epoch = NUM_TRAIN // c.batch_size
  c.log_every_steps = steps_per_epoch // 10
  c.eval_every_steps = 10 * steps_per_epoch
  c.checkpoint_every_steps = 10 * steps_per_epoch
  c.eval_batch_size = 1000
  if "cpu" in words:
    c.num_epochs = CPU_EPOCHS
    c.eval_every_steps = c.checkpoint_every_steps = steps_per_epoch
  if "tiny" in words:
    configs.make_tiny(c)
  return c
