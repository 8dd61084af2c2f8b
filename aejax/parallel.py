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
