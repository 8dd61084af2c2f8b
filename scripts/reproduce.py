"""Runs experiments at full length and tabulates their final test metrics against the anchors.

  python scripts/reproduce.py --runs_dir=runs --only=lesson_conv_ae,flax_vae_parity

Each experiment runs as `python -m aejax.main` in RUNS_DIR/NAME (resuming if it
was interrupted); the table (Markdown) is printed and written to
RUNS_DIR/results.md with the device, the wall time and the command.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import time

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
  # Anything else (e.g. --config.seed=1) is passed to every run.
  args, overrides = parser.parse_known_args()
  runs_dir = pathlib.Path(args.runs_dir)
  runs_dir.mkdir(parents=True, exist_ok=True)

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
