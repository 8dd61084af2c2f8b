"""The original files of the MNIST family on disk: IDX and amat readers, checked, and the digits.

aejax reads these without tensorflow-datasets: `aejax.data.load` takes them
from a local folder (AEJAX_DATA_DIR) laid out as mnist/, fashion-mnist/ and
binarized-mnist/, and checks each payload against its published sha256.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pathlib
import zlib

import numpy as np

from aejax.errors import DataError

# The environment variable naming the local data folder.
DATA_DIR_ENV = "AEJAX_DATA_DIR"

OFFLINE_ROUTE = (
  f"set {DATA_DIR_ENV} (or config field data.data_dir) to a folder laid out like "
  "mnist/, fashion-mnist/, binarized-mnist/ holding the original files "
  "({train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] and "
  "binarized_mnist_{train,valid,test}.amat[.gz])"
)

# Local folder names inside a data dir, per data set name (layout of the real data folder).
LOCAL_FOLDERS = {
  "mnist": "mnist",
  "fashion_mnist": "fashion-mnist",
  "binarized_mnist": "binarized-mnist",
}

# sha256 of the uncompressed payloads of the published files, per data set; the gzip wrappers
# differ between mirrors, the payloads must not.
_SHA256 = {
  "mnist": {
    "t10k-images-idx3-ubyte": ("0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "t10k-labels-idx1-ubyte": ("ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    "train-images-idx3-ubyte": ("ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "train-labels-idx1-ubyte": ("65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
  },
  "fashion_mnist": {
    "t10k-images-idx3-ubyte": ("5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "t10k-labels-idx1-ubyte": ("0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    "train-images-idx3-ubyte": ("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train-labels-idx1-ubyte": ("bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
  },
  "binarized_mnist": {
    "binarized_mnist_test.amat": (
      "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c"
    ),
    "binarized_mnist_train.amat": (
      "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d"
    ),
    "binarized_mnist_valid.amat": (
      "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2"
    ),
  },
}

# Split name -> file prefix, per local format.
_IDX_SPLITS = {"train": "train", "test": "t10k"}
_AMAT_SPLITS = {"train": "train", "validation": "valid", "valid": "valid", "test": "test"}
_DIGITS_SPLITS = ("train", "test")

# IDX type byte -> element dtype (big-endian, as the format stores it).
_IDX_DTYPES = {
  0x08: np.dtype("u1"),
  0x09: np.dtype("i1"),
  0x0B: np.dtype(">i2"),
  0x0C: np.dtype(">i4"),
  0x0D: np.dtype(">f4"),
  0x0E: np.dtype(">f8"),
}

_AMAT_PIXELS = 784  # 28 x 28, one image per line.
_DIGITS_TOTAL = 1797
_DIGITS_TEST = 360


def _read_payload(path: pathlib.Path, sha256: str | None = None) -> bytes:
  """Returns the uncompressed bytes of path (gzip by name or magic), checked against sha256."""
  try:
    raw = path.read_bytes()
  except OSError as err:
    raise DataError(f"cannot read {path}: {err}; check the path and its permissions.") from err
  if path.name.endswith(".gz") or raw[:2] == b"\x1f\x8b":
    try:
      raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
      raise DataError(
        f"{path} is not a valid gzip file or is truncated ({type(err).__name__}: {err}); "
        "copy or download the file again."
      ) from err
  if sha256 is not None:
    actual = hashlib.sha256(raw).hexdigest()
    if actual != sha256:
      raise DataError(
        f"{path}: checksum mismatch for a known file: expected sha256 {sha256}, got {actual} "
        "(of the uncompressed payload); the file is damaged or not the published one, "
        "copy or download the original again."
      )
  return raw


def _parse_idx(raw: bytes, path: pathlib.Path) -> np.ndarray:
  """Parses IDX bytes: magic 0x0000 <type> <ndim>, ndim big-endian int32 dims, then data."""
  if len(raw) < 4:
    raise DataError(
      f"{path}: {len(raw)} bytes is too short for an IDX file (4-byte magic missing); "
      "the file is empty or truncated, copy it again."
    )
  magic = int.from_bytes(raw[:4], "big")
  type_code, ndim = raw[2], raw[3]
  if raw[0] != 0 or raw[1] != 0 or type_code not in _IDX_DTYPES or ndim == 0:
    raise DataError(
      f"{path}: bad IDX magic number 0x{magic:08x} (expected 0x0000TTNN with type TT in "
      f"{{{', '.join(f'{t:02x}' for t in _IDX_DTYPES)}}} and NN dimensions, e.g. 0x00000803 "
      "for images, 0x00000801 for labels); this is not an IDX file."
    )
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataError(
      f"{path}: IDX header declares {ndim} dimensions ({header} header bytes) but the file "
      f"has only {len(raw)} bytes; the file is truncated, copy it again."
    )
  dims = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
  dtype = _IDX_DTYPES[type_code]
  expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
  actual = len(raw) - header
  if expected != actual:
    problem = "truncated" if actual < expected else "longer than its header says"
    raise DataError(
      f"{path}: IDX file is {problem}: dimensions {dims} need {expected} data bytes after "
      f"the {header}-byte header, found {actual} bytes; copy the file again."
    )
  return np.frombuffer(raw, dtype, offset=header).reshape(dims)


def read_idx(path: str | os.PathLike[str], *, sha256: str | None = None) -> np.ndarray:
  """Reads one IDX file (.gz or plain) into an array of its declared shape and type.

  Args:
    path: the file.
    sha256: if given, the expected sha256 of the uncompressed payload.

  Returns:
    A read-only array (a view of the file's bytes) with the dimensions from the header,
    e.g. uint8 (N, 28, 28) for MNIST images and uint8 (N,) for labels.
  """
  path = pathlib.Path(path)
  return _parse_idx(_read_payload(path, sha256), path)


def _folder_dataset(folder: pathlib.Path, name: str | None) -> str | None:
  """The data set whose checksums apply to files in folder (by name, else folder name)."""
  if name is not None:
    return name if name in _SHA256 else None
  for key, local in LOCAL_FOLDERS.items():
    if folder.name in (key, local):
      return key
  return None


def listing(folder: pathlib.Path, limit: int = 20) -> str:
  """Short description of what folder holds, for error messages."""
  try:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
  except OSError as err:
    return f"(cannot list: {err})"
  if not names:
    return "nothing (empty folder)"
  more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


def _check_folder(folder: pathlib.Path, what: str) -> None:
  if not folder.is_dir():
    raise DataError(f"{what}: folder {folder} does not exist or is not a folder; {OFFLINE_ROUTE}.")


def _find_file(folder: pathlib.Path, base: str, wanted: list[str], what: str) -> pathlib.Path:
  """Returns folder/base or folder/base.gz; wanted names all the files the caller needs."""
  for candidate in (folder / base, folder / (base + ".gz")):
    if candidate.is_file():
      return candidate
  raise DataError(
    f"{what}: {folder} lacks {base}[.gz]; expected files {', '.join(wanted)} (each plain "
    f"or .gz), found {listing(folder)}. Put the original files there or fix the data dir."
  )


def _check_split(split: str, valid: tuple[str, ...], what: str) -> None:
  if split not in valid:
    raise DataError(f"{what}: unknown split {split!r}; valid splits are {', '.join(valid)}.")


def load_idx_folder(
  folder: str | os.PathLike[str], split: str, *, name: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """Reads one split from a folder of IDX files (MNIST, Fashion-MNIST, KMNIST layout).

  Split "train" reads train-images-idx3-ubyte / train-labels-idx1-ubyte, "test" reads
  t10k-*; each file may be plain or .gz. Files with a known name are checked against the
  published sha256 of the data set `name` (default: inferred from the folder name, e.g.
  "fashion-mnist" -> fashion_mnist).

  Returns:
    (images, labels): uint8 (N, H, W) and integer (N,) arrays (read-only views).
  """
  folder = pathlib.Path(folder)
  what = f"{name or folder.name} (idx)"
  _check_split(split, tuple(_IDX_SPLITS), what)
  _check_folder(folder, what)
  prefix = _IDX_SPLITS[split]
  image_base, label_base = f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
  wanted = [image_base, label_base]
  image_path = _find_file(folder, image_base, wanted, what)
  label_path = _find_file(folder, label_base, wanted, what)
  sums = _SHA256.get(_folder_dataset(folder, name) or "", {})
  images = read_idx(image_path, sha256=sums.get(image_base))
  labels = read_idx(label_path, sha256=sums.get(label_base))
  if images.ndim != 3 or images.dtype != np.uint8:
    raise DataError(
      f"{image_path}: expected uint8 images of shape (N, H, W) (magic 0x00000803), got "
      f"{images.dtype} with shape {images.shape}; is this an images file?"
    )
  if labels.ndim != 1 or labels.dtype.kind not in "iu":
    raise DataError(
      f"{label_path}: expected integer labels of shape (N,) (magic 0x00000801), got "
      f"{labels.dtype} with shape {labels.shape}; is this a labels file?"
    )
  if images.shape[0] != labels.shape[0]:
    raise DataError(
      f"{what}: image/label count mismatch: {image_path.name} has {images.shape[0]} images "
      f"but {label_path.name} has {labels.shape[0]} labels; the two files do not belong "
      "together, copy a matching pair."
    )
  return images, labels


def _amat_error(path: pathlib.Path, line_no: int, problem: str) -> DataError:
  return DataError(
    f"{path}: line {line_no}: {problem}; binarized MNIST .amat files hold one image per line "
    f"as {_AMAT_PIXELS} space-separated values 0 or 1. Copy the original file again."
  )


def _parse_amat_slow(raw: bytes, path: pathlib.Path) -> np.ndarray:
  """Line-by-line parse: tolerates CRLF and odd spacing, and pinpoints the bad line."""
  lines = raw.rstrip().split(b"\n") if raw.strip() else []
  out = np.empty((len(lines), _AMAT_PIXELS), np.uint8)
  for i, line in enumerate(lines):
    tokens = line.split()
    if len(tokens) != _AMAT_PIXELS:
      raise _amat_error(path, i + 1, f"has {len(tokens)} values, expected {_AMAT_PIXELS}")
    joined = b"".join(tokens)
    row = np.frombuffer(joined, np.uint8) - np.uint8(48)
    if len(joined) != _AMAT_PIXELS or (row > 1).any():
      bad = next(t for t in tokens if t not in (b"0", b"1"))
      raise _amat_error(path, i + 1, f"value {bad.decode(errors='replace')!r} is not 0 or 1")
    out[i] = row
  return out


def _parse_amat(raw: bytes, path: pathlib.Path) -> np.ndarray:
  """Parses .amat text into uint8 (N, 784); vectorised for the canonical "d d ... d\\n" layout."""
  width = 2 * _AMAT_PIXELS  # Each value is one digit plus one separator (space or newline).
  arr = np.frombuffer(raw, np.uint8)
  if arr.size and arr.size % width == 0:
    rows = arr.reshape(-1, width)
    seps = rows[:, 1::2]
    # uint8 wrap-around makes any byte other than '0'/'1' come out > 1.
    values = rows[:, 0::2] - np.uint8(48)
    if (
      not (values > 1).any()
      and (seps[:, :-1] == ord(" ")).all()
      and (seps[:, -1] == ord("\n")).all()
    ):
      return values
  # Anything irregular (bad value, short line, other whitespace): slower path that either
  # parses it or names the offending line.
  return _parse_amat_slow(raw, path)


def load_amat_folder(
  folder: str | os.PathLike[str], split: str, *, name: str | None = None
) -> np.ndarray:
  """Reads one split of Larochelle's binarized MNIST from binarized_mnist_{split}.amat[.gz].

  Splits: "train" (50,000 images), "validation" or "valid" (10,000), "test" (10,000).
  Known files are checked against the published sha256 (data set inferred from the folder
  name unless `name` is given).

  Returns:
    uint8 array of 0/1 values, shape (N, 28, 28). There are no labels.
  """
  folder = pathlib.Path(folder)
  what = f"{name or folder.name} (amat)"
  _check_split(split, tuple(_AMAT_SPLITS), what)
  _check_folder(folder, what)
  base = f"binarized_mnist_{_AMAT_SPLITS[split]}.amat"
  wanted = [f"binarized_mnist_{s}.amat" for s in ("train", "valid", "test")]
  path = _find_file(folder, base, wanted, what)
  sums = _SHA256.get(_folder_dataset(folder, name) or "", {})
  values = _parse_amat(_read_payload(path, sums.get(base)), path)
  if values.shape[0] == 0:
    raise DataError(f"{path}: holds no images; copy the original file again.")
  return values.reshape(-1, 28, 28)


def load_digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's embedded 8x8 handwritten digits (no download), split deterministically.

  The 1,797 images are permuted with np.random.default_rng(0); the first 1,437 of that
  order are "train", the last 360 "test".

  Returns:
    (images, labels): uint8 (N, 8, 8) with values 0..16, and int64 (N,) labels 0..9.
  """
  _check_split(split, _DIGITS_SPLITS, "digits")
  # Lazy: scikit-learn takes a while to import and only this source needs it.
  from sklearn.datasets import load_digits

  bunch = load_digits()
  images = np.asarray(bunch.images).astype(np.uint8)
  labels = np.asarray(bunch.target).astype(np.int64)
  if images.shape != (_DIGITS_TOTAL, 8, 8):
    raise DataError(
      f"digits: scikit-learn returned images of shape {images.shape}, expected "
      f"({_DIGITS_TOTAL}, 8, 8); check the scikit-learn installation."
    )
  order = np.random.default_rng(0).permutation(_DIGITS_TOTAL)
  keep = order[: _DIGITS_TOTAL - _DIGITS_TEST] if split == "train" else order[-_DIGITS_TEST:]
  return images[keep], labels[keep]
