"""Tiny tensorflow-datasets builders for tests: labelled 16x16 grey images, train and test."""

import numpy as np
import tensorflow_datasets as tfds

NAME = "aejax_tiny_images"
MANUAL_NAME = "aejax_tiny_manual"
MANUAL_FILE = "tiny_images.npz"
IMAGE_SHAPE = (16, 16, 1)
NUM_CLASSES = 4
SPLIT_SIZES = {"train": 64, "test": 32}


def examples(split: str) -> list[tuple[np.ndarray, int]]:
  """The (uint8 image, label) pairs of `split`, in the order the builder yields them."""
  rng = np.random.default_rng(list(SPLIT_SIZES).index(split))
  count = SPLIT_SIZES[split]
  images = rng.integers(0, 256, (count, *IMAGE_SHAPE), dtype=np.uint8)
  labels = rng.integers(0, NUM_CLASSES, count)
  return [(image, int(label)) for image, label in zip(images, labels, strict=True)]


def write_manual_file(folder) -> None:
  """Writes the file AejaxTinyManual prepares from, as a user would download it by hand."""
  arrays = {}
  for split in SPLIT_SIZES:
    images, labels = zip(*examples(split), strict=True)
    arrays[f"{split}_images"], arrays[f"{split}_labels"] = np.stack(images), np.array(labels)
  np.savez(f"{folder}/{MANUAL_FILE}", **arrays)


class AejaxTinyImages(tfds.core.GeneratorBasedBuilder):
  """Random images with random labels: only the plumbing is under test, not the learning."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=IMAGE_SHAPE),
          "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }
      ),
      supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the examples are generated.
    return {split: self._generate_examples(examples(split)) for split in SPLIT_SIZES}

  def _generate_examples(self, pairs):
    for index, (image, label) in enumerate(pairs):
      yield index, {"image": image, "label": label}


class AejaxTinyManual(AejaxTinyImages):
  """The same examples, prepared from a file that tfds cannot download (tfds's manual_dir)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = f"Put {MANUAL_FILE} (tests: write_manual_file) in the manual dir."

  def _split_generators(self, dl_manager):
    with np.load(dl_manager.manual_dir / MANUAL_FILE) as arrays:
      pairs = {
        split: list(zip(arrays[f"{split}_images"], arrays[f"{split}_labels"].tolist(), strict=True))
        for split in SPLIT_SIZES
      }
    return {split: self._generate_examples(pairs[split]) for split in SPLIT_SIZES}
