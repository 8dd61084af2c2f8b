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

SCHEDULES = ("constant", "warmup_cosine", "piecewise", "burda")

# Burda et al. (2016), section 5: 3^i passes over the data at 1e-3 * 10^(-i/7), i = 0..7.
BURDA_STAGES = 8
BURDA_TOTAL_PASSES = sum(3**i for i in range(BURDA_STAGES))  # 3,280.


def burda_schedule(learning_rate: float, steps_per_epoch: int) -> optax.Schedule:
  """learning_rate * 10^(-i/7) for 3^i epochs, i = 0..7, then the last rate for any further steps.

  With learning_rate 1e-3 this is the IWAE paper's schedule; a run shorter
  than 3,280 epochs simply stops inside one of the stages (the short CPU
  variants run the first stages only).
  """
  boundaries, passes = {}, 0
  for i in range(BURDA_STAGES - 1):
    passes += 3**i
    boundaries[passes * steps_per_epoch] = 10.0 ** (-1.0 / 7.0)
  return optax.piecewise_constant_schedule(learning_rate, boundaries)


def make_schedule(
  c: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: int = 1, learning_rate=None
) -> optax.Schedule:
  """The learning rate against step for `c.schedule`.

  constant: c.learning_rate throughout.
  warmup_cosine: linear from 0 over c.warmup_steps, then cosine to 0 at total_steps.
  piecewise: c.learning_rate times the product of c.piecewise_scales[i] for every
    boundary c.piecewise_boundaries[i] (in steps) already passed.
  burda: c.learning_rate * 10^(-i/7) for 3^i epochs of `steps_per_epoch` steps, i = 0..7.
  `learning_rate`, if given, replaces c.learning_rate: a population's members pass their own
  (a traced scalar each), while the schedule's shape stays the config's.
  """
  lr = c.learning_rate if learning_rate is None else learning_rate
  if c.schedule == "constant":
    return optax.constant_schedule(lr)
  if c.schedule == "warmup_cosine":
    # The shape with peak 1, times the rate: optax's schedule branches in Python on its peak
    # value, which is a traced scalar for a population's members.
    shape = optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=1.0,
      warmup_steps=c.warmup_steps,
      decay_steps=max(total_steps, c.warmup_steps + 1),
    )
    return lambda step: lr * shape(step)
  if c.schedule == "piecewise":
    boundaries = tuple(c.piecewise_boundaries)
    scales = tuple(c.piecewise_scales)
    if len(boundaries) != len(scales):
      raise errors.ConfigError(
        "config.optimizer.piecewise_boundaries and piecewise_scales must have the same length, "
        f"got {len(boundaries)} and {len(scales)}"
      )
    return optax.piecewise_constant_schedule(lr, dict(zip(boundaries, scales, strict=True)))
  if c.schedule == "burda":
    return burda_schedule(lr, steps_per_epoch)
  raise errors.ConfigError(
    f"config.optimizer.schedule: unknown schedule {c.schedule!r}; valid: {', '.join(SCHEDULES)}"
  )


def make_optimizer(
  c: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: int = 1, learning_rate=None
) -> optax.GradientTransformation:
  """The optimizer named by c.name with its schedule, after optional global-norm clipping.

  `steps_per_epoch` matters only for schedules counted in epochs ("burda").
  `learning_rate` replaces c.learning_rate (see make_schedule); the optimizer
  state's structure never depends on it.
  """
  if c.name not in OPTIMIZERS:
    raise errors.ConfigError(
      f"config.optimizer.name: unknown optimizer {c.name!r}; valid: {', '.join(OPTIMIZERS)}"
    )
  tx = OPTIMIZERS[c.name](make_schedule(c, total_steps, steps_per_epoch, learning_rate), c)
  if c.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(c.grad_clip_norm), tx)
  return tx
