"""Fault injection and property tests: each proves a guarantee listed in docs/reliability.md."""

# The kill and CLI tests run `python -m aejax.main` in subprocesses, the property tests
# (hypothesis) run in-process. `pytest -m slow tests/test_reliability.py` adds the long variants.

import errno
import functools
import importlib.util
import logging
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from ml_collections import config_flags

import aejax
from aejax import (
  checkpoint,
  configs,
  data,
  errors,
  main,
  metrics,
  models,
  optim,
  parallel,
  steps,
  tasks,
  train,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "experiments" / "quickstart.py"
# aejax's documented errors: anything else escaping the CLI or the API is a bug.
DOCUMENTED = (errors.ConfigError, errors.CheckpointError, errors.InputError, data.DataError)
TMP_SUFFIX = ".orbax-checkpoint-tmp"


def _quickstart_tiny(**overrides):
  """experiments/quickstart.py:tiny with `overrides`, and the same as CLI flags."""
  spec = importlib.util.spec_from_file_location("quickstart", QUICKSTART)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("tiny")
  for field, value in overrides.items():
    c[field] = value
  args = [f"--config={QUICKSTART}:tiny"] + [f"--config.{k}={v}" for k, v in overrides.items()]
  return c, args


# The run every test here starts from: 16 steps of the quickstart's tiny VAE, a checkpoint every
# 4 steps, all four kept (so kills land between and during writes, and there are older
# checkpoints to fall back to), evaluation only at the end.
RUN = dict(
  total_steps=16,
  checkpoint_every_steps=4,
  keep_checkpoints=4,
  eval_every_steps=16,
  final_figures=False,
)


def _steps(workdir: pathlib.Path) -> tuple[list[int], list[str]]:
  """(finished checkpoint steps, names of half-written ones) in workdir/checkpoints."""
  try:
    names = os.listdir(workdir / "checkpoints")
  except FileNotFoundError:
    return [], []
  return sorted(int(n) for n in names if n.isdigit()), [n for n in names if TMP_SUFFIX in n]


def _params(workdir: pathlib.Path, step: int | None = None):
  return jax.device_get(aejax.load(workdir, step=step).params)


def _assert_bitwise_equal(a, b) -> None:
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b) and leaves_a
  for x, y in zip(leaves_a, leaves_b, strict=True):
    assert x.dtype == y.dtype and np.array_equal(x, y), "parameters differ"


def _cli_args(workdir, args) -> list[str]:
  return [sys.executable, "-m", "aejax.main", *args, f"--workdir={workdir}"]


def _run_cli(workdir, args, timeout=300) -> subprocess.CompletedProcess:
  return subprocess.run(
    _cli_args(workdir, args), cwd=ROOT, capture_output=True, text=True, timeout=timeout
  )


def _interrupt(workdir, args, log: pathlib.Path, when, sig=signal.SIGKILL) -> int:
  """Runs the CLI, polling its checkpoints folder; sends `sig` once `when(done, tmp)` is true.

  Returns the exit status: -9 for SIGKILL, 0 if the run finished before `when` held.
  """
  with log.open("w") as stderr:
    proc = subprocess.Popen(
      _cli_args(workdir, args), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr, text=True
    )
    try:
      while proc.poll() is None:
        if when(*_steps(workdir)):
          proc.send_signal(sig)
          break
        time.sleep(0.002)
      returncode = proc.wait(timeout=300)
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  return returncode


def _kill_during_write(workdir, args, log, min_done: int) -> None:
  """SIGKILL while a checkpoint is half-written (after `min_done` finished ones), then checks
  that the half-written folder was left behind: the kill really hit the write."""
  for _ in range(3):  # The write takes ~0.2 s; a kill that lands just after it is retried.
    code = _interrupt(workdir, args, log, lambda done, tmp: tmp and len(done) >= min_done)
    assert code == -signal.SIGKILL
    if _steps(workdir)[1]:
      return
  pytest.fail("three kills in a row missed the checkpoint write")


def _metric_steps(workdir) -> list[tuple[int, bool]]:
  """(step, is an evaluation) of every metrics.jsonl record, in order."""
  return [(r["step"], "eval/loss" in r) for r in metrics.read_metrics(workdir)]


# ---------------------------------------------------------------------------------------------
# kill -9 and signals.


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """An uninterrupted RUN, trained in-process (checkpoints 4, 8, 12, 16); tests use copies."""
  workdir = tmp_path_factory.mktemp("finished_run")
  config, _ = _quickstart_tiny(**RUN)
  train.train_and_evaluate(config, str(workdir))
  assert _steps(workdir)[0] == [4, 8, 12, 16]
  return workdir


def _finish_and_compare(workdir, args, finished_run) -> None:
  """Reruns the same command to the end: bitwise the uninterrupted run's parameters."""
  result = _run_cli(workdir, args)
  assert result.returncode == 0, result.stderr[-3000:]
  done, tmp = _steps(workdir)
  assert done[-1] == RUN["total_steps"] and not tmp
  _assert_bitwise_equal(_params(workdir), _params(finished_run))
  # metrics.jsonl holds every step once, as if the run had never been interrupted.
  assert _metric_steps(workdir) == _metric_steps(finished_run)


def test_kill_9_at_three_points_resumes_bitwise_identical(finished_run, tmp_path):
  """kill -9 during startup, during a checkpoint write and between two writes; after each the
  same command resumes from the newest intact checkpoint and the end is bitwise the same."""
  workdir = tmp_path / "run"
  _, args = _quickstart_tiny(**RUN)
  log = tmp_path / "stderr.txt"
  # 1. During startup: the workdir exists, nothing is compiled or checkpointed yet.
  started = lambda done, tmp: (workdir / "config.json").exists()  # noqa: E731
  assert _interrupt(workdir, args, log, started) == -signal.SIGKILL
  assert _steps(workdir) == ([], [])
  # 2. During the second checkpoint's write: the first is finished, the second half-written.
  _kill_during_write(workdir, args, log, min_done=1)
  # 3. Between writes, after two more finished checkpoints (the half-written one was removed).
  assert _interrupt(workdir, args, log, lambda done, tmp: len(done) >= 3) == -signal.SIGKILL
  assert _steps(workdir)[0][:3] == [4, 8, 12]
  _finish_and_compare(workdir, args, finished_run)


def test_a_streamed_run_killed_with_9_resumes_bitwise_the_resident_run(finished_run, tmp_path):
  """The stream's position is the step: a rerun restarts it at the newest checkpoint, and the
  end is bitwise the uninterrupted run's, which kept its split on device (aejax/feeding.py)."""
  workdir = tmp_path / "run"
  _, args = _quickstart_tiny(**RUN)
  args.append("--config.data.placement=streamed")
  log = tmp_path / "stderr.txt"
  assert _interrupt(workdir, args, log, lambda done, tmp: len(done) >= 2) == -signal.SIGKILL
  assert "training split streamed from the host" in log.read_text()
  assert _steps(workdir)[0][:2] == [4, 8] and _steps(workdir)[0][-1] < RUN["total_steps"]
  _finish_and_compare(workdir, args, finished_run)


def _stop_gracefully(workdir, args, log, sig) -> None:
  """`sig` once a checkpoint of this run exists: a final checkpoint, status 128 + sig and a
  message saying where the run stopped and how to resume."""
  first = len(_steps(workdir)[0])
  code = _interrupt(workdir, args, log, lambda done, tmp: len(done) > first, sig=sig)
  message = log.read_text()
  assert code == 128 + sig, message[-3000:]
  name = signal.Signals(sig).name
  assert f"{name} received: stopped after step" in message and "Traceback" not in message
  assert "Run the same command again to resume" in message
  stopped = int(message.split("stopped after step ")[1].split(",")[0])
  assert stopped == _steps(workdir)[0][-1]


@pytest.mark.slow
def test_kill_9_at_ten_random_points_and_signals_resume_bitwise_identical(finished_run, tmp_path):
  workdir = tmp_path / "run"
  _, args = _quickstart_tiny(**RUN)
  log = tmp_path / "stderr.txt"
  _stop_gracefully(workdir, args, log, signal.SIGTERM)
  _stop_gracefully(workdir, args, log, signal.SIGINT)
  rng = random.Random(0)
  for _ in range(10):
    kind, start = rng.choice(["time", "after_checkpoint", "during_write"]), time.monotonic()
    delay, n = rng.uniform(0.0, 12.0), len(_steps(workdir)[0]) + rng.randint(0, 2)

    def when(done, tmp, kind=kind, start=start, delay=delay, n=n):
      if kind == "time":  # Startup included.
        return time.monotonic() - start > delay
      if kind == "after_checkpoint":
        return len(done) >= n + 1
      return bool(tmp) and len(done) >= n

    code = _interrupt(workdir, args, log, when)
    if code == 0:
      break  # The run finished before this kill point.
    assert code == -signal.SIGKILL, log.read_text()[-3000:]
  _finish_and_compare(workdir, args, finished_run)


def test_main_reports_sigterm_as_one_line_and_status_128_plus_signal(monkeypatch, caplog):
  """What aejax.main does with the trainer's TrainingInterrupted (raised after the final
  checkpoint, tests/test_train.py) on SIGTERM; the slow kill test sends both signals for real."""

  def interrupted(*args, **kwargs):
    raise errors.TrainingInterrupted(6, signal.SIGTERM, "/w")

  class Flags:
    config, workdir, distributed, allow_config_change = None, "/w", False, False
    coordinator_address = num_processes = process_id = compilation_cache_dir = None
    initialization_timeout = 300

  monkeypatch.setattr(train, "train_and_evaluate", interrupted)
  monkeypatch.setattr(main, "FLAGS", Flags())
  levels = {name: logging.getLogger(name).level for name in ("", "absl")}
  try:
    with pytest.raises(SystemExit) as info:
      main.main(["aejax.main"])
  finally:
    for name, level in levels.items():
      logging.getLogger(name).setLevel(level)
  assert info.value.code == 128 + signal.SIGTERM
  assert "SIGTERM received: stopped after step 6, checkpoint saved in /w/checkpoints" in caplog.text
  assert "Run the same command again to resume" in caplog.text


# ---------------------------------------------------------------------------------------------
# Damaged checkpoints.


def _damage(step_dir: pathlib.Path, how: str) -> None:
  files = sorted(p for p in step_dir.rglob("*") if p.is_file())
  data_files = [p for p in files if p.parent.name == "d"]  # The arrays' bytes.
  assert data_files, files
  if how == "truncated":  # A copy or a disk that gave up half way.
    for path in files:
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  elif how == "bit_flips":  # Flipped bytes in the arrays' files.
    for path in data_files:
      raw = bytearray(path.read_bytes())
      raw[len(raw) // 2] ^= 0x10
      path.write_bytes(bytes(raw))
  elif how == "missing_files":
    for path in files:
      if path.name in ("_METADATA", "manifest.ocdbt") or path in data_files[:1]:
        path.unlink()
  elif how == "other_numbers":  # Valid files of another step: only the checksum can tell.
    other = step_dir.parent / str(int(step_dir.name) - 4) / "default"
    shutil.rmtree(step_dir / "default")
    shutil.copytree(other, step_dir / "default")
  elif how == "emptied":
    shutil.rmtree(step_dir)
    step_dir.mkdir()
  else:
    raise ValueError(how)


def _copy(workdir: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  return copy


def _fresh_state():
  """An initial state of the workdir's config, to restore into."""
  config, _ = _quickstart_tiny(**RUN)
  model = models.build_model(config.model, (8, 8, 1))
  tx = optim.make_optimizer(config.optimizer, config.total_steps)
  return steps.create_train_state(model, tx, (8, 8, 1), jax.random.key(9), parallel.make_mesh())


@pytest.mark.parametrize(
  "how", ["truncated", "bit_flips", "other_numbers", "missing_files", "emptied"]
)
def test_damaged_newest_checkpoint_falls_back_to_the_previous(finished_run, tmp_path, how, caplog):
  workdir = _copy(finished_run, tmp_path)
  _damage(workdir / "checkpoints" / "16", how)
  manager = checkpoint.checkpoint_manager(workdir, keep=4)
  restored = checkpoint.restore_latest(manager, _fresh_state())
  manager.close()
  assert int(restored.step) == 12
  assert "Checkpoint 16" in caplog.text and str(workdir / "checkpoints") in caplog.text
  _assert_bitwise_equal(jax.device_get(restored.params), _params(finished_run, step=12))
  # Nothing older was touched; the damaged one is kept aside, out of Orbax's sight.
  assert _steps(workdir)[0] == [4, 8, 12]
  assert (workdir / "checkpoints" / "16.unreadable").is_dir()


def test_resume_after_a_damaged_checkpoint_ends_bitwise_identical(finished_run, tmp_path):
  workdir = _copy(finished_run, tmp_path)
  _damage(workdir / "checkpoints" / "16", "truncated")
  _damage(workdir / "checkpoints" / "12", "bit_flips")
  config, _ = _quickstart_tiny(**RUN)
  state = train.train_and_evaluate(config, str(workdir))  # Redoes steps 9-16 from checkpoint 8.
  assert int(state.step) == 16
  assert _steps(workdir)[0] == [4, 8, 12, 16]
  _assert_bitwise_equal(_params(workdir), _params(finished_run))
  # The two damaged checkpoints are kept for inspection.
  assert {"12.unreadable", "16.unreadable"} <= set(os.listdir(workdir / "checkpoints"))


def test_load_skips_a_damaged_checkpoint_without_changing_the_workdir(finished_run, tmp_path):
  workdir = _copy(finished_run, tmp_path)
  _damage(workdir / "checkpoints" / "16", "other_numbers")
  before = sorted(os.listdir(workdir / "checkpoints"))
  assert aejax.load(workdir).step == 12
  with pytest.raises(errors.CheckpointError, match="step 16: checksum mismatch"):
    aejax.load(workdir, step=16)
  assert sorted(os.listdir(workdir / "checkpoints")) == before


def test_all_checkpoints_damaged_is_one_clear_error_and_nothing_is_deleted(finished_run, tmp_path):
  workdir = _copy(finished_run, tmp_path)
  for step in (4, 8, 12, 16):
    _damage(workdir / "checkpoints" / str(step), "truncated")
  before = sorted(os.listdir(workdir / "checkpoints"))
  manager = checkpoint.checkpoint_manager(workdir, keep=4)
  with pytest.raises(errors.CheckpointError, match="none of the 4 checkpoints") as info:
    checkpoint.restore_latest(manager, _fresh_state())
  manager.close()
  assert str(workdir / "checkpoints") in str(info.value)
  assert sorted(os.listdir(workdir / "checkpoints")) == before


# ---------------------------------------------------------------------------------------------
# Full disk, unwritable workdir.


def _raise_enospc(*args, **kwargs):
  raise OSError(errno.ENOSPC, "No space left on device")


async def _async_raise_enospc(*args, **kwargs):
  _raise_enospc()


def test_disk_full_during_a_background_checkpoint_write(finished_run, tmp_path, monkeypatch):
  """The write fails in Orbax's background thread: reported at the next save or the end."""
  from orbax.checkpoint._src.serialization import serialization

  workdir = _copy(finished_run, tmp_path)
  # The arrays' bytes are written by this coroutine, in the background; the disk is now full.
  assert hasattr(serialization, "async_serialize_from_host"), "Orbax moved its array writer"
  monkeypatch.setattr(serialization, "async_serialize_from_host", _async_raise_enospc)
  config, _ = _quickstart_tiny(**{**RUN, "total_steps": 24})  # Extend: step 20 cannot be saved.
  with pytest.raises(errors.CheckpointError) as info:
    train.train_and_evaluate(config, str(workdir))
  message = str(info.value)
  assert "No space left on device" in message and str(workdir / "checkpoints") in message
  assert "steps 4, 8, 12, 16" in message and "resume from step 16" in message
  monkeypatch.undo()
  assert _steps(workdir)[0] == [4, 8, 12, 16]
  _assert_bitwise_equal(_params(workdir), _params(finished_run))


def test_saving_a_state_replicated_on_8_cpu_devices_compiles_nothing(tmp_path, caplog):
  # Orbax's replica-parallel writes slice each array 8 ways, one small compiled program per
  # array shape and device; on CPU devices (one memory) aejax writes each array whole.
  state = _fresh_state()
  manager = checkpoint.checkpoint_manager(tmp_path, keep=3)
  with jax.log_compiles(), caplog.at_level(logging.WARNING):
    checkpoint.save_checkpoint(manager, 1, state)
    checkpoint.wait_for_checkpoints(manager)
  compiled = [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]
  assert compiled == []
  manager.close()
  restored = checkpoint.restore_latest(checkpoint.checkpoint_manager(tmp_path, keep=3), state)
  _assert_bitwise_equal(restored.params, state.params)


def test_disk_full_when_a_checkpoint_write_starts(tmp_path, monkeypatch):
  state = _fresh_state()
  manager = checkpoint.checkpoint_manager(tmp_path, keep=3)
  checkpoint.save_checkpoint(manager, 1, state)
  checkpoint.wait_for_checkpoints(manager)
  monkeypatch.setattr(manager, "save", _raise_enospc)
  with pytest.raises(errors.CheckpointError, match="writing checkpoint 2 to .* failed") as info:
    checkpoint.save_checkpoint(manager, 2, state)
  assert "No space left on device" in str(info.value) and "(steps 1)" in str(info.value)
  monkeypatch.undo()
  manager.close()
  assert _steps(tmp_path)[0] == [1]


# ---------------------------------------------------------------------------------------------
# The CLI: one line, status 2, no workdir left behind.


def _without_root_powers() -> list[str] | None:
  """A command prefix under which file permissions hold (root ignores them); None if none."""
  if os.geteuid() != 0:
    return []
  if shutil.which("setpriv"):
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--inh-caps=-all"]
  return None


def test_cli_errors_are_one_line_with_status_2(finished_run, tmp_path):
  """Real CLI runs, in parallel: bad configs, damaged checkpoints, unwritable folders. Each
  fails with one line and status 2, and a failed fresh run leaves no workdir. (The in-process
  tests below reach the same one-line handler with every kind of bad config and data.)"""
  damaged = _copy(finished_run, tmp_path)
  for step in (4, 8, 12, 16):
    _damage(damaged / "checkpoints" / str(step), "emptied")
  base = _quickstart_tiny()[1]
  cases = {
    "unknown field": (
      base + ["--config.model.latnet_dim=3"],
      "ConfigError: config.model.latnet_dim: unknown field",
    ),
    "superres": (
      base + ["--config.task.name=superres", "--config.task.superres_factor=3"],
      "ConfigError: config.task.superres_factor: 3 does not divide the image size 8x8",
    ),
    "damaged checkpoints": (
      _quickstart_tiny(**RUN)[1],
      "CheckpointError: none of the 4 checkpoints in",
    ),
  }
  workdirs = {name: tmp_path / name.replace(" ", "_") for name in cases}
  workdirs["damaged checkpoints"] = damaged
  prefix = _without_root_powers()
  if prefix is not None:
    # The run of finished_run, extended: its next checkpoint (step 20) cannot be written.
    workdirs["unwritable checkpoints"] = _copy(finished_run, tmp_path / "unwritable")
    cases["unwritable checkpoints"] = (
      _quickstart_tiny(**{**RUN, "total_steps": 24})[1],
      f"CheckpointError: writing checkpoint 20 to {workdirs['unwritable checkpoints']}",
    )
    workdirs["unwritable workdir"] = tmp_path / "readonly"
    workdirs["unwritable workdir"].mkdir()
    cases["unwritable workdir"] = (base, "PermissionError: [Errno 13] Permission denied")
    (workdirs["unwritable checkpoints"] / "checkpoints").chmod(0o500)
    workdirs["unwritable workdir"].chmod(0o500)
  procs = {}
  try:
    for name, (args, _) in cases.items():
      command = _cli_args(workdirs[name], args)
      if name.startswith("unwritable"):
        command = prefix + command
      procs[name] = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
      )
    outputs = {name: proc.communicate(timeout=300)[1] for name, proc in procs.items()}
  finally:
    for proc in procs.values():
      if proc.poll() is None:
        proc.kill()
    if prefix is not None:
      (workdirs["unwritable checkpoints"] / "checkpoints").chmod(0o700)
      workdirs["unwritable workdir"].chmod(0o700)
  for name, stderr in outputs.items():
    last = stderr.strip().splitlines()[-1]
    assert procs[name].returncode == 2, (name, stderr[-3000:])
    assert cases[name][1] in last and "Traceback" not in stderr, (name, stderr[-3000:])
    if name in ("damaged checkpoints", "unwritable checkpoints"):
      continue
    if name != "unwritable workdir":
      assert not workdirs[name].exists(), f"{name}: the failed run left its workdir behind"
  # Nothing was deleted or renamed: no checkpoint restored, so none is known to be damaged.
  assert sorted(os.listdir(damaged / "checkpoints")) == ["12", "16", "4", "8"]
  if prefix is not None:
    assert _steps(workdirs["unwritable checkpoints"])[0] == [4, 8, 12, 16]
    assert not list(workdirs["unwritable workdir"].iterdir())


# ---------------------------------------------------------------------------------------------
# Data errors: a clear error before the workdir exists.


def _write_idx(path: pathlib.Path, array: np.ndarray, cut: int = 0) -> None:
  header = (0x0800 | array.ndim).to_bytes(4, "big")
  header += b"".join(d.to_bytes(4, "big") for d in array.shape)
  payload = header + array.astype(np.uint8).tobytes()
  path.write_bytes(payload[: len(payload) - cut])


def _local_set(root: pathlib.Path, how: str) -> None:
  folder = root / "kmnist"
  folder.mkdir(parents=True)
  images = np.random.default_rng(0).integers(0, 256, (40, 28, 28))
  labels = np.zeros((40,), np.uint8)
  for split in ("train", "t10k"):
    _write_idx(folder / f"{split}-images-idx3-ubyte", images, cut=100 if how == "truncated" else 0)
    _write_idx(folder / f"{split}-labels-idx1-ubyte", labels)
  if how == "wrong_format":
    (folder / "train-images-idx3-ubyte").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))


@pytest.mark.parametrize(
  "case,error,match",
  [
    ("missing_folder", data.DataError, "does not exist"),
    ("wrong_format", data.DataError, "bad IDX magic number"),
    ("truncated", data.DataError, "truncated"),
    ("model_needs_28x28", errors.ConfigError, "28x28"),
    ("superres_factor", errors.ConfigError, "config.task.superres_factor: 3 does not divide"),
    ("conv_layers", errors.ConfigError, "config.model.conv_channels"),
    ("batch_too_large", errors.ConfigError, "config.batch_size: 2048 is larger than the training"),
  ],
)
def test_data_errors_fail_before_the_workdir_exists(tmp_path, case, error, match):
  c, _ = _quickstart_tiny()
  if case in ("missing_folder", "wrong_format", "truncated"):
    c.data.name, c.data.source, c.data.data_dir = "kmnist", "idx", str(tmp_path / "data")
    if case != "missing_folder":
      _local_set(tmp_path / "data", case)
  elif case == "model_needs_28x28":
    c.model.name, c.model.latent_dim = "lesson_conv_ae", 128
  elif case == "superres_factor":
    c.task.name, c.task.superres_factor = "superres", 3
  elif case == "conv_layers":
    c.model.name, c.model.conv_channels = "conv_vae", (8, 8, 8, 8)  # 16 does not divide 8.
  elif case == "batch_too_large":
    c.batch_size = 2048
  workdir = tmp_path / "workdir"
  with pytest.raises(error, match=match) as info:
    train.train_and_evaluate(c, str(workdir))
  assert "\n" not in str(info.value)
  assert not workdir.exists()


def test_images_with_nan_or_out_of_range_values_are_refused():
  good = np.zeros((2, 4, 4, 1), np.float32)
  for bad in (np.full_like(good, np.nan), good - 0.5, good + 1.5):
    with pytest.raises(data.DataError, match=r"\[0, 1\]"):
      data.ImageSet(bad, None, "x", "train", "idx")


# ---------------------------------------------------------------------------------------------
# Property tests: random invalid configs at the CLI's flag parser, malformed input at the API.

_FIELDS = {}


def _flatten(c, prefix=""):
  for name, value in c.items():
    if hasattr(value, "items"):
      _flatten(value, f"{prefix}{name}.")
    else:
      _FIELDS[f"{prefix}{name}"] = value


_flatten(configs.default_config())
_PATHS = sorted(_FIELDS) + ["nosuch", "model.nosuch", "data.name.deeper", "model", "optimizer"]
_VALUES = st.one_of(
  st.sampled_from(
    [
      "0",
      "1",
      "-1",
      "3",
      "8",
      "64",
      "2147483648",
      "1e9",
      "0.5",
      "-0.5",
      "nan",
      "inf",
      "-inf",
      "()",
      "(0,)",
      "(16,)",
      "(8, 8, 8, 8)",
      "[1, -2]",
      "true",
      "false",
      "maybe",
      "None",
      "''",
      "superres",
      "denoise",
      "conv_vae",
      "dense_ae",
      "lesson_conv_ae",
      "gaussian",
      "poisson",
      "sgd",
      "warmup_cosine",
      "piecewise",
      "skip",
      "tsne",
      "digits",
      "mnist",
      "idx",
    ]
  ),  # fmt: skip
  st.integers(-(2**33), 2**33).map(str),
  st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=6),
)


@st.composite
def _overrides(draw):
  n = draw(st.integers(1, 3))
  return [f"--config.{draw(st.sampled_from(_PATHS))}={draw(_VALUES)}" for _ in range(n)]


def _parse_config(argv):
  """What aejax.main's flags do with argv, on fresh flags (absl keeps parsed flags global)."""
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file(
    "config", None, "", flag_values=flag_values, lock_config=True, sys_argv=argv
  )
  flag_values(argv)
  flag_values.config.keys()  # A config file's load error surfaces on first use.
  return flag_values.config


def _check_before_compilation(c) -> None:
  """Everything train_and_evaluate does with a config before compiling, on the digits' shape;
  the train step is traced (jax.eval_shape), not compiled."""
  shape = (8, 8, 1)
  configs.validate(c, num_devices=jax.device_count())
  configs.validate_for_data(c, shape, 1437, shape)
  model = models.build_model(c.model, shape)
  configs.validate_objective(c, model.is_variational)
  tx = optim.make_optimizer(c.optimizer, max(c.total_steps, 1), 44)
  mesh = parallel.make_mesh()
  state = jax.eval_shape(
    lambda: steps.create_train_state(model, tx, shape, jax.random.key(0), mesh)
  )
  images = jax.ShapeDtypeStruct((c.batch_size, *shape), jnp.float32)
  labels = jax.ShapeDtypeStruct((c.batch_size,), jnp.int32) if c.model.num_classes else None
  batch = jax.eval_shape(lambda x, y: tasks.make_batch(jax.random.key(0), x, y, c), images, labels)
  step = functools.partial(steps.train_step, model=model, tx=tx, config=c)
  jax.eval_shape(step, state, batch, jax.random.key(1))


@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")  # ml-collections'.
@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(_overrides())
@example(["--config.nosuch=1"])
@example(["--config.batch_size=big"])
@example(["--config.batch_size=36"])
@example(["--config.model.latent_dim=0"])
@example(["--config.model.name=resnet"])
@example(["--config.model.likelihood=poisson"])
@example(["--config.model.hidden_widths=abc"])
@example(["--config.task.name=superres", "--config.task.superres_factor=3"])
@example(["--config.objective.beta=nan"])
@example(["--config.data.train_limit=-5"])
@example(["--config.model.num_classes=3"])
def test_random_config_overrides_succeed_or_fail_with_one_config_error(overrides):
  argv = ["aejax.main", f"--config={QUICKSTART}:tiny", *overrides]
  try:
    config = _parse_config(argv)
  except Exception as error:
    config_error = main.config_flag_error(argv, error)
    assert isinstance(config_error, errors.ConfigError), (overrides, error)
    assert "\n" not in str(config_error)
    return
  try:
    _check_before_compilation(config)
  except DOCUMENTED as error:
    assert "\n" not in str(error), str(error)


# The API: every method, every kind of malformed input.


@pytest.fixture(scope="module")
def handles(finished_run, tmp_path_factory):
  """aejax.load handles of two tiny VAEs on the digits: plain and conditional."""
  from helpers import tiny_digits_config

  workdir = tmp_path_factory.mktemp("conditional")
  train.train_and_evaluate(tiny_digits_config(total_steps=2, num_classes=10), str(workdir))
  return {"plain": aejax.load(finished_run), "conditional": aejax.load(workdir)}


_JUNK = st.sampled_from([None, "images", 3.5, [], [[0.1, 0.2], [0.3]], {"x": 1}, object()])
_DTYPES = st.sampled_from(
  [np.float32, np.float64, np.float16, np.uint8, np.int32, np.bool_, np.complex64]
)


def _arrays(good_shapes):
  """Mostly well-formed arrays (so success paths run too), else any dtype, rank and values."""
  well_formed = st.sampled_from(good_shapes).flatmap(
    lambda shape: hnp.arrays(np.float32, shape, elements=st.floats(0, 1, width=32))
  )
  anything = hnp.arrays(_DTYPES, hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=9))
  with_bad_values = st.sampled_from(good_shapes).flatmap(
    lambda shape: hnp.arrays(np.float32, shape, elements=st.floats(width=32))
  )
  return st.one_of(well_formed, well_formed, anything, with_bad_values, _JUNK)


_N = st.integers(0, 5)
_IMAGES = _N.flatmap(lambda n: _arrays([(n, 8, 8, 1), (n, 8, 8), (n, 28, 28, 1), (n, 8, 8, 3)]))
_LATENTS = _N.flatmap(lambda n: _arrays([(n, 2), (n, 3), (n,)]))
_LABELS = st.one_of(
  st.none(),
  hnp.arrays(
    st.sampled_from([np.int32, np.int64, np.float32]),
    st.integers(0, 5),
    elements=st.integers(-2, 12),
  ),
  _JUNK,
)


@settings(
  max_examples=120,
  deadline=None,
  derandomize=True,
  database=None,
  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
  which=st.sampled_from(["plain", "conditional"]),
  method=st.sampled_from(
    ["encode", "decode", "reconstruct", "posterior", "log_likelihood", "generate"]
  ),
  images=_IMAGES,
  latents=_LATENTS,
  labels=_LABELS,
  n=st.one_of(st.integers(-2, 6), st.floats(), st.text(max_size=2), st.none()),
  seed=st.one_of(st.integers(-3, 2**33), st.floats(), st.none()),
)
def test_malformed_api_input_gives_an_input_error_never_a_jax_traceback(
  handles, which, method, images, latents, labels, n, seed
):
  model = handles[which]
  calls = {
    "encode": lambda: model.encode(images, labels),
    "decode": lambda: model.decode(latents, labels),
    "reconstruct": lambda: model.reconstruct(images, labels),
    "posterior": lambda: model.posterior(images, labels),
    "log_likelihood": lambda: model.log_likelihood(images, latents, labels),
    "generate": lambda: model.generate(n, seed, labels),
  }
  try:
    out = calls[method]()
  except DOCUMENTED as error:
    assert "\n" not in str(error)
    return
  for array in out if isinstance(out, tuple) else (out,):
    assert isinstance(array, np.ndarray) and array.shape[0] >= 1


@pytest.mark.parametrize("step", [-1, 3, "16", 16.5, True, None, 16])
def test_load_with_odd_steps(finished_run, step):
  try:
    handle = aejax.load(finished_run, step=step)
  except errors.CheckpointError:
    return
  assert handle.step in (4, 8, 12, 16)


def test_load_of_a_broken_workdir(tmp_path):
  (tmp_path / "config.json").write_text("{ truncated by a kill")
  (tmp_path / "run_info.json").write_text("{}")
  with pytest.raises(errors.CheckpointError, match="unreadable config.json"):
    aejax.load(tmp_path)
  with pytest.raises(errors.CheckpointError, match="does not exist"):
    aejax.load(tmp_path / "config.json")


def test_api_wrong_image_shape_names_the_shape(handles):
  with pytest.raises(
    errors.InputError, match=r"expected shape \(N, 8, 8, 1\), got \(2, 28, 28, 1\)"
  ):
    handles["plain"].encode(np.zeros((2, 28, 28, 1), np.float32))
  with pytest.raises(errors.InputError, match=r"values must lie in \[0, 1\]"):
    handles["plain"].encode(np.full((2, 8, 8, 1), 2.0, np.float32))
  with pytest.raises(errors.InputError, match="NaN"):
    handles["plain"].reconstruct(np.full((2, 8, 8, 1), np.nan, np.float32))
