"""Metrics: a mergeable average, and JSON lines (metrics.jsonl) plus TensorBoard files."""

import json
import math
import os

import flax.struct
import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
from tensorboardX import SummaryWriter
from tensorboardX.summary import hparams as hparams_summaries

from aejax import workdir
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
  tensorboardX writes event files without importing TensorFlow (on gs:// through
  google-cloud-storage, re-uploading the event file on each flush).
  """

  def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = True):
    run_dir = workdir.as_path(run_dir)
    self.path = run_dir / METRICS_FILE
    # An object in a store such as gs:// cannot be appended to: there the writer keeps the
    # file's lines and writes the whole file again on each write (kilobytes per run).
    self._lines = None
    if workdir.is_uri(run_dir):
      self._lines = self.path.read_text().splitlines() if self.path.exists() else []
    self._tb = None
    if tensorboard:
      self._tb = SummaryWriter(os.fspath(run_dir / TENSORBOARD_DIR))

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
    if self._lines is not None:
      self._lines = kept
    workdir.write_atomically(self.path, "".join(line + "\n" for line in kept))

  def write(self, step: int, metrics: dict[str, float]) -> None:
    record = {"step": int(step)}
    for name, value in metrics.items():
      value = float(value)
      # JSON has no NaN/inf; keep them visible as strings rather than dropping them.
      record[name] = value if math.isfinite(value) else str(value)
      if self._tb is not None:
        self._tb.add_scalar(name, value, int(step))
    if self._lines is not None:
      self._lines.append(json.dumps(record))
      self.path.write_text("".join(line + "\n" for line in self._lines))
      return
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")

  def write_images(self, step: int, pngs: dict[str, str | os.PathLike]) -> None:
    """Logs PNG files aejax drew (tag -> path) as TensorBoard images at `step`."""
    if self._tb is None:
      return
    for tag, path in pngs.items():
      self._tb.add_image(tag, read_png(path), int(step), dataformats="HWC")

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_png(path) -> np.ndarray:
  """A PNG as an (H, W, C) float32 array in [0, 1] (RGB or RGBA, as matplotlib saved it)."""
  with workdir.as_path(path).open("rb") as f:
    image = matplotlib.image.imread(f, format="png")
  return image[..., None] if image.ndim == 2 else image


# TensorBoard run (a subfolder of workdir/tensorboard) holding the run's HParams session.
HPARAMS_RUN = "hparams"


def write_hparams(run_dir, hparams: dict, final_metrics: dict[str, float]) -> None:
  """Logs a run's hyper-parameters and final metrics for TensorBoard's HParams dashboard.

  `tensorboard --logdir SWEEP_DIR` then shows one row per run, comparable by
  every hyper-parameter and metric. Values that are not bool, int, float or
  str become strings; non-finite metrics are left out (the dashboard has no NaN).
  Writing again replaces the session (a re-evaluated run shows once).
  """
  folder = workdir.as_path(run_dir) / TENSORBOARD_DIR / HPARAMS_RUN
  for old in folder.glob("events.out.tfevents.*"):
    old.unlink()
  hp = {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in hparams.items()}
  finite = {k: float(v) for k, v in final_metrics.items() if math.isfinite(float(v))}
  experiment, session_start, session_end = hparams_summaries(hp, finite)
  with SummaryWriter(os.fspath(folder)) as writer:
    for summary in (experiment, session_start, session_end):
      writer.file_writer.add_summary(summary)
    for name, value in finite.items():
      writer.add_scalar(name, value, 0)


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
  """All records of run_dir/metrics.jsonl, in order."""
  path = workdir.as_path(run_dir) / METRICS_FILE
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
