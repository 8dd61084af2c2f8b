"""Tests for aejax/tasks.py: corruption, downsampling, dynamic binarization, batch dicts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aejax import configs, errors, tasks


def _config(**task):
  c = configs.default_config()
  for k, v in task.items():
    c.task[k] = v
  return c


X = jax.random.uniform(jax.random.key(0), (16, 28, 28, 1))


def test_reconstruct_input_is_target():
  batch = tasks.make_batch(jax.random.key(1), X, jnp.arange(16), _config())
  assert batch["input"] is batch["target"]
  np.testing.assert_array_equal(batch["label"], np.arange(16))


def test_lesson_gaussian_noise_is_shifted_clipped_and_fresh_per_key():
  c = _config(name="denoise", noise_type="gaussian", noise_mean=0.5, noise_std=0.5)
  zeros = jnp.zeros((64, 28, 28, 1))
  a = tasks.make_batch(jax.random.key(1), zeros, None, c)
  b = tasks.make_batch(jax.random.key(2), zeros, None, c)
  assert float(a["input"].min()) >= 0.0 and float(a["input"].max()) <= 1.0
  # Clipped N(0.5, 0.5) on a black image has mean E[clip(N(.5,.5),0,1)] = 0.5 by symmetry.
  assert abs(float(a["input"].mean()) - 0.5) < 0.01
  assert not np.array_equal(a["input"], b["input"])
  np.testing.assert_array_equal(a["target"], zeros)


def test_salt_and_pepper_hits_the_configured_fraction():
  c = _config(name="denoise", noise_type="salt_and_pepper", noise_amount=0.2)
  x = jnp.full((64, 28, 28, 1), 0.5)
  noisy = tasks.make_batch(jax.random.key(3), x, None, c)["input"]
  hit = np.asarray(noisy != 0.5)
  assert abs(hit.mean() - 0.2) < 0.01
  assert set(np.unique(np.asarray(noisy)[hit])) == {0.0, 1.0}


@pytest.mark.parametrize("factor,size", [(2, 14), (4, 7)])
def test_superres_input_is_average_pooled(factor, size):
  c = _config(name="superres", superres_factor=factor)
  batch = tasks.make_batch(jax.random.key(4), X, None, c)
  assert batch["input"].shape == (16, size, size, 1) and batch["target"].shape == X.shape
  np.testing.assert_allclose(
    batch["input"][0, 0, 0, 0], X[0, :factor, :factor, 0].mean(), rtol=1e-6
  )


def test_superres_factor_must_divide_the_image():
  with pytest.raises(errors.ConfigError, match="superres_factor=3 does not divide"):
    tasks.make_batch(jax.random.key(0), X, None, _config(name="superres", superres_factor=3))


def test_dynamic_binarization_is_bernoulli_of_the_pixel_value():
  c = _config()
  c.data.dynamic_binarization = True
  x = jnp.full((64, 28, 28, 1), 0.3)
  a = tasks.make_batch(jax.random.key(5), x, None, c)
  b = tasks.make_batch(jax.random.key(6), x, None, c)
  assert set(np.unique(np.asarray(a["target"]))) == {0.0, 1.0}
  assert abs(float(a["target"].mean()) - 0.3) < 0.01
  assert a["input"] is a["target"]
  assert not np.array_equal(a["target"], b["target"])


def test_unknown_task_and_noise_name_the_field():
  with pytest.raises(errors.ConfigError, match="config.task.name"):
    tasks.make_batch(jax.random.key(0), X, None, _config(name="inpaint"))
  with pytest.raises(errors.ConfigError, match="config.task.noise_type"):
    tasks.make_batch(jax.random.key(0), X, None, _config(name="denoise", noise_type="pink"))
