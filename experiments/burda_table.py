"""Burda et al. (2016)'s Table 1, one stochastic layer, as one sweep: six runs, one program.

What: the six runs of experiments/iwae_burda.py's Table 1 (the k-sample VAE
  objective and the IWAE bound, each for k = 1, 5, 50; `sweep(add)` below),
  everything else as there: 784-200-200-50 tanh, dynamically binarized MNIST,
  batch 20, 3,280 passes. With scripts/sweep.py --vmap_shapes the six differ
  only in shape (objective and k), so they train as one population padded to
  k = 50 (aejax/padding.py), each member equal to its separate run and saved
  as one. Arguments: those of iwae_burda.py but the objective and k (`cpu`:
  4 passes, `tiny`: seconds; tests).
Expected: test NLL (-L_5000, nats) in the paper: VAE 86.76 / 86.47 / 86.35 and
  IWAE 86.76 / 85.54 / 84.78 for k = 1 / 5 / 50. Measured: docs/reproductions.md.
Runtime: the full protocol is 9.84M steps for each member, every member
  computing 50 samples. Shortened to 200 steps on a 2-core CPU: 177 s for the
  six as one program, 266-305 s row by row (docs/reproductions.md).
Command:
  AEJAX_DATA_DIR=/path/to/data python scripts/sweep.py --config=experiments/burda_table.py \
    --sweep_dir=runs/burda_table --seeds=0,1,2 --vmap_shapes --max_group=18 --nll_samples=5000
  (or python scripts/reproduce.py --burda --population, which also writes the table)
"""

import importlib.util
import pathlib

ARGS = ("fixed", "batch128", "cpu", "tiny")
OBJECTIVES = ("elbo", "iwae")
SAMPLES = (1, 5, 50)


def _iwae_burda():
  path = pathlib.Path(__file__).resolve().parent / "iwae_burda.py"
  spec = importlib.util.spec_from_file_location("iwae_burda", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  """iwae_burda.py's config (its VAE k=1 run); each run of the sweep sets its objective and k."""
  return _iwae_burda().get_config(arg)


def sweep(add, arg=None):
  """Table 1's six runs (the seeds come from --seeds)."""
  del arg
  for objective in OBJECTIVES:
    for k in SAMPLES:
      add(**{"objective.name": objective, "objective.num_samples": k})
