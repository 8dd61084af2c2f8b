"""Where a benchmark case's training step spends its time, op by op, in JAX and in PyTorch.

  AEJAX_DATA_DIR=/path/to/data python scripts/profile_ops.py --case=lesson_conv_ae [--steps=20]
  python scripts/profile_ops.py --case=iwae_mlp --batch_size=20 --framework=jax

JAX: the fused training program of scripts/benchmark.py's case (one lax.while_loop of --steps
steps, batches cut on device), traced with jax.profiler after a warm-up dispatch. An XLA
operation's time is its exclusive wall time on the device's thread (its own span less the
operations nested in it, such as a while loop's body), summed over the trace, divided by the
steps and averaged over the devices; its opcode and output shape come from the compiled HLO,
and a fusion lists the heavy operations fused into it. PyTorch: the same network, loss, Adam
and batches as scripts/benchmark_torch.py, under torch.profiler; each aten operation's self CPU
time per step.

Prints one Markdown table per framework, the top --top operations by time per step, with the
wall time per step of the profiled steps and the share the table's operations account for.
"""

import argparse
import collections
import gzip
import json
import os
import pathlib
import re
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

# Fused operations worth naming in a fusion's row: the ones that move or multiply much data.
HEAVY_OPCODES = (
  "dot", "convolution", "reduce", "reduce-window", "scatter", "gather", "dynamic-slice",
  "dynamic-update-slice", "transpose", "pad", "concatenate", "select-and-scatter", "sort",
)  # fmt: skip
_HLO_LINE = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+)\s+([a-z][\w\-]*)\(")
_COMPUTATION = re.compile(r"^\s*%?([\w.\-]+)\s.*\{\s*$")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")


def _parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--case", default="lesson_conv_ae")
  parser.add_argument("--batch_size", type=int, default=0, help="0: the case's first default")
  parser.add_argument("--framework", default="both", choices=("jax", "torch", "both"))
  parser.add_argument("--steps", type=int, default=20, help="profiled training steps")
  parser.add_argument("--top", type=int, default=12, help="operations listed per framework")
  return parser.parse_args(argv)


def exclusive_times(events: list[dict]) -> dict[str, float]:
  """{op name: exclusive microseconds} of complete ('X') trace events, nested per thread.

  An event's exclusive time is its duration less that of the events directly inside it on the
  same thread (a while loop's body, a call's callee), so nothing is counted twice.
  """
  by_thread = collections.defaultdict(list)
  for e in events:
    by_thread[(e.get("pid"), e.get("tid"))].append(e)
  totals = collections.Counter()
  for thread_events in by_thread.values():
    # Parents first: earlier start, and the longer of two that start together.
    thread_events.sort(key=lambda e: (e["ts"], -e["dur"]))
    stack: list[list] = []  # [end, name, exclusive so far]
    for e in thread_events:
      start, end = e["ts"], e["ts"] + e["dur"]
      while stack and stack[-1][0] <= start:
        _, name, own = stack.pop()
        totals[name] += own
      if stack:
        stack[-1][2] -= e["dur"]  # Time inside a child is not the parent's own.
      stack.append([end, e["name"], e["dur"]])
    for _, name, own in stack:
      totals[name] += own
  return dict(totals)


def hlo_ops(hlo_text: str) -> dict[str, dict]:
  """{instruction name: {"opcode", "shape", "fused": heavy opcodes of a fusion's computation}}."""
  computations, ops, current = {}, {}, None
  for line in hlo_text.splitlines():
    match = _HLO_LINE.match(line)
    if match:
      name, shape, opcode = match.groups()
      calls = _CALLS.search(line)
      ops[name] = {"opcode": opcode, "shape": shape, "calls": calls.group(1) if calls else None}
      if current is not None:
        computations[current].append(opcode)
      continue
    match = _COMPUTATION.match(line)
    if match and "=" not in line.split("{")[0]:
      current = match.group(1)
      computations[current] = []
  for op in ops.values():
    inner = computations.get(op.pop("calls") or "", [])
    op["fused"] = sorted({o for o in inner if o in HEAVY_OPCODES})
  return ops


def _trace_events(log_dir: pathlib.Path) -> list[dict]:
  (path,) = log_dir.glob("plugins/profile/*/perfetto_trace.json.gz")
  with gzip.open(path) as f:
    events = json.load(f)
  return events["traceEvents"] if isinstance(events, dict) else events


def profile_jax(case: str, batch_size: int, num_steps: int) -> tuple[list[tuple], float]:
  """[(op, description, ms per step)] of the fused program, and its wall ms per step."""
  import benchmark
  import jax
  import jax.numpy as jnp

  from aejax import data, models, optim, parallel, steps

  c = benchmark.case_config(case, batch_size, "float32", "auto")
  mesh = parallel.make_mesh()
  train_set, _ = data.load_splits(c)
  image_shape, num_train = train_set.images.shape[1:], len(train_set.images)
  model = models.build_model(c.model, image_shape)
  tx = optim.make_optimizer(c.optimizer, 10**6, num_train // batch_size)
  keys = steps.derived_keys(c.seed)
  state = steps.create_train_state(model, tx, image_shape, keys["init"], mesh)
  images = parallel.put_replicated(train_set.images, mesh)
  steps_per_epoch = num_train // batch_size
  multi_step = steps.make_multi_step(model, c, mesh, num_train, 10**6, steps_per_epoch)
  hp = {k: jnp.float32(v) for k, v in steps.hparams(c).items()}
  perm = jax.random.permutation(keys["shuffle"], num_train)
  compiled = multi_step.lower(state, images, None, perm, num_steps, keys, hp).compile()
  num_steps = min(num_steps, steps_per_epoch // 2)  # One epoch's order serves both dispatches.
  state, _ = compiled(state, images, None, perm, num_steps, keys, hp)  # Warm-up.
  jax.block_until_ready(state)
  with tempfile.TemporaryDirectory() as log_dir:
    jax.profiler.start_trace(log_dir, create_perfetto_trace=True)
    start = time.perf_counter()
    state, _ = compiled(state, images, None, perm, num_steps, keys, hp)
    jax.block_until_ready(state)
    wall = time.perf_counter() - start
    jax.profiler.stop_trace()
    events = _trace_events(pathlib.Path(log_dir))
  device_ops = [
    {**e, "name": e["args"]["hlo_op"]}
    for e in events
    if e.get("ph") == "X" and e.get("args", {}).get("hlo_module") == "jit_multi_step"
  ]
  ops = hlo_ops(compiled.as_text())
  # Each device runs the program on its own thread: the mean over the devices.
  num_devices = len({e["args"].get("device_ordinal") for e in device_ops}) or 1
  rows = []
  for name, micros in exclusive_times(device_ops).items():
    micros /= num_devices
    info = ops.get(name, {"opcode": "?", "shape": "", "fused": []})
    what = f"{info['opcode']} {info['shape']}"
    if info["fused"]:
      what += f" [{', '.join(info['fused'])}]"
    rows.append((name, what, micros / 1e3 / num_steps))
  return sorted(rows, key=lambda r: -r[2]), wall * 1e3 / num_steps


def profile_torch(case: str, batch_size: int, num_steps: int) -> tuple[list[tuple], float]:
  """[(aten op, calls per step, self CPU ms per step)] and the wall ms per step."""
  import benchmark_torch
  import torch

  torch.set_num_threads(os.cpu_count() or 1)
  torch.manual_seed(0)
  train_x = benchmark_torch._load_mnist("train")
  binarize = case == "iwae_mlp"
  network = {
    "lesson_conv_ae": benchmark_torch.LessonConvAE,
    "iwae_mlp": benchmark_torch.MlpVAE,
    "pythae_conv_vae": benchmark_torch.PythaeConvVAE,
  }[case]()
  optimizer = torch.optim.Adam(network.parameters(), lr=1e-3, eps=1e-4 if binarize else 1e-8)
  perm = torch.randperm(len(train_x))

  def train_steps(first: int, count: int):
    for s in range(first, first + count):
      x = train_x[perm[s * batch_size : (s + 1) * batch_size]]
      if binarize:
        x = torch.bernoulli(x)
      optimizer.zero_grad(set_to_none=True)
      benchmark_torch._loss(network(x), x).backward()
      optimizer.step()

  train_steps(0, 3)  # Warm-up.
  activities = [torch.profiler.ProfilerActivity.CPU]
  with torch.profiler.profile(activities=activities) as prof:
    start = time.perf_counter()
    train_steps(3, num_steps)
    wall = time.perf_counter() - start
  rows = [
    (a.key, f"{a.count / num_steps:g} calls", a.self_cpu_time_total / 1e3 / num_steps)
    for a in prof.key_averages()
  ]
  return sorted(rows, key=lambda r: -r[2]), wall * 1e3 / num_steps


def markdown(title: str, rows: list[tuple], wall_ms: float, top: int) -> str:
  total = sum(r[2] for r in rows)
  lines = [
    f"{title}: {wall_ms:.2f} ms per step (wall); operations {total:.2f} ms",
    "",
    "| operation | what | ms per step | share of the step |",
    "|---|---|---|---|",
  ]
  for name, what, ms in rows[:top]:
    lines.append(f"| `{name}` | {what} | {ms:.3f} | {ms / wall_ms:.0%} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  args = _parse_args(argv)
  import benchmark

  if args.case not in benchmark.CASES:
    print(f"--case: unknown case {args.case!r}; valid: {', '.join(benchmark.CASES)}")
    return 2
  batch = args.batch_size or benchmark.CASES[args.case][0]
  header = f"{args.case}, batch {batch}, {args.steps} steps"
  if args.framework in ("jax", "both"):
    rows, wall = profile_jax(args.case, batch, args.steps)
    print(markdown(f"JAX, {header}", rows, wall, args.top) + "\n")
  if args.framework in ("torch", "both"):
    rows, wall = profile_torch(args.case, batch, args.steps)
    print(markdown(f"PyTorch, {header}", rows, wall, args.top) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
