"""tensorflow-datasets for real, no mocks: tiny generated data sets, and MNIST from its files."""

import collections
import hashlib
import importlib
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow_datasets as tfds

from aejax import data, datafiles

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = "aejax_test_datasets"

# tfds's own MNIST builder with one change: it lives in a package of ours, so tfds checks the
# files in the manual dir against our checksums.tsv instead of its own. The shared files hold
# the original bytes, gzipped anew, so their checksums differ from the download's.
LOCAL_MNIST = '''"""tfds's MNIST builder, checked against the checksums of local copies."""

import tensorflow_datasets as tfds


class LocalMnist(tfds.image_classification.MNIST, skip_registration=True):
  name = "mnist"
'''

# Known facts of the real data (the data folder's README).
MNIST_TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def builders(tmp_path_factory):
  """The test builders imported as a user's own, from a package.

  tfds finds a builder's checksums.tsv through its package, and builders in packages are what
  made download_and_prepare import importlib_resources (tensorflow/datasets#11212).
  """
  root = tmp_path_factory.mktemp("builders")
  package = root / PACKAGE
  package.mkdir()
  (package / "__init__.py").write_text('"""tfds builders for aejax\'s tests."""\n')
  shutil.copy(ROOT / "tests" / "tfds_tiny_builder.py", package / "tiny.py")
  (package / "local_mnist.py").write_text(LOCAL_MNIST)
  sys.path.insert(0, str(root))
  try:
    yield types.SimpleNamespace(
      package=package,
      tiny=importlib.import_module(f"{PACKAGE}.tiny"),
      mnist=importlib.import_module(f"{PACKAGE}.local_mnist"),
    )
  finally:
    sys.path.remove(str(root))


def write_checksums(package: pathlib.Path, files: pathlib.Path) -> None:
  """The package's checksums.tsv: MNIST's download URLs with the size and sha256 of `files`."""
  rows = []
  for path in sorted(files.glob("*-ubyte.gz")):
    raw = path.read_bytes()
    url = tfds.image_classification.MNIST.URL + path.name
    rows.append(f"{url}\t{len(raw)}\t{hashlib.sha256(raw).hexdigest()}\t{path.name}\n")
  assert len(rows) == 4, rows
  (package / "checksums.tsv").write_text("".join(rows))


def pairs(images, labels) -> collections.Counter:
  """The multiset of (image bytes, label): tfds stores examples in an order of its own."""
  images = np.asarray(images)
  return collections.Counter(
    (image.tobytes(), int(label)) for image, label in zip(images, labels, strict=True)
  )


def test_tiny_builder_prepared_read_and_trained_on(builders, tmp_path, monkeypatch):
  tiny = builders.tiny
  # Always an explicit tfds data dir in this process: tfds reads $TFDS_DATA_DIR once, on import,
  # and its default is the home folder.
  tfds_dir = tmp_path / "tensorflow_datasets"
  # The builder downloads nothing: let aejax's network check pass, so aejax itself prepares the
  # data set through tfds.load -> download_and_prepare, as it does for a user with internet.
  monkeypatch.setattr(data, "_network_available", lambda *a, **k: True)
  for split, count in tiny.SPLIT_SIZES.items():
    images, labels = data.load_tfds(tiny.NAME, split, data_dir=tfds_dir)
    assert images.dtype == np.uint8 and images.shape == (count, *tiny.IMAGE_SHAPE)
    assert pairs(images, labels) == pairs(*zip(*tiny.examples(split), strict=True))
  assert (tfds_dir / tiny.NAME / "1.0.0" / "dataset_info.json").is_file()

  # Trained by the CLI (data.load's tfds source, with the data dir from $TFDS_DATA_DIR) in a
  # process that has never seen the builder's code: tfds reads the prepared files by the data
  # set's name, as on a cluster node with a shared data dir.
  workdir = tmp_path / "run"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "aejax.main",
      "--config=experiments/quickstart.py:tiny",
      f"--workdir={workdir}",
      f"--config.data.name={tiny.NAME}",
      "--config.data.source=tfds",
      "--config.eval_batch_size=32",
      "--config.final_figures=False",
    ],
    cwd=ROOT,
    env={**os.environ, "TFDS_DATA_DIR": str(tfds_dir)},
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = json.loads((workdir / "final_metrics.json").read_text())
  assert metrics["step"] > 0 and "eval/neg_elbo" in metrics, metrics
  assert all(math.isfinite(v) for v in metrics.values()), metrics


def test_manual_download_error_names_the_route_that_then_works(builders, tmp_path, monkeypatch):
  tiny = builders.tiny
  tfds_dir, manual_dir = tmp_path / "tensorflow_datasets", tmp_path / "manual"
  manual_dir.mkdir()
  monkeypatch.setattr(data, "_network_available", lambda *a, **k: True)
  # tfds cannot download this one: aejax's error says how to prepare it from files on disk.
  with pytest.raises(data.DataError, match=r"download_and_prepare\(download_config=") as err:
    data.load_tfds(tiny.MANUAL_NAME, "train", data_dir=tfds_dir)
  message = str(err.value)
  assert "manual_dir=" in message and data.DATA_DIR_ENV in message and "\n" not in message
  assert "Manual directory" in message  # tfds's own instructions are quoted.

  # The route, as the error gives it.
  tiny.write_manual_file(manual_dir)
  tfds.builder(tiny.MANUAL_NAME, data_dir=str(tfds_dir)).download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
  )
  for split in tiny.SPLIT_SIZES:
    images, labels = data.load_tfds(tiny.MANUAL_NAME, split, data_dir=tfds_dir)
    assert pairs(images, labels) == pairs(*zip(*tiny.examples(split), strict=True))


def test_tfds_mnist_rejects_files_that_are_not_the_downloads(data_dir, tmp_path):
  # tfds's own builder takes its files from the manual dir (no network here) but checks them
  # against the checksums of the published .gz files, which the recompressed copies fail.
  builder = tfds.builder("mnist", data_dir=str(tmp_path))
  config = tfds.download.DownloadConfig(manual_dir=str(data_dir / "mnist"))
  with pytest.raises(Exception, match="has wrong checksum") as err:
    builder.download_and_prepare(download_config=config)
  assert type(err.value).__name__ == "NonMatchingChecksumError"


@pytest.mark.parametrize(
  "train_examples",
  [10000, pytest.param(None, marks=pytest.mark.slow, id="all")],
)
def test_tfds_mnist_from_the_original_files_equals_the_idx_source(
  builders, data_dir, tmp_path, train_examples
):
  tfds_dir = tmp_path / "tensorflow_datasets"
  # max_examples_per_split keeps the first examples of each split, in the files' order: the
  # default run prepares all 10,000 test images and the first 10,000 training images.
  write_checksums(builders.package, data_dir / "mnist")
  config = tfds.download.DownloadConfig(
    manual_dir=str(data_dir / "mnist"), max_examples_per_split=train_examples
  )
  builders.mnist.LocalMnist(data_dir=str(tfds_dir)).download_and_prepare(download_config=config)
  for split, total in (("test", 10000), ("train", 60000)):
    count = min(total, train_examples or total)
    # Read by the registered (unmodified) MNIST builder from the prepared files.
    images, labels = data.load_tfds("mnist", split, data_dir=tfds_dir)
    idx_images, idx_labels = datafiles.load_idx_folder(data_dir / "mnist", split, name="mnist")
    assert images.shape == (count, 28, 28, 1) and images.dtype == np.uint8
    assert pairs(images[..., 0], labels) == pairs(idx_images[:count], idx_labels[:count])
    if split == "test":
      assert np.bincount(labels).tolist() == MNIST_TEST_LABEL_COUNTS
