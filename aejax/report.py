"""The sweep report: a table of mean ± std over seeds, CSVs, metric plots and contact sheets.

    python scripts/sweep.py --sweep_dir=DIR --report_only

`write_report(sweep_dir)` reads whatever runs exist in DIR (each a workdir
with config.json; its sweep_run.json names its overrides) and writes, without
training anything: report.md, results.csv (one row per configuration: mean
and standard deviation over seeds), runs.csv (one row per run), metrics.png
(each metric against the latent size, one line per configuration of the
other fields, error bars over seeds), reconstructions.png and samples.png
(one row per configuration) and, for 2-D latents, the manifold grid and the
test-set scatter of each configuration.
"""

import csv
import datetime
import json
import logging
import math
import pathlib
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
import optax

from aejax import (
  api,
  chorales,
  data,
  disentanglement,
  figures,
  latent_figures,
  models,
  music,
  parallel,
  steps,
  study_stats,
  sweep_grid,
  visualize,
)
from aejax import workdir as workdir_lib

REPORT_MD = "report.md"
RESULTS_CSV = "results.csv"
RUNS_CSV = "runs.csv"
METRICS_PNG = "metrics.png"
RECONSTRUCTIONS_PNG = "reconstructions.png"
SAMPLES_PNG = "samples.png"
DISENTANGLEMENT_PNG = "disentanglement.png"

# (key, title, digits): the table's columns, from eval_results.json except the last three.
METRICS = (
  ("nll", "test NLL (nats)", 2),
  ("elbo", "test ELBO (nats)", 2),
  ("recon", "reconstruction -log p(x|z) (nats)", 2),
  ("kl", "KL (nats)", 2),
  ("active_units", "active units", 1),
  ("bce_per_pixel", "reconstruction BCE per pixel", 4),
  ("mse", "reconstruction MSE per pixel", 4),
  # Melody runs (aejax/melodies.py): token accuracy, and the prior samples' distances.
  ("token_accuracy", "reconstruction token accuracy", 3),
  ("pitch_class_tv", "samples' pitch classes, TV to the test melodies", 3),
  ("note_length_tv", "samples' note lengths, TV to the test melodies", 3),
  ("linear_probe_accuracy", "linear-probe accuracy", 3),
  # Runs on a ground-truth data set (dSprites): aejax/disentanglement.py's scores.
  *((key, what, 2 if "(nats)" in what else 3) for key, what in disentanglement.SCORES),
  ("fid", "FID, prior samples", 2),
  ("fid_gmm", "FID, ex-post GMM samples", 2),
  ("fid_two_stage", "FID, two-stage VAE samples", 2),
  ("fid_reconstructions", "FID, reconstructions", 2),
  ("num_params", "parameters", 0),
  ("train_seconds", "training time (s)", 0),
  ("train_images_per_second", "training images/s", 0),
)
NUM_IMAGES = 10  # Columns of the contact sheets.
NUM_MELODIES = 4  # Phrases of a melody sweep's piano rolls, left to right.


def _read_json(path: pathlib.Path):
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def _read_jsonl(path: pathlib.Path) -> list[dict]:
  try:
    lines = path.read_text().splitlines()
  except OSError:
    return []
  out = []
  for line in lines:
    try:
      out.append(json.loads(line))
    except ValueError:
      pass  # A line cut short by a kill.
  return out


def count_parameters(config, image_shape) -> int:
  """Parameters of the run's model, from shapes alone (nothing is initialised or restored)."""
  model = models.build_model(config.model, tuple(image_shape))
  mesh = parallel.make_mesh(jax.local_devices()[:1])
  abstract = jax.eval_shape(
    lambda: steps.create_train_state(
      model, optax.identity(), tuple(image_shape), jax.random.key(0), mesh
    )
  )
  return steps.count_params(abstract.params)


def collect(sweep_dir: str | pathlib.Path) -> list[dict]:
  """One dict per run folder in sweep_dir: name, overrides, config, status, metrics."""

  sweep_dir = pathlib.Path(sweep_dir)
  record = _read_json(sweep_dir / sweep_grid.SWEEP_RECORD) or {}
  known = record.get("runs", {})
  order = {name: i for i, name in enumerate(known)}
  runs = []
  for workdir in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
    run_record = _read_json(workdir / sweep_grid.RUN_RECORD)
    saved = _read_json(workdir / workdir_lib.CONFIG_FILE) or (run_record or {}).get("config")
    if saved is None:
      continue  # Not a run (logs/), or nothing written yet.
    config = ml_collections.ConfigDict(saved)
    if run_record is not None:
      overrides = run_record["overrides"]
    elif workdir.name in known:
      overrides = known[workdir.name]
    else:
      overrides = sweep_grid.parse_name(workdir.name)
    results = _read_json(workdir / workdir_lib.EVAL_RESULTS_JSON) or {}
    results = {**results, **results.get("sample_statistics", {})}  # A melody run's, flat.
    final = _read_json(workdir / workdir_lib.FINAL_METRICS_FILE)
    info = _read_json(workdir / workdir_lib.RUN_INFO_FILE)
    if sweep_grid.is_finished(workdir, config):
      status = "finished"
    elif sweep_grid.is_trained(workdir, config):
      status = "trained, not evaluated"
    elif sweep_grid.latest_checkpoint(workdir) is not None:
      status = f"stopped at step {sweep_grid.latest_checkpoint(workdir)}"
    else:
      status = "not started"
    metrics = {}
    if status == "finished":
      metrics = {key: results.get(key) for key, _, _ in METRICS if key in results}
    attempts = _read_jsonl(workdir / sweep_grid.ATTEMPTS)
    train_attempts = [a for a in attempts if a.get("stage") == "train" and "seconds" in a]
    if train_attempts:
      # A vmapped group's wall time is shared: each of its members is charged its share.
      metrics["train_seconds"] = sum(a["seconds"] / len(a["group"]) for a in train_attempts)
      if final is not None and final.get("step") and metrics["train_seconds"] > 0:
        # Wall-clock throughput of the whole training attempt (compilation, evaluations and
        # checkpoints included), the member's share of its group's time.
        images = final["step"] * config.batch_size
        metrics["train_images_per_second"] = images / metrics["train_seconds"]
    if info is not None:
      try:
        metrics["num_params"] = count_parameters(config, info["image_shape"])
      except Exception as error:  # A report must not fail on one odd run.
        logging.warning("%s: cannot count parameters: %s", workdir, error)
    runs.append(
      {
        "name": workdir.name,
        "workdir": workdir,
        "overrides": overrides,
        "config": config,
        "status": status,
        "step": None if final is None else final.get("step"),
        "metrics": metrics,
        "results": results,
        "group_size": max([len(a["group"]) for a in train_attempts], default=1),
        "devices": sorted({a["device"] for a in attempts if a.get("device")}),
      }
    )
  runs.sort(key=lambda r: (order.get(r["name"], len(order)), r["name"]))
  return runs


def _config_key(run: dict) -> tuple:
  return tuple((k, json.dumps(v)) for k, v in run["overrides"].items() if k != "seed")


def aggregate(runs: Sequence[dict]) -> list[dict]:
  """One row per configuration (overrides without the seed): mean and std (ddof 1) over seeds."""
  short = sweep_grid.name_keys([r["overrides"] for r in runs])
  groups: dict[tuple, list[dict]] = {}
  for run in runs:
    groups.setdefault(_config_key(run), []).append(run)
  rows = []
  for members in groups.values():
    overrides = {k: v for k, v in members[0]["overrides"].items() if k != "seed"}
    label = ",".join(f"{short[k]}={sweep_grid.format_value(v)}" for k, v in overrides.items())
    row = {
      "configuration": label or "base",
      "overrides": overrides,
      "latent_dim": int(members[0]["config"].model.latent_dim),
      "runs": [r["name"] for r in members],
      "seeds": [r["overrides"].get("seed", r["config"].seed) for r in members],
      "finished": sum(r["status"] == "finished" for r in members),
    }
    for key, _, _ in METRICS:
      values = [r["metrics"][key] for r in members if r["metrics"].get(key) is not None]
      row[f"{key}_n"] = len(values)
      row[f"{key}_mean"] = float(np.mean(values)) if values else None
      row[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
    rows.append(row)
  return rows


def _fmt(mean, std, digits: int) -> str:
  if mean is None:
    return "–"
  text = f"{mean:,.{digits}f}"
  # No "± 0" for what cannot vary over seeds (parameters) or is shared (a vmapped group's time,
  # whose equal shares differ by rounding alone).
  if not std or std <= 1e-9 * abs(mean):
    return text
  # A spread smaller than the column's last digit keeps one significant digit, not "± 0".
  spread = f"{std:.{digits}f}" if round(std, digits) else f"{std:.1g}"
  return f"{text} ± {spread}"


def _columns(rows: Sequence[dict]) -> list[tuple[str, str, int]]:
  """The metric columns some configuration has a value for."""
  return [m for m in METRICS if any(row[f"{m[0]}_mean"] is not None for row in rows)]


def _write_csvs(sweep_dir: pathlib.Path, runs: Sequence[dict], rows: Sequence[dict]) -> None:
  fields = list(dict.fromkeys(k for row in rows for k in row["overrides"]))
  with (sweep_dir / RESULTS_CSV).open("w", newline="") as f:
    writer = csv.writer(f)
    metric_cols = [f"{key}_{stat}" for key, _, _ in METRICS for stat in ("mean", "std", "n")]
    writer.writerow(["configuration", *fields, "seeds", "finished", *metric_cols])
    for row in rows:
      seeds = " ".join(str(s) for s in row["seeds"])
      values = [row[c] if row[c] is not None else "" for c in metric_cols]
      overrides = [row["overrides"].get(k, "") for k in fields]
      writer.writerow([row["configuration"], *overrides, seeds, row["finished"], *values])
  run_fields = list(dict.fromkeys(k for run in runs for k in run["overrides"]))
  with (sweep_dir / RUNS_CSV).open("w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["run", *run_fields, "status", "step", *[key for key, _, _ in METRICS]])
    for run in runs:
      overrides = [run["overrides"].get(k, "") for k in run_fields]
      values = [run["metrics"].get(key, "") for key, _, _ in METRICS]
      values = ["" if v is None else v for v in values]
      writer.writerow([run["name"], *overrides, run["status"], run["step"] or "", *values])


def _series_label(row: dict) -> str:
  label = ",".join(
    f"{k.rsplit('.', 1)[-1]}={sweep_grid.format_value(v)}"
    for k, v in row["overrides"].items()
    if k != "model.latent_dim"
  )
  return label or "all runs"


def _plot_metrics(sweep_dir: pathlib.Path, rows: Sequence[dict], title: str) -> bool:
  columns = [m for m in _columns(rows) if m[0] != "num_params"]
  xs = sorted({row["latent_dim"] for row in rows})
  if not columns or len(xs) < 2:  # One latent size (a sweep over models or seeds): no x axis.
    return False
  panels, bars = {}, {}
  for key, name, _ in columns:
    panels[name], bars[name] = {}, {}
    for row in rows:
      series = _series_label(row)
      panels[name].setdefault(series, [math.nan] * len(xs))
      bars[name].setdefault(series, [math.nan] * len(xs))
      i = xs.index(row["latent_dim"])
      mean, std = row[f"{key}_mean"], row[f"{key}_std"]
      panels[name][series][i] = math.nan if mean is None else mean
      bars[name][series][i] = math.nan if std is None else std
  figures.save_line_plots(
    sweep_dir / METRICS_PNG,
    xs,
    panels,
    xlabel="latent size (log scale)",
    title=title,
    log_x=True,
    errors=bars,
  )
  return True


def _slug(label: str) -> str:
  return label.replace("=", "").replace(",", "_").replace(".", "p")


def _test_images(config, cache: dict, limit: int | None):
  """The run's evaluation split (first `limit` images), binarized once if it trains binarized."""
  key = (config.data.name, config.data.eval_split, config.data.source, config.data.data_dir, limit)
  if key not in cache:
    image_set = data.load(
      config.data.name,
      config.data.eval_split,
      limit=limit,
      source=config.data.source,
      data_dir=config.data.data_dir or None,
    )
    images = image_set.images
    if config.data.dynamic_binarization:
      # What the model was trained on: one fixed Bernoulli draw of each image.
      rng = np.random.default_rng(0)
      images = (rng.random(images.shape) < images).astype(np.float32)
    cache[key] = (images, image_set.labels)
  return cache[key]


def _contact_sheets(sweep_dir: pathlib.Path, runs: Sequence[dict], rows: Sequence[dict]) -> dict:
  """reconstructions.png, samples.png and the 2-D figures; returns what was written."""
  by_name = {run["name"]: run for run in runs}
  cache: dict = {}
  recon_rows, sample_rows, two_d, notes = {}, {}, [], []
  for row in rows:
    members = [by_name[n] for n in row["runs"] if by_name[n]["status"] == "finished"]
    if not members:
      continue
    run = min(members, key=lambda r: (r["config"].seed, r["name"]))  # The lowest seed.
    try:
      handle = api.load(run["workdir"])
    except Exception as error:  # A report must not fail on one odd run.
      notes.append(f"{run['name']}: not loadable ({error})")
      continue
    label = f"{row['configuration']}\n(seed {run['config'].seed})"
    if handle.is_sequence_model:
      # Melodies: piano rolls of the same test phrases and of prior samples, no image sheets.
      phrases, _ = _test_images(run["config"], cache, NUM_MELODIES)
      if not recon_rows:
        recon_rows["test phrases"] = chorales.melodies_of(phrases)
      recon_rows[label] = chorales.melodies_of(handle.reconstruct(phrases))
      if handle.can_generate:
        sample_rows[f"{label}, prior"] = chorales.melodies_of(handle.generate(NUM_MELODIES, seed=0))
      continue
    images, _ = _test_images(run["config"], cache, NUM_IMAGES)
    if not recon_rows:
      recon_rows["test images"] = images
    recon_rows[label] = handle.reconstruct(images)
    if handle.can_generate and not handle.num_classes:
      sample_rows[f"{label}, prior"] = handle.generate(NUM_IMAGES, seed=0)
    elif not handle.num_classes:
      # A model without a prior is sampled through a mixture fitted to its training codes.
      sample_rows[f"{label}, ex-post GMM"] = handle.generate(NUM_IMAGES, seed=0, sampler="gmm")
    if handle.is_variational and handle.latent_dim == 2 and not handle.num_classes:
      all_images, labels = _test_images(run["config"], cache, None)
      slug = _slug(row["configuration"])
      z = handle.encode(all_images)
      # visualize.latent_grid draws the run's usual latent_grid.png; renamed per configuration.
      visualize.latent_grid(handle, sweep_dir, z)
      grid = sweep_dir / f"latent_grid_{slug}.png"
      (sweep_dir / "latent_grid.png").replace(grid)
      scatter = latent_figures.save_latent_scatter(
        sweep_dir / f"latent_scatter_{slug}.png",
        z,
        labels,
        title=f"Test posterior means: {row['configuration']}, seed {run['config'].seed}",
        latent_units=visualize.latent_units(handle),
      )
      two_d.append((row["configuration"], grid.name, scatter.name))
  written = {"notes": notes, "two_d": two_d}
  melodies = recon_rows and not isinstance(next(iter(recon_rows.values())), np.ndarray)
  if melodies:
    title = "Reconstructions of the same test phrases (posterior mean), one row per configuration"
    music.piano_roll(sweep_dir / RECONSTRUCTIONS_PNG, recon_rows, title=title)
    written["reconstructions"] = RECONSTRUCTIONS_PNG
    if sample_rows:
      title = "Samples from the prior, one row per configuration"
      music.piano_roll(sweep_dir / SAMPLES_PNG, sample_rows, title=title)
      written["samples"] = SAMPLES_PNG
    return written
  if recon_rows:
    figures.save_reconstructions(
      sweep_dir / RECONSTRUCTIONS_PNG,
      recon_rows,
      title="Reconstructions of the same test images (posterior mean), one row per configuration",
      max_images=NUM_IMAGES,
    )
    written["reconstructions"] = RECONSTRUCTIONS_PNG
  if sample_rows:
    figures.save_reconstructions(
      sweep_dir / SAMPLES_PNG,
      sample_rows,
      title="Samples (decoder mean) from the prior, or from a Gaussian mixture fitted to the "
      "training codes where there is none",
      max_images=NUM_IMAGES,
    )
    written["samples"] = SAMPLES_PNG
  return written


def _settings_text(runs: Sequence[dict]) -> list[str]:
  """What the evaluation measured, from the runs' own eval_results.json."""
  results = [r["results"] for r in runs if r["status"] == "finished"]
  if not results:
    return []

  def values(key):
    return sorted({str(r.get(key)) for r in results if r.get(key) is not None})

  lines = [
    f"Evaluation (aejax.evaluate, {', '.join(values('split')) or 'test'} split, "
    f"{' / '.join(values('num_images'))} images): NLL = -L_k, the importance-weighted bound with "
    f"k = {' / '.join(values('nll_samples'))} samples (an upper bound on -log p(x)); ELBO with the "
    "analytic KL and a one-sample reconstruction term; active units have Var_x E[z_u|x] > 0.01; "
    f"the linear probe is fitted on the codes of {' / '.join(values('probe_train_size'))} "
    "training images. All in nats per image (summed over pixels)."
  ]
  notes = sorted({note for r in results for note in r.get("notes", [])})
  lines += [f"- {note}" for note in notes]
  return lines


# The files of a run that the report reads: when none is newer than report.md, it is up to date.
_INPUTS = (
  workdir_lib.CONFIG_FILE,
  workdir_lib.RUN_INFO_FILE,
  workdir_lib.FINAL_METRICS_FILE,
  workdir_lib.EVAL_RESULTS_JSON,
  sweep_grid.RUN_RECORD,
  sweep_grid.ATTEMPTS,
)


def is_up_to_date(sweep_dir: str | pathlib.Path) -> bool:
  """report.md exists and no run's results changed since it was written."""
  path = pathlib.Path(sweep_dir) / REPORT_MD
  if not path.is_file():
    return False
  written = path.stat().st_mtime
  for workdir in pathlib.Path(sweep_dir).iterdir():
    for name in _INPUTS:
      source = workdir / name
      if source.is_file() and source.stat().st_mtime > written:
        return False
  return True


def _subject(runs: Sequence[dict]) -> str:
  """ "dense_vae on mnist", or "15 models on mnist" for a sweep over model names."""
  models = list(dict.fromkeys(r["config"].model.name for r in runs))
  datasets = list(dict.fromkeys(r["config"].data.name for r in runs))
  what = models[0] if len(models) == 1 else f"{len(models)} models"
  return f"{what} on {', '.join(datasets)}"


def _disentanglement_section(
  sweep_dir: pathlib.Path, runs: Sequence[dict], rows: Sequence[dict], figures_too: bool
) -> list[str]:
  """The study's questions, for runs with disentanglement scores: seed spread, agreement, shares.

  Locatello et al. (2019) ask of every score how much the seed moves it, whether the scores
  agree on which models are better, and how much of a score is the model and its
  hyper-parameter rather than the seed (aejax/study_stats.py).
  """
  scored = [r for r in runs if r["status"] == "finished" and r["metrics"].get("mig") is not None]
  if not scored:
    return []
  keys = [k for k, _ in disentanglement.SCORES if any(k in r["metrics"] for r in scored)]
  label_of = {name: row["configuration"] for row in rows for name in row["runs"]}
  columns = {k: [r["metrics"].get(k, float("nan")) for r in scored] for k in keys}
  lines = ["## Disentanglement: seeds, agreement between the scores, variance shares", ""]
  if figures_too:
    panels = {}
    for key, what in disentanglement.SCORES:
      if key in keys:
        by_configuration = {}
        for run, value in zip(scored, columns[key], strict=True):
          by_configuration.setdefault(label_of[run["name"]], []).append(value)
        panels[what] = by_configuration
    figures.save_strip_plots(
      sweep_dir / DISENTANGLEMENT_PNG, panels,
      f"Disentanglement scores per configuration, one dot per seed ({len(scored)} runs)",
      ncols=4,
    )  # fmt: skip
    lines += [f"![disentanglement scores]({DISENTANGLEMENT_PNG})", ""]
  names, matrix, used = study_stats.spearman_matrix(columns)
  lines += [
    f"Spearman rank correlation between the scores over the {used} runs that have them all "
    "(1: they rank the runs alike; Locatello et al. 2019, Fig. 4):",
    "",
    "| | " + " | ".join(names) + " |",
    "|---|" + "---|" * len(names),
  ]
  for name, row in zip(names, matrix, strict=True):
    lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
  models_of = [r["config"].model.name for r in scored]
  configurations = [label_of[r["name"]] for r in scored]
  lines += [
    "",
    "Share of each score's variance over the runs that is the model, its hyper-parameters "
    "(within the model) and the seed (within a configuration): the nested sums of squares "
    "(aejax/study_stats.py), in percent:",
    "",
    "| score | model | hyper-parameters | seed | runs |",
    "|---|---|---|---|---|",
  ]
  for key in keys:
    shares = study_stats.variance_shares(columns[key], models_of, configurations)
    cells = [f"{100 * shares[k]:.0f}" for k in ("model", "hyperparameters", "seed")]
    lines.append(f"| {key} | " + " | ".join(cells) + f" | {shares['runs']} |")
  return lines + [""]


def write_report(sweep_dir: str | pathlib.Path, figures_too: bool = True) -> pathlib.Path:
  """Writes report.md, results.csv, runs.csv and the PNGs into sweep_dir; returns report.md."""
  sweep_dir = pathlib.Path(sweep_dir)
  runs = collect(sweep_dir)
  if not runs:
    raise FileNotFoundError(f"{sweep_dir}: no runs (folders with config.json) to report on")
  rows = aggregate(runs)
  _write_csvs(sweep_dir, runs, rows)
  record = _read_json(sweep_dir / sweep_grid.SWEEP_RECORD) or {}
  config_arg = record.get("config", "?")
  title = f"{config_arg}: {_subject(runs)}"
  plotted = figures_too and _plot_metrics(sweep_dir, rows, title)
  sheets = _contact_sheets(sweep_dir, runs, rows) if figures_too else {"notes": [], "two_d": []}

  finished = sum(r["status"] == "finished" for r in runs)
  commands = [c["command"] for c in record.get("commands", [])]
  devices = sorted({d for r in runs for d in r["devices"]})
  steps = sorted({r["step"] for r in runs if r["step"] is not None})
  lines = [
    f"# Sweep report: {title}",
    "",
    f"Written {datetime.datetime.now().isoformat(timespec='seconds')} from the runs in "
    f"`{sweep_dir}`: {len(runs)} runs, {finished} finished, in {len(rows)} configurations. "
    f"Training steps per run: {', '.join(map(str, steps)) or '–'}. "
    f"Devices: {', '.join(devices) or 'unknown'}.",
    "",
  ]
  if commands:
    lines += ["Made by:", "", f"    {commands[-1]}", ""]
  lines += [
    "Regenerate this report from the runs, without training:",
    "",
    f"    python scripts/sweep.py --sweep_dir={sweep_dir} --report_only",
    "",
    "## Results: mean ± standard deviation over seeds",
    "",
  ]
  columns = _columns(rows)
  fields = list(dict.fromkeys(k for row in rows for k in row["overrides"]))
  short = sweep_grid.name_keys([row["overrides"] for row in rows])
  header = [short.get(f, f) for f in fields] + ["seeds"]
  header += [name.replace("|", "\\|") for _, name, _ in columns]  # A | would end the cell.
  lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    cells = [
      sweep_grid.format_value(row["overrides"][f]) if f in row["overrides"] else "" for f in fields
    ]
    cells.append(f"{row['finished']} ({', '.join(map(str, row['seeds']))})")
    for key, _, digits in columns:
      cells.append(_fmt(row[f"{key}_mean"], row[f"{key}_std"], digits))
    lines.append("| " + " | ".join(cells) + " |")
  lines += [
    "",
    "Seeds: finished runs (their seeds). ± is the sample standard deviation over the finished "
    "seeds (none for one seed). Training time is the wall time of the training process "
    "(compilation and figures included); runs trained together as one vmapped program are "
    "charged an equal share of it. "
    f"Per configuration: [{RESULTS_CSV}]({RESULTS_CSV}); per run: [{RUNS_CSV}]({RUNS_CSV}).",
    "",
    *_settings_text(runs),
    "",
  ]
  if plotted:
    lines += ["## Metrics against latent size", "", f"![metrics]({METRICS_PNG})", ""]
  lines += _disentanglement_section(sweep_dir, runs, rows, figures_too)
  if sheets.get("reconstructions") or sheets.get("samples"):
    lines += ["## Reconstructions and samples (lowest seed of each configuration)", ""]
    for key in ("reconstructions", "samples"):
      if key in sheets:
        lines += [f"![{key}]({sheets[key]})", ""]
  if sheets["two_d"]:
    lines += ["## 2-D latents: the manifold grid and the test-set scatter", ""]
    for label, grid, scatter in sheets["two_d"]:
      lines += [
        f"**{label}**",
        "",
        f'<img src="{grid}" width="49%"> <img src="{scatter}" width="49%">',
        "",
      ]
  lines += ["## Runs", "", "| run | status | step | trained |", "|---|---|---|---|"]
  for run in runs:
    how = "alone" if run["group_size"] == 1 else f"vmapped x{run['group_size']}"
    lines.append(f"| {run['name']} | {run['status']} | {run['step'] or '–'} | {how} |")
  if sheets["notes"]:
    lines += ["", *[f"- {note}" for note in sheets["notes"]]]
  path = sweep_dir / REPORT_MD
  path.write_text("\n".join(lines) + "\n")
  return path
