"""Image data sets: local IDX/AMAT files, scikit-learn digits, tfds, or rendered from factors.

The ground-truth data sets (dSprites and its colour and noisy variants, aejax/dsprites.py) have
no files: `load` renders a fixed subset of their factor combinations into an ImageSet, and the
trainer trains on all of them through a RenderedSet, which stores factor indices and draws each
batch's images on device inside the training step.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import socket
import threading

import jax
import numpy as np

from aejax import chorales, datafiles, dsprites, errors, ground_truth
from aejax.datafiles import DATA_DIR_ENV, LOCAL_FOLDERS
from aejax.errors import DataError

__all__ = [
  "DATA_DIR_ENV",
  "LOCAL_FOLDERS",
  "SOURCES",
  "DataError",
  "ImageSet",
  "RenderedSet",
  "load",
  "load_tfds",
  "resolve_data_dir",
]

SOURCES = ("auto", "tfds", "idx", "amat", "digits", "rendered", "music21")

# The data sets rendered from their generative factors (source "rendered"), by config name.
GROUND_TRUTH = {
  "dsprites": dsprites.DSprites,
  "color_dsprites": dsprites.ColorDSprites,
  "noisy_dsprites": dsprites.NoisyDSprites,
}
# A rendered data set's "train" split is every factor combination, in the order of a fixed
# shuffle (seed RENDERED_ORDER_SEED), so that data.train_limit keeps a varied subset. Its "test"
# split is the first RENDERED_TEST_SIZE combinations of another fixed shuffle: the same
# distribution as training (disentanglement studies evaluate on the data set itself), with its
# nuisances (colour, noise) drawn once with RENDERED_TEST_SEED.
RENDERED_ORDER_SEED, RENDERED_TEST_SEED = 0, 1
RENDERED_TEST_SIZE = 10_000
# More rendered images than this in host memory is refused (737,280 64x64 images are 12 GB).
RENDERED_MAX_IMAGES = 100_000

# Largest pixel value per tfds data set whose uint8 images are not 0..255: tfds stores
# binarized_mnist as uint8 0/1, which dividing by 255 would wrongly squash to ~0.
_TFDS_UINT8_MAX = {"binarized_mnist": 1}

_NETWORK_PROBE = ("storage.googleapis.com", 443)

# Longest part of a tfds error quoted in a DataError: checksum errors run to many lines.
_MAX_QUOTED_ERROR = 500


# k / 255 for k = 0..255 in float32, as the loaders compute it (np.divide, correctly rounded):
# a batch of uint8 levels is decoded by lookup, which reproduces these bits exactly (a division
# under XLA may differ in the last bit).
GREY_LEVELS = np.divide(np.arange(256), np.float32(255), dtype=np.float32)


def decode_grey_levels(levels: jax.Array, key: jax.Array | None = None) -> jax.Array:
  """uint8 grey levels -> float32 images in [0, 1], exactly GREY_LEVELS[levels]."""
  del key  # The signature of RenderedSet.render: a stored batch and the step's key.
  return jax.numpy.asarray(GREY_LEVELS)[levels]


@dataclasses.dataclass(frozen=True, eq=False)
class ImageSet:
  """One split of an image data set, ready for training.

  Attributes:
    images: float32, shape (N, H, W, C), values in [0, 1].
    labels: int32, shape (N,), or None when the data set has no labels.
    name: data set name, e.g. "mnist".
    split: split name, e.g. "train".
    source: where the arrays came from: "idx", "amat", "digits" or "tfds".
  """

  # eq=False: the generated __eq__/__hash__ would compare/hash arrays, which raises.
  images: np.ndarray
  labels: np.ndarray | None
  name: str
  split: str
  source: str

  def __post_init__(self) -> None:
    where = f"{self.name}/{self.split} (source {self.source!r})"
    images = self.images
    if not isinstance(images, np.ndarray) or images.dtype != np.float32:
      raise DataError(
        f"{where}: images must be a float32 numpy array, got "
        f"{getattr(images, 'dtype', type(images).__name__)}; convert with "
        "images.astype(np.float32) after scaling to [0, 1]."
      )
    if images.ndim != 4 or images.shape[0] == 0:
      raise DataError(
        f"{where}: images must have shape (N, H, W, C) with N >= 1, got {images.shape}."
      )
    lo, hi = float(images.min()), float(images.max())
    # Written so that NaN fails too.
    if not (lo >= 0.0 and hi <= 1.0):
      raise DataError(
        f"{where}: image values must lie in [0, 1], found min {lo} and max {hi}; "
        "scale the pixels (e.g. uint8 / 255) before building an ImageSet."
      )
    labels = self.labels
    if labels is not None:
      if not isinstance(labels, np.ndarray) or labels.dtype != np.int32:
        raise DataError(
          f"{where}: labels must be an int32 numpy array or None, got "
          f"{getattr(labels, 'dtype', type(labels).__name__)}."
        )
      if labels.shape != (images.shape[0],):
        raise DataError(
          f"{where}: labels have shape {labels.shape} but there are "
          f"{images.shape[0]} images; expected shape ({images.shape[0]},)."
        )

  @functools.cached_property
  def _levels(self) -> np.ndarray | None:
    """The images as uint8 k with images == GREY_LEVELS[k] exactly, or None if they are not."""
    codes = np.rint(self.images * 255).astype(np.uint8)
    return codes if np.array_equal(GREY_LEVELS[codes], self.images) else None

  @property
  def stored(self) -> np.ndarray:
    """What the trainer keeps on device and cuts batches from: uint8 grey levels when every
    value is one of GREY_LEVELS (8-bit images, binarized ones: a quarter of float32's memory),
    else the float32 images. `render` turns a batch of it back into the images, bit for bit."""
    return self.images if self._levels is None else self._levels

  @property
  def render(self):
    """`(stored batch, key) -> images` inside the compiled step, or None for float32 storage."""
    return None if self._levels is None else decode_grey_levels

  @property
  def image_shape(self) -> tuple[int, ...]:
    return tuple(int(d) for d in self.images.shape[1:])

  @property
  def num_examples(self) -> int:
    return int(self.images.shape[0])


@dataclasses.dataclass(frozen=True, eq=False)
class RenderedSet:
  """A training split of a ground-truth data set, stored as factor indices, rendered on device.

  The trainer keeps `factors` on device and cuts each batch from them as it cuts stored images;
  `render(factors_Bx5, key)` then draws the batch's images inside the compiled step, with `key`
  drawing the nuisances (colour, noise) of the variants that have them. All 737,280 dSprites
  combinations take 15 MB this way instead of 12 GB of float32 images.

  Attributes:
    factors: int32, shape (N, num_factors): the factor indices of each example.
    labels: int32, shape (N,): the first factor (dSprites: the shape), for probes.
    data_set: the ground_truth.GroundTruthData that renders them.
    name, split: as in ImageSet; source is always "rendered".
  """

  factors: np.ndarray
  labels: np.ndarray
  data_set: ground_truth.GroundTruthData
  name: str
  split: str
  source: str = "rendered"

  @property
  def stored(self) -> np.ndarray:
    return self.factors

  @property
  def image_shape(self) -> tuple[int, ...]:
    return tuple(self.data_set.image_shape)

  @property
  def num_examples(self) -> int:
    return int(self.factors.shape[0])

  def render(self, factors: jax.Array, key: jax.Array) -> jax.Array:
    """(B, H, W, C) float32 images in [0, 1] of (B, num_factors) indices; traceable."""
    return self.data_set.images_from_factors(factors, key)


@dataclasses.dataclass(frozen=True, eq=False)
class SequenceSet:
  """One split of a token-sequence data set, seen by the trainer as images of shape (T, 1, V).

  Every sequence of T tokens out of V is, to the trainer, a one-hot "image" of T rows, one
  column and V channels: batches, sharding, device-resident data, streaming, populations and
  checkpoints then serve sequence models unchanged. The trainer keeps the int32 `tokens` on
  device (a 59th of the one-hot floats for the chorales) and `render` one-hot encodes each
  batch inside the compiled step, as RenderedSet renders its factors.

  Attributes:
    tokens: int32, shape (N, T), values in [0, vocab_size).
    vocab_size: V.
    name, split, source: as in ImageSet (source "music21" for the Bach chorales).
  """

  tokens: np.ndarray
  vocab_size: int
  name: str
  split: str
  source: str = "music21"
  labels: None = None  # No labels: the field the trainer reads of every split.

  def __post_init__(self) -> None:
    where = f"{self.name}/{self.split} (source {self.source!r})"
    tokens = self.tokens
    if not isinstance(tokens, np.ndarray) or tokens.dtype != np.int32 or tokens.ndim != 2:
      raise DataError(
        f"{where}: tokens must be an int32 numpy array of shape (N, T), got "
        f"{getattr(tokens, 'dtype', type(tokens).__name__)} of shape "
        f"{getattr(tokens, 'shape', None)}."
      )
    if tokens.shape[0] == 0:
      raise DataError(f"{where}: no sequences.")
    if tokens.min() < 0 or tokens.max() >= self.vocab_size:
      raise DataError(
        f"{where}: tokens must lie in [0, {self.vocab_size}), found [{tokens.min()}, "
        f"{tokens.max()}]."
      )

  @property
  def stored(self) -> np.ndarray:
    return self.tokens

  def render(self, tokens_BxT: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """(B, T, 1, V) float32 one-hot sequences of (B, T) tokens; traceable."""
    del key  # The signature of RenderedSet.render: a stored batch and the step's key.
    return jax.nn.one_hot(tokens_BxT, self.vocab_size, dtype=jax.numpy.float32)[:, :, None, :]

  @functools.cached_property
  def images(self) -> np.ndarray:
    """The one-hot sequences on the host, (N, T, 1, V) float32: what evaluation and figures read
    (built on first use; the trainer never asks for the training split's)."""
    return np.eye(self.vocab_size, dtype=np.float32)[self.tokens][:, :, None, :]

  @property
  def image_shape(self) -> tuple[int, ...]:
    return (int(self.tokens.shape[1]), 1, int(self.vocab_size))

  @property
  def num_examples(self) -> int:
    return int(self.tokens.shape[0])


# The sequence data sets by name: (voice, bars per window) of the Bach chorales (aejax/chorales.py).
SEQUENCE_SETS = {
  "bach_soprano_2bar": (0, 2),
  "bach_soprano_4bar": (0, 4),
}
# The folder, inside the data dir (else the user's cache), where the parsed chorales are kept.
CHORALES_FOLDER = "bach-chorales"


def chorales_cache_dir(data_dir: str | os.PathLike[str] | None) -> pathlib.Path:
  """<data dir>/bach-chorales when a data dir is set, else ~/.cache/aejax/bach-chorales."""
  root = resolve_data_dir(data_dir)
  if root is None:
    root = pathlib.Path("~/.cache/aejax").expanduser()
  return root / CHORALES_FOLDER


def load_sequences(
  name: str, split: str, *, data_dir: str | os.PathLike[str] | None = None, limit: int | None = None
) -> SequenceSet:
  """A split ("train" or "test") of a SEQUENCE_SETS data set: melody windows of the Bach
  chorales, split by chorale, the training windows in every transposition (chorales.py)."""
  if split not in ("train", "test"):
    raise DataError(f"{name}: unknown split {split!r}; the chorales have 'train' and 'test'.")
  voice, bars = SEQUENCE_SETS[name]
  dataset = chorales.load_dataset(chorales_cache_dir(data_dir), bars=bars, voice=voice)
  tokens = np.asarray(dataset[split], np.int32)[:limit]
  return SequenceSet(tokens=tokens, vocab_size=chorales.VOCAB_SIZE, name=name, split=split)


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> pathlib.Path | None:
  """data_dir if non-empty, else $AEJAX_DATA_DIR if set, else None."""
  if data_dir is not None and str(data_dir):
    return pathlib.Path(data_dir).expanduser()
  env = os.environ.get(DATA_DIR_ENV, "")
  return pathlib.Path(env).expanduser() if env else None


# ---------------------------------------------------------------------------------------------
# tensorflow-datasets.


def _network_available(
  host: str = _NETWORK_PROBE[0], port: int = _NETWORK_PROBE[1], timeout: float = 3.0
) -> bool:
  """Whether a TCP connection to host:port succeeds within about `timeout` seconds."""
  result: list[bool] = []

  def probe() -> None:
    try:
      socket.create_connection((host, port), timeout=timeout).close()
      result.append(True)
    except OSError:
      result.append(False)

  # A thread bounds the whole check: the socket timeout does not cover DNS resolution,
  # which can stall far longer on a machine without network.
  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(timeout + 0.5)
  return bool(result and result[0])


def _tfds_offline_route(name: str, data_dir: str | None) -> str:
  """How to get `name` into the tfds data dir without tfds downloading it, for error messages."""
  where = "" if data_dir is None else f", data_dir={data_dir!r}"
  return (
    "prepare it once from copies of the files tfds would download (same names and bytes; "
    "docs/data.md covers other copies) in a folder FILES: "
    f"tfds.builder({name!r}{where}).download_and_prepare("
    "download_config=tfds.download.DownloadConfig(manual_dir=FILES)); or, for the MNIST "
    f"family, read the original files directly: {datafiles.OFFLINE_ROUTE}"
  )


def _quote(err: BaseException) -> str:
  """`Type: message` of err on one line, shortened."""
  text = " ".join(f"{type(err).__name__}: {err}".split())
  return text if len(text) <= _MAX_QUOTED_ERROR else text[: _MAX_QUOTED_ERROR - 3] + "..."


def _download_errors(tfds) -> tuple[type[BaseException], ...]:
  """What tfds raises when it cannot fetch a data set's files (network, checksums, manual dir)."""
  # OSError covers requests' and urllib's connection errors; AssertionError is tfds's "manual
  # directory missing or empty" for data sets that cannot be downloaded automatically.
  found: list[type[BaseException]] = [OSError, AssertionError, tfds.download.DownloadError]
  try:
    from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError
  except ImportError:  # Not public API: moved or renamed in another tfds version.
    pass
  else:
    found.append(NonMatchingChecksumError)
  return tuple(found)


def load_tfds(
  name: str, split: str, data_dir: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
  """Loads one split of an image data set with tensorflow-datasets.

  Downloads and prepares the data set if needed. If it is not prepared in the tfds data dir
  and there is no network, fails within a few seconds with a DataError naming the offline
  routes instead of letting the download hang; a failed download (unreachable host, wrong
  checksums, empty manual dir) is a DataError naming them too.

  Args:
    name: tfds name, e.g. "mnist", "fashion_mnist", "binarized_mnist", "cifar10".
    split: tfds split, e.g. "train", "test", "validation" (slices like "train[:10%]" work).
    data_dir: tfds data dir; None means tfds's default ($TFDS_DATA_DIR or
      ~/tensorflow_datasets).

  Returns:
    (images, labels): the "image" feature as stored (usually uint8 (N, H, W, C)) and the
    "label" feature, or None when the data set has none.
  """
  # Lazy: importing TensorFlow costs seconds and only this source needs it.
  import tensorflow_datasets as tfds

  where = f"{name}/{split} (tfds)"
  tfds_dir = None if data_dir is None else os.fspath(data_dir)
  try:
    builder = tfds.builder(name, data_dir=tfds_dir)
  except tfds.core.DatasetNotFoundError as err:
    raise DataError(
      f"{where}: tensorflow-datasets has no data set {name!r}; check the name "
      "(e.g. mnist, fashion_mnist, binarized_mnist, cifar10)."
    ) from err
  needs_download = not builder.is_prepared()
  if needs_download:
    if not _network_available():
      raise DataError(
        f"{where}: not prepared in the tfds data dir ({builder.data_dir}) and there is no "
        f"network to download it ({_NETWORK_PROBE[0]}:{_NETWORK_PROBE[1]} unreachable). "
        f"Offline routes: {_tfds_offline_route(name, tfds_dir)}."
      )
  else:
    splits = list(builder.info.splits)
    base = split.split("[")[0]
    if splits and "+" not in split and base not in splits:
      raise DataError(f"{where}: unknown split {split!r}; valid splits are {', '.join(splits)}.")

  try:
    ds = tfds.load(name, split=split, data_dir=tfds_dir)
  except ModuleNotFoundError as err:
    if err.name != "importlib_resources":
      raise
    # tfds imports it to prepare any data set but does not declare it for Python >= 3.9
    # (tensorflow/datasets#11212); aejax declares it, so only other installs get here.
    raise DataError(
      f"{where}: tensorflow-datasets needs the package importlib_resources to prepare data "
      "sets but did not install it; run: pip install importlib_resources"
    ) from err
  except _download_errors(tfds) as err:
    if not needs_download:
      raise
    raise DataError(
      f"{where}: downloading or preparing it into the tfds data dir ({builder.data_dir}) "
      f"failed ({_quote(err)}). Offline routes: {_tfds_offline_route(name, tfds_dir)}."
    ) from err
  features = ds.element_spec
  if not isinstance(features, dict) or "image" not in features:
    keys = sorted(features) if isinstance(features, dict) else type(features).__name__
    raise DataError(f"{where}: no 'image' feature (features: {keys}); not an image data set.")
  keys = ["image"] + (["label"] if "label" in features else [])
  ds = ds.map(lambda ex: {k: ex[k] for k in keys})
  # Batches of fixed size rather than tfds's batch_size=-1: with an unknown split size
  # (e.g. under tfds.testing.mock_data) that asks TensorFlow for a sys.maxsize padded batch,
  # which aborts the process.
  images, labels = [], []
  try:
    for batch in tfds.as_numpy(ds.batch(8192)):
      images.append(batch["image"])
      if "label" in batch:
        labels.append(batch["label"])
  except Exception as err:  # TensorFlow raises several unrelated error types here.
    raise DataError(
      f"{where}: reading the examples failed ({type(err).__name__}: {err}); images of "
      "different sizes are not supported."
    ) from err
  if not images:
    raise DataError(f"{where}: split is empty.")
  return np.concatenate(images), (np.concatenate(labels) if labels else None)


# ---------------------------------------------------------------------------------------------
# Entry point.


def _scale(images: np.ndarray, max_value: float, where: str) -> np.ndarray:
  """Converts images to float32 (N, H, W, C) in [0, 1], adding C=1 to grey (N, H, W)."""
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4:
    raise DataError(f"{where}: images have shape {images.shape}, expected (N, H, W[, C]).")
  if images.dtype.kind == "f":
    # Already scaled by whoever stored them; ImageSet checks the range.
    return images.astype(np.float32)
  if images.dtype.kind not in "biu":
    raise DataError(f"{where}: unsupported image dtype {images.dtype}.")
  hi = int(images.max()) if images.size else 0
  if hi > max_value:
    raise DataError(
      f"{where}: pixel value {hi} exceeds the data set's maximum {max_value:g}; the data is "
      "not what its name says, check the files."
    )
  # np.divide keeps the top value exactly 1.0 (multiplying by 1/255 can overshoot).
  return np.divide(images, np.float32(max_value), dtype=np.float32)


def _local_format(name: str, folder: pathlib.Path) -> str:
  """Which local reader fits folder: by data set name, else by the files it holds."""
  if name in ("mnist", "fashion_mnist"):
    return "idx"
  if name == "binarized_mnist":
    return "amat"
  files = [p.name for p in folder.iterdir()]
  if any("-idx" in f and "-ubyte" in f for f in files):
    return "idx"
  if any(f.endswith((".amat", ".amat.gz")) for f in files):
    return "amat"
  raise DataError(
    f"{name}: {folder} holds neither IDX files (train-images-idx3-ubyte[.gz], ...) nor "
    f".amat files (binarized_mnist_train.amat[.gz], ...); found {datafiles.listing(folder)}. "
    "Use source='idx' or 'amat' with the right files, or source='tfds'."
  )


def load(
  name: str,
  split: str,
  *,
  source: str = "auto",
  data_dir: str | os.PathLike[str] | None = None,
  limit: int | None = None,
) -> ImageSet | SequenceSet:
  """Loads one split. limit (if given) keeps only the first `limit` examples (tests/tiny runs).

  Sources ("auto" picks the first that applies):
    - "digits": scikit-learn's 8x8 digits (name "digits"; 1,437 train / 360 test).
    - "rendered": the ground-truth data sets of GROUND_TRUTH, drawn from their factors
      (`load_rendered`); "auto" picks it for their names.
    - "idx" / "amat": the folder <data dir>/<LOCAL_FOLDERS.get(name, name)>, where the data
      dir is `data_dir` or $AEJAX_DATA_DIR. "auto" uses it when it exists.
    - "tfds": tensorflow-datasets with its own data dir ($TFDS_DATA_DIR or
      ~/tensorflow_datasets); never the aejax data dir, whose folders hold original files.
    - "music21": the token sequences of SEQUENCE_SETS (a SequenceSet), parsed once from
      music21's corpus and cached in <data dir>/bach-chorales; "auto" picks it for their names.

  Args:
    name: data set name, e.g. "mnist", "fashion_mnist", "binarized_mnist", "digits".
    split: "train" or "test"; binarized MNIST also has "validation" (alias "valid").
    source: one of SOURCES.
    data_dir: folder of local data sets; empty or None falls back to $AEJAX_DATA_DIR.
    limit: if given, keep only the first `limit` examples (the full file is still read and
      checked).

  Returns:
    An ImageSet with float32 (N, H, W, C) images in [0, 1] and int32 labels (or None).
  """
  if source not in SOURCES:
    raise DataError(f"{name}: unknown source {source!r}; valid sources are {', '.join(SOURCES)}.")
  if limit is not None and limit < 1:
    raise ValueError(f"limit must be a positive number of examples or None, got {limit}.")
  if name in GROUND_TRUTH or source == "rendered":
    return load_rendered(name, split, source=source, limit=limit)
  if name in SEQUENCE_SETS or source == "music21":
    if name not in SEQUENCE_SETS:
      raise DataError(
        f"{name}: source 'music21' provides only {', '.join(SEQUENCE_SETS)}; got {name!r}."
      )
    return load_sequences(name, split, data_dir=data_dir, limit=limit)
  root = resolve_data_dir(data_dir)
  folder = root / LOCAL_FOLDERS.get(name, name) if root is not None else None

  if source == "auto":
    if name == "digits":
      source = "digits"
    elif folder is not None and folder.is_dir():
      source = _local_format(name, folder)
    else:
      source = "tfds"

  labels: np.ndarray | None
  if source == "digits":
    if name != "digits":
      raise DataError(f"{name}: source 'digits' only provides the data set named 'digits'.")
    raw_images, labels = datafiles.load_digits_split(split)
    max_value = 16.0
  elif source in ("idx", "amat"):
    if folder is None:
      raise DataError(
        f"{name}: source {source!r} reads local files but no data dir is set; pass data_dir "
        f"or {datafiles.OFFLINE_ROUTE}."
      )
    if source == "idx":
      raw_images, labels = datafiles.load_idx_folder(folder, split, name=name)
      max_value = 255.0
    else:
      raw_images, labels = datafiles.load_amat_folder(folder, split, name=name), None
      max_value = 1.0
  else:
    # tfds calls the binarized MNIST validation split "validation"; accept our alias.
    tfds_split = "validation" if split == "valid" else split
    try:
      raw_images, labels = load_tfds(name, tfds_split)
    except DataError as err:
      if folder is None or folder.is_dir():
        raise
      raise DataError(f"{err} (Note: local folder {folder} does not exist.)") from err
    max_value = float(_TFDS_UINT8_MAX.get(name, 255))

  if limit is not None:
    raw_images = raw_images[:limit]
    labels = labels[:limit] if labels is not None else None
  where = f"{name}/{split} ({source})"
  images = _scale(raw_images, max_value, where)
  if labels is not None:
    labels = np.asarray(labels).astype(np.int32)
  return ImageSet(images=images, labels=labels, name=name, split=split, source=source)


# ---------------------------------------------------------------------------
# Ground-truth data sets, rendered from their factors.

RENDERED_SPLITS = ("train", "test")
_RENDER_CHUNK = 1000  # Images rendered per call: one compiled shape, bounded device memory.


def _ground_truth(name: str, source: str) -> ground_truth.GroundTruthData:
  if name not in GROUND_TRUTH:
    raise DataError(
      f"{name}: source 'rendered' draws only the ground-truth data sets "
      f"{', '.join(GROUND_TRUTH)}; use another source for {name}."
    )
  if source not in ("auto", "rendered"):
    raise DataError(
      f"{name}: a ground-truth data set is rendered from its factors (source 'rendered' or "
      f"'auto'), got source {source!r}."
    )
  return GROUND_TRUTH[name]()


def rendered_factors(data_set: ground_truth.GroundTruthData, split: str) -> np.ndarray:
  """(N, num_factors) int32: the factor indices of a rendered split, in its fixed order."""
  if split not in RENDERED_SPLITS:
    raise DataError(
      f"split {split!r}: a rendered data set has the splits {', '.join(RENDERED_SPLITS)}"
    )
  sizes = tuple(data_set.factor_sizes)
  # Row-major like the official npz: the last factor varies fastest.
  every_NxF = np.indices(sizes).reshape(len(sizes), -1).T.astype(np.int32)
  seed = RENDERED_ORDER_SEED if split == "train" else RENDERED_TEST_SEED
  order = np.random.default_rng(seed).permutation(len(every_NxF))
  if split == "test":
    order = order[:RENDERED_TEST_SIZE]
  return every_NxF[order]


def load_rendered(
  name: str, split: str, *, source: str = "rendered", limit: int | None = None
) -> ImageSet:
  """The images of a rendered split (the first `limit` of it), labelled by their first factor.

  "test" is RENDERED_TEST_SIZE combinations; "train" is all of them and needs a `limit` (at
  most RENDERED_MAX_IMAGES): the trainer renders the whole of it step by step instead
  (`load_split`). Nuisances are drawn with fixed keys, so a split is the same at every call.
  """
  data_set = _ground_truth(name, source)
  factors_NxF = rendered_factors(data_set, split)[:limit]
  if len(factors_NxF) > RENDERED_MAX_IMAGES:
    raise DataError(
      f"{name}/{split}: {len(factors_NxF):,} rendered images would not fit in memory "
      f"(at most {RENDERED_MAX_IMAGES:,}); pass a limit. Training renders every batch on "
      "device and needs none."
    )
  root = jax.random.key(RENDERED_TEST_SEED if split == "test" else RENDERED_ORDER_SEED)
  parts = []
  for i, start in enumerate(range(0, len(factors_NxF), _RENDER_CHUNK)):
    chunk = factors_NxF[start : start + _RENDER_CHUNK]
    padded = np.pad(chunk, ((0, _RENDER_CHUNK - len(chunk)), (0, 0)))
    images = data_set.images_from_factors(padded, jax.random.fold_in(root, i))
    parts.append(np.asarray(images, np.float32)[: len(chunk)])
  return ImageSet(
    images=np.concatenate(parts),
    labels=factors_NxF[:, 0].copy(),
    name=name,
    split=split,
    source="rendered",
  )


# ---------------------------------------------------------------------------
# The splits an experiment config names.


def load_split(config, split: str, limit: int = 0) -> ImageSet:
  """One split of the data set named by an experiment config's `data` fields."""
  return load(
    config.data.name,
    split,
    limit=limit or None,
    source=config.data.source,
    data_dir=config.data.data_dir or None,
  )


def load_train_split(config) -> ImageSet | RenderedSet:
  """The training split named by config.data; a ground-truth data set's, as factors to render."""
  name, split, limit = config.data.name, config.data.train_split, config.data.train_limit
  if name not in GROUND_TRUTH:
    return load_split(config, split, limit)
  data_set = _ground_truth(name, config.data.source)
  factors_NxF = rendered_factors(data_set, split)[: limit or None]
  return RenderedSet(
    factors=factors_NxF, labels=factors_NxF[:, 0].copy(), data_set=data_set, name=name,
    split=split,
  )  # fmt: skip


def load_splits(config) -> tuple[ImageSet | RenderedSet, ImageSet]:
  """The training and evaluation splits named by config.data (see load_train_split)."""
  return (
    load_train_split(config),
    load_split(config, config.data.eval_split, config.data.eval_limit),
  )


def check_labels(image_set: ImageSet, num_classes: int) -> None:
  """A conditional model needs labels in [0, num_classes) for every image."""
  where = f"{image_set.name}/{image_set.split}"
  if image_set.labels is None:
    raise errors.ConfigError(
      f"config.model.num_classes={num_classes}: a conditional model needs labels, "
      f"but {where} has none"
    )
  if image_set.labels.min() < 0 or image_set.labels.max() >= num_classes:
    raise errors.ConfigError(
      f"config.model.num_classes={num_classes}: labels of {where} range over "
      f"[{image_set.labels.min()}, {image_set.labels.max()}]"
    )
