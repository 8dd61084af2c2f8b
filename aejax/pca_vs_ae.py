"""PCA versus autoencoders at equal latent size: test reconstruction error and probe accuracy.

    python -m aejax.pca_vs_ae --config=experiments/pca_vs_ae.py[:tiny] --workdir=DIR \
      [--config.ae.num_epochs=N ...]

For each latent size d in config.latent_dims it trains the autoencoder
config.ae (latent_dim set to d) in DIR/ae_d{d} with train.train_and_evaluate,
which resumes or skips a run that is already there, fits PCA with d
components on the same training images, and compares both on the test split.
It writes DIR/pca_vs_ae.md (table and summary), .csv, .json and .png.
"""

import csv
import json
import logging
import math
import pathlib
import shlex
import sys
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags
from sklearn.decomposition import PCA

from aejax import api, configs, data, errors, figures, probes, runner, train
from aejax import workdir as workdir_lib

OUTPUT_NAME = "pca_vs_ae"
# Clipping of reconstructions for the BCE (losses.py's convention for probabilities).
_BCE_EPS = 1e-7
# Relative margins below this are called close in the summary: not a meaningful win.
_CLOSE_MARGIN = 0.01
COLUMNS = (
  "latent_dim",
  "ae_mse",
  "pca_mse",
  "ae_bce",
  "pca_bce",
  "ae_probe_acc",
  "pca_probe_acc",
  "winner_mse",
  "ae_step",
)


# ---------------------------------------------------------------------------
# Metrics.


def _flatten(images: np.ndarray) -> np.ndarray:
  return np.asarray(images, np.float64).reshape(len(images), -1)


def reconstruction_metrics(images: np.ndarray, reconstructions: np.ndarray) -> dict[str, float]:
  """Per-pixel test MSE and BCE of reconstructions, which are clipped to [0, 1] first.

  BCE = -mean(x log r + (1 - x) log(1 - r)) with r clipped to [1e-7, 1 - 1e-7], so
  that a linear reconstruction (PCA's) that hits 0 or 1 exactly stays finite.
  """
  x = _flatten(images)
  r = np.clip(_flatten(reconstructions), 0.0, 1.0)
  if x.shape != r.shape:
    raise ValueError(f"reconstructions: shape {r.shape} does not match images {x.shape}")
  p = np.clip(r, _BCE_EPS, 1.0 - _BCE_EPS)
  bce = -np.mean(x * np.log(p) + (1.0 - x) * np.log1p(-p))
  return {"mse": float(np.mean(np.square(r - x))), "bce": float(bce)}


def fit_pca(train_images: np.ndarray, latent_dim: int, seed: int = 0) -> PCA:
  """PCA with `latent_dim` components fitted on the flattened training images."""
  return PCA(n_components=latent_dim, random_state=seed).fit(_flatten(train_images))


def pca_codes(pca: PCA, images: np.ndarray) -> np.ndarray:
  """The (N, latent_dim) PCA components of images: the linear 'embedding'."""
  return pca.transform(_flatten(images))


def pca_reconstruct(pca: PCA, images: np.ndarray) -> np.ndarray:
  """Projection onto the principal subspace, in the images' shape (not clipped)."""
  flat = pca.inverse_transform(pca.transform(_flatten(images)))
  return flat.reshape(np.shape(images))


def pca_metrics(
  train_images: np.ndarray, test_images: np.ndarray, latent_dim: int, seed: int = 0
) -> dict[str, float]:
  """Test MSE and BCE per pixel of PCA with `latent_dim` components fitted on train_images."""
  pca = fit_pca(train_images, latent_dim, seed)
  return reconstruction_metrics(test_images, pca_reconstruct(pca, test_images))


# ---------------------------------------------------------------------------
# Config.


def ae_config(config: ml_collections.ConfigDict, latent_dim: int) -> ml_collections.ConfigDict:
  """The autoencoder config of one run: config.ae with model.latent_dim = latent_dim."""
  c = config.ae.copy_and_resolve_references()
  c.model.latent_dim = int(latent_dim)
  return c


def check_config(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """Checks the sweep's own fields and every run's config; returns the latent sizes."""
  dims = tuple(config.latent_dims)
  if not dims or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
    raise errors.ConfigError(f"config.latent_dims: expected positive integers, got {dims!r}")
  if len(set(dims)) != len(dims):
    raise errors.ConfigError(f"config.latent_dims: {dims!r} repeats a size")
  if not isinstance(config.probe_train_size, int) or config.probe_train_size < 2:
    raise errors.ConfigError(
      f"config.probe_train_size: must be an integer >= 2, got {config.probe_train_size!r}"
    )
  if config.ae.task.name != "reconstruct":
    raise errors.ConfigError(
      f"config.ae.task.name: PCA is compared with a plain autoencoder ('reconstruct'), "
      f"got {config.ae.task.name!r}"
    )
  num_devices = len(jax.devices())
  for d in dims:
    configs.validate(ae_config(config, d), num_devices)
  return dims


def check_data(
  dims: Sequence[int], train_set: data.ImageSet, test_set: data.ImageSet, data_field: str
) -> None:
  """PCA needs d <= min(images, pixels), and the probe needs labels."""
  num_train, num_features = len(train_set.images), math.prod(train_set.images.shape[1:])
  limit = min(num_train, num_features)
  too_big = [d for d in dims if d > limit]
  if too_big:
    raise errors.ConfigError(
      f"config.latent_dims: PCA of {train_set.name} has at most min({num_train} training "
      f"images, {num_features} pixels) = {limit} components; "
      f"{', '.join(map(str, too_big))} exceed it"
    )
  for image_set in (train_set, test_set):
    if image_set.labels is None:
      raise errors.ConfigError(
        f"{data_field}: {image_set.name}/{image_set.split} has no labels; the linear probe "
        "needs them"
      )


# ---------------------------------------------------------------------------
# The sweep.


def is_finished(cfg: ml_collections.ConfigDict, ae_dir: pathlib.Path, total_steps: int) -> bool:
  """Whether ae_dir holds a completed run of exactly cfg (anything else goes to the trainer)."""
  try:
    final = json.loads((ae_dir / workdir_lib.FINAL_METRICS_FILE).read_text())
    saved = (ae_dir / workdir_lib.CONFIG_FILE).read_text()
  except (OSError, ValueError):
    return False
  # The trainer writes config.json this way; any changed field means resume or retrain.
  same_config = saved == cfg.to_json_best_effort(indent=2) + "\n"
  has_checkpoint = (ae_dir / workdir_lib.CHECKPOINTS_DIR / str(total_steps)).is_dir()
  return same_config and has_checkpoint and final.get("step") == total_steps


def run(
  config: ml_collections.ConfigDict, workdir: str | pathlib.Path, command: str | None = None
) -> list[dict]:
  """Trains (or reuses) one autoencoder per latent size, compares it with PCA, writes the report.

  Returns one dict per latent size with the keys of COLUMNS. `command` (the
  command line that ran this) goes into the report's header.
  """
  workdir = pathlib.Path(workdir)
  dims = check_config(config)
  first = ae_config(config, dims[0])
  train_set = data.load_split(first, first.data.train_split, first.data.train_limit)
  test_set = data.load_split(first, first.data.eval_split, first.data.eval_limit)
  check_data(dims, train_set, test_set, "config.ae.data.name")
  num_train = len(train_set.images)
  probe_n = min(config.probe_train_size, num_train)
  probe_images, probe_labels = train_set.images[:probe_n], train_set.labels[:probe_n]
  expected_steps = configs.step_counts(first, num_train).total_steps

  rows = []
  for d in dims:
    ae_dir = workdir / f"ae_d{d}"
    logging.info("latent size %d: autoencoder in %s", d, ae_dir)
    cfg = ae_config(config, d)
    if is_finished(cfg, ae_dir, expected_steps):
      # Re-entering the trainer would still rebuild and compile the train state (seconds on a
      # CPU) only to find nothing left to do.
      logging.info("%s: already trained for %d steps with this config", ae_dir, expected_steps)
    else:
      train.train_and_evaluate(cfg, str(ae_dir))
    handle = api.load(ae_dir)
    if handle.step != expected_steps:
      logging.warning(
        "%s holds a checkpoint at step %d, not %d: it was trained with another config; "
        "delete it to retrain",
        ae_dir,
        handle.step,
        expected_steps,
      )
    # decode(encode(x)) is handle.reconstruct(x); the codes are kept for the probe.
    test_codes = handle.encode(test_set.images)
    ae = reconstruction_metrics(test_set.images, handle.decode(test_codes))
    ae_acc = probes.linear_probe_accuracy(
      handle.encode(probe_images), probe_labels, test_codes, test_set.labels, config.seed
    )

    pca = fit_pca(train_set.images, d, config.seed)
    pc = reconstruction_metrics(test_set.images, pca_reconstruct(pca, test_set.images))
    pca_acc = probes.linear_probe_accuracy(
      pca_codes(pca, probe_images),
      probe_labels,
      pca_codes(pca, test_set.images),
      test_set.labels,
      config.seed,
    )
    row = {
      "latent_dim": d,
      "ae_mse": ae["mse"],
      "pca_mse": pc["mse"],
      "ae_bce": ae["bce"],
      "pca_bce": pc["bce"],
      "ae_probe_acc": ae_acc,
      "pca_probe_acc": pca_acc,
      "winner_mse": _winner(ae["mse"], pc["mse"], lower_is_better=True),
      "ae_step": handle.step,
    }
    rows.append(row)
    logging.info(
      "d=%d: MSE AE %.5f PCA %.5f | BCE AE %.4f PCA %.4f | probe AE %.3f PCA %.3f",
      d,
      row["ae_mse"],
      row["pca_mse"],
      row["ae_bce"],
      row["pca_bce"],
      ae_acc,
      pca_acc,
    )
    # Written after every size so a long sweep shows its results as they come.
    info = _run_info(config, train_set, test_set, probe_n, expected_steps, command, len(dims))
    write_report(workdir, rows, info)
  return rows


def _winner(ae: float, pca: float, lower_is_better: bool) -> str:
  if ae == pca:
    return "tie"
  return "AE" if (ae < pca) == lower_is_better else "PCA"


def _run_info(config, train_set, test_set, probe_n, steps, command, num_dims) -> dict:
  ae = config.ae
  return {
    "data": train_set.name,
    "source": train_set.source,
    "image_shape": list(train_set.images.shape[1:]),
    "num_train": len(train_set.images),
    "num_test": len(test_set.images),
    "probe_train_size": probe_n,
    "model": ae.model.name,
    "conv_channels": list(ae.model.conv_channels),
    "batch_size": ae.batch_size,
    "total_steps": steps,
    # total_steps may override num_epochs (tiny runs), so the epochs are derived from the steps.
    "epochs": steps / (len(train_set.images) // ae.batch_size),
    "num_latent_dims": num_dims,
    "command": command,
    "config": json.loads(config.to_json_best_effort()),
  }


# ---------------------------------------------------------------------------
# The report.


def _dims_text(dims: Sequence[int]) -> str:
  return ", ".join(str(d) for d in dims)


def _compare(rows: Sequence[dict], key: str, name: str, lower_is_better: bool) -> str:
  """One sentence: at which sizes each side wins on one metric, and by how much at most."""
  wins: dict[str, list[int]] = {"AE": [], "PCA": []}
  margins = {"AE": 0.0, "PCA": 0.0}
  close = []
  for r in rows:
    ae, pca = r[f"ae_{key}"], r[f"pca_{key}"]
    # Losses: relative to the larger value; accuracies: absolute, in points.
    margin = abs(ae - pca) / max(ae, pca) if lower_is_better else abs(ae - pca)
    winner = _winner(ae, pca, lower_is_better)
    if winner in wins:
      wins[winner].append(r["latent_dim"])
      margins[winner] = max(margins[winner], margin)
    if margin < _CLOSE_MARGIN:
      close.append(r["latent_dim"])

  parts = []
  for side, who in (("AE", "the autoencoder"), ("PCA", "PCA")):
    if wins[side]:
      if lower_is_better:
        by = f"{name} up to {margins[side]:.0%} lower"
      else:
        by = f"up to {100 * margins[side]:.1f} points higher"
      parts.append(f"{who} wins at d = {_dims_text(wins[side])} ({by})")
  text = f"By {name}, " + (" and ".join(parts) or "the two tie everywhere")
  if close:
    unit = "1%" if lower_is_better else "1 point"
    text += f"; the two are within {unit} of each other at d = {_dims_text(close)}"
  return text + "."


def summarize(rows: Sequence[dict], training_text: str) -> str:
  """One paragraph, generated from the numbers: where the autoencoder wins and where PCA does."""
  sentences = [
    _compare(rows, "mse", "MSE", lower_is_better=True),
    _compare(rows, "bce", "BCE", lower_is_better=True),
    _compare(rows, "probe_acc", "linear-probe accuracy", lower_is_better=False),
  ]
  mse_ae = [r["latent_dim"] for r in rows if r["winner_mse"] == "AE"]
  if len(mse_ae) == len(rows):
    verdict = "The lesson's claim holds at every latent size measured here"
  elif not mse_ae:
    verdict = "The lesson's claim does not hold here: PCA reconstructs better at every size"
  else:
    verdict = f"The lesson's claim holds here only at d = {_dims_text(mse_ae)}"
  sentences.append(
    f"{verdict}. PCA is the best linear code for squared error on its training images; the "
    f"autoencoders' numbers depend on their training ({training_text}, one seed per size)."
  )
  return " ".join(sentences)


def _table(rows: Sequence[dict]) -> list[str]:
  lines = [
    "| latent dim | AE MSE | PCA MSE | AE BCE | PCA BCE | AE probe acc | PCA probe acc "
    "| winner (MSE) |",
    "|---:|---:|---:|---:|---:|---:|---:|:---:|",
  ]
  for r in rows:
    lines.append(
      f"| {r['latent_dim']} | {r['ae_mse']:.5f} | {r['pca_mse']:.5f} | {r['ae_bce']:.4f} "
      f"| {r['pca_bce']:.4f} | {r['ae_probe_acc']:.3f} | {r['pca_probe_acc']:.3f} "
      f"| {r['winner_mse']} |"
    )
  return lines


def render_markdown(rows: Sequence[dict], info: dict) -> str:
  steps = sorted({r["ae_step"] for r in rows})
  training_text = (
    f"{info['total_steps']} steps of batch {info['batch_size']}, {info['epochs']:.3g} epochs"
  )
  if steps != [info["total_steps"]]:
    training_text += f"; but checkpoints found at steps {', '.join(map(str, steps))}"
  shape = "x".join(map(str, info["image_shape"]))
  command = info["command"] or (
    "aejax.pca_vs_ae.run() from Python; CLI equivalent: python -m aejax.pca_vs_ae "
    "--config=experiments/pca_vs_ae.py --workdir=DIR plus the overrides in pca_vs_ae.json"
  )
  header = (
    f"Data set {info['data']} ({info['source']}, {shape}): {info['num_test']} test images; "
    f"PCA fitted on {info['num_train']} training images; autoencoder {info['model']} "
    f"(conv channels {tuple(info['conv_channels'])}) trained {training_text} per latent size; "
    f"linear probe fitted on {info['probe_train_size']} training embeddings. "
    f"Command: `{command}`"
  )
  lines = ["# PCA versus autoencoder at equal latent size", "", header, ""]
  if len(rows) < info["num_latent_dims"]:
    lines += [f"Partial: {len(rows)} of {info['num_latent_dims']} latent sizes done.", ""]
  lines += _table(rows)
  lines += [
    "",
    "MSE and BCE are per pixel on the test images (reconstructions clipped to [0, 1]; BCE "
    "clipped to [1e-7, 1 - 1e-7]); probe accuracy is a standardized logistic regression on "
    "the codes.",
    "",
    summarize(rows, training_text),
    "",
  ]
  return "\n".join(lines)


def write_report(workdir: pathlib.Path, rows: Sequence[dict], info: dict) -> None:
  """Writes pca_vs_ae.md, .csv, .json and .png into workdir."""
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / f"{OUTPUT_NAME}.md").write_text(render_markdown(rows, info))
  with (workdir / f"{OUTPUT_NAME}.csv").open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
  (workdir / f"{OUTPUT_NAME}.json").write_text(
    json.dumps({**info, "rows": list(rows)}, indent=2) + "\n"
  )
  dims = [r["latent_dim"] for r in rows]

  def series(key: str) -> dict[str, list[float]]:
    return {"autoencoder": [r[f"ae_{key}"] for r in rows], "PCA": [r[f"pca_{key}"] for r in rows]}

  figures.save_line_plots(
    workdir / f"{OUTPUT_NAME}.png",
    dims,
    {
      "MSE per pixel (test)": series("mse"),
      "BCE per pixel (test)": series("bce"),
      "linear-probe accuracy (test)": series("probe_acc"),
    },
    xlabel="latent dimension d",
    title=f"PCA vs {info['model']} autoencoder on {info['data']}",
    log_x=True,
  )


# ---------------------------------------------------------------------------
# Command line.


def _define_flags() -> None:
  # Defined on use, not at import: aejax.main defines the same names, and both modules may be
  # imported into one process (tests).
  flags.DEFINE_string("workdir", None, "Directory for the autoencoder runs and the report.")
  config_flags.DEFINE_config_file(
    "config", None, "Sweep config, e.g. experiments/pca_vs_ae.py:tiny.", lock_config=True
  )
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  runner.setup_logging()
  typed = _typed_argv or sys.argv  # main() run without cli(): nothing was resolved.
  command = "python -m aejax.pca_vs_ae " + shlex.join(typed[1:])
  config_arg = configs.config_flag_value(typed) or ""

  def work():
    configs.check_command(
      flags.FLAGS.config, configs.PCA_VS_AE_COMMAND, configs.PCA_VS_AE_COMMAND, config_arg
    )
    _print_table(run(flags.FLAGS.config, flags.FLAGS.workdir, command=command))

  runner.run(work)


def _print_table(rows) -> None:
  print("\n".join(_table(rows)))


_typed_argv: list[str] = []  # The command line as typed, for the report and error messages.


def cli() -> None:
  _define_flags()
  _typed_argv[:] = sys.argv
  # experiments/NAME.py from any folder: the copy installed with aejax stands in.
  sys.argv = configs.resolve_experiment_args(sys.argv)
  app.run(main)


if __name__ == "__main__":
  cli()
