"""Test set-up: 8 fake CPU devices (before JAX starts) and the real data folder."""

import os
import pathlib

# Must happen before jax is imported anywhere: XLA reads the flag once.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

# Many tests compile the same small programs (tiny configs, in-process and in CLI
# subprocesses): a persistent compilation cache shared by all of them, and by the
# pytest-xdist workers, turns repeats into cache hits. It lives in .pytest_cache.
_CACHE = pathlib.Path(__file__).resolve().parent.parent / ".pytest_cache" / "jax_compilation"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

# Catches (B,) vs (B, 1) broadcasting bugs in losses.
jax.config.update("jax_numpy_rank_promotion", "raise")


def _default_data_dir():
  here = pathlib.Path(__file__).resolve().parent.parent
  return here.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir():
  """The folder of real MNIST-family files (AEJAX_DATA_DIR, else ../shared/data)."""
  path = pathlib.Path(os.environ.get("AEJAX_DATA_DIR", _default_data_dir()))
  if not (path / "mnist").is_dir():
    pytest.fail(
      f"real data not found at {path}; set AEJAX_DATA_DIR to a folder with mnist/, "
      "fashion-mnist/ and binarized-mnist/ (see README)"
    )
  return path
