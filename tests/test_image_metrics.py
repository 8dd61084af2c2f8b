"""Tests for aejax/image_metrics.py: PSNR, SSIM and the bicubic baseline."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aejax import image_metrics

X = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))


def test_psnr_known_value():
  y = X + 0.1
  np.testing.assert_allclose(image_metrics.psnr(X, y), 20.0, rtol=1e-4)


def test_ssim_is_one_for_identical_and_drops_with_noise():
  np.testing.assert_allclose(image_metrics.ssim(X, X), 1.0, rtol=1e-5)
  noisy = jnp.clip(X + 0.3 * jax.random.normal(jax.random.key(1), X.shape), 0, 1)
  very_noisy = jnp.clip(X + 1.0 * jax.random.normal(jax.random.key(1), X.shape), 0, 1)
  s1, s2 = image_metrics.ssim(X, noisy), image_metrics.ssim(X, very_noisy)
  assert s1.shape == (4,) and bool(jnp.all(s1 < 0.99)) and bool(jnp.all(s2 < s1))


def test_ssim_matches_a_reference_formula_on_constant_images():
  # Constant images: variances and covariance vanish, SSIM = (2ab + c1) / (a^2 + b^2 + c1).
  a, b = 0.2, 0.6
  x, y = jnp.full((1, 16, 16, 1), a), jnp.full((1, 16, 16, 1), b)
  c1 = 0.01**2
  np.testing.assert_allclose(
    image_metrics.ssim(x, y), (2 * a * b + c1) / (a * a + b * b + c1), rtol=1e-4
  )


def test_ssim_small_images_and_shape_errors():
  small = jax.random.uniform(jax.random.key(2), (2, 8, 8, 1))
  np.testing.assert_allclose(image_metrics.ssim(small, small), 1.0, rtol=1e-5)
  with pytest.raises(ValueError, match="same shape|one shape"):
    image_metrics.ssim(small, X[:2])


def test_bicubic_upsample_recovers_smooth_images():
  t = jnp.linspace(0, 1, 28)
  smooth = (0.25 + 0.5 * jnp.outer(jnp.sin(3 * t), jnp.cos(2 * t)) ** 2)[None, :, :, None]
  low = smooth.reshape(1, 14, 2, 14, 2, 1).mean(axis=(2, 4))
  up = image_metrics.bicubic_upsample(low, 28, 28)
  assert up.shape == (1, 28, 28, 1)
  assert float(image_metrics.psnr(up, smooth)[0]) > 30.0
