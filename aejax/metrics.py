"""Metrics: a mergeable average, and JSON lines (metrics.jsonl) plus TensorBoard files."""

import json
import math
import pathlib

import flax.struct
import jax
import jax.numpy as jnp
from tensorboardX import SummaryWriter

from aejax.workdir import METRICS_FILE, TENSORBOARD_DIR


class Average(flax.struct.PyTreeNode):
  """A mean kept as (total, count): partial averages merge by adding, padding has weight 0.

  `from_array(x, mask)` inside jit, `merge` across batches or hosts, `compute`
  once on the host. Replaces hand-kept sums and counters.
  """

  total: jax.Array
  count: jax.Array

  @classmethod
  def from_array(cls, x: jax.Array, mask: jax.Array | None = None) -> "Average":
    if mask is None:
      return cls(total=jnp.sum(x), count=jnp.asarray(x.size, jnp.float32))
    return cls(total=jnp.sum(x * mask), count=jnp.sum(mask))

  def merge(self, other: "Average") -> "Average":
    return Average(total=self.total + other.total, count=self.count + other.count)

  def compute(self) -> float:
    # Divided in Python (float64): the float32 total is the only rounding.
    return float(self.total) / max(float(self.count), 1.0)


def merge_all(averages: list[dict[str, Average]]) -> dict[str, Average]:
  """Merges dicts of Averages name by name."""
  out = averages[0]
  for other in averages[1:]:
    out = {name: out[name].merge(other[name]) for name in out}
  return out


class MetricWriter:
  """Appends one JSON object per write to workdir/metrics.jsonl and mirrors it to TensorBoard.

  Only the writing process (process 0 on multi-host) should create one.
  tensorboardX writes event files without importing TensorFlow.
  """

  def __init__(self, workdir: str | pathlib.Path, tensorboard: bool = True):
    self.path = pathlib.Path(workdir) / METRICS_FILE
    self._tb = None
    if tensorboard:
      self._tb = SummaryWriter(str(pathlib.Path(workdir) / TENSORBOARD_DIR))

  def truncate_after(self, step: int) -> None:
    """Drops lines logged after `step`: a resumed run re-does those steps and logs them again."""
    if not self.path.exists():
      return
    kept = []
    for line in self.path.read_text().splitlines():
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue  # Blank, or the last line of a run killed while writing it.
      if record.get("step", 0) <= step:
        kept.append(line)
    tmp = self.path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(self.path)

  def write(self, step: int, metrics: dict[str, float]) -> None:
    record = {"step": int(step)}
    for name, value in metrics.items():
      value = float(value)
      # JSON has no NaN/inf; keep them visible as strings rather than dropping them.
      record[name] = value if math.isfinite(value) else str(value)
      if self._tb is not None:
        self._tb.add_scalar(name, value, int(step))
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_metrics(workdir: str | pathlib.Path) -> list[dict]:
  """All records of workdir/metrics.jsonl, in order."""
  path = pathlib.Path(workdir) / METRICS_FILE
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
