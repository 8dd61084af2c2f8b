"""Turn clean images into (input, target) batches: reconstruction, denoising, super-resolution.

Everything here runs inside jit on device, with the corruption drawn fresh
from the key it is given, so one train step serves every task.
"""

import jax
import jax.numpy as jnp
import ml_collections

from aejax import errors

TASKS = ("reconstruct", "denoise", "superres")
NOISE_TYPES = ("gaussian", "salt_and_pepper")


def add_noise(key: jax.Array, x_BxHxWxC: jax.Array, cfg: ml_collections.ConfigDict) -> jax.Array:
  """Corrupts clean images in [0, 1]; the result is clipped back to [0, 1].

  gaussian: x + noise_mean + noise_std * N(0, 1). The lesson's recipe is
    noise_mean = 0.5, noise_std = 0.5 (a shifted, bright noise).
  salt_and_pepper: a fraction `noise_amount` of pixels set to 0 or 1 (equally likely).
  """
  if cfg.noise_type == "gaussian":
    noise = cfg.noise_mean + cfg.noise_std * jax.random.normal(key, x_BxHxWxC.shape)
    return jnp.clip(x_BxHxWxC + noise, 0.0, 1.0)
  if cfg.noise_type == "salt_and_pepper":
    key_where, key_value = jax.random.split(key)
    hit = jax.random.bernoulli(key_where, cfg.noise_amount, x_BxHxWxC.shape)
    salt = jax.random.bernoulli(key_value, 0.5, x_BxHxWxC.shape).astype(x_BxHxWxC.dtype)
    return jnp.where(hit, salt, x_BxHxWxC)
  raise errors.ConfigError(
    f"config.task.noise_type: unknown noise {cfg.noise_type!r}; valid: {', '.join(NOISE_TYPES)}"
  )


def downsample(x_BxHxWxC: jax.Array, factor: int) -> jax.Array:
  """Average-pools by `factor` (28x28 -> 14x14 for 2, 7x7 for 4): the low-resolution input."""
  batch, height, width, channels = x_BxHxWxC.shape
  if height % factor or width % factor:
    raise errors.ConfigError(
      f"config.task.superres_factor={factor} does not divide the image size {height}x{width}"
    )
  x = x_BxHxWxC.reshape(batch, height // factor, factor, width // factor, factor, channels)
  return x.mean(axis=(2, 4))


def make_batch(
  key: jax.Array,
  images_BxHxWxC: jax.Array,
  labels_B: jax.Array | None,
  cfg: ml_collections.ConfigDict,
) -> dict[str, jax.Array]:
  """Builds the batch dict {input, target[, label]} for `cfg.task.name` from clean images.

  With `cfg.data.dynamic_binarization`, each image is first replaced by a fresh
  Bernoulli sample (pixel value = probability), so the model sees a new
  binarization every time; input and target share it.
  """
  key_binarize, key_noise = jax.random.split(key)
  target = images_BxHxWxC
  if cfg.data.dynamic_binarization:
    target = jax.random.bernoulli(key_binarize, target).astype(target.dtype)

  task = cfg.task.name
  if task == "reconstruct":
    inputs = target
  elif task == "denoise":
    inputs = add_noise(key_noise, target, cfg.task)
  elif task == "superres":
    inputs = downsample(target, cfg.task.superres_factor)
  else:
    raise errors.ConfigError(f"config.task.name: unknown task {task!r}; valid: {', '.join(TASKS)}")

  batch = {"input": inputs, "target": target}
  if labels_B is not None:
    batch["label"] = labels_B
  return batch
