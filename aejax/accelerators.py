"""Which devices JAX trains on, and the install command when a GPU or TPU sits unused."""

from __future__ import annotations

import collections
import glob as glob_lib
import logging
import os
import pathlib
import shutil
from collections.abc import Callable, Iterable, Mapping

import jax

__all__ = [
  "INSTALL_COMMANDS",
  "JAX_BACKEND_LOGGER",
  "describe",
  "gpu_present",
  "install_hint",
  "log_devices",
  "tpu_present",
]

# The extras of pyproject.toml that pull JAX's accelerator builds (docs/install.md).
INSTALL_COMMANDS = {"gpu": "pip install -e '.[cuda12]'", "tpu": "pip install -e '.[tpu]'"}

# Where JAX logs, at WARNING, that a GPU or TPU may be present but its jaxlib is not installed.
JAX_BACKEND_LOGGER = "jax._src.xla_bridge"

# Signs of an NVIDIA GPU the driver exposes (the last three are the ones JAX itself checks:
# bare metal, containers, WSL2).
_NVIDIA_PATHS = ("/proc/driver/nvidia", "/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg")

# Cloud TPU chips are PCI devices of Google's vendor id with these device ids (v3 to TPU7x, the
# list JAX checks too); the vendor alone is not enough: Google's virtual NIC (gVNIC) has it.
_GOOGLE_PCI_VENDOR = "0x1ae0"
_TPU_PCI_DEVICES = ("0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076")
_TPU_ENV_VARS = ("TPU_NAME", "TPU_ACCELERATOR_TYPE")

_log = logging.getLogger(__name__)


def describe(devices: Iterable[jax.Device] | None = None, doing: str = "training") -> str:
  """One line on the devices JAX will work on, e.g. 'training on 8 tpu devices (TPU v5 lite) on
  2 hosts'.

  devices: default jax.devices(), all devices of all processes.
  doing: what the program does on them ("training", "evaluating").
  """
  devices = list(jax.devices() if devices is None else devices)
  if not devices:
    return "no JAX devices"
  kinds = collections.Counter((d.platform, d.device_kind) for d in devices)
  groups = []
  for (platform, kind), count in kinds.items():
    plural = "" if count == 1 else "s"
    groups.append(f"{count} {platform} device{plural} ({kind})")
  hosts = len({d.process_index for d in devices})
  where = f" on {hosts} hosts" if hosts > 1 else ""
  return f"{doing} on {', '.join(groups)}{where}"


def _read_text(path: str) -> str:
  try:
    return pathlib.Path(path).read_text().strip()
  except OSError:
    return ""


def gpu_present(
  *,
  which: Callable[[str], str | None] = shutil.which,
  exists: Callable[[str], bool] = os.path.exists,
) -> bool:
  """Whether this machine shows signs of an NVIDIA GPU (nvidia-smi or the driver's files)."""
  return which("nvidia-smi") is not None or any(exists(path) for path in _NVIDIA_PATHS)


def tpu_present(
  *,
  environ: Mapping[str, str] = os.environ,
  glob: Callable[[str], list[str]] = glob_lib.glob,
  read_text: Callable[[str], str] = _read_text,
) -> bool:
  """Whether this machine shows signs of a Cloud TPU (TPU env vars, /dev/accel*, Google PCI)."""
  if any(environ.get(name) for name in _TPU_ENV_VARS):
    return True
  # TPU v2-v4 VMs expose /dev/accel<N>; v5e and later go through VFIO, where the PCI ids are
  # the sign (a bare /dev/vfio also exists on machines without TPUs).
  if glob("/dev/accel[0-9]*"):
    return True
  for vendor in glob("/sys/bus/pci/devices/*/vendor"):
    if read_text(vendor) == _GOOGLE_PCI_VENDOR:
      if read_text(os.path.join(os.path.dirname(vendor), "device")) in _TPU_PCI_DEVICES:
        return True
  return False


def _jax_platforms() -> str:
  """The platforms JAX is restricted to ($JAX_PLATFORMS or jax_platforms); '' if none."""
  return jax.config.jax_platforms or ""


def install_hint(
  *,
  backend: str | None = None,
  platforms: str | None = None,
  gpu: bool | None = None,
  tpu: bool | None = None,
) -> str | None:
  """The install command, if a GPU or TPU is present but JAX runs on the CPU; else None.

  Args:
    backend: JAX's default backend; default jax.default_backend().
    platforms: the platforms JAX was restricted to (JAX_PLATFORMS); default JAX's setting. A
      restriction to the CPU is the user's choice: no hint.
    gpu, tpu: whether one is present; default: probe this machine (gpu_present, tpu_present).
  """
  backend = jax.default_backend() if backend is None else backend
  if backend != "cpu":
    return None
  platforms = _jax_platforms() if platforms is None else platforms
  if platforms and not any(p in platforms for p in ("cuda", "gpu", "rocm", "tpu")):
    return None
  if gpu_present() if gpu is None else gpu:
    kind = "gpu"
    what = "an NVIDIA GPU seems present but JAX runs on the CPU (a CPU-only jaxlib)"
  elif tpu_present() if tpu is None else tpu:
    kind = "tpu"
    what = "a TPU seems present but JAX runs on the CPU (no libtpu)"
  else:
    return None
  return f"{what}; install JAX's {kind.upper()} build: {INSTALL_COMMANDS[kind]} (docs/install.md)"


def log_devices(
  devices: Iterable[jax.Device] | None = None,
  *,
  logger: logging.Logger | None = None,
  doing: str = "training",
) -> str | None:
  """Logs describe() at INFO and, if any, install_hint() at WARNING; returns the hint.

  Call it first thing in a CLI: listing the devices starts JAX's backends, so JAX's own
  warning about an unused GPU or TPU comes right before aejax's line naming the install
  command. It changes no log levels: a CLI that quietens its start-up logs (absl, orbax) still
  shows JAX's warning, which is WARNING level on JAX_BACKEND_LOGGER.
  """
  logger = logger or _log
  logger.info("%s", describe(devices, doing))
  hint = install_hint()
  if hint:
    logger.warning("%s", hint)
  return hint
