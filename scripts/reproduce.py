"""Runs experiments at full length and tabulates their final test metrics against the anchors.

  python scripts/reproduce.py --runs_dir=runs --only=lesson_conv_ae,flax_vae_parity
  python scripts/reproduce.py --zoo --runs_dir=runs --seeds=0,1,2 [--steps=N] [--eval_limit=N]
  python scripts/reproduce.py --burda --runs_dir=runs --seeds=0 [--steps=N] [--eval_limit=N]

Each experiment runs as `python -m aejax.main` in RUNS_DIR/NAME (resuming if it
was interrupted); the table (Markdown) is printed and written to
RUNS_DIR/results.md with the device, the wall time and the command.

With --zoo it reproduces the model zoo's published test NLLs instead (ZOO_ROWS):
each row is a seed sweep (scripts/sweep.py, the seeds trained as one vmapped
program) of its experiment in RUNS_DIR/zoo/ROW, evaluated with the row's number
of importance samples, and the table (RUNS_DIR/zoo_results.md) gives the
published value next to the measured mean +- std over seeds, with the fraction
of the paper's training run that was used (--steps shortens every run to N
steps; 0 runs the full protocol).

With --burda it reproduces Burda et al.'s Table 1 for one stochastic layer
instead (BURDA_ROWS: the k-sample VAE and IWAE objectives for k = 1, 5, 50, 3,280
passes at batch 20, test NLL -L_5000), in RUNS_DIR/burda/ROW and
RUNS_DIR/burda_results.md, in the same form. With --population the six rows (times
the seeds) train as one program instead: one sweep of experiments/burda_table.py
with --vmap_shapes (aejax/padding.py: every member padded to k = 50),
in RUNS_DIR/burda/population; the rows' wall time is then the sweep's, shared.
"""

import argparse
import dataclasses
import json
import pathlib
import subprocess
import sys
import time

import numpy as np

from aejax import configs, sweep_grid

ROOT = pathlib.Path(__file__).resolve().parent.parent

# The published number each experiment is measured against (see docs/results.md).
ANCHORS = {
  "lesson_conv_ae": ("eval/bce_per_pixel", 0.0953, "lesson notebook, 25 epochs"),
  "denoise": ("eval/bce_per_pixel", 0.1398, "lesson notebook"),
  "superres": ("eval/bce_per_pixel", 0.0955, "lesson notebook, 14->28"),
  "flax_vae_parity": ("eval/neg_elbo", 104.0, "flax examples/vae, 10 epochs"),
  "lesson_vae": ("eval/mse_per_pixel", None, "lesson's loss not comparable"),
  "conv_vae": ("eval/neg_elbo", None, "no published anchor"),
  "quickstart": ("eval/neg_elbo", None, "no published anchor"),
}


@dataclasses.dataclass(frozen=True)
class PublishedRow:
  """A published test NLL (nats, lower is better) and the experiment that reproduces it."""

  label: str
  experiment: str  # experiments/<experiment>, with its config argument after ":".
  published: float
  source: str  # Paper, table and row (and Pythae's own measurement, where it made one).
  protocol: str  # Data, binarisation, network, k of the NLL.
  nll_samples: int = 5000
  num_train: int = 60_000  # Training images, for the paper's run length in steps.


ZOO_ROWS = (
  PublishedRow(
    "VAE 784-400-40", "pythae_vae.py", 89.90,
    "Rezende & Mohamed 2015, Table 2, diagonal-covariance DLGM, as cited by Pythae's "
    "reproducibility table (recalled, unchecked); Pythae measured 89.78",
    "fixed binarization (50,000 train), dense 784-400-40 ReLU, L_200",
    nll_samples=200, num_train=50_000,
  ),
  PublishedRow(
    "VAE + VampPrior (K=500)", "zoo/vamp_vae.py", 85.57,
    "Tomczak & Welling 2018, MNIST results table, VAE (L=1) + VampPrior (recalled, unchecked); "
    "Pythae measured 85.79",
    "dynamic binarization, gated MLPs 300-300, latent 40, L_5000",
  ),
  PublishedRow(
    "two-layer VAE + VampPrior on z2", "zoo/two_layer_vae.py:vamp", 83.19,
    "Tomczak & Welling 2018, HVAE (L=2) + VampPrior (recalled, unchecked; their two-layer "
    "network differs from Burda's)",
    "dynamic binarization, Burda's 784-(200-200)-100-(100-100)-50, L_5000",
  ),
  PublishedRow(
    "IWAE k=50, two stochastic layers", "zoo/two_layer_vae.py:iwae,k50", 82.90,
    "Burda et al. 2016, Table 1, MNIST, 2 stochastic layers, IWAE k=50",
    "dynamic binarization, 784-(200-200)-100-(100-100)-50, L_5000",
  ),
  PublishedRow(
    "IWAE k=50, one layer, fixed binarization", "iwae_burda.py:iwae,k50,fixed", 87.10,
    "Burda et al. 2016, Appendix D (Larochelle's binarization), IWAE k=50; Pythae measured 86.82",
    "fixed binarization (50,000 train), 784-200-200-50, L_5000", num_train=50_000,
  ),
  PublishedRow(
    "MIWAE (M=8, K=8)", "zoo/miwae.py", 84.97,
    "Rainforth et al. 2018 as cited by Pythae's reproducibility table; Pythae measured 85.09",
    "dynamic binarization, 784-200-200-50, L_5000",
  ),
  PublishedRow(
    "PIWAE (M=8, K=8)", "zoo/piwae.py", 84.46,
    "Rainforth et al. 2018 as cited by Pythae's reproducibility table; Pythae measured 84.58",
    "dynamic binarization, 784-200-200-50, L_5000",
  ),
  PublishedRow(
    "CIWAE (beta=0.05)", "zoo/ciwae.py:beta005", 84.57,
    "Rainforth et al. 2018 as cited by Pythae's reproducibility table; Pythae measured 84.74",
    "dynamic binarization, 784-200-200-50, L_5000",
  ),
)  # fmt: skip

# Burda, Grosse & Salakhutdinov (2016), Table 1, MNIST, one stochastic layer: test -log p(x)
# estimated with L_5000, for the k-sample VAE objective and the IWAE bound.
_BURDA_TABLE_1 = {("vae", 1): 86.76, ("vae", 5): 86.47, ("vae", 50): 86.35,
                  ("iwae", 1): 86.76, ("iwae", 5): 85.54, ("iwae", 50): 84.78}  # fmt: skip
BURDA_ROWS = tuple(
  PublishedRow(
    f"{objective.upper()} k={k}",
    f"iwae_burda.py:{objective},k{k}",
    published,
    f"Burda et al. 2016, Table 1, MNIST, 1 stochastic layer, {objective.upper()} k={k}",
    "dynamic binarization, 784-200-200-50 tanh, batch 20, 3,280 passes, L_5000",
  )  # fmt: skip
  for (objective, k), published in _BURDA_TABLE_1.items()
)
# --zoo and --burda: the rows, and the folder and results file of each table.
TABLES = {
  "zoo": (ZOO_ROWS, "zoo", "zoo_results.md"),
  "burda": (BURDA_ROWS, "burda", "burda_results.md"),
}


def _slug(row: PublishedRow) -> str:
  return row.experiment.replace("zoo/", "").replace(".py", "").replace(":", "_").replace(",", "_")


def paper_steps(row: PublishedRow) -> int:
  """The optimizer steps of the row's full protocol (its experiment without `cpu`/`tiny`)."""
  path, _, arg = row.experiment.partition(":")
  module, _ = sweep_grid.load_config_module(str(ROOT / "experiments" / path))
  config = module.get_config(arg or None)
  return configs.step_counts(config, row.num_train).total_steps


def read_seed_results(sweep_dir: pathlib.Path, objective: tuple[str, int] | None = None) -> list:
  """Each finished run's test NLL and step, from its eval_results.json; with `objective`
  (objective.name, objective.num_samples) only the runs trained with it."""
  found = []
  for path in sorted(sweep_dir.glob("*/eval_results.json")):
    results = json.loads(path.read_text())
    if objective is not None:
      config = json.loads((path.parent / "config.json").read_text())["objective"]
      if (config["name"], config["num_samples"]) != objective:
        continue
    if "nll" in results:
      found.append({"run": path.parent.name, "nll": results["nll"], "step": results["step"]})
  return found


def burda_objective(row: PublishedRow) -> tuple[str, int]:
  """A Table 1 row's (objective.name, objective.num_samples), from its experiment argument."""
  words = row.experiment.partition(":")[2].split(",")
  k = next((int(w[1:]) for w in words if w in ("k1", "k5", "k50")), 1)
  return ("iwae" if "iwae" in words else "elbo", k)


def zoo_table_row(row: PublishedRow, seeds: list[dict], full_steps: int) -> str:
  """One Markdown row: published vs measured mean +- std (sample std over seeds) and the share
  of the paper's run that was trained."""
  if not seeds:
    return f"| {row.label} | {row.published:.2f} | not measured | | | {row.protocol} |"
  nll = np.array([s["nll"] for s in seeds], np.float64)
  spread = f" ± {nll.std(ddof=1):.2f}" if len(nll) > 1 else ""
  steps = min(s["step"] for s in seeds)
  return (
    f"| {row.label} | {row.published:.2f} | {nll.mean():.2f}{spread} (n={len(nll)}) "
    f"| {nll.mean() - row.published:+.2f} | {steps:,} of {full_steps:,} ({steps / full_steps:.2%}) "
    f"| {row.protocol} |"
  )


ZOO_HEADER = (
  "| model | published NLL | measured NLL, mean ± std over seeds | gap | steps trained "
  "(of the paper's) | protocol | wall time |\n|---|---|---|---|---|---|---|"
)


def _sweep_command(args, experiment: str, sweep_dir, nll_samples: int, overrides) -> list[str]:
  command = [
    sys.executable, "scripts/sweep.py", f"--config=experiments/{experiment}",
    f"--sweep_dir={sweep_dir}", f"--seeds={args.seeds}", f"--nll_samples={nll_samples}",
    f"--eval_limit={args.eval_limit}", "--probe_train_size=0", *overrides,
  ]  # fmt: skip
  if args.steps:
    command += [f"--config.total_steps={args.steps}", f"--config.eval_every_steps={args.steps}"]
    command += [f"--config.checkpoint_every_steps={args.steps}"]
  return command


def reproduce_published(args, overrides, table: str) -> None:
  """Each row of TABLES[table] as a seed sweep (with args.population, --burda's rows as one
  sweep trained as one program), then its table of published vs measured NLLs."""
  published_rows, folder, results_file = TABLES[table]
  runs_dir = pathlib.Path(args.runs_dir)
  rows, started = [], time.perf_counter()
  population = None  # --population: (its sweep folder, exit code, seconds), run once.
  if args.population:
    if table != "burda":
      raise SystemExit("--population: only --burda's rows differ in shape alone (objective, k)")
    sweep_dir = runs_dir / folder / "population"
    members = len(published_rows) * len(args.seeds.split(","))
    command = _sweep_command(args, "burda_table.py", sweep_dir, 5000, overrides)
    command += ["--vmap_shapes", f"--max_group={members}"]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT)
    population = (sweep_dir, result.returncode, time.perf_counter() - start)
  for row in published_rows:
    if args.only_rows and _slug(row) not in args.only_rows.split(","):
      continue
    if population is not None:
      sweep_dir, returncode, seconds = population
      seeds = read_seed_results(sweep_dir, burda_objective(row))
    else:
      sweep_dir = runs_dir / folder / _slug(row)
      command = _sweep_command(args, row.experiment, sweep_dir, row.nll_samples, overrides)
      start = time.perf_counter()
      returncode = subprocess.run(command, cwd=ROOT).returncode
      seconds = time.perf_counter() - start
      seeds = read_seed_results(sweep_dir)
    line = zoo_table_row(row, seeds, paper_steps(row))
    if returncode != 0:
      line = f"| {row.label} | {row.published:.2f} | failed (exit {returncode}) | | | |"
    shared = f" (one program for all {len(published_rows)} rows)" if population else ""
    rows.append(f"{line} {seconds:.0f} s{shared} |")
    print(line, f"({seconds:.0f} s)", flush=True)
  import jax  # For the device line only.

  table = "\n".join(
    [
      f"Device: {jax.device_count()} x {jax.devices()[0].device_kind}; "
      f"{time.perf_counter() - started:.0f} s in all. "
      f"Command: python scripts/reproduce.py {' '.join(sys.argv[1:])}",
      "",
      ZOO_HEADER,
      *rows,
      "",
      "Sources:",
      *[f"- {row.label}: {row.source}" for row in published_rows],
    ]
  )
  (runs_dir / results_file).write_text(table + "\n")
  print(table)


def _write_table(runs_dir: pathlib.Path, device: str, rows: list[str]) -> str:
  table = "\n".join(
    [
      f"Device: {device}. Command: python scripts/reproduce.py {' '.join(sys.argv[1:])}",
      "",
      "| experiment | measured (test split) | anchor | | steps | wall time |",
      "|---|---|---|---|---|---|",
      *rows,
    ]
  )
  (runs_dir / "results.md").write_text(table + "\n")
  return table


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs_dir", default="runs")
  parser.add_argument("--only", default=",".join(ANCHORS), help="comma-separated experiments")
  parser.add_argument("--zoo", action="store_true", help="the zoo's published NLLs (ZOO_ROWS)")
  parser.add_argument("--burda", action="store_true", help="Burda et al.'s Table 1 (BURDA_ROWS)")
  parser.add_argument("--only_rows", default="", help="--zoo/--burda: comma-separated row names")
  parser.add_argument("--seeds", default="0,1,2", help="--zoo/--burda: the seeds of every row")
  parser.add_argument("--steps", type=int, default=0, help="--zoo/--burda: > 0 shortens each run")
  parser.add_argument(
    "--population", action="store_true", help="--burda: the six rows trained as one program"
  )
  parser.add_argument(
    "--eval_limit", type=int, default=0, help="--zoo/--burda: > 0: the first N test images"
  )
  # Anything else (e.g. --config.seed=1) is passed to every run.
  args, overrides = parser.parse_known_args()
  runs_dir = pathlib.Path(args.runs_dir)
  runs_dir.mkdir(parents=True, exist_ok=True)
  if args.zoo or args.burda:
    reproduce_published(args, overrides, "zoo" if args.zoo else "burda")
    return

  import jax  # After argument parsing: importing jax takes a moment.

  device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
  rows = []
  for name in [n for n in args.only.split(",") if n]:
    command = [
      sys.executable,
      "-m",
      "aejax.main",
      f"--config=experiments/{name}.py",
      f"--workdir={runs_dir / name}",
      "--config.progress_bar=False",
      *overrides,
    ]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT)
    seconds = time.perf_counter() - start
    metrics_path = runs_dir / name / "final_metrics.json"
    if result.returncode != 0 or not metrics_path.exists():
      rows.append(f"| {name} | failed (exit {result.returncode}) | | | | |")
      _write_table(runs_dir, device, rows)
      continue
    metrics = json.loads(metrics_path.read_text())
    key, anchor, source = ANCHORS.get(name, ("eval/loss", None, ""))
    value = metrics[key]
    verdict = "" if anchor is None else ("meets" if value <= anchor else "misses")
    rows.append(
      f"| {name} | {key} = {value:.4f} | {anchor if anchor is not None else '-'} ({source}) "
      f"| {verdict} | {metrics['step']} | {seconds:.0f} s |"
    )
    print(rows[-1], flush=True)
    _write_table(runs_dir, device, rows)  # After every run, so a cut-short batch keeps its rows.

  print(_write_table(runs_dir, device, rows))


if __name__ == "__main__":
  main()
