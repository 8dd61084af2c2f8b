"""The run folder: its file names, atomic writes, and the check that a rerun resumes its own config.

A workdir is data, not code: everything here reads and writes JSON. Paths go through
`etils.epath`, so a workdir may be a local folder or an object-store URI such as
gs://bucket/run (docs/scaling.md, "Workdirs on Cloud Storage").
"""

import importlib.util
import json
import logging
import os
from typing import Any

import ml_collections
from etils import epath

from aejax import errors

CONFIG_FILE = "config.json"  # The resolved config of the run.
RUN_INFO_FILE = "run_info.json"  # Image shape and data source: what aejax.load needs.
METRICS_FILE = "metrics.jsonl"  # One JSON object per line: step and train/* or eval/* metrics.
FINAL_METRICS_FILE = "final_metrics.json"  # The last evaluation; its presence means "finished".
CHECKPOINTS_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
EVAL_RESULTS_JSON = "eval_results.json"  # Written by `python -m aejax.evaluate`.
EVAL_RESULTS_MD = "eval_results.md"


def as_path(path: str | os.PathLike) -> epath.Path:
  """`path` as an epath.Path: a local path behaves as pathlib's, gs://... as an object store.

  (pathlib.Path("gs://bucket/run") would be the local folder "gs:/bucket/run".)
  """
  return epath.Path(path)


def is_uri(path: str | os.PathLike) -> bool:
  """True for gs://, s3:// and the other object stores epath reaches; False for local paths."""
  return "://" in os.fspath(path)


def check_location(path: str | os.PathLike, what: str = "--workdir") -> None:
  """ConfigError unless `path` is a local path, or a gs:// URI with its client installed.

  Checked before a run starts: TensorBoard's writer reaches gs:// through
  google-cloud-storage (in aejax[gcs]), and no other store is tested.
  """
  if not is_uri(path):
    return
  scheme = os.fspath(path).split("://", 1)[0]
  if scheme != "gs":
    raise errors.ConfigError(
      f"{what}={os.fspath(path)}: {scheme}:// is not supported; use a local path or gs://"
    )
  try:
    found = importlib.util.find_spec("google.cloud.storage") is not None
  except ModuleNotFoundError:
    found = False
  if not found:
    raise errors.ConfigError(
      f"{what}={os.fspath(path)}: writing to gs:// needs google-cloud-storage; "
      "pip install 'aejax[gcs]'"
    )


def local_absolute(path: str | os.PathLike) -> epath.Path:
  """A local path made absolute (Orbax needs that); a URI as it is (it is absolute already)."""
  path = as_path(path)
  return path if is_uri(path) else path.absolute()


def write_atomically(path: str | os.PathLike, text: str) -> None:
  """Writes so that a kill never leaves a half-written file.

  Locally: a temporary file renamed over the old one. An object store replaces an object
  whole on each write (a reader sees the old or the new one), and has no cheap rename.
  """
  path = as_path(path)
  if is_uri(path):
    path.write_text(text)
    return
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  tmp.replace(path)


def write_json(path: epath.Path, value: Any) -> None:
  write_atomically(path, json.dumps(value, indent=2) + "\n")


def read_json(path: epath.Path) -> Any:
  """The JSON in `path`; ConfigError naming the file if it is missing or unreadable."""
  try:
    return json.loads(as_path(path).read_text())
  except (OSError, json.JSONDecodeError) as error:
    raise errors.ConfigError(f"{path}: unreadable ({error})") from error


def write_config(workdir: epath.Path, config: ml_collections.ConfigDict) -> None:
  write_atomically(workdir / CONFIG_FILE, config.to_json_best_effort(indent=2) + "\n")


def write_run_info(workdir: epath.Path, run_info: dict) -> None:
  write_json(workdir / RUN_INFO_FILE, run_info)


def final_step(workdir: epath.Path) -> int | None:
  """The step of final_metrics.json, or None if the run has not finished."""
  try:
    return json.loads((as_path(workdir) / FINAL_METRICS_FILE).read_text())["step"]
  except (OSError, ValueError, KeyError, TypeError):
    return None


def write_final_metrics(workdir: epath.Path, step: int, metrics: dict) -> None:
  write_json(as_path(workdir) / FINAL_METRICS_FILE, {"step": step, **metrics})


def has_checkpoints(workdir: epath.Path) -> bool:
  folder = as_path(workdir) / CHECKPOINTS_DIR
  return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


# Fields that may change when a run resumes in the same workdir: they change how long it
# runs, how often it logs, where it reads files or keeps the split (the same batches either
# way), not what its checkpoints are.
RESUMABLE_FIELDS = frozenset({
  "num_epochs", "total_steps", "log_every_steps", "eval_every_steps", "checkpoint_every_steps",
  "keep_checkpoints", "eval_batch_size", "num_figure_images", "final_figures", "scatter_method",
  "progress_bar", "steps_per_dispatch", "nonfinite", "data.data_dir", "data.source",
  "data.eval_split", "data.eval_limit", "data.placement", "profile_steps",
  "peak_tflops_per_device",
})  # fmt: skip


# Fields added to the config after workdirs were already written, with the value that runs
# written before them used: a saved config without the field resumes under that value.
ADDED_FIELDS = {
  "model.dtype": "float32", "model.conv_impl": "auto", "data.placement": "auto",
  "matmul_precision": "default",
}  # fmt: skip


def flatten_fields(tree: dict, prefix: str = "") -> dict[str, Any]:
  """A nested config dict as {"model.latent_dim": value, ...}."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten_fields(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def config_diff(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
  """{field: (old, new)} for every dotted field whose value differs (missing is None)."""
  old_flat, new_flat = flatten_fields(old), flatten_fields(new)
  return {
    field: (old_flat.get(field), new_flat.get(field))
    for field in sorted(set(old_flat) | set(new_flat))
    if old_flat.get(field) != new_flat.get(field)
  }


def check_config_change(workdir: epath.Path, config, allow: bool) -> None:
  """Refuses to resume checkpoints of another config in `workdir`, listing the changed fields.

  Only fields outside RESUMABLE_FIELDS count. A workdir without checkpoints
  can be reused freely; `allow` (--allow_config_change) overrides the check,
  and the new config.json then replaces the old one.
  """
  saved = as_path(workdir) / CONFIG_FILE
  if not (saved.exists() and has_checkpoints(workdir)):
    return
  try:
    old = json.loads(saved.read_text())
  except (OSError, json.JSONDecodeError) as error:
    raise errors.ConfigError(f"{saved}: unreadable saved config ({error})") from error
  new = json.loads(config.to_json_best_effort())  # The same JSON round trip as the saved one.
  changed = {
    field: (before, after)
    for field, (before, after) in config_diff(old, new).items()
    if field not in RESUMABLE_FIELDS
    and not (before is None and field in ADDED_FIELDS and after == ADDED_FIELDS[field])
  }
  if not changed:
    return
  lines = "; ".join(f"config.{f}: {o!r} -> {n!r}" for f, (o, n) in changed.items())
  if allow:
    logging.warning("config changed in %s (allowed by --allow_config_change): %s", workdir, lines)
    return
  raise errors.ConfigError(
    f"{workdir} holds checkpoints of a different config: {lines}. Use a new --workdir, or "
    "pass --allow_config_change to resume these checkpoints with the new config"
  )
