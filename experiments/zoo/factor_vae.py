"""Kim & Mnih (2018), "Disentangling by Factorising" (ICML): FactorVAE on dSprites, dlib's protocol.

What: FactorVAE in the setting of disentanglement_lib's unsupervised study
  (Locatello et al. 2019, "Challenging Common Assumptions in the Unsupervised
  Learning of Disentangled Representations"): dSprites (64x64x1 binary
  images, all 737,280 factor combinations), dlib's conv encoder and
  deconv decoder (option network "dlib_conv"), 10 latent dimensions, a
  Bernoulli decoder, loss = recon + KL + gamma * TC_hat with gamma 10 (the
  smallest value of the study's grid {10, 20, 30, 40, 50, 100}; dlib has no
  default), the discriminator an MLP of six hidden layers of 1000 leaky-ReLU
  units trained on its cross-entropy of codes against dimension-wise permuted
  codes with its own Adam (lr 1e-4, b1 0.5, b2 0.9, dlib's); the VAE's Adam
  lr 1e-4 (b1 0.9, b2 0.999, eps 1e-8), batch 64, 300,000 steps.
  Differences from dlib: the discriminator's cross-entropy is not clipped at
  probability 1e-6; aejax evaluates on the data set's evaluation split, dlib
  on training images.
  Sweep `model.options.gamma` over the grid to reproduce the study's row.
Arguments (comma-separated, e.g. `:cpu`):
  cpu   a short run: 1,000 steps; NOT the reproduction, it checks the
        pipeline on a CPU;
  tiny  seconds, for tests (MNIST-sized images, dense networks).
Expected: Locatello et al. report distributions over 50 seeds per setting,
  not one number, and find that no method is reliably better than another
  without supervision; their figures are the reference, per metric (MIG,
  DCI, SAP, modularity, the beta-VAE and FactorVAE scores of
  aejax/disentanglement.py) and per gamma. In a healthy run
  eval/discriminator_accuracy stays near 0.5 (the discriminator cannot tell
  codes from permuted codes) and eval/tc_estimate stays small.
  Measured: not yet (no accelerator was available when this was written).
Runtime: 300,000 steps of batch 64; unmeasured on an accelerator. On a
  shared, busy 2-core CPU one training step of the default networks took
  0.8 to 2.4 s (measured on random 64x64 batches), so `cpu` (1,000 steps)
  takes 15 to 40 minutes there.
Data: no file: the trainer renders each batch of dSprites from its factor
  indices on device (aejax/dsprites.py, data source "rendered"); evaluation
  uses a fixed 10,000 of the 737,280 combinations.
Command:
  python -m aejax.main --config=experiments/zoo/factor_vae.py --workdir=runs/factor_vae
  python -m aejax.evaluate --workdir=runs/factor_vae
"""

from aejax import configs

ARGS = ("cpu", "tiny")
TOTAL_STEPS = 300_000  # dlib's model.training_steps.
CPU_STEPS = 1_000


def get_config(arg=None):
  words = configs.parse_arg(arg, ARGS)
  c = configs.default_config()
  c.data.name = "dsprites"
  c.model.name = "factor_vae"
  c.model.latent_dim = 10
  c.model.likelihood = "bernoulli"
  c.model.options.network = "dlib_conv"
  c.model.options.gamma = 10.0
  c.model.options.discriminator_widths = (1000,) * 6
  c.objective.beta = 1.0
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-4
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.batch_size = 64
  c.total_steps = TOTAL_STEPS
  c.log_every_steps = 100
  c.eval_every_steps = 10_000
  c.checkpoint_every_steps = 10_000
  c.eval_batch_size = 1000
  if "cpu" in words:
    c.total_steps = CPU_STEPS
    c.eval_every_steps = c.checkpoint_every_steps = 500
  if "tiny" in words:
    c.data.name = "mnist"
    c.model.latent_dim = 4
    c.model.hidden_widths = (64,)
    c.model.options.network = "dense"
    c.model.options.discriminator_widths = (32, 32)
    configs.make_tiny(c)
  return c
