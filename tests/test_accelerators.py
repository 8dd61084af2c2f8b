"""Tests for aejax.accelerators on faked machines: device lines, install hints, JAX's warning."""

import logging
import os
import subprocess
import sys
import types

import jax

from aejax import accelerators


def fake_device(platform, kind, process_index=0):
  return types.SimpleNamespace(platform=platform, device_kind=kind, process_index=process_index)


def test_describe():
  gpus = [fake_device("gpu", "NVIDIA H100 80GB HBM3") for _ in range(4)]
  assert accelerators.describe(gpus) == "training on 4 gpu devices (NVIDIA H100 80GB HBM3)"
  tpus = [fake_device("tpu", "TPU v5 lite", process_index=i // 4) for i in range(8)]
  assert accelerators.describe(tpus) == "training on 8 tpu devices (TPU v5 lite) on 2 hosts"
  evaluating = accelerators.describe(tpus, doing="evaluating")
  assert evaluating == "evaluating on 8 tpu devices (TPU v5 lite) on 2 hosts"
  assert accelerators.describe([fake_device("cpu", "cpu")]) == "training on 1 cpu device (cpu)"
  assert accelerators.describe([]) == "no JAX devices"
  # The test set-up's 8 fake CPU devices.
  assert accelerators.describe() == f"training on {jax.device_count()} cpu devices (cpu)"


def test_gpu_probe():
  def no_files(path):
    return False

  assert not accelerators.gpu_present(which=lambda name: None, exists=no_files)
  assert accelerators.gpu_present(which=lambda name: "/usr/bin/" + name, exists=no_files)
  for path in ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/dxg"):
    assert accelerators.gpu_present(which=lambda name: None, exists=lambda p, path=path: p == path)


def test_tpu_probe():
  pci = {
    "/sys/bus/pci/devices/0000:00:04.0/vendor": "0x1ae0",  # gVNIC: Google's, not a TPU.
    "/sys/bus/pci/devices/0000:00:04.0/device": "0x0042",
    "/sys/bus/pci/devices/0000:00:05.0/vendor": "0x8086",
    "/sys/bus/pci/devices/0000:00:05.0/device": "0x0063",
  }

  def machine(files, dev_accel=()):
    def glob(pattern):
      if pattern.startswith("/dev/accel"):
        return list(dev_accel)
      return sorted(p for p in files if p.endswith("/vendor"))

    return dict(glob=glob, read_text=lambda path: files.get(path, ""))

  assert not accelerators.tpu_present(environ={}, **machine(pci))
  assert accelerators.tpu_present(environ={"TPU_NAME": "my-tpu"}, **machine(pci))
  assert accelerators.tpu_present(environ={}, **machine(pci, dev_accel=["/dev/accel0"]))
  v5e = dict(pci)
  v5e["/sys/bus/pci/devices/0000:00:06.0/vendor"] = "0x1ae0"
  v5e["/sys/bus/pci/devices/0000:00:06.0/device"] = "0x0063"
  assert accelerators.tpu_present(environ={}, **machine(v5e))


def test_install_hint():
  hint = accelerators.install_hint(backend="cpu", platforms="", gpu=True, tpu=False)
  assert "NVIDIA GPU" in hint and "pip install -e '.[cuda12]'" in hint
  hint = accelerators.install_hint(backend="cpu", platforms="", gpu=False, tpu=True)
  assert "TPU" in hint and "pip install -e '.[tpu]'" in hint
  # Nothing unused, or the accelerator is in use, or the user chose the CPU: no hint.
  assert accelerators.install_hint(backend="cpu", platforms="", gpu=False, tpu=False) is None
  assert accelerators.install_hint(backend="gpu", platforms="", gpu=True, tpu=False) is None
  assert accelerators.install_hint(backend="tpu", platforms="", gpu=False, tpu=True) is None
  assert accelerators.install_hint(backend="cpu", platforms="cpu", gpu=True, tpu=True) is None
  assert accelerators.install_hint(backend="cpu", platforms="cuda,cpu", gpu=True, tpu=False)


def quiet_cli_logging(caplog):
  """Logging as aejax's CLIs set it up: INFO, with absl's (orbax's) INFO lines turned off.

  caplog.set_level uses setLevel (which also clears the loggers' cached answers) and restores
  the levels after the test.
  """
  caplog.set_level(logging.INFO)
  caplog.set_level(logging.WARNING, logger="absl")


def test_log_devices_with_a_faked_unused_gpu(monkeypatch, caplog):
  quiet_cli_logging(caplog)
  monkeypatch.setattr(accelerators, "_jax_platforms", lambda: "")
  monkeypatch.setattr(accelerators, "gpu_present", lambda: True)
  caplog.set_level(logging.INFO)
  hint = accelerators.log_devices()
  assert "pip install -e '.[cuda12]'" in hint
  records = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
  assert records == [
    ("aejax.accelerators", logging.INFO, accelerators.describe()),
    ("aejax.accelerators", logging.WARNING, hint),
  ]
  # log_devices leaves JAX's warning about an unused GPU or TPU visible.
  jax_logger = logging.getLogger(accelerators.JAX_BACKEND_LOGGER)
  assert jax_logger.isEnabledFor(logging.WARNING)
  caplog.clear()
  jax_logger.warning("An NVIDIA GPU may be present on this machine")
  assert [r.name for r in caplog.records] == [accelerators.JAX_BACKEND_LOGGER]


def test_log_devices_on_a_machine_without_accelerators(monkeypatch, caplog):
  monkeypatch.setattr(accelerators, "_jax_platforms", lambda: "")
  monkeypatch.setattr(accelerators, "gpu_present", lambda: False)
  monkeypatch.setattr(accelerators, "tpu_present", lambda: False)
  caplog.set_level(logging.INFO)
  assert accelerators.log_devices() is None
  assert [r.levelno for r in caplog.records] == [logging.INFO]


_FAKED_GPU_MACHINE = """
import logging
from jax._src import hardware_utils
from aejax import accelerators

# A machine with an NVIDIA GPU but a CPU-only jaxlib, as JAX and aejax see it.
hardware_utils.has_visible_nvidia_gpu = lambda: True
accelerators.gpu_present = lambda: True
# force: importing aejax (orbax, through absl) has already configured the root logger.
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
logging.getLogger("absl").setLevel(logging.WARNING)
accelerators.log_devices()
"""


def test_jax_warning_then_the_install_command_at_start_up():
  # A fresh process: JAX warns only when it starts its backends, which log_devices does.
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
  result = subprocess.run(
    [sys.executable, "-c", _FAKED_GPU_MACHINE],
    capture_output=True,
    text=True,
    env=env,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr
  lines = result.stderr.splitlines()
  jax_line = next(
    i for i, line in enumerate(lines) if "An NVIDIA GPU may be present on this machine" in line
  )
  device_line = next(i for i, line in enumerate(lines) if "aejax.accelerators: training on" in line)
  hint_line = next(i for i, line in enumerate(lines) if "pip install -e '.[cuda12]'" in line)
  assert lines[jax_line].startswith("WARNING jax._src.xla_bridge")
  assert lines[hint_line].startswith("WARNING aejax.accelerators")
  assert jax_line < device_line < hint_line
