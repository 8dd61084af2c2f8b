"""Optimizers and learning-rate schedules by name, all from optax."""

from collections.abc import Callable

import ml_collections
import optax

from aejax import errors

OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
  "adam": lambda lr, c: optax.adam(lr, b1=c.b1, b2=c.b2, eps=c.eps),
  "adamw": lambda lr, c: optax.adamw(lr, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay),
  # Keras' RMSprop (the lesson's VAE optimizer) has rho=0.9, eps=1e-7.
  "rmsprop": lambda lr, c: optax.rmsprop(lr, decay=c.rmsprop_decay, eps=c.eps),
  "sgd": lambda lr, c: optax.sgd(lr, momentum=c.momentum or None),
}

SCHEDULES = ("constant", "warmup_cosine", "piecewise")


def make_schedule(c: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """The learning rate against step for `c.schedule`.

  constant: c.learning_rate throughout.
  warmup_cosine: linear from 0 over c.warmup_steps, then cosine to 0 at total_steps.
  piecewise: c.learning_rate times the product of c.piecewise_scales[i] for every
    boundary c.piecewise_boundaries[i] (in steps) already passed.
  """
  if c.schedule == "constant":
    return optax.constant_schedule(c.learning_rate)
  if c.schedule == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=c.learning_rate,
      warmup_steps=c.warmup_steps,
      decay_steps=max(total_steps, c.warmup_steps + 1),
    )
  if c.schedule == "piecewise":
    boundaries = tuple(c.piecewise_boundaries)
    scales = tuple(c.piecewise_scales)
    if len(boundaries) != len(scales):
      raise errors.ConfigError(
        "config.optimizer.piecewise_boundaries and piecewise_scales must have the same length, "
        f"got {len(boundaries)} and {len(scales)}"
      )
    return optax.piecewise_constant_schedule(
      c.learning_rate, dict(zip(boundaries, scales, strict=True))
    )
  raise errors.ConfigError(
    f"config.optimizer.schedule: unknown schedule {c.schedule!r}; valid: {', '.join(SCHEDULES)}"
  )


def make_optimizer(c: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """The optimizer named by c.name with its schedule, after optional global-norm clipping."""
  if c.name not in OPTIMIZERS:
    raise errors.ConfigError(
      f"config.optimizer.name: unknown optimizer {c.name!r}; valid: {', '.join(OPTIMIZERS)}"
    )
  tx = OPTIMIZERS[c.name](make_schedule(c, total_steps), c)
  if c.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(c.grad_clip_norm), tx)
  return tx
