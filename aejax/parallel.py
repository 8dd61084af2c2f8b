"""The device mesh, shardings, padding to whole batches, and populations stacked on an axis.

Data parallel the modern way: one 1-D mesh over every device with the axis
'data'; batches are sharded along it and states replicated, and XLA inserts
the all-reduces. A population of S runs (seeds, betas, learning rates) is the
same pytree with a leading member axis.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over `devices` (default: all devices of all hosts) with the axis 'data'."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def put_replicated(x: np.ndarray | None, mesh: Mesh) -> jax.Array | None:
  """A host array on every device of the mesh (None stays None)."""
  if x is None:
    return None
  # make_array_from_callback works the same on one host and on many.
  return jax.make_array_from_callback(x.shape, replicated(mesh), lambda index: x[index])


def sharded_along(mesh: Mesh, axis: int) -> NamedSharding:
  """Axis `axis` split over the mesh's 'data' axis, every other axis whole."""
  return NamedSharding(mesh, P(*([None] * axis), DATA_AXIS))


def put_sharded(x: np.ndarray | None, mesh: Mesh, axis: int = 0) -> jax.Array | None:
  """A host array split along `axis` over the devices of the mesh (None stays None).

  Each process transfers only the slices of its own devices; x.shape[axis] must be a
  multiple of the number of devices (pad_to_multiple)."""
  if x is None:
    return None
  if x.shape[axis] % mesh.size:
    raise ValueError(
      f"put_sharded: axis {axis} of shape {x.shape} does not split over {mesh.size} devices"
    )
  return jax.make_array_from_callback(x.shape, sharded_along(mesh, axis), lambda index: x[index])


def local_rows(mesh: Mesh, global_rows: int) -> slice:
  """The rows of a batch of `global_rows` split over 'data' that this process's devices hold.

  Every process holds one contiguous block (the mesh lists each process's devices together),
  which is what jax.make_array_from_process_local_data expects of the rows it is given."""
  index_map = batch_sharded(mesh).addressable_devices_indices_map((global_rows,))
  starts = sorted(index[0].indices(global_rows)[0] for index in index_map.values())
  stops = sorted(index[0].indices(global_rows)[1] for index in index_map.values())
  block = slice(starts[0], stops[-1])
  if stops[-1] - starts[0] != global_rows // mesh.size * len(index_map):
    raise ValueError(f"this process's devices hold no contiguous block of {global_rows} rows")
  return block


def device_bytes(arrays) -> dict[str, int]:
  """{device: bytes} of the shards of `arrays` on each of this process's devices."""
  totals: dict[str, int] = {}
  for array in jax.tree.leaves(arrays):
    for shard in array.addressable_shards:
      totals[str(shard.device)] = totals.get(str(shard.device), 0) + shard.data.nbytes
  return totals


def to_host(tree):
  """A pytree of arrays as numpy arrays on this host, whole: a batch sharded over the devices
  of several processes is gathered from all of them (a collective: every process calls it)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def round_up(n: int, multiple: int) -> int:
  return multiple * -(-n // multiple)


def pad_to_multiple(
  x: np.ndarray, multiple: int, fill: float | int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """`x` padded along axis 0 to a multiple of `multiple` with `fill`, and the float32 mask.

  The one way aejax makes a split a whole number of equal batches: jitted
  functions then see one shape, and the mask (1 for real rows, 0 for padding)
  keeps the padding out of every sum.
  """
  n = len(x)
  pad = round_up(n, multiple) - n
  padded = np.concatenate([x, np.full((pad, *x.shape[1:]), fill, x.dtype)]) if pad else x
  mask = np.concatenate([np.ones((n,), np.float32), np.zeros((pad,), np.float32)])
  return padded, mask


# One compiled program for a whole pytree (with a traced index) instead of one per leaf shape.
@jax.jit
def _take(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


@jax.jit
def _stack(members):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *members)


def member(tree, i: int):
  """Member i of a pytree stacked on a leading axis."""
  return _take(tree, i)


def stack(members: Sequence):
  """Stacks equally shaped pytrees on a new leading axis."""
  return _stack(list(members))
