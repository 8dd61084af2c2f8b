"""A grid of runs (latent size x beta x seed), resumable, with a report: see aejax/sweep.py.

  python scripts/sweep.py --config=experiments/latent_sweep.py:cpu --sweep_dir=DIR \
    [--latent_dims=2,4,8] [--betas=1,4] [--seeds=0,1,2] [--config.FIELD=VALUE ...]
  python scripts/sweep.py --sweep_dir=DIR --report_only

`aejax-sweep` is the same command.
"""

from aejax import sweep

if __name__ == "__main__":
  sweep.cli()
