"""Workdirs on Cloud Storage: training, resuming, aejax.load and evaluate with --workdir=gs://...

The processes talk to a local server of the GCS JSON API (gcp-storage-emulator, started
here by tests/gcs_server.py): Orbax's arrays through TensorStore (TENSORSTORE_GCS_HTTP_URL),
every other file through etils.epath's gcsfs backend (STORAGE_EMULATOR_HOST; TensorFlow's
GCS client, epath's default, cannot be pointed at another host), TensorBoard's event files
through google-cloud-storage.
"""

import json
import os
import pathlib
import subprocess
import sys
import time
import urllib.request

import pytest
from helpers import free_port

from aejax import errors, workdir

ROOT = pathlib.Path(__file__).resolve().parent.parent
SERVER = pathlib.Path(__file__).with_name("gcs_server.py")
BUCKET = "aejax-test"
RUN = [
  "--config=experiments/quickstart.py:tiny",
  "--config.final_figures=False",
  "--config.checkpoint_every_steps=4",
]


@pytest.fixture(scope="module")
def gcs_env(tmp_path_factory):
  """The environment of a process that reaches gs://aejax-test on a local emulator."""
  port = free_port()
  url = f"http://localhost:{port}"
  folder = tmp_path_factory.mktemp("gcs")
  log = folder / "emulator.log"  # A file, not a pipe: it logs every request.
  server = subprocess.Popen(
    [sys.executable, str(SERVER), "start", f"--port={port}", "--host=localhost",
     f"--default-bucket={BUCKET}"],
    cwd=folder, stdout=subprocess.DEVNULL, stderr=log.open("w"),
  )  # fmt: skip
  deadline = time.monotonic() + 60
  while True:
    try:
      urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}", timeout=2).read()
      break
    except OSError:
      if server.poll() is not None or time.monotonic() > deadline:
        server.kill()
        pytest.fail(f"the GCS emulator did not start: {log.read_text()[-2000:]}")
      time.sleep(0.2)
  env = {
    **os.environ,
    "STORAGE_EMULATOR_HOST": url,  # gcsfs and google-cloud-storage
    "TENSORSTORE_GCS_HTTP_URL": url,
    "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # TensorStore asks for no credentials.
    "EPATH_USE_TF": "false",  # epath through gcsfs, which honours STORAGE_EMULATOR_HOST
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # no bucket-type lookup on Google's servers
  }
  yield env
  server.terminate()
  server.wait(timeout=30)


def _run(args, env, expect=0) -> subprocess.CompletedProcess:
  done = subprocess.run(
    [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
  )
  assert done.returncode == expect, done.stderr[-4000:]
  return done


CHECK = """
import json, sys
import jax, numpy as np
from etils import epath
import aejax
from aejax import evaluate, metrics

remote, local = sys.argv[1:]
a, b = aejax.load(remote), aejax.load(local)
same = jax.tree.all(jax.tree.map(lambda x, y: np.array_equal(x, y), a.params, b.params))
evaluate.evaluate(remote, limit=64, nll_samples=4, fid=False)
want = evaluate.evaluate(local, limit=64, nll_samples=4, fid=False)
top = epath.Path(remote)
files = sorted(f"{d.name}/{p.name}" if d != top else p.name
               for d in (top, top / "checkpoints", top / "tensorboard") for p in d.iterdir())
print(json.dumps({"step": a.step, "same": bool(same), "files": files,
                  "results": json.loads((epath.Path(remote) / "eval_results.json").read_text()),
                  "want": json.loads(json.dumps(want)), "metrics": metrics.read_metrics(remote)}))
"""


def test_a_gs_workdir_trains_resumes_and_evaluates_as_a_local_one(gcs_env, tmp_path):
  remote = f"gs://{BUCKET}/runs/quickstart"
  # Stopped after 8 steps (checkpointed), then resumed to 16: the same parameters, bit for
  # bit, as 16 steps in a local folder.
  first = _run(["-m", "aejax.main", *RUN, "--config.total_steps=8", f"--workdir={remote}"], gcs_env)
  assert "gs:" not in os.listdir(ROOT), "a gs:// path became a local folder"
  # The resumed run draws the final figures too (written through epath, read back for TensorBoard).
  resumed = _run(
    ["-m", "aejax.main", *RUN, "--config.final_figures=True", f"--workdir={remote}"], gcs_env
  )
  assert f"Resumed from the checkpoint at step 8 in {remote}" in resumed.stderr, first.stderr
  local = tmp_path / "local"
  _run(["-m", "aejax.main", *RUN, f"--workdir={local}"], gcs_env)

  out = _run(["-c", CHECK, remote, str(local)], gcs_env).stdout
  check = json.loads(out.strip().splitlines()[-1])
  assert check["step"] == 16 and check["same"]
  files = check["files"]
  for name in ("config.json", "run_info.json", "metrics.jsonl", "final_metrics.json",
               "reconstructions.png", "curves.png", "latent_grid.png", "latent_scatter.png",
               "eval_results.json", "eval_results.md",
               "checkpoints/16"):  # fmt: skip
    assert name in files, (name, files)
  assert any(f.startswith("tensorboard/events.out.tfevents.") for f in files), files
  # The metrics of both runs' steps, each once: the resumed run rewrote the file whole.
  want = [json.loads(line) for line in (local / "metrics.jsonl").read_text().splitlines()]
  # evaluate wrote the same numbers to the bucket as it finds for the local run.
  got = check["results"]
  assert got["step"] == 16 and got["elbo"] == check["want"]["elbo"]
  assert got["nll"] == check["want"]["nll"]
  assert [r["step"] for r in check["metrics"]] == [r["step"] for r in want]
  evals = [(r["step"], r["eval/loss"]) for r in want if "eval/loss" in r]
  assert [(r["step"], r["eval/loss"]) for r in check["metrics"] if "eval/loss" in r] == evals
  assert [step for step, _ in evals] == [8, 16]


def test_workdirs_on_other_stores_are_refused_by_name():
  with pytest.raises(
    errors.ConfigError, match=r"--workdir=s3://bucket/run: s3:// is not supported"
  ):
    workdir.check_location("s3://bucket/run")
  workdir.check_location("gs://bucket/run")  # google-cloud-storage is installed with the tests.
  workdir.check_location("runs/local")


def test_a_sweep_folder_on_gs_is_refused_before_anything_runs():
  done = subprocess.run(
    [sys.executable, "-m", "aejax.sweep", "--config=experiments/quickstart.py:tiny",
     "--sweep_dir=gs://bucket/sweep"],
    cwd=ROOT, capture_output=True, text=True, timeout=120,
  )  # fmt: skip
  assert done.returncode == 2, done.stderr[-2000:]
  assert "--sweep_dir=gs://bucket/sweep: a sweep folder must be local" in done.stderr
  assert "gs:" not in os.listdir(ROOT)
