"""A Gaussian VAE on Larochelle's fixed binarization of MNIST, as Pythae reproduces 89.9 nats.

What: Pythae's VAE reproduction (clementchadebec/benchmark_VAE,
  examples/scripts/reproducibility/vae.py with configs/binary_mnist/vae):
  a dense VAE 784-400-40 with one ReLU hidden layer on each side, latent 40,
  Bernoulli decoder, the fixed binarization of Larochelle & Murray (50,000
  train, 10,000 test images; `binarized_mnist`), the ELBO, Adam with batch
  100, and the learning rate divided by 10^(1/5) at epochs 200, 350, 500, 750
  and 1,000 (the milestones in Pythae's script); the test NLL is estimated
  with 200 importance samples, as Pythae's table.
  Assumed, not published with the row: Pythae's training config for this row
  is not in its repository, so the learning rate (1e-4), batch 100 and 2,000
  epochs are those of the VampPrior row's config in the same folder. aejax
  trains on the 50,000 training images (Pythae evaluates on the validation
  file during training), without early stopping.
Arguments (comma-separated, e.g. `:cpu`):
  cpu   a short run: 10 epochs; NOT the reproduction, it checks the pipeline;
  tiny  seconds, for tests.
Expected: test NLL (-L_200, nats per image): 89.9, the reference value of
  Pythae's reproducibility table (row "VAE", Binary MNIST, NLL (200 IS)),
  which cites Rezende & Mohamed (2015, "Variational Inference with
  Normalizing Flows"), Table 2, the diagonal-covariance deep latent Gaussian
  model (recalled, not checked against the paper here); Pythae measured 89.78.
  `scripts/reproduce.py --zoo` measures it with seeds.
Runtime: 1,000,000 steps at batch 100; unmeasured on an accelerator. `cpu`
  (5,000 steps) takes a few minutes on a 2-core CPU.
Command:
  AEJAX_DATA_DIR=/path/to/data python -m aejax.main \
    --config=experiments/pythae_vae.py --workdir=runs/pythae_vae
  python -m aejax.evaluate --workdir=runs/pythae_vae --nll_samples=200
"""

from aejax import configs

ARGS = ("cpu", "tiny")
NUM_TRAIN = 50_000
MILESTONE_EPOCHS = (200, 350, 500, 750, 1000)  # Pythae's MultiStepLR milestones.
DECAY = 10 ** (-1 / 5)  # Pythae's gamma: each milestone divides the rate by 10^(1/5).


def get_config(arg=None):
  words = configs.parse_arg(arg, ARGS)
  c = configs.default_config()
  c.data.name = "binarized_mnist"
  c.model.name = "dense_vae"
  c.model.hidden_widths = (400,)
  c.model.activation = "relu"
  c.model.latent_dim = 40
  c.model.likelihood = "bernoulli"
  c.objective.name = "elbo"
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-4
  c.batch_size = 100
  c.num_epochs = 2000
  steps_per_epoch = NUM_TRAIN // c.batch_size
  c.optimizer.schedule = "piecewise"
  c.optimizer.piecewise_boundaries = tuple(e * steps_per_epoch for e in MILESTONE_EPOCHS)
  c.optimizer.piecewise_scales = (DECAY,) * len(MILESTONE_EPOCHS)
  c.log_every_steps = steps_per_epoch // 10
  c.eval_every_steps = 100 * steps_per_epoch
  c.checkpoint_every_steps = 20 * steps_per_epoch
  c.eval_batch_size = 1000
  if "cpu" in words:
    c.num_epochs = 10
    c.eval_every_steps = c.checkpoint_every_steps = 5 * steps_per_epoch
  if "tiny" in words:
    configs.make_tiny(c)
  return c
