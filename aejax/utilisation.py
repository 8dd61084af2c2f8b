"""How much of its devices a run uses: FLOP/s from XLA's cost analysis, FLOP utilisation, memory,
matrix-multiply precision, and profiler traces.

FLOPs are XLA's count for the compiled training program (`Compiled.cost_analysis()`): every
multiply-add of the forward and backward pass and the optimizer, elementwise work included, per
device (a sharded program is analysed per device). XLA counts a while loop's body once, so the
fused multi-step program's count is that of one training step of every member.
"""

import contextlib
import math
import os

import jax

# Dense bfloat16 matrix-multiply peak of one device in TFLOP/s, by jax.Device.device_kind, from
# the vendors' data sheets (no sparsity). train/mfu is measured against it whatever the run's
# dtype, as model FLOP utilisation is usually quoted; devices not listed (CPUs among them) log
# train/mfu only when config.peak_tflops_per_device gives their peak.
PEAK_BF16_TFLOPS = {
  "NVIDIA H100 80GB HBM3": 989.4,  # H100 SXM.
  "NVIDIA H100 PCIe": 756.5,
  "NVIDIA H200": 989.4,
  "NVIDIA A100-SXM4-40GB": 312.0,
  "NVIDIA A100-SXM4-80GB": 312.0,
  "NVIDIA A100 80GB PCIe": 312.0,
  "TPU v4": 275.0,
  "TPU v5 lite": 197.0,  # v5e.
  "TPU v5": 459.0,  # v5p.
  "TPU v6 lite": 918.0,  # v6e (Trillium).
}

# config.matmul_precision: JAX's names (jax_default_matmul_precision). "default" leaves the
# backend's choice: full float32 on CPUs, TF32 on recent NVIDIA GPUs, one bfloat16 pass on TPUs.
MATMUL_PRECISIONS = ("default", "bfloat16", "tensorfloat32", "float32")


def matmul_precision(name: str) -> contextlib.AbstractContextManager:
  """The context in which the run's programs are traced: matmuls and convolutions at `name`."""
  if name == "default":
    return contextlib.nullcontext()
  return jax.default_matmul_precision(name)


def peak_tflops(device: jax.Device, configured: float = 0.0) -> float | None:
  """`configured` when > 0, else the table's peak of the device's kind; None when unknown."""
  if configured > 0:
    return float(configured)
  return PEAK_BF16_TFLOPS.get(device.device_kind)


def program_flops(jitted, *args) -> float | None:
  """FLOPs per device of `jitted` at these arguments (shapes and shardings are what count; the
  arrays may have been donated); None where the backend reports none.

  Called after the program ran, this looks up its compilation, it does not compile again.
  """
  if not hasattr(jitted, "lower"):  # Not a jitted function (one wrapped by a test, say).
    return None
  cost = jitted.lower(*args).compile().cost_analysis()
  if isinstance(cost, list | tuple):  # Older JAX: one dict per partition.
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops is not None and math.isfinite(flops) and flops > 0 else None


def peak_memory_bytes(devices=None) -> int | None:
  """The most memory any of this process's devices has held (bytes); None where the backend
  does not say (CPUs)."""
  peaks = []
  for device in jax.local_devices() if devices is None else devices:
    stats = device.memory_stats()
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(int(stats["peak_bytes_in_use"]))
  return max(peaks) if peaks else None


def utilisation_metrics(
  flops_per_step: float | None, steps_per_sec: float, peak: float | None, memory: int | None
) -> dict[str, float]:
  """train/* metrics: TFLOP/s per device, FLOP utilisation against `peak` (TFLOP/s), peak
  device memory in GiB; each only where its inputs are known."""
  record = {}
  if flops_per_step:
    achieved = flops_per_step * steps_per_sec / 1e12
    record["train/tflops_per_device"] = achieved
    if peak:
      record["train/mfu"] = achieved / peak
  if memory is not None:
    record["train/peak_memory_gib"] = memory / 2**30
  return record


def profile_window(first: int, num_steps: int, total_steps: int) -> tuple[int, int] | None:
  """The steps [start, end) that config.profile_steps traces: the `num_steps` from `first` (the
  end of a run's first dispatch, so compilation is not in the trace), within the run; None when
  nothing is to be traced. Every process computes it: all of them end their dispatches there."""
  if num_steps < 1 or first >= total_steps:
    return None
  return first, min(first + num_steps, total_steps)


def start_trace(log_dir: str | os.PathLike) -> None:
  """A jax.profiler trace into `log_dir`, for TensorBoard's profile plugin and for Perfetto
  (plugins/profile/<time>/perfetto_trace.json.gz)."""
  jax.profiler.start_trace(os.fspath(log_dir), create_perfetto_trace=True)


def stop_trace(wait_for=None) -> None:
  """Ends the trace once `wait_for` (the state) is computed: dispatch is asynchronous."""
  if wait_for is not None:
    jax.block_until_ready(wait_for)
  jax.profiler.stop_trace()
