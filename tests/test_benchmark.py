"""Tests for scripts/benchmark.py: the JSON line other checks read, from a quick real run."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIELDS = ("case", "framework", "batch_size", "train_images_per_sec", "compile_seconds")
POSITIVE = (
  "train_images_per_sec",
  "train_images_per_sec_plain",
  "compile_seconds",
  "eval_images_per_sec",
  "nll_images_per_sec",
  "flops_per_image",
  "matmul_gflops",
  "peak_memory_mb",
)


def test_benchmark_prints_one_json_line_with_positive_numbers(data_dir, tmp_path):
  # A subprocess, as users run it; it inherits the 8 fake CPU devices and the compilation cache.
  env = {**os.environ, "AEJAX_DATA_DIR": str(data_dir)}
  result = subprocess.run(
    [sys.executable, "scripts/benchmark.py", "--case=iwae_mlp", "--batch_size=16", "--quick"],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
  assert len(lines) == 1, result.stdout
  record = json.loads(lines[0])
  for field in (*FIELDS, "peak_memory_mb", "device"):
    assert field in record, field
  assert record["case"] == "iwae_mlp" and record["framework"] == "jax"
  assert record["batch_size"] == 16
  for field in POSITIVE:
    assert record[field] > 0, (field, record[field])
  assert record["device"] == "cpu" and record["device_count"] == 8
  assert 0 < record["fraction_of_matmul"] < 10

  # --table turns saved lines into the Markdown table, with JAX's ratio to each peer.
  peers = [
    {**record, "framework": "torch", "train_images_per_sec": record["train_images_per_sec"] / 2},
    {**record, "framework": "pythae", "train_images_per_sec": record["train_images_per_sec"] / 4},
  ]
  lines_file = tmp_path / "benchmark.jsonl"
  lines_file.write_text("\n".join(json.dumps(r) for r in (record, *peers)) + "\n")
  table = subprocess.run(
    [sys.executable, "scripts/benchmark.py", f"--table={lines_file}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert table.returncode == 0, table.stderr[-3000:]
  jax_row = next(line for line in table.stdout.splitlines() if "| jax |" in line)
  assert "| 2.00 | 4.00 |" in jax_row, table.stdout
