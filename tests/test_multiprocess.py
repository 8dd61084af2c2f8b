"""Multi-process runs: several `python -m aejax.main` processes on this machine train one run.

Each process gets 2 fake CPU devices and the processes' collectives go over
gloo on localhost, which is how JAX runs a multi-host program on one machine.
The reference is one process with 4 devices: the same 4-device mesh.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import built_once, free_port

import aejax
from aejax import distributed, errors, fid

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Long enough that a signal lands mid-run: dispatches end at every checkpoint (20 steps).
RUN = [
  "--config=experiments/quickstart.py:tiny",
  "--config.total_steps=120",
  "--config.checkpoint_every_steps=20",
  "--config.keep_checkpoints=10",
  "--config.eval_every_steps=120",
  "--config.final_figures=False",
]


def _env(devices_per_process: int) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices_per_process}"
  return env


def _start(
  workdir,
  args,
  num_processes: int,
  logs: pathlib.Path,
  program: tuple = ("-m", "aejax.main"),
  program_0: tuple | None = None,
  devices_per_process: int = 2,
) -> list[subprocess.Popen]:
  """`num_processes` processes of one run (2 devices each), their stderr in logs/process_I.txt.

  Each runs `python *program ARGS`; process 0 `python *program_0 ARGS` if given (a
  fault-injecting stand-in for aejax.main, say).
  """
  logs.mkdir(parents=True, exist_ok=True)
  address = f"localhost:{free_port()}"
  procs = []
  for i in range(num_processes):
    runs = program_0 if i == 0 and program_0 else program
    command = [sys.executable, *runs, *args, f"--workdir={workdir}"]
    if num_processes > 1:
      command += [
        f"--coordinator_address={address}",
        f"--num_processes={num_processes}",
        f"--process_id={i}",
        "--initialization_timeout=60",
      ]
    with (logs / f"process_{i}.txt").open("w") as stderr:
      procs.append(
        subprocess.Popen(
          command,
          cwd=ROOT,
          env=_env(devices_per_process),
          stdout=subprocess.DEVNULL,
          stderr=stderr,
          text=True,
        )
      )
  return procs


def _wait(procs, timeout=300) -> list[int]:
  deadline = time.monotonic() + timeout
  try:
    return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()


def _log(logs: pathlib.Path, i: int) -> str:
  return (logs / f"process_{i}.txt").read_text()


def _params(workdir):
  return jax.device_get(aejax.load(workdir).params)


def _checkpoints(workdir) -> list[int]:
  folder = pathlib.Path(workdir) / "checkpoints"
  if not folder.is_dir():
    return []
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
  """RUN trained by 2 processes x 2 devices, uninterrupted: (workdir, logs)."""

  def build(base):
    codes = _wait(_start(base / "run", RUN, 2, base / "logs"))
    assert codes == [0, 0], _log(base / "logs", 0)[-3000:] + _log(base / "logs", 1)[-3000:]

  base = built_once(tmp_path_factory, "two_process_run", build)
  return base / "run", base / "logs"


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
  """RUN trained by 1 process x 4 devices: the reference of the 2-process runs."""

  def build(base):
    result = subprocess.run(
      [sys.executable, "-m", "aejax.main", *RUN, f"--workdir={base / 'run'}"],
      cwd=ROOT,
      env=_env(4),
      capture_output=True,
      text=True,
      timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]

  return built_once(tmp_path_factory, "one_process_run", build) / "run"


def _assert_same_run(two, one) -> None:
  """Parameters and eval metrics of `two` (2 processes) close to `one`'s (1 process), and only
  process 0 wrote: one TensorBoard event file, every metrics line once.

  Not bitwise: the gradient all-reduce adds the devices' parts in another order when they are
  in two processes (gloo) than in one (XLA's in-process reduction), a float32 rounding
  difference that 120 Adam steps of a plain run keep near 1e-7."""
  a, b = _params(two), _params(one)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
  final = [aejax.metrics.read_metrics(d)[-1] for d in (two, one)]
  assert final[0]["step"] == final[1]["step"]
  np.testing.assert_allclose(final[0]["eval/loss"], final[1]["eval/loss"], rtol=1e-5)
  assert len(list((two / "tensorboard").iterdir())) == 1
  steps = [r["step"] for r in aejax.metrics.read_metrics(two)]
  assert steps == [r["step"] for r in aejax.metrics.read_metrics(one)]


def test_two_processes_train_the_same_parameters_as_one_process_with_as_many_devices(
  two_process_run, one_process_run
):
  workdir, logs = two_process_run
  assert "Process 0 of 2 (2 local devices of 4 in all)" in _log(logs, 0)
  assert "Process 1 of 2 (2 local devices of 4 in all)" in _log(logs, 1)
  # 256 digits of 8x8 float32 and their labels, a quarter on each device: 16,640 bytes.
  assert "training split resident: 16.2 KiB per device" in _log(logs, 0)
  _assert_same_run(workdir, one_process_run)
  assert aejax.metrics.read_metrics(workdir)[-1]["step"] == 120


def test_two_processes_streaming_the_data_train_what_one_resident_process_trains(
  one_process_run, tmp_path
):
  workdir, logs = tmp_path / "run", tmp_path / "logs"
  codes = _wait(_start(workdir, [*RUN, "--config.data.placement=streamed"], 2, logs))
  assert codes == [0, 0], _log(logs, 0)[-3000:] + _log(logs, 1)[-3000:]
  for i in (0, 1):
    assert "training split streamed from the host" in _log(logs, i)
  _assert_same_run(workdir, one_process_run)


# A vmapped group of two seeds (train.train_population) from aejax.main's flags: the program
# every process of a group runs, and the one-process reference too.
GROUP_OF_TWO_SEEDS = """
import copy, pathlib, sys
from aejax import main, train
def train_group(config, workdir, allow_config_change=False):
  group = [copy.deepcopy(config) for _ in range(2)]
  group[1].seed = config.seed + 1
  train.train_population(group, [pathlib.Path(workdir) / f"seed{i}" for i in range(2)])
main.train_then_finalize = train_group
sys.argv[0] = "aejax.main"
main.run()
"""


# 40 steps: the vmapped program's rounding differences grow faster than the plain one's (at
# 120 steps they reach 2e-4 in a few parameters, at 4 steps they are 6e-8).
GROUP_RUN = [*RUN, "--config.total_steps=40", "--config.eval_every_steps=40"]


def test_two_processes_train_a_vmapped_group_as_one_process_does(tmp_path):
  program = ("-c", GROUP_OF_TWO_SEEDS)
  two, one, logs = tmp_path / "two", tmp_path / "one", tmp_path / "logs"
  codes = _wait(_start(two, GROUP_RUN, 2, logs, program=program))
  assert codes == [0, 0], _log(logs, 0)[-3000:] + _log(logs, 1)[-3000:]
  assert "x 2 members (seed0, seed1)" in _log(logs, 0)
  codes = _wait(_start(one, GROUP_RUN, 1, logs / "one", program=program, devices_per_process=4))
  assert codes == [0], _log(logs / "one", 0)[-3000:]
  for member in ("seed0", "seed1"):
    _assert_same_run(two / member, one / member)
  assert not np.array_equal(
    jax.tree.leaves(_params(two / "seed0"))[0], jax.tree.leaves(_params(two / "seed1"))[0]
  )


# What differs between two evaluations of the same numbers: wall time and memory.
TIMING_FIELDS = (
  "seconds", "main_pass_seconds", "main_pass_images_per_sec", "phase_seconds", "peak_rss_mib",
)  # fmt: skip


def test_two_processes_evaluate_to_the_numbers_of_one_process(two_process_run, tmp_path):
  workdir, _ = two_process_run
  # FID's classifier, trained here once (8 s): each process of an evaluation loads it.
  cache = tmp_path / "fid_cache"
  fid.classifier_extractor("digits", cache_dir=cache)
  results = {}
  for processes in (1, 2):
    run = tmp_path / f"run_{processes}"
    shutil.copytree(workdir, run)
    args = ["--fid=true", f"--fid_cache_dir={cache}", "--nll_samples=16"]
    if processes == 1:
      done = subprocess.run(
        [sys.executable, "-m", "aejax.evaluate", f"--workdir={run}", *args],
        cwd=ROOT, env=_env(4), capture_output=True, text=True, timeout=300,
      )  # fmt: skip
      assert done.returncode == 0, done.stderr[-3000:]
    else:
      logs = tmp_path / "logs"
      procs = _start(run, args, 2, logs, program=("-m", "aejax.evaluate"))
      assert _wait(procs) == [0, 0], _log(logs, 0)[-3000:] + _log(logs, 1)[-3000:]
    results[processes] = json.loads((run / "eval_results.json").read_text())
  one, two = results[1], results[2]
  assert one["num_devices"] == two["num_devices"] == 4
  assert one.keys() == two.keys() and "nll" in one and "linear_probe_accuracy" in one
  assert one["fid"] > 0 and one["fid_reconstructions"] > 0
  for name, value in one.items():
    if name in TIMING_FIELDS or name == "workdir":
      continue
    if isinstance(value, float):
      np.testing.assert_allclose(two[name], value, rtol=1e-6, err_msg=name)
    else:
      assert two[name] == value, name


def test_sigterm_to_one_process_stops_both_at_one_step_and_the_rerun_resumes_bitwise(
  two_process_run, tmp_path
):
  reference, _ = two_process_run
  workdir, logs = tmp_path / "run", tmp_path / "logs"
  procs = _start(workdir, RUN, 2, logs)
  try:
    while not _checkpoints(workdir) and all(p.poll() is None for p in procs):
      time.sleep(0.01)
    procs[1].send_signal(signal.SIGTERM)  # Process 1 alone.
  finally:
    codes = _wait(procs)
  assert codes == [143, 143], _log(logs, 0)[-3000:] + _log(logs, 1)[-3000:]
  stopped = []
  for i in range(2):
    text = _log(logs, i)
    assert "SIGTERM received: stopped after step" in text and "Traceback" not in text
    stopped.append(int(text.split("stopped after step ")[1].split(",")[0]))
  assert stopped[0] == stopped[1] < 120
  assert _checkpoints(workdir)[-1] == stopped[0]
  # The same command again: resumes there and ends with the uninterrupted run's parameters.
  codes = _wait(_start(workdir, RUN, 2, tmp_path / "logs_rerun"))
  assert codes == [0, 0], _log(tmp_path / "logs_rerun", 0)[-3000:]
  assert f"Resumed from the checkpoint at step {stopped[0]}" in _log(tmp_path / "logs_rerun", 0)
  resumed, uninterrupted = _params(workdir), _params(reference)
  for x, y in zip(jax.tree.leaves(resumed), jax.tree.leaves(uninterrupted), strict=True):
    assert np.array_equal(x, y), "parameters differ"


def test_a_workdir_of_another_config_stops_every_process_with_status_2(two_process_run, tmp_path):
  reference, _ = two_process_run
  logs = tmp_path / "logs"
  start = time.monotonic()
  # Process 0 alone checks the workdir; process 1 learns the verdict instead of waiting.
  codes = _wait(_start(reference, [*RUN, "--config.model.latent_dim=3"], 2, logs), timeout=120)
  elapsed = time.monotonic() - start
  assert codes == [2, 2], _log(logs, 1)[-3000:]
  assert "holds checkpoints of a different config: config.model.latent_dim: 2 -> 3" in _log(logs, 0)
  line = _log(logs, 1).strip().splitlines()[-1]
  assert "ConfigError: process 0 (set-up): " in line and "config.model.latent_dim: 2 -> 3" in line
  # JAX's start-up and the data set are most of it; a collective's timeout would be 100 s+.
  assert elapsed < 60, elapsed


# aejax.main in a process whose disk is full once its first checkpoint is written: the
# trainer's write test in the checkpoints folder fails with ENOSPC.
DISK_FULL_AFTER_FIRST_CHECKPOINT = """
import errno, os, sys, tempfile
from aejax import main
real_mkdtemp = tempfile.mkdtemp
def mkdtemp(*args, **kwargs):
  folder = kwargs.get("dir")
  if kwargs.get("prefix") == ".write-test-" and any(n.isdigit() for n in os.listdir(folder)):
    raise OSError(errno.ENOSPC, "No space left on device")
  return real_mkdtemp(*args, **kwargs)
tempfile.mkdtemp = mkdtemp
sys.argv[0] = "aejax.main"
main.run()
"""


def test_a_full_disk_in_one_process_stops_every_process_with_status_2(tmp_path):
  workdir, logs = tmp_path / "run", tmp_path / "logs"
  program_0 = ("-c", DISK_FULL_AFTER_FIRST_CHECKPOINT)
  codes = _wait(_start(workdir, RUN, 2, logs, program_0=program_0))
  assert codes == [2, 2], _log(logs, 0)[-3000:] + _log(logs, 1)[-3000:]
  found = "writing checkpoint 40 to " + str(workdir / "checkpoints") + " failed (OSError: [Errno"
  assert found in _log(logs, 0)
  last = _log(logs, 1).strip().splitlines()[-1]
  assert "CheckpointError: process 0 (checkpoint): " + found in last
  assert "resume from step 20" in last
  assert _checkpoints(workdir) == [20]


def _join_alone(workdir, address, process_id: int) -> subprocess.CompletedProcess:
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "aejax.main",
      *RUN,
      f"--workdir={workdir}",
      f"--coordinator_address={address}",
      "--num_processes=2",
      f"--process_id={process_id}",
      "--initialization_timeout=3",
    ],  # fmt: skip
    cwd=ROOT,
    env=_env(2),
    capture_output=True,
    text=True,
    timeout=120,
  )


def test_a_process_whose_coordinator_never_comes_exits_2_naming_the_address(tmp_path):
  address = f"localhost:{free_port()}"
  result = _join_alone(tmp_path / "run", address, process_id=1)
  assert result.returncode == 2, result.stderr[-3000:]
  assert f"DistributedError: process 1 of 2 could not join the run at {address} within 3 s" in (
    result.stderr
  )
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "run").exists()


def test_a_coordinator_whose_peers_never_come_is_ended_by_jax_after_the_timeout(tmp_path):
  """JAX's runtime aborts the coordinator (SIGABRT) when the others miss the timeout: no Python
  error to catch. aejax's line before it says what the process waited for (docs/scaling.md)."""
  address = f"localhost:{free_port()}"
  result = _join_alone(tmp_path / "run", address, process_id=0)
  assert result.returncode == -signal.SIGABRT
  assert f"Process 0 of 2: joining the run at {address} (waiting up to 3 s" in result.stderr
  assert "DEADLINE_EXCEEDED" in result.stderr
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
  "settings, message",
  [
    ((None, 2, 0), "--coordinator_address: required with --num_processes and --process_id"),
    (("localhost:1", None, 0), "--num_processes: required"),
    (("localhost:1", 2, None), "--process_id: required"),
    (("localhost:1", 0, 0), "--num_processes=0: must be at least 1"),
    (("localhost:1", 2, 2), "--process_id=2: must be in [0, 2) for 2 processes"),
    (("localhost", 2, 0), "--coordinator_address='localhost': expected HOST:PORT"),
  ],
)
def test_incomplete_or_impossible_settings_are_config_errors_naming_the_flag(settings, message):
  with pytest.raises(errors.ConfigError, match=f"^{re.escape(message)}"):
    distributed.initialize(*settings)


def test_settings_fall_back_to_the_environment_and_one_process_does_nothing(monkeypatch):
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "host:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("JAX_PROCESS_ID", "3")
  assert distributed.settings_from_env(None, None, None) == ("host:1234", 4, 3)
  assert distributed.settings_from_env("other:1", 2, 0) == ("other:1", 2, 0)  # Flags win.
  monkeypatch.setenv("JAX_NUM_PROCESSES", "four")
  with pytest.raises(errors.ConfigError, match="JAX_NUM_PROCESSES='four': not an integer"):
    distributed.settings_from_env(None, None, None)
  for var in distributed.ENV_VARS.values():
    monkeypatch.delenv(var)
  assert distributed.initialize() is False  # No settings: a one-process run, nothing to join.


def test_one_process_phases_pass_errors_through_unchanged():
  assert distributed.any_process(5) == 5
  with pytest.raises(errors.CheckpointError, match="^damaged$"):
    with distributed.agreed("restore"):
      raise errors.CheckpointError("damaged")
  with distributed.agreed("set-up"):
    pass
