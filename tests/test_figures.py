"""Tests for aejax.figures: PNG output, tiling layout, metrics parsing, latent-space figures, sweep
line plots and input checks."""

import json
import os
import pathlib
import re
import subprocess
import sys

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from aejax import figures, latent_figures

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _no_open_figures():
  """Every test must leave pyplot with no open figures, error paths included."""
  plt.close("all")
  yield
  assert plt.get_fignums() == [], "a figure was left open"


def _read_png(path) -> np.ndarray:
  """Checks path is a non-empty PNG with some content and returns its pixels."""
  path = pathlib.Path(path)
  data = path.read_bytes()
  assert data[:8] == _PNG_SIGNATURE
  pixels = mpimg.imread(path)
  assert pixels.dtype == np.float32
  assert pixels.ndim == 3 and pixels.shape[-1] in (3, 4)
  assert pixels.shape[0] > 0 and pixels.shape[1] > 0
  assert np.isfinite(pixels).all()
  # A blank page would also be a valid PNG; something must have been drawn.
  assert pixels[..., :3].std() > 0.01
  return pixels


def _images(n, h, w, c, seed=0):
  return np.random.default_rng(seed).uniform(size=(n, h, w, c)).astype(np.float32)


def _write_jsonl(path, lines):
  path.write_text("".join(line + "\n" for line in lines))
  return path


# tile_images


def test_tile_images_shape_and_placement():
  n, h, w = 5, 3, 4
  # Image k is the constant k / 10, so each cell says which image landed there.
  images = np.stack([np.full((h, w, 1), k / 10, np.float32) for k in range(n)])
  out = figures.tile_images(images, ncols=3)
  assert out.shape == (2 * (h + 1) + 1, 3 * (w + 1) + 1, 1)
  for k in range(n):
    top, left = 1 + (k // 3) * (h + 1), 1 + (k % 3) * (w + 1)
    np.testing.assert_allclose(out[top : top + h, left : left + w], k / 10)
  # Borders and the unused sixth cell stay white.
  mask = np.ones(out.shape[:2], bool)
  for k in range(n):
    top, left = 1 + (k // 3) * (h + 1), 1 + (k % 3) * (w + 1)
    mask[top : top + h, left : left + w] = False
  np.testing.assert_array_equal(out[mask], 1.0)
  assert out[0].min() == 1.0 and out[:, 0].min() == 1.0


def test_tile_images_rgb_border_widths_and_clipping():
  images = _images(4, 8, 8, 3)
  images[0, 0, 0] = [-0.5, 2.0, 0.5]
  assert figures.tile_images(images, ncols=2, border=0).shape == (16, 16, 3)
  out = figures.tile_images(images, ncols=4, border=2)
  assert out.shape == (8 + 4, 4 * 10 + 2, 3)
  np.testing.assert_allclose(out[2, 2], [0.0, 1.0, 0.5])
  np.testing.assert_allclose(out[2:10, 12:20], images[1])
  assert out.min() >= 0.0 and out.max() <= 1.0


# save_reconstructions


def test_save_reconstructions_mixed_resolutions(tmp_path):
  target = _images(12, 28, 28, 1, seed=1)
  rows = {
    "input": _images(12, 7, 7, 1, seed=2),
    "corrupted input": _images(12, 14, 14, 1, seed=3),
    "output": _images(12, 28, 28, 1, seed=4),
    "target": target,
  }
  path = tmp_path / "sub" / "recon.png"
  result = figures.save_reconstructions(path, rows, title="Super-resolution, step 100")
  assert result == path
  pixels = _read_png(path)
  # 4 rows and max_images=10 columns of 1-inch cells at 100 dpi, plus margins.
  assert pixels.shape[:2] == (round((0.6 + 4) * 100), round((1.6 + 10) * 100))


def test_save_reconstructions_rgb_fewer_images_and_str_path(tmp_path):
  rows = {"input": _images(3, 8, 8, 3), "output": _images(2, 8, 8, 3), "grey": _images(3, 8, 8, 1)}
  path = figures.save_reconstructions(str(tmp_path / "r.png"), rows, "RGB", max_images=5)
  assert isinstance(path, os.PathLike) and path == tmp_path / "r.png"
  assert _read_png(path).shape[:2] == (round(3.6 * 100), round(4.6 * 100))


# save_image_grid


@pytest.mark.parametrize("shape", [(16, 28, 28, 1), (10, 8, 8, 3), (1, 8, 8, 1)])
def test_save_image_grid(tmp_path, shape):
  path = figures.save_image_grid(tmp_path / "grid.png", _images(*shape), title="Prior samples")
  _read_png(path)


def test_save_image_grid_explicit_ncols(tmp_path):
  path = figures.save_image_grid(tmp_path / "g.png", _images(6, 28, 28, 1), "Samples", ncols=6)
  pixels = _read_png(path)
  # A single row of 6 is much wider than tall.
  assert pixels.shape[1] > 3 * pixels.shape[0] / 2


# save_training_curves


def test_save_training_curves_mixed_lines(tmp_path):
  lines = []
  for step in range(0, 200, 10):
    lines.append(
      json.dumps(
        {
          "step": step,
          "train/loss": 1.0 / (step + 1),
          "train/recon": 0.5,
          "train/kl": 0.1 * step,
          "lr": 1e-3,
        }
      )
    )
    if step % 50 == 0:
      lines.append(
        json.dumps(
          {
            "step": step,
            "eval/loss": 2.0 / (step + 1),
            "eval/recon": 0.7,
            "eval/kl": 0.2,
            "eval/bce_per_pixel": 0.3,
            "eval/note": "x",
          }
        )
      )
  metrics = _write_jsonl(tmp_path / "metrics.jsonl", lines)
  path = figures.save_training_curves(tmp_path / "curves.png", metrics)
  _read_png(path)


def test_read_metrics_groups_by_name_and_skips_junk(tmp_path):
  metrics = _write_jsonl(
    tmp_path / "metrics.jsonl",
    [
      json.dumps({"step": 2, "train/loss": 0.5, "train/flag": True, "other/loss": 3.0}),
      json.dumps({"step": 1, "train/loss": 0.9, "eval/loss": 1.0, "eval/kl": "n/a"}),
      json.dumps({"train/loss": 0.1}),  # no step
      json.dumps({"step": 3, "eval/bce_per_pixel": 0.2, "train/recon": float("nan")}),
      "",
      '{"step": 4, "train/lo',  # torn last line of a running job
    ],
  )
  series, skipped = figures._read_metrics(metrics)
  assert series == {
    "loss": {"train": [(2, 0.5), (1, 0.9)], "eval": [(1, 1.0)]},
    "bce_per_pixel": {"eval": [(3, 0.2)]},
  }
  assert skipped == 2
  _read_png(figures.save_training_curves(tmp_path / "c.png", metrics, title="Run 7"))


@pytest.mark.parametrize(
  "lines",
  [[], [json.dumps({"step": 0, "lr": 0.1, "train/loss": "pending"})], ['{"step": 0']],
)
def test_save_training_curves_no_metrics(tmp_path, lines):
  metrics = _write_jsonl(tmp_path / "metrics.jsonl", lines)
  _read_png(figures.save_training_curves(tmp_path / "c.png", metrics))


def test_save_training_curves_missing_file(tmp_path):
  missing = tmp_path / "nowhere" / "metrics.jsonl"
  with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
    figures.save_training_curves(tmp_path / "c.png", missing)
  assert not (tmp_path / "c.png").exists()


# Input checks


@pytest.mark.parametrize(
  ("call", "match"),
  [
    (lambda p: figures.tile_images(np.zeros((4, 8, 8)), ncols=2), r"images.*\(4, 8, 8\)"),
    (lambda p: figures.tile_images(np.zeros((4, 8, 8, 2)), ncols=2), r"images.*\(4, 8, 8, 2\)"),
    (lambda p: figures.tile_images(np.zeros((0, 8, 8, 1)), ncols=2), r"images.*\(0, 8, 8, 1\)"),
    (lambda p: figures.tile_images(np.zeros((4, 8, 8, 1)), ncols=0), "ncols"),
    (lambda p: figures.tile_images(np.zeros((4, 8, 8, 1)), ncols=2, border=-1), "border"),
    (lambda p: figures.tile_images(np.zeros((4, 8, 8, 1), np.uint8), ncols=2), "images.*uint8"),
    (lambda p: figures.save_reconstructions(p, {}, "t"), "rows"),
    (
      lambda p: figures.save_reconstructions(
        p, {"input": np.zeros((4, 8, 8, 1)), "output": np.zeros((8, 8, 1))}, "t"
      ),
      r"rows\['output'\].*\(8, 8, 1\)",
    ),
    (
      lambda p: figures.save_reconstructions(p, {"x": np.zeros((4, 8, 8, 1))}, "t", 0),
      "max_images",
    ),
    (lambda p: figures.save_image_grid(p, np.zeros((8, 8, 1)), "t"), r"images.*\(8, 8, 1\)"),
    (lambda p: figures.save_image_grid(p, np.zeros((4, 8, 8, 1)), "t", ncols=0), "ncols"),
  ],
)
def test_bad_inputs_raise_value_error(tmp_path, call, match):
  path = tmp_path / "bad.png"
  with pytest.raises(ValueError, match=match):
    call(path)
  assert not path.exists()


# Latent-space figures and sweep plots. The `drawn` fixture records what each figure held when it
# was saved, so tests can check labels, colour bars and orientation, not just that a PNG exists.


def _texts(items) -> list[str]:
  return [t.get_text() for t in items]


@pytest.fixture
def drawn(monkeypatch):
  """Wraps figures.save_figure and returns a list that gets one summary dict per saved figure."""
  records = []
  save = figures.save_figure

  def recording_save(fig, path):
    result = save(fig, path)  # draws the figure, so tick labels are filled in
    axes = [ax for ax in fig.axes if ax.get_visible()]
    records.append(
      {
        "axes": axes,
        "suptitle": fig._suptitle.get_text() if fig._suptitle else "",
        "titles": [ax.get_title() for ax in axes],
        "xlabels": [ax.get_xlabel() for ax in axes],
        "ylabels": [ax.get_ylabel() for ax in axes],
        "xticks": [_texts(ax.get_xticklabels()) for ax in axes],
        "yticks": [_texts(ax.get_yticklabels()) for ax in axes],
      }
    )
    return result

  monkeypatch.setattr(figures, "save_figure", recording_save)
  return records


def _morph_grid(g2, g1, h=28, w=28, c=1):
  """A (G2, G1, H, W, C) latent grid whose image [i, j] is the constant (i * G1 + j) / (G1 * G2)."""
  values = np.arange(g2 * g1, dtype=np.float32).reshape(g2, g1) / (g2 * g1)
  return np.broadcast_to(values[:, :, None, None, None], (g2, g1, h, w, c)).copy()


# save_latent_grid


def test_save_latent_grid_20x20_digits_orientation(tmp_path, drawn):
  images = _morph_grid(20, 20)
  z = np.linspace(-2.0, 2.0, 20)
  path = tmp_path / "sub" / "grid.png"
  units = "prior standard deviations"
  assert latent_figures.save_latent_grid(path, images, z, z, "VAE latent grid", units) == path
  pixels = _read_png(path)
  # 20 cells of 28 px at a whole number of screen pixels each, plus the axis labels.
  assert pixels.shape[0] >= 560 and pixels.shape[1] >= 560
  (record,) = drawn
  ax = record["axes"][0]
  assert record["titles"] == ["VAE latent grid"]
  assert record["xlabels"] == [f"z[0] ({units})"] and record["ylabels"] == [f"z[1] ({units})"]
  # z[1] increases upwards: given ascending z2, the picture's top row is images[-1] (largest z2)
  # and its bottom row images[0]; columns keep the ascending z1 order.
  shown = np.asarray(ax.images[0].get_array())
  gap = 2  # Grey gaps of 1 pixel per 14 image pixels separate the cells, and frame the grid.
  assert shown.shape == (20 * 28 + 21 * gap, 20 * 28 + 21 * gap)
  np.testing.assert_allclose(shown[gap, gap], images[19, 0, 0, 0, 0])
  np.testing.assert_allclose(shown[-1 - gap, gap], images[0, 0, -1, 0, 0])
  np.testing.assert_allclose(shown[-1 - gap, -1 - gap], images[0, 19, -1, -1, 0])
  for cut in (shown[:gap], shown[:, :gap], shown[gap + 28 : 2 * gap + 28], shown[-gap:]):
    np.testing.assert_array_equal(cut, latent_figures.GRID_GAP_FILL)
  # Tick labels follow: the top label is the largest z2, and both ends of each axis are labelled.
  assert record["yticks"][0][0] == "2.00" and record["yticks"][0][-1] == "-2.00"
  assert record["xticks"][0][0] == "-2.00" and record["xticks"][0][-1] == "2.00"
  assert 3 <= len(record["xticks"][0]) <= 10


def test_save_latent_grid_order_of_z_values_does_not_matter(tmp_path):
  images = _morph_grid(6, 5, 8, 8)
  z1, z2 = np.linspace(-1, 1, 5), np.linspace(-3, 3, 6)
  a = _read_png(latent_figures.save_latent_grid(tmp_path / "a.png", images, z1, z2, "ascending"))
  # The same decodings listed with z2 descending (a common layout) and z1 descending.
  flipped = images[::-1, ::-1]
  b = _read_png(
    latent_figures.save_latent_grid(tmp_path / "b.png", flipped, z1[::-1], z2[::-1], "ascending")
  )
  np.testing.assert_array_equal(a, b)


def test_save_latent_grid_rgb_30x30_small_images(tmp_path, drawn):
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(30, 30, 8, 8, 3)).astype(np.float32)
  z = np.sort(rng.normal(size=30))
  pixels = _read_png(latent_figures.save_latent_grid(tmp_path / "g.png", images, z, z, "RGB grid"))
  assert pixels.shape[0] >= 30 * 8 and pixels.shape[1] >= 30 * 8
  # Labels are thinned out so ".2f" labels cannot collide.
  assert 3 <= len(drawn[0]["xticks"][0]) <= 10


# save_latent_scatter


def _clustered(n, d, k=10, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, k, n)
  centres = rng.normal(0.0, 4.0, (k, d))
  return centres[labels] + rng.normal(size=(n, d)), labels


def _colorbar_ticks(record) -> list[str]:
  """Tick labels of the colour bar, the one axes of the figure besides the plot."""
  assert len(record["axes"]) == 2, "expected the scatter plot and a colour bar"
  return record["yticks"][1]


@pytest.mark.parametrize(
  ("d", "xlabel", "ylabel", "note"),
  [
    (1, r"^z\[0\] \(prior sd\)$", "jitter", "1-d latents"),
    (2, r"^z\[0\] \(prior sd\)$", r"^z\[1\] \(prior sd\)$", "2-d latents"),
    (16, r"PC 1 \(\d+\.\d% var\)", r"PC 2 \(\d+\.\d% var\)", "PCA of 16-d latents"),
  ],
)
def test_save_latent_scatter_by_dimension(tmp_path, drawn, d, xlabel, ylabel, note):
  z, labels = _clustered(2000, d)
  names = [f"digit {k}" for k in range(10)]
  path = latent_figures.save_latent_scatter(
    tmp_path / "s.png", z, labels, "Test latents", class_names=names, latent_units="prior sd"
  )
  pixels = _read_png(path)
  assert pixels.shape[0] >= 400 and pixels.shape[1] >= 500
  (record,) = drawn
  assert record["titles"][0].startswith("Test latents") and note in record["titles"][0]
  assert re.search(xlabel, record["xlabels"][0]) and re.search(ylabel, record["ylabels"][0])
  assert _colorbar_ticks(record) == names
  # Points are drawn in 10 distinct colours, one per class.
  colours = record["axes"][0].collections[0].get_facecolors()
  assert len(np.unique(np.round(colours[:, :3], 3), axis=0)) == 10


def test_save_latent_scatter_tsne_subsamples(tmp_path, drawn):
  z, labels = _clustered(500, 16, k=4)
  # Barnes-Hut t-SNE spin-waits on OpenMP threads, which is many times slower on busy shared
  # cores; one thread keeps this test at about a second.
  with threadpool_limits(1):
    path = latent_figures.save_latent_scatter(
      tmp_path / "t.png", z, labels, "Latents", method="tsne", max_points=200, seed=3
    )
  _read_png(path)
  (record,) = drawn
  assert "t-SNE of 16-d latents" in record["titles"][0]
  assert "200 of 500 points" in record["titles"][0]
  assert record["xlabels"][0] == "t-SNE 1" and record["ylabels"][0] == "t-SNE 2"
  assert len(record["axes"][0].collections[0].get_offsets()) == 200
  assert _colorbar_ticks(record) == ["0", "1", "2", "3"]


def test_save_latent_scatter_without_labels_has_no_colorbar(tmp_path, drawn):
  z, _ = _clustered(10000, 2)
  _read_png(latent_figures.save_latent_scatter(tmp_path / "n.png", z, None, "Unlabelled"))
  (record,) = drawn
  assert len(record["axes"]) == 1
  assert len(record["axes"][0].collections[0].get_offsets()) == 10000


def test_save_latent_scatter_sparse_and_many_classes(tmp_path, drawn):
  z, labels = _clustered(300, 3, k=3)
  # Labels need not be 0..K-1: one colour and one tick per distinct label.
  sparse = np.array([0, 3, 7])[labels]
  latent_figures.save_latent_scatter(tmp_path / "a.png", z, sparse.astype(np.float32), "Sparse")
  assert _colorbar_ticks(drawn[0]) == ["0", "3", "7"]
  z, labels = _clustered(600, 2, k=12)
  _read_png(latent_figures.save_latent_scatter(tmp_path / "b.png", z, labels, "Twelve classes"))
  assert _colorbar_ticks(drawn[1]) == [str(k) for k in range(12)]


# save_interpolation and save_latent_noise


def test_save_interpolation(tmp_path, drawn):
  rows = np.stack([_images(10, 28, 28, 1, seed=p) for p in range(4)])
  labels = ["3 -> 8", "1 -> 7", "0 -> 6", "4 -> 9"]
  path = latent_figures.save_interpolation(
    tmp_path / "i.png", rows, "Interpolation", row_labels=labels
  )
  pixels = _read_png(path)
  assert pixels.shape[1] >= 10 * 28 * 2 and pixels.shape[0] >= 4 * 28 * 2
  (record,) = drawn
  assert record["suptitle"] == "Interpolation"
  assert record["ylabels"] == labels
  header = record["xticks"][0]
  assert header[0] == "t = 0.00" and header[-1] == "t = 1.00" and len(header) >= 3
  assert all(ticks == [] for ticks in record["xticks"][1:])


def test_save_interpolation_long_rgb_rows_default_labels(tmp_path, drawn):
  rows = _images(60, 8, 8, 3).reshape(2, 30, 8, 8, 3)
  _read_png(latent_figures.save_interpolation(tmp_path / "i.png", rows, "Long"))
  (record,) = drawn
  assert record["ylabels"] == ["pair 1", "pair 2"]
  # Long rows have narrow cells, so only some columns are headed.
  assert 3 <= len(record["xticks"][0]) < 30


def test_save_latent_noise(tmp_path, drawn):
  images = np.stack([_images(8, 28, 28, 1, seed=s) for s in range(5)])
  scales = [0.0, 0.25, 0.5, 1.0, 2.0]
  path = latent_figures.save_latent_noise(tmp_path / "n.png", images, scales, "Noisy latents")
  pixels = _read_png(path)
  assert pixels.shape[1] >= 8 * 28 * 2 and pixels.shape[0] >= 5 * 28 * 2
  (record,) = drawn
  assert record["suptitle"] == "Noisy latents"
  assert record["ylabels"][0] == "noise std 0.00\n(reconstruction)"
  assert record["ylabels"][1:] == [
    "noise std 0.25",
    "noise std 0.50",
    "noise std 1.00",
    "noise std 2.00",
  ]
  assert "noise" in record["xlabels"][-1]


# save_line_plots


def test_save_line_plots_log_x_with_gaps_and_errors(tmp_path, drawn):
  x = [2, 4, 8, 16, 32, 64]
  panels = {
    "test MSE": {
      "autoencoder": [0.05, 0.035, 0.02, np.nan, 0.008, 0.007],  # the d=16 run is missing
      "PCA": [0.055, 0.045, 0.035, 0.025, 0.017, 0.011],
    },
    "kNN accuracy": {"autoencoder": [0.4, 0.7, 0.9, 0.95, 0.96, 0.97], "failed": [np.nan] * 6},
  }
  errors = {"test MSE": {"autoencoder": [0.002, 0.002, 0.001, np.nan, 0.0005, 0.0004]}}
  path = figures.save_line_plots(
    tmp_path / "l.png", x, panels, "latent dimension", "AE vs PCA", log_x=True, errors=errors
  )
  pixels = _read_png(path)
  assert pixels.shape[1] > pixels.shape[0]
  (record,) = drawn
  assert record["suptitle"] == "AE vs PCA"
  assert record["titles"] == ["test MSE", "kNN accuracy"] == record["ylabels"]
  assert record["xlabels"] == ["latent dimension"] * 2
  for ax, ticks in zip(record["axes"], record["xticks"], strict=True):
    assert ax.get_xscale() == "log"
    assert ticks == ["2", "4", "8", "16", "32", "64"]
    assert ax.get_legend() is not None
  # Legends list the series in the given order, error-bar series included.
  assert _texts(record["axes"][0].get_legend().get_texts()) == ["autoencoder", "PCA"]
  assert _texts(record["axes"][1].get_legend().get_texts()) == ["autoencoder", "failed (no data)"]


def test_save_line_plots_linear_many_panels(tmp_path, drawn):
  x = np.arange(20) * 0.5
  panels = {f"metric {k}": {"run": np.cos(x + k)} for k in range(4)}
  _read_png(figures.save_line_plots(tmp_path / "l.png", x, panels, "epoch", "Four metrics"))
  (record,) = drawn
  # Two rows of up to three subplots; the unused sixth is hidden.
  assert len(record["axes"]) == 4
  assert all(ax.get_xscale() == "linear" for ax in record["axes"])


# Input checks for the latent-space figures and sweep plots

_GRID = np.full((3, 4, 8, 8, 1), 0.5)
_Z = np.zeros((10, 3))


def _with(arr, index, value):
  out = np.array(arr, dtype=np.float64)
  out[index] = value
  return out


def _line(p, x=(1, 2, 4), panels=None, **kwargs):
  panels = {"MSE": {"AE": [1.0, 2.0, 3.0]}} if panels is None else panels
  return figures.save_line_plots(p, x, panels, "d", "t", **kwargs)


@pytest.mark.parametrize(
  ("call", "match"),
  [
    # save_latent_grid
    (
      lambda p: latent_figures.save_latent_grid(
        p, _with(_GRID, (1, 2, 3, 4, 0), np.nan), range(4), range(3), "t"
      ),
      r"images: 1 non-finite",
    ),
    (
      lambda p: latent_figures.save_latent_grid(p, _GRID, [0, 1, np.inf, 3], range(3), "t"),
      "z1_values.*non-finite",
    ),
    (
      lambda p: latent_figures.save_latent_grid(p, _GRID, range(4), [0, np.nan, 1], "t"),
      "z2_values.*non-finite",
    ),
    (
      lambda p: latent_figures.save_latent_grid(p, _GRID[0], range(4), range(3), "t"),
      r"images.*\(G2, G1, H, W, C\).*\(4, 8, 8, 1\)",
    ),
    (
      lambda p: latent_figures.save_latent_grid(
        p, np.concatenate([_GRID, _GRID], axis=-1), range(4), range(3), "t"
      ),
      r"images.*C = 1.*\(3, 4, 8, 8, 2\)",
    ),
    (
      lambda p: latent_figures.save_latent_grid(p, _GRID, range(3), range(3), "t"),
      r"z1_values.*\(4,\).*\(3,\)",
    ),
    (
      lambda p: latent_figures.save_latent_grid(p, _GRID, range(4), range(4), "t"),
      r"z2_values.*\(3,\).*\(4,\)",
    ),
    (
      lambda p: latent_figures.save_latent_grid(
        p, (_GRID * 255).astype(np.uint8), range(4), range(3), "t"
      ),
      "images.*uint8",
    ),
    # save_latent_scatter
    (
      lambda p: latent_figures.save_latent_scatter(p, _with(_Z, (2, 1), np.nan), None, "t"),
      "z: 1 non-finite",
    ),
    (lambda p: latent_figures.save_latent_scatter(p, np.zeros(10), None, "t"), r"z.*\(10,\)"),
    (lambda p: latent_figures.save_latent_scatter(p, np.zeros((0, 2)), None, "t"), r"z.*\(0, 2\)"),
    (
      lambda p: latent_figures.save_latent_scatter(p, _Z, None, "t", method="umap"),
      r"method.*'pca', 'tsne'.*'umap'",
    ),
    (
      lambda p: latent_figures.save_latent_scatter(p, _Z, np.zeros(9, int), "t"),
      r"labels.*\(10,\).*\(9,\)",
    ),
    (lambda p: latent_figures.save_latent_scatter(p, _Z, np.full(10, 0.5), "t"), "labels.*integer"),
    (
      lambda p: latent_figures.save_latent_scatter(p, _Z, _with(np.zeros(10), 3, np.nan), "t"),
      "labels.*non-finite",
    ),
    (
      lambda p: latent_figures.save_latent_scatter(p, _Z, None, "t", class_names=["a"]),
      "class_names.*without labels",
    ),
    (
      lambda p: latent_figures.save_latent_scatter(
        p, _Z, np.arange(10) % 3, "t", class_names=["a", "b"]
      ),
      "class_names: 2 names",
    ),
    (lambda p: latent_figures.save_latent_scatter(p, _Z, None, "t", max_points=0), "max_points"),
    (lambda p: latent_figures.save_latent_scatter(p, _Z[:1], None, "t"), "z.*at least 2 points"),
    # save_interpolation
    (
      lambda p: latent_figures.save_interpolation(p, _with(_GRID, (0, 0, 0, 0, 0), np.inf), "t"),
      "rows: 1 non-finite",
    ),
    (
      lambda p: latent_figures.save_interpolation(p, _GRID[0], "t"),
      r"rows.*\(P, S, H, W, C\).*\(4, 8, 8, 1\)",
    ),
    (
      lambda p: latent_figures.save_interpolation(p, _GRID[:, :1], "t"),
      r"rows.*S >= 2.*\(3, 1, 8, 8, 1\)",
    ),
    (
      lambda p: latent_figures.save_interpolation(p, _GRID, "t", row_labels=["a", "b"]),
      "row_labels.*3",
    ),
    # save_latent_noise
    (
      lambda p: latent_figures.save_latent_noise(
        p, _with(_GRID, (2, 3, 0, 0, 0), np.nan), [0, 1, 2], "t"
      ),
      "images: 1 non-finite",
    ),
    (
      lambda p: latent_figures.save_latent_noise(p, _GRID, [0, 1], "t"),
      r"scales.*\(3, 4, 8, 8, 1\).*3.*got 2",
    ),
    (
      lambda p: latent_figures.save_latent_noise(p, _GRID, [0, np.nan, 1], "t"),
      "scales.*non-finite",
    ),
    (lambda p: latent_figures.save_latent_noise(p, _GRID, [0, -1, 1], "t"), "scales.*>= 0"),
    (
      lambda p: latent_figures.save_latent_noise(p, _GRID[0], [0, 1, 2], "t"),
      r"images.*\(S, N, H, W, C\).*\(4, 8, 8, 1\)",
    ),
    # save_line_plots
    (lambda p: _line(p, x=(1, np.nan, 4)), "x.*non-finite"),
    (lambda p: _line(p, x=(1, 0, 4), log_x=True), "x: log_x needs values > 0"),
    (lambda p: _line(p, panels={}), "panels"),
    (lambda p: _line(p, panels={"MSE": {}}), r"panels\['MSE'\]"),
    (
      lambda p: _line(p, panels={"MSE": {"AE": [1.0, np.inf, 3.0]}}),
      r"panels\['MSE'\]\['AE'\].*inf",
    ),
    (
      lambda p: _line(p, panels={"MSE": {"PCA": [1.0, 2.0]}}),
      r"panels\['MSE'\]\['PCA'\].*\(3,\).*\(2,\)",
    ),
    (
      lambda p: _line(p, errors={"MSE": {"PCA": [1, 1, 1]}}),
      r"errors\['MSE'\]\['PCA'\].*no such series",
    ),
    (lambda p: _line(p, errors={"BCE": {"AE": [1, 1, 1]}}), r"errors\['BCE'\]"),
    (lambda p: _line(p, errors={"MSE": {"AE": [1, -1, 1]}}), r"errors\['MSE'\]\['AE'\].*>= 0"),
    (lambda p: _line(p, errors={"MSE": {"AE": [1, 1]}}), r"errors\['MSE'\]\['AE'\].*\(3,\)"),
  ],
)
def test_latent_and_sweep_bad_inputs_raise_value_error(tmp_path, call, match):
  path = tmp_path / "bad.png"
  with pytest.raises(ValueError, match=match):
    call(path)
  assert not path.exists()


def test_importing_aejax_leaves_the_matplotlib_backend_alone():
  # A notebook's inline backend (here: whatever MPLBACKEND names) must survive `import aejax.main`,
  # or the user's own plt.show() would draw nothing.
  code = "import aejax.main, aejax.figures, matplotlib; print(matplotlib.get_backend())"
  result = subprocess.run(
    [sys.executable, "-c", code],
    env={**os.environ, "MPLBACKEND": "svg"},
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == "svg"


# save_traversals and save_mutual_info_matrix


def test_save_traversals_heads_a_shared_range_and_labels_each_dimension(tmp_path, drawn):
  rows = np.stack([_images(9, 16, 16, 1, seed=d) for d in range(3)])
  names = ["z[2]\nKL 3.10", "z[0]\nKL 1.20", "z[1]\nKL 0.00"]
  steps = np.linspace(-2.5, 2.5, 9)
  path = latent_figures.save_traversals(tmp_path / "t.png", rows, steps, names, "Traversals", "x")
  assert _read_png(path).shape[0] >= 3 * 16 * 2
  (record,) = drawn
  assert record["ylabels"] == names and record["xlabels"][-1] == "x"
  assert record["xticks"][0][0] == "-2.5" and record["xticks"][0][-1] == "+2.5"
  # Per-row ranges (an autoencoder's) get no shared header; a wrong shape is refused.
  latent_figures.save_traversals(tmp_path / "u.png", rows, np.ones((3, 9)), names, "AE", "x")
  assert drawn[1]["xticks"][0] == []
  with pytest.raises(ValueError, match=r"values: expected shape \(9,\) or \(3, 9\)"):
    latent_figures.save_traversals(tmp_path / "v.png", rows, np.ones(8), names, "bad", "x")


def test_save_mutual_info_matrix_orders_codes_and_writes_every_cell(tmp_path, drawn):
  mi = np.array([[0.0, 1.5], [0.9, 0.1], [0.2, 0.3]])
  path = latent_figures.save_mutual_info_matrix(
    tmp_path / "m.png", mi, ["shape", "scale"], "MI", code_order=[1, 0, 2]
  )
  _read_png(path)
  heat = drawn[0]["axes"][0]
  assert drawn[0]["yticks"][0] == ["z[1]", "z[0]", "z[2]"]
  assert drawn[0]["xticks"][0] == ["shape", "scale"]
  assert [t.get_text() for t in heat.texts] == ["0.90", "0.10", "0.00", "1.50", "0.20", "0.30"]
  with pytest.raises(ValueError, match="code_order: expected a permutation"):
    latent_figures.save_mutual_info_matrix(tmp_path / "n.png", mi, ["a", "b"], "MI", [0, 0, 1])


def test_save_strip_plots_draws_a_dot_per_seed_and_a_mean_per_category(tmp_path, drawn):
  panels = {"MIG": {"beta=1": [0.1, 0.2, np.nan], "beta=4": [0.3]}, "SAP": {"beta=1": [0.0]}}
  _read_png(figures.save_strip_plots(tmp_path / "s.png", panels, "Scores", ncols=2))
  (record,) = drawn
  assert record["titles"] == ["MIG", "SAP"] and record["suptitle"] == "Scores"
  assert record["xticks"][0] == ["beta=1", "beta=4"]
  mig = record["axes"][0]
  dots = [line for line in mig.lines if line.get_marker() == "o"]
  assert [len(d.get_ydata()) for d in dots] == [2, 1]  # The NaN seed is left out.
  means = [line.get_ydata()[0] for line in mig.lines if line.get_marker() != "o"]
  assert means == pytest.approx([0.15, 0.3])
  with pytest.raises(ValueError, match=r"panels\['SAP'\]: expected a non-empty dict"):
    figures.save_strip_plots(tmp_path / "t.png", {"SAP": {}}, "bad")
