"""A sweep's grid and folder: run names from overrides, resolved configs, and run status.

What the sweep driver (aejax.sweep), its worker and its report share: the
grid (`expand`, `run_names`, `make_runs`), the files of a sweep folder and of
each run in it, and when a run counts as trained or finished.
"""

import collections
import copy
import dataclasses
import datetime
import importlib.util
import inspect
import itertools
import json
import os
import pathlib
from collections.abc import Callable, Sequence

import ml_collections

from aejax import configs, errors
from aejax import workdir as workdir_lib

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
  """A copy of `base` with `overrides` ({dotted field: value}) set; unknown fields are an error.

  model.options is the free group of a model's own knobs (aejax/zoo/options.py, which checks
  them when the model is built): a sweep may add a name there that the base config lacks.
  """
  config = copy.deepcopy(base)
  for field, value in overrides.items():
    *parents, leaf = field.split(".")
    node = config
    for part in parents:
      node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
    free = parents == ["model", "options"]
    if not isinstance(node, ml_collections.ConfigDict) or (leaf not in node and not free):
      raise errors.ConfigError(f"config.{field}: no such config field (sweep override)")
    try:
      if leaf in node:
        node[leaf] = value
      else:
        with node.unlocked():  # A new name in model.options (a locked config refuses it).
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


def read_json_or_none(path: pathlib.Path) -> dict | None:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None  # Missing, or half written by a killed process: as good as missing.


def total_steps(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> int | None:
  """The run's number of steps (None while unknown: num_epochs needs the data set's size)."""
  if config.total_steps:
    return config.total_steps
  info = read_json_or_none(workdir / workdir_lib.RUN_INFO_FILE)
  return None if info is None else configs.step_counts(config, info["num_train"]).total_steps


def is_trained(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> bool:
  """final_metrics.json says the run reached its last step (a longer total_steps: not yet)."""
  final = read_json_or_none(workdir / workdir_lib.FINAL_METRICS_FILE)
  return final is not None and final.get("step") == total_steps(config, workdir)


def is_finished(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> bool:
  """Trained to its last step and evaluated there (eval_results.json of that step)."""
  if not is_trained(workdir, config):
    return False
  results = read_json_or_none(workdir / workdir_lib.EVAL_RESULTS_JSON)
  return results is not None and results.get("step") == total_steps(config, workdir)


def latest_checkpoint(workdir: pathlib.Path) -> int | None:
  """The newest complete checkpoint's step (Orbax renames a finished save to its step)."""
  folder = workdir / workdir_lib.CHECKPOINTS_DIR
  steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
  return max(steps, default=None)


def append_jsonl(path: pathlib.Path, record: dict) -> None:
  with path.open("a") as f:
    f.write(json.dumps(record) + "\n")


def now_iso() -> str:
  return datetime.datetime.now().isoformat(timespec="seconds")
