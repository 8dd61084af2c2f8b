"""Tests for aejax/optim.py: optimizers and schedules by name."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from aejax import configs, errors, optim


def _opt(**fields):
  c = configs.default_config().optimizer
  for k, v in fields.items():
    c[k] = v
  return c


@pytest.mark.parametrize("name", list(optim.OPTIMIZERS))
def test_every_optimizer_takes_a_step(name):
  tx = optim.make_optimizer(_opt(name=name, grad_clip_norm=1.0), total_steps=10)
  params = {"w": jnp.ones(3)}
  updates, _ = tx.update({"w": jnp.full(3, 5.0)}, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  assert bool(jnp.all(new["w"] < 1.0))


def test_schedules():
  assert float(optim.make_schedule(_opt(learning_rate=0.1), 100)(50)) == pytest.approx(0.1)
  cosine = optim.make_schedule(
    _opt(schedule="warmup_cosine", learning_rate=1.0, warmup_steps=10), 110
  )
  np.testing.assert_allclose(
    [cosine(0), cosine(5), cosine(10), cosine(110)], [0, 0.5, 1, 0], atol=1e-6
  )
  piecewise = optim.make_schedule(
    _opt(
      schedule="piecewise",
      learning_rate=1.0,
      piecewise_boundaries=(10, 20),
      piecewise_scales=(0.1, 0.5),
    ),
    100,
  )
  np.testing.assert_allclose(
    [piecewise(5), piecewise(15), piecewise(25)], [1, 0.1, 0.05], rtol=1e-6
  )


def test_unknown_names_and_mismatched_piecewise_fail_clearly():
  with pytest.raises(errors.ConfigError, match="adam, adamw, rmsprop, sgd"):
    optim.make_optimizer(_opt(name="lamb"), 10)
  with pytest.raises(errors.ConfigError, match="config.optimizer.schedule"):
    optim.make_optimizer(_opt(schedule="exp"), 10)
  with pytest.raises(errors.ConfigError, match="same length"):
    optim.make_schedule(_opt(schedule="piecewise", piecewise_boundaries=(1,)), 10)


@pytest.mark.parametrize("schedule", optim.SCHEDULES)
def test_every_schedule_takes_a_traced_learning_rate(schedule):
  # The trainer passes each run's learning rate as a traced scalar (populations vmap over it),
  # so no schedule may branch on it in Python.
  c = _opt(schedule=schedule, learning_rate=0.5, warmup_steps=10)
  c.piecewise_boundaries, c.piecewise_scales = (20,), (0.1,)

  @jax.jit
  def rate(learning_rate, step):
    return optim.make_schedule(c, 100, 5, learning_rate=learning_rate)(step)

  for step in (0, 5, 15, 60):
    expected = optim.make_schedule(c, 100, 5)(step)
    assert float(rate(jnp.float32(0.5), step)) == pytest.approx(float(expected), rel=1e-6)
