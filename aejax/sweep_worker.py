"""What a sweep runs in each subprocess: train one run (or a vmapped group of seeds), then evaluate.

    python -m aejax.sweep_worker --run_dir=DIR [--run_dir=DIR2 ...] [--nll_samples=500] ...

aejax.sweep starts it; each DIR holds sweep_run.json, the run's resolved
config. A run not yet trained to its last step is trained
(train.train_and_evaluate, or aejax.multi_seed for several runs at once),
resuming from its checkpoints; a run without an evaluation of that step is
then evaluated (aejax.evaluate). Each attempt is appended to the run's
sweep_attempts.jsonl with its wall time. A lock on each workdir keeps two
processes from ever working in one (a rerun of a killed sweep waits for the
old worker, which the sweep's death told to checkpoint and stop).
"""

import fcntl
import inspect
import json
import logging
import math
import pathlib
import signal
import sys
import time
from collections.abc import Sequence

import ml_collections
from absl import app, flags

from aejax import errors, sweep


def _lock(workdir: pathlib.Path):
  """Holds workdir's lock file until this process exits (the kernel drops it even on kill -9)."""
  handle = (workdir / sweep.LOCK_FILE).open("a")
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    logging.warning("%s: another process works there; waiting for it to finish", workdir)
    fcntl.flock(handle, fcntl.LOCK_EX)
  return handle


def _record(workdirs: Sequence[pathlib.Path], **record) -> None:
  for workdir in workdirs:
    sweep.append_jsonl(workdir / sweep.ATTEMPTS, {"time": sweep.now_iso(), **record})


def _write_missing_final_metrics(config, workdir: pathlib.Path) -> None:
  """Evaluates the final checkpoint the trainer's way and writes final_metrics.json.

  train.train_and_evaluate writes final_metrics.json only after steps it ran:
  a run stopped between its last checkpoint and that file resumes with
  nothing to do and would stay unfinished.
  """
  import jax

  import aejax
  from aejax import train

  handle = aejax.load(workdir)
  mesh = train.make_mesh()
  _, eval_set = train.load_data(config)
  eval_batch_size = min(
    config.eval_batch_size, mesh.size * math.ceil(len(eval_set.images) / mesh.size)
  )
  eval_data = train.prepare_eval_data(eval_set, eval_batch_size, mesh)
  eval_fn = train.make_eval_fn(
    handle.model, config, mesh, eval_batch_size, train.derived_keys(config.seed)
  )
  params = jax.device_put(handle.params, train.replicated(mesh))
  metrics = {f"eval/{k}": v for k, v in train.evaluate(eval_fn, params, eval_data).items()}
  (workdir / "final_metrics.json").write_text(
    json.dumps({"step": handle.step, **metrics}, indent=2) + "\n"
  )
  logging.warning("%s: wrote the missing final_metrics.json of step %d", workdir, handle.step)


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
) -> None:
  """Trains and evaluates the runs of `workdirs` (each with its sweep_run.json) that need it."""
  import jax

  from aejax import evaluate, multi_seed, train

  dirs = [pathlib.Path(w) for w in workdirs]
  locks = [_lock(d) for d in dirs]
  # The config as the sweep resolved it; the JSON round trip is the one config.json makes.
  configs = [
    ml_collections.ConfigDict(json.loads((d / sweep.RUN_RECORD).read_text())["config"])
    for d in dirs
  ]
  device = jax.devices()[0].device_kind
  names = [d.name for d in dirs]

  untrained = [i for i in range(len(dirs)) if not sweep.is_trained(dirs[i], configs[i])]
  if untrained:
    group = [dirs[i] for i in untrained]
    start_step = sweep.latest_checkpoint(group[0]) or 0
    started = time.perf_counter()
    attempt = dict(stage="train", group=[d.name for d in group], device=device)
    attempt["from_step"] = start_step
    try:
      if len(untrained) == 1:
        train.train_and_evaluate(configs[untrained[0]], str(group[0]))
      else:
        multi_seed.train_and_evaluate([configs[i] for i in untrained], group)
    except train.TrainingInterrupted as stop:
      seconds = time.perf_counter() - started
      _record(group, **attempt, to_step=stop.step, seconds=seconds, status="interrupted")
      raise
    except Exception as error:
      seconds = time.perf_counter() - started
      status = f"failed: {type(error).__name__}"
      _record(group, **attempt, seconds=seconds, status=status)
      raise
    seconds = time.perf_counter() - started
    for i in untrained:
      if not sweep.is_trained(dirs[i], configs[i]):
        _write_missing_final_metrics(configs[i], dirs[i])
    to_step = sweep.total_steps(configs[untrained[0]], group[0])
    _record(group, **attempt, to_step=to_step, seconds=seconds, status="done")

  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, _exit_on_signal)
  options = dict(nll_samples=nll_samples, limit=eval_limit or None)
  options["probe_train_size"] = probe_train_size
  if "fid" in inspect.signature(evaluate.evaluate).parameters:
    options["fid"] = fid
  for d, c in zip(dirs, configs, strict=True):
    if sweep.is_finished(d, c):
      continue
    started = time.perf_counter()
    evaluate.evaluate(d, **options)
    seconds = time.perf_counter() - started
    _record([d], stage="eval", group=[d.name], device=device, seconds=seconds, status="done")
  logging.info("finished %s", ", ".join(names))
  del locks


def _define_flags() -> None:
  flags.DEFINE_multi_string("run_dir", None, "A run's workdir with its sweep_run.json.")
  flags.DEFINE_integer("nll_samples", 500, "Importance samples of the NLL (aejax.evaluate).")
  flags.DEFINE_integer("eval_limit", 0, "> 0: evaluate on the first N test images only.")
  flags.DEFINE_integer("probe_train_size", 10000, "Training images of the linear probe.")
  flags.DEFINE_bool("fid", False, "Also compute FID in the evaluation (where aejax has it).")
  flags.mark_flags_as_required(["run_dir"])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger("absl").setLevel(logging.WARNING)
  from aejax import data, train

  f = flags.FLAGS
  try:
    work(
      f.run_dir,
      nll_samples=f.nll_samples,
      eval_limit=f.eval_limit,
      probe_train_size=f.probe_train_size,
      fid=f.fid,
    )
  except train.TrainingInterrupted as stop:
    logging.warning("%s", stop)
    sys.exit(128 + stop.signum)
  except (
    errors.ConfigError,
    errors.CheckpointError,
    errors.InputError,
    data.DataError,
    train.NonFiniteError,
  ) as error:
    logging.error("%s: %s", type(error).__name__, error)
    sys.exit(2)


def cli() -> None:
  _define_flags()
  app.run(main)


if __name__ == "__main__":
  cli()
