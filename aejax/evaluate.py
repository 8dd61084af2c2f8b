"""Evaluation of a trained workdir: IWAE-bound NLL, ELBO, latents, probes and FID."""

import functools
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence

import jax
import numpy as np
from absl import app, flags
from etils import epath

from aejax import (
  accelerators,
  api,
  chorales,
  compilation,
  data,
  disentanglement,
  distributed,
  errors,
  estimators,
  latent_figures,
  losses,
  melodies,
  parallel,
  probes,
  progress,
  runner,
  samplers,
  utilisation,
)
from aejax import fid as fid_lib  # `fid` is evaluate()'s switch.
from aejax import workdir as workdir_lib

RESULTS_JSON = workdir_lib.EVAL_RESULTS_JSON
RESULTS_MD = workdir_lib.EVAL_RESULTS_MD
MUTUAL_INFO_PNG = "mutual_info.png"

DEFAULT_NLL_SAMPLES = 5000  # Burda et al. (2016) report -L_5000 as the test NLL.
DEFAULT_BATCH_SIZE = 256  # Images per jitted call, rounded up to a multiple of the devices.


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


# What each sampler's FID line in eval_results.md says its samples are.
SAMPLER_DESCRIPTIONS = {
  "gmm": "samples of the ex-post mixture of the training codes",
  "two_stage": "samples of the second-stage VAE of the training codes",
}


def fid_samplers(handle) -> tuple[str, ...]:
  """The samplers besides the prior whose FID `evaluate` reports, as `fid_<name>`.

  "gmm" for every unconditional model whose `ex_post_samplers` allows it
  (Ghosh et al.'s ex-post mixture, what makes a deterministic autoencoder
  generative), then each of the model's own `fid_samplers` (a two_stage_vae's
  "two_stage"), each once.
  """
  names = []
  if not handle.num_classes and "gmm" in samplers.ex_post_samplers(handle.model):
    names.append("gmm")
  for name in getattr(handle.model, "fid_samplers", ()):
    if name not in names:
      names.append(name)
  return tuple(names)


def _sample_fids(handle, eval_set: data.ImageSet, extractor, reference, seed: int) -> dict:
  """`fid` of N prior samples (models with a prior), `fid_<sampler>` of each of fid_samplers.

  The samples are the decoder's mean sigmoid(logits), not Bernoulli draws,
  drawn with the evaluation seed; a conditional model's prior gets the
  evaluation images' labels, so the classes are as frequent as in the reference.
  """
  n, out = len(eval_set.images), {}

  def fid_of(samples):
    return fid_lib.frechet_distance(*fid_lib.feature_statistics(extractor(samples)), *reference)

  if handle.can_generate:
    labels = eval_set.labels if handle.num_classes else None
    out["fid"] = fid_of(handle.generate(n, seed=seed, labels=labels))
  for name in fid_samplers(handle):
    out[f"fid_{name}"] = fid_of(handle.generate(n, seed=seed, sampler=name))
  return out


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
  """`fid` (prior samples), `fid_<sampler>`, `fid_reconstructions` and `fid_features`; or why not.

  `fid` compares N samples from the prior (the decoder's mean sigmoid(logits),
  not Bernoulli samples; drawn with `seed`) with the N evaluation images, for
  models with a prior (VAEs, zoo models with a `sample` hook); `fid_gmm` N
  samples of the ex-post Gaussian mixture fitted to the training codes
  (unconditional models, aejax/samplers.py), `fid_two_stage` those of a
  two_stage_vae's second stage (see `fid_samplers`);
  `fid_reconstructions` the deterministic reconstructions with the images.
  The features are `extractor`'s, by default those of the small classifier
  aejax trains on the data set's labelled train split (`classifier_steps`,
  default fid.default_steps) and caches in `cache_dir` (default
  $AEJAX_FID_CACHE or ~/.cache/aejax/fid_classifiers). Data sets without
  labels get no FID unless an extractor is passed. FID is biased upwards at
  small N: compare numbers at the same N.
  """
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
  out = _sample_fids(handle, eval_set, extractor, reference, seed)
  out["fid_reconstructions"] = fid_lib.frechet_distance(
    *fid_lib.feature_statistics(extractor(reconstructions)), *reference
  )
  out["fid_features"] = features
  return out, []


def _at_the_runs_matmul_precision(evaluate_fn):
  """Runs `evaluate_fn(workdir, ...)` with matmuls and convolutions traced at the precision the
  run trained at (its config.matmul_precision; the default for configs without the field)."""

  @functools.wraps(evaluate_fn)
  def at_precision(workdir, **kwargs):
    config_file = workdir_lib.as_path(workdir) / workdir_lib.CONFIG_FILE
    try:
      precision = json.loads(config_file.read_text()).get("matmul_precision", "default")
    except (OSError, ValueError, AttributeError):
      precision = "default"  # evaluate_fn reports what is wrong with the workdir.
    if precision not in utilisation.MATMUL_PRECISIONS:
      raise errors.CheckpointError(
        f"{config_file}: matmul_precision {precision!r} is not one of "
        f"{', '.join(utilisation.MATMUL_PRECISIONS)}"
      )
    with utilisation.matmul_precision(precision):
      return evaluate_fn(workdir, **kwargs)

  return at_precision


@_at_the_runs_matmul_precision
def evaluate(
  workdir: str | os.PathLike,
  *,
  split: str = "test",
  nll_samples: int = DEFAULT_NLL_SAMPLES,
  seed: int = 0,
  chunk_size: int = estimators.DEFAULT_CHUNK_SIZE,
  batch_size: int = DEFAULT_BATCH_SIZE,
  probe_train_size: int = 10000,
  limit: int | None = None,
  fid: bool = True,
  fid_extractor: fid_lib.FeatureExtractor | None = None,
  fid_cache_dir: str | os.PathLike | None = None,
  fid_classifier_steps: int | None = None,
  disentanglement_points: int = disentanglement.NUM_TRAIN,
  trust_model_code: bool = False,
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
  Discrete likelihoods (discretized_logistic; bernoulli on binary or binarized
  data) get `nll_bits_per_dim` = nll / (D log 2), D = pixels x channels.
  All models: `recon` (for an AE, -log p(x|z) of its code), `bce_per_pixel`,
  `mse` (per pixel), `psnr` (dB), `ssim` of the deterministic reconstruction,
  and with labels (not for conditional models, whose encoder sees the label)
  `linear_probe_accuracy` and `knn_accuracy` of standardised codes fitted on
  up to `probe_train_size` training images. Denoising and super-resolution
  models are scored on corrupted / downsampled inputs against the clean
  target, drawn with fixed keys. Images are sharded over all devices in
  batches of `batch_size` (at most the split's size, rounded up to a multiple
  of the device count; the numbers depend on the seed and the batch size).

  With `fid`: models with a prior get `fid` (N prior samples, the decoder's
  mean, against the N evaluation images), unconditional models `fid_gmm` (N
  samples of the ex-post mixture of the training codes), models with
  `fid_samplers` `fid_<name>` for each (a two_stage_vae's `fid_two_stage`),
  every model `fid_reconstructions`; `fid_features`
  names the feature network: `fid_extractor`, by default the classifier aejax
  trains and caches (see `_fid_results` and aejax/fid.py; docs/evaluation.md).

  Runs on a ground-truth data set (dSprites and its variants, data.GROUND_TRUTH)
  also get every disentanglement score (disentanglement.SCORES, and
  `mutual_info_matrix`), sampled with `disentanglement_points` training and
  half as many evaluation points (disentanglement_lib: 10,000 and 5,000; 0
  skips them). Their FID is omitted: no feature network is trained for them.
  """
  started = time.perf_counter()
  for name, value, allow_zero in (
    ("nll_samples", nll_samples, False), ("chunk_size", chunk_size, False),
    ("batch_size", batch_size, False), ("probe_train_size", probe_train_size, True),
    ("seed", seed, True), ("limit", limit, False),
    ("fid_classifier_steps", fid_classifier_steps, False),
    ("disentanglement_points", disentanglement_points, True),
  ):  # fmt: skip
    if value is not None:
      _check_positive(name, value, allow_zero=allow_zero)
  workdir = workdir_lib.as_path(workdir)
  handle, eval_set, load_kwargs = _load(workdir, split, limit, trust_model_code)
  config = handle.config

  mesh = parallel.make_mesh()
  # A multiple of the device count, and no bigger than the split needs (padding costs samples).
  batch_size = mesh.size * math.ceil(min(batch_size, len(eval_set.images)) / mesh.size)
  # Through the host: the loaded parameters sit on this process's first device, and a mesh of
  # several processes cannot be reached from there by a device-to-device copy.
  params = jax.tree.map(lambda x: parallel.put_replicated(np.asarray(x), mesh), handle.params)
  root = jax.random.key(seed)
  key_eval, key_probe = jax.random.fold_in(root, 0), jax.random.fold_in(root, 1)
  ks = sorted({k for k in estimators.IWAE_KS if k <= nll_samples} | {nll_samples})
  logging.info(
    "evaluating %s (step %d) on %d images of %s/%s on %d devices, batch %d%s",
    config.model.name, handle.step, len(eval_set.images), config.data.name, split, mesh.size,
    batch_size, f", L_k for k in {ks} in chunks of {chunk_size}" if handle.is_variational else "",
  )  # fmt: skip

  # Seconds per phase for the summary; each phase logs its start and end, the long ones their
  # progress, so a log file never goes quiet for long.
  phases = progress.Phases()
  batch_fn = estimators.make_batch_fn(handle, mesh, ks, chunk_size)
  pass_started = time.perf_counter()
  with phases.phase("bounds", f"{len(eval_set.images)} images", heartbeat=False):
    per_image = estimators.map_batches(
      batch_fn, params, eval_set, batch_size, mesh, key_eval, False, desc="bounds"
    )
  # The main pass: every L_k (the NLL's nll_samples decodes per image), the ELBO and the image
  # metrics, compile included. The rest (probes, FID, bits/dim pass) is timed by `seconds`.
  main_pass_seconds = time.perf_counter() - pass_started

  results: dict = {}
  notes: list[str] = []
  if handle.is_variational:
    _add_variational_results(
      results, notes, phases, per_image, handle, eval_set, nll_samples, ks,
      lambda desc: estimators.map_batches(
        batch_fn, params, eval_set, batch_size, mesh, key_eval, True, desc=desc
      ),
    )  # fmt: skip
  else:
    results["recon"] = float(per_image["recon"].mean(dtype=np.float64))
  if config.data.name in data.SEQUENCE_SETS:
    notes += _add_melody_results(results, phases, per_image, handle, eval_set, seed)
  else:
    for name in ("bce_per_pixel", "mse", "psnr", "ssim"):
      results[name] = float(per_image[name].mean(dtype=np.float64))

  notes += _add_probe_results(
    results, phases, per_image, handle, eval_set, probe_train_size, seed, load_kwargs,
    lambda train_set: estimators.map_batches(
      estimators.make_embed_fn(handle, mesh), params, train_set, batch_size, mesh, key_probe,
      desc="probe codes",
    ),
  )  # fmt: skip

  if config.data.name in data.GROUND_TRUTH:
    notes += _add_disentanglement_results(
      results, phases, handle, workdir, disentanglement_points, jax.random.fold_in(root, 2)
    )
  if fid and (config.data.name in data.GROUND_TRUTH or config.data.name in data.SEQUENCE_SETS):
    notes.append(f"fid omitted: aejax trains no FID feature network for {config.data.name}.")
  elif fid:
    with phases.phase("fid"):
      fid_results, fid_notes = _fid_results(
        handle, eval_set, per_image["reconstruction"], fid_extractor, fid_cache_dir,
        fid_classifier_steps, seed, load_kwargs,
      )  # fmt: skip
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
    # A melody model's likelihood is its own categorical per step, whatever the config says.
    likelihood=(
      "categorical" if config.data.name in data.SEQUENCE_SETS else config.model.likelihood
    ),
    num_devices=mesh.size,
    seconds=time.perf_counter() - started,
    main_pass_seconds=main_pass_seconds,
    main_pass_images_per_sec=len(eval_set.images) / main_pass_seconds,
    phase_seconds=dict(phases.seconds),
    peak_rss_mib=_peak_rss_mib(),
  )
  if notes:
    results["notes"] = notes
  _write_results(workdir, results, phases)
  return results


def _write_results(workdir: epath.Path, results: dict, phases: progress.Phases) -> None:
  if jax.process_index() == 0:
    workdir_lib.write_atomically(workdir / RESULTS_JSON, json.dumps(results, indent=2) + "\n")
    workdir_lib.write_atomically(workdir / RESULTS_MD, markdown_table(results) + "\n")
  logging.info(
    "evaluated in %s; phases: %s", progress.format_duration(results["seconds"]), phases.summary()
  )
  logging.info("wrote %s and %s in %.1f s", RESULTS_JSON, RESULTS_MD, results["seconds"])


def _load(workdir: epath.Path, split: str, limit: int | None, trust_model_code: bool):
  """The trained model, the split to evaluate it on (checked against it), and how to load more."""
  handle = api.load(workdir, trust_model_code=trust_model_code)
  config = handle.config
  load_kwargs = dict(source=config.data.source, data_dir=config.data.data_dir or None)
  eval_set = data.load(config.data.name, split, limit=limit, **load_kwargs)
  if tuple(eval_set.images.shape[1:]) != handle.image_shape:
    raise errors.InputError(
      f"{config.data.name}/{split}: images of shape {eval_set.images.shape[1:]}, but the model "
      f"in {workdir} was trained on {handle.image_shape}"
    )
  if handle.num_classes:
    data.check_labels(eval_set, handle.num_classes)
  return handle, eval_set, load_kwargs


def _add_variational_results(
  results, notes, phases, per_image, handle, eval_set, nll_samples, ks, dequantised_pass
) -> None:
  """A VAE's ELBO, L_k bounds, NLL, active units, KL per dimension and bits/dim into `results`.

  `dequantised_pass(desc)` runs the main pass again on dequantised images (bits/dim only).
  """
  config = handle.config
  neg_elbo = per_image["recon"] + per_image["kl"]
  results["elbo"], results["elbo_stderr"] = estimators.mean_and_stderr(-neg_elbo)
  results["elbo_mc"], results["elbo_mc_stderr"] = estimators.mean_and_stderr(per_image["iwae_1"])
  results["recon"] = float(per_image["recon"].mean(dtype=np.float64))
  results["kl"] = float(per_image["kl"].mean(dtype=np.float64))
  nll, nll_stderr = estimators.mean_and_stderr(-per_image[f"iwae_{nll_samples}"])
  results.update(nll=nll, nll_stderr=nll_stderr, nll_samples=nll_samples)
  results["iwae_bound_k"] = {
    str(k): float(per_image[f"iwae_{k}"].mean(dtype=np.float64)) for k in ks
  }
  if len(eval_set.images) > 1:
    with phases.phase("active_units"):
      count, _ = estimators.active_units(per_image["mean"])
    results["active_units"] = count
  results["kl_per_dim"] = estimators.kl_per_dim(per_image["mean"], per_image["logvar"]).tolist()
  # The model's own prior (a VampPrior, a hierarchy) has no analytic KL: kl is sampled.
  results["kl_estimate"] = (
    "monte_carlo" if hasattr(handle.model, "log_weight_terms") else "analytic"
  )
  if hasattr(handle.model, "log_weight_terms"):
    notes.append(
      f"{config.model.name} gives its own log-weight terms (its prior, or its likelihood, is not "
      "aejax's built-in one): kl (and so elbo) is a one-sample Monte Carlo estimate of "
      "KL(q(z|x) || p(z)), while kl_per_dim measures q against N(0, 1) per unit."
    )
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
  pixels = config.data.name not in data.SEQUENCE_SETS  # One-hot tokens are no pixels.
  if pixels and (
    config.model.likelihood == "discretized_logistic"
    or (config.model.likelihood == "bernoulli" and binary)
  ):
    # A likelihood of the discrete pixels themselves: -L_k is (an upper bound on) -log P(x) of
    # the data as stored, so it converts to bits/dim with no dequantisation (unlike the
    # Gaussian's bits_per_dim below).
    results["nll_bits_per_dim"] = losses.discrete_bits_per_dim(nll, math.prod(handle.image_shape))
    if config.model.likelihood == "discretized_logistic" and not (
      binary or estimators.is_8bit(eval_set.images)
    ):
      notes.append(
        "the images are not 8-bit grey levels k/255: the discretized logistic scores each pixel "
        "rounded to the nearest level, so nll is of the rounded images."
      )
  if config.model.likelihood == "gaussian":
    if config.data.dynamic_binarization or not estimators.is_8bit(eval_set.images):
      notes.append(
        "bits_per_dim omitted: the data are not 8-bit grey levels k/255 "
        "(binary, binarized or of another depth), so the 8-bit dequantisation does not apply."
      )
    else:
      # The same program and keys as the main pass (same corruption and samples), one more
      # key for u; it computes every metric again, a small cost beside the NLL.
      with phases.phase("bits_per_dim", "bounds of the dequantised images", heartbeat=False):
        deq = dequantised_pass("bits_per_dim")
      results["nll_dequantised"] = float(-deq[f"iwae_{nll_samples}"].mean(dtype=np.float64))
      results["bits_per_dim"] = estimators.bits_per_dim(
        results["nll_dequantised"], math.prod(handle.image_shape)
      )


def _add_melody_results(results, phases, per_image, handle, eval_set, seed: int) -> list[str]:
  """A melody run's reconstruction token accuracy and its samples' pitch-class and note-length
  distances from the split's melodies (aejax/melodies.py), instead of the image metrics."""
  results["token_accuracy"] = melodies.token_accuracy(per_image["reconstruction"], eval_set.images)
  if handle.can_generate:
    with phases.phase("sample statistics"):
      samples = chorales.melodies_of(handle.generate(len(eval_set.images), seed=seed))
      reference = chorales.melodies_of(eval_set.images)
      results["sample_statistics"] = melodies.sample_statistics(
        samples, reference, max_steps=chorales.STEPS_PER_BAR
      )
  return [
    f"{handle.config.data.name} holds token sequences: an image is a sequence of "
    f"{handle.image_shape[0]} steps, and nats per image are nats per sequence."
  ]


def _add_probe_results(
  results, phases, per_image, handle, eval_set, probe_train_size, seed, load_kwargs, embed
) -> list[str]:
  """Linear-probe and k-NN accuracy of the codes into `results`; returns notes on what was not.

  `embed(train_set)` gives the codes of the training images the probes fit on.
  """
  config, notes = handle.config, []
  if handle.num_classes:
    notes.append("probes omitted: a conditional model's encoder is given the label.")
  elif eval_set.labels is None:
    notes.append(f"probes omitted: {config.data.name} has no labels.")
  elif probe_train_size:
    with phases.phase("probes", f"up to {probe_train_size} training images"):
      train_set = data.load(
        config.data.name, config.data.train_split, limit=probe_train_size, **load_kwargs
      )
      if train_set.labels is not None and len(train_set.images) > probes.KNN_NEIGHBOURS:
        train_codes = embed(train_set)
        test_codes = per_image["mean" if handle.is_variational else "z"]
        results["linear_probe_accuracy"] = probes.linear_probe_accuracy(
          train_codes, train_set.labels, test_codes, eval_set.labels, seed=seed
        )
        results["knn_accuracy"] = probes.knn_accuracy(
          train_codes, train_set.labels, test_codes, eval_set.labels
        )
        results["probe_train_size"] = len(train_set.images)
  return notes


def _add_disentanglement_results(
  results, phases, handle, workdir: epath.Path, num_points: int, key
) -> list[str]:
  """Every disentanglement score of the encoder into `results`; returns notes on what was not."""
  config = handle.config
  if not num_points:
    return ["disentanglement scores omitted: disentanglement_points=0."]
  if handle.num_classes:
    return ["disentanglement scores omitted: a conditional model's encoder is given the label."]
  num_eval = max(2, num_points // 2)
  with phases.phase("disentanglement", f"{num_points} + {num_eval} points per score"):
    found = disentanglement.scores(
      data.GROUND_TRUTH[config.data.name](), handle.encode, key, num_train=num_points,
      num_eval=num_eval,
    )  # fmt: skip
  mutual_info = found.pop("mutual_info_matrix")
  results["mutual_info_matrix"] = mutual_info.tolist()
  results.update(found, disentanglement_points=num_points)
  if jax.process_index() == 0:
    # Codes ordered by the factor they inform most, so a disentangled code reads as a diagonal.
    order = np.lexsort((-mutual_info.max(axis=1), mutual_info.argmax(axis=1)))
    latent_figures.save_mutual_info_matrix(
      workdir / MUTUAL_INFO_PNG, mutual_info,
      data.GROUND_TRUTH[config.data.name].factor_names,
      title=f"I(code; factor), {num_points} points: {config.model.name} on {config.data.name}",
      code_order=order,
    )  # fmt: skip
  return []


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
    sampled_kl = r.get("kl_estimate") == "monte_carlo"
    kl_how, prior = ("one-sample", "p(z)") if sampled_kl else ("analytic", "N(0, I)")
    lines += [
      f"| NLL = -L_k, k = {r['nll_samples']} (importance sampled) | "
      f"{_fmt(r['nll'], r['nll_stderr'])} | nats per image |",
      f"| ELBO (one-sample recon + {kl_how} KL) | {_fmt(r['elbo'], r['elbo_stderr'])} | "
      "nats per image |",
      f"| ELBO, one-sample Monte Carlo L_1 | {_fmt(r['elbo_mc'], r['elbo_mc_stderr'])} | "
      "nats per image |",
      f"| reconstruction -log p(x\\|z), z ~ q(z\\|x) | {_fmt(r['recon'])} | nats per image |",
      f"| KL(q(z\\|x) \\|\\| {prior}), {kl_how} | {_fmt(r['kl'])} | nats per image |",
    ]
    if "nll_bits_per_dim" in r:
      lines.append(
        f"| NLL / (D log 2), D = pixels x channels | {_fmt(r['nll_bits_per_dim'], digits=4)} | "
        "bits per dimension |"
      )
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
        f"| active units (Var_x E_q[z_u\\|x] > {estimators.ACTIVE_UNIT_THRESHOLD}) | "
        f"{r['active_units']} of {len(r['kl_per_dim'])} | units |"
      )
    kl_dims = ", ".join(f"{v:.2f}" for v in r["kl_per_dim"])
    lines.append(f"| KL per latent dimension | {kl_dims} | nats per image |")
  else:
    lines.append(f"| reconstruction -log p(x\\|z) | {_fmt(r['recon'])} | nats per image |")
  if "psnr" in r:
    lines += [
      f"| BCE (deterministic reconstruction) | {_fmt(r['bce_per_pixel'], digits=4)} | "
      "nats per pixel |",
      f"| MSE (deterministic reconstruction) | {_fmt(r['mse'], digits=4)} | "
      "per pixel, [0, 1] scale |",
      f"| PSNR | {_fmt(r['psnr'])} | dB, peak 1 |",
      f"| SSIM | {_fmt(r['ssim'], digits=4)} | [-1, 1] |",
    ]
  if "token_accuracy" in r:
    lines.append(
      f"| token accuracy (deterministic reconstruction) | {_fmt(r['token_accuracy'], digits=4)} "
      "| fraction of steps |"
    )
  if "sample_statistics" in r:
    stats, n = r["sample_statistics"], r["num_images"]
    lines += [
      f"| pitch classes, {n} prior samples vs the {n} melodies | "
      f"{_fmt(stats['pitch_class_tv'], digits=4)} | total variation, [0, 1] |",
      f"| note lengths (1-16 steps), samples vs melodies | "
      f"{_fmt(stats['note_length_tv'], digits=4)} | total variation, [0, 1] |",
      f"| notes per phrase, samples / melodies | {stats['notes_per_phrase_samples']:.2f} / "
      f"{stats['notes_per_phrase_reference']:.2f} | notes |",
    ]
  if "linear_probe_accuracy" in r:
    lines += [
      f"| linear probe accuracy (logistic regression, {r['probe_train_size']} train codes) | "
      f"{_fmt(r['linear_probe_accuracy'], digits=4)} | fraction |",
      f"| {probes.KNN_NEIGHBOURS}-NN accuracy | {_fmt(r['knn_accuracy'], digits=4)} | fraction |",
    ]
  if "mig" in r:
    n = r["disentanglement_points"]
    for key, what in disentanglement.SCORES:
      unit = "nats" if "(nats)" in what else "[0, 1]"
      what = what.replace(" (nats)", "")
      lines.append(
        f"| {what} ({n} + {max(2, n // 2)} points) | {_fmt(r[key], digits=4)} | {unit} |"
      )
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
    for name, what in SAMPLER_DESCRIPTIONS.items():
      if f"fid_{name}" in r:
        lines.append(f"| FID, {n} {what} vs the {n} images | {_fmt(r[f'fid_{name}'])} | {on} |")
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
  flags.DEFINE_string("workdir", None, "A trained aejax workdir (local or gs://...).")
  flags.DEFINE_string("split", "test", "Split of the run's data set to evaluate.")
  flags.DEFINE_integer("nll_samples", DEFAULT_NLL_SAMPLES, "k of the importance-sampled NLL.")
  flags.DEFINE_integer("seed", 0, "Seed of every sample and corruption.")
  flags.DEFINE_integer("limit", 0, "> 0: only the first N images of the split.")
  flags.DEFINE_integer("batch_size", DEFAULT_BATCH_SIZE, "Images per jitted call.")
  flags.DEFINE_integer(
    "chunk_size", estimators.DEFAULT_CHUNK_SIZE, "Importance samples per scan step."
  )
  flags.DEFINE_integer("probe_train_size", 10000, "Training images for the probes (0: none).")
  flags.DEFINE_bool(
    "fid", True, "FID of samples (prior, ex-post samplers) and reconstructions (see aejax.fid)."
  )
  flags.DEFINE_string(
    "fid_cache_dir",
    None,
    f"Cache of FID classifiers (default: ${fid_lib.CACHE_ENV} or {fid_lib.DEFAULT_CACHE_DIR}).",
  )
  flags.DEFINE_integer(
    "fid_classifier_steps", 0, "> 0: FID classifier training steps (default: fid.default_steps)."
  )
  flags.DEFINE_integer(
    "disentanglement_points",
    disentanglement.NUM_TRAIN,
    "Ground-truth data sets: training points of each disentanglement score (evaluation: half).",
  )
  flags.DEFINE_bool(
    "trust_model_code",
    False,
    "Import the model module that the workdir's config names (module.path:function).",
  )
  distributed.define_flags(__name__)
  compilation.define_flags(__name__)
  flags.mark_flags_as_required(["workdir"])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  runner.setup_logging()
  f = flags.FLAGS
  runner.run(lambda: _start_then_evaluate(f))


def _start_then_evaluate(f) -> None:
  # The processes of a multi-process evaluation meet before anything touches a device; then
  # the devices: on a machine with an unused GPU or TPU, JAX's warning and aejax's line naming
  # the install command are the first lines of the log.
  distributed.initialize_from_flags(f)
  accelerators.log_devices(doing="evaluating")
  compilation.use_cache(f.compilation_cache_dir)
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
    disentanglement_points=f.disentanglement_points,
    trust_model_code=f.trust_model_code,
  )
  if distributed.is_writer():
    print(markdown_table(results))


def cli() -> None:
  _define_flags()
  app.run(main)


if __name__ == "__main__":
  cli()
