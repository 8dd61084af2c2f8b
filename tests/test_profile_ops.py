"""Tests for scripts/profile_ops.py: exclusive times of nested trace events, HLO op descriptions,
and a real JAX profile of the MLP case."""

import jax
import jax.numpy as jnp
from helpers import load_script

profile_ops = load_script("profile_ops")


def _event(name, ts, dur, tid=1):
  return {"name": name, "ts": ts, "dur": dur, "tid": tid, "pid": 1, "ph": "X"}


def test_a_parent_keeps_only_the_time_outside_its_children():
  events = [
    _event("while", 0, 100),
    _event("fusion.1", 10, 30),
    _event("dot.2", 50, 40),
    _event("inner", 55, 10),  # Inside dot.2.
    _event("fusion.1", 120, 5),
    _event("dot.2", 0, 70, tid=2),  # Another thread: its own stack.
  ]
  assert profile_ops.exclusive_times(events) == {
    "while": 30,
    "fusion.1": 35,
    "dot.2": 100,
    "inner": 10,
  }


def test_hlo_ops_names_opcode_shape_and_the_heavy_ops_of_a_fusion():
  def f(a, b):
    return jnp.tanh(a @ b).sum(axis=0)

  a = jnp.ones((32, 16))
  text = jax.jit(f).lower(a, jnp.ones((16, 8))).compile().as_text()
  ops = profile_ops.hlo_ops(text)
  dots = [op for op in ops.values() if op["opcode"] == "dot" or "dot" in op["fused"]]
  assert dots and all(op["shape"].startswith(("f32[32,8]", "f32[8]")) for op in dots), dots
  assert all(set(op["fused"]) <= set(profile_ops.HEAVY_OPCODES) for op in ops.values())


def test_the_mlp_profile_accounts_for_its_steps_matmuls(data_dir, monkeypatch):
  monkeypatch.setenv("AEJAX_DATA_DIR", str(data_dir))
  rows, wall_ms = profile_ops.profile_jax("iwae_mlp", 16, 4)  # 16: 2 images on each of 8 devices.
  assert wall_ms > 0
  total = sum(ms for _, _, ms in rows)
  # The device thread's operations cover most of a step's wall time, and never more.
  assert 0.3 * wall_ms < total <= 1.05 * wall_ms, (total, wall_ms)
  # A 784-200-200-50 MLP's forward and backward passes are matmuls, some of them fused.
  assert any("dot" in what for _, what, _ in rows), rows[:5]
