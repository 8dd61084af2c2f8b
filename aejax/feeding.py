"""How the training split reaches the devices: resident, or streamed from the host.

- resident: the split lives on device, split over the mesh's 'data' axis (each
  device holds 1/num_devices of it, as uint8 when the images are 8-bit; each
  process transfers only its own devices' part). The step cuts its batch from
  it: XLA gathers the rows from the shards with one all-reduce of the batch.
- streamed: the split stays on the host. grain reads, in background threads,
  this process's rows of each coming step's batch, and they go to the devices
  as one chunk per dispatch, the next chunk while the current one trains. For
  splits too large for device memory (CelebA at 64x64 is 8 GB as float32).

Both give the same batches. Step s of a member uses the rows
permutation(fold_in(shuffle_key, epoch))[index * B : (index + 1) * B]
(steps.epoch_permutation, epoch = s // steps_per_epoch): a run gives the same
results either way, and the stream's position is a function of the step, so a
run resumed from a checkpoint (after kill -9 too) restarts its stream at the
checkpoint's step; there is no separate iterator state to save or lose.
"""

import logging
import threading

import grain
import jax
import numpy as np
from jax.sharding import Mesh

from aejax import data, parallel, steps

# "auto" keeps the split on device unless its share would take more than this fraction of a
# device's memory: the rest is for parameters, optimizer state and activations.
RESIDENT_MAX_FRACTION = 0.25
# A streamed dispatch runs at most as many steps as fit this many bytes of batches (over all
# devices and members): a chunk sits on device twice (training, and the next one arriving).
STREAM_CHUNK_BYTES = 64 * 2**20
# Host threads that gather the batches' rows (numpy fancy indexing releases the GIL).
READ_THREADS = 2


def device_memory_limit(mesh: Mesh) -> int | None:
  """The smallest memory of this process's devices in the mesh, in bytes; None where the
  backend does not say (CPU: the split is in host memory either way)."""
  limits = []
  for device in mesh.local_devices:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if not stats or "bytes_limit" not in stats:
      return None
    limits.append(int(stats["bytes_limit"]))
  return min(limits) if limits else None


def resident_bytes_per_device(train_set: data.ImageSet | data.RenderedSet, mesh: Mesh) -> int:
  """Device bytes of a resident split: its stored arrays, padded, over the devices."""
  per_example = train_set.stored[0].nbytes + (4 if train_set.labels is not None else 0)
  return parallel.round_up(train_set.num_examples, mesh.size) * per_example // mesh.size


def choose_placement(config, train_set: data.ImageSet | data.RenderedSet, mesh: Mesh) -> str:
  """ "resident" or "streamed": config.data.placement, or for "auto" by the split's size."""
  requested = config.data.placement
  if requested != "auto":
    return requested
  limit = device_memory_limit(mesh)
  if limit is None:
    return "resident"
  share = resident_bytes_per_device(train_set, mesh)
  return "resident" if share <= RESIDENT_MAX_FRACTION * limit else "streamed"


def put_resident(train_set: data.ImageSet | data.RenderedSet, mesh: Mesh):
  """(images, labels) on device, split over 'data'; padded with rows no permutation reaches."""
  images, _ = parallel.pad_to_multiple(train_set.stored, mesh.size)
  labels = None
  if train_set.labels is not None:
    labels, _ = parallel.pad_to_multiple(train_set.labels, mesh.size)
  return parallel.put_sharded(images, mesh), parallel.put_sharded(labels, mesh)


def chunk_steps(
  train_set: data.ImageSet | data.RenderedSet, batch_size: int, num_members: int, limit: int
) -> int:
  """Steps per streamed chunk: at most `limit` (steps_per_dispatch), within STREAM_CHUNK_BYTES."""
  per_step = num_members * batch_size * train_set.stored[0].nbytes
  return max(1, min(limit, STREAM_CHUNK_BYTES // per_step))


class Stream:
  """The training batches of steps start_step.. of every member, read on the host.

  `take(n)` returns the next n steps' batches on device as (images, labels),
  each (chunk, B, ...) or with members (S, chunk, B, ...), sharded along B
  (rows past n are zeros, so every dispatch has one shape and one compiled
  program). Each process reads only the rows its devices hold
  (parallel.local_rows) and jax.make_array_from_process_local_data assembles
  the global arrays. `prefetch(n)` starts the next take's transfer early.
  """

  def __init__(
    self,
    train_set: data.ImageSet | data.RenderedSet,
    mesh: Mesh,
    member_keys: list[dict],
    batch_size: int,
    steps_per_epoch: int,
    start_step: int,
    total_steps: int,
    steps_per_chunk: int,
  ):
    self.stored, self.labels = train_set.stored, train_set.labels
    self.num_train = train_set.num_examples
    self.mesh, self.member_keys, self.batched = mesh, member_keys, len(member_keys) > 1
    self.batch_size, self.steps_per_epoch = batch_size, steps_per_epoch
    self.steps_per_chunk = steps_per_chunk
    self.rows = parallel.local_rows(mesh, batch_size)
    self.permutations: dict[int, np.ndarray] = {}
    self.lock = threading.Lock()
    # The permutation on this process's first device: the same integers as the trainer's
    # (threefry and the sort are exact), computed without the other processes.
    self.member_keys = jax.device_put(member_keys, mesh.local_devices[0])
    self.permute = jax.jit(steps.epoch_permutation, static_argnums=1)
    batches = grain.MapDataset.range(start_step, total_steps).map(self.local_batch)
    read = grain.ReadOptions(num_threads=READ_THREADS, prefetch_buffer_size=2 * steps_per_chunk)
    self.iterator = iter(batches.to_iter_dataset(read))
    self.ready = None  # (num_steps, device arrays) put ahead by prefetch.

  def permutation(self, epoch: int) -> np.ndarray:
    """(S, N): each member's order of the split in `epoch` (the last two epochs kept)."""
    with self.lock:
      if epoch not in self.permutations:
        self.permutations[epoch] = np.stack(
          [np.asarray(self.permute(keys, self.num_train, epoch)) for keys in self.member_keys]
        )
        for old in [e for e in self.permutations if e < epoch - 1]:
          del self.permutations[old]
      return self.permutations[epoch]

  def local_batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of step `step`'s batch, (S, rows, ...) for S members."""
    epoch, index = divmod(step, self.steps_per_epoch)
    start = index * self.batch_size
    ids = self.permutation(epoch)[:, start + self.rows.start : start + self.rows.stop]
    batch = {"images": self.stored[ids]}
    if self.labels is not None:
      batch["labels"] = self.labels[ids]
    return batch

  def _put(self, num_steps: int):
    """The next num_steps batches from the stream, padded to a chunk, on device."""
    if num_steps > self.steps_per_chunk:
      raise ValueError(f"{num_steps} steps do not fit a chunk of {self.steps_per_chunk}")
    batches = [next(self.iterator) for _ in range(num_steps)]
    out = []
    for name in ("images", "labels"):
      if name == "labels" and self.labels is None:
        out.append(None)
        continue
      local = np.stack([b[name] for b in batches], axis=1)  # (S, n, rows, ...)
      pad = self.steps_per_chunk - num_steps
      if pad:
        zeros = np.zeros((local.shape[0], pad, *local.shape[2:]), local.dtype)
        local = np.concatenate([local, zeros], axis=1)
      if not self.batched:
        local = local[0]
      batch_axis = 2 if self.batched else 1
      global_shape = list(local.shape)
      global_shape[batch_axis] = self.batch_size
      sharding = parallel.sharded_along(self.mesh, batch_axis)
      out.append(jax.make_array_from_process_local_data(sharding, local, tuple(global_shape)))
    return tuple(out)

  def prefetch(self, num_steps: int) -> None:
    """Reads and transfers the next num_steps batches now (while the devices compute)."""
    if self.ready is None and num_steps > 0:
      self.ready = (num_steps, self._put(num_steps))

  def take(self, num_steps: int):
    """(images, labels) of the next num_steps steps on device."""
    if self.ready is not None:
      prepared, arrays = self.ready
      self.ready = None
      if prepared != num_steps:
        raise ValueError(f"prefetched {prepared} steps, asked for {num_steps}")
      return arrays
    return self._put(num_steps)

  def unused_perm(self):
    """The perm argument of a streamed multi_step, which reads none."""
    shape = (len(self.member_keys), 1) if self.batched else (1,)
    return parallel.put_replicated(np.zeros(shape, np.int32), self.mesh)


def _size(num_bytes: int) -> str:
  for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if num_bytes >= scale:
      return f"{num_bytes / scale:.1f} {unit}"
  return f"{num_bytes} bytes"


def log_placement(placement: str, train_set, mesh: Mesh, steps_per_chunk: int) -> None:
  share = _size(resident_bytes_per_device(train_set, mesh))
  if placement == "resident":
    logging.info("training split resident: %s per device", share)
  else:
    logging.info(
      "training split streamed from the host (resident it would take %s per device); "
      "%d steps a chunk",
      share,
      steps_per_chunk,
    )
