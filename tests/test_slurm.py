"""A sweep on a real SLURM cluster: `--emit=slurm`, sbatch, and every run trained exactly once.

The fixture starts a one-node SLURM (Debian's slurm-wlm and munge; .ci/run
installs them) on this machine with a config file it writes, and stops it
afterwards. Without SLURM, or without the root rights slurmd needs, the test
fails saying so: it does not skip.
"""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROGRAMS = ("sbatch", "squeue", "scontrol", "sinfo", "slurmctld", "slurmd", "munged", "munge")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start_munge() -> None:
  """munged, the authentication SLURM's daemons and commands share, unless it already runs."""
  if subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
    return
  socket_dir = pathlib.Path("/run/munge")
  socket_dir.mkdir(exist_ok=True)
  shutil.chown(socket_dir, "munge", "munge")
  subprocess.run(["runuser", "-u", "munge", "--", shutil.which("munged")], check=True)
  for _ in range(50):
    if subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
      return
    time.sleep(0.1)
  pytest.fail("munged started but `munge -n` still fails")


def _conf(base: pathlib.Path) -> str:
  node = socket.gethostname().split(".")[0]
  return "\n".join(
    [
      "ClusterName=aejax-test",
      f"SlurmctldHost={node}",
      f"SlurmctldPort={_free_port()}",
      f"SlurmdPort={_free_port()}",
      "AuthType=auth/munge",
      "SlurmUser=root",
      f"StateSaveLocation={base}/state",
      f"SlurmdSpoolDir={base}/spool",
      f"SlurmctldPidFile={base}/slurmctld.pid",
      f"SlurmdPidFile={base}/slurmd.pid",
      f"SlurmctldLogFile={base}/slurmctld.log",
      f"SlurmdLogFile={base}/slurmd.log",
      # No cgroups in containers: track processes by their parent, bind nothing.
      "ProctrackType=proctrack/linuxproc",
      "TaskPlugin=task/none",
      "SelectType=select/cons_tres",
      "SelectTypeParameters=CR_CPU",
      "JobAcctGatherType=jobacct_gather/none",
      "AccountingStorageType=accounting_storage/none",
      "MpiDefault=none",
      "ReturnToService=2",
      f"NodeName={node} CPUs={os.cpu_count()} State=UNKNOWN",
      f"PartitionName=test Nodes={node} Default=YES MaxTime=INFINITE State=UP",
      "",
    ]
  )


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
  """The environment (SLURM_CONF) of a running one-node SLURM cluster."""
  missing = [p for p in PROGRAMS if shutil.which(p) is None]
  if missing:
    pytest.fail(
      f"SLURM is not installed ({', '.join(missing)} not found): "
      "apt-get install slurm-wlm munge (.ci/run does this)"
    )
  if os.geteuid() != 0:
    pytest.fail("slurmd must run as root to start jobs: run this test as root (CI does)")
  _start_munge()
  base = tmp_path_factory.mktemp("slurm")
  for folder in ("state", "spool"):
    (base / folder).mkdir()
  conf = base / "slurm.conf"
  conf.write_text(_conf(base))
  env = {**os.environ, "SLURM_CONF": str(conf)}
  subprocess.run(["slurmctld", "-f", conf], env=env, check=True)
  subprocess.run(["slurmd", "-f", conf], env=env, check=True)
  try:
    deadline = time.monotonic() + 60
    while True:
      state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True)
      if state.stdout.strip() == "idle":
        break
      if time.monotonic() > deadline:
        logs = "".join(p.read_text()[-2000:] for p in base.glob("*.log"))
        pytest.fail(f"the SLURM node is not idle after 60 s ({state.stdout!r}):\n{logs}")
      time.sleep(0.5)
    yield env
  finally:
    subprocess.run(["scontrol", "shutdown"], env=env, capture_output=True)


def _submit_and_wait(script, env, minutes: int) -> str:
  """Submits `script` with sbatch and waits until the job (or array) has left the queue."""
  submitted = subprocess.run(
    ["sbatch", "--parsable", script], cwd=ROOT, env=env, capture_output=True, text=True
  )
  assert submitted.returncode == 0, submitted.stderr
  job = submitted.stdout.strip().split(";")[0]
  deadline = time.monotonic() + 60 * minutes
  while subprocess.run(
    ["squeue", "-h", "-j", job], env=env, capture_output=True, text=True
  ).stdout.strip():
    assert time.monotonic() < deadline, f"job {job} did not finish in {minutes} minutes"
    time.sleep(1)
  return job


def test_a_sweep_submitted_as_a_job_array_trains_every_run_once_and_writes_the_report(
  slurm, tmp_path
):
  sweep_dir = tmp_path / "sweep"
  # 2 latent sizes x 2 seeds: two vmapped groups, so two array tasks (shards 0/2 and 1/2).
  env = dict(slurm)
  env.pop("XLA_FLAGS", None)  # One CPU device per worker, as in a sweep (not the tests' 8).
  emit = subprocess.run(
    [
      sys.executable,
      "scripts/sweep.py",
      "--config=experiments/latent_sweep.py:tiny",
      f"--sweep_dir={sweep_dir}",
      "--latent_dims=2,3",
      "--seeds=0,1",
      "--nll_samples=8",
      "--probe_train_size=200",
      "--config.final_figures=false",
      "--emit=slurm",
      "--slurm_cpus_per_task=1",
      "--slurm_time=00:20:00",
    ],  # fmt: skip
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert emit.returncode == 0, emit.stderr[-3000:]
  script = sweep_dir / "slurm" / "sweep.sbatch"
  job = _submit_and_wait(script, env, minutes=15)
  task_logs = sorted((sweep_dir / "logs").glob(f"slurm-{job}_*.txt"))
  assert len(task_logs) == 2, task_logs
  details = "\n".join(p.read_text()[-2000:] for p in task_logs)
  # Each task trained its shard: two tasks, each one job of two vmapped seeds.
  states = subprocess.run(
    ["scontrol", "-o", "show", "job", job], env=env, capture_output=True, text=True
  ).stdout
  assert states.count("JobState=COMPLETED") == 2 and "ExitCode=0:0" in states, states + details
  names = [
    "latent_dim=2,seed=0",
    "latent_dim=2,seed=1",
    "latent_dim=3,seed=0",
    "latent_dim=3,seed=1",
  ]
  for name in names:
    assert (sweep_dir / name / "eval_results.json").is_file(), details
  events = [json.loads(line) for line in (sweep_dir / "sweep_log.jsonl").read_text().splitlines()]
  trained = [run for e in events if e["event"] == "start" for run in e["runs"]]
  assert sorted(trained) == sorted(names)  # Every run started once, by one of the tasks.
  assert "shard 0 of 2: 2 of the sweep's 4 runs" in task_logs[0].read_text()
  assert (sweep_dir / "report.md").is_file(), details
  assert all(name in (sweep_dir / "report.md").read_text() for name in ("latent_dim", "seed"))


# One training run over two SLURM tasks: `srun` starts both processes and `--distributed` lets
# JAX read the coordinator, the process count and each rank from SLURM's environment.
TRAIN_WITH_SRUN = """#!/bin/bash
#SBATCH --job-name=aejax-two-tasks
#SBATCH --ntasks=2
#SBATCH --cpus-per-task=1
#SBATCH --time=00:10:00
#SBATCH --output={logs}/slurm-%j.txt
#SBATCH --chdir={root}
export XLA_FLAGS=--xla_force_host_platform_device_count=2
srun {python} -m aejax.main --config=experiments/quickstart.py:tiny --config.total_steps=40 \\
  --config.final_figures=false --workdir={workdir} --distributed
"""


def test_a_training_run_launched_with_srun_trains_with_one_process_per_task(slurm, tmp_path):
  workdir, logs = tmp_path / "run", tmp_path / "logs"
  logs.mkdir()
  script = tmp_path / "train.sbatch"
  script.write_text(
    TRAIN_WITH_SRUN.format(logs=logs, root=ROOT, python=sys.executable, workdir=workdir)
  )
  env = dict(slurm)
  env.pop("XLA_FLAGS", None)
  job = _submit_and_wait(script, env, minutes=10)
  log = (logs / f"slurm-{job}.txt").read_text()
  state = subprocess.run(
    ["scontrol", "-o", "show", "job", job], env=env, capture_output=True, text=True
  ).stdout
  assert "JobState=COMPLETED" in state and "ExitCode=0:0" in state, state + log[-3000:]
  # Both tasks joined one run of 4 devices; process 0 alone wrote the final metrics.
  assert "Process 0 of 2 (2 local devices of 4 in all)" in log, log[-3000:]
  assert "Process 1 of 2 (2 local devices of 4 in all)" in log, log[-3000:]
  assert json.loads((workdir / "final_metrics.json").read_text())["step"] == 40
  assert len(list((workdir / "tensorboard").iterdir())) == 1
