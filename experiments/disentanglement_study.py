"""A Locatello-style disentanglement study: six models x their published grids x seeds on dSprites.

What: the unsupervised study of disentanglement_lib (Locatello et al. 2019,
  "Challenging Common Assumptions in the Unsupervised Learning of
  Disentangled Representations", Sec. 5 and its sweep): beta_vae, annealed_vae,
  factor_vae, dip_vae_i, dip_vae_ii and beta_tcvae (aejax/zoo/), each over the
  study's grid of its one regularisation knob,
    beta_vae     objective.beta            {1, 2, 4, 6, 8, 16}
    annealed_vae model.options.c_max       {5, 10, 25, 50, 75, 100} (gamma 1000)
    factor_vae   model.options.gamma       {10, 20, 30, 40, 50, 100}
    dip_vae_i    model.options.lambda_od   {1, 2, 5, 10, 20, 50} (lambda_d 10 lambda_od)
    dip_vae_ii   model.options.lambda_od   {1, 2, 5, 10, 20, 50} (lambda_d lambda_od)
    beta_tcvae   objective.beta            {1, 2, 4, 6, 8, 10}
  times the seeds of --seeds, on dSprites rendered on device (737,280 64x64
  images, data.name "dsprites"), latent 10, Bernoulli decoder, Adam, batch 64.
  Runs that differ only in seed or objective.beta train as one vmapped
  program (scripts/sweep.py groups them). Each run is evaluated with every
  score of aejax/disentanglement.py; the sweep's report shows each score per
  model and hyper-parameter with its spread over seeds, the rank correlation
  between the scores and the share of each score's variance that is the
  model, the hyper-parameter and the seed (aejax/report.py).
  The full protocol (no argument) is dlib's: its conv networks
  (network "dlib_conv"), Adam 1e-4, 300,000 steps, 10,000/5,000 points per
  score, 6 x 6 x 50 seeds in the paper (an accelerator's job).
Arguments (comma-separated):
  cpu   what a 2-core CPU can run: the grid's two ends per model (6 x 2
        configurations), dense 256-256 networks instead of dlib's convs
        (about 20x cheaper per step here), Adam 1e-3, 2,000 steps (17% of one
        epoch), and the sweep command's smaller evaluation (below). NOT the
        paper's protocol: a check that the whole study runs and what its
        report shows at this budget.
  tiny  seconds per run, for tests: 256 training combinations, tiny networks.
Expected: Locatello et al. find that the scores vary as much with the seed
  as with the model or its hyper-parameter, that the scores other than
  modularity are positively rank-correlated on dSprites, and that no model
  is reliably best. Chen et al. (2018) report MIG on dSprites up to about
  0.2-0.4 for beta-TCVAE and lower for beta-VAE (Fig. 4); Kim & Mnih (2018)
  report FactorVAE scores of about 0.7-0.85 for FactorVAE and beta-VAE on
  dSprites (their Fig. 4 and Table 1). Measured: docs/disentanglement.md.
Runtime: :cpu 85 minutes on a 2-core CPU, training and evaluation
  (docs/disentanglement.md); the full grid is 300,000 steps per run,
  unmeasured on an accelerator.
Command: (the `cpu` study; the evaluation sizes are the sweep's flags)
  python scripts/sweep.py --config=experiments/disentanglement_study.py:cpu \\
    --sweep_dir=runs/disentanglement --seeds=0,1,2 --nll_samples=10 \\
    --eval_limit=1000 --probe_train_size=1000 --disentanglement_points=1000
"""

from aejax import configs

ARGS = ("cpu", "tiny")
TOTAL_STEPS = 300_000  # dlib's model.training_steps.
CPU_STEPS = 2_000

# model: (the field of its one knob, the study's grid of it), Locatello et al.'s sweep.
GRIDS = {
  "beta_vae": ("objective.beta", (1.0, 2.0, 4.0, 6.0, 8.0, 16.0)),
  "annealed_vae": ("model.options.c_max", (5.0, 10.0, 25.0, 50.0, 75.0, 100.0)),
  "factor_vae": ("model.options.gamma", (10.0, 20.0, 30.0, 40.0, 50.0, 100.0)),
  "dip_vae_i": ("model.options.lambda_od", (1.0, 2.0, 5.0, 10.0, 20.0, 50.0)),
  "dip_vae_ii": ("model.options.lambda_od", (1.0, 2.0, 5.0, 10.0, 20.0, 50.0)),
  "beta_tcvae": ("objective.beta", (1.0, 2.0, 4.0, 6.0, 8.0, 10.0)),
}
# The capacity of annealed_vae ramps from 0 to c_max over this share of training (dlib:
# iteration_threshold 100,000 of 300,000 steps), through the KL warm-up.
CAPACITY_RAMP_SHARE = 1 / 3


def get_config(arg=None):
  words = configs.parse_arg(arg, ARGS)
  c = configs.default_config()
  c.data.name = "dsprites"
  c.data.eval_limit = 10_000
  c.model.name = "beta_vae"  # Each run of the sweep sets its own.
  c.model.latent_dim = 10
  c.model.likelihood = "bernoulli"
  c.model.options.network = "dlib_conv"
  c.objective.beta = 1.0
  c.objective.kl_warmup_steps = 0  # annealed_vae's runs set their ramp (see sweep).
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-4
  c.optimizer.b1, c.optimizer.b2, c.optimizer.eps = 0.9, 0.999, 1e-8
  c.batch_size = 64
  c.total_steps = TOTAL_STEPS
  c.log_every_steps = 1000
  c.eval_every_steps = 50_000
  c.checkpoint_every_steps = 10_000
  c.eval_batch_size = 1000
  c.progress_bar = False  # The sweep shows the progress of all runs.
  if "cpu" in words:
    c.model.options.network = "dense"
    c.model.hidden_widths = (256, 256)
    c.model.activation = "relu"
    c.optimizer.learning_rate = 1e-3
    c.total_steps = CPU_STEPS
    c.log_every_steps = 200
    c.eval_every_steps = CPU_STEPS  # Once, at the end.
    c.checkpoint_every_steps = 1000
  if "tiny" in words:
    c.model.options.network = "dense"
    c.model.hidden_widths = (32,)
    c.model.latent_dim = 3
    configs.make_tiny(c)
    c.data.train_limit, c.data.eval_limit = 256, 64
    c.eval_every_steps = c.total_steps
  return c


def sweep(add, arg=None):
  """Every model over its grid (the grid's two ends with `cpu` or `tiny`); seeds from --seeds."""
  words = configs.parse_arg(arg, ARGS)
  steps = get_config(arg).total_steps
  for name, (field, grid) in GRIDS.items():
    values = (grid[0], grid[-1]) if {"cpu", "tiny"} & set(words) else grid
    for value in values:
      overrides = {"model.name": name, field: value}
      if name == "annealed_vae":
        overrides["objective.kl_warmup_steps"] = max(1, round(steps * CAPACITY_RAMP_SHARE))
      add(**overrides)
