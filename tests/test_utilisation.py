"""Device utilisation: FLOPs from XLA's cost analysis, FLOP/s and utilisation in the training
log, matrix-multiply precision as a config field, and profiler traces of chosen steps."""

import gzip
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_digits_config
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import aejax
from aejax import configs, errors, evaluate, metrics, train, utilisation

PLUGINS = os.path.join(os.path.dirname(__file__), "plugins")


def _loop(x, num_steps):
  def body(carry):
    i, y = carry
    return i + 1, jnp.tanh(y @ y)

  return jax.lax.while_loop(lambda c: c[0] < num_steps, body, (0, x))[1]


def test_a_loops_flops_are_one_step_of_its_body_per_device():
  # XLA counts a while loop's body once: the fused program's count is one training step's.
  x = jnp.ones((128, 128), jnp.float32)
  looped = jax.jit(_loop)
  looped(x, 7)
  # One matmul, plus the loop counter's increment and comparison.
  assert utilisation.program_flops(looped, x, 7) == pytest.approx(2 * 128**3, abs=4)
  # A program sharded over 8 devices is analysed per device.
  mesh = Mesh(np.array(jax.devices()), ("data",))
  rows = jax.device_put(jnp.ones((1024, 256)), NamedSharding(mesh, PartitionSpec("data")))
  weight = jax.device_put(jnp.ones((256, 256)), NamedSharding(mesh, PartitionSpec()))
  matmul = jax.jit(lambda a, b: a @ b)
  assert utilisation.program_flops(matmul, rows, weight) == 2 * 1024 * 256 * 256 / 8


def test_the_utilisation_metrics_are_what_their_inputs_give_and_only_those():
  record = utilisation.utilisation_metrics(4e9, 250.0, 2.0, 3 * 2**30)
  assert record == {
    "train/tflops_per_device": pytest.approx(1.0),
    "train/mfu": pytest.approx(0.5),
    "train/peak_memory_gib": 3.0,
  }
  # No peak known: TFLOP/s without utilisation; no memory statistics (CPUs): no memory.
  assert utilisation.utilisation_metrics(4e9, 250.0, None, None).keys() == {
    "train/tflops_per_device"
  }
  assert utilisation.utilisation_metrics(None, 250.0, 2.0, None) == {}


def test_the_peak_is_the_configured_one_else_the_table_of_device_kinds():
  cpu = jax.devices()[0]
  assert utilisation.peak_tflops(cpu) is None
  assert utilisation.peak_tflops(cpu, 0.25) == 0.25

  class H100:
    device_kind = "NVIDIA H100 80GB HBM3"

  assert utilisation.peak_tflops(H100()) == utilisation.PEAK_BF16_TFLOPS[H100.device_kind]
  # CPUs report no memory statistics.
  assert utilisation.peak_memory_bytes() is None


def test_the_profile_window_is_the_steps_after_the_first_dispatch_within_the_run():
  assert utilisation.profile_window(4, 3, 16) == (4, 7)
  assert utilisation.profile_window(12, 10, 16) == (12, 16)
  assert utilisation.profile_window(16, 3, 16) is None
  assert utilisation.profile_window(4, 0, 16) is None


def test_training_logs_tflops_and_utilisation_and_traces_the_chosen_steps(tmp_path):
  c = tiny_digits_config(total_steps=16)
  c.log_every_steps = 4  # The first dispatch: steps 0-4, compiled; the trace: steps 4-7.
  c.profile_steps = 3
  c.peak_tflops_per_device = 0.001
  train.train_and_evaluate(c, str(tmp_path))

  logged = [r for r in metrics.read_metrics(tmp_path) if "train/loss" in r]
  assert [r["step"] for r in logged] == [4, 8, 12, 16]
  for record in logged:
    assert record["train/tflops_per_device"] > 0
    assert record["train/mfu"] == pytest.approx(record["train/tflops_per_device"] / 0.001)
    assert "train/peak_memory_gib" not in record  # CPUs report none.
  # The FLOP/s are FLOPs per step (all 8 devices' work counted once per device) over seconds.
  tflops, rate = logged[-1]["train/tflops_per_device"], logged[-1]["train/images_per_sec"]
  flops_per_image = tflops * 1e12 / (rate / c.batch_size) / (c.batch_size / 8)
  # A 64-unit dense VAE on 8x8 digits: forward, backward and Adam, tens of kFLOPs per image.
  assert 1e4 < flops_per_image < 1e6, flops_per_image

  traces = list((tmp_path / "profile").glob("plugins/profile/*/perfetto_trace.json.gz"))
  assert len(traces) == 1 and list(traces[0].parent.glob("*.xplane.pb"))
  with gzip.open(traces[0]) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  runs = [
    e for e in events if e.get("name") == "CommonPjRtLoadedExecutable::Execute (jit_multi_step)"
  ]
  assert len(runs) == 1  # Steps 4 to 7 in one dispatch; not the compiling first one.
  # Its operations are in the trace too, one event per operation run on each device.
  assert any(e.get("args", {}).get("hlo_module") == "jit_multi_step" for e in events)


def test_a_run_traces_its_programs_at_the_configured_matmul_precision(tmp_path, monkeypatch):
  monkeypatch.syspath_prepend(PLUGINS)
  import records_precision

  c = tiny_digits_config(total_steps=4)
  c.model.name = "records_precision:build"
  c.matmul_precision = "float32"
  records_precision.TRACED_AT.clear()
  train.train_and_evaluate(c, str(tmp_path))
  # Initialisation, the training step and the evaluation each trace the encoder.
  assert len(records_precision.TRACED_AT) >= 3
  assert set(records_precision.TRACED_AT) == {"float32"}
  assert jax.config.jax_default_matmul_precision is None  # Only while the run traces.

  # Loading and evaluating the run trace its model at the same precision.
  records_precision.TRACED_AT.clear()
  aejax.load(tmp_path, trust_model_code=True).encode(np.zeros((2, 8, 8, 1), np.float32))
  evaluate.evaluate(tmp_path, nll_samples=2, limit=16, probe_train_size=0, fid=False)
  assert len(records_precision.TRACED_AT) >= 2
  assert set(records_precision.TRACED_AT) == {"float32"}


def test_an_unknown_precision_is_a_config_error_naming_the_field():
  c = tiny_digits_config(total_steps=4)
  c.matmul_precision = "fp8"
  with pytest.raises(errors.ConfigError, match=r"config.matmul_precision: unknown precision 'fp8'"):
    configs.validate(c, num_devices=8)
