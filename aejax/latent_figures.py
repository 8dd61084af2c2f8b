"""Latent-space figures: decoded latent grids, scatters by class, interpolations, noise sweeps."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib
import matplotlib.colors
import numpy as np
from etils import epath

from aejax import figures

_PROJECTIONS = ("pca", "tsne")
# About this many labelled cells along each axis of a latent grid: enough to read z off.
_GRID_TICKS = 7


def _image_stack(images, name: str, lead: tuple[str, ...]) -> np.ndarray:
  """Checks a (*lead, H, W, C) float image array and returns it as float32 clipped to [0, 1]."""
  arr = np.asarray(images)
  layout = f"({', '.join((*lead, 'H', 'W', 'C'))})"
  if arr.ndim != len(lead) + 3:
    raise ValueError(
      f"{name}: expected a {len(lead) + 3}-D array of shape {layout}, "
      f"got {arr.ndim}-D shape {arr.shape}"
    )
  if arr.shape[-1] not in (1, 3):
    raise ValueError(
      f"{name}: expected C = 1 (grey) or 3 (RGB) in shape {layout}, got shape {arr.shape}"
    )
  if 0 in arr.shape:
    raise ValueError(f"{name}: expected non-empty images in shape {layout}, got shape {arr.shape}")
  # Same reason as figures.as_images: 0..255 integers would clip to a white page.
  if arr.dtype.kind in "iub":
    raise ValueError(
      f"{name}: expected float values in [0, 1], got dtype {arr.dtype} with shape {arr.shape}; "
      "convert first, e.g. x.astype(np.float32) / 255"
    )
  arr = figures.to_float(arr, name).astype(np.float32)
  figures.check_finite(arr, name)
  return np.clip(arr, 0.0, 1.0)


def _tick_indices(n: int, step: int, min_gap: int) -> np.ndarray:
  """Every step-th index of range(n) plus the last one, no two labelled ticks closer than min_gap.

  The last index is always labelled, so the reader sees both ends of the range; when it would
  land closer than min_gap to the tick before, that tick is moved to the end instead.
  """
  idx = list(range(0, n, step))
  if idx[-1] != n - 1:
    if n - 1 - idx[-1] >= min_gap or len(idx) == 1:
      idx.append(n - 1)
    else:
      idx[-1] = n - 1
  return np.array(idx)


def _bare_axes(ax) -> None:
  """Hides ticks and frame but keeps the axes on, so its axis labels still show."""
  ax.set_xticks([])
  ax.set_yticks([])
  for spine in ax.spines.values():
    spine.set_visible(False)


def latent_axis_label(i: int, units: str = "") -> str:
  """`z[i]`, with the latent's units when known, e.g. 'z[0] (prior standard deviations)'."""
  return f"z[{i}] ({units})" if units else f"z[{i}]"


# Grey between the cells of a latent grid: white on black digits would read as strokes.
GRID_GAP_FILL = 0.5


def save_latent_grid(
  path,
  images: np.ndarray,
  z1_values: np.ndarray,
  z2_values: np.ndarray,
  title: str,
  latent_units: str = "",
) -> epath.Path:
  """Saves a PNG of images decoded on a 2-D latent grid, tiled into one picture.

  `images` has shape (G2, G1, H, W, C): images[i, j] is decoded from the latent
  (z1_values[j], z2_values[i]). The picture reads like a plot: z[0] increases to the right and
  z[1] increases upwards, so its top row is the largest z2 value. Rows and columns are sorted by
  their z values to get there, so either order of z1_values and z2_values (e.g. an ascending
  linspace, which puts the smallest z2 in images[0]) gives the same picture. A thin grey gap
  (1 pixel per 14 image pixels, at least 1) separates the cells, so a grid of small images still
  reads as separate digits; a few cells per axis carry their z value (.2f) as the tick label,
  and the axis labels name `latent_units`. Parent folders are created. Returns the path.
  """
  arr = _image_stack(images, "images", ("G2", "G1"))
  g2, g1, h, w, c = arr.shape
  z1 = figures.as_vector(z1_values, "z1_values", length=g1)
  z2 = figures.as_vector(z2_values, "z2_values", length=g2)
  # Stable sorts keep the given order for repeated values.
  cols = np.argsort(z1, kind="stable")
  rows = np.argsort(-z2, kind="stable")
  arr, z1, z2 = arr[rows][:, cols], z1[cols], z2[rows]
  gap = max(1, round(max(h, w) / 14))
  grid = figures.tile_images(arr.reshape(g2 * g1, h, w, c), g1, border=gap, fill=GRID_GAP_FILL)
  # Whole screen pixels per image pixel, about 600 px across, as in save_image_grid.
  scale = max(1, round(600 / max(grid.shape[0], grid.shape[1])))
  with figures.subplots(
    # Margins: tick labels and axis label on the left and bottom, title on top.
    figsize=(grid.shape[1] * scale / figures.DPI + 1.3, grid.shape[0] * scale / figures.DPI + 1.2),
    layout="constrained",
  ) as (fig, ax):
    ax.set_title(title)
    figures.show_image(ax, grid)
    # Ticks sit on cell centres in image pixel coordinates (imshow puts pixel k at x = k).
    # A ".2f" label such as "-1.64" is about 0.5 inch wide; keep labelled cells that far apart.
    min_gap = math.ceil(0.5 / (max(h, w) * scale / figures.DPI))
    xs = _tick_indices(g1, max(min_gap, round((g1 - 1) / (_GRID_TICKS - 1))), min_gap)
    ax.set_xticks(gap + xs * (w + gap) + (w - 1) / 2, [f"{v:.2f}" for v in z1[xs]])
    ys = _tick_indices(g2, max(min_gap, round((g2 - 1) / (_GRID_TICKS - 1))), min_gap)
    ax.set_yticks(gap + ys * (h + gap) + (h - 1) / 2, [f"{v:.2f}" for v in z2[ys]])
    ax.set_xlabel(latent_axis_label(0, latent_units))
    ax.set_ylabel(latent_axis_label(1, latent_units))
    return figures.save_figure(fig, path)


def _class_codes(labels, n: int, class_names) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """Returns (sorted distinct labels, index of each point's label in them, one name per class)."""
  arr = np.asarray(labels)
  if arr.ndim != 1 or arr.shape[0] != n:
    raise ValueError(f"labels: expected shape ({n},) to match z, got shape {arr.shape}")
  if arr.dtype.kind == "f":
    figures.check_finite(arr, "labels")
    if not np.array_equal(arr, np.round(arr)):
      raise ValueError("labels: expected integer class labels, got non-integer floats")
  elif arr.dtype.kind not in "iu":
    raise ValueError(f"labels: expected integer class labels, got dtype {arr.dtype}")
  classes, codes = np.unique(arr.astype(np.int64), return_inverse=True)
  if class_names is None:
    return classes, codes, [str(k) for k in classes]
  names = [str(name) for name in class_names]
  # class_names is indexed by label value (class_names[3] names label 3), as in data set metadata.
  if classes[0] < 0 or classes[-1] >= len(names):
    raise ValueError(
      f"class_names: {len(names)} names cannot name labels from {classes[0]} to {classes[-1]}; "
      "class_names[k] names label k"
    )
  return classes, codes, [names[k] for k in classes]


def _project(z: np.ndarray, method: str, seed: int) -> tuple[np.ndarray, str, str, str]:
  """Projects (M, D > 2) latents to 2-D; returns (points, x label, y label, title note)."""
  d = z.shape[1]
  if z.shape[0] < 2:
    raise ValueError(f"z: projecting {d}-d latents to 2-D needs at least 2 points, got {z.shape}")
  # scikit-learn is slow to import and only needed here.
  if method == "pca":
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2, random_state=seed)
    # All points equal makes the variance shares 0 / 0; show 0% rather than warn and print "nan%".
    with np.errstate(invalid="ignore", divide="ignore"):
      points = pca.fit_transform(z)
    var = np.nan_to_num(pca.explained_variance_ratio_) * 100
    return points, f"PC 1 ({var[0]:.1f}% var)", f"PC 2 ({var[1]:.1f}% var)", f"PCA of {d}-d latents"
  from sklearn.manifold import TSNE

  # Perplexity must stay below the point count; 30 is scikit-learn's default for larger sets.
  perplexity = min(30.0, max(1.0, (z.shape[0] - 1) / 3))
  tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
  return tsne.fit_transform(z), "t-SNE 1", "t-SNE 2", f"t-SNE of {d}-d latents"


def save_latent_scatter(
  path,
  z: np.ndarray,
  labels: np.ndarray | None,
  title: str,
  method: str = "pca",
  class_names: Sequence[str] | None = None,
  max_points: int = 10000,
  seed: int = 0,
  latent_units: str = "",
) -> epath.Path:
  """Saves a PNG scatter plot of latent codes `z` (N, D), coloured by class label.

  D == 2 plots z[:, 0] against z[:, 1]. D == 1 plots z[:, 0] against a random vertical jitter
  (the y label says it carries no meaning); their axis labels name `latent_units`. D > 2 is
  projected to 2-D with `method`: "pca"
  (fitted on all N points; axes give each component's share of the variance) or "tsne" (fitted on
  the points shown only, since t-SNE is slow); the method is named in the title and axis labels.
  At most `max_points` points are shown, a random subset drawn with `seed`, in random order so
  data sorted by class does not bury the first classes under the last; the title says when points
  were left out. With `labels` (N,) integer classes, points take one colour per distinct label
  (tab10 for up to 10 classes, else colours sampled from viridis) and a colour bar has one tick
  per class, named by class_names[label] when given. With labels None all points share one
  colour and there is no colour bar. Parent folders are created. Returns the path.

  t-SNE runs on OpenMP threads; on a machine whose cores other jobs are busy with it can be many
  times slower than single-threaded, in which case call this inside
  threadpoolctl.threadpool_limits(1).
  """
  if method not in _PROJECTIONS:
    raise ValueError(f"method: expected one of {_PROJECTIONS}, got {method!r}")
  arr = figures.to_float(z, "z")
  if arr.ndim != 2 or 0 in arr.shape:
    raise ValueError(f"z: expected a 2-D array of shape (N, D) with N, D >= 1, got {arr.shape}")
  figures.check_finite(arr, "z")
  max_points = figures.positive_int(max_points, "max_points")
  if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
    raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
  n, d = arr.shape
  if labels is None:
    if class_names is not None:
      raise ValueError("class_names: given without labels, so there are no classes to name")
    codes = None
  else:
    classes, codes, names = _class_codes(labels, n, class_names)

  rng = np.random.default_rng(seed)
  shown = rng.permutation(n)[:max_points]
  m = shown.size
  note = "" if m == n else f", {m} of {n} points shown"
  if d == 1:
    points = np.stack([arr[shown, 0], rng.uniform(-0.5, 0.5, m)], axis=1)
    xlabel = latent_axis_label(0, latent_units)
    ylabel = "random jitter (no meaning, spreads the points)"
    subtitle = f"1-d latents{note}"
  elif d == 2:
    points, subtitle = arr[shown], f"2-d latents{note}"
    xlabel, ylabel = latent_axis_label(0, latent_units), latent_axis_label(1, latent_units)
  elif method == "pca":
    points, xlabel, ylabel, subtitle = _project(arr, method, seed)
    points, subtitle = points[shown], subtitle + note
  else:
    points, xlabel, ylabel, subtitle = _project(arr[shown], method, seed)
    subtitle += note

  # Small, translucent markers so 10,000 points still show where they pile up.
  size, alpha = (3.0, 0.5) if m > 2000 else (10.0, 0.8)
  with figures.subplots(figsize=(7.0, 5.8), layout="constrained") as (fig, ax):
    ax.set_title(f"{title}\n({subtitle})")
    if codes is None:
      ax.scatter(points[:, 0], points[:, 1], s=size, alpha=alpha, color="C0", linewidths=0)
    else:
      k = len(classes)
      base = (
        matplotlib.colors.ListedColormap(matplotlib.colormaps["tab10"].colors[:k])
        if k <= 10
        else matplotlib.colormaps["viridis"].resampled(k)
      )
      # Class k owns the colour interval [k - 0.5, k + 0.5), so each gets one solid colour.
      norm = matplotlib.colors.BoundaryNorm(np.arange(k + 1) - 0.5, k)
      sc = ax.scatter(
        points[:, 0],
        points[:, 1],
        c=codes[shown],
        cmap=base,
        norm=norm,
        s=size,
        alpha=alpha,
        linewidths=0,
      )
      # Past about 30 classes the tick labels would overlap; label every few instead.
      ticks = np.arange(0, k, max(1, math.ceil(k / 30)))
      cbar = fig.colorbar(sc, ax=ax, ticks=ticks)
      cbar.set_ticklabels([names[t] for t in ticks])
      # The colour bar is opaque even though the points are not, so it reads as a key.
      cbar.solids.set_alpha(1.0)
      cbar.set_label("class")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if d == 1:
      ax.set_yticks([])
    ax.grid(True, alpha=0.3)
    return figures.save_figure(fig, path)


def _row_cell(s: int) -> float:
  """Width in inches of one image in a row of s; cells shrink so a page stays about 12 in wide."""
  return min(figures.CELL_INCHES, max(0.4, 10.0 / s))


def _save_image_rows(
  path,
  rows: np.ndarray,
  row_labels: Sequence[str],
  title: str,
  header: dict[int, str] | None = None,
  xlabel: str = "",
) -> epath.Path:
  """Saves a PNG with one tiled strip per row of `rows` (R, S, H, W, C), labelled on the left.

  `header` maps column index -> label, written above the first strip.
  """
  r, s, h, w, _ = rows.shape
  cell = _row_cell(s)
  strip_height = cell * (h + 2) / (s * (w + 1) + 1) * s
  with figures.subplots(
    nrows=r,
    ncols=1,
    squeeze=False,
    figsize=(
      1.8 + s * cell,
      # Title on top; column header and bottom caption when present.
      0.6 + r * (strip_height + 0.1) + (0.3 if header else 0.0) + (0.3 if xlabel else 0.0),
    ),
    layout="constrained",
  ) as (fig, axes):
    fig.suptitle(title)
    for i in range(r):
      ax = axes[i, 0]
      figures.show_image(ax, figures.tile_images(rows[i], ncols=s, border=1))
      _bare_axes(ax)
      ax.set_ylabel(row_labels[i], rotation=0, ha="right", va="center", fontsize="medium")
    if header:
      top = axes[0, 0]
      cols = np.array(sorted(header))
      # Cell centres in image pixel coordinates: border, then cells of W pixels plus a border.
      top.set_xticks(1 + cols * (w + 1) + (w - 1) / 2, [header[k] for k in cols])
      top.xaxis.tick_top()
      top.tick_params(axis="x", length=0)
    if xlabel:
      axes[-1, 0].set_xlabel(xlabel)
    return figures.save_figure(fig, path)


def _labels(values, name: str, count: int) -> list[str]:
  if isinstance(values, str) or not isinstance(values, Sequence):
    raise ValueError(f"{name}: expected a sequence of {count} strings, got {values!r}")
  if len(values) != count:
    raise ValueError(f"{name}: expected {count} labels, got {len(values)}")
  return [str(v) for v in values]


def save_interpolation(
  path, rows: np.ndarray, title: str, row_labels: Sequence[str] | None = None
) -> epath.Path:
  """Saves a PNG of latent interpolations, one tiled row of images per pair.

  `rows` has shape (P, S, H, W, C): row p holds S >= 2 decodings along the path from its first
  image (t = 0) to its last (t = 1), at t = s / (S - 1). A few columns are headed "t = 0.00" to
  "t = 1.00". Rows are labelled with row_labels (P strings, e.g. "3 -> 8") or "pair 1", "pair 2",
  ... Parent folders are created. Returns the path.
  """
  arr = _image_stack(rows, "rows", ("P", "S"))
  p, s = arr.shape[:2]
  if s < 2:
    raise ValueError(
      f"rows: expected S >= 2 steps per pair in shape (P, S, H, W, C), got {arr.shape}"
    )
  names = (
    [f"pair {i + 1}" for i in range(p)]
    if row_labels is None
    else _labels(row_labels, "row_labels", p)
  )
  # Label as many columns as fit: "t = 0.00" needs about 0.8 inch, cells are _row_cell(s) wide.
  gap = math.ceil(0.8 / _row_cell(s))
  header = {int(k): f"t = {k / (s - 1):.2f}" for k in _tick_indices(s, gap, gap)}
  return _save_image_rows(
    path,
    arr,
    names,
    title,
    header=header,
    xlabel=f"{s} steps from the first image (t = 0) to the last (t = 1)",
  )


def save_latent_noise(path, images: np.ndarray, scales: Sequence[float], title: str) -> epath.Path:
  """Saves a PNG of decodings from noisy latents, one row per noise level.

  `images` has shape (S, N, H, W, C): row s holds N images decoded from N latent codes plus
  Gaussian noise of standard deviation scales[s], so each column follows one code as the noise
  grows. A scale of 0 is the plain reconstruction and says so. Scales must be finite and >= 0.
  Parent folders are created. Returns the path.
  """
  arr = _image_stack(images, "images", ("S", "N"))
  levels = figures.as_vector(scales, "scales")
  if levels.shape[0] != arr.shape[0]:
    raise ValueError(
      f"scales: expected one scale per row of images {arr.shape}, i.e. {arr.shape[0]}, "
      f"got {levels.shape[0]}"
    )
  if (levels < 0).any():
    raise ValueError(f"scales: expected standard deviations >= 0, got {levels.tolist()}")
  names = [f"noise std {v:.2f}" + ("\n(reconstruction)" if v == 0 else "") for v in levels.tolist()]
  return _save_image_rows(
    path,
    arr,
    names,
    title,
    xlabel="each column: one latent code z; each row: decoded from z + Gaussian noise of that std",
  )


def save_traversals(
  path, rows: np.ndarray, values: np.ndarray, row_labels: Sequence[str], title: str, xlabel: str
) -> epath.Path:
  """Saves a PNG of latent traversals, one tiled row of images per latent dimension.

  `rows` has shape (D, S, H, W, C): row d holds S decodings of one code with its dimension
  (named by row_labels[d]) set to `values[d, s]`, the other dimensions held; `values` has shape
  (D, S) (each row its own range) or (S,) (one range for every row). A few columns are headed
  with their value when the rows share one range. Parent folders are created. Returns the path.
  """
  arr = _image_stack(rows, "rows", ("D", "S"))
  d, s = arr.shape[:2]
  grid = figures.to_float(values, "values")
  if grid.shape not in ((s,), (d, s)):
    raise ValueError(
      f"values: expected shape ({s},) or ({d}, {s}) for rows {arr.shape}, got {grid.shape}"
    )
  header = None
  if grid.ndim == 1:
    gap = math.ceil(0.6 / _row_cell(s))
    header = {int(k): f"{grid[k]:+.1f}" for k in _tick_indices(s, gap, gap)}
  return _save_image_rows(
    path, arr, _labels(row_labels, "row_labels", d), title, header=header, xlabel=xlabel
  )


def save_mutual_info_matrix(
  path, mutual_info: np.ndarray, factor_names: Sequence[str], title: str, code_order=None
) -> epath.Path:
  """Saves a heat map of I(code_d; factor_j) in nats, codes as rows, factors as columns.

  `mutual_info` has shape (D, F) (disentanglement.mutual_info_matrix); `code_order` (default:
  as given) lists the code dimensions top to bottom. Each cell is written in it. Returns the path.
  """
  mi = figures.to_float(mutual_info, "mutual_info")
  if mi.ndim != 2:
    raise ValueError(f"mutual_info: expected a (codes, factors) matrix, got shape {mi.shape}")
  figures.check_finite(mi, "mutual_info")
  names = _labels(factor_names, "factor_names", mi.shape[1])
  order = np.arange(mi.shape[0]) if code_order is None else np.asarray(code_order)
  if sorted(order.tolist()) != list(range(mi.shape[0])):
    raise ValueError(f"code_order: expected a permutation of 0..{mi.shape[0] - 1}, got {order}")
  shown = mi[order]
  with figures.subplots(
    figsize=(1.6 + 1.0 * mi.shape[1], 1.0 + 0.35 * mi.shape[0]), layout="constrained"
  ) as (fig, ax):
    image = ax.imshow(shown, cmap="viridis", vmin=0.0, aspect="auto")
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(order)), [latent_axis_label(int(i)) for i in order])
    ax.set_xlabel("ground-truth factor")
    high = shown.max() if shown.size else 0.0
    for (r, c), value in np.ndenumerate(shown):
      color = "black" if value > 0.6 * high else "white"
      ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize="small", color=color)
    fig.colorbar(image, ax=ax, label="mutual information (nats)")
    ax.set_title(title)
    return figures.save_figure(fig, path)
