"""Image quality per image: PSNR and SSIM (Wang et al. 2004), for pixel values in [0, 1]."""

import jax
import jax.numpy as jnp
import numpy as np


def psnr(x_BxHxWxC: jax.Array, y_BxHxWxC: jax.Array) -> jax.Array:
  """Peak signal-to-noise ratio in dB with peak 1, per image: (B,)."""
  mse = jnp.mean(jnp.square(x_BxHxWxC - y_BxHxWxC), axis=(1, 2, 3))
  return -10.0 * jnp.log10(jnp.maximum(mse, 1e-10))


def _gaussian_window(size: int, sigma: float) -> np.ndarray:
  t = np.arange(size) - (size - 1) / 2
  g = np.exp(-0.5 * (t / sigma) ** 2)
  return (g / g.sum()).astype(np.float32)


def ssim(x_BxHxWxC: jax.Array, y_BxHxWxC: jax.Array) -> jax.Array:
  """Mean structural similarity per image: (B,), in [-1, 1], 1 for identical images.

  The standard constants: an 11x11 Gaussian window with sigma 1.5 (7x7 for
  images smaller than 11 pixels, e.g. 8x8 digits), K1 = 0.01, K2 = 0.03,
  dynamic range 1; local statistics over valid windows, averaged over
  positions and channels.
  """
  x = jnp.asarray(x_BxHxWxC, jnp.float32)
  y = jnp.asarray(y_BxHxWxC, jnp.float32)
  if x.shape != y.shape or x.ndim != 4:
    raise ValueError(
      f"ssim: expected two (B, H, W, C) arrays of one shape, got {x.shape}, {y.shape}"
    )
  height, width, channels = x.shape[1:]
  size = 11 if min(height, width) >= 11 else min(7, height, width)
  g = _gaussian_window(size, 1.5)
  kernel = jnp.asarray(np.outer(g, g))[:, :, None, None] * jnp.ones((1, 1, 1, channels))

  def local_mean(a):
    # Depthwise 'valid' convolution: every channel filtered on its own.
    return jax.lax.conv_general_dilated(
      a,
      kernel,
      (1, 1),
      "VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=channels,
    )

  c1, c2 = 0.01**2, 0.03**2
  mu_x, mu_y = local_mean(x), local_mean(y)
  var_x = local_mean(x * x) - mu_x**2
  var_y = local_mean(y * y) - mu_y**2
  cov = local_mean(x * y) - mu_x * mu_y
  s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
  return jnp.mean(s, axis=(1, 2, 3))


def bicubic_upsample(x_BxhxwxC: jax.Array, height: int, width: int) -> jax.Array:
  """The super-resolution baseline: bicubic interpolation to (height, width), clipped to [0, 1]."""
  shape = (x_BxhxwxC.shape[0], height, width, x_BxhxwxC.shape[3])
  return jnp.clip(jax.image.resize(x_BxhxwxC, shape, method="bicubic"), 0.0, 1.0)
