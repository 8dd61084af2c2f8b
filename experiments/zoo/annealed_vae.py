"""Burgess et al. (2018), "Understanding disentangling in beta-VAE": the annealed VAE on dSprites.

What: disentanglement_lib's protocol (Locatello et al., 2019, "Challenging
  Common Assumptions in the Unsupervised Learning of Disentangled
  Representations"): dSprites (737,280 64x64 binary images of 5 factors),
  Bernoulli decoder, latent 10, disentanglement_lib's conv encoder and decoder
  (option network "dlib_conv", aejax/networks.py), Adam lr 1e-4 (b1 0.9, b2
  0.999, eps 1e-8), batch 64, 300,000 steps. Objective recon + gamma * |KL -
  C| with gamma = 1000 and the capacity C raised linearly from 0 to c_max =
  25 nats over the first 100,000 steps (the paper's dSprites setting; the
  study's grid is c_max in {5, 10, 25, 50, 75, 100}, e.g.
  `--config.model.options.c_max=50`). The ramp is the KL warm-up:
  objective.beta = 1 and objective.kl_warmup_steps = 100,000 make kl_weight =
  C / c_max (aejax/zoo/annealed_vae.py). The penalty is on the batch mean KL,
  as disentanglement_lib computes it. Evaluation: 10,000 images
  (data.eval_limit).
  Differences from disentanglement_lib: optax's Adam puts eps outside the
  bias correction (TensorFlow's inside), aejax's data order and seeds.
Arguments (comma-separated, e.g. `:cpu`):
  cpu   a short run: 2,000 steps, the capacity ramp over the first 1,000;
        NOT the reproduction, it checks the pipeline on a CPU;
  tiny  seconds, for tests: a few MNIST images and dense networks (the
        dlib networks take only 64x64 images).
Expected: Locatello et al. report, per model and data set, distributions
  over 50 seeds of disentanglement scores rather than one number, and their
  main finding is that the seed and hyper-parameters matter more than the
  model; no single value is quoted here. What should hold: eval/kl ends
  near c_max (25 nats) and tracks eval/capacity during the ramp (the train
  curves). Measured: not yet.
Runtime: 300,000 steps; unmeasured on an accelerator; `tiny` trains in
  seconds on a CPU.
Data: no file: the trainer renders each batch of dSprites from its factor
  indices on device (aejax/dsprites.py, data source "rendered"); evaluation
  uses a fixed 10,000 of the 737,280 combinations.
Command:
  AEJAX_DATA_DIR=/path/to/data python -m aejax.main \
    --config=experiments/zoo/annealed_vae.py --workdir=runs/annealed_vae
  python -m aejax.evaluate --workdir=runs/annealed_vae
"""

from aejax import configs

ARGS = ("cpu", "tiny")
TOTAL_STEPS = 300_000  # disentanglement_lib's model.training_steps.
ITERATION_THRESHOLD = 100_000  # Steps of the capacity ramp (annealed_vae.iteration_threshold).
CPU_STEPS, CPU_THRESHOLD = 2_000, 1_000


def get_config(arg=None):
  words = configs.parse_arg(arg, ARGS)
  c = configs.default_config()
  c.data.name = "dsprites"
  c.data.eval_limit = 10_000
  c.model.name = "annealed_vae"
  c.model.latent_dim = 10
  c.model.likelihood = "bernoulli"
  c.model.options.network = "dlib_conv"
  c.model.options.gamma = 1000.0
  c.model.options.c_max = 25.0
  c.model.options.penalty = "batch"
  c.objective.name = "elbo"
  c.objective.num_samples = 1
  c.objective.beta = 1.0  # C = c_max * kl_weight: beta 1 makes the final capacity c_max.
  c.objective.kl_warmup_steps = ITERATION_THRESHOLD
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-4
  c.optimizer.b1, c.optimizer.b2, c.optimizer.eps = 0.9, 0.999, 1e-8
  c.batch_size = 64
  c.total_steps = TOTAL_STEPS
  c.log_every_steps = 1000
  c.eval_every_steps = 50_000
  c.checkpoint_every_steps = 10_000
  c.eval_batch_size = 1000
  if "cpu" in words:
    c.total_steps = CPU_STEPS
    c.objective.kl_warmup_steps = CPU_THRESHOLD
    c.log_every_steps = 100
    c.eval_every_steps = c.checkpoint_every_steps = 1000
  if "tiny" in words:
    c.data.name = "mnist"
    c.model.options.network = "dense"
    c.model.hidden_widths = (64,)
    c.model.latent_dim = 4
    c.objective.kl_warmup_steps = 8  # A ramp that ends inside the 16 steps.
    configs.make_tiny(c)
  return c
