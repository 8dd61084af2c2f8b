"""Compiling once: JAX's persistent compilation cache, and how often a process used it.

A run's programs depend on its config's shapes and structure, not on its
seed, beta or learning rate (those enter as arguments): a second run that
differs only in them compiles nothing new. Within one process the trainer
keeps its compiled programs (train.py); across processes (a sweep's workers,
a rerun) JAX's persistent cache in a folder does it: `--compilation_cache_dir`
or the JAX_COMPILATION_CACHE_DIR variable that JAX itself reads.
"""

import logging
import os
import threading

import jax
from absl import flags

ENV_VAR = "JAX_COMPILATION_CACHE_DIR"
# JAX's names of the persistent cache's events (jax/_src/compiler.py, compilation_cache.py).
_HIT, _MISS = "/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses"

_counts = {_HIT: 0, _MISS: 0}
_lock = threading.Lock()
_listening = False


def _count(event: str, **kwargs) -> None:
  del kwargs
  if event in _counts:
    with _lock:
      _counts[event] += 1


def define_flags(module_name: str) -> None:
  flags.DEFINE_string(
    "compilation_cache_dir",
    None,
    "Folder of JAX's persistent compilation cache: a later process with the same programs "
    f"(another seed, beta or learning rate, a rerun) loads them instead of compiling "
    f"(default: ${ENV_VAR}, else none).",
    module_name=module_name,
  )


def use_cache(folder: str | os.PathLike[str] | None) -> str | None:
  """Compiled programs are saved in and loaded from `folder`, every program however quickly it
  compiled; without `folder`, $JAX_COMPILATION_CACHE_DIR as JAX uses it. Returns the folder in
  use, or None (no cache)."""
  global _listening
  if folder:
    folder = os.fspath(folder)
    jax.config.update("jax_compilation_cache_dir", folder)
    # JAX's default caches only programs that took over a second to compile; a CPU run's are
    # often faster than that and still worth not compiling again.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  else:  # JAX reads the variable itself, with its own thresholds.
    folder = os.environ.get(ENV_VAR) or None
    if folder is None:
      return None
  if not _listening:
    jax.monitoring.register_event_listener(_count)
    _listening = True
  return folder


def cache_counts() -> dict[str, int]:
  """{"loaded": programs found in the persistent cache, "compiled": programs it lacked}, so far
  in this process (0 and 0 without a cache)."""
  with _lock:
    return {"loaded": _counts[_HIT], "compiled": _counts[_MISS]}


def log_cache_use(folder: str | None) -> None:
  if folder is None:
    return
  counts = cache_counts()
  logging.info(
    "compilation cache %s: %d programs loaded, %d compiled and saved",
    folder,
    counts["loaded"],
    counts["compiled"],
  )
