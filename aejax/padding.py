"""Populations whose members differ in shape: latent size, objective and k, padded to one program.

A population (aejax/train.py) vmaps S runs over a leading member axis, which
needs every member's arrays to have one shape. Members that differ in
PADDED_FIELDS are therefore trained at the largest latent size D and the
largest k, each padded so that it computes exactly what its separate run
computes:

- Parameters and optimizer state. Member i is initialised at its own latent
  size d_i (with its own init key: the parameters of its separate run) and
  padded with zeros. Where an array's axis grows with the latent size, its
  size is a * d + c: `a` blocks of d entries (the encoder's mean and
  log-variance: a = 2) followed by c entries that do not (a conditional
  decoder's one-hot label after z); each block is padded from d to D. With
  zero weights in and out of the padded dimensions, those dimensions hold
  mean 0, log-variance 0, z = 0 (the noise is padded with zeros too), KL 0
  and contribute nothing to the decoder; `gradient_masks` zero their
  gradients, so the padding stays zero under Adam, AdamW and clipping.
- Noise and samples (`Member`, read by the VAE's losses). JAX's draws are not
  prefix-stable in shape (normal(key, (B, 3)) is not normal(key, (B, 7))[:, :3]),
  so each distinct (k, d) of the population is drawn at its own shape and
  padded, and every member takes its own: the same eps as its separate run.
  Samples past a member's k are masked out of its bounds.
- Checkpoints hold each member unpadded (`unpad`): a member's run folder is
  a plain run's, which `aejax.load`, evaluation and resuming read as such.

Equal up to float rounding, not bitwise: a padded matmul sums over more
(zero) terms and may block its sums differently (tests/test_padding.py
states the tolerance).
"""

import dataclasses
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from aejax import errors

# The config fields whose values change an array's shape. Members of a population may differ in
# them for a model class that declares `population_padding = True` in its own body (a subclass
# that changes the losses must declare it again): the built-in autoencoder and VAE families.
PADDED_FIELDS = ("model.latent_dim", "objective.name", "objective.num_samples")
# The fields that only a variational model's losses read (a plain autoencoder has neither).
OBJECTIVE_FIELDS = ("objective.name", "objective.num_samples")


@flax.struct.dataclass
class Member:
  """A member's place in a padded population, passed to the VAE's losses as `member`.

  `shapes`: the population's distinct (num_samples, latent_dim), static; the
  program draws each at its own shape. `index`: which one is this member's
  (a traced int under vmap); `iwae`: whether its objective is "iwae" (else the
  k-sample ELBO), traced.
  """

  shapes: tuple[tuple[int, int], ...] = flax.struct.field(pytree_node=False)
  index: jax.Array
  iwae: jax.Array


def _get(config: ml_collections.ConfigDict, field: str):
  section, name = field.split(".")
  return config[section][name]


def differing_fields(configs: Sequence[ml_collections.ConfigDict]) -> list[str]:
  """The PADDED_FIELDS whose values differ among the configs."""
  return [f for f in PADDED_FIELDS if len({_get(c, f) for c in configs}) > 1]


def is_padded(configs: Sequence[ml_collections.ConfigDict]) -> bool:
  return bool(differing_fields(configs))


def program_config(configs: Sequence[ml_collections.ConfigDict]) -> ml_collections.ConfigDict:
  """The config the population's program is built from: member 0's at the largest latent size
  and the largest k."""
  config = ml_collections.ConfigDict(configs[0].to_dict())
  config.model.latent_dim = max(c.model.latent_dim for c in configs)
  config.objective.num_samples = max(c.objective.num_samples for c in configs)
  return config


def member_shapes(configs) -> tuple[tuple[int, int], ...]:
  """The distinct (num_samples, latent_dim) of the members, in order of first appearance."""
  return tuple(dict.fromkeys((c.objective.num_samples, c.model.latent_dim) for c in configs))


def members(configs) -> Member:
  """Every member's Member, stacked on a leading axis."""
  shapes = member_shapes(configs)
  index = [shapes.index((c.objective.num_samples, c.model.latent_dim)) for c in configs]
  iwae = [c.objective.name == "iwae" for c in configs]
  return Member(shapes=shapes, index=jnp.asarray(index, jnp.int32), iwae=jnp.asarray(iwae))


def check_paddable(model_class: type, configs: Sequence[ml_collections.ConfigDict]) -> None:
  """ConfigError naming the first field the members may not differ in for this model."""
  fields = differing_fields(configs)
  if not fields:
    return
  name = configs[0].model.name
  if not vars(model_class).get("population_padding", False):
    raise errors.ConfigError(
      f"config.{fields[0]}: the members differ in it, but model {name!r} "
      f"({model_class.__name__}) does not declare population_padding; train its runs "
      "separately, or vmap only seeds, beta and learning rate"
    )
  variational = getattr(model_class, "is_variational", False)
  if not variational and any(f in OBJECTIVE_FIELDS for f in fields):
    field = next(f for f in fields if f in OBJECTIVE_FIELDS)
    raise errors.ConfigError(f"config.{field}: the members differ in it, but {name!r} has no KL")


# ---------------------------------------------------------------------------
# Padding a member's arrays from its latent size d to the population's D.


@dataclasses.dataclass(frozen=True)
class _Axis:
  """An axis of size a * d + c: `a` blocks of d latent entries, then c others."""

  axis: int
  blocks: int
  rest: int

  def positions(self, d: int, D: int) -> np.ndarray:
    """Where the a * d + c entries of latent size d sit on the padded axis (a * D + c)."""
    index = np.arange(self.blocks * d + self.rest)
    block, within = np.divmod(index, d)
    latent = index < self.blocks * d
    return np.where(latent, block * D + within, index + self.blocks * (D - d))


def _latent_axes(small_shape, big_shape, d: int, D: int, where: str) -> list[_Axis]:
  """The axes of an array that grow with the latent size, from its shapes at d and at D."""
  if len(small_shape) != len(big_shape):
    raise errors.ConfigError(
      f"{where}: rank {len(small_shape)} at latent size {d}, {len(big_shape)} at {D}"
    )
  axes = []
  for axis, (s, L) in enumerate(zip(small_shape, big_shape, strict=True)):
    if s == L:
      continue
    blocks, extra = divmod(L - s, D - d)
    rest = s - blocks * d
    if extra or blocks < 1 or rest < 0:
      raise errors.ConfigError(
        f"{where}: axis {axis} has size {s} at latent size {d} and {L} at {D}, not a whole "
        "number of latent blocks; this model cannot be padded to one population"
      )
    axes.append(_Axis(axis, blocks, rest))
  return axes


def _path(path) -> str:
  return jax.tree_util.keystr(path)


def pad(small, big_like, d: int, D: int):
  """`small` (a member's tree at latent size d) with zeros added to the shapes of `big_like`
  (the same tree at D): see the module docstring for where its entries go."""

  def pad_leaf(path, x, like):
    x = jnp.asarray(x)
    for ax in _latent_axes(x.shape, like.shape, d, D, _path(path)):
      shape = list(x.shape)
      shape[ax.axis] = like.shape[ax.axis]
      index = (slice(None),) * ax.axis + (ax.positions(d, D),)
      x = jnp.zeros(shape, x.dtype).at[index].set(x)
    return x

  return jax.tree_util.tree_map_with_path(pad_leaf, small, big_like)


def unpad(big, small_like, d: int, D: int):
  """The entries of latent size d in `big` (at D), in the shapes of `small_like`: undoes `pad`."""

  def unpad_leaf(path, x, like):
    for ax in _latent_axes(like.shape, x.shape, d, D, _path(path)):
      x = jnp.take(x, ax.positions(d, D), axis=ax.axis)
    return x

  return jax.tree_util.tree_map_with_path(unpad_leaf, big, small_like)


def gradient_mask(small_like, big_like, d: int, D: int):
  """1.0 where a member of latent size d has a parameter, 0.0 on its padding (float32 tree)."""
  ones = jax.tree.map(lambda x: jnp.ones(x.shape, jnp.float32), small_like)
  return pad(ones, big_like, d, D)
