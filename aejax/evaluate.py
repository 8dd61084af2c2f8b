"""Evaluation of a trained workdir: IWAE-bound NLL, ELBO, latents, probes and FID."""

import functools
import json
import logging
import math
import pathlib
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import aejax
from aejax import data, errors, image_metrics, losses, tasks, train
from aejax import fid as fid_lib  # `fid` is evaluate()'s switch.

RESULTS_JSON = "eval_results.json"
RESULTS_MD = "eval_results.md"

DEFAULT_NLL_SAMPLES = 5000  # Burda et al. (2016) report -L_5000 as the test NLL.
# Samples decoded per scan step: chunk_size x batch_size decodes are live at once (with the
# defaults 8,192 x 784 MNIST logits, 25 MB) whatever the number of samples. Keep the product near
# 8k on a CPU: the logits then stay in its last-level cache. 32k rows (chunks of 128) made the
# 5000-sample NLL 1.6x slower on a 2-core CPU with 32 MB of L3 (docs/performance.md).
DEFAULT_CHUNK_SIZE = 32
DEFAULT_BATCH_SIZE = 256  # Images per jitted call, rounded up to a multiple of the devices.
IWAE_KS = (1, 5, 50)  # Reported besides nll_samples: how the bound tightens with k.
ACTIVE_UNIT_THRESHOLD = 1e-2  # Burda et al.: active if Var_x(E_q[z_u | x]) > 0.01.
KNN_NEIGHBOURS = 5

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
  if not ks or min(ks) < 1 or chunk_size < 1:
    raise errors.InputError(f"iwae_bound: need k >= 1 and chunk_size >= 1, got {ks}, {chunk_size}")
  chunk = min(chunk_size, max(ks))
  num_chunks = math.ceil(max(ks) / chunk)
  ks_Nx1x1 = jnp.asarray(ks)[:, None, None]

  def step(carry, j):
    max_NxB, sum_NxB = carry
    index_C = j * chunk + jnp.arange(chunk)
    log_w_CxB = _log_weights_at(key, x_BxHxWxC, mean_BxD, logvar_BxD, log_px_given_z_fn, index_C)
    # Samples past each k (and past the last chunk's end) get weight 0.
    log_w_NxCxB = jnp.where(index_C[None, :, None] < ks_Nx1x1, log_w_CxB[None], -jnp.inf)
    new_max_NxB = jnp.maximum(max_NxB, jnp.max(log_w_NxCxB, axis=1))
    # Shift by a finite number even while every weight so far is 0 (log w = -inf): no inf - inf.
    shift_NxB = jnp.where(jnp.isfinite(new_max_NxB), new_max_NxB, 0.0)
    sum_NxB = sum_NxB * jnp.exp(max_NxB - shift_NxB) + jnp.sum(
      jnp.exp(log_w_NxCxB - shift_NxB[:, None]), axis=1
    )
    return (new_max_NxB, sum_NxB), None

  shape = (len(ks), mean_BxD.shape[0])
  init = (jnp.full(shape, -jnp.inf, mean_BxD.dtype), jnp.zeros(shape, mean_BxD.dtype))
  (max_NxB, sum_NxB), _ = jax.lax.scan(step, init, jnp.arange(num_chunks))
  shift_NxB = jnp.where(jnp.isfinite(max_NxB), max_NxB, 0.0)
  return shift_NxB + jnp.log(sum_NxB) - jnp.log(jnp.asarray(ks, mean_BxD.dtype))[:, None]


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


def knn_accuracy(
  train_codes: np.ndarray,
  train_labels: np.ndarray,
  test_codes: np.ndarray,
  test_labels: np.ndarray,
  k: int = KNN_NEIGHBOURS,
) -> float:
  """Test accuracy of a k-nearest-neighbour classifier (Euclidean) on standardised codes."""
  # Imported on use: scikit-learn takes seconds to import and only the probes need it.
  from sklearn.neighbors import KNeighborsClassifier
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler

  # Standardised like the linear probe, so an AE's arbitrary code scale per unit does not decide.
  knn = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=k))
  knn.fit(np.asarray(train_codes, np.float64), np.asarray(train_labels))
  return float(knn.score(np.asarray(test_codes, np.float64), np.asarray(test_labels)))


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


def _is_8bit(images: np.ndarray) -> bool:
  """Grey levels k / 255 (within float32 rounding), and more than two of them (not binary data)."""
  levels = images * 255.0
  rounded = np.round(levels)
  return bool(np.all(np.abs(levels - rounded) < 1e-3)) and len(np.unique(rounded)) > 2


def _mean_and_stderr(values: np.ndarray) -> tuple[float, float | None]:
  """Mean over images and its standard error std / sqrt(N) (None for one image)."""
  values = np.asarray(values, np.float64)
  stderr = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
  return float(values.mean()), stderr


# ---------------------------------------------------------------------------
# A trained workdir.


def _make_batch_fn(handle, mesh, ks: Sequence[int], chunk_size: int):
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
    log_scale = train.likelihood_log_scale(params, config)

    def decode(z_BxD):
      return model.apply({"params": params}, z_BxD, y, method="decode")

    def log_px_given_z(x_BxHxWxC, z_BxD):
      return -losses.reconstruction_nll(likelihood, decode(z_BxD), x_BxHxWxC, log_scale)

    codes = model.apply({"params": params}, x_in, y, method="encode")
    out = {}
    if handle.is_variational:
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
  return jax.jit(fn, out_shardings=train.replicated(mesh))


def _make_embed_fn(handle, mesh):
  """`(params, images, labels, key) -> codes (B, D)` of the task's input: for the probes."""
  model, config = handle.model, handle.config

  def fn(params, images, labels, key):
    batch = tasks.make_batch(key, images, labels, config)
    y = batch.get("label") if handle.num_classes else None
    codes = model.apply({"params": params}, batch["input"], y, method="encode")
    return codes["mean"] if handle.is_variational else codes["z"]

  return jax.jit(fn, out_shardings=train.replicated(mesh))


def _map_batches(fn, params, image_set: data.ImageSet, batch_size: int, mesh, key, *args) -> dict:
  """fn over the split in sharded batches of `batch_size` (the last one padded); host arrays.

  Batch j uses fold_in(key, j), so the numbers are a function of the seed and
  the batch size only.
  """
  sharding = train.batch_sharded(mesh)
  count = len(image_set.images)
  outs = []
  last_log = time.perf_counter()
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
    out = jax.device_get(fn(params, sharded[0], labels, jax.random.fold_in(key, j), *args))
    outs.append(jax.tree.map(lambda a, size=size: np.asarray(a)[:size], out))
    if time.perf_counter() - last_log > 30:
      logging.info("evaluated %d / %d images", start + size, count)
      last_log = time.perf_counter()
  return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)


def _peak_rss_mib() -> float | None:
  try:
    import resource  # Unix only.
  except ImportError:
    return None
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  # Linux reports KiB, macOS bytes.
  return peak / (2**20 if sys.platform == "darwin" else 2**10)


def _check_positive(name: str, value, allow_zero: bool = False) -> None:
  ok = isinstance(value, int | np.integer) and (value >= 0 if allow_zero else value >= 1)
  if not ok:
    raise errors.InputError(
      f"{name}: expected an integer {'>= 0' if allow_zero else '>= 1'}, got {value!r}"
    )


def _fid_results(
  handle,
  eval_set: data.ImageSet,
  reconstructions: np.ndarray,
  extractor,
  cache_dir,
  classifier_steps: int | None,
  seed: int,
  load_kwargs: dict,
) -> tuple[dict, list[str]]:
  """`fid` (VAEs: prior samples), `fid_reconstructions` and `fid_features`; or a note why not."""
  name = handle.config.data.name
  if len(eval_set.images) < 2:
    return {}, ["fid omitted: it needs at least 2 evaluation images."]
  if extractor is None:
    if eval_set.labels is None:
      return {}, [
        f"fid omitted: {name} has no labels to train the default aejax classifier on; pass "
        "fid_extractor (see aejax.fid) to use a feature network of your own."
      ]
    # Classifier seed 0 whatever the evaluation seed: every evaluation of a data set shares one
    # feature network, so their FIDs compare.
    extractor = fid_lib.classifier_extractor(
      name, cache_dir=cache_dir, steps=classifier_steps, **load_kwargs
    )
  reference = fid_lib.feature_statistics(extractor(eval_set.images))
  features = {"name": extractor.name}
  accuracy = getattr(extractor, "test_accuracy", None)
  if accuracy is not None:
    features["test_accuracy"] = accuracy
  features["feature_dim"] = int(reference[0].shape[0])
  out = {}
  if handle.is_variational:
    # N draws z ~ N(0, I) with the evaluation seed, decoded to the decoder's mean sigmoid(logits)
    # (not Bernoulli samples); a conditional model gets the evaluation images' labels, so the
    # classes are as frequent as in the reference.
    labels = eval_set.labels if handle.num_classes else None
    samples = handle.generate(len(eval_set.images), seed=seed, labels=labels)
    out["fid"] = fid_lib.frechet_distance(
      *fid_lib.feature_statistics(extractor(samples)), *reference
    )
  out["fid_reconstructions"] = fid_lib.frechet_distance(
    *fid_lib.feature_statistics(extractor(reconstructions)), *reference
  )
  out["fid_features"] = features
  return out, []


def evaluate(
  workdir: str | pathlib.Path,
  *,
  split: str = "test",
  nll_samples: int = DEFAULT_NLL_SAMPLES,
  seed: int = 0,
  chunk_size: int = DEFAULT_CHUNK_SIZE,
  batch_size: int = DEFAULT_BATCH_SIZE,
  probe_train_size: int = 10000,
  limit: int | None = None,
  fid: bool = True,
  fid_extractor: fid_lib.FeatureExtractor | None = None,
  fid_cache_dir: str | pathlib.Path | None = None,
  fid_classifier_steps: int | None = None,
) -> dict:
  """Evaluates the newest checkpoint of `workdir` on `split`; writes eval_results.{json,md} there.

  Every figure is in nats per image (summed over pixels, mean over images)
  unless named per pixel; *_stderr is the standard error of the mean over
  images (std / sqrt(N): test-set sampling and Monte Carlo noise together).

  VAEs: `elbo` = -(recon + kl) with a one-sample reconstruction term and the
  analytic KL; `elbo_mc` the fully Monte Carlo one-sample bound L_1;
  `iwae_bound_k[k]` the mean L_k for k in 1, 5, 50 and nll_samples; `nll` =
  -L_k at k = nll_samples, an upper bound on -log p(x) in expectation;
  `active_units`, `kl_per_dim`. Gaussian decoders on 8-bit data also get
  `bits_per_dim`, from a second IWAE pass on uniformly dequantised images
  y = (k + u) / 256: (nll(y) / D + log 256) / log 2 (see `bits_per_dim`).
  All models: `recon` (for an AE, -log p(x|z) of its code), `bce_per_pixel`,
  `mse` (per pixel), `psnr` (dB), `ssim` of the deterministic reconstruction,
  and with labels (not for conditional models, whose encoder sees the label)
  `linear_probe_accuracy` and `knn_accuracy` of standardised codes fitted on
  up to `probe_train_size` training images. Denoising and super-resolution
  models are scored on corrupted / downsampled inputs against the clean
  target, drawn with fixed keys. Images are sharded over all devices in
  batches of `batch_size` (at most the split's size, rounded up to a multiple
  of the device count; the numbers depend on the seed and the batch size).

  With `fid` (see aejax.fid): VAEs get `fid`, the FID between N samples from
  the prior (the decoder's mean sigmoid(logits), not Bernoulli samples; z
  drawn with `seed`) and the N evaluation images; every model gets
  `fid_reconstructions`, the FID between the deterministic reconstructions
  and the images; `fid_features` names the feature network (and its test
  accuracy). The features are `fid_extractor`'s, by default those of the
  small classifier aejax trains on the data set's labelled train split
  (`fid_classifier_steps`, default fid.default_steps) and caches in
  `fid_cache_dir` (default $AEJAX_FID_CACHE or ~/.cache/aejax/fid_classifiers).
  Data sets without labels get no FID unless an extractor is passed. FID is
  biased upwards at small N: compare numbers at the same N.
  """
  started = time.perf_counter()
  for name, value in (("nll_samples", nll_samples), ("chunk_size", chunk_size)):
    _check_positive(name, value)
  _check_positive("batch_size", batch_size)
  _check_positive("probe_train_size", probe_train_size, allow_zero=True)
  _check_positive("seed", seed, allow_zero=True)
  if limit is not None:
    _check_positive("limit", limit)
  if fid_classifier_steps is not None:
    _check_positive("fid_classifier_steps", fid_classifier_steps)
  workdir = pathlib.Path(workdir)
  handle = aejax.load(workdir)
  config = handle.config
  load_kwargs = dict(source=config.data.source, data_dir=config.data.data_dir or None)
  eval_set = data.load(config.data.name, split, limit=limit, **load_kwargs)
  if tuple(eval_set.images.shape[1:]) != handle.image_shape:
    raise errors.InputError(
      f"{config.data.name}/{split}: images of shape {eval_set.images.shape[1:]}, but the model "
      f"in {workdir} was trained on {handle.image_shape}"
    )
  if handle.num_classes:
    train.check_labels(eval_set, handle.num_classes)

  mesh = train.make_mesh()
  # A multiple of the device count, and no bigger than the split needs (padding costs samples).
  batch_size = mesh.size * math.ceil(min(batch_size, len(eval_set.images)) / mesh.size)
  params = jax.device_put(handle.params, train.replicated(mesh))
  root = jax.random.key(seed)
  key_eval, key_probe = jax.random.fold_in(root, 0), jax.random.fold_in(root, 1)
  ks = sorted({k for k in IWAE_KS if k <= nll_samples} | {nll_samples})
  logging.info(
    "evaluating %s (step %d) on %d images of %s/%s on %d devices, batch %d%s",
    config.model.name,
    handle.step,
    len(eval_set.images),
    config.data.name,
    split,
    mesh.size,
    batch_size,
    f", L_k for k in {ks} in chunks of {chunk_size}" if handle.is_variational else "",
  )

  batch_fn = _make_batch_fn(handle, mesh, ks, chunk_size)
  pass_started = time.perf_counter()
  per_image = _map_batches(batch_fn, params, eval_set, batch_size, mesh, key_eval, False)
  # The main pass: every L_k (the NLL's nll_samples decodes per image), the ELBO and the image
  # metrics, compile included. The rest (probes, FID, bits/dim pass) is timed by `seconds`.
  main_pass_seconds = time.perf_counter() - pass_started

  results: dict = {}
  notes: list[str] = []
  if handle.is_variational:
    neg_elbo = per_image["recon"] + per_image["kl"]
    results["elbo"], results["elbo_stderr"] = _mean_and_stderr(-neg_elbo)
    results["elbo_mc"], results["elbo_mc_stderr"] = _mean_and_stderr(per_image["iwae_1"])
    results["recon"] = float(per_image["recon"].mean(dtype=np.float64))
    results["kl"] = float(per_image["kl"].mean(dtype=np.float64))
    nll, nll_stderr = _mean_and_stderr(-per_image[f"iwae_{nll_samples}"])
    results.update(nll=nll, nll_stderr=nll_stderr, nll_samples=nll_samples)
    results["iwae_bound_k"] = {
      str(k): float(per_image[f"iwae_{k}"].mean(dtype=np.float64)) for k in ks
    }
    if len(eval_set.images) > 1:
      count, _ = active_units(per_image["mean"])
      results["active_units"] = count
    results["kl_per_dim"] = kl_per_dim(per_image["mean"], per_image["logvar"]).tolist()
    binary = config.data.dynamic_binarization or bool(
      np.all((eval_set.images == 0.0) | (eval_set.images == 1.0))
    )
    if config.model.likelihood == "bernoulli" and not binary:
      notes.append(
        "the targets are grey levels under a Bernoulli decoder: nll, elbo and recon are "
        "cross-entropies (the lesson's BCE), not log-likelihoods of the data."
      )
    if config.data.dynamic_binarization:
      notes.append("targets dynamically binarized: one fixed Bernoulli draw per image (the seed).")
    if config.model.likelihood == "gaussian":
      if config.data.dynamic_binarization or not _is_8bit(eval_set.images):
        notes.append(
          "bits_per_dim omitted: the data are not 8-bit grey levels k/255 "
          "(binary, binarized or of another depth), so the 8-bit dequantisation does not apply."
        )
      else:
        # The same program and keys as the main pass (same corruption and samples), one more
        # key for u; it computes every metric again, a small cost beside the NLL.
        deq = _map_batches(batch_fn, params, eval_set, batch_size, mesh, key_eval, True)
        results["nll_dequantised"] = float(-deq[f"iwae_{nll_samples}"].mean(dtype=np.float64))
        results["bits_per_dim"] = bits_per_dim(
          results["nll_dequantised"], math.prod(handle.image_shape)
        )
  else:
    results["recon"] = float(per_image["recon"].mean(dtype=np.float64))
  for name in ("bce_per_pixel", "mse", "psnr", "ssim"):
    results[name] = float(per_image[name].mean(dtype=np.float64))

  if handle.num_classes:
    notes.append("probes omitted: a conditional model's encoder is given the label.")
  elif eval_set.labels is None:
    notes.append(f"probes omitted: {config.data.name} has no labels.")
  elif probe_train_size:
    train_set = data.load(
      config.data.name, config.data.train_split, limit=probe_train_size, **load_kwargs
    )
    if train_set.labels is not None and len(train_set.images) > KNN_NEIGHBOURS:
      from aejax import pca_vs_ae  # Its linear probe; imported on use like scikit-learn.

      embed_fn = _make_embed_fn(handle, mesh)
      train_codes = _map_batches(embed_fn, params, train_set, batch_size, mesh, key_probe)
      test_codes = per_image["mean" if handle.is_variational else "z"]
      results["linear_probe_accuracy"] = pca_vs_ae.linear_probe_accuracy(
        train_codes, train_set.labels, test_codes, eval_set.labels, seed=seed
      )
      results["knn_accuracy"] = knn_accuracy(
        train_codes, train_set.labels, test_codes, eval_set.labels
      )
      results["probe_train_size"] = len(train_set.images)

  if fid:
    fid_results, fid_notes = _fid_results(
      handle,
      eval_set,
      per_image["reconstruction"],
      fid_extractor,
      fid_cache_dir,
      fid_classifier_steps,
      seed,
      load_kwargs,
    )
    results.update(fid_results)
    notes += fid_notes

  results.update(
    seed=seed,
    split=split,
    num_images=len(eval_set.images),
    batch_size=batch_size,
    chunk_size=chunk_size,
    step=handle.step,
    workdir=str(workdir),
    model=config.model.name,
    data=config.data.name,
    task=config.task.name,
    likelihood=config.model.likelihood,
    num_devices=mesh.size,
    seconds=time.perf_counter() - started,
    main_pass_seconds=main_pass_seconds,
    main_pass_images_per_sec=len(eval_set.images) / main_pass_seconds,
    peak_rss_mib=_peak_rss_mib(),
  )
  if notes:
    results["notes"] = notes
  if jax.process_index() == 0:
    train.write_atomically(workdir / RESULTS_JSON, json.dumps(results, indent=2) + "\n")
    train.write_atomically(workdir / RESULTS_MD, markdown_table(results) + "\n")
  logging.info("wrote %s and %s in %.1f s", RESULTS_JSON, RESULTS_MD, results["seconds"])
  return results


def _fmt(value: float, stderr: float | None = None, digits: int = 2) -> str:
  text = f"{value:.{digits}f}"
  return text if stderr is None else f"{text} ± {stderr:.{digits}f}"


def markdown_table(results: dict) -> str:
  """The results as a Markdown table with units (what eval_results.md holds)."""
  r = results
  lines = [
    f"# Evaluation: {r['model']} ({r['task']}, {r['likelihood']}) on {r['data']}/{r['split']}",
    "",
    f"step {r['step']}, {r['num_images']} images, seed {r['seed']}, batch {r['batch_size']}, "
    f"devices {r['num_devices']}, {r['seconds']:.1f} s (the pass of the bounds "
    f"{r['main_pass_seconds']:.1f} s, {r['main_pass_images_per_sec']:.1f} images/s). "
    "Nats per image are summed over pixels "
    "and averaged over images; ± is the standard error over images.",
    "",
    "| metric | value | unit |",
    "|---|---|---|",
  ]
  if "nll" in r:
    lines += [
      f"| NLL = -L_k, k = {r['nll_samples']} (importance sampled) | "
      f"{_fmt(r['nll'], r['nll_stderr'])} | nats per image |",
      f"| ELBO (one-sample recon + analytic KL) | {_fmt(r['elbo'], r['elbo_stderr'])} | "
      "nats per image |",
      f"| ELBO, one-sample Monte Carlo L_1 | {_fmt(r['elbo_mc'], r['elbo_mc_stderr'])} | "
      "nats per image |",
      f"| reconstruction -log p(x\\|z), z ~ q(z\\|x) | {_fmt(r['recon'])} | nats per image |",
      f"| KL(q(z\\|x) \\|\\| N(0, I)) | {_fmt(r['kl'])} | nats per image |",
    ]
    for k, value in r["iwae_bound_k"].items():
      lines.append(f"| IWAE bound L_{k} | {_fmt(value)} | nats per image |")
    if "bits_per_dim" in r:
      lines += [
        f"| NLL of the dequantised images y = (k + u) / 256, u ~ U[0, 1) | "
        f"{_fmt(r['nll_dequantised'])} | nats per image |",
        f"| bits/dim = (NLL(y) / D + log 256) / log 2 | {_fmt(r['bits_per_dim'], digits=4)} | "
        "bits per pixel of the 8-bit data |",
      ]
    if "active_units" in r:
      lines.append(
        f"| active units (Var_x E_q[z_u\\|x] > {ACTIVE_UNIT_THRESHOLD}) | "
        f"{r['active_units']} of {len(r['kl_per_dim'])} | units |"
      )
    kl_dims = ", ".join(f"{v:.2f}" for v in r["kl_per_dim"])
    lines.append(f"| KL per latent dimension | {kl_dims} | nats per image |")
  else:
    lines.append(f"| reconstruction -log p(x\\|z) | {_fmt(r['recon'])} | nats per image |")
  lines += [
    f"| BCE (deterministic reconstruction) | {_fmt(r['bce_per_pixel'], digits=4)} | "
    "nats per pixel |",
    f"| MSE (deterministic reconstruction) | {_fmt(r['mse'], digits=4)} | "
    "per pixel, [0, 1] scale |",
    f"| PSNR | {_fmt(r['psnr'])} | dB, peak 1 |",
    f"| SSIM | {_fmt(r['ssim'], digits=4)} | [-1, 1] |",
  ]
  if "linear_probe_accuracy" in r:
    lines += [
      f"| linear probe accuracy (logistic regression, {r['probe_train_size']} train codes) | "
      f"{_fmt(r['linear_probe_accuracy'], digits=4)} | fraction |",
      f"| {KNN_NEIGHBOURS}-NN accuracy | {_fmt(r['knn_accuracy'], digits=4)} | fraction |",
    ]
  if "fid_features" in r:
    features = r["fid_features"]
    on = f"squared feature distance on {features['name']}"
    if "test_accuracy" in features:
      on += f" (classifier test accuracy {features['test_accuracy']:.4f})"
    n = r["num_images"]
    if "fid" in r:
      lines.append(
        f"| FID, {n} prior samples (decoder means) vs the {n} images | {_fmt(r['fid'])} | {on} |"
      )
    lines.append(
      f"| FID, the {n} reconstructions vs the images | {_fmt(r['fid_reconstructions'])} | {on} |"
    )
  if r.get("notes"):
    lines += [""] + [f"- {note}" for note in r["notes"]]
  return "\n".join(lines)


# ---------------------------------------------------------------------------
# Command line.


def _define_flags() -> None:
  # Defined on use, not at import: aejax.main defines `workdir` too, and both modules may be
  # imported into one process.
  flags.DEFINE_string("workdir", None, "A trained aejax workdir.")
  flags.DEFINE_string("split", "test", "Split of the run's data set to evaluate.")
  flags.DEFINE_integer("nll_samples", DEFAULT_NLL_SAMPLES, "k of the importance-sampled NLL.")
  flags.DEFINE_integer("seed", 0, "Seed of every sample and corruption.")
  flags.DEFINE_integer("limit", 0, "> 0: only the first N images of the split.")
  flags.DEFINE_integer("batch_size", DEFAULT_BATCH_SIZE, "Images per jitted call.")
  flags.DEFINE_integer("chunk_size", DEFAULT_CHUNK_SIZE, "Importance samples per scan step.")
  flags.DEFINE_integer("probe_train_size", 10000, "Training images for the probes (0: none).")
  flags.DEFINE_bool("fid", True, "FID of samples (VAEs) and reconstructions (see aejax.fid).")
  flags.DEFINE_string(
    "fid_cache_dir",
    None,
    f"Cache of FID classifiers (default: ${fid_lib.CACHE_ENV} or {fid_lib.DEFAULT_CACHE_DIR}).",
  )
  flags.DEFINE_integer(
    "fid_classifier_steps", 0, "> 0: FID classifier training steps (default: fid.default_steps)."
  )
  flags.mark_flags_as_required(["workdir"])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.getLogger().setLevel(logging.INFO)
  # Orbax logs every checkpoint stage at INFO through absl; keep its warnings only.
  logging.getLogger("absl").setLevel(logging.WARNING)
  f = flags.FLAGS
  try:
    results = evaluate(
      f.workdir,
      split=f.split,
      nll_samples=f.nll_samples,
      seed=f.seed,
      chunk_size=f.chunk_size,
      batch_size=f.batch_size,
      probe_train_size=f.probe_train_size,
      limit=f.limit or None,
      fid=f.fid,
      fid_cache_dir=f.fid_cache_dir,
      fid_classifier_steps=f.fid_classifier_steps or None,
    )
  except (errors.CheckpointError, errors.InputError, errors.ConfigError, data.DataError) as error:
    # aejax's documented errors: one line naming the problem, no traceback.
    logging.error("%s: %s", type(error).__name__, " ".join(str(error).split()))
    sys.exit(2)
  print(markdown_table(results))


def cli() -> None:
  _define_flags()
  app.run(main)


if __name__ == "__main__":
  cli()
