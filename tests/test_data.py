"""Tests for aejax.data: real MNIST-family files, digits, mocked tfds, and every bad input."""

from __future__ import annotations

import gzip
import hashlib
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from aejax import configs, data, datafiles, dsprites, errors

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _write_idx(
  path: pathlib.Path, array: np.ndarray, *, magic: int | None = None, cut: int = 0
) -> bytes:
  """Writes a uint8 array as IDX (gzipped if path ends in .gz); returns the payload."""
  array = np.asarray(array, np.uint8)
  magic = 0x00000800 | array.ndim if magic is None else magic
  header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
  payload = header + array.tobytes()
  payload = payload[: len(payload) - cut]
  path.write_bytes(gzip.compress(payload) if path.name.endswith(".gz") else payload)
  return payload


def _write_pair(
  folder: pathlib.Path, n_images: int = 3, n_labels: int | None = None, prefix: str = "train"
) -> None:
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(1)
  _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n_images, 28, 28)))
  n_labels = n_images if n_labels is None else n_labels
  _write_idx(folder / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, (n_labels,)))


def _amat_text(rows: np.ndarray, newline: str = "\n", sep: str = " ") -> str:
  return "".join(sep.join(str(v) for v in row) + newline for row in rows)


# ---------------------------------------------------------------------------------------------
# Real data, documented counts.


@pytest.fixture(scope="module")
def mnist(data_dir):
  return {s: data.load("mnist", s, source="idx", data_dir=str(data_dir)) for s in ("train", "test")}


def test_mnist_idx_counts_means_shapes(mnist):
  for split, counts, mean, n in [
    ("train", MNIST_TRAIN_COUNTS, 33.318, 60000),
    ("test", MNIST_TEST_COUNTS, 33.791, 10000),
  ]:
    ds = mnist[split]
    assert (ds.name, ds.split, ds.source) == ("mnist", split, "idx")
    assert ds.images.shape == (n, 28, 28, 1) and ds.images.dtype == np.float32
    assert ds.labels.dtype == np.int32 and ds.labels.shape == (n,)
    assert np.bincount(ds.labels, minlength=10).tolist() == counts
    assert ds.images.min() == 0.0 and ds.images.max() == 1.0
    assert ds.images.mean(dtype=np.float64) * 255 == pytest.approx(mean, abs=5e-4)


def test_fashion_mnist_idx_per_class_counts(data_dir):
  for split, per_class in [("train", 6000), ("test", 1000)]:
    ds = data.load("fashion_mnist", split, data_dir=str(data_dir))
    assert ds.source == "idx" and ds.images.shape == (10 * per_class, 28, 28, 1)
    assert np.bincount(ds.labels).tolist() == [per_class] * 10
    if split == "train":
      assert ds.images.mean(dtype=np.float64) * 255 == pytest.approx(72.940, abs=5e-4)


def test_binarized_mnist_amat_all_splits(data_dir):
  expected = {"train": (50000, 0.1306), "validation": (10000, None), "test": (10000, 0.1325)}
  for split, (n, mean) in expected.items():
    ds = data.load("binarized_mnist", split, data_dir=data_dir)
    assert ds.source == "amat" and ds.labels is None
    assert ds.images.shape == (n, 28, 28, 1) and ds.images.dtype == np.float32
    assert np.array_equal(np.unique(ds.images), [0.0, 1.0])
    if mean is not None:
      assert ds.images.mean(dtype=np.float64) == pytest.approx(mean, abs=5e-5)
  # "valid" is the file name's spelling; it must give the same split.
  valid = datafiles.load_amat_folder(data_dir / "binarized-mnist", "valid")
  assert valid.shape == (10000, 28, 28) and valid.dtype == np.uint8


def test_digits_split_is_fixed_and_complete():
  from sklearn.datasets import load_digits

  train = data.load("digits", "train")
  test = data.load("digits", "test")
  assert (train.source, test.source) == ("digits", "digits")
  assert train.images.shape == (1437, 8, 8, 1) and test.images.shape == (360, 8, 8, 1)
  assert set(np.unique(train.labels)) == set(range(10)) == set(np.unique(test.labels))
  assert train.images.max() == 1.0 and train.images.min() == 0.0
  # Together the two splits are exactly the 1797 digits.
  all_labels = np.concatenate([train.labels, test.labels])
  assert np.array_equal(np.bincount(all_labels), np.bincount(load_digits().target))
  again = data.load("digits", "train")
  assert np.array_equal(train.images, again.images) and np.array_equal(train.labels, again.labels)


def test_tfds_mock_mnist(monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  # mock_data makes no network calls, but the builder reports "not prepared".
  monkeypatch.setattr(data, "_network_available", lambda *a, **k: True)
  with tfds.testing.mock_data(num_examples=12):
    ds = data.load("mnist", "train", source="tfds")
    images, labels = data.load_tfds("mnist", "test")
  assert ds.source == "tfds" and ds.images.shape == (12, 28, 28, 1)
  assert ds.images.dtype == np.float32 and 0.0 <= ds.images.min() <= ds.images.max() <= 1.0
  assert ds.labels.dtype == np.int32 and ds.labels.shape == (12,)
  assert images.dtype == np.uint8 and images.shape == (12, 28, 28, 1) and labels.shape == (12,)


def test_import_does_not_load_tensorflow():
  code = "import sys, aejax.data; print('tensorflow' in sys.modules, 'sklearn' in sys.modules)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------------------------------------
# source="auto", data dir resolution, limit.


def test_auto_uses_local_folder_and_limit(data_dir, mnist, monkeypatch):
  ds = data.load("mnist", "test", data_dir=str(data_dir), limit=100)
  assert ds.source == "idx" and ds.images.shape == (100, 28, 28, 1)
  assert np.array_equal(ds.labels, mnist["test"].labels[:100])
  assert np.array_equal(ds.images, mnist["test"].images[:100])
  # The environment variable is the fallback when no data_dir is given.
  monkeypatch.setenv(data.DATA_DIR_ENV, str(data_dir))
  ds = data.load("binarized_mnist", "test", limit=7)
  assert ds.source == "amat" and ds.images.shape == (7, 28, 28, 1)


def test_auto_detects_idx_in_unknown_folder(tmp_path):
  _write_pair(tmp_path / "kmnist", n_images=4)
  ds = data.load("kmnist", "train", data_dir=tmp_path)
  assert ds.source == "idx" and ds.images.shape == (4, 28, 28, 1) and ds.labels.shape == (4,)


def test_resolve_data_dir(monkeypatch, tmp_path):
  monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
  assert data.resolve_data_dir(None) is None and data.resolve_data_dir("") is None
  monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
  assert data.resolve_data_dir("") == tmp_path
  assert data.resolve_data_dir("/elsewhere") == pathlib.Path("/elsewhere")


def test_amat_irregular_whitespace_parses_like_canonical(tmp_path):
  rows = np.random.default_rng(0).integers(0, 2, (3, 784))
  (tmp_path / "a").mkdir()
  (tmp_path / "b").mkdir()
  (tmp_path / "a" / "binarized_mnist_test.amat").write_text(_amat_text(rows))
  (tmp_path / "b" / "binarized_mnist_test.amat").write_bytes(
    _amat_text(rows, newline=" \r\n").encode()
  )
  a = datafiles.load_amat_folder(tmp_path / "a", "test")
  b = datafiles.load_amat_folder(tmp_path / "b", "test")
  assert np.array_equal(a, rows.reshape(3, 28, 28)) and np.array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# Bad inputs.


def test_missing_folder(tmp_path):
  with pytest.raises(data.DataError, match="does not exist") as err:
    data.load("mnist", "train", source="idx", data_dir=tmp_path)
  assert str(tmp_path / "mnist") in str(err.value) and data.DATA_DIR_ENV in str(err.value)


def test_explicit_local_source_without_data_dir(monkeypatch):
  monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
  with pytest.raises(data.DataError, match="no data dir"):
    data.load("mnist", "train", source="idx")


def test_folder_without_expected_files(tmp_path):
  (tmp_path / "mnist").mkdir()
  (tmp_path / "mnist" / "junk.txt").write_text("x")
  with pytest.raises(data.DataError) as err:
    data.load("mnist", "test", source="idx", data_dir=tmp_path)
  msg = str(err.value)
  assert "t10k-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg and "junk.txt" in msg
  (tmp_path / "binarized-mnist").mkdir()
  with pytest.raises(data.DataError, match="binarized_mnist_valid.amat.*empty folder"):
    data.load("binarized_mnist", "validation", source="amat", data_dir=tmp_path)


def test_auto_folder_with_unrecognised_files(tmp_path):
  (tmp_path / "kmnist").mkdir()
  (tmp_path / "kmnist" / "readme.md").write_text("x")
  with pytest.raises(data.DataError, match="neither IDX files.*readme.md"):
    data.load("kmnist", "train", data_dir=tmp_path)


def test_idx_wrong_magic(tmp_path):
  _write_idx(tmp_path / "x-ubyte", np.zeros((2, 3, 3)), magic=0x12345678)
  with pytest.raises(data.DataError, match="bad IDX magic number 0x12345678"):
    datafiles.read_idx(tmp_path / "x-ubyte")


def test_idx_truncated_names_byte_counts(tmp_path):
  path = tmp_path / "x-ubyte.gz"
  _write_idx(path, np.zeros((2, 3, 3)), cut=5)
  with pytest.raises(data.DataError, match="truncated") as err:
    datafiles.read_idx(path)
  assert "x-ubyte.gz" in str(err.value) and "need 18" in str(err.value)
  assert "found 13" in str(err.value)
  # A header that promises more dimensions than the file holds.
  (tmp_path / "short-ubyte").write_bytes(b"\x00\x00\x08\x03\x00\x00")
  with pytest.raises(data.DataError, match="truncated"):
    datafiles.read_idx(tmp_path / "short-ubyte")


def test_idx_images_labels_count_mismatch(tmp_path):
  _write_pair(tmp_path / "kmnist", n_images=3, n_labels=4)
  with pytest.raises(data.DataError, match="count mismatch.*3 images.*4 labels"):
    data.load("kmnist", "train", source="idx", data_dir=tmp_path)


def test_idx_labels_file_with_image_magic(tmp_path):
  folder = tmp_path / "kmnist"
  _write_pair(folder)
  _write_idx(folder / "train-labels-idx1-ubyte", np.zeros((3, 2, 2)))
  with pytest.raises(data.DataError, match="expected integer labels of shape"):
    datafiles.load_idx_folder(folder, "train")


def test_checksum_mismatch_for_known_file(tmp_path):
  _write_pair(tmp_path / "mnist", n_images=2)
  payload = gzip.decompress((tmp_path / "mnist" / "train-images-idx3-ubyte.gz").read_bytes())
  with pytest.raises(data.DataError, match="checksum mismatch") as err:
    data.load("mnist", "train", data_dir=tmp_path)
  msg = str(err.value)
  assert "train-images-idx3-ubyte" in msg
  assert "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db" in msg
  assert hashlib.sha256(payload).hexdigest() in msg


def test_corrupt_gzip(tmp_path, data_dir):
  folder = tmp_path / "kmnist"
  _write_pair(folder)
  (folder / "train-images-idx3-ubyte.gz").write_bytes(b"definitely not gzip")
  with pytest.raises(data.DataError, match="not a valid gzip file") as err:
    data.load("kmnist", "train", data_dir=tmp_path)
  assert "train-images-idx3-ubyte.gz" in str(err.value)
  # A real gzip cut short (EOFError inside gzip) gets the same treatment.
  real = (data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes()
  (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(real[: len(real) // 2])
  with pytest.raises(data.DataError, match="truncated"):
    datafiles.read_idx(folder / "t10k-labels-idx1-ubyte.gz")


def test_amat_bad_value_and_short_line(tmp_path):
  # A folder without checksums (not binarized-mnist/), so the parser itself is exercised;
  # "auto" recognises it by its .amat files.
  folder = tmp_path / "bmnist"
  folder.mkdir()
  rows = np.zeros((3, 784), int)
  rows[2, 10] = 2
  (folder / "binarized_mnist_train.amat").write_text(_amat_text(rows))
  with pytest.raises(data.DataError, match=r"line 3: value '2' is not 0 or 1") as err:
    data.load("bmnist", "train", data_dir=tmp_path)
  assert "binarized_mnist_train.amat" in str(err.value)
  text = _amat_text(np.zeros((2, 784), int)) + _amat_text(np.zeros((1, 783), int))
  (folder / "binarized_mnist_test.amat.gz").write_bytes(gzip.compress(text.encode()))
  with pytest.raises(data.DataError, match="line 3: has 783 values, expected 784"):
    data.load("bmnist", "test", source="amat", data_dir=tmp_path)


def test_amat_known_file_checksum(tmp_path):
  folder = tmp_path / "binarized-mnist"
  folder.mkdir()
  (folder / "binarized_mnist_test.amat").write_text(_amat_text(np.zeros((1, 784), int)))
  with pytest.raises(data.DataError, match="checksum mismatch.*e6687bfea3f820c1"):
    data.load("binarized_mnist", "test", data_dir=tmp_path)


def test_unknown_source_and_split(data_dir):
  with pytest.raises(data.DataError, match="unknown source 'web'.*auto, tfds, idx, amat, digits"):
    data.load("mnist", "train", source="web", data_dir=data_dir)
  with pytest.raises(data.DataError, match="unknown split 'validation'.*train, test"):
    data.load("mnist", "validation", data_dir=data_dir)
  with pytest.raises(data.DataError, match="unknown split 'dev'.*train, validation, valid, test"):
    data.load("binarized_mnist", "dev", data_dir=data_dir)
  with pytest.raises(data.DataError, match="unknown split 'all'"):
    data.load("digits", "all")


def test_imageset_validation():
  images = np.zeros((2, 4, 4, 1), np.float32)
  data.ImageSet(images, np.zeros(2, np.int32), "x", "train", "idx")
  with pytest.raises(data.DataError, match="float32"):
    data.ImageSet(images.astype(np.float64), None, "x", "train", "idx")
  with pytest.raises(data.DataError, match=r"shape \(N, H, W, C\)"):
    data.ImageSet(images[..., 0], None, "x", "train", "idx")
  with pytest.raises(data.DataError, match=r"\[0, 1\]"):
    data.ImageSet(images + 2, None, "x", "train", "idx")
  with pytest.raises(data.DataError, match="labels have shape"):
    data.ImageSet(images, np.zeros(3, np.int32), "x", "train", "idx")


def test_tfds_offline_fails_fast_without_calling_load(monkeypatch, tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  monkeypatch.setattr(data, "_network_available", lambda *a, **k: False)
  calls = []
  monkeypatch.setattr(tfds, "load", lambda *a, **k: calls.append(a) or pytest.fail("loaded"))
  start = time.monotonic()
  with pytest.raises(data.DataError, match="no network") as err:
    data.load_tfds("mnist", "train", data_dir=tmp_path)
  assert data.DATA_DIR_ENV in str(err.value) and "fashion-mnist/" in str(err.value)
  # Through load(): auto falls back to tfds when the data dir lacks the folder.
  monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: False)
  with pytest.raises(data.DataError, match=f"no network.*{data.DATA_DIR_ENV}.*does not exist"):
    data.load("mnist", "train", data_dir=tmp_path)
  assert time.monotonic() - start < 5 and not calls


def test_network_check_is_bounded(monkeypatch):
  def hang(*args, **kwargs):
    time.sleep(3)
    raise OSError("unreachable")

  monkeypatch.setattr(socket, "create_connection", hang)
  start = time.monotonic()
  assert data._network_available(timeout=0.2) is False
  assert time.monotonic() - start < 1.5


# ---------------------------------------------------------------------------
# Ground-truth data sets rendered from their factors.


def test_rendered_test_split_is_fixed_binary_and_labelled_by_shape():
  first = data.load("dsprites", "test", limit=40)
  again = data.load("dsprites", "test", limit=40)
  assert first.source == "rendered" and first.images.shape == (40, 64, 64, 1)
  np.testing.assert_array_equal(first.images, again.images)
  assert set(np.unique(first.images)) <= {0.0, 1.0}
  factors = data.rendered_factors(dsprites.DSprites(), "test")[:40]
  np.testing.assert_array_equal(first.labels, factors[:, 0])
  np.testing.assert_array_equal(first.images, np.asarray(dsprites.render(factors)))
  # The test split is RENDERED_TEST_SIZE distinct combinations.
  every = data.rendered_factors(dsprites.DSprites(), "test")
  assert len(np.unique(every, axis=0)) == data.RENDERED_TEST_SIZE


def test_rendered_colour_split_draws_its_nuisances_once():
  images = data.load("color_dsprites", "test", limit=8).images
  assert images.shape == (8, 64, 64, 3)
  np.testing.assert_array_equal(images, data.load("color_dsprites", "test", limit=8).images)
  # Each sprite has one colour in [0.5, 1] per channel, different across images.
  colours = [img[img.max(axis=-1) > 0][0] for img in images]
  assert all(np.all((c >= 0.5) & (c <= 1.0)) for c in colours)
  assert len({tuple(np.round(c, 4)) for c in colours}) == 8


def test_rendered_train_split_is_every_combination_and_refuses_to_fill_memory():
  config = configs.default_config()
  config.data.name = "dsprites"
  train_set = data.load_train_split(config)
  assert isinstance(train_set, data.RenderedSet)
  assert train_set.num_examples == 737_280 and train_set.image_shape == (64, 64, 1)
  assert len(np.unique(train_set.factors, axis=0)) == 737_280
  np.testing.assert_array_equal(train_set.labels, train_set.factors[:, 0])
  config.data.train_limit = 100
  np.testing.assert_array_equal(data.load_train_split(config).factors, train_set.factors[:100])
  with pytest.raises(errors.DataError, match="737,280 rendered images.*pass a limit"):
    data.load("dsprites", "train")
  np.testing.assert_array_equal(
    data.load("dsprites", "train", limit=5).images,
    np.asarray(dsprites.render(train_set.factors[:5])),
  )


@pytest.mark.parametrize(
  "name, split, source, message",
  [
    ("dsprites", "test", "idx", "rendered from its factors.*got source 'idx'"),
    ("mnist", "test", "rendered", "draws only the ground-truth data sets"),
    ("dsprites", "valid", "auto", "split 'valid'.*train, test"),
  ],
)
def test_rendered_data_refuses_what_it_cannot_draw(name, split, source, message):
  with pytest.raises(errors.DataError, match=message):
    data.load(name, split, source=source, limit=4)
