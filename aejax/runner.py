"""The one runner of aejax's command-line programs: logging, and every aejax error as one line.

Each entry point (`python -m aejax.main`, `.evaluate`, `.use`, `.fid`,
`.pca_vs_ae`, `.sweep_worker`, `scripts/sweep.py`) runs its work through
`run`, so that every program exits the same way:

  0    done
  2    a documented aejax error (bad config, data, checkpoint or input) or an
       OSError of the environment (full disk, unwritable folder); one line
       naming the field or file, no traceback
  3    a NaN/inf training step (errors.NonFiniteError)
  128+n  stopped by signal n (SIGTERM 143, Ctrl-C 130) after a final checkpoint
"""

import logging
import sys
from collections.abc import Callable

from aejax import errors

EXIT_ERROR = 2
EXIT_NONFINITE = 3

# aejax's documented errors: their messages name the field or file and say what is valid.
DOCUMENTED_ERRORS = (
  errors.ConfigError, errors.CheckpointError, errors.InputError, errors.DataError,
  errors.DistributedError,
)  # fmt: skip


def setup_logging() -> None:
  """INFO for aejax; Orbax logs every checkpoint stage at INFO through absl, so absl keeps
  its warnings only (JAX's own warnings, e.g. an unused GPU, stay visible)."""
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger("absl").setLevel(logging.WARNING)
  # JAX reports each backend it cannot start ("Unable to initialize backend 'tpu'") at INFO on
  # every CPU or GPU machine; its WARNING about an unused accelerator still shows.
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)


def exit_code(error: BaseException) -> int | None:
  """The exit status for `error`, or None for an error that is a bug (its traceback is shown)."""
  # TrainingInterrupted, and the sweep's own stop: anything that carries the signal.
  if isinstance(getattr(error, "signum", None), int):
    return 128 + int(error.signum)
  if isinstance(error, errors.NonFiniteError):
    return EXIT_NONFINITE
  if isinstance(error, DOCUMENTED_ERRORS + (OSError,)):
    return EXIT_ERROR
  return None


def run(work: Callable[[], object]) -> None:
  """Runs `work()`; maps aejax's errors to one log line and their exit status."""
  try:
    work()
  except Exception as error:
    code = exit_code(error)
    if code is None:
      raise
    if code > 128:
      logging.warning("%s", error)
    else:
      logging.error("%s: %s", type(error).__name__, " ".join(str(error).split()))
    sys.exit(code)
