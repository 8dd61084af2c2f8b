"""dSprites (Matthey et al. 2017) rendered from its generative factors inside jit, no file.

Factors (the official latents without the constant colour), indices row-major as in the npz:
- shape: 3 values, 0 square, 1 ellipse, 2 heart;
- scale: 6 values, np.linspace(0.5, 1, 6);
- orientation: 40 angles in radians, np.linspace(0, 2 pi, 40) with both endpoints, as in the
  official latents_values, so indices 0 and 39 draw the same image (as they do there);
- pos_x, pos_y: 32 values each, np.linspace(0, 1, 32).
3 * 6 * 40 * 32 * 32 = 737,280 combinations.

The image (64 x 64, one channel, float32 in {0, 1}) is a deterministic function of the factors.
Pixel (row r, column c) has its centre at (x, y) = (c + 0.5, r + 0.5) in pixel units, x to the
right, y down. The sprite's centre sits at x = 11 + 42 pos_x, y = 11 + 42 pos_y, so pos_y = 0
is the top of the image and the centres span pixels 11..53. A pixel is 1 when its centre lies
inside the sprite (no anti-aliasing, like the original): its offset from the sprite's centre
(dx to the right, dy up) is rotated by -orientation and divided by the scale, giving (u, v) in
the shape's own frame, in pixels at scale 1; a positive orientation turns the sprite
counter-clockwise on screen. Inside tests in that frame:
- square: |u|, |v| <= 7 (side 14, half-diagonal 9.9);
- ellipse: (u / 10)^2 + (v / 5)^2 <= 1, the long axis along u at orientation 0;
- heart: (X^2 + Y^2 - 1)^3 - X^2 Y^3 <= 0 with X = u / 7.5, Y = v / 7.5 + 0.3, i.e. the classic
  implicit heart (lobes up, point down) magnified 7.5 times and shifted so that it turns about
  a point near its centre of mass; it lies within 9.75 pixels of that point.
At scale 1 every shape reaches at most 10 pixels from its centre (about 20 pixels across, like
the original), so at every orientation and position it stays off the frame's border pixels.

This follows the published generative description, not the original renderer: the images are
NOT pixel-identical to dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz (shape sizes, the heart's
outline and the position-to-pixel map differ). `load_official` reads that file when a user has
it and serves it through the same interface.

ColorDSprites and NoisyDSprites are the variants of Locatello et al. 2019 (disentanglement_lib):
three channels, with a per-image sprite colour drawn uniformly in [0.5, 1] per channel on black,
or a white sprite on background noise uniform in [0, 1] per pixel and channel. Their factors
are the same five; colour and noise are nuisances drawn with the key given to
images_from_factors.
"""

from __future__ import annotations

import hashlib
import pathlib
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from aejax import errors, ground_truth

FACTOR_NAMES = ("shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
SHAPE_NAMES = ("square", "ellipse", "heart")
SCALES = np.linspace(0.5, 1.0, 6)
ORIENTATIONS = np.linspace(0.0, 2.0 * np.pi, 40)  # Radians; 0 and 2 pi both included.
POSITIONS = np.linspace(0.0, 1.0, 32)
IMAGE_SIZE = 64

# The renderer's geometry, in pixels (see the module docstring).
POSITION_MIN_PIXEL = 11.0  # The sprite centre's coordinate at pos = 0.
POSITION_SPAN_PIXELS = 42.0  # ... and at pos = 1 it is 11 + 42 = 53.
SQUARE_HALF_SIDE = 7.0
ELLIPSE_SEMI_AXES = (10.0, 5.0)  # Along u and v; 2:1 so that the orientation shows.
HEART_MAGNIFICATION = 7.5
HEART_CENTRE_Y = 0.3  # In the unit heart's frame: the point it turns about, near its centroid.

# The official file (github.com/google-deepmind/dsprites-dataset). Module constants so that a
# test can stand in a small fake file.
OFFICIAL_FILENAME = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
# Latent sizes of its rows: (color, shape, scale, orientation, pos_x, pos_y), row-major.
OFFICIAL_LATENT_SIZES = (1, 3, 6, 40, 32, 32)
# sha256 of the published npz as recorded by independent public download registrations (the
# dSprites repository itself lists no checksum); None skips the check.
OFFICIAL_SHA256 = "857dc001287e8efa226e0025fac6b29e5745c621b380b0d3363e4e33f4e28fa2"

# Pixel-centre coordinates of the frame, (64, 64) each: x to the right, y down.
_CENTRES = np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5
_X_HxW, _Y_HxW = np.meshgrid(_CENTRES, _CENTRES)


def _sprite_mask(shape, scale, angle, pos_x, pos_y) -> jax.Array:
  """(64, 64) bool: pixel centres inside one sprite; all arguments are scalars (values)."""
  dx_HxW = _X_HxW - (POSITION_MIN_PIXEL + POSITION_SPAN_PIXELS * pos_x)
  dy_HxW = (POSITION_MIN_PIXEL + POSITION_SPAN_PIXELS * pos_y) - _Y_HxW  # Up is positive.
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  # Rotating the offsets by -angle turns the sprite by +angle (counter-clockwise on screen).
  u_HxW = (cos * dx_HxW + sin * dy_HxW) / scale
  v_HxW = (cos * dy_HxW - sin * dx_HxW) / scale
  square = jnp.maximum(jnp.abs(u_HxW), jnp.abs(v_HxW)) <= SQUARE_HALF_SIDE
  a, b = ELLIPSE_SEMI_AXES
  ellipse = (u_HxW / a) ** 2 + (v_HxW / b) ** 2 <= 1.0
  hx, hy = u_HxW / HEART_MAGNIFICATION, v_HxW / HEART_MAGNIFICATION + HEART_CENTRE_Y
  heart = (hx**2 + hy**2 - 1.0) ** 3 - hx**2 * hy**3 <= 0.0
  # All three are cheap per pixel; under vmap a switch would compute them all anyway.
  return jnp.stack([square, ellipse, heart])[shape]


def _values(factors_Nx5: jax.Array) -> jax.Array:
  """(n, 5) float32 factor values (shape index as float, scale, angle, x, y) of indices."""
  factors_Nx5 = jnp.asarray(factors_Nx5)
  tables = (np.arange(3.0), SCALES, ORIENTATIONS, POSITIONS, POSITIONS)
  columns = [jnp.asarray(t, jnp.float32)[factors_Nx5[:, f]] for f, t in enumerate(tables)]
  return jnp.stack(columns, axis=1)


@jax.jit
def render_values(values_Nx5: jax.Array) -> jax.Array:
  """(n, 64, 64, 1) float32 {0, 1} images of factor values (as `factor_values` returns them).

  The shape column is rounded to the nearest index; scale, angle (radians) and positions in
  [0, 1] may take any value, which the tests use for exact angles such as pi / 2.
  """
  values_Nx5 = jnp.asarray(values_Nx5, jnp.float32)
  shape_N = jnp.clip(jnp.round(values_Nx5[:, 0]).astype(jnp.int32), 0, 2)
  mask_NxHxW = jax.vmap(_sprite_mask)(shape_N, *(values_Nx5[:, f] for f in range(1, 5)))
  return mask_NxHxW.astype(jnp.float32)[..., None]


@jax.jit
def render(factors_Nx5: jax.Array) -> jax.Array:
  """(n, 64, 64, 1) float32 {0, 1} images of (n, 5) int factor indices; pure, usable in jit.

  Does not validate: an out-of-range index is clamped by JAX's gather (DSprites validates
  concrete input before calling this). Compiled once per batch size.
  """
  return render_values(_values(factors_Nx5))


@jax.jit
def render_color(factors_Nx5: jax.Array, key: jax.Array) -> jax.Array:
  """(n, 64, 64, 3): the sprite in a colour drawn per image, uniform in [0.5, 1] per channel."""
  mask_NxHxWx1 = render(factors_Nx5)
  color_Nx1x1x3 = jax.random.uniform(key, (mask_NxHxWx1.shape[0], 1, 1, 3), minval=0.5, maxval=1)
  return mask_NxHxWx1 * color_Nx1x1x3


@jax.jit
def render_noisy(factors_Nx5: jax.Array, key: jax.Array) -> jax.Array:
  """(n, 64, 64, 3): a white sprite over background noise uniform in [0, 1] per pixel/channel."""
  mask_NxHxWx1 = render(factors_Nx5)
  noise_NxHxWx3 = jax.random.uniform(key, (*mask_NxHxWx1.shape[:3], 3))
  return jnp.maximum(mask_NxHxWx1, noise_NxHxWx3)


def _sample_factors(n: int, key: jax.Array, factor_sizes: tuple[int, ...]) -> jax.Array:
  """(n, num_factors) int32 indices, each column uniform on [0, size), independent."""
  if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
    raise errors.DataError(f"n: expected a non-negative int number of samples, got {n!r}")
  shape = (int(n), len(factor_sizes))
  # Each column's own upper bound, spelled out per entry (no implicit rank promotion).
  return jax.random.randint(key, shape, 0, jnp.broadcast_to(jnp.asarray(factor_sizes), shape))


def _is_traced(array) -> bool:
  """Whether `array` is an abstract value inside a transformation (no numbers to check)."""
  return isinstance(array, jax.core.Tracer)


class DSprites:
  """dSprites rendered on the fly (see the module docstring); a ground_truth.GroundTruthData."""

  factor_names = FACTOR_NAMES
  factor_sizes = FACTOR_SIZES
  image_shape = (IMAGE_SIZE, IMAGE_SIZE, 1)

  def sample_factors(self, n: int, key: jax.Array) -> jax.Array:
    """(n, 5) int32 factor indices drawn uniformly and independently with `key`."""
    return _sample_factors(n, key, self.factor_sizes)

  def _checked(self, factors) -> jax.Array:
    """`factors` as int32, validated (errors.DataError) unless traced inside jit."""
    if _is_traced(factors):
      return factors.astype(jnp.int32)
    return jnp.asarray(ground_truth.check_factors(self, factors), jnp.int32)

  def images_from_factors(self, factors, key: jax.Array | None = None) -> jax.Array:
    """(n, 64, 64, 1) float32 {0, 1} images of (n, 5) int indices; `key` is unused."""
    del key  # The plain sprites are a deterministic function of their factors.
    return render(self._checked(factors))

  def factor_values(self, factors) -> jax.Array:
    """(n, 5) float32 values of indices: shape index, scale, angle (radians), pos_x, pos_y."""
    return _values(self._checked(factors))


class _KeyedDSprites(DSprites):
  """Three-channel sprites whose images are random given the factors: they need a key."""

  image_shape = (IMAGE_SIZE, IMAGE_SIZE, 3)
  _render = None  # The pure renderer, (factors_Nx5, key) -> images.
  _nuisance = ""

  def images_from_factors(self, factors, key: jax.Array | None = None) -> jax.Array:
    """(n, 64, 64, 3) float32 images in [0, 1] of (n, 5) int indices, nuisances drawn by `key`."""
    if key is None:
      raise ValueError(
        f"key: {type(self).__name__} draws {self._nuisance} for every image and needs a JAX "
        "random key (jax.random.key(seed)), got None"
      )
    return self._render(self._checked(factors), key)


class ColorDSprites(_KeyedDSprites):
  """dSprites with the sprite coloured per image, uniform in [0.5, 1] per channel, on black."""

  _render = staticmethod(render_color)
  _nuisance = "a colour"


class NoisyDSprites(_KeyedDSprites):
  """dSprites with a white sprite on background noise uniform in [0, 1] per pixel and channel."""

  _render = staticmethod(render_noisy)
  _nuisance = "a noisy background"


class OfficialDSprites(DSprites):
  """The official npz's images behind the DSprites interface (built by `load_official`).

  `imgs_NxHxW` holds every image (uint8 {0, 1}) in the file's row-major factor order;
  images_from_factors looks them up by index. The full file takes 3 GB of memory.
  """

  def __init__(self, imgs_NxHxW: np.ndarray, factor_sizes: tuple[int, ...]):
    self.imgs_NxHxW = imgs_NxHxW
    self.factor_sizes = tuple(factor_sizes)
    self.image_shape = (*imgs_NxHxW.shape[1:], 1)

  def images_from_factors(self, factors, key: jax.Array | None = None) -> jax.Array:
    """(n, 64, 64, 1) float32 {0, 1}: the file's images of (n, 5) int indices (concrete only)."""
    del key
    if _is_traced(factors):
      raise errors.DataError(
        "factors: OfficialDSprites looks images up in host memory and cannot run inside "
        "jax.jit; call it outside, or use DSprites (rendered) inside jit"
      )
    factors = ground_truth.check_factors(self, factors)
    # The file's colour factor has a single value; its index is 0 for every row.
    index_N = np.ravel_multi_index(tuple(factors.T), self.factor_sizes)
    return jnp.asarray(self.imgs_NxHxW[index_N].astype(np.float32)[..., None])


def file_sha256(path: pathlib.Path) -> str:
  """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def load_official(path, check_sha256: bool = True) -> OfficialDSprites:
  """The official dSprites npz (the file, or a folder holding it) as an OfficialDSprites.

  Checks, else errors.DataError naming the file: its sha256 against OFFICIAL_SHA256 (when
  `check_sha256` and that constant is set); 'imgs' of shape (N, 64, 64), N the product of
  OFFICIAL_LATENT_SIZES, uint8 in {0, 1}; 'latents_classes' of shape (N, 6), integers in the
  row-major order of (color, shape, scale, orientation, pos_x, pos_y). The npz is read
  without pickle: its pickled 'metadata' is never opened.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    path = path / OFFICIAL_FILENAME
  if not path.is_file():
    raise errors.DataError(
      f"dsprites: {path} does not exist; download {OFFICIAL_FILENAME} from "
      "https://github.com/google-deepmind/dsprites-dataset, or use DSprites(), which renders "
      "the sprites without a file"
    )
  if check_sha256 and OFFICIAL_SHA256 is not None:
    actual = file_sha256(path)
    if actual != OFFICIAL_SHA256:
      raise errors.DataError(
        f"dsprites: {path} has sha256 {actual}, expected {OFFICIAL_SHA256} (the published "
        f"{OFFICIAL_FILENAME}); download it again, or pass check_sha256=False for a copy you "
        "trust"
      )
  sizes = tuple(OFFICIAL_LATENT_SIZES)
  num = int(np.prod(sizes))
  try:
    with np.load(path, allow_pickle=False) as npz:
      files = list(npz.files)
      arrays = {k: npz[k] for k in ("imgs", "latents_classes") if k in files}
  except (OSError, ValueError, zipfile.BadZipFile) as err:
    raise errors.DataError(f"dsprites: cannot read {path} as an npz file: {err}") from err
  if len(arrays) < 2:
    raise errors.DataError(
      f"dsprites: {path} should hold the arrays 'imgs' and 'latents_classes' of "
      f"{OFFICIAL_FILENAME}, found {sorted(files)}"
    )
  imgs, classes = arrays["imgs"], arrays["latents_classes"]
  size = IMAGE_SIZE
  if imgs.shape != (num, size, size) or imgs.dtype != np.uint8:
    raise errors.DataError(
      f"dsprites: {path}: 'imgs' should be ({num}, {size}, {size}) uint8, "
      f"got {imgs.shape} {imgs.dtype}"
    )
  if imgs.max(initial=0) > 1:
    raise errors.DataError(
      f"dsprites: {path}: 'imgs' should hold 0 and 1 only, got a maximum of {imgs.max()}"
    )
  expected_Nx6 = np.stack(np.unravel_index(np.arange(num), sizes), axis=1)
  if (
    classes.shape != expected_Nx6.shape
    or not np.issubdtype(classes.dtype, np.integer)
    or not np.array_equal(classes, expected_Nx6)
  ):
    raise errors.DataError(
      f"dsprites: {path}: 'latents_classes' should be ({num}, 6) integers in row-major order "
      f"over latent sizes {sizes}, got {classes.shape} {classes.dtype} in another order"
    )
  return OfficialDSprites(imgs, sizes[1:])
