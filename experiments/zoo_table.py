"""The zoo table: every model of aejax/zoo/ and the dense AE and VAE baselines under one protocol.

What: one sweep (`sweep(add)` below) over `model.name` (every zoo model but
  the disentanglement family, models.DISENTANGLEMENT_FAMILY), each model at the
  regulariser weight (`objective.beta`) of its own experiment file and the
  defaults of its own options (the paper's settings, see each
  experiments/zoo/NAME.py), everything else shared: dynamically binarized
  MNIST, a Bernoulli decoder, dense networks 784-512-256-16 with ReLU (latent
  size 16; two_layer_vae keeps Burda et al.'s two stochastic layers, 100 and
  16 units), Adam 1e-3, batch 128, the same steps and seeds. The sweep's
  report is the table of docs/zoo.md: reconstruction BCE and MSE, test NLL
  where the model defines a likelihood, FID of prior samples, of the ex-post
  mixture's samples and of the reconstructions (aejax's MNIST classifier
  features), active units, linear-probe accuracy, training images per second,
  mean +- std over seeds, and a contact sheet of samples per model.
  Arguments: `cpu` (2,000 steps, 4.3 epochs: the committed table, a 2-core
  CPU), `tiny` (the 8x8 digits, seconds; tests). The full protocol is 50 epochs.
Expected: not a reproduction of any paper (the published rows are in
  scripts/reproduce.py): a like-for-like comparison at a short budget. The
  VAEs' NLLs lie within a few nats of each other, the importance-weighted
  objectives lowest; the deterministic models have no NLL, reconstruct best and
  sample only through the ex-post mixture. Measured: docs/zoo.md.
Runtime: :cpu about four hours for 15 models x 3 seeds on a 2-core CPU,
  most of it the importance-weighted objectives (64 samples per image) and
  vq_vae (docs/zoo.md has the measured times); :tiny seconds per run.
Command:
  AEJAX_DATA_DIR=/path/to/data python scripts/sweep.py \
    --config=experiments/zoo_table.py:cpu --sweep_dir=runs/zoo --seeds=0,1,2 \
    --nll_samples=200 --eval_limit=1000 --probe_train_size=2000 --fid
"""

import importlib.util
import pathlib

from aejax import configs, models

ARGS = ("tiny", "cpu")
BASELINES = ("dense_ae", "dense_vae")
ZOO_FOLDER = pathlib.Path(__file__).resolve().parent / "zoo"


def get_config(arg=None):
  words = configs.parse_arg(arg, ARGS)
  c = configs.default_config()
  c.data.name = "mnist"
  c.data.dynamic_binarization = True
  c.model.name = "dense_vae"  # Each run of the sweep sets its own.
  c.model.latent_dim = 16
  c.model.hidden_widths = (512, 256)
  c.model.activation = "relu"
  c.model.likelihood = "bernoulli"
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.batch_size = 128
  c.num_epochs = 50
  c.eval_every_steps = 468 * 10  # Every 10 epochs (468 steps per epoch).
  c.checkpoint_every_steps = 468 * 5
  c.progress_bar = False  # The sweep shows the progress of all runs.
  if "cpu" in words:
    c.total_steps = 2000
    c.eval_every_steps = 2000  # Once, at the end.
    c.checkpoint_every_steps = 500
  if "tiny" in words:
    c.data.name = "digits"
    c.model.hidden_widths = (32,)
    c.model.latent_dim = 4
    configs.make_tiny(c)
    c.eval_every_steps = c.total_steps  # One evaluation (and its figures), at the end.
  return c


def zoo_beta(name: str) -> float:
  """The regulariser weight of the model's own experiment file, experiments/zoo/NAME.py."""
  spec = importlib.util.spec_from_file_location(f"zoo_{name}", ZOO_FOLDER / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return float(module.get_config().objective.beta)


def sweep(add):
  """One run per model (the seeds come from --seeds)."""
  for name in BASELINES:
    add(**{"model.name": name, "objective.beta": 1.0})
  for name in models.ZOO:
    if name in models.DISENTANGLEMENT_FAMILY:
      continue  # Measured on dSprites by the disentanglement study, not on MNIST here.
    if name in models.SEQUENCE_FAMILY:
      continue  # A model of melodies, not of images (docs/sequences.md).
    add(**{"model.name": name, "objective.beta": zoo_beta(name)})
