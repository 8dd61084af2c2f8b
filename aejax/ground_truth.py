"""Data sets with known generative factors, the interface the disentanglement metrics use.

A ground-truth data set (dSprites, aejax/dsprites.py) is a deterministic map
from discrete factor indices to images:
- `factor_names`: the factors' names, e.g. ("shape", "scale", "orientation",
  "pos_x", "pos_y");
- `factor_sizes`: how many values each factor takes; factor f's index lies
  in [0, factor_sizes[f]);
- `image_shape`: (H, W, C) of one image;
- `sample_factors(n, key) -> (n, num_factors) int32`: indices drawn uniformly
  and independently per factor with the JAX key `key`;
- `images_from_factors(factors, key=None) -> (n, H, W, C) float32 in [0, 1]`:
  the images of those indices; `key` is needed only by variants whose images
  are random given their factors (a random colour, a noisy background).

The metrics (aejax/disentanglement.py) and the trainer's data both go through
these members, so a metric never knows how the images are made. The interface
follows disentanglement_lib's GroundTruthData with JAX keys in place of
NumPy RandomStates.
"""

from typing import Protocol, runtime_checkable

import jax
import numpy as np

from aejax import errors


@runtime_checkable
class GroundTruthData(Protocol):
  """Images from discrete, independent factors of variation (see the module docstring)."""

  factor_names: tuple[str, ...]
  factor_sizes: tuple[int, ...]
  image_shape: tuple[int, int, int]

  def sample_factors(self, n: int, key: jax.Array) -> jax.Array: ...

  def images_from_factors(self, factors, key: jax.Array | None = None) -> jax.Array: ...


def num_combinations(data: GroundTruthData) -> int:
  """How many distinct factor combinations the data set has (737,280 for dSprites)."""
  return int(np.prod(data.factor_sizes, dtype=np.int64))


def check_factors(data: GroundTruthData, factors) -> np.ndarray:
  """`factors` as an (n, num_factors) int array within the factor sizes, else errors.DataError."""
  array = np.asarray(factors)
  num = len(data.factor_sizes)
  if array.ndim != 2 or array.shape[1] != num:
    raise errors.DataError(
      f"factors: expected an (n, {num}) array of indices for {', '.join(data.factor_names)}, "
      f"got shape {array.shape}"
    )
  if not np.issubdtype(array.dtype, np.integer):
    raise errors.DataError(f"factors: expected integer indices, got dtype {array.dtype}")
  for f, (name, size) in enumerate(zip(data.factor_names, data.factor_sizes, strict=True)):
    column = array[:, f]
    if column.size and (column.min() < 0 or column.max() >= size):
      raise errors.DataError(
        f"factors[:, {f}] ({name}): indices must lie in [0, {size}), "
        f"got [{column.min()}, {column.max()}]"
      )
  return array
