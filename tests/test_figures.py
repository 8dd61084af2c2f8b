"""Tests for aejax.figures: PNG output, tiling layout, metrics parsing and input checks."""

import json
import pathlib
import re

import matplotlib.image as mpimg
import numpy as np
import pytest

from aejax import figures
from aejax.figures import plt

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
  assert isinstance(path, pathlib.Path)
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
