"""The estimators of a trained model's evaluation: IWAE bounds, active units, KL per dimension.

`make_batch_fn` computes every per-image quantity of one batch in one jitted
program, and `map_batches` runs a jitted function over a split in sharded,
padded batches. aejax/evaluate.py turns them into eval_results.json.
"""

import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from aejax import data, errors, image_metrics, losses, objectives, parallel, progress, tasks

# Samples decoded per scan step: chunk_size x batch_size decodes are live at once (with the
# defaults 8,192 x 784 MNIST logits, 25 MB) whatever the number of samples. Keep the product near
# 8k on a CPU: the logits then stay in its last-level cache (docs/performance.md measures it).
DEFAULT_CHUNK_SIZE = 32
IWAE_KS = (1, 5, 50)  # Reported besides nll_samples: how the bound tightens with k.
ACTIVE_UNIT_THRESHOLD = 1e-2  # Burda et al.: active if Var_x(E_q[z_u | x]) > 0.01.

# log p(x | z) per image, (B,) nats, for images x_BxHxWxC and one latent per image z_BxD.
LogLikelihoodFn = Callable[[jax.Array, jax.Array], jax.Array]


# ---------------------------------------------------------------------------
# Estimators: pure functions of arrays, no trained model needed.


def _log_weights_at(
  key: jax.Array,
  x_BxHxWxC: jax.Array,
  mean_BxD: jax.Array,
  logvar_BxD: jax.Array,
  log_px_given_z_fn: LogLikelihoodFn,
  index_C: jax.Array,
) -> jax.Array:
  """log w of the samples numbered `index_C`: (C, B).

  Sample i is drawn with fold_in(key, i) and nothing else, so sample i is the
  same whichever chunk it falls in: any chunk size sees the same samples.
  """

  def one(i):
    eps_BxD = jax.random.normal(jax.random.fold_in(key, i), mean_BxD.shape, mean_BxD.dtype)
    # The reparameterisation of losses.sample_gaussian: q(z|x) = N(mean, diag(exp(logvar))).
    z_BxD = mean_BxD + jnp.exp(0.5 * logvar_BxD) * eps_BxD
    # log N(z; 0, I) - log q(z|x) from eps itself, (z - mean) / sigma = eps exactly; the
    # 0.5 * log(2 pi) of both densities cancels.
    log_pz_minus_log_qz_B = jnp.sum(
      0.5 * jnp.square(eps_BxD) + 0.5 * logvar_BxD - 0.5 * jnp.square(z_BxD), axis=-1
    )
    return log_px_given_z_fn(x_BxHxWxC, z_BxD) + log_pz_minus_log_qz_B

  return jax.vmap(one)(index_C)


@functools.partial(jax.jit, static_argnames=("log_px_given_z_fn", "num_samples"))
def log_importance_weights(
  key: jax.Array,
  x_BxHxWxC: jax.Array,
  mean_BxD: jax.Array,
  logvar_BxD: jax.Array,
  log_px_given_z_fn: LogLikelihoodFn,
  num_samples: int,
) -> jax.Array:
  """log w_k = log p(x|z_k) + log N(z_k; 0, I) - log q(z_k|x), z_k ~ q(z|x): (K, B), nats.

  q(z|x) = N(mean, diag(exp(logvar))) as everywhere in aejax; every term is
  summed over its dimensions. `log_px_given_z_fn(x_BxHxWxC, z_BxD)` returns
  log p(x|z) per image, (B,). Materialises all K samples: for large K use
  `iwae_bound`, which draws exactly the same samples chunk by chunk.
  """
  return _log_weights_at(
    key, x_BxHxWxC, mean_BxD, logvar_BxD, log_px_given_z_fn, jnp.arange(num_samples)
  )


@functools.partial(jax.jit, static_argnames=("log_px_given_z_fn", "ks", "chunk_size"))
def iwae_bounds(
  key: jax.Array,
  x_BxHxWxC: jax.Array,
  mean_BxD: jax.Array,
  logvar_BxD: jax.Array,
  log_px_given_z_fn: LogLikelihoodFn,
  ks: tuple[int, ...],
  chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> jax.Array:
  """`iwae_bound` for several k at once from one stream of samples: (len(ks), B), nats.

  L_k uses samples 0..k-1, so the bounds are nested (L_5 is made of the first 5
  samples of L_5000) and the smaller k cost nothing extra.
  """
  return iwae_bounds_of(
    lambda index_C: _log_weights_at(
      key, x_BxHxWxC, mean_BxD, logvar_BxD, log_px_given_z_fn, index_C
    ),
    mean_BxD.shape[0],
    ks,
    chunk_size,
  )


def iwae_bounds_of(
  log_weights_at: Callable[[jax.Array], jax.Array],
  batch_size: int,
  ks: tuple[int, ...],
  chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> jax.Array:
  """L_k for every k in `ks` from `log_weights_at(index_C) -> log w (C, B)`: (len(ks), B), nats.

  The samples are drawn `chunk_size` at a time in a lax.scan and folded into a
  running log-sum-exp per k; `log_weights_at` must make sample i a function of
  i alone (fold_in(key, i)), so the chunk size changes nothing but rounding.
  Any model's weights work: the N(0, I)-prior VAE's (`iwae_bounds`) or a
  model's own `log_weight_terms` hook (a VampPrior, a hierarchy).
  """
  if not ks or min(ks) < 1 or chunk_size < 1:
    raise errors.InputError(f"iwae_bound: need k >= 1 and chunk_size >= 1, got {ks}, {chunk_size}")
  chunk = min(chunk_size, max(ks))
  num_chunks = math.ceil(max(ks) / chunk)
  ks_Nx1x1 = jnp.asarray(ks)[:, None, None]

  def step(carry, j):
    max_NxB, sum_NxB = carry
    index_C = j * chunk + jnp.arange(chunk)
    log_w_CxB = log_weights_at(index_C)
    # Samples past each k (and past the last chunk's end) get weight 0.
    log_w_NxCxB = jnp.where(index_C[None, :, None] < ks_Nx1x1, log_w_CxB[None], -jnp.inf)
    new_max_NxB = jnp.maximum(max_NxB, jnp.max(log_w_NxCxB, axis=1))
    # Shift by a finite number even while every weight so far is 0 (log w = -inf): no inf - inf.
    shift_NxB = jnp.where(jnp.isfinite(new_max_NxB), new_max_NxB, 0.0)
    sum_NxB = sum_NxB * jnp.exp(max_NxB - shift_NxB) + jnp.sum(
      jnp.exp(log_w_NxCxB - shift_NxB[:, None]), axis=1
    )
    return (new_max_NxB, sum_NxB), None

  shape = (len(ks), batch_size)
  init = (jnp.full(shape, -jnp.inf, jnp.float32), jnp.zeros(shape, jnp.float32))
  (max_NxB, sum_NxB), _ = jax.lax.scan(step, init, jnp.arange(num_chunks))
  shift_NxB = jnp.where(jnp.isfinite(max_NxB), max_NxB, 0.0)
  return shift_NxB + jnp.log(sum_NxB) - jnp.log(jnp.asarray(ks, jnp.float32))[:, None]


def iwae_bound(
  key: jax.Array,
  x_BxHxWxC: jax.Array,
  mean_BxD: jax.Array,
  logvar_BxD: jax.Array,
  log_px_given_z_fn: LogLikelihoodFn,
  k: int,
  chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> jax.Array:
  """The importance-weighted bound L_k = log (1/k) sum_k w_k per image (Burda et al.): (B,), nats.

  E[L_1] is the ELBO, E[L_k] rises with k to log p(x); -L_5000 is the usual
  NLL estimate. The k samples are drawn and decoded `chunk_size` at a time
  inside one lax.scan under one jit (one compiled program for any k) and
  folded into a running log-sum-exp (running max m and sum s of
  exp(log w - m)), so no more than one chunk of samples exists at once and no
  exp overflows or underflows. Sample i uses fold_in(key, i) and nothing
  else, so the samples do not depend on chunk_size and the result only by
  float rounding (the order of the sums). Jitted: `log_px_given_z_fn` is a
  static argument (a new function object compiles anew).
  """
  return iwae_bounds(key, x_BxHxWxC, mean_BxD, logvar_BxD, log_px_given_z_fn, (k,), chunk_size)[0]


def active_units(
  means_NxD: np.ndarray, threshold: float = ACTIVE_UNIT_THRESHOLD
) -> tuple[int, np.ndarray]:
  """(number of active units, Var_x(E_q[z_u|x]) per unit (D,)): active if the variance > threshold.

  Burda et al.'s activity statistic: a unit whose posterior mean does not move
  with the input carries no information about it.
  """
  means = np.asarray(means_NxD, np.float64)
  if means.ndim != 2 or len(means) < 2:
    raise errors.InputError(f"active_units: expected (N >= 2, D) means, got shape {means.shape}")
  variances_D = means.var(axis=0)
  return int(np.sum(variances_D > threshold)), variances_D


def kl_per_dim(mean_NxD: np.ndarray, logvar_NxD: np.ndarray) -> np.ndarray:
  """Mean over images of KL(q(z_u|x) || N(0, 1)) per latent dimension u: (D,), nats."""
  mean, logvar = np.asarray(mean_NxD, np.float64), np.asarray(logvar_NxD, np.float64)
  # losses.gaussian_kl's formula, in NumPy float64 on the host: no compilation, no float32 sums.
  kl_NxD = 0.5 * (np.exp(logvar) + np.square(mean) - 1.0 - logvar)
  return kl_NxD.mean(axis=0)


def bits_per_dim(nll_nats: float, num_dims: int) -> float:
  """Bits per dimension of 8-bit data from the NLL (nats per image) of its dequantised version.

  The convention: 8-bit levels k in {0..255} become y = (k + u) / 256 with
  u ~ U[0, 1)^D (uniform dequantisation onto [0, 1)); a density p(y) then
  gives the discrete probability P(k) = integral over the bin >= 256^-D
  exp(E_u log p(y)) (Jensen), so bits/dim = (nll_nats / D + log 256) / log 2
  is an upper bound on -log2 P(k) / D (in expectation, since -L_k >= -log p(y)
  on average too).
  """
  return (nll_nats / num_dims + math.log(256.0)) / math.log(2.0)


def dequantise(key: jax.Array, x_BxHxWxC: jax.Array) -> jax.Array:
  """8-bit images k / 255 in [0, 1] -> (k + u) / 256, u ~ U[0, 1): see `bits_per_dim`."""
  levels = jnp.round(x_BxHxWxC * 255.0)
  return (levels + jax.random.uniform(key, x_BxHxWxC.shape, x_BxHxWxC.dtype)) / 256.0


def is_8bit(images: np.ndarray) -> bool:
  """Grey levels k / 255 (within float32 rounding), and more than two of them (not binary data)."""
  levels = images * 255.0
  rounded = np.round(levels)
  return bool(np.all(np.abs(levels - rounded) < 1e-3)) and len(np.unique(rounded)) > 2


def mean_and_stderr(values: np.ndarray) -> tuple[float, float | None]:
  """Mean over images and its standard error std / sqrt(N) (None for one image)."""
  values = np.asarray(values, np.float64)
  stderr = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
  return float(values.mean()), stderr


# ---------------------------------------------------------------------------
# Over a trained model and a split, in sharded batches.


def make_batch_fn(handle, mesh, ks: Sequence[int], chunk_size: int):
  """`(params, images, labels, key, dequantised) -> per-image metrics (B,), codes, reconstructions`.

  The batch is the task's: tasks.make_batch corrupts (denoise), downsamples
  (superres) or binarizes (dynamic binarization) with the key, so a model is
  scored on what it was trained for. `dequantised` (a traced bool, so both
  passes share one compiled program) first dequantises the images
  uniformly: the pass of bits/dim (see `bits_per_dim`).
  """
  model, config = handle.model, handle.config
  likelihood = config.model.likelihood

  def fn(params, images, labels, key, dequantised):
    key_task, key_elbo, key_iwae, key_dequantise = jax.random.split(key, 4)
    images = jnp.where(dequantised, dequantise(key_dequantise, images), images)
    batch = tasks.make_batch(key_task, images, labels, config)
    x_in, target = batch["input"], batch["target"]
    y = batch.get("label") if handle.num_classes else None
    log_scale = objectives.likelihood_log_scale(params, config)

    def decode(z_BxD):
      return model.apply({"params": params}, z_BxD, y, method="decode")

    def log_px_given_z(x_BxHxWxC, z_BxD):
      return -losses.reconstruction_nll(likelihood, decode(z_BxD), x_BxHxWxC, log_scale)

    codes = model.apply({"params": params}, x_in, y, method="encode")
    out = {}
    if handle.is_variational and hasattr(model, "log_weight_terms"):
      # The model's own prior (a VampPrior, a hierarchy): its hook gives log w of one draw.
      def terms_at(i):
        return model.apply(
          {"params": params}, codes, target, y, jax.random.fold_in(key_iwae, i),
          method="log_weight_terms",
        )  # fmt: skip

      def log_weights_at(index_C):
        terms = jax.vmap(terms_at)(index_C)
        return terms["log_px_given_z"] + terms["log_pz_minus_log_qz"]

      bounds = iwae_bounds_of(log_weights_at, target.shape[0], tuple(ks), chunk_size)
      out.update({f"iwae_{k}": bound for k, bound in zip(ks, bounds, strict=True)})
      one = model.apply({"params": params}, codes, target, y, key_elbo, method="log_weight_terms")
      # The KL to a non-Gaussian prior has no closed form: its one-sample Monte Carlo estimate.
      out["recon"], out["kl"] = -one["log_px_given_z"], -one["log_pz_minus_log_qz"]
      out["mean"], out["logvar"] = codes["mean"], codes["logvar"]
      code = codes["mean"]
    elif handle.is_variational:
      mean, logvar = codes["mean"], codes["logvar"]
      # One pass over max(ks) samples gives every L_k (nested: L_5 is the first 5 samples).
      bounds = iwae_bounds(key_iwae, target, mean, logvar, log_px_given_z, tuple(ks), chunk_size)
      out.update({f"iwae_{k}": bound for k, bound in zip(ks, bounds, strict=True)})
      out["recon"] = -log_px_given_z(target, losses.sample_gaussian(key_elbo, mean, logvar))
      out["kl"] = losses.gaussian_kl(mean, logvar).sum(axis=-1)
      out["mean"], out["logvar"] = mean, logvar
      code = mean
    else:
      code = codes["z"]
      out["z"] = code
    # Image metrics of the deterministic reconstruction (posterior mean for a VAE), as
    # TrainedModel.reconstruct and the task metrics use; a plain AE's recon NLL is of it too.
    logits = decode(code)
    if not handle.is_variational:
      out["recon"] = -log_px_given_z(target, code)
    pixel = losses.per_pixel_metrics(logits, target)
    out.update(bce_per_pixel=pixel["bce_per_pixel"], mse=pixel["mse_per_pixel"], psnr=pixel["psnr"])
    out["reconstruction"] = jax.nn.sigmoid(logits)  # For the FID of the reconstructions.
    out["ssim"] = image_metrics.ssim(out["reconstruction"], target)
    return out

  # Outputs replicated: (B,), (B, D) and (B, H, W, C) arrays that every host can then read.
  return jax.jit(fn, out_shardings=parallel.replicated(mesh))


def make_embed_fn(handle, mesh):
  """`(params, images, labels, key) -> codes (B, D)` of the task's input: for the probes."""
  model, config = handle.model, handle.config

  def fn(params, images, labels, key):
    batch = tasks.make_batch(key, images, labels, config)
    y = batch.get("label") if handle.num_classes else None
    codes = model.apply({"params": params}, batch["input"], y, method="encode")
    return codes["mean"] if handle.is_variational else codes["z"]

  return jax.jit(fn, out_shardings=parallel.replicated(mesh))


def map_batches(
  fn, params, image_set: data.ImageSet, batch_size: int, mesh, key, *args, desc: str = "images"
) -> dict:
  """fn over the split in sharded batches of `batch_size` (the last one padded); host arrays.

  Batch j uses fold_in(key, j), so the numbers are a function of the seed and
  the batch size only. Reports its progress (images/s, ETA) as `desc`: a bar
  in a terminal, a log line at least every progress.DEFAULT_INTERVAL seconds
  otherwise, even while one batch (the first, which compiles) runs long.
  """
  sharding = parallel.batch_sharded(mesh)
  count = len(image_set.images)
  outs = []
  bar = progress.Progress(
    count, unit="images", desc=desc, heartbeat=True, enabled=jax.process_index() == 0
  )
  for j, start in enumerate(range(0, count, batch_size)):
    parts = [image_set.images[start : start + batch_size]]
    if image_set.labels is not None:
      parts.append(image_set.labels[start : start + batch_size])
    size = len(parts[0])
    # Zero padding to a whole batch: one compiled shape, the padded rows are dropped below.
    parts = [
      np.concatenate([p, np.zeros((batch_size - size, *p.shape[1:]), p.dtype)]) for p in parts
    ]
    sharded = [
      jax.make_array_from_callback(p.shape, sharding, lambda index, p=p: p[index]) for p in parts
    ]
    labels = sharded[1] if len(sharded) > 1 else None
    out = parallel.to_host(fn(params, sharded[0], labels, jax.random.fold_in(key, j), *args))
    outs.append(jax.tree.map(lambda a, size=size: np.asarray(a)[:size], out))
    bar.update(size)
  bar.close()
  return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)
