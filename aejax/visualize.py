"""The pictures and task numbers of a trained model: latent grid and scatter, interpolation,
latent noise, class grid, and PSNR/SSIM for denoising and super-resolution.

`write_final_outputs(handle, eval_set, workdir)` writes everything that applies
to the model; `finalize(workdir)` runs it after training (the training CLI and
the sweep worker call it), and `python -m aejax.use figures --workdir=DIR` on
any finished workdir.
"""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.scipy.special import ndtri

from aejax import api, data, figures, image_metrics, latent_figures, melodies, metrics, tasks
from aejax.api import TrainedModel

GRID_SIZE = 20  # The latent grid: 20 x 20 decoded images.
GRID_QUANTILES = (0.05, 0.95)  # ... over these central quantiles of each latent's marginal.
NOISE_SCALES = (0.0, 0.25, 0.5, 1.0, 2.0)  # Latent noise, in units of the latents' std.


def _labels_for(handle: TrainedModel, labels: np.ndarray | None) -> np.ndarray | None:
  return labels if handle.num_classes else None


def latent_units(handle: TrainedModel) -> str:
  """What a latent coordinate is measured in: a VAE's prior N(0, I) makes it standard
  deviations of the prior; a plain autoencoder's code has no natural unit."""
  return "prior standard deviations" if handle.is_variational else "code value, no natural unit"


def _title(handle: TrainedModel) -> str:
  c = handle.config
  return f"{c.model.name} on {c.data.name}, step {handle.step}"


def latent_grid(handle: TrainedModel, workdir: epath.Path, z_test: np.ndarray) -> epath.Path:
  """2-D latents: decode a regular grid into one picture of digits morphing into each other.

  A VAE's grid spans the central quantiles of the prior N(0, 1) per axis (the
  Keras-blog manifold); a plain AE has no prior, so its grid spans the same
  quantiles of the test latents.
  """
  lo, hi = GRID_QUANTILES
  if handle.is_variational:
    values = np.asarray(ndtri(jnp.linspace(lo, hi, GRID_SIZE)))
    z1_values = z2_values = values
    where = f"prior quantiles {lo:.2f}-{hi:.2f}"
  else:
    z1_values = np.quantile(z_test[:, 0], np.linspace(lo, hi, GRID_SIZE))
    z2_values = np.quantile(z_test[:, 1], np.linspace(lo, hi, GRID_SIZE))
    where = f"test-latent quantiles {lo:.2f}-{hi:.2f}"
  z1, z2 = np.meshgrid(z1_values, z2_values)  # z1 varies along columns, z2 along rows.
  z = np.stack([z1.ravel(), z2.ravel()], axis=-1).astype(np.float32)
  labels = np.zeros(len(z), np.int32) if handle.num_classes else None
  images = handle.decode(z, labels).reshape(GRID_SIZE, GRID_SIZE, *handle.image_shape)
  return latent_figures.save_latent_grid(
    workdir / "latent_grid.png",
    images,
    z1_values,
    z2_values,
    title=f"Latent grid ({where}): {_title(handle)}",
    latent_units=latent_units(handle),
  )


def class_grid(handle: TrainedModel, workdir: epath.Path, per_class: int = 10) -> epath.Path:
  """Conditional models: one row per class, the same `per_class` prior draws in every row."""
  z = np.asarray(jax.random.normal(jax.random.key(0), (per_class, handle.latent_dim)))
  rows = []
  for k in range(handle.num_classes):
    rows.append(handle.decode(z, np.full(per_class, k, np.int32)))
  return figures.save_reconstructions(
    workdir / "class_grid.png",
    {f"class {k}": r for k, r in enumerate(rows)},
    title=f"Generation by class (columns share z): {_title(handle)}",
    max_images=per_class,
  )


def interpolation(
  handle: TrainedModel,
  workdir: epath.Path,
  images: np.ndarray,
  labels,
  pairs: int = 8,
  steps: int = 10,
) -> epath.Path:
  """Linear paths in latent space between pairs of test images (image 2i -> image 2i + 1)."""
  pairs = min(pairs, len(images) // 2)
  start, end = images[0 : 2 * pairs : 2], images[1 : 2 * pairs : 2]
  y = _labels_for(handle, labels)
  y_start = None if y is None else y[0 : 2 * pairs : 2]
  z0 = handle.encode(start, y_start)
  z1 = handle.encode(end, None if y is None else y[1 : 2 * pairs : 2])
  t = np.linspace(0.0, 1.0, steps, dtype=np.float32)
  z = (1 - t)[None, :, None] * z0[:, None] + t[None, :, None] * z1[:, None]
  y_path = None if y is None else np.repeat(y_start, steps)
  decoded = handle.decode(z.reshape(-1, handle.latent_dim), y_path)
  rows = decoded.reshape(pairs, steps, *handle.image_shape)
  return latent_figures.save_interpolation(
    workdir / "interpolation.png",
    rows,
    title=f"Latent interpolation between test images: {_title(handle)}",
  )


def latent_noise(
  handle: TrainedModel,
  workdir: epath.Path,
  images: np.ndarray,
  labels,
  z_test: np.ndarray,
  count: int = 10,
) -> epath.Path:
  """The lesson's task 2: add noise of growing scale to the latents of real digits and decode."""
  y = _labels_for(handle, labels)
  y = None if y is None else y[:count]
  z = handle.encode(images[:count], y)
  latent_std = float(np.mean(np.std(z_test, axis=0)))
  noise = np.asarray(jax.random.normal(jax.random.key(1), z.shape))
  scales = [s * latent_std for s in NOISE_SCALES]
  rows = np.stack([handle.decode((z + s * noise).astype(np.float32), y) for s in scales])
  return latent_figures.save_latent_noise(
    workdir / "latent_noise.png",
    rows,
    scales,
    title=f"Decoding noisy latents (mean latent std {latent_std:.2f}): {_title(handle)}",
  )


def task_metrics(
  handle: TrainedModel, eval_set: data.ImageSet, workdir: epath.Path, name: str = "task_metrics"
) -> dict:
  """Denoising / super-resolution: PSNR and SSIM of the baseline and of the model vs the target.

  Baselines: the noisy input itself (denoising) and bicubic upsampling of the
  low-resolution input (super-resolution). The corruption is drawn with a
  fixed key, so the numbers are reproducible. Writes NAME.json and NAME.md.
  """
  task = handle.config.task.name
  if task not in ("denoise", "superres"):
    return {}
  totals: dict[str, float] = {}
  count = len(eval_set.images)
  height, width, _ = handle.image_shape
  for start in range(0, count, 1000):
    x = eval_set.images[start : start + 1000]
    y = None if eval_set.labels is None else eval_set.labels[start : start + 1000]
    batch = tasks.make_batch(jax.random.fold_in(jax.random.key(0), start), x, None, handle.config)
    inputs, target = np.asarray(batch["input"]), np.asarray(batch["target"])
    output = handle.reconstruct(inputs, _labels_for(handle, y))
    if task == "denoise":
      baseline = inputs
    else:
      baseline = np.asarray(image_metrics.bicubic_upsample(inputs, height, width))
    for label, images in (("baseline", baseline), ("model", output)):
      for metric, fn in (("psnr", image_metrics.psnr), ("ssim", image_metrics.ssim)):
        key = f"{label}_{metric}"
        totals[key] = totals.get(key, 0.0) + float(jnp.sum(fn(images, target)))
  results = {k: v / count for k, v in totals.items()}
  baseline_name = "noisy input" if task == "denoise" else "bicubic upsampling"
  results.update(
    task=task,
    baseline=baseline_name,
    data=eval_set.name,
    split=eval_set.split,
    images=count,
    step=handle.step,
  )
  (workdir / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
  lines = [
    f"# {task} on {eval_set.name}/{eval_set.split} ({count} images), "
    f"{handle.config.model.name} at step {handle.step}",
    "",
    "| | PSNR (dB) | SSIM |",
    "|---|---|---|",
    f"| {baseline_name} | {results['baseline_psnr']:.2f} | {results['baseline_ssim']:.4f} |",
    f"| aejax model | {results['model_psnr']:.2f} | {results['model_ssim']:.4f} |",
  ]
  (workdir / f"{name}.md").write_text("\n".join(lines) + "\n")
  return results


def superres_from_noise(handle: TrainedModel, workdir: epath.Path, count: int = 10):
  """The lesson's 'super-resolution from pure noise': uniform noise as the low-res input."""
  height, width, channels = handle.image_shape
  factor = handle.config.task.superres_factor
  noise = np.asarray(
    jax.random.uniform(jax.random.key(2), (count, height // factor, width // factor, channels))
  )
  labels = np.arange(count, dtype=np.int32) % handle.num_classes if handle.num_classes else None
  return figures.save_reconstructions(
    workdir / "superres_from_noise.png",
    {"noise input": noise, "output": handle.reconstruct(noise, labels)},
    title=f"{factor}x super-resolution of pure noise: {_title(handle)}",
  )


# Traversals: decodings per row, the range in prior (VAE) or code (AE) standard deviations, and
# at most this many dimensions (the most informative ones) so a wide latent stays readable.
TRAVERSAL_STEPS = 9
TRAVERSAL_RANGE = 2.5
MAX_TRAVERSAL_ROWS = 16


def traversals(
  handle: TrainedModel, workdir: epath.Path, images: np.ndarray, labels, z_test: np.ndarray
) -> epath.Path:
  """One row per latent dimension: the first test image's code with that dimension swept.

  VAEs: rows sorted by the dimension's mean KL(q(z_d|x) || N(0, 1)) over the test images
  (the informative ones first), each swept over -2.5..2.5, the prior's standard deviations.
  Autoencoders: rows sorted by the code's standard deviation over the test images, each swept
  over its mean +- 2.5 of its standard deviations. The other dimensions keep the first image's
  code (its posterior mean).
  """
  y = _labels_for(handle, labels)
  steps = np.linspace(-TRAVERSAL_RANGE, TRAVERSAL_RANGE, TRAVERSAL_STEPS, dtype=np.float32)
  if handle.is_variational:
    mean, logvar = handle.posterior(images, y)
    kl_D = 0.5 * np.mean(mean**2 + np.exp(logvar) - 1.0 - logvar, axis=0)
    order = np.argsort(-kl_D, kind="stable")
    values = np.tile(steps, (len(order), 1))
    names = [f"z[{d}]\nKL {kl_D[d]:.2f}" for d in order]
    swept = f"each row: one dimension set to -{TRAVERSAL_RANGE}..{TRAVERSAL_RANGE} (prior std)"
  else:
    mean_D, std_D = z_test.mean(axis=0), z_test.std(axis=0)
    order = np.argsort(-std_D, kind="stable")
    values = mean_D[order, None] + std_D[order, None] * steps[None, :]
    names = [f"z[{d}]\nstd {std_D[d]:.2f}" for d in order]
    swept = f"each row: one dimension over its mean +- {TRAVERSAL_RANGE} code std"
  shown = min(len(order), MAX_TRAVERSAL_ROWS)
  base = z_test[:1]
  base_y = None if y is None else np.repeat(y[:1], TRAVERSAL_STEPS)
  rows = []
  for d, row_values in zip(order[:shown], values[:shown], strict=True):
    z = np.repeat(base, TRAVERSAL_STEPS, axis=0).astype(np.float32)
    z[:, d] = row_values
    rows.append(handle.decode(z, base_y))
  which = "" if shown == len(order) else f", the {shown} of {len(order)} dimensions"
  by = "KL" if handle.is_variational else "code std"
  return latent_figures.save_traversals(
    workdir / "traversals.png",
    np.stack(rows),
    steps if handle.is_variational else values[:shown],
    names[:shown],
    title=f"Latent traversals (rows by {by}{which}): {_title(handle)}",
    xlabel=swept + "; the others hold the first test image's code",
  )


def write_final_outputs(handle: TrainedModel, eval_set: data.ImageSet, workdir) -> list[str]:
  """Every figure and table that applies to this model; returns the names written."""
  workdir = epath.Path(workdir)
  written = []
  images, labels = eval_set.images, eval_set.labels
  if handle.num_classes and labels is None:
    return written
  # Latents of the whole split; the task's input for superres would be smaller, so encode the
  # clean images, which every model accepts.
  z_test = handle.encode(images, _labels_for(handle, labels))
  if handle.latent_dim == 2:
    written.append(latent_grid(handle, workdir, z_test).name)
  if labels is not None:
    written.append(
      latent_figures.save_latent_scatter(
        workdir / "latent_scatter.png",
        z_test,
        labels,
        method=handle.config.get("scatter_method", "pca"),
        latent_units=latent_units(handle),
        title=f"Test latents ({'posterior means' if handle.is_variational else 'codes'}): "
        f"{_title(handle)}",
      ).name
    )
  if len(images) >= 2:
    written.append(interpolation(handle, workdir, images, labels).name)
  written.append(latent_noise(handle, workdir, images, labels, z_test).name)
  written.append(traversals(handle, workdir, images, labels, z_test).name)
  if handle.num_classes:
    written.append(class_grid(handle, workdir).name)
  if handle.config.task.name in ("denoise", "superres"):
    task_metrics(handle, eval_set, workdir)
    written += ["task_metrics.json", "task_metrics.md"]
  if handle.config.task.name == "superres":
    written.append(superres_from_noise(handle, workdir).name)
  return written


def finalize(
  run_dir, eval_set: data.ImageSet | None = None, *, trust_model_code: bool = False
) -> list[str]:
  """After training: the final figures and task metrics of the run in `run_dir`.

  Restores the newest checkpoint; loads the evaluation split named by the
  run's config unless `eval_set` is given. Nothing is written when the
  config's `final_figures` is off. Returns the names written.
  """
  handle = api.load(run_dir, trust_model_code=trust_model_code)
  if not handle.config.get("final_figures", True):
    return []
  c = handle.config
  if eval_set is None:
    eval_set = data.load_split(c, c.data.eval_split, c.data.eval_limit)
  if c.data.name in data.SEQUENCE_SETS:  # Melodies: piano rolls, MIDI and audio, not images.
    written = melodies.write_final_outputs(handle, eval_set, run_dir)
  else:
    written = write_final_outputs(handle, eval_set, run_dir)
  # The final pictures also go to TensorBoard's Images tab, at the step they were drawn from.
  writer = metrics.MetricWriter(run_dir)
  pngs = {f"figures/{name.removesuffix('.png')}": name for name in written if name.endswith(".png")}
  writer.write_images(handle.step, {tag: epath.Path(run_dir) / n for tag, n in pngs.items()})
  writer.close()
  logging.info("Wrote %s", ", ".join(written))
  return written
