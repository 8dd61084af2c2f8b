"""aejax/feeding.py: the training split resident on device (split over the devices) or
streamed from the host; both give the same batches, so the same parameters."""

import copy

import jax
import numpy as np
import pytest
from helpers import tiny_digits_config

import aejax
from aejax import configs, data, errors, feeding, parallel, steps, train


def _params(workdir):
  return jax.device_get(aejax.load(workdir).params)


def _assert_bitwise_equal(a, b) -> None:
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b) and leaves_a
  for x, y in zip(leaves_a, leaves_b, strict=True):
    assert np.array_equal(x, y), "parameters differ"


def test_a_resident_split_is_uint8_and_an_eighth_of_it_on_each_of_8_devices(data_dir):
  mnist = data.load("mnist", "train", data_dir=str(data_dir))
  mesh = parallel.make_mesh()
  images, labels = feeding.put_resident(mnist, mesh)
  assert images.dtype == np.uint8 and images.shape == (60000, 28, 28, 1)
  per_device = parallel.device_bytes([images, labels])
  assert len(per_device) == 8
  # 60,000 / 8 images of 784 bytes and their int32 labels on each device: 5.9 MB, where the
  # replicated float32 design held 188 MB (60,000 x 784 x 4) on every device.
  assert set(per_device.values()) == {7500 * (784 + 4)}
  assert feeding.resident_bytes_per_device(mnist, mesh) == 7500 * (784 + 4)
  replicated_float32 = mnist.images.nbytes + mnist.labels.nbytes
  assert replicated_float32 / per_device[str(jax.devices()[0])] > 31
  # The rows are where the permutation finds them, padding included (none for 60,000 / 8).
  np.testing.assert_array_equal(np.asarray(images[12345]), mnist.stored[12345])


def test_a_split_that_does_not_divide_over_the_devices_is_padded_with_unused_rows():
  digits = data.load("digits", "train")  # 1,437 images: 1,440 rows on 8 devices.
  images, labels = feeding.put_resident(digits, parallel.make_mesh())
  assert images.shape[0] == 1440 and labels.shape == (1440,)
  np.testing.assert_array_equal(np.asarray(images[:1437]), digits.stored)


def _indexed_set(n: int) -> data.ImageSet:
  """n images whose labels are their own indices: a batch's labels say which rows it read."""
  images = np.zeros((n, 4, 4, 1), np.float32)
  images[:, 0, 0, 0] = np.arange(n) % 256 / np.float32(255)
  return data.ImageSet(images, np.arange(n, dtype=np.int32), "indexed", "train", "rendered")


def test_each_process_streams_its_rows_and_an_epoch_reads_every_image_once():
  n, batch_size, steps_per_epoch = 1000, 64, 1000 // 64
  train_set = _indexed_set(n)
  mesh = parallel.make_mesh()
  member_keys = [steps.derived_keys(0), steps.derived_keys(1)]
  stream = feeding.Stream(
    train_set, mesh, member_keys, batch_size, steps_per_epoch, 0, 3 * steps_per_epoch, 4
  )
  # Two processes of a 2-process run hold the two halves of each batch.
  halves = [slice(0, 32), slice(32, 64)]
  for epoch in (0, 1):
    first = epoch * steps_per_epoch
    read = []
    for step in range(first, first + steps_per_epoch):
      parts = []
      for rows in halves:
        stream.rows = rows
        parts.append(stream.local_batch(step)["labels"])  # (members, 32)
      read.append(np.concatenate(parts, axis=1))
    ids = np.concatenate(read, axis=1)  # (members, steps_per_epoch * batch_size)
    for m, keys in enumerate(member_keys):
      # Each image at most once per epoch, in the trainer's own order (steps.epoch_permutation).
      assert len(set(ids[m].tolist())) == steps_per_epoch * batch_size
      want = np.asarray(steps.epoch_permutation(keys, n, epoch))[: steps_per_epoch * batch_size]
      np.testing.assert_array_equal(ids[m], want)
    assert not np.array_equal(ids[0], ids[1])  # Each member its own order.
  # On this one process (all 8 devices) the process reads whole batches.
  assert parallel.local_rows(mesh, batch_size) == slice(0, 64)


def test_a_streamed_chunk_is_split_over_the_devices_along_the_batch():
  train_set = _indexed_set(1000)
  mesh = parallel.make_mesh()
  stream = feeding.Stream(train_set, mesh, [steps.derived_keys(0)], 64, 15, 0, 45, 5)
  stream.prefetch(3)
  images, labels = stream.take(3)
  assert images.shape == (5, 64, 4, 4, 1) and labels.shape == (5, 64)
  assert images.dtype == np.uint8  # 8-bit levels: decoded in the step.
  assert labels.sharding == parallel.sharded_along(mesh, 1)
  # Rows past the 3 asked for are padding; the chunk after continues at step 3.
  assert not np.asarray(labels[3:]).any()
  want = np.asarray(steps.epoch_permutation(steps.derived_keys(0), 1000, 0))
  np.testing.assert_array_equal(np.asarray(labels[:3]).reshape(-1), want[: 3 * 64])
  _, next_labels = stream.take(2)
  np.testing.assert_array_equal(np.asarray(next_labels[:2]).reshape(-1), want[3 * 64 : 5 * 64])
  # One chunk on each device: 5 x 8 rows of 16 bytes and their labels.
  per_device = parallel.device_bytes([images, labels])
  assert set(per_device.values()) == {5 * 8 * (16 + 4)}


def test_a_streamed_run_trains_bitwise_the_parameters_of_a_resident_run(tmp_path):
  c = tiny_digits_config(total_steps=12)
  c.steps_per_dispatch = 5  # Chunks of 5, 5 and 2 steps, across an epoch end (digits: 11 steps).
  c.batch_size = 128
  c.data.placement = "resident"
  train.train_and_evaluate(c, str(tmp_path / "resident"))
  c.data.placement = "streamed"
  train.train_and_evaluate(c, str(tmp_path / "streamed"))
  _assert_bitwise_equal(_params(tmp_path / "streamed"), _params(tmp_path / "resident"))


def test_a_streamed_population_trains_bitwise_the_parameters_of_a_resident_one(tmp_path):
  base = tiny_digits_config(total_steps=6)
  base.steps_per_dispatch = 4
  group = []
  for seed in (0, 1):
    c = copy.deepcopy(base)
    c.seed = seed
    group.append(c)
  for placement in ("resident", "streamed"):
    for c in group:
      c.data.placement = placement
    train.train_population(group, [tmp_path / placement / f"seed{s}" for s in (0, 1)])
  for seed in (0, 1):
    _assert_bitwise_equal(
      _params(tmp_path / "streamed" / f"seed{seed}"), _params(tmp_path / "resident" / f"seed{seed}")
    )
  assert not np.array_equal(
    jax.tree.leaves(_params(tmp_path / "resident" / "seed0"))[0],
    jax.tree.leaves(_params(tmp_path / "resident" / "seed1"))[0],
  )


def test_auto_placement_streams_a_split_that_would_take_over_a_quarter_of_a_device(
  monkeypatch, data_dir
):
  c = configs.default_config()
  mnist = data.load("mnist", "test", data_dir=str(data_dir))
  mesh = parallel.make_mesh()
  share = feeding.resident_bytes_per_device(mnist, mesh)  # 10,000 x 788 bytes / 8.
  assert share == 1250 * 788
  assert feeding.choose_placement(c, mnist, mesh) == "resident"  # CPU: no device limit.
  monkeypatch.setattr(feeding, "device_memory_limit", lambda mesh: 4 * share)
  assert feeding.choose_placement(c, mnist, mesh) == "resident"
  monkeypatch.setattr(feeding, "device_memory_limit", lambda mesh: 4 * share - 1)
  assert feeding.choose_placement(c, mnist, mesh) == "streamed"
  c.data.placement = "resident"  # A config field forces either.
  assert feeding.choose_placement(c, mnist, mesh) == "resident"


def test_an_unknown_placement_is_a_config_error():
  c = tiny_digits_config()
  c.data.placement = "gpu"
  with pytest.raises(errors.ConfigError, match=r"config.data.placement: unknown placement 'gpu'"):
    configs.validate(c, num_devices=8)


def test_a_streamed_chunk_stays_within_its_byte_budget():
  train_set = _indexed_set(1000)  # 16 bytes an image.
  assert feeding.chunk_steps(train_set, 64, 1, 100) == 100
  budget = feeding.STREAM_CHUNK_BYTES
  # CelebA's size at 64x64 (12,288 bytes an image as uint8), 6 members of batch 256: 3 steps.
  big = data.ImageSet(np.zeros((8, 64, 64, 3), np.float32), None, "big", "train", "rendered")
  assert big.stored.dtype == np.uint8
  assert feeding.chunk_steps(big, 256, 6, 100) == budget // (6 * 256 * 64 * 64 * 3) == 3
  assert feeding.chunk_steps(big, 4096, 6, 100) == 1  # Never fewer than one step.
