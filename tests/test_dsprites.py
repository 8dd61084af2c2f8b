"""Tests for aejax.dsprites: factors, geometry of the rendered sprites, variants, the npz loader."""

from __future__ import annotations

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, optimize, stats

from aejax import dsprites, errors, ground_truth

SIZES = (3, 6, 40, 32, 32)


def _grid(**fixed) -> np.ndarray:
  """(n, 5) int indices: the product of the given index lists, in factor order."""
  columns = [np.atleast_1d(fixed[name]) for name in dsprites.FACTOR_NAMES]
  mesh = np.meshgrid(*columns, indexing="ij")
  return np.stack([m.ravel() for m in mesh], axis=1)


def _masks(factors) -> np.ndarray:
  """(n, 64, 64) bool sprites of `factors` rendered by DSprites."""
  return np.asarray(dsprites.DSprites().images_from_factors(factors))[..., 0] > 0.5


def _unit_heart_area() -> float:
  """Area of (x^2 + y^2 - 1)^3 <= x^2 y^3, in polar coordinates about the origin.

  The region is star-shaped about the origin: along angle phi its boundary is the one root of
  r^2 - 1 = k r^(5/3), k = cbrt(cos^2 phi sin^3 phi) (the cube root of the curve's equation).
  """

  def radius(phi):
    k = np.cbrt(np.cos(phi) ** 2 * np.sin(phi) ** 3)
    return optimize.brentq(lambda r: r * r - 1 - k * r ** (5 / 3), 0.0, 2.0)

  area, _ = integrate.quad(lambda phi: 0.5 * radius(phi) ** 2, 0.0, 2 * np.pi, limit=200)
  return area


def test_factors_names_sizes_values_and_count():
  data = dsprites.DSprites()
  assert data.factor_names == ("shape", "scale", "orientation", "pos_x", "pos_y")
  assert data.factor_sizes == SIZES == dsprites.FACTOR_SIZES
  assert ground_truth.num_combinations(data) == 737_280
  assert data.image_shape == (64, 64, 1)
  np.testing.assert_allclose(dsprites.SCALES, [0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
  assert len(dsprites.ORIENTATIONS) == 40
  assert dsprites.ORIENTATIONS[0] == 0 and dsprites.ORIENTATIONS[-1] == pytest.approx(2 * np.pi)
  np.testing.assert_allclose(np.diff(dsprites.ORIENTATIONS), 2 * np.pi / 39)
  np.testing.assert_allclose(dsprites.POSITIONS, np.arange(32) / 31)
  for cls in (dsprites.DSprites, dsprites.ColorDSprites, dsprites.NoisyDSprites):
    assert isinstance(cls(), ground_truth.GroundTruthData)
  assert dsprites.ColorDSprites().image_shape == dsprites.NoisyDSprites().image_shape == (64, 64, 3)


def test_images_are_deterministic_binary_and_shaped():
  data = dsprites.DSprites()
  factors = np.asarray(data.sample_factors(50, jax.random.key(3)))
  first = np.asarray(data.images_from_factors(factors))
  second = np.asarray(data.images_from_factors(jnp.asarray(factors)))
  assert first.shape == (50, 64, 64, 1) and first.dtype == np.float32
  np.testing.assert_array_equal(first, second)
  assert set(np.unique(first)) == {0.0, 1.0}
  assert (first.sum(axis=(1, 2, 3)) > 20).all()  # Every sprite drew something.
  # The duplicated angle: 0 and 2 pi draw the same image, as in the official file.
  pairs = _masks(_grid(shape=[0, 1, 2], scale=2, orientation=[0, 39], pos_x=5, pos_y=9))
  np.testing.assert_array_equal(pairs[0::2], pairs[1::2])


def test_pixel_area_matches_the_analytic_area_of_each_shape():
  # Averaged over all 40 orientations and 3 positions, the pixel count of a shape is an
  # unbiased estimate of its area (pixel centres sample the plane), within a few percent.
  half_side = dsprites.SQUARE_HALF_SIDE
  a, b = dsprites.ELLIPSE_SEMI_AXES
  unit_areas = (
    (2 * half_side) ** 2,
    np.pi * a * b,
    dsprites.HEART_MAGNIFICATION**2 * _unit_heart_area(),
  )
  factors = _grid(
    shape=[0, 1, 2], scale=range(6), orientation=range(40), pos_x=[3, 14, 27], pos_y=0
  )
  factors[:, 4] = factors[:, 3] * 7 % 32  # Three different (x, y) positions.
  counts = _masks(factors).sum(axis=(1, 2)).reshape(3, 6, 120).mean(axis=2)
  for shape in range(3):
    expected = unit_areas[shape] * dsprites.SCALES**2
    np.testing.assert_allclose(counts[shape], expected, rtol=0.03, err_msg=f"shape {shape}")


def test_rotation_square_is_invariant_under_90_degrees_and_the_ellipse_is_not():
  positions = [(0.0, 0.0), (0.3, 0.7), (0.55, 0.5), (1.0, 0.2)]
  rows = []
  for shape in (0, 1):
    for scale in (0.5, 1.0):
      for x, y in positions:
        rows += [[shape, scale, 0.0, x, y], [shape, scale, np.pi / 2, x, y]]
  masks = np.asarray(dsprites.render_values(np.array(rows, np.float32)))[..., 0]
  diff = np.abs(masks[0::2] - masks[1::2]).sum(axis=(1, 2)).reshape(2, 2, len(positions))
  assert diff[0].max() <= 4, f"square rotated by 90 degrees differs in {diff[0]} pixels"
  areas = masks[0::2].sum(axis=(1, 2)).reshape(2, 2, len(positions))
  assert (diff[1] > 0.5 * areas[1]).all(), f"the ellipse turned by 90 degrees differs in {diff[1]}"
  # Orientation 0: the ellipse's long axis is horizontal, at pi / 2 vertical.
  rows_var = lambda m: np.var(np.nonzero(m)[0])  # noqa: E731
  cols_var = lambda m: np.var(np.nonzero(m)[1])  # noqa: E731
  flat, upright = masks[2 * 2 * len(positions)], masks[2 * 2 * len(positions) + 1]
  assert cols_var(flat) > 3 * rows_var(flat) and rows_var(upright) > 3 * cols_var(upright)
  # The heart at orientation 0 points down: most of its mass lies above its bounding box's
  # middle row; turned by pi it points up.
  hearts = np.asarray(
    dsprites.render_values(np.array([[2, 1, 0, 0.5, 0.5], [2, 1, np.pi, 0.5, 0.5]]))
  )
  for mask, sign in zip(hearts[..., 0], (1, -1), strict=True):
    r = np.nonzero(mask)[0]
    assert sign * ((r.min() + r.max()) / 2 - r.mean()) > 0.5


def test_centre_of_mass_moves_monotonically_with_position():
  for shape in range(3):
    along_x = _masks(_grid(shape=shape, scale=3, orientation=7, pos_x=range(32), pos_y=10))
    along_y = _masks(_grid(shape=shape, scale=3, orientation=7, pos_x=20, pos_y=range(32)))
    cols = np.array([np.nonzero(m)[1].mean() for m in along_x])
    rows = np.array([np.nonzero(m)[0].mean() for m in along_y])
    assert (np.diff(cols) > 0).all(), f"shape {shape}: column centroid {cols}"
    assert (np.diff(rows) > 0).all(), f"shape {shape}: row centroid {rows}"  # pos_y 0 at top.
  # The documented map: a square's centroid is its centre, 11 + 42 pos (+ 0.5 for pixel
  # centres, whose coordinates are index + 0.5).
  squares = _masks(_grid(shape=0, scale=5, orientation=0, pos_x=range(32), pos_y=31))
  centres = np.array([np.nonzero(m)[1].mean() + 0.5 for m in squares])
  np.testing.assert_allclose(centres, 11 + 42 * dsprites.POSITIONS, atol=0.5)
  assert all(np.nonzero(m)[0].mean() + 0.5 == pytest.approx(53, abs=0.5) for m in squares)


def test_sprites_stay_inside_the_frame_at_extreme_positions():
  factors = _grid(shape=[0, 1, 2], scale=5, orientation=range(40), pos_x=[0, 31], pos_y=[0, 31])
  masks = _masks(factors)
  border = np.ones((64, 64), bool)
  border[1:-1, 1:-1] = False
  assert not masks[:, border].any(), "a sprite touches the border"
  # Nothing was cut off either: the count matches the same sprite in the middle of the frame.
  middle = factors.copy()
  middle[:, 3:] = 15
  np.testing.assert_allclose(masks.sum(axis=(1, 2)), _masks(middle).sum(axis=(1, 2)), rtol=0.08)


def test_the_three_shapes_are_distinguishable_by_nearest_template():
  # Test sprites at angles halfway between the grid's, so that no template is exact; the
  # templates: every shape at every grid orientation, at the test sprite's scale and position.
  rng = np.random.default_rng(0)
  n = 24
  factors = np.stack([rng.integers(0, size, n) for size in SIZES], axis=1)
  factors[:, 0] = np.arange(n) % 3
  values = np.array(dsprites.DSprites().factor_values(factors))
  values[:, 2] += np.pi / 39  # Half a grid step.
  tests = np.asarray(dsprites.render_values(values))[..., 0]
  templates = np.repeat(factors, 120, axis=0).reshape(n, 3, 40, 5)
  templates[..., 0] = np.arange(3)[None, :, None]
  templates[..., 2] = np.arange(40)
  images = _masks(templates.reshape(-1, 5)).reshape(n, 3, 40, 64, 64)
  distance = np.abs(images - tests[:, None, None]).sum(axis=(-1, -2)).min(axis=2)  # (n, 3)
  np.testing.assert_array_equal(distance.argmin(axis=1), factors[:, 0])
  area = tests.sum(axis=(1, 2))
  wrong = np.where(np.eye(3, dtype=bool)[factors[:, 0]], np.inf, distance).min(axis=1)
  right = distance[np.arange(n), factors[:, 0]]
  assert (wrong - right > 0.08 * area).all(), f"margins {(wrong - right) / area}"


def test_sample_factors_in_range_and_uniform():
  data = dsprites.DSprites()
  factors = np.asarray(data.sample_factors(30_000, jax.random.key(0)))
  assert factors.shape == (30_000, 5) and factors.dtype == np.int32
  assert (factors >= 0).all() and (factors < np.array(SIZES)).all()
  for f, size in enumerate(SIZES):
    counts = np.bincount(factors[:, f], minlength=size)
    assert stats.chisquare(counts).pvalue > 1e-4, f"factor {f}: {counts}"
  # Independent columns: the correlation of two factors is near 0.
  assert abs(np.corrcoef(factors[:, 3], factors[:, 4])[0, 1]) < 0.03
  other = np.asarray(data.sample_factors(30_000, jax.random.key(1)))
  assert (other != factors).any()
  np.testing.assert_array_equal(factors, np.asarray(data.sample_factors(30_000, jax.random.key(0))))
  with pytest.raises(errors.DataError, match="n: expected a non-negative int"):
    data.sample_factors(-1, jax.random.key(0))


@pytest.mark.parametrize(
  "factors, match",
  [
    (np.zeros((4, 4), np.int32), r"factors: expected an \(n, 5\) array .*shape, scale"),
    (np.zeros(5, np.int32), r"factors: expected an \(n, 5\) array.*got shape \(5,\)"),
    (np.array([[3, 0, 0, 0, 0]]), r"factors\[:, 0\] \(shape\): indices must lie in \[0, 3\)"),
    (np.array([[0, 0, 40, 0, 0]]), r"\(orientation\): indices must lie in \[0, 40\), got"),
    (np.array([[0, 0, 0, 0, -1]]), r"\(pos_y\): indices must lie in \[0, 32\), got \[-1, -1\]"),
    (np.zeros((2, 5), np.float32), r"factors: expected integer indices, got dtype float32"),
  ],
)
def test_bad_factors_raise_data_error_naming_them(factors, match):
  for data in (dsprites.DSprites(), dsprites.ColorDSprites(), dsprites.NoisyDSprites()):
    with pytest.raises(errors.DataError, match=match):
      data.images_from_factors(factors, jax.random.key(0))
  with pytest.raises(errors.DataError, match=match):
    dsprites.DSprites().factor_values(factors)


def test_factor_values_are_the_published_values():
  factors = np.array([[0, 0, 0, 0, 31], [2, 5, 39, 31, 0], [1, 3, 10, 7, 12]])
  values = np.asarray(dsprites.DSprites().factor_values(factors))
  expected = np.array(
    [
      [0, 0.5, 0.0, 0.0, 1.0],
      [2, 1.0, 2 * np.pi, 1.0, 0.0],
      [1, 0.8, 10 * 2 * np.pi / 39, 7 / 31, 12 / 31],
    ]
  )
  assert values.dtype == np.float32
  np.testing.assert_allclose(values, expected, rtol=1e-6, atol=1e-7)


def test_color_variant_colours_the_sprite_on_black():
  data = dsprites.ColorDSprites()
  factors = np.asarray(data.sample_factors(16, jax.random.key(5)))
  mask = _masks(factors)
  images = np.asarray(data.images_from_factors(factors, jax.random.key(7)))
  assert images.shape == (16, 64, 64, 3) and images.dtype == np.float32
  assert (images[~mask] == 0).all()
  colours = []
  for image, m in zip(images, mask, strict=True):
    sprite = image[m]  # (pixels, 3): one colour for the whole sprite.
    np.testing.assert_array_equal(sprite, np.broadcast_to(sprite[0], sprite.shape))
    colours.append(sprite[0])
  colours = np.array(colours)
  assert (colours >= 0.5).all() and (colours <= 1).all()
  assert len(np.unique(colours)) == colours.size  # Drawn per image and channel.
  np.testing.assert_array_equal(images, data.images_from_factors(factors, jax.random.key(7)))
  assert (images != np.asarray(data.images_from_factors(factors, jax.random.key(8)))).any()
  with pytest.raises(ValueError, match="key: ColorDSprites draws a colour .* got None"):
    data.images_from_factors(factors)


def test_noisy_variant_puts_a_white_sprite_on_uniform_noise():
  data = dsprites.NoisyDSprites()
  factors = np.asarray(data.sample_factors(16, jax.random.key(5)))
  mask = _masks(factors)
  images = np.asarray(data.images_from_factors(factors, jax.random.key(7)))
  assert images.shape == (16, 64, 64, 3)
  assert (images[mask] == 1).all()
  background = images[~mask]
  assert (background >= 0).all() and (background < 1).all()
  assert stats.kstest(background.ravel()[:20_000], "uniform").pvalue > 1e-4
  assert (background[:, 0] != background[:, 1]).mean() > 0.99  # Noise per channel.
  with pytest.raises(ValueError, match="key: NoisyDSprites draws a noisy background"):
    data.images_from_factors(factors, None)


def test_rendering_works_inside_jit():
  data = dsprites.DSprites()
  factors = np.asarray(data.sample_factors(8, jax.random.key(2)))
  eager = np.asarray(data.images_from_factors(factors))

  @jax.jit
  def sample_and_render(key):
    sampled = jax.random.randint(key, (8, 5), 0, jnp.broadcast_to(jnp.asarray(SIZES), (8, 5)))
    return dsprites.render(sampled), dsprites.render_color(sampled, key)

  np.testing.assert_array_equal(np.asarray(jax.jit(dsprites.render)(factors)), eager)
  # The class skips validation for traced input, so it composes with jit too.
  np.testing.assert_array_equal(np.asarray(jax.jit(data.images_from_factors)(factors)), eager)
  plain, coloured = sample_and_render(jax.random.key(4))
  assert plain.shape == (8, 64, 64, 1) and coloured.shape == (8, 64, 64, 3)
  np.testing.assert_array_equal(
    np.asarray(coloured).max(axis=-1) > 0, np.asarray(plain)[..., 0] > 0
  )


def _fake_npz(path, sizes, rng):
  """A small stand-in for the official file: random distinct binary images, row-major latents."""
  num = int(np.prod(sizes))
  imgs = (rng.random((num, 64, 64)) < 0.3).astype(np.uint8)
  classes = np.stack(np.unravel_index(np.arange(num), sizes), axis=1).astype(np.int64)
  # A pickled object like the real 'metadata': the loader must never need to open it.
  metadata = np.array({"latents_sizes": np.array(sizes)}, dtype=object)
  np.savez_compressed(path, imgs=imgs, latents_classes=classes, metadata=metadata)
  return imgs, classes


def test_official_loader_looks_images_up_in_row_major_order(tmp_path, monkeypatch):
  sizes = (1, 3, 2, 2, 2, 2)
  monkeypatch.setattr(dsprites, "OFFICIAL_LATENT_SIZES", sizes)
  path = tmp_path / dsprites.OFFICIAL_FILENAME
  imgs, _ = _fake_npz(path, sizes, np.random.default_rng(0))
  monkeypatch.setattr(dsprites, "OFFICIAL_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())
  for where in (path, tmp_path):  # The file, or the folder holding it.
    data = dsprites.load_official(where)
    assert data.factor_sizes == (3, 2, 2, 2, 2) and data.image_shape == (64, 64, 1)
    assert isinstance(data, ground_truth.GroundTruthData)
    factors = np.array([[0, 0, 0, 0, 0], [2, 1, 1, 1, 1], [1, 0, 1, 1, 0], [2, 1, 0, 0, 1]])
    # Row of (color 0, shape, scale, orientation, x, y) in the file, written out by hand.
    rows = [((((s * 2 + sc) * 2 + o) * 2 + x) * 2 + y) for s, sc, o, x, y in factors]
    images = np.asarray(data.images_from_factors(factors))
    assert images.shape == (4, 64, 64, 1) and images.dtype == np.float32
    np.testing.assert_array_equal(images[..., 0], imgs[rows].astype(np.float32))
  with pytest.raises(errors.DataError, match=r"\(scale\): indices must lie in \[0, 2\)"):
    data.images_from_factors(np.array([[0, 2, 0, 0, 0]]))
  with pytest.raises(errors.DataError, match="cannot run inside jax.jit"):
    jax.jit(data.images_from_factors)(factors)


def test_official_loader_rejects_a_wrong_file(tmp_path, monkeypatch):
  sizes = (1, 3, 2, 2, 2, 2)
  monkeypatch.setattr(dsprites, "OFFICIAL_LATENT_SIZES", sizes)
  rng = np.random.default_rng(1)
  path = tmp_path / dsprites.OFFICIAL_FILENAME
  imgs, classes = _fake_npz(path, sizes, rng)
  actual = hashlib.sha256(path.read_bytes()).hexdigest()
  monkeypatch.setattr(dsprites, "OFFICIAL_SHA256", "0" * 64)
  with pytest.raises(errors.DataError, match=f"{path.name} has sha256 {actual}, expected 0{{64}}"):
    dsprites.load_official(path)
  assert dsprites.load_official(path, check_sha256=False).factor_sizes == (3, 2, 2, 2, 2)
  monkeypatch.setattr(dsprites, "OFFICIAL_SHA256", None)
  bad_files = {
    "shape.npz": ({"imgs": imgs[:-1], "latents_classes": classes}, r"'imgs' should be \(48, 64"),
    "dtype.npz": ({"imgs": imgs.astype(np.float32), "latents_classes": classes}, "uint8, got"),
    "values.npz": ({"imgs": imgs * 255, "latents_classes": classes}, "0 and 1 only, got a max"),
    "order.npz": ({"imgs": imgs, "latents_classes": classes[::-1]}, "row-major order over"),
    "keys.npz": ({"images": imgs, "latents_classes": classes}, "should hold the arrays 'imgs'"),
  }
  for name, (arrays, match) in bad_files.items():
    np.savez(tmp_path / name, **arrays)
    with pytest.raises(errors.DataError, match=f"{name}.*{match}"):
      dsprites.load_official(tmp_path / name)
  (tmp_path / "text.npz").write_text("not an npz")
  with pytest.raises(errors.DataError, match="text.npz as an npz file"):
    dsprites.load_official(tmp_path / "text.npz")
  with pytest.raises(errors.DataError, match="missing.npz does not exist; download"):
    dsprites.load_official(tmp_path / "missing.npz")
