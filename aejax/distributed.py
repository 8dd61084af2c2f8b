"""Several processes, one run: JAX's distributed runtime, and outcomes agreed across processes.

A multi-process run (a TPU slice, N GPU nodes, or several processes on one
machine) is the same program in every process: each calls `initialize`
before any JAX computation, runs the same computations in the same order,
and only process 0 writes files. What one process finds (a bad config, a
refused workdir, an unreadable checkpoint, a full disk, a SIGTERM) must
reach the others within seconds, not after a collective's timeout: `agreed`
exchanges each phase's outcome, and `any_process` a per-dispatch flag.
With one process both are no-ops.
"""

import contextlib
import logging
import os
import socket
import time

import jax
import numpy as np
from absl import flags
from jax.experimental import multihost_utils

from aejax import errors

# The environment variables read when the flags are not given (JAX itself reads only the first).
ENV_VARS = {
  "coordinator_address": "JAX_COORDINATOR_ADDRESS",
  "num_processes": "JAX_NUM_PROCESSES",
  "process_id": "JAX_PROCESS_ID",
}
# Bytes of an error message sent to the other processes (longer ones are cut).
MESSAGE_BYTES = 2048


def settings_from_env(
  coordinator_address: str | None, num_processes: int | None, process_id: int | None
) -> tuple[str | None, int | None, int | None]:
  """The flags, each falling back to its environment variable (ENV_VARS)."""
  values = {
    "coordinator_address": coordinator_address,
    "num_processes": num_processes,
    "process_id": process_id,
  }
  for name, var in ENV_VARS.items():
    if values[name] is None and os.environ.get(var):
      raw = os.environ[var]
      if name != "coordinator_address":
        try:
          raw = int(raw)
        except ValueError as error:
          raise errors.ConfigError(f"{var}={raw!r}: not an integer") from error
      values[name] = raw
  return values["coordinator_address"], values["num_processes"], values["process_id"]


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  *,
  auto: bool = False,
  timeout_s: int = 300,
) -> bool:
  """Joins this process to a multi-process run; returns whether it did.

  With none of the three settings (flags or ENV_VARS) and not `auto`, the run
  is one process and nothing happens. `auto` lets JAX detect them (Cloud TPU,
  SLURM, Open MPI). On CPU the processes' collectives go over gloo (TCP), which
  is what lets a test run several processes on one machine. Raises ConfigError
  naming the setting for an incomplete or impossible combination, and
  DistributedError if the processes do not meet within `timeout_s` seconds.
  """
  address, count, index = settings_from_env(coordinator_address, num_processes, process_id)
  given = {"coordinator_address": address, "num_processes": count, "process_id": index}
  if all(v is None for v in given.values()) and not auto:
    return False
  if not auto:
    missing = [name for name, value in given.items() if value is None]
    if missing:
      raise errors.ConfigError(
        f"--{missing[0]}: required with --"
        + " and --".join(n for n in given if n not in missing)
        + f" (or set {ENV_VARS[missing[0]]}; or pass --distributed to detect all three on "
        "Cloud TPU or SLURM)"
      )
    if count < 1:
      raise errors.ConfigError(f"--num_processes={count}: must be at least 1")
    if not 0 <= index < count:
      raise errors.ConfigError(
        f"--process_id={index}: must be in [0, {count}) for {count} processes"
      )
    if ":" not in address:
      raise errors.ConfigError(f"--coordinator_address={address!r}: expected HOST:PORT")
  if timeout_s < 1:
    raise errors.ConfigError(f"--initialization_timeout={timeout_s}: must be at least 1 second")
  # Only the CPU backend needs telling; GPUs and TPUs bring their own collectives.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if address is not None:
    logging.info(
      "Process %s of %s: joining the run at %s (waiting up to %d s for the others)",
      "?" if index is None else index,
      "?" if count is None else count,
      address,
      timeout_s,
    )
  if address is not None and index not in (None, 0):
    # JAX's runtime aborts the process (SIGABRT, no Python error) when the rendezvous times
    # out; a coordinator that never opens its port is the common case, reported here instead.
    _wait_for_port(address, timeout_s, f"process {index} of {count}")
  try:
    jax.distributed.initialize(address, count, index, initialization_timeout=timeout_s)
  except Exception as error:  # JAX reports a failed rendezvous as several types.
    raise _join_error(f"process {index} of {count}", address, timeout_s, error) from error
  logging.info(
    "Process %d of %d (%d local devices of %d in all)",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return True


def _join_error(who: str, address, timeout_s: int, error) -> errors.DistributedError:
  why = f" ({type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:300]})"
  return errors.DistributedError(
    f"{who} could not join the run at {address or 'the address JAX detected'} within "
    f"{timeout_s} s{why if error else ''}. Start every process with the same "
    "--coordinator_address and --num_processes, each with its own --process_id"
  )


def _wait_for_port(address: str, timeout_s: int, who: str) -> None:
  """Returns once HOST:PORT accepts a TCP connection; DistributedError after `timeout_s`."""
  host, port = address.rsplit(":", 1)
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
        return
    except OSError as error:
      if time.monotonic() > deadline:
        raise _join_error(who, address, timeout_s, error) from error
      time.sleep(0.5)


def define_flags(module_name: str) -> None:
  """The flags of a multi-process run, declared as `module_name`'s own (they show in --help)."""
  flags.DEFINE_bool(
    "distributed",
    False,
    "A multi-process run whose settings JAX detects (Cloud TPU, SLURM, Open MPI); see "
    "docs/scaling.md.",
    module_name=module_name,
  )
  flags.DEFINE_string(
    "coordinator_address",
    None,
    "HOST:PORT of process 0, the same for every process of a multi-process run "
    f"(default: ${ENV_VARS['coordinator_address']}).",
    module_name=module_name,
  )
  flags.DEFINE_integer(
    "num_processes",
    None,
    f"Processes of a multi-process run (default: ${ENV_VARS['num_processes']}).",
    module_name=module_name,
  )
  flags.DEFINE_integer(
    "process_id",
    None,
    f"This process's index in [0, num_processes) (default: ${ENV_VARS['process_id']}).",
    module_name=module_name,
  )
  flags.DEFINE_integer(
    "initialization_timeout",
    300,
    "Seconds a multi-process run's processes wait for each other to start.",
    module_name=module_name,
  )


def initialize_from_flags(values) -> bool:
  """`initialize` with the flags of `define_flags` (absl's FLAGS, or an object with them)."""
  return initialize(
    values.coordinator_address,
    values.num_processes,
    values.process_id,
    auto=values.distributed,
    timeout_s=values.initialization_timeout,
  )


def is_writer() -> bool:
  """Whether this process writes files: process 0 alone."""
  return jax.process_index() == 0


def any_process(flag: int) -> int:
  """The largest of every process's `flag` (an int >= 0); `flag` itself with one process.

  A collective: every process must call it at the same point.
  """
  if jax.process_count() == 1:
    return int(flag)
  return int(np.max(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


# The documented errors a phase may end with, by the code sent to the other processes.
_AGREED_ERRORS = {
  1: errors.ConfigError,
  2: errors.CheckpointError,
  3: errors.DataError,
  4: errors.InputError,
  5: OSError,
  6: errors.DistributedError,
}


def _error_code(error: BaseException) -> int:
  for code, kind in _AGREED_ERRORS.items():
    if isinstance(error, kind):
      return code
  return len(_AGREED_ERRORS) + 1  # Anything else: a bug in some process.


@contextlib.contextmanager
def agreed(phase: str):
  """Runs a phase whose outcome every process learns before going on.

  Every process must enter and leave the phase at the same point. If one
  raises, each process raises: the one that failed its own error, the others
  the same kind of error with its message, prefixed by the process that
  found it ("process 0: config.x: ..."). A documented error thus exits every
  process with the same status (aejax/runner.py) instead of leaving the
  others waiting in a collective. With one process the phase just runs.
  """
  if jax.process_count() == 1:
    yield
    return
  failure = None
  try:
    yield
  except Exception as error:  # Passed on to the other processes, then re-raised.
    failure = error
  code = 0 if failure is None else _error_code(failure)
  text = b"" if failure is None else " ".join(str(failure).split()).encode()[:MESSAGE_BYTES]
  message = np.zeros(MESSAGE_BYTES, np.uint8)
  message[: len(text)] = np.frombuffer(text, np.uint8)
  codes = np.asarray(multihost_utils.process_allgather(np.asarray(code, np.int32)))
  messages = np.asarray(multihost_utils.process_allgather(message))
  if failure is not None:
    raise failure
  if codes.max() == 0:
    return
  first = int(np.argmax(codes > 0))
  text = bytes(messages[first]).rstrip(b"\0").decode(errors="replace")
  kind = _AGREED_ERRORS.get(int(codes[first]), errors.DistributedError)
  raise kind(f"process {first} ({phase}): {text}")
