"""aejax's documented errors; the CLI (aejax/runner.py) maps each to one line and an exit code."""

import signal


class ConfigError(ValueError):
  """A config field is missing, unknown, of the wrong type or has an impossible value.

  The message starts with the field (`config.model.latent_dim: ...`) and says
  what is valid.
  """


class CheckpointError(ValueError):
  """A workdir has no usable checkpoint, or it does not match its config."""


class InputError(ValueError):
  """Arrays given to the aejax.load API have the wrong shape, dtype or range."""


class TrainingInterrupted(Exception):
  """Raised after a SIGTERM/SIGINT once the final checkpoint is safely written."""

  def __init__(self, step: int, signum: int, workdir: str):
    self.step, self.signum, self.workdir = step, signum, workdir
    name = signal.Signals(signum).name
    super().__init__(
      f"{name} received: stopped after step {step}, checkpoint saved in {workdir}/checkpoints. "
      "Run the same command again to resume from it."
    )


class NonFiniteError(Exception):
  """A training step's loss or gradients were NaN/inf (config.nonfinite == "stop")."""

  def __init__(self, step: int, what: int, last_checkpoint: int | None, workdir: str):
    self.step, self.last_checkpoint = step, last_checkpoint
    # `what`: bit 1 the loss, bit 2 the gradients (steps.NONFINITE_LOSS, NONFINITE_GRADS).
    bad = [name for bit, name in ((1, "loss"), (2, "gradients")) if what & bit]
    where = (
      f"the last good checkpoint is step {last_checkpoint} in {workdir}/checkpoints"
      if last_checkpoint is not None
      else f"no checkpoint was written yet in {workdir}"
    )
    super().__init__(
      f"non-finite {' and '.join(bad) or 'value'} at step {step} (train/"
      f"{'loss' if what & 1 else 'grad_norm'} is NaN or inf); the update was not applied and "
      f"no NaN parameters were saved; {where}. Lower the learning rate, clip gradients "
      "(config.optimizer.grad_clip_norm) or set config.nonfinite='skip'."
    )


class DataError(ValueError):
  """Bad or missing data.

  The message names the data set, file/folder and the problem, and says what to do.
  """


class DistributedError(RuntimeError):
  """The processes of a multi-process run could not meet, or one of them failed.

  The message names the coordinator address, the process and the timeout.
  """
