"""Rifai et al. (2011), "Contractive Auto-Encoders: Explicit Invariance During Feature Extraction".

What: a deterministic autoencoder with 16-D codes, dense ReLU networks
  784-512-256-16 (the decoder mirrors them), MNIST grey levels (60,000 train,
  10,000 test) with the Bernoulli cross-entropy as the reconstruction NLL
  (aejax's usual MNIST setting), loss = recon + beta * ||dz/dx||_F^2 per
  image with beta 0.1, the encoder's Jacobian computed exactly (16
  vector-Jacobian products per step); Adam lr 1e-3, batch 100, 50 epochs.
  Differences from the paper (ICML 2011): its CAE has one sigmoid hidden
  layer of 1,000 units as the code, tied weights and a cross-entropy
  reconstruction, and was a pre-training stage for classifiers; here the
  code is 16-D behind two ReLU layers, and the weights are untied.
Arguments (comma-separated, e.g. `:cpu`):
  cpu   a short run: 3 epochs; NOT the full run, it checks the pipeline on a
        CPU;
  tiny  seconds, for tests.
Expected: the paper's MNIST results are test errors of classifiers
  initialised from stacked CAEs (its Table 1), a protocol aejax does not
  reproduce, so no published number is quoted. The qualitative behaviour:
  eval/contractive falls well below the value of the same network trained
  without the penalty (`--config.objective.beta=0`), for a few nats of
  eval/recon; `aejax.evaluate`'s linear probe measures the codes, and
  fid_gmm the samples of the ex-post Gaussian mixture of the training codes.
  Measured: only the `tiny` run (below).
Runtime: 30,000 steps, each about 16 encoder backward passes more than a
  plain autoencoder's; unmeasured (no accelerator was available when this
  was written); `tiny` trains in seconds on a CPU.
Command:
  AEJAX_DATA_DIR=/path/to/data python -m aejax.main \
    --config=experiments/zoo/contractive_ae.py --workdir=runs/contractive_ae
  python -m aejax.evaluate --workdir=runs/contractive_ae
"""

from aejax import configs

ARGS = ("cpu", "tiny")
NUM_TRAIN = 60_000
CPU_EPOCHS = 3


def get_config(arg=None):
  words = configs.parse_arg(arg, ARGS)
  c = configs.default_config()
  c.data.name = "mnist"
  c.model.name = "contractive_ae"
  c.model.latent_dim = 16
  c.model.hidden_widths = (512, 256)
  c.model.activation = "relu"
  c.model.likelihood = "bernoulli"
  c.model.options.network = "dense"
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
