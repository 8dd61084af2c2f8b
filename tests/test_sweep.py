"""aejax/sweep.py and scripts/sweep.py: the grid, run names, jobs, and real sweeps end to end,
interrupted (SIGTERM, kill -9) and resumed, and the report regenerated without training."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import ml_collections
import pytest
from helpers import read_tensorboard

from aejax import configs, errors, sweep, sweep_grid, train

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXPERIMENT = ROOT / "experiments" / "latent_sweep.py"
# Cheap evaluation settings (the NLL estimator and probes are tested in test_evaluate.py), and
# no per-run final figures (the report draws its own).
FLAGS = (
  "--nll_samples=8",
  "--probe_train_size=200",
  "--status_every=5",
  "--config.final_figures=false",
)


def _env():
  """The tests' environment, but one CPU device per worker, as a sweep gives each worker one
  device (sharding is tested elsewhere; 8 fake devices make every compilation slower)."""
  env = dict(os.environ)
  flags = [f for f in env.pop("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
  if flags:
    env["XLA_FLAGS"] = " ".join(flags)  # XLA reads anything else, even " ", as a file name.
  return env


def _base():
  c = configs.default_config()
  c.lock()
  return c


# ---------------------------------------------------------------------------
# The grid and run names.


def test_grid_from_flags_is_the_product_with_seeds_last():
  runs = sweep_grid.expand(latent_dims=[2, 8], betas=[1.0, 4.0], seeds=[0, 1])
  assert len(runs) == 8
  names = sweep_grid.run_names(runs)
  assert names[:3] == [
    "latent_dim=2,beta=1,seed=0",
    "latent_dim=2,beta=1,seed=1",
    "latent_dim=2,beta=4,seed=0",
  ]
  assert names[-1] == "latent_dim=8,beta=4,seed=1"
  assert sweep_grid.run_names(sweep_grid.expand(seeds=[3])) == ["seed=3"]
  with pytest.raises(errors.ConfigError, match="no grid"):
    sweep_grid.expand()


def test_grid_from_the_configs_sweep_function():
  module, arg = sweep_grid.load_config_module(f"{EXPERIMENT}:tiny")
  assert arg == "tiny"
  runs = sweep_grid.expand(module.sweep, arg, seeds=[0, 1])
  assert sweep_grid.run_names(runs) == [
    "latent_dim=2,seed=0",
    "latent_dim=2,seed=1",
    "latent_dim=3,seed=0",
    "latent_dim=3,seed=1",
  ]
  full = sweep_grid.expand(module.sweep, None)
  assert [r["model.latent_dim"] for r in full] == [2, 3, 5, 10, 20, 50, 200]
  # Grid flags win over sweep(add); "config." prefixes (big_vision style) are dropped.
  assert sweep_grid.expand(module.sweep, None, latent_dims=[7]) == [{"model.latent_dim": 7}]

  def with_seed(add):
    add(**{"config.seed": 1, "config.objective.beta": 2.0})

  assert sweep_grid.expand(with_seed) == [{"seed": 1, "objective.beta": 2.0}]
  with pytest.raises(errors.ConfigError, match="already sets seed"):
    sweep_grid.expand(with_seed, seeds=[0])


def test_run_names_and_values():
  names = sweep_grid.run_names(
    [{"model.name": "dense_vae", "data.name": "mnist", "optimizer.learning_rate": 3e-4}]
  )
  # Two fields end in "name": those keep their full path.
  assert names == ["model.name=dense_vae,data.name=mnist,learning_rate=0.0003"]
  assert sweep_grid.format_value(4.0) == "4" and sweep_grid.format_value((500, 500)) == "500x500"
  assert (
    sweep_grid.format_value(True) == "true"
    and sweep_grid.format_value(0.1 + 0.2) == "0.30000000000000004"
  )
  assert sweep_grid.parse_name("latent_dim=8,beta=0.5,seed=1") == {
    "latent_dim": 8,
    "beta": 0.5,
    "seed": 1,
  }
  with pytest.raises(errors.ConfigError, match="same run more than once"):
    sweep_grid.expand(latent_dims=[2, 2])


def test_resolve_sets_fields_and_names_bad_ones(tmp_path):
  runs = sweep_grid.make_runs(_base(), sweep_grid.expand(latent_dims=[8], betas=[4]), tmp_path)
  assert runs[0].config.model.latent_dim == 8 and runs[0].config.objective.beta == 4.0
  assert runs[0].workdir == tmp_path / "latent_dim=8,beta=4"
  with pytest.raises(errors.ConfigError, match=r"config\.model\.latnt_dim: no such config field"):
    sweep_grid.resolve(_base(), {"model.latnt_dim": 3})
  with pytest.raises(errors.ConfigError, match=r"config\.model\.latent_dim: 2\.5 does not fit"):
    sweep_grid.resolve(_base(), {"model.latent_dim": 2.5})
  # A model's own knobs are a free group: a sweep may name one the base config lacks.
  assert sweep_grid.resolve(_base(), {"model.options.gamma": 20.0}).model.options.gamma == 20.0
  with pytest.raises(errors.ConfigError, match=r"config\.model\.opts\.gamma: no such config"):
    sweep_grid.resolve(_base(), {"model.opts.gamma": 20.0})


def test_runs_differing_only_in_seed_share_a_job(tmp_path):
  overrides = sweep_grid.expand(latent_dims=[2, 3], betas=[1.0, 4.0], seeds=[0, 1, 2])
  runs = sweep_grid.make_runs(_base(), overrides, tmp_path)
  jobs = sweep.plan_jobs(runs, vmap_seeds=True, max_group=8)
  # beta is vmapped too: one job per latent size, its 2 betas x 3 seeds together.
  assert [len(job) for job in jobs] == [6, 6]
  assert {r.config.model.latent_dim for r in jobs[0]} == {2}
  assert [len(job) for job in sweep.plan_jobs(runs, vmap_seeds=True, max_group=4)] == [4, 2, 4, 2]
  assert all(len(job) == 1 for job in sweep.plan_jobs(runs, vmap_seeds=False, max_group=8))
  # A run at another checkpoint than its seed-mates trains on its own.
  (runs[0].workdir / "checkpoints" / "8").mkdir(parents=True)
  assert [len(job) for job in sweep.plan_jobs(runs, vmap_seeds=True, max_group=8)] == [1, 5, 6]
  # With vmap_shapes the latent sizes join too (padded: aejax/padding.py).
  jobs = sweep.plan_jobs(runs, vmap_seeds=True, max_group=8, vmap_shapes=True)
  assert [len(job) for job in jobs] == [1, 8, 3]
  assert sweep.count_groups(runs, vmap_seeds=True, vmap_shapes=True) == 1


def test_shards_are_disjoint_whole_groups_whatever_has_trained(tmp_path):
  overrides = sweep_grid.expand(latent_dims=[2, 3, 5], betas=[1.0, 4.0], seeds=[0, 1])
  runs = sweep_grid.make_runs(_base(), overrides, tmp_path)
  assert sweep.count_groups(runs, vmap_seeds=True) == 3
  assert sweep.count_groups(runs, vmap_seeds=False) == 12
  for vmap_seeds in (True, False):
    for count in (1, 2, 3, 5):
      shards = [sweep.shard_runs(runs, i, count, vmap_seeds) for i in range(count)]
      names = [r.name for shard in shards for r in shard]
      assert sorted(names) == sorted(r.name for r in runs)  # Every run, once.
      if vmap_seeds:  # A latent size's betas and seeds stay together.
        for shard in shards:
          for latent in {r.config.model.latent_dim for r in shard}:
            assert sum(r.config.model.latent_dim == latent for r in shard) == 4
  before = [r.name for r in sweep.shard_runs(runs, 1, 2, True)]
  (runs[0].workdir / "checkpoints" / "8").mkdir(parents=True)  # A run has trained.
  (runs[4].workdir).mkdir(parents=True)
  (runs[4].workdir / "final_metrics.json").write_text("{}")
  assert [r.name for r in sweep.shard_runs(runs, 1, 2, True)] == before
  assert sweep.parse_shard("2/3") == (2, 3)
  for bad in ("3/3", "-1/2", "1", "a/b", "0/0"):
    with pytest.raises(errors.ConfigError, match=f"--shard={bad}: expected I/N"):
      sweep.parse_shard(bad)


def test_emit_slurm_writes_a_job_array_of_the_same_command_by_shard(tmp_path):
  sweep_dir = tmp_path / "sweep"
  result = subprocess.run(
    [*_command(sweep_dir, "--latent_dims=2,3,5", "--seeds=0,1"), "--emit=slurm",
     "--slurm_time=01:00:00", "--slurm_gpus_per_task=1", "--slurm_partition=gpu"],
    cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120,
  )  # fmt: skip
  assert result.returncode == 0, result.stderr[-3000:]
  script = sweep_dir / "slurm" / "sweep.sbatch"
  text = script.read_text()
  assert f"submit: sbatch {script}" in result.stderr
  assert "#SBATCH --array=0-2" in text  # One task per latent size (its seeds vmapped).
  for line in ("--time=01:00:00", "--gpus-per-task=1", "--partition=gpu", f"--chdir={ROOT}"):
    assert f"#SBATCH {line}" in text
  assert "--mem" not in text and not any(
    (sweep_dir / name).exists() for name in ("latent_dim=2,seed=0", "report.md")
  )  # Nothing trained, nothing planned.
  command = text.strip().splitlines()[-1]
  assert command.startswith(f"exec {sys.executable} -m aejax.sweep ")
  assert command.endswith('--shard="${SLURM_ARRAY_TASK_ID}/3"')
  assert "--latent_dims=2,3,5" in command and "--emit" not in command and "--slurm" not in command


FAKE_WORKER = """
import json, pathlib, sys, time
dirs = [pathlib.Path(a.split("=", 1)[1]) for a in sys.argv[1:] if a.startswith("--run_dir=")]
with open(dirs[0].parent / "spans.jsonl", "a") as f:
  f.write(json.dumps({"runs": [d.name for d in dirs], "start": time.time()}) + "\\n")
if len(dirs) > 1 and any("latent_dim=5" in d.name for d in dirs):
  sys.exit(1)  # This group fails; its runs alone succeed.
time.sleep(0.5)
for d in dirs:
  steps = json.loads((d / "sweep_run.json").read_text())["config"]["total_steps"]
  (d / "final_metrics.json").write_text(json.dumps({"step": steps}))
  (d / "eval_results.json").write_text(json.dumps({"step": steps}))
with open(dirs[0].parent / "spans.jsonl", "a") as f:
  f.write(json.dumps({"runs": [d.name for d in dirs], "end": time.time()}) + "\\n")
"""


# JAX warns about fork() in a process whose runtime has threads; the child only execs a worker.
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
def test_scheduler_runs_jobs_in_parallel_and_retries_failed_groups_alone(tmp_path, monkeypatch):
  (tmp_path / "fake_worker.py").write_text(FAKE_WORKER)
  monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
  base = _base()
  base.total_steps = 5
  sweep_dir = tmp_path / "sweep"
  runs = sweep_grid.make_runs(
    base, sweep_grid.expand(latent_dims=[2, 3, 5], seeds=[0, 1]), sweep_dir
  )
  status = sweep.run_sweep(sweep_dir, runs, parallel=2, worker="fake_worker", status_every=0.1)
  assert status == {run.name: "finished" for run in runs}
  assert all(sweep_grid.is_finished(run.workdir, run.config) for run in runs)
  events = [e["event"] for e in _events(sweep_dir)]
  assert events.count("retry_alone") == 1 and events.count("done") == 4
  spans = [json.loads(line) for line in (sweep_dir / "spans.jsonl").read_text().splitlines()]
  starts = {tuple(s["runs"]): s["start"] for s in spans if "start" in s}
  ends = {tuple(s["runs"]): s["end"] for s in spans if "end" in s}
  # The two latent sizes' groups of 2 seeds ran at the same time, on two slots.
  first = ("latent_dim=2,seed=0", "latent_dim=2,seed=1")
  second = ("latent_dim=3,seed=0", "latent_dim=3,seed=1")
  assert starts[second] < ends[first] and starts[first] < ends[second]
  # Finished runs are skipped the next time.
  again = sweep.run_sweep(sweep_dir, runs, parallel=2, worker="fake_worker")
  assert set(again.values()) == {"finished earlier"}


# ---------------------------------------------------------------------------
# Real sweeps through the command line.


def _command(sweep_dir, *args):
  return [
    sys.executable,
    "scripts/sweep.py",
    f"--config={EXPERIMENT.relative_to(ROOT)}:tiny",
    f"--sweep_dir={sweep_dir}",
    *FLAGS,
    *args,
  ]


def _run(sweep_dir, *args, timeout=600):
  return subprocess.run(
    _command(sweep_dir, *args),
    cwd=ROOT,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def _events(sweep_dir) -> list[dict]:
  path = pathlib.Path(sweep_dir) / sweep_grid.SWEEP_LOG
  return [json.loads(line) for line in path.read_text().splitlines()]


def _starts(sweep_dir) -> dict[str, int]:
  counts = {}
  for e in _events(sweep_dir):
    if e["event"] == "start":
      for name in e["runs"]:
        counts[name] = counts.get(name, 0) + 1
  return counts


def _mtimes(run_dir: pathlib.Path) -> dict[str, float]:
  return {str(p): p.stat().st_mtime for p in run_dir.rglob("*") if p.is_file()}


def _wait_for(condition, what: str, process=None, timeout=300.0):
  deadline = time.monotonic() + timeout
  while not condition():
    if process is not None and process.poll() is not None:
      out = process.stdout.read() if process.stdout else ""
      pytest.fail(f"the sweep exited ({process.returncode}) before {what}:\n{out[-3000:]}")
    if time.monotonic() > deadline:
      pytest.fail(f"timed out waiting for {what}")
    time.sleep(0.05)


@pytest.fixture
def processes():
  """Popen objects to stop if the test fails half way (no sweep outlives its test)."""
  started = []
  yield started
  for process in started:
    if process.poll() is None:
      process.send_signal(signal.SIGTERM)  # The sweep passes it on to its worker.
      try:
        process.wait(timeout=60)
      except subprocess.TimeoutExpired:
        process.kill()


def test_sweep_interrupted_twice_then_finished_skipped_and_reported(tmp_path, processes):
  """One sweep through everything a user does: SIGTERM, kill -9, rerun, rerun, report only.

  (One test, not five: every step costs worker processes that import JAX and compile.)
  """
  sweep_dir = tmp_path / "sweep"
  names = [
    "latent_dim=2,seed=0",
    "latent_dim=2,seed=1",
    "latent_dim=3,seed=0",
    "latent_dim=3,seed=1",
  ]
  group_1, group_2 = names[:2], names[2:]
  # 2 latent sizes x 2 seeds: one vmapped job per latent size, each long enough (seconds) to be
  # caught training twice.
  args = (
    "--latent_dims=2,3",
    "--seeds=0,1",
    "--config.total_steps=1000",
    "--config.eval_every_steps=1000",
    "--config.checkpoint_every_steps=100",
  )

  def start():
    process = subprocess.Popen(
      _command(sweep_dir, *args),
      cwd=ROOT,
      env=_env(),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    processes.append(process)
    return process

  def checkpoint_after(step):
    return lambda: (sweep_grid.latest_checkpoint(sweep_dir / group_2[0]) or 0) > step

  # 1. SIGTERM while the second job trains: its worker checkpoints, the sweep exits 143.
  process = start()
  _wait_for(checkpoint_after(0), "a checkpoint of the second job", process)
  process.send_signal(signal.SIGTERM)
  out, _ = process.communicate(timeout=300)
  assert process.returncode == 128 + signal.SIGTERM, out[-3000:]
  assert "Run the same command again" in out
  for name in group_1:
    assert (sweep_dir / name / "eval_results.json").is_file()
  stopped_at = sweep_grid.latest_checkpoint(sweep_dir / group_2[0])
  assert sweep_grid.latest_checkpoint(sweep_dir / group_2[1]) == stopped_at
  finished_first = {name: _mtimes(sweep_dir / name) for name in group_1}

  # 2. Rerun, and kill -9 the sweep once the second job has moved on. Its worker gets SIGTERM
  # (the parent-death signal), checkpoints and exits; the next rerun waits for it if need be.
  process = start()
  _wait_for(checkpoint_after(stopped_at), "the second job to resume and checkpoint", process)
  os.kill(process.pid, signal.SIGKILL)
  process.communicate(timeout=60)

  # 3. Rerun: the sweep finishes, nothing finished is repeated, interrupted runs resumed.
  result = _run(sweep_dir, *args)
  assert result.returncode == 0, result.stderr[-4000:]
  for name in names:
    assert json.loads((sweep_dir / name / "eval_results.json").read_text())["step"] == 1000
    assert json.loads((sweep_dir / name / "config.json").read_text())["seed"] == int(name[-1])
  assert _starts(sweep_dir) == {**{n: 1 for n in group_1}, **{n: 3 for n in group_2}}
  # TensorBoard's HParams dashboard over the sweep folder: one session per run, by its overrides.
  board = read_tensorboard(sweep_dir)
  sessions = {run.split("/")[0]: r for run, r in board.items() if r["hparams"]}
  assert sorted(sessions) == names
  for name, session in sessions.items():
    latent_dim, seed = (int(part.split("=")[1]) for part in name.split(","))
    assert session["hparams"]["model.latent_dim"] == latent_dim
    assert session["hparams"]["seed"] == seed and session["hparams"]["model.name"] == "dense_vae"
    assert {"test/elbo", "test/kl", "test/recon"} <= set(session["hparams_metrics"])
  assert {name: _mtimes(sweep_dir / name) for name in group_1} == finished_first
  for name in group_2:
    attempts = [
      json.loads(line) for line in (sweep_dir / name / sweep_grid.ATTEMPTS).read_text().splitlines()
    ]
    trained = [a for a in attempts if a["stage"] == "train"]
    assert [a["status"] for a in trained] == ["interrupted", "interrupted", "done"], attempts
    assert trained[0]["from_step"] == 0 and trained[1]["from_step"] == stopped_at
    # The kill -9'd sweep's worker got the parent-death SIGTERM and saved where it was.
    assert trained[2]["from_step"] == trained[1]["to_step"] > stopped_at
    assert all(a["group"] == group_2 for a in trained)  # Vmapped, every time.
  report_files = ["report.md", "results.csv", "runs.csv", "metrics.png", "reconstructions.png"]
  report_files += ["samples.png", "latent_grid_latent_dim2.png", "latent_scatter_latent_dim2.png"]
  for name in report_files:
    assert (sweep_dir / name).stat().st_size > 0, name
  text = (sweep_dir / "report.md").read_text()
  assert "| latent_dim | seeds | test NLL (nats) |" in text and " ± " in text
  assert "vmapped x2" in text and "python scripts/sweep.py" in text
  rows = (sweep_dir / "results.csv").read_text().splitlines()
  assert len(rows) == 3 and rows[0].startswith("configuration,model.latent_dim,seeds,finished")
  assert len((sweep_dir / "runs.csv").read_text().splitlines()) == 5

  # 4. The same command again: every run is finished; nothing trains, evaluates or redraws.
  before = {name: _mtimes(sweep_dir / name) for name in names}
  report_time = (sweep_dir / "report.md").stat().st_mtime
  events = len(_events(sweep_dir))
  again = _run(sweep_dir, *args)
  assert again.returncode == 0, again.stderr[-4000:]
  assert [e["event"] for e in _events(sweep_dir)[events:]] == ["skip"] * 4
  assert {name: _mtimes(sweep_dir / name) for name in names} == before
  assert (sweep_dir / "report.md").stat().st_mtime == report_time

  # 5. The report alone, from the runs on disk.
  for name in report_files:
    (sweep_dir / name).unlink()
  events = _events(sweep_dir)
  only = subprocess.run(
    [sys.executable, "scripts/sweep.py", f"--sweep_dir={sweep_dir}", "--report_only"],
    cwd=ROOT,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert only.returncode == 0, only.stderr[-4000:]
  for name in report_files:
    assert (sweep_dir / name).stat().st_size > 0, name
  assert _events(sweep_dir) == events
  assert {name: _mtimes(sweep_dir / name) for name in names} == before


def test_a_sweep_over_latent_sizes_with_vmap_shapes_trains_one_population_reported_as_before(
  tmp_path,
):
  """--vmap_shapes: the latent sizes train as one padded program (aejax/padding.py); each run's
  folder, metrics and the report have the form of a sweep that trains them one by one."""
  sweep_dir = tmp_path / "sweep"
  args = ("--latent_dims=2,3", "--seeds=0", "--vmap_shapes", "--config.total_steps=20")
  result = _run(sweep_dir, *args, "--config.eval_every_steps=20")
  assert result.returncode == 0, result.stderr[-4000:]
  names = ["latent_dim=2,seed=0", "latent_dim=3,seed=0"]
  assert [e["runs"] for e in _events(sweep_dir) if e["event"] == "start"] == [names]
  for name in names:
    run_dir = sweep_dir / name
    # The run trained alone, in this process, from the config the sweep wrote.
    config = ml_collections.ConfigDict(json.loads((run_dir / "config.json").read_text()))
    alone = tmp_path / f"alone_{name}"
    train.train_and_evaluate(config, str(alone))
    ours = json.loads((run_dir / "final_metrics.json").read_text())
    theirs = json.loads((alone / "final_metrics.json").read_text())
    assert ours.keys() == theirs.keys()
    for key in theirs:
      assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-5), (name, key)
    assert (run_dir / "eval_results.json").is_file()
  text = (sweep_dir / "report.md").read_text()
  assert "| latent_dim | seeds | test NLL (nats) |" in text and "vmapped x2" in text
  rows = (sweep_dir / "results.csv").read_text().splitlines()
  assert len(rows) == 3 and rows[0].startswith("configuration,model.latent_dim,seeds,finished")
