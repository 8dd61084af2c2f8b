"""Command line: python -m aejax.main --config=experiments/NAME.py[:ARG] --workdir=DIR."""

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from aejax import data, errors, train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and figures.")
flags.DEFINE_bool(
  "distributed", False, "Call jax.distributed.initialize() first (multi-host runs)."
)
config_flags.DEFINE_config_file(
  "config", None, "Experiment config file, e.g. experiments/quickstart.py:tiny.", lock_config=True
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.getLogger().setLevel(logging.INFO)
  # Orbax logs every checkpoint stage at INFO through absl; keep its warnings only.
  logging.getLogger("absl").setLevel(logging.WARNING)
  if FLAGS.distributed:
    import jax

    jax.distributed.initialize()
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except train.TrainingInterrupted as stop:
    logging.warning("%s", stop)
    sys.exit(128 + stop.signum)
  except (errors.ConfigError, data.DataError) as error:
    # aejax's documented errors: one line naming the field or file, no traceback.
    logging.error("%s: %s", type(error).__name__, error)
    sys.exit(2)


def run():
  """Console-script entry point (aejax-train)."""
  app.run(main)


if __name__ == "__main__":
  run()
