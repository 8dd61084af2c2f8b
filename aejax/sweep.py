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
vmapped program (aejax.multi_seed). A run is finished when its
final_metrics.json and eval_results.json are of its last step: finished runs
are skipped, interrupted ones resume from their checkpoints, so the same
command after a crash, SIGTERM, Ctrl-C or kill -9 finishes the sweep without
redoing work. The report (aejax.report) is then written to DIR.
"""

import collections
import copy
import dataclasses
import datetime
import importlib.util
import inspect
import itertools
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
from collections.abc import Callable, Sequence

import ml_collections

from aejax import errors, multi_seed, train

RUN_RECORD = "sweep_run.json"  # In each run's workdir: its name, overrides and resolved config.
ATTEMPTS = "sweep_attempts.jsonl"  # In each run's workdir: one line per training/eval attempt.
SWEEP_RECORD = "sweep.json"  # In the sweep dir: the config, the runs, the commands that ran.
SWEEP_LOG = "sweep_log.jsonl"  # In the sweep dir: one line per event (start, done, skip, ...).
LOGS_DIR = "logs"  # In the sweep dir: each worker's output.
LOCK_FILE = "sweep.lock"  # In each run's workdir: held by the worker working in it.

# Grid flags and the config field each sweeps.
GRID_FLAGS = {"latent_dims": "model.latent_dim", "betas": "objective.beta", "seeds": "seed"}


# ---------------------------------------------------------------------------
# The grid.


def format_value(value) -> str:
  """A value as it appears in a run name: 4.0 -> '4', (500, 500) -> '500x500', True -> 'true'."""
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, float):
    short = f"{value:g}"
    return short if float(short) == value else repr(value)
  if isinstance(value, tuple | list):
    return "x".join(format_value(v) for v in value)
  # A name is a directory: no path separators in it.
  return str(value).replace("/", "_").replace(os.sep, "_")


def parse_value(text: str):
  """The inverse of format_value for numbers and booleans (other strings stay strings)."""
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return {"true": True, "false": False}.get(text, text)


def _field(name: str) -> str:
  # big_vision-style sweeps name fields "config.model.latent_dim"; aejax's flags do not.
  return name.removeprefix("config.")


def product(fields: dict[str, Sequence]) -> list[dict]:
  """Every combination of the values of `fields` ({field: values}), in order, the last fastest."""
  names = [name for name, values in fields.items() if values]
  combos = itertools.product(*(fields[name] for name in names))
  return [dict(zip(names, combo, strict=True)) for combo in combos]


def from_sweep_fn(sweep_fn: Callable, arg: str | None = None) -> list[dict]:
  """The runs a config file's `sweep(add)` (or `sweep(add, arg)`) adds, as override dicts."""
  runs = []

  def add(**overrides):
    runs.append({_field(name): value for name, value in overrides.items()})

  if len(inspect.signature(sweep_fn).parameters) > 1:
    sweep_fn(add, arg)
  else:
    sweep_fn(add)
  return runs


def expand(
  sweep_fn: Callable | None = None,
  arg: str | None = None,
  latent_dims: Sequence[int] = (),
  betas: Sequence[float] = (),
  seeds: Sequence[int] = (),
) -> list[dict]:
  """The sweep's runs as override dicts {field: value}.

  The grid flags win: with latent_dims or betas, their product; else the
  config's `sweep_fn`. Seeds multiply either (or alone make the grid).
  """
  if latent_dims or betas:
    runs = product({GRID_FLAGS["latent_dims"]: list(latent_dims), GRID_FLAGS["betas"]: list(betas)})
  elif sweep_fn is not None:
    runs = from_sweep_fn(sweep_fn, arg)
    if not runs:
      raise errors.ConfigError("sweep(add) added no runs")
  elif seeds:
    runs = [{}]
  else:
    raise errors.ConfigError(
      "no grid: give --latent_dims, --betas or --seeds, or define sweep(add) in the config file"
    )
  if seeds:
    for run in runs:
      if "seed" in run:
        raise errors.ConfigError(
          f"--seeds given, but sweep(add) already sets seed={run['seed']}; drop one of them"
        )
    runs = [{**run, GRID_FLAGS["seeds"]: seed} for run in runs for seed in seeds]
  names = run_names(runs)
  repeated = [name for name, count in collections.Counter(names).items() if count > 1]
  if repeated:
    raise errors.ConfigError(f"the sweep has the same run more than once: {', '.join(repeated)}")
  return runs


def name_keys(runs: Sequence[dict]) -> dict[str, str]:
  """{field: its name in run names}, fields in order of first appearance, seed last.

  A field is named by its last component (model.latent_dim -> latent_dim)
  unless two fields of the sweep share it; then by its full path.
  """
  fields = list(dict.fromkeys(field for run in runs for field in run))
  fields.sort(key=lambda field: field == "seed")  # Stable: only moves seed to the end.
  last = collections.Counter(field.rsplit(".", 1)[-1] for field in fields)
  return {f: f.rsplit(".", 1)[-1] if last[f.rsplit(".", 1)[-1]] == 1 else f for f in fields}


def run_names(runs: Sequence[dict]) -> list[str]:
  """One name per run from its overrides: `latent_dim=8,beta=4,seed=1` (the workdir's name)."""
  keys = name_keys(runs)
  names = []
  for run in runs:
    parts = [f"{short}={format_value(run[field])}" for field, short in keys.items() if field in run]
    names.append(",".join(parts) or "base")
  return names


def parse_name(name: str) -> dict[str, object]:
  """{short field: value} from a run name; the report's fallback where no sweep_run.json is."""
  if name == "base":
    return {}
  out = {}
  for part in name.split(","):
    key, _, value = part.partition("=")
    out[key] = parse_value(value)
  return out


def resolve(base: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """A copy of `base` with `overrides` ({dotted field: value}) set; unknown fields are an error."""
  config = copy.deepcopy(base)
  for field, value in overrides.items():
    *parents, leaf = field.split(".")
    node = config
    for part in parents:
      node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      raise errors.ConfigError(f"config.{field}: no such config field (sweep override)")
    try:
      node[leaf] = value
    except TypeError as error:
      raise errors.ConfigError(f"config.{field}: {value!r} does not fit: {error}") from error
  return config


@dataclasses.dataclass
class Run:
  """One run of the sweep: its name (= workdir name), overrides and resolved config."""

  name: str
  overrides: dict
  config: ml_collections.ConfigDict
  workdir: pathlib.Path


def make_runs(
  base: ml_collections.ConfigDict, overrides: Sequence[dict], sweep_dir: str | pathlib.Path
) -> list[Run]:
  sweep_dir = pathlib.Path(sweep_dir)
  return [
    Run(name, dict(o), resolve(base, o), sweep_dir / name)
    for name, o in zip(run_names(overrides), overrides, strict=True)
  ]


def load_config_module(config_arg: str):
  """The module of `path.py[:arg]` (for its `sweep`) and the argument."""
  path, _, arg = config_arg.partition(":")
  spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  if spec is None or spec.loader is None:
    raise errors.ConfigError(f"--config: cannot load {path}")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module, arg or None


# ---------------------------------------------------------------------------
# The state of a run, from its workdir alone.


def _read_json(path: pathlib.Path) -> dict | None:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None  # Missing, or half written by a killed process: as good as missing.


def total_steps(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> int | None:
  """The run's number of steps (None while unknown: num_epochs needs the data set's size)."""
  if config.total_steps:
    return config.total_steps
  info = _read_json(workdir / "run_info.json")
  return None if info is None else config.num_epochs * (info["num_train"] // config.batch_size)


def is_trained(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> bool:
  """final_metrics.json says the run reached its last step (a longer total_steps: not yet)."""
  final = _read_json(workdir / "final_metrics.json")
  return final is not None and final.get("step") == total_steps(config, workdir)


def is_finished(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> bool:
  """Trained to its last step and evaluated there (eval_results.json of that step)."""
  if not is_trained(workdir, config):
    return False
  results = _read_json(workdir / "eval_results.json")
  return results is not None and results.get("step") == total_steps(config, workdir)


def latest_checkpoint(workdir: pathlib.Path) -> int | None:
  """The newest complete checkpoint's step (Orbax renames a finished save to its step)."""
  folder = workdir / "checkpoints"
  steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
  return max(steps, default=None)


def config_conflict(run: Run) -> str | None:
  """Why `run` must not resume in its workdir (it holds checkpoints of another config), or None.

  The trainer's own rule (train.check_config_change): fields that only change
  how long a run trains or how it logs may change; anything else is refused.
  """
  try:
    train.check_config_change(run.workdir, run.config, allow=False)
  except errors.ConfigError as error:
    return f"{error} (or run the sweep with the settings that made it)"
  return None


def _write_json(path: pathlib.Path, value) -> None:
  tmp = path.with_name(path.name + ".tmp")  # Write then rename: never half a file.
  tmp.write_text(json.dumps(value, indent=2) + "\n")
  tmp.replace(path)


def append_jsonl(path: pathlib.Path, record: dict) -> None:
  with path.open("a") as f:
    f.write(json.dumps(record) + "\n")


def now_iso() -> str:
  return datetime.datetime.now().isoformat(timespec="seconds")


def plan_jobs(runs: Sequence[Run], vmap_seeds: bool, max_group: int) -> list[list[Run]]:
  """Runs grouped into worker jobs: one run each, or with vmap_seeds the runs that differ only in
  multi_seed.VMAPPED_FIELDS and stand at the same checkpoint, up to max_group at a time."""
  groups: dict[tuple, list[Run]] = {}
  for run in runs:
    if not vmap_seeds or is_trained(run.workdir, run.config):
      key = ("alone", run.name)  # Alone, or only its evaluation is left.
    else:
      shared = json.dumps(multi_seed.shared_fields(run.config), sort_keys=True)
      key = ("group", shared, latest_checkpoint(run.workdir))
    groups.setdefault(key, []).append(run)
  return [
    members[i : i + max_group]
    for members in groups.values()
    for i in range(0, len(members), max_group)
  ]


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
  path = run.workdir / "metrics.jsonl"
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
      _write_json(run.workdir / RUN_RECORD, record)
      todo.append(run)

  jobs = collections.deque(plan_jobs(todo, vmap_seeds, max_group))
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
        log_file = sweep_dir / LOGS_DIR / f"{job[0].name}.log"
        with log_file.open("a") as out:
          out.write(f"\n# {now_iso()} {shlex.join(command)}\n")
          out.flush()
          process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=die_with_parent,
          )
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
  _write_json(path, record)


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
  flags.DEFINE_integer("max_group", 8, "Most runs in one vmapped program.")
  flags.DEFINE_integer("nll_samples", 500, "Importance samples of the test NLL (aejax.evaluate).")
  flags.DEFINE_integer("eval_limit", 0, "> 0: evaluate on the first N test images only.")
  flags.DEFINE_integer("probe_train_size", 10000, "Training images the linear probe is fitted on.")
  flags.DEFINE_bool("fid", False, "Also compute FID in each evaluation.")
  flags.DEFINE_float("status_every", 30.0, "Seconds between progress lines while runs train.")
  flags.mark_flags_as_required(["sweep_dir"])


def _grid_values(values: Sequence[str], kind, flag: str) -> list:
  try:
    return [kind(v) for v in values]
  except ValueError as error:
    raise errors.ConfigError(f"--{flag}: {error}") from error


def main(argv: Sequence[str]) -> None:
  from absl import app, flags

  from aejax import data, report

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger("absl").setLevel(logging.WARNING)
  f = flags.FLAGS
  sweep_dir = pathlib.Path(f.sweep_dir)
  if f.report_only:
    try:
      path = report.write_report(sweep_dir)
    except FileNotFoundError as error:
      logging.error("%s", error)
      sys.exit(2)
    logging.info("wrote %s", path)
    return
  if f.config is None:
    raise app.UsageError("--config is required unless --report_only")
  try:
    config_arg = _config_flag_value(sys.argv)
    module, arg = load_config_module(config_arg)
    overrides = expand(
      getattr(module, "sweep", None),
      arg,
      latent_dims=_grid_values(f.latent_dims, int, "latent_dims"),
      betas=_grid_values(f.betas, float, "betas"),
      seeds=_grid_values(f.seeds, int, "seeds"),
    )
    runs = make_runs(f.config, overrides, sweep_dir)
  except errors.ConfigError as error:
    logging.error("ConfigError: %s", error)
    sys.exit(2)
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
    "vmap_seeds": f.vmap_seeds,
  }
  command = shlex.join(["python", sys.argv[0], *sys.argv[1:]])
  write_sweep_record(sweep_dir, config_arg, runs, settings, command)
  worker_flags = [
    f"--nll_samples={f.nll_samples}",
    f"--eval_limit={f.eval_limit}",
    f"--probe_train_size={f.probe_train_size}",
    f"--fid={str(f.fid).lower()}",
  ]
  try:
    status = run_sweep(
      sweep_dir,
      runs,
      parallel=parallel,
      devices=devices,
      vmap_seeds=f.vmap_seeds,
      max_group=f.max_group,
      worker_flags=worker_flags,
      status_every=f.status_every,
    )
  except SweepInterrupted as stop:
    logging.warning("%s", stop)
    sys.exit(128 + stop.signum)
  except (errors.ConfigError, data.DataError) as error:
    logging.error("%s: %s", type(error).__name__, error)
    sys.exit(2)
  path = sweep_dir / report.REPORT_MD
  if report.is_up_to_date(sweep_dir):
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


def _config_flag_value(argv: Sequence[str]) -> str:
  """The --config=PATH[:ARG] argument as given: the file whose sweep(add) to call, and its arg."""
  for i, word in enumerate(argv):
    if word.startswith("--config="):
      return word.split("=", 1)[1]
    if word == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  raise errors.ConfigError("--config: not found on the command line")


def cli() -> None:
  """Console-script entry point (aejax-sweep)."""
  from absl import app, flags

  _define_flags()
  # --help lists the flags of the program's own file; under a console script that is the
  # generated launcher, so the sweep's flags are declared its key flags.
  for flag in flags.FLAGS.get_key_flags_for_module(__name__):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(main)


if __name__ == "__main__":
  cli()
