"""What a sweep runs in each subprocess: train one run (or a vmapped group of seeds), then evaluate.

    python -m aejax.sweep_worker --run_dir=DIR [--run_dir=DIR2 ...] [--nll_samples=500] ...

aejax.sweep starts it; each DIR holds sweep_run.json, the run's resolved
config. A run not yet trained to its last step is trained
(train.train_population: several runs at once when they differ only in seed,
beta or learning rate), resuming from its checkpoints, and its final figures
drawn (visualize.finalize); a run without an evaluation of that step is
then evaluated (aejax.evaluate). Each attempt is appended to the run's
sweep_attempts.jsonl with its wall time. A lock on each workdir keeps two
processes from ever working in one (a rerun of a killed sweep waits for the
old worker, which the sweep's death told to checkpoint and stop).
"""

import fcntl
import inspect
import json
import logging
import pathlib
import signal
import time
from collections.abc import Sequence

import jax
import ml_collections
from absl import app, flags

from aejax import (
  accelerators,
  compilation,
  disentanglement,
  errors,
  evaluate,
  metrics,
  runner,
  sweep_grid,
  train,
  visualize,
)


def _lock(workdir: pathlib.Path):
  """Holds workdir's lock file until this process exits (the kernel drops it even on kill -9)."""
  handle = (workdir / sweep_grid.LOCK_FILE).open("a")
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    logging.warning("%s: another process works there; waiting for it to finish", workdir)
    fcntl.flock(handle, fcntl.LOCK_EX)
  return handle


def _record(workdirs: Sequence[pathlib.Path], **record) -> None:
  for workdir in workdirs:
    sweep_grid.append_jsonl(workdir / sweep_grid.ATTEMPTS, {"time": sweep_grid.now_iso(), **record})


def _exit_on_signal(signum, frame):
  del frame
  # Evaluation holds no state worth saving: eval_results.json is written whole or not at all.
  raise SystemExit(128 + signum)


def work(
  workdirs: Sequence[str | pathlib.Path],
  *,
  nll_samples: int,
  eval_limit: int = 0,
  probe_train_size: int = 10000,
  fid: bool = False,
  disentanglement_points: int = disentanglement.NUM_TRAIN,
) -> None:
  """Trains and evaluates the runs of `workdirs` (each with its sweep_run.json) that need it."""
  dirs = [pathlib.Path(w) for w in workdirs]
  locks = [_lock(d) for d in dirs]
  # The config as the sweep resolved it; the JSON round trip is the one config.json makes.
  configs = [
    ml_collections.ConfigDict(json.loads((d / sweep_grid.RUN_RECORD).read_text())["config"])
    for d in dirs
  ]
  device = jax.devices()[0].device_kind
  names = [d.name for d in dirs]

  untrained = [i for i in range(len(dirs)) if not sweep_grid.is_trained(dirs[i], configs[i])]
  if untrained:
    group = [dirs[i] for i in untrained]
    start_step = sweep_grid.latest_checkpoint(group[0]) or 0
    started = time.perf_counter()
    attempt = dict(stage="train", group=[d.name for d in group], device=device)
    attempt["from_step"] = start_step
    try:
      train.train_population([configs[i] for i in untrained], group)
      for i in untrained:
        if configs[i].final_figures:
          visualize.finalize(dirs[i])
    except errors.TrainingInterrupted as stop:
      seconds = time.perf_counter() - started
      _record(group, **attempt, to_step=stop.step, seconds=seconds, status="interrupted")
      raise
    except Exception as error:
      seconds = time.perf_counter() - started
      status = f"failed: {type(error).__name__}"
      _record(group, **attempt, seconds=seconds, status=status)
      raise
    seconds = time.perf_counter() - started
    to_step = sweep_grid.total_steps(configs[untrained[0]], group[0])
    _record(group, **attempt, to_step=to_step, seconds=seconds, status="done")

  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, _exit_on_signal)
  options = dict(nll_samples=nll_samples, limit=eval_limit or None)
  options["probe_train_size"] = probe_train_size
  options["disentanglement_points"] = disentanglement_points
  if "fid" in inspect.signature(evaluate.evaluate).parameters:
    options["fid"] = fid
  for d, c in zip(dirs, configs, strict=True):
    if sweep_grid.is_finished(d, c):
      continue
    started = time.perf_counter()
    results = evaluate.evaluate(d, **options)
    seconds = time.perf_counter() - started
    _record([d], stage="eval", group=[d.name], device=device, seconds=seconds, status="done")
    write_hparams(d, c, results)
  logging.info("finished %s", ", ".join(names))
  del locks


# Fields every sweep run reports to TensorBoard's HParams dashboard besides its overrides.
HPARAM_FIELDS = ("model.name", "model.latent_dim", "data.name", "objective.name", "objective.beta")


def write_hparams(workdir: pathlib.Path, config: ml_collections.ConfigDict, results: dict) -> None:
  """The run's overrides, a few defining fields and its test metrics, for TensorBoard's HParams
  dashboard (`tensorboard --logdir SWEEP_DIR` compares the runs)."""
  overrides = json.loads((workdir / sweep_grid.RUN_RECORD).read_text())["overrides"]
  hparams = {field: _get(config, field) for field in HPARAM_FIELDS}
  hparams.update(overrides)
  # Scalars only: eval_results.json also holds lists (KL per dimension) and notes.
  final = {
    f"test/{name}": value
    for name, value in results.items()
    if isinstance(value, int | float) and not isinstance(value, bool)
  }
  metrics.write_hparams(workdir, hparams, final)


def _get(config: ml_collections.ConfigDict, field: str):
  for part in field.split("."):
    config = config[part]
  return config


def _define_flags() -> None:
  flags.DEFINE_multi_string("run_dir", None, "A run's workdir with its sweep_run.json.")
  flags.DEFINE_integer("nll_samples", 500, "Importance samples of the NLL (aejax.evaluate).")
  flags.DEFINE_integer("eval_limit", 0, "> 0: evaluate on the first N test images only.")
  flags.DEFINE_integer("probe_train_size", 10000, "Training images of the linear probe.")
  flags.DEFINE_bool("fid", False, "Also compute FID in the evaluation (where aejax has it).")
  flags.DEFINE_integer(
    "disentanglement_points", disentanglement.NUM_TRAIN, "Points of each disentanglement score."
  )
  compilation.define_flags(__name__)
  flags.mark_flags_as_required(["run_dir"])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  runner.setup_logging()
  # The devices first: on a machine with an unused GPU or TPU, JAX's warning and aejax's line
  # naming the install command are the first lines of the log.
  accelerators.log_devices()
  f = flags.FLAGS
  cache = compilation.use_cache(f.compilation_cache_dir)

  def work_then_log() -> None:
    work(
      f.run_dir,
      nll_samples=f.nll_samples,
      eval_limit=f.eval_limit,
      probe_train_size=f.probe_train_size,
      fid=f.fid,
      disentanglement_points=f.disentanglement_points,
    )
    compilation.log_cache_use(cache)

  runner.run(work_then_log)


def cli() -> None:
  _define_flags()
  app.run(main)


if __name__ == "__main__":
  cli()
