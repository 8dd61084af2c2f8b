"""PNG figures for autoencoder runs: reconstructions, image grids, training curves and sweep line
plots, and the primitives (checked inputs, image cells, saving) aejax.latent_figures draws with."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
from collections.abc import Mapping, Sequence

import matplotlib
import matplotlib.colors
import matplotlib.figure
import matplotlib.ticker
import numpy as np
from etils import epath

# Size of one image cell on the page, in inches, and the resolution figures are saved at; 1 inch at
# 100 dpi gives a 28x28 image about 3.5 screen pixels per image pixel.
CELL_INCHES = 1.0
DPI = 100
# Metric prefixes that save_training_curves plots; other keys (e.g. "lr", "time") are ignored.
_SPLITS = ("train", "eval")
# Fixed colours so "eval" looks the same in every subplot, including eval-only metrics.
_SPLIT_COLORS = {"train": "C0", "eval": "C1"}


def as_images(images, name: str) -> np.ndarray:
  """Checks an (N, H, W, C) image batch and returns it as float32 clipped to [0, 1]."""
  arr = np.asarray(images)
  if arr.ndim != 4:
    raise ValueError(
      f"{name}: expected a 4-D array of shape (N, H, W, C), got {arr.ndim}-D shape {arr.shape}"
    )
  n, h, w, c = arr.shape
  if c not in (1, 3):
    raise ValueError(
      f"{name}: expected C = 1 (grey) or 3 (RGB) in shape (N, H, W, C), got shape {arr.shape}"
    )
  if n == 0 or h == 0 or w == 0:
    raise ValueError(f"{name}: expected at least one non-empty image, got shape {arr.shape}")
  # Integer images are usually 0..255 and would clip to almost all white; say so instead.
  if arr.dtype.kind in "iu":
    raise ValueError(
      f"{name}: expected float values in [0, 1], got dtype {arr.dtype} with shape {arr.shape}; "
      "convert first, e.g. x.astype(np.float32) / 255"
    )
  # astype also covers bfloat16 from JAX, which numpy does not count as a floating dtype.
  return np.clip(arr.astype(np.float32), 0.0, 1.0)


def positive_int(value, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
    raise ValueError(f"{name}: expected a positive int, got {value!r}")
  return int(value)


def show_image(ax, image: np.ndarray) -> None:
  """Draws one (H, W, C) image with fixed grey scaling, so dark images are not stretched."""
  if image.shape[-1] == 1:
    ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
  else:
    ax.imshow(image, interpolation="nearest")


# Arguments of matplotlib.figure.Figure; the rest of `subplots`' go to Figure.subplots.
_FIGURE_ARGS = ("figsize", "dpi", "layout", "facecolor")


@contextlib.contextmanager
def subplots(**kwargs):
  """Like plt.subplots, but a bare matplotlib Figure that pyplot never sees.

  Training runs on headless machines, and aejax is imported into notebooks: drawing without
  pyplot needs no display, leaves the user's backend (inline plots) alone and keeps no global
  list of figures that would grow at every evaluation. The figure is saved as PNG by
  `save_figure` (matplotlib's Agg renderer) and is garbage once the block ends.
  """
  fig = matplotlib.figure.Figure(**{k: v for k, v in kwargs.items() if k in _FIGURE_ARGS})
  axes = fig.subplots(**{k: v for k, v in kwargs.items() if k not in _FIGURE_ARGS})
  yield fig, axes


def save_figure(fig, path) -> epath.Path:
  """Writes fig as PNG (whatever the suffix), creating parent folders; gs://... paths too."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("wb") as f:
    fig.savefig(f, format="png", dpi=DPI)
  return path


def tile_images(images: np.ndarray, ncols: int, border: int = 1, fill: float = 1.0) -> np.ndarray:
  """Tiles (N, H, W, C) images row by row into one image with `border` pixels of `fill` between
  cells.

  Returns a float32 array of shape (rows * (H + border) + border, ncols * (W + border) + border, C)
  with rows = ceil(N / ncols); image k sits in grid row k // ncols, column k % ncols. Cells past
  the last image stay at `fill`. Values are clipped to [0, 1].
  """
  arr = as_images(images, "images")
  ncols = positive_int(ncols, "ncols")
  if isinstance(border, bool) or not isinstance(border, int | np.integer) or border < 0:
    raise ValueError(f"border: expected a non-negative int, got {border!r}")
  n, h, w, c = arr.shape
  nrows = math.ceil(n / ncols)
  shape = (nrows * (h + border) + border, ncols * (w + border) + border, c)
  out = np.full(shape, fill, np.float32)
  for k in range(n):
    top = border + (k // ncols) * (h + border)
    left = border + (k % ncols) * (w + border)
    out[top : top + h, left : left + w] = arr[k]
  return out


def save_reconstructions(
  path, rows: dict[str, np.ndarray], title: str, max_images: int = 10
) -> epath.Path:
  """Saves a PNG with one labelled row of images per entry of `rows`.

  Rows are drawn in dict order (e.g. {"input": x, "output": y, "target": t}) with the key and the
  image size as the row label, and the first `max_images` images of each as columns. Rows may differ
  in N, H, W and C: every image fills the same cell at its own resolution (nearest-neighbour), so a
  7x7 super-resolution input lines up with its 28x28 target. A row with fewer images leaves its
  last cells blank. Parent folders are created. Returns the path.
  """
  if not isinstance(rows, Mapping) or not rows:
    raise ValueError(f"rows: expected a non-empty dict of name -> (N, H, W, C) array, got {rows!r}")
  max_images = positive_int(max_images, "max_images")
  batches = {str(key): as_images(value, f"rows[{key!r}]") for key, value in rows.items()}
  ncols = min(max_images, max(b.shape[0] for b in batches.values()))
  nrows = len(batches)
  with subplots(
    nrows=nrows,
    ncols=ncols,
    squeeze=False,
    # Extra width for the row labels and height for the title.
    figsize=(1.6 + ncols * CELL_INCHES, 0.6 + nrows * CELL_INCHES),
    layout="constrained",
  ) as (fig, axes):
    fig.suptitle(title, wrap=True)  # A long title breaks into lines instead of being clipped.
    for r, (label, batch) in enumerate(batches.items()):
      _, h, w, _ = batch.shape
      for col in range(ncols):
        ax = axes[r, col]
        # Hide ticks and frame but keep the axes on, since axis("off") would also hide the label.
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
          spine.set_visible(False)
        if col < batch.shape[0]:
          show_image(ax, batch[col])
      axes[r, 0].set_ylabel(
        f"{label}\n{h}x{w}", rotation=0, ha="right", va="center", fontsize="medium"
      )
    return save_figure(fig, path)


def save_image_grid(path, images: np.ndarray, title: str, ncols: int | None = None) -> epath.Path:
  """Saves a PNG of `images` (N, H, W, C) tiled into one picture with 1-pixel white borders.

  `ncols` defaults to ceil(sqrt(N)). The caption gives the image count, size and grid shape.
  Parent folders are created. Returns the path.
  """
  arr = as_images(images, "images")
  n, h, w, _ = arr.shape
  ncols = math.ceil(math.sqrt(n)) if ncols is None else positive_int(ncols, "ncols")
  grid = tile_images(arr, ncols, border=1)
  nrows = math.ceil(n / ncols)
  # Show each image pixel as a whole number of screen pixels (about 600 px across in all) so
  # nearest-neighbour upscaling stays crisp and small grids are not tiny.
  scale = max(1, round(600 / max(grid.shape[0], grid.shape[1])))
  with subplots(
    figsize=(grid.shape[1] * scale / DPI + 0.4, grid.shape[0] * scale / DPI + 0.9),
    layout="constrained",
  ) as (fig, ax):
    ax.set_title(title)
    show_image(ax, grid)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"{n} images, {h}x{w} px each, {nrows} rows x {ncols} columns")
    return save_figure(fig, path)


def _is_number(value) -> bool:
  # bool is an int subclass, but True/False in a metrics line are flags, not values to plot.
  return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _read_metrics(metrics_jsonl_path) -> tuple[dict[str, dict[str, list]], int]:
  """Returns {name: {split: [(step, value), ...]}} in first-seen order, and the lines skipped."""
  metrics_path = epath.Path(metrics_jsonl_path)
  if not metrics_path.is_file():
    raise FileNotFoundError(errno.ENOENT, "metrics file not found", os.fspath(metrics_path))
  series: dict[str, dict[str, list]] = {}
  skipped = 0
  with metrics_path.open() as f:
    for line in f:
      if not line.strip():
        continue
      # The file may be read while training appends to it, so a torn last line is expected and
      # skipped rather than fatal.
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        skipped += 1
        continue
      if not isinstance(record, dict) or not _is_number(record.get("step")):
        skipped += 1
        continue
      step = record["step"]
      for key, value in record.items():
        split, sep, name = str(key).partition("/")
        if not sep or split not in _SPLITS or not name or not _is_number(value):
          continue
        series.setdefault(name, {}).setdefault(split, []).append((step, float(value)))
  return series, skipped


def save_training_curves(path, metrics_jsonl_path, title: str = "Training curves") -> epath.Path:
  """Saves a PNG of the train and eval metrics logged in a metrics.jsonl file against step.

  Each line is a JSON object with an int "step" and metrics such as "train/loss" or "eval/kl";
  lines may hold any subset. There is one subplot per metric name after the prefix (loss, recon,
  kl, ...) with its train and eval series as labelled lines. Keys without a "train/" or "eval/"
  prefix, non-numeric and non-finite values, and unparseable lines (e.g. one half-written by a
  running job) are ignored. With no metrics the figure says "no metrics yet". Parent folders are
  created. Returns the path.

  Raises:
    FileNotFoundError: `metrics_jsonl_path` does not exist.
  """
  series, skipped = _read_metrics(metrics_jsonl_path)
  source = epath.Path(metrics_jsonl_path).name
  note = f"from {source}"
  if skipped:
    note += f" ({skipped} unreadable line{'s' if skipped > 1 else ''} skipped)"

  if not series:
    with subplots(figsize=(6, 3), layout="constrained") as (fig, ax):
      ax.set_title(title)
      ax.text(0.5, 0.5, "no metrics yet", ha="center", va="center", fontsize="x-large")
      ax.set_xlabel(note)
      ax.set_xticks([])
      ax.set_yticks([])
      return save_figure(fig, path)

  names = list(series)
  ncols = min(3, len(names))
  nrows = math.ceil(len(names) / ncols)
  with subplots(
    nrows=nrows,
    ncols=ncols,
    squeeze=False,
    figsize=(4.5 * ncols, 3.2 * nrows + 0.6),
    layout="constrained",
  ) as (fig, axes):
    fig.suptitle(f"{title}\n{note}")
    for ax, name in zip(axes.flat, names, strict=False):
      for split in _SPLITS:
        points = sorted(series[name].get(split, []), key=lambda p: p[0])
        if not points:
          continue
        steps, values = zip(*points, strict=True)
        # Eval runs are sparse (often a handful of points), and a single point draws no line;
        # markers keep short series visible.
        marker = "o" if len(points) <= 50 else None
        ax.plot(steps, values, label=split, color=_SPLIT_COLORS[split], marker=marker, markersize=3)
      ax.set_title(name)
      ax.set_xlabel("step")
      ax.set_ylabel(name)
      ax.grid(True, alpha=0.3)
      ax.legend()
    for ax in axes.flat[len(names) :]:
      ax.set_visible(False)
    return save_figure(fig, path)


# Latent-space figures and sweep plots. Unlike the per-eval figures above, these are drawn once
# from finished results, so every input is checked for non-finite values: a NaN image or
# coordinate draws as blank space and a broken run would pass for a quiet one.


def check_finite(arr: np.ndarray, name: str) -> None:
  finite = np.isfinite(arr)
  if not finite.all():
    bad = arr.size - int(np.count_nonzero(finite))
    raise ValueError(
      f"{name}: {bad} non-finite (NaN or inf) value(s) in array of shape {arr.shape}; "
      "they would draw as blank space"
    )


def to_float(values, name: str) -> np.ndarray:
  """np.asarray(values) as a float array, with a ValueError naming `name` if it is not numeric."""
  arr = np.asarray(values)
  # Booleans and strings would convert silently (or fail with a message that names nothing).
  if arr.dtype.kind not in "iuf" and arr.dtype.name != "bfloat16":
    raise ValueError(f"{name}: expected numbers, got dtype {arr.dtype} with shape {arr.shape}")
  return arr.astype(np.float64)


def as_vector(values, name: str, length: int | None = None, allow_nan: bool = False) -> np.ndarray:
  """Checks a non-empty 1-D numeric array (of `length` when given) and returns it as float64."""
  arr = to_float(values, name)
  if arr.ndim != 1 or arr.size == 0 or (length is not None and arr.shape[0] != length):
    want = "a non-empty 1-D array" if length is None else f"shape ({length},)"
    raise ValueError(f"{name}: expected {want}, got shape {arr.shape}")
  if allow_nan:
    # NaN is a deliberate gap; inf is still a bug.
    if np.isinf(arr).any():
      raise ValueError(
        f"{name}: {int(np.isinf(arr).sum())} inf value(s) in shape {arr.shape}; "
        "NaN may mark a missing run, inf may not"
      )
  else:
    check_finite(arr, name)
  return arr


def save_line_plots(
  path,
  x: Sequence[float],
  panels: dict[str, dict[str, Sequence[float]]],
  xlabel: str,
  title: str,
  log_x: bool = False,
  errors: dict[str, dict[str, Sequence[float]]] | None = None,
) -> epath.Path:
  """Saves a PNG of sweep results: one subplot per panel, one line per series, against `x`.

  `panels` maps a panel name (the subplot title and y label, e.g. "test MSE") to
  {series name: values}, with len(x) values per series, e.g.
  {"test MSE": {"autoencoder": [...], "PCA": [...]}}. Lines carry markers and a legend. `errors`
  (optional, same nesting, a subset of the series) adds symmetric error bars of those
  half-widths. With log_x the x axis is log base 2 with ticks at, and labelled with, the x values
  (all must be > 0). With few x values (up to 8) a linear axis is ticked at them too.

  Unlike the other figures, a NaN in a series (or an error) is allowed: it marks a missing run and
  draws as a gap in the line. inf is still rejected, as is any non-finite x. Parent folders are
  created. Returns the path.
  """
  xs = as_vector(x, "x")
  if log_x and (xs <= 0).any():
    raise ValueError(f"x: log_x needs values > 0, got {xs.tolist()}")
  if not isinstance(panels, Mapping) or not panels:
    raise ValueError(
      f"panels: expected a non-empty dict of panel -> {{series: values}}, got {panels!r}"
    )
  data: dict[str, dict[str, np.ndarray]] = {}
  for panel, series in panels.items():
    if not isinstance(series, Mapping) or not series:
      raise ValueError(
        f"panels[{panel!r}]: expected a non-empty dict of series -> values, got {series!r}"
      )
    data[panel] = {
      name: as_vector(values, f"panels[{panel!r}][{name!r}]", length=xs.size, allow_nan=True)
      for name, values in series.items()
    }
  bars: dict[str, dict[str, np.ndarray]] = {}
  if errors is not None:
    if not isinstance(errors, Mapping):
      raise ValueError(f"errors: expected a dict shaped like panels, got {errors!r}")
    for panel, series in errors.items():
      if panel not in data or not isinstance(series, Mapping):
        raise ValueError(f"errors[{panel!r}]: expected a dict for one of the panels {list(data)}")
      for name, values in series.items():
        where = f"errors[{panel!r}][{name!r}]"
        if name not in data[panel]:
          raise ValueError(f"{where}: no such series; panel {panel!r} has {list(data[panel])}")
        err = as_vector(values, where, length=xs.size, allow_nan=True)
        if (err < 0).any():
          raise ValueError(f"{where}: expected error half-widths >= 0, got {err.tolist()}")
        bars.setdefault(panel, {})[name] = err

  names = list(data)
  ncols = min(3, len(names))
  nrows = math.ceil(len(names) / ncols)
  ticks = np.unique(xs)
  with subplots(
    nrows=nrows,
    ncols=ncols,
    squeeze=False,
    figsize=(4.8 * ncols, 3.6 * nrows + 0.6),
    layout="constrained",
  ) as (fig, axes):
    fig.suptitle(title)
    for ax, panel in zip(axes.flat, names, strict=False):
      handles = []
      for name, ys in data[panel].items():
        # A series with no finite value draws nothing; the legend still lists it, marked.
        label = name if np.isfinite(ys).any() else f"{name} (no data)"
        if name in bars.get(panel, {}):
          handle = ax.errorbar(
            xs, ys, yerr=bars[panel][name], marker="o", markersize=4, capsize=3, label=label
          )
        else:
          (handle,) = ax.plot(xs, ys, marker="o", markersize=4, label=label)
        handles.append(handle)
      if log_x:
        ax.set_xscale("log", base=2)
        # Minor ticks would add unlabelled clutter between the sweep values.
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
      if log_x or ticks.size <= 8:
        ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
      ax.set_title(panel)
      ax.set_xlabel(xlabel)
      ax.set_ylabel(panel)
      ax.grid(True, alpha=0.3)
      # Explicit handles keep the legend in series order; by default error-bar series go last.
      ax.legend(handles=handles, fontsize="small")
    for ax in axes.flat[len(names) :]:
      ax.set_visible(False)
    return save_figure(fig, path)


def save_strip_plots(
  path, panels: dict[str, dict[str, Sequence[float]]], title: str, ncols: int = 3
) -> epath.Path:
  """Saves a PNG of distributions over seeds: one subplot per panel, one column per category.

  `panels` maps a panel name (e.g. a metric) to {category (e.g. a configuration): values (one
  per seed)}; every value is a dot (spread sideways so that equal values stay visible) and
  each category's mean a short bar. Categories keep their order along x; NaN values (missing
  runs) are left out. Parent folders are created. Returns the path.
  """
  if not isinstance(panels, Mapping) or not panels:
    raise ValueError(
      f"panels: expected a non-empty dict of panel -> {{category: values}}, got {panels!r}"
    )
  data = {}
  for panel, categories in panels.items():
    if not isinstance(categories, Mapping) or not categories:
      raise ValueError(
        f"panels[{panel!r}]: expected a non-empty dict of category -> values, got {categories!r}"
      )
    data[panel] = {
      name: to_float(values, f"panels[{panel!r}][{name!r}]").reshape(-1)
      for name, values in categories.items()
    }
  names = list(data)
  ncols = min(ncols, len(names))
  nrows = math.ceil(len(names) / ncols)
  widest = max(len(c) for c in data.values())
  rng = np.random.default_rng(0)  # The sideways spread only; fixed so figures are reproducible.
  with subplots(
    nrows=nrows,
    ncols=ncols,
    squeeze=False,
    figsize=(max(4.0, 0.45 * widest + 1.5) * ncols, 3.6 * nrows + 0.8),
    layout="constrained",
  ) as (fig, axes):
    fig.suptitle(title)
    for ax, panel in zip(axes.flat, names, strict=False):
      categories = list(data[panel])
      for i, name in enumerate(categories):
        ys = data[panel][name]
        ys = ys[np.isfinite(ys)]
        if ys.size == 0:
          continue
        xs = i + rng.uniform(-0.15, 0.15, ys.size)
        ax.plot(xs, ys, "o", markersize=3.5, alpha=0.7, color=f"C{i % 10}")
        ax.plot([i - 0.3, i + 0.3], [ys.mean()] * 2, color="black", linewidth=1.5)
      ax.set_xticks(range(len(categories)), categories, rotation=60, ha="right", fontsize="small")
      ax.set_title(panel)
      ax.grid(True, axis="y", alpha=0.3)
    for ax in axes.flat[len(names) :]:
      ax.set_visible(False)
    return save_figure(fig, path)
