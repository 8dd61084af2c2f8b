"""Orbax checkpoints of a TrainState: checksummed, verified on restore, with fallback to older ones.

Orbax writes each checkpoint into a temporary folder and renames it once
complete, so a kill leaves either a whole checkpoint or a temporary folder,
which is removed on the next start and never read. Files damaged later fail
to restore, and a checksum of the state in the checkpoint's metadata catches
those that still restore but hold other numbers; either way the previous one
is used.
"""

import copy
import hashlib
import logging
import os
import tempfile

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from aejax import errors, workdir
from aejax.workdir import CHECKPOINTS_DIR

CHECKSUM_KEY = "aejax_state_sha256"
# A checkpoint that fails to restore is renamed to `<step>.unreadable` (kept for
# inspection; Orbax only sees folders named by a step number).
UNREADABLE_SUFFIX = ".unreadable"


def checkpoint_manager(
  run_dir: str | os.PathLike, keep: int, barrier_prefix: str | None = None
) -> ocp.CheckpointManager:
  """Orbax's manager of workdir/checkpoints, keeping the newest `keep` checkpoints.

  `barrier_prefix` names the processes' barriers of this manager's saves: the
  members of a population save the same step at once, and with several
  processes barriers of the same name would collide (Orbax names them by step).
  Raises CheckpointError if the folder cannot be created.
  """
  directory = workdir.local_absolute(run_dir) / CHECKPOINTS_DIR
  # cleanup_tmp_directories: the half-written checkpoint of a killed run is deleted, not trusted.
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep,
    create=True,
    cleanup_tmp_directories=True,
    multiprocessing_options=ocp.options.MultiprocessingOptions(
      barrier_sync_key_prefix=barrier_prefix
    ),
  )
  _write_arrays_whole_on_cpu()
  try:
    # One unnamed item, fixed here: left to Orbax, the first folder it reads decides, and a
    # damaged one would make every other checkpoint unreadable too.
    return ocp.CheckpointManager(
      directory, item_handlers=ocp.StandardCheckpointHandler(), options=options
    )
  except OSError as error:
    raise errors.CheckpointError(
      f"cannot create the checkpoint folder {directory}: {_brief(error)}"
    ) from error


_whole_array_writes = False  # Set once the handler below is registered in this process.


def _write_arrays_whole_on_cpu() -> None:
  """Saves each replicated array from one device, not split across its replicas, on CPU backends.

  Orbax's replica-parallel writes (each of R replicas writes 1/R of an array) pay off where
  replicas sit in separate accelerator memories; on CPU devices, which share the host's memory,
  each slice is one more small program to compile per array shape and device: with 8 devices a
  tiny model's first save took 5 s, nearly all of it compiling slices.
  """
  global _whole_array_writes
  if _whole_array_writes or jax.default_backend() != "cpu":
    return
  _whole_array_writes = True
  # Orbax's own handler, copied with only that switch changed (its metadata store included).
  handler = copy.copy(ocp.type_handlers.get_type_handler(jax.Array))
  if not hasattr(handler, "_use_replica_parallel"):  # Another Orbax: leave its writer alone.
    return
  handler._use_replica_parallel = False
  # Orbax warns that a handler is replaced, in a log where warnings should mean trouble.
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
  finally:
    absl_logger.setLevel(level)


def read_only_manager(directory: str | os.PathLike, **kwargs) -> ocp.CheckpointManager:
  """A CheckpointManager that only reads `directory` (loading never changes a workdir).

  It is this process's alone: in a multi-process run any one process may load a
  checkpoint without the others (Orbax would otherwise wait for all of them).
  Orbax warns three times that a read-only manager is read-only; those lines would be the
  only warnings of a healthy run, so they are kept out of the log while it is built.
  """
  this_process = jax.process_index()
  alone = ocp.options.MultiprocessingOptions(
    primary_host=this_process, active_processes={this_process}
  )
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    return ocp.CheckpointManager(
      workdir.local_absolute(directory),
      options=ocp.CheckpointManagerOptions(read_only=True, multiprocessing_options=alone),
      **kwargs,
    )
  finally:
    absl_logger.setLevel(level)


def state_checksum(state) -> str:
  """sha256 over every leaf's dtype, shape and bytes (one replica: the state is replicated)."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(state):
    # addressable_data(0) is this host's copy, also on multi-host runs.
    value = np.asarray(leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf)
    digest.update(f"{value.dtype}{value.shape}".encode())
    digest.update(np.ascontiguousarray(value).tobytes())
  return digest.hexdigest()


def save_checkpoint(manager: ocp.CheckpointManager, step: int, state) -> None:
  """Starts writing `state` and its checksum as checkpoint `step`; Orbax finishes in the background.

  Raises CheckpointError, naming the folder and the checkpoints still on disk,
  if this write or the previous one failed (disk full, no permission). A failed
  write never removes older checkpoints: Orbax deletes the ones beyond `keep`
  only after the new one is complete.
  """
  prepare_checkpoint(manager, step)
  try:
    manager.save(
      step,
      args=ocp.args.StandardSave(state),
      force=True,
      custom_metadata={CHECKSUM_KEY: state_checksum(state)},
    )
  except Exception as error:  # Orbax and TensorStore raise many types; all mean "not saved".
    raise _write_error(manager, error, step) from error


def prepare_checkpoint(manager: ocp.CheckpointManager, step: int) -> None:
  """Checks that checkpoint `step` can start: the previous write succeeded and the folder takes
  a new entry. CheckpointError (as save_checkpoint's) otherwise.

  A multi-process run agrees on this before Orbax's save, a collective that would wait for
  a process that failed here.
  """
  wait_for_checkpoints(manager)
  try:
    # Orbax creates the checkpoint's folder in a background thread, and if that fails its other
    # threads wait minutes for the folder before the process can exit: try it here first.
    if workdir.is_uri(manager.directory):  # An object store has no folders: write an object.
      probe = workdir.as_path(manager.directory) / f".write-test-{os.getpid()}"
      probe.write_text("")
      probe.unlink()
    else:
      os.rmdir(tempfile.mkdtemp(prefix=".write-test-", dir=manager.directory))
  except OSError as error:
    raise _write_error(manager, error, step) from error


def wait_for_checkpoints(manager: ocp.CheckpointManager) -> None:
  """Blocks until the checkpoint being written is complete; CheckpointError if writing it failed."""
  try:
    manager.wait_until_finished()
  except Exception as error:
    raise _write_error(manager, error) from error


def restore_checkpoint(manager: ocp.CheckpointManager, step: int, abstract_state):
  """Checkpoint `step` restored into `abstract_state` (shapes, dtypes, shardings) and verified.

  Raises CheckpointError saying why if it cannot be read or its checksum does not match.
  """
  try:
    state = manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
    expected = (manager.metadata(step).custom_metadata or {}).get(CHECKSUM_KEY)
  except Exception as error:  # Damaged files surface as many types (JSON, TensorStore, ...).
    raise errors.CheckpointError(f"step {step}: {_brief(error)}") from error
  if expected is None:
    logging.warning(
      "Checkpoint %d in %s has no checksum (written by an older aejax): not verified",
      step,
      manager.directory,
    )
  elif state_checksum(state) != expected:
    raise errors.CheckpointError(f"step {step}: checksum mismatch (damaged files)")
  return state


def restore_latest(manager: ocp.CheckpointManager, state, *, set_aside: bool = True):
  """The newest checkpoint that restores intact, in `state`'s shapes and shardings; None if none.

  A checkpoint that fails (missing, truncated or damaged files, checksum
  mismatch) is reported with a warning naming its step and the error, and the
  next older one is tried. Older checkpoints are never deleted. With
  `set_aside`, the failed ones newer than the restored one are renamed to
  `<step>.unreadable`, so that the resumed run can write those steps again.
  Raises CheckpointError naming the folder if checkpoints exist but none restores;
  then nothing is renamed (a config that does not fit any of them is not damage).
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return None
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
  )
  failed = []
  for step in steps:
    try:
      restored = restore_checkpoint(manager, step, abstract)
    except errors.CheckpointError as error:
      failed.append((step, error))
      logging.warning(
        "Checkpoint %d in %s cannot be restored (%s); trying the previous one",
        step,
        manager.directory,
        error,
      )
      continue
    if failed and set_aside:
      _set_aside(manager, [s for s, _ in failed])
    if failed:
      logging.warning(
        "Resuming from checkpoint %d in %s instead of the newest, %d",
        step,
        manager.directory,
        steps[0],
      )
    return restored
  reasons = "; ".join(str(error) for _, error in failed)
  raise errors.CheckpointError(
    f"none of the {len(steps)} checkpoints in {manager.directory} can be restored ({reasons}). "
    "They are left as they are. If the config changed, rerun with the config of these "
    "checkpoints or use a new --workdir; if the files are damaged, move the folder away to "
    "start from scratch"
  )


def _set_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
  """Renames unreadable checkpoints to `<step>.unreadable[.N]`, out of Orbax's sight."""
  directory = workdir.as_path(manager.directory)
  if jax.process_index() == 0:
    for step in steps:
      target = directory / f"{step}{UNREADABLE_SUFFIX}"
      n = 1
      while target.exists():
        target, n = directory / f"{step}{UNREADABLE_SUFFIX}.{n}", n + 1
      try:
        (directory / str(step)).rename(target)
      except OSError as error:
        raise errors.CheckpointError(
          f"cannot set aside the unreadable checkpoint {directory / str(step)}: {_brief(error)}"
        ) from error
      logging.warning("Kept the unreadable checkpoint %d as %s", step, target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("aejax: unreadable checkpoints set aside")
  manager.reload()


def _steps_on_disk(directory: epath.Path) -> list[int]:
  try:
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())
  except OSError:
    return []


def _write_error(
  manager: ocp.CheckpointManager, error: Exception, step: int | None = None
) -> errors.CheckpointError:
  directory = workdir.as_path(manager.directory)
  steps = _steps_on_disk(directory)
  what = "a checkpoint" if step is None else f"checkpoint {step}"
  kept = (
    f"the checkpoints already there are kept (steps {', '.join(map(str, steps))}); rerun the "
    f"same command to resume from step {steps[-1]}"
    if steps
    else "no earlier checkpoint exists"
  )
  return errors.CheckpointError(
    f"writing {what} to {directory} failed ({_brief(error)}). Free disk space or make the "
    f"folder writable; {kept}"
  )


def _brief(error: BaseException) -> str:
  """`Type: first line of the message`, at most 300 characters: for one-line error reports."""
  lines = str(error).strip().splitlines()
  text = f"{type(error).__name__}: {lines[0] if lines else ''}"
  return text if len(text) <= 300 else text[:297] + "..."
