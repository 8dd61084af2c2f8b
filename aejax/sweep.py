"""Sweeps: expand a grid of runs, train and evaluate them resumably, then write the report.

    python scripts/sweep.py --config=experiments/latent_sweep.py:cpu --sweep_dir=DIR \
      [--latent_dims=2,4,8] [--betas=1,4] [--seeds=0,1,2] [--config.FIELD=VALUE ...]
    python scripts/sweep.py --sweep_dir=DIR --report_only

The grid comes from the flags, else from the config file's declarative
`sweep(add)` (big_vision style): `add(**{"model.latent_dim": 8})` once per run.
Each run gets its own workdir DIR/NAME, NAME being its overrides
(`latent_dim=8,beta=4,seed=1`), and is trained and evaluated in a subprocess
(aejax.sweep_worker), so a killed sweep leaves every workdir consistent. Runs
that differ only in seed (or beta, learning rate) train together as one
vmapped program (train.train_population). A run is finished when its
final_metrics.json and eval_results.json are of its last step: finished runs
are skipped, interrupted ones resume from their checkpoints, so the same
command after a crash, SIGTERM, Ctrl-C or kill -9 finishes the sweep without
redoing work. The report (aejax.report) is then written to DIR.
"""

import collections
import contextlib
import fcntl
import json
import logging
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from aejax import compilation, configs, disentanglement, errors, report, runner, train
from aejax import workdir as workdir_lib
from aejax.sweep_grid import (
  LOGS_DIR,
  RUN_RECORD,
  SWEEP_LOG,
  SWEEP_RECORD,
  Run,
  append_jsonl,
  expand,
  is_finished,
  is_trained,
  latest_checkpoint,
  load_config_module,
  make_runs,
  now_iso,
  total_steps,
)


def config_conflict(run: Run) -> str | None:
  """Why `run` must not resume in its workdir (it holds checkpoints of another config), or None.

  The trainer's own rule (workdir_lib.check_config_change): fields that only change
  how long a run trains or how it logs may change; anything else is refused.
  """
  try:
    workdir_lib.check_config_change(run.workdir, run.config, allow=False)
  except errors.ConfigError as error:
    return f"{error} (or run the sweep with the settings that made it)"
  return None


def vmapped_fields(vmap_shapes: bool) -> tuple[str, ...]:
  """The fields a sweep's vmapped group may differ in: train.NUMBER_FIELDS (seed, beta, learning
  rate), and with vmap_shapes also padding.PADDED_FIELDS (latent size, objective, k: each member
  padded to the group's largest, so each computes at the largest shape)."""
  return train.VMAPPED_FIELDS if vmap_shapes else train.NUMBER_FIELDS


def plan_jobs(
  runs: Sequence[Run], vmap_seeds: bool, max_group: int, vmap_shapes: bool = False
) -> list[list[Run]]:
  """Runs grouped into worker jobs: one run each, or with vmap_seeds the runs that differ only in
  vmapped_fields(vmap_shapes) and stand at the same checkpoint, up to max_group at a time."""
  groups: dict[tuple, list[Run]] = {}
  for run in runs:
    if not vmap_seeds or is_trained(run.workdir, run.config):
      key = ("alone", run.name)  # Alone, or only its evaluation is left.
    else:
      key = ("group", _group_key(run, True, vmap_shapes), latest_checkpoint(run.workdir))
    groups.setdefault(key, []).append(run)
  return [
    members[i : i + max_group]
    for members in groups.values()
    for i in range(0, len(members), max_group)
  ]


def parse_shard(spec: str) -> tuple[int, int]:
  """`I/N` (shard I of N, 0 <= I < N) as (I, N); ConfigError naming --shard otherwise."""
  try:
    index, count = (int(part) for part in spec.split("/"))
  except ValueError:
    index, count = -1, 0
  if not 0 <= index < count:
    raise errors.ConfigError(f"--shard={spec}: expected I/N with 0 <= I < N, e.g. 0/4")
  return index, count


def _group_key(run: Run, vmap_seeds: bool, vmap_shapes: bool = False) -> str:
  """Equal for runs that may train as one vmapped program (train.shared_fields)."""
  if not vmap_seeds:
    return run.name
  return json.dumps(train.shared_fields(run.config, vmapped_fields(vmap_shapes)), sort_keys=True)


def shard_runs(
  runs: Sequence[Run], index: int, count: int, vmap_seeds: bool, vmap_shapes: bool = False
) -> list[Run]:
  """The runs of shard `index` of `count`: disjoint shards that together hold every run.

  Runs that could train as one vmapped program stay in one shard, and shards
  take those groups in turn, in the order of their first run. The split
  depends on the configs alone, never on what has trained, so shards started
  at the same time (a SLURM job array) never share a run.
  """
  group_index: dict[str, int] = {}
  for run in runs:
    group_index.setdefault(_group_key(run, vmap_seeds, vmap_shapes), len(group_index))
  return [
    run for run in runs if group_index[_group_key(run, vmap_seeds, vmap_shapes)] % count == index
  ]


def count_groups(runs: Sequence[Run], vmap_seeds: bool, vmap_shapes: bool = False) -> int:
  """How many shards a sweep can use: its vmapped groups (its runs without vmapping)."""
  return len({_group_key(run, vmap_seeds, vmap_shapes) for run in runs})


def job_name(job: Sequence[Run]) -> str:
  return job[0].name if len(job) == 1 else f"{job[0].name} (+{len(job) - 1} vmapped)"


# ---------------------------------------------------------------------------
# Running: worker subprocesses, one device each.


def detect_devices(spec: str) -> list[str]:
  """GPU ids for `--devices`: 'auto' (CUDA_VISIBLE_DEVICES, else nvidia-smi), 'cpu', or '0,1'."""
  if spec == "cpu":
    return []
  if spec != "auto":
    return [d.strip() for d in spec.split(",") if d.strip()]
  visible = os.environ.get("CUDA_VISIBLE_DEVICES")
  if visible is not None:
    return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
  smi = shutil.which("nvidia-smi")
  if smi is None:
    return []
  try:
    out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30).stdout
  except (OSError, subprocess.SubprocessError):
    return []
  return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def _parent_death_signal():
  """A function for Popen's preexec_fn (Linux): SIGTERM the worker when the sweep dies, even by
  kill -9. The worker then checkpoints and exits like on any SIGTERM, so no orphan keeps training
  while a rerun of the sweep works in the same workdir. None elsewhere.
  """
  if not sys.platform.startswith("linux"):
    return None
  import ctypes

  # Loaded here, in the sweep: between fork and exec the child may only make the call.
  prctl = ctypes.CDLL(None, use_errno=True).prctl
  pr_set_pdeathsig = 1
  return lambda: prctl(pr_set_pdeathsig, signal.SIGTERM)


class _Signals:
  """Catches SIGTERM/SIGINT in the sweep: forwards SIGTERM to the workers, a second one kills."""

  def __init__(self, running: dict):
    self.signum = None
    self._running = running
    self._previous = {}

  def __enter__(self):
    for signum in (signal.SIGTERM, signal.SIGINT):
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    repeated = self.signum is not None
    self.signum = signum
    for process in self._running:
      try:
        # First signal: the workers checkpoint and exit. A second one: do not wait for that.
        process.kill() if repeated else process.send_signal(signal.SIGTERM)
      except ProcessLookupError:
        pass

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


class SweepInterrupted(Exception):
  def __init__(self, signum: int):
    self.signum = signum
    super().__init__(
      f"{signal.Signals(signum).name}: the sweep stopped after its workers saved their "
      "checkpoints. Run the same command again to finish it."
    )


def _tail(path: pathlib.Path, lines: int = 15) -> str:
  try:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
  except OSError:
    return ""


def _progress_step(run: Run) -> str:
  """'step N/M' from the run's metrics.jsonl (its last line), for the progress view."""
  path = run.workdir / workdir_lib.METRICS_FILE
  step = 0
  try:
    with path.open("rb") as f:
      f.seek(max(0, path.stat().st_size - 4096))
      lines = f.read().decode(errors="replace").strip().splitlines()
    step = json.loads(lines[-1])["step"] if lines else 0
  except (OSError, ValueError, KeyError):
    pass
  total = total_steps(run.config, run.workdir) or "?"
  if step and step == total:
    return "evaluating"
  return f"step {step}/{total}"


def run_sweep(
  sweep_dir: str | pathlib.Path,
  runs: Sequence[Run],
  *,
  parallel: int = 1,
  devices: Sequence[str] = (),
  vmap_seeds: bool = True,
  vmap_shapes: bool = False,
  max_group: int = 8,
  worker_flags: Sequence[str] = (),
  status_every: float = 30.0,
  worker: str = "aejax.sweep_worker",
) -> dict[str, str]:
  """Trains and evaluates every unfinished run; returns {run name: status}.

  Status is "finished", "finished earlier" (skipped) or "failed: why". Up to
  `parallel` workers run at once; with `devices` (GPU ids) each worker gets one
  (CUDA_VISIBLE_DEVICES) and at most one worker runs per device. A vmapped
  group whose worker fails is retried one run at a time, so one diverging seed
  does not sink the others. Raises SweepInterrupted on SIGTERM/SIGINT, once
  the workers have checkpointed and exited. `worker` is the module each job
  runs (`python -m worker --run_dir=... worker_flags`).
  """
  sweep_dir = pathlib.Path(sweep_dir)
  (sweep_dir / LOGS_DIR).mkdir(parents=True, exist_ok=True)
  log_path = sweep_dir / SWEEP_LOG

  def event(kind: str, names: Sequence[str], **extra) -> None:
    append_jsonl(log_path, {"time": now_iso(), "event": kind, "runs": list(names), **extra})

  status, todo = _triage(runs, event)

  jobs = collections.deque(plan_jobs(todo, vmap_seeds, max_group, vmap_shapes))
  # One slot per worker that may run at once; on GPUs each slot is a device.
  slots = list(devices)[: max(1, parallel)] if devices else [None] * max(1, parallel)
  where = f"{len(slots)} at a time" + (f" on GPUs {','.join(slots)}" if devices else " on the CPU")
  logging.info(
    "sweep %s: %d runs, %d finished earlier, %d to run in %d jobs (%s)",
    sweep_dir,
    len(runs),
    sum(s == "finished earlier" for s in status.values()),
    len(todo),
    len(jobs),
    where,
  )
  running: dict[subprocess.Popen, tuple] = {}
  retried: set[str] = set()
  die_with_parent = _parent_death_signal()
  last_status = time.monotonic()

  def counts() -> str:
    finished = sum(s.startswith("finished") for s in status.values())
    failed = sum(s.startswith("failed") for s in status.values())
    active = sum(len(job) for job, *_ in running.values())
    queued = sum(len(job) for job in jobs)
    return f"[{finished}/{len(runs)} finished, {active} running, {queued} queued, {failed} failed]"

  with _Signals(running) as signals:
    # After a signal: no new jobs, wait for the running ones to checkpoint and exit.
    while running or (jobs and signals.signum is None):
      while jobs and len(running) < len(slots) and signals.signum is None:
        job = jobs.popleft()
        index = min(set(range(len(slots))) - {v[1] for v in running.values()})
        slot = slots[index]
        log_file = sweep_dir / LOGS_DIR / f"{job[0].name}.log"
        process = _start_worker(job, slot, worker, worker_flags, log_file, die_with_parent)
        running[process] = (job, index, time.monotonic(), log_file)
        event("start", [r.name for r in job], pid=process.pid, device=slot or "cpu")
        logging.info("start  %s%s %s", job_name(job), f" on GPU {slot}" if slot else "", counts())

      time.sleep(0.2)
      for process in [p for p in running if p.poll() is not None]:
        job, _, started, log_file = running.pop(process)
        seconds = time.monotonic() - started
        code = process.returncode
        names = [r.name for r in job]
        if code == 0 and all(is_finished(r.workdir, r.config) for r in job):
          for r in job:
            status[r.name] = "finished"
          event("done", names, seconds=round(seconds, 1))
          logging.info("done   %s in %.0f s %s", job_name(job), seconds, counts())
        elif signals.signum is not None:
          event("interrupted", names, returncode=code)
          logging.warning("stopped %s (exit %s)", job_name(job), code)
        elif len(job) > 1 and not any(r.name in retried for r in job):
          retried.update(names)
          jobs.extend([r] for r in job)
          event("retry_alone", names, returncode=code)
          logging.warning(
            "failed %s (exit %s; log %s); retrying its runs one at a time",
            job_name(job),
            code,
            log_file,
          )
        else:
          why = f"worker exited {code}; log {log_file}"
          for r in job:
            status[r.name] = f"failed: {why}"
          event("failed", names, returncode=code, log=str(log_file))
          logging.error("failed %s: %s\n%s", job_name(job), why, _tail(log_file))

      if running and time.monotonic() - last_status > status_every:
        last_status = time.monotonic()
        details = ", ".join(
          f"{job_name(job)}: {_progress_step(job[0])}" for job, *_ in running.values()
        )
        logging.info("%s %s", counts(), details)

  if signals.signum is not None:
    event("interrupted", [], signal=signal.Signals(signals.signum).name)
    raise SweepInterrupted(signals.signum)
  return status


def _triage(runs: Sequence[Run], event) -> tuple[dict[str, str], list[Run]]:
  """The runs still to do, and the status of the others (finished earlier, or a config conflict).

  Each run to do gets its folder and its sweep_run.json, which its worker reads.
  """
  status: dict[str, str] = {}
  todo = []
  for run in runs:
    conflict = config_conflict(run)
    if conflict:
      status[run.name] = f"failed: {conflict}"
      event("conflict", [run.name], message=conflict)
      logging.error("%s", conflict)
    elif is_finished(run.workdir, run.config):
      status[run.name] = "finished earlier"
      event("skip", [run.name])
    else:
      run.workdir.mkdir(parents=True, exist_ok=True)
      record = {"name": run.name, "overrides": run.overrides}
      record["config"] = json.loads(run.config.to_json_best_effort())
      workdir_lib.write_json(run.workdir / RUN_RECORD, record)
      todo.append(run)
  return status, todo


def _start_worker(job, slot, worker: str, worker_flags, log_file, die_with_parent):
  """`python -m worker --run_dir=... worker_flags` for the job's runs, on GPU `slot` if given."""
  env = dict(os.environ)
  if slot is not None:
    env["CUDA_VISIBLE_DEVICES"] = slot
  command = [
    sys.executable,
    "-m",
    worker,
    *[f"--run_dir={run.workdir.absolute()}" for run in job],
    *worker_flags,
  ]
  with log_file.open("a") as out:
    out.write(f"\n# {now_iso()} {shlex.join(command)}\n")
    out.flush()
    return subprocess.Popen(
      command, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent
    )


def write_sweep_record(
  sweep_dir: pathlib.Path, config_arg: str, runs: Sequence[Run], settings: dict, command: str
) -> None:
  """sweep.json: the config, every run's overrides (this and earlier invocations) and commands."""
  path = sweep_dir / SWEEP_RECORD
  record = {"config": config_arg, "runs": {}, "settings": settings, "commands": []}
  if path.is_file():
    try:
      record = {**record, **json.loads(path.read_text())}
    except ValueError:
      pass
  record["config"] = config_arg
  record["settings"] = settings
  for run in runs:
    record["runs"][run.name] = run.overrides
  record["commands"].append({"time": now_iso(), "command": command})
  sweep_dir.mkdir(parents=True, exist_ok=True)
  workdir_lib.write_json(path, record)


# ---------------------------------------------------------------------------
# SLURM: the sweep as a job array, one shard per array task.

SLURM_DIR = "slurm"
SLURM_SCRIPT = "sweep.sbatch"
# Flags of the emitting command that the array tasks must not repeat.
_EMIT_FLAGS = ("--emit", "--shard", "--slurm_")


def slurm_script(
  argv: Sequence[str],
  sweep_dir: pathlib.Path,
  num_tasks: int,
  *,
  time_limit: str,
  cpus_per_task: int,
  gpus_per_task: int = 0,
  mem: str = "",
  partition: str = "",
) -> str:
  """An sbatch script whose array task I runs `aejax.sweep ARGV --shard=I/num_tasks`.

  `argv` is the sweep command's arguments (without the program); its --emit,
  --shard and --slurm_* flags are dropped. Tasks run in the current folder, so
  relative --config and --sweep_dir paths mean what they meant here.
  """
  kept = [a for a in argv if not a.lstrip("-").startswith(tuple(f[2:] for f in _EMIT_FLAGS))]
  logs = (sweep_dir / LOGS_DIR).absolute()
  lines = [
    "#!/bin/bash",
    f"# The aejax sweep {sweep_dir} as a SLURM job array: task I trains shard I of {num_tasks}",
    "# (aejax/sweep.py --shard). Submit with sbatch; whichever task ends last writes the report.",
    "# Finished runs are skipped: submit it again to finish runs that failed or were preempted.",
    "#SBATCH --job-name=aejax-sweep",
    f"#SBATCH --array=0-{num_tasks - 1}",
    f"#SBATCH --chdir={pathlib.Path.cwd()}",
    f"#SBATCH --output={logs}/slurm-%A_%a.txt",
    f"#SBATCH --time={time_limit}",
    "#SBATCH --ntasks=1",
    f"#SBATCH --cpus-per-task={cpus_per_task}",
  ]
  if gpus_per_task:
    lines.append(f"#SBATCH --gpus-per-task={gpus_per_task}")
  if mem:
    lines.append(f"#SBATCH --mem={mem}")
  if partition:
    lines.append(f"#SBATCH --partition={partition}")
  lines += [
    # SIGTERM two minutes before the time limit: the workers checkpoint, a resubmission resumes.
    "#SBATCH --signal=B:TERM@120",
    "set -euo pipefail",
    f"exec {shlex.join([sys.executable, '-m', 'aejax.sweep', *kept])} "
    f'--shard="${{SLURM_ARRAY_TASK_ID}}/{num_tasks}"',
    "",
  ]
  return "\n".join(lines)


def write_slurm_script(sweep_dir: pathlib.Path, text: str) -> pathlib.Path:
  path = sweep_dir / SLURM_DIR / SLURM_SCRIPT
  path.parent.mkdir(parents=True, exist_ok=True)
  (sweep_dir / LOGS_DIR).mkdir(parents=True, exist_ok=True)
  workdir_lib.write_atomically(path, text)
  path.chmod(0o755)
  return path


# ---------------------------------------------------------------------------
# Command line (scripts/sweep.py, aejax-sweep).


def _define_flags() -> None:
  # Defined on use, not at import: aejax.main defines `config` too, and tests import both.
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file(
    "config", None, "Experiment config, e.g. experiments/latent_sweep.py:cpu.", lock_config=True
  )
  flags.DEFINE_string("sweep_dir", None, "Directory of the sweep: one workdir per run, the report.")
  flags.DEFINE_list("latent_dims", [], "Grid: latent sizes (config.model.latent_dim).")
  flags.DEFINE_list("betas", [], "Grid: KL weights (config.objective.beta).")
  flags.DEFINE_list("seeds", [], "Grid: seeds (config.seed); multiplies sweep(add) too.")
  flags.DEFINE_bool("report_only", False, "Only regenerate the report from the existing runs.")
  flags.DEFINE_bool("dry_run", False, "Print the runs and their status; train nothing.")
  flags.DEFINE_integer(
    "parallel", 0, "Workers at once (0: one per GPU, or 1 on the CPU); one GPU per worker."
  )
  flags.DEFINE_string("devices", "auto", "GPU ids for the workers: auto, cpu, or e.g. 0,1,2.")
  flags.DEFINE_bool(
    "vmap_seeds",
    True,
    "Train runs that differ only in seed/beta/learning rate as one program (on a CPU it pays "
    "for short runs, not long ones: docs/latent_sweep.md).",
  )
  flags.DEFINE_bool(
    "vmap_shapes",
    False,
    "With vmap_seeds, also train runs that differ in latent size, objective or k as one program, "
    "each padded to the largest (aejax/padding.py; measured times: docs/reproductions.md).",
  )
  flags.DEFINE_integer("max_group", 8, "Most runs in one vmapped program.")
  compilation.define_flags(__name__)
  flags.DEFINE_integer("nll_samples", 500, "Importance samples of the test NLL (aejax.evaluate).")
  flags.DEFINE_integer("eval_limit", 0, "> 0: evaluate on the first N test images only.")
  flags.DEFINE_integer("probe_train_size", 10000, "Training images the linear probe is fitted on.")
  flags.DEFINE_bool("fid", False, "Also compute FID in each evaluation.")
  flags.DEFINE_integer(
    "disentanglement_points",
    disentanglement.NUM_TRAIN,
    "Ground-truth data sets: training points of each disentanglement score (evaluation: half).",
  )
  flags.DEFINE_float("status_every", 30.0, "Seconds between progress lines while runs train.")
  flags.DEFINE_string(
    "shard",
    None,
    "I/N: run only shard I of N of the sweep (disjoint, whole vmapped groups); the shard that "
    "ends with every run finished writes the report.",
  )
  flags.DEFINE_enum(
    "emit",
    None,
    ["slurm"],
    "Write DIR/slurm/sweep.sbatch, a job array of --slurm_tasks shards, instead of running.",
  )
  flags.DEFINE_integer(
    "slurm_tasks", 0, "--emit=slurm: array tasks (0: one per vmapped group, at most 64)."
  )
  flags.DEFINE_string("slurm_time", "24:00:00", "--emit=slurm: each task's time limit.")
  flags.DEFINE_integer("slurm_cpus_per_task", 4, "--emit=slurm: CPU cores per task.")
  flags.DEFINE_integer("slurm_gpus_per_task", 0, "--emit=slurm: GPUs per task (0 on CPUs).")
  flags.DEFINE_string(
    "slurm_mem", "", "--emit=slurm: memory per task, e.g. 32G (default: the cluster's)."
  )
  flags.DEFINE_string(
    "slurm_partition", "", "--emit=slurm: the partition (default: the cluster's)."
  )
  flags.mark_flags_as_required(["sweep_dir"])


REPORT_LOCK = ".report.lock"


@contextlib.contextmanager
def _exclusive(lock_path: pathlib.Path):
  """Holds an exclusive lock on `lock_path` (flock: released when the process dies)."""
  with lock_path.open("a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def _grid_values(values: Sequence[str], kind, flag: str) -> list:
  try:
    return [kind(v) for v in values]
  except ValueError as error:
    raise errors.ConfigError(f"--{flag}: {error}") from error


def main(argv: Sequence[str]) -> None:
  from absl import app, flags

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  if f.config is None and not f.report_only:
    raise app.UsageError("--config is required unless --report_only")
  runner.setup_logging()
  runner.run(lambda: _sweep(f))


def _sweep(f) -> None:
  """The sweep of the parsed flags `f`: plan, run the workers, write the report."""
  if workdir_lib.is_uri(f.sweep_dir):  # Its workers, logs and report use local files.
    raise errors.ConfigError(
      f"--sweep_dir={f.sweep_dir}: a sweep folder must be local (or a mounted shared file "
      "system); single runs take gs:// workdirs"
    )
  sweep_dir = pathlib.Path(f.sweep_dir)
  if f.report_only:
    logging.info("wrote %s", report.write_report(sweep_dir))
    return
  config_arg = configs.config_flag_value(sys.argv)
  if config_arg is None:
    raise errors.ConfigError("--config: not found on the command line")
  configs.check_command(
    f.config, configs.TRAIN_COMMAND, "scripts/sweep.py (aejax-sweep)", config_arg
  )
  module, arg = load_config_module(config_arg)
  overrides = expand(
    getattr(module, "sweep", None),
    arg,
    latent_dims=_grid_values(f.latent_dims, int, "latent_dims"),
    betas=_grid_values(f.betas, float, "betas"),
    seeds=_grid_values(f.seeds, int, "seeds"),
  )
  all_runs = runs = make_runs(f.config, overrides, sweep_dir)
  if f.emit == "slurm":
    tasks = f.slurm_tasks or min(64, count_groups(runs, f.vmap_seeds, f.vmap_shapes))
    text = slurm_script(
      sys.argv[1:],
      sweep_dir,
      tasks,
      time_limit=f.slurm_time,
      cpus_per_task=f.slurm_cpus_per_task,
      gpus_per_task=f.slurm_gpus_per_task,
      mem=f.slurm_mem,
      partition=f.slurm_partition,
    )
    path = write_slurm_script(sweep_dir, text)
    logging.info(
      "wrote %s (%d runs in %d array tasks); submit: sbatch %s", path, len(runs), tasks, path
    )
    return
  if f.shard is not None:
    index, count = parse_shard(f.shard)
    runs = shard_runs(runs, index, count, f.vmap_seeds, f.vmap_shapes)
    logging.info(
      "shard %d of %d: %d of the sweep's %d runs", index, count, len(runs), len(all_runs)
    )
  if f.dry_run:
    for run in runs:
      state = "finished" if is_finished(run.workdir, run.config) else "to run"
      print(f"{run.name}: {state}")
    return

  devices = detect_devices(f.devices)
  parallel = f.parallel or max(1, len(devices))
  settings = {
    "nll_samples": f.nll_samples,
    "eval_limit": f.eval_limit,
    "probe_train_size": f.probe_train_size,
    "fid": f.fid,
    "disentanglement_points": f.disentanglement_points,
    "vmap_seeds": f.vmap_seeds,
    "vmap_shapes": f.vmap_shapes,
  }
  command = shlex.join(["python", sys.argv[0], *sys.argv[1:]])
  write_sweep_record(sweep_dir, config_arg, runs, settings, command)
  worker_flags = [
    f"--nll_samples={f.nll_samples}",
    f"--eval_limit={f.eval_limit}",
    f"--probe_train_size={f.probe_train_size}",
    f"--fid={str(f.fid).lower()}",
    f"--disentanglement_points={f.disentanglement_points}",
  ]
  if f.compilation_cache_dir:  # One folder for every worker: a group compiles what it lacks.
    worker_flags.append(
      f"--compilation_cache_dir={pathlib.Path(f.compilation_cache_dir).absolute()}"
    )
  status = run_sweep(
    sweep_dir,
    runs,
    parallel=parallel,
    devices=devices,
    vmap_seeds=f.vmap_seeds,
    vmap_shapes=f.vmap_shapes,
    max_group=f.max_group,
    worker_flags=worker_flags,
    status_every=f.status_every,
  )
  path = sweep_dir / report.REPORT_MD
  # Shards that end at the same moment take turns; the second finds the report up to date.
  with _exclusive(sweep_dir / REPORT_LOCK):
    if f.shard is not None and not all(is_finished(r.workdir, r.config) for r in all_runs):
      # Other shards still train: the one that ends with every run finished writes the report.
      logging.info("report left to the shard that finishes the sweep")
    elif report.is_up_to_date(sweep_dir):
      logging.info("%s is up to date: no run changed since it was written", path)
    else:
      path = report.write_report(sweep_dir)
  failed = {name: s for name, s in status.items() if s.startswith("failed")}
  logging.info(
    "sweep %s: %d of %d runs finished; report %s",
    sweep_dir,
    len(status) - len(failed),
    len(status),
    path,
  )
  if failed:
    for name, why in failed.items():
      logging.error("%s: %s", name, why)
    sys.exit(1)


def cli() -> None:
  """Console-script entry point (aejax-sweep)."""
  from absl import app, flags

  _define_flags()
  # experiments/NAME.py from any folder: the copy installed with aejax stands in.
  sys.argv = configs.resolve_experiment_args(sys.argv)
  # --help lists the flags of the program's own file; under a console script that is the
  # generated launcher, so the sweep's flags are declared its key flags.
  for flag in flags.FLAGS.get_key_flags_for_module(__name__):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(main)


if __name__ == "__main__":
  cli()
