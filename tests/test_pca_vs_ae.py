"""aejax.pca_vs_ae: the metric helpers on exact cases, and the tiny sweep end to end and resumed."""

import importlib.util
import json
import math
import pathlib

import numpy as np
import pytest

from aejax import errors, pca_vs_ae

ROOT = pathlib.Path(__file__).resolve().parent.parent


def tiny_config():
  path = ROOT / "experiments" / "pca_vs_ae.py"
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("tiny")


def test_reconstruction_metrics_known_values():
  x = np.array([0.0, 1.0, 0.0, 1.0]).reshape(1, 2, 2, 1)
  half = np.full_like(x, 0.5)
  assert pca_vs_ae.reconstruction_metrics(x, half) == pytest.approx(
    {"mse": 0.25, "bce": math.log(2.0)}
  )
  # Out-of-range values (a linear reconstruction's) are clipped: 1.5 -> 1 and -0.5 -> 0 are exact,
  # and the BCE of an exact binary reconstruction stays finite (r clipped to [1e-7, 1 - 1e-7]).
  reconstruction = np.array([-0.5, 1.5, 0.0, 1.0]).reshape(x.shape)
  metrics = pca_vs_ae.reconstruction_metrics(x, reconstruction)
  assert metrics["mse"] == 0.0
  assert metrics["bce"] == pytest.approx(-math.log1p(-1e-7))


def test_pca_metrics_are_exact_on_data_in_a_subspace():
  # 200 flattened 4x4 images on a 3-dimensional affine subspace, well inside (0, 1).
  rng = np.random.default_rng(0)
  basis = rng.normal(size=(3, 16))
  flat = 0.5 + 0.05 * rng.uniform(-1.0, 1.0, (200, 3)) @ basis
  assert 0.0 < flat.min() and flat.max() < 1.0
  images = flat.reshape(200, 4, 4, 1)
  train_images, test_images = images[:150], images[150:]

  exact = pca_vs_ae.pca_metrics(train_images, test_images, latent_dim=3)
  assert exact["mse"] < 1e-20
  # A perfect reconstruction's BCE is the mean binary entropy of the pixels.
  entropy = -np.mean(test_images * np.log(test_images) + (1 - test_images) * np.log1p(-test_images))
  assert exact["bce"] == pytest.approx(entropy, rel=1e-9)
  # Fewer components than the subspace's dimension lose information.
  assert pca_vs_ae.pca_metrics(train_images, test_images, latent_dim=2)["mse"] > 1e-5


def test_latent_dim_beyond_the_data_dimension_fails_before_training(tmp_path):
  c = tiny_config()
  c.latent_dims = (2, 65)
  with pytest.raises(errors.ConfigError, match=r"config.latent_dims: .* = 64 components; 65"):
    pca_vs_ae.run(c, tmp_path)
  assert not (tmp_path / "ae_d2").exists()


def _snapshot(run_dir: pathlib.Path) -> dict[str, int]:
  return {
    str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in (run_dir / "checkpoints").rglob("*")
  }


def test_tiny_sweep_end_to_end_and_rerun_reuses_the_autoencoders(tmp_path):
  c = tiny_config()
  rows = pca_vs_ae.run(c, tmp_path)

  for suffix in ("md", "csv", "json", "png"):
    assert (tmp_path / f"pca_vs_ae.{suffix}").stat().st_size > 0
  report = json.loads((tmp_path / "pca_vs_ae.json").read_text())
  assert report["data"] == "digits" and report["num_test"] == 360
  assert [r["latent_dim"] for r in report["rows"]] == [2, 4] == [r["latent_dim"] for r in rows]
  for r in report["rows"]:
    for method in ("ae", "pca"):
      assert 0.0 <= r[f"{method}_mse"] <= 1.0
      assert 0.0 < r[f"{method}_bce"] < 1.0
      assert 0.0 <= r[f"{method}_probe_acc"] <= 1.0
    assert r["winner_mse"] in ("AE", "PCA", "tie")
    assert r["ae_step"] == c.ae.total_steps
  by_dim = {r["latent_dim"]: r for r in report["rows"]}
  assert by_dim[4]["pca_mse"] < by_dim[2]["pca_mse"]
  assert by_dim[4]["pca_probe_acc"] > 0.1  # Chance is 0.1 on ten classes.
  # The AE numbers are the trainer's own evaluation of the same 360 test images.
  final = json.loads((tmp_path / "ae_d4" / "final_metrics.json").read_text())
  assert by_dim[4]["ae_mse"] == pytest.approx(final["eval/mse_per_pixel"], abs=1e-5)
  markdown = (tmp_path / "pca_vs_ae.md").read_text()
  assert "| latent dim | AE MSE | PCA MSE |" in markdown and "360 test images" in markdown

  before = {d: _snapshot(tmp_path / f"ae_d{d}") for d in (2, 4)}
  metrics_before = (tmp_path / "ae_d2" / "metrics.jsonl").read_text()
  again = pca_vs_ae.run(c, tmp_path)
  assert {d: _snapshot(tmp_path / f"ae_d{d}") for d in (2, 4)} == before
  assert (tmp_path / "ae_d2" / "metrics.jsonl").read_text() == metrics_before
  for first, second in zip(rows, again, strict=True):
    assert second == pytest.approx(first)
  # A changed config is not "finished": it goes back to the trainer, which resumes or retrains.
  changed = pca_vs_ae.ae_config(c, 4)
  assert pca_vs_ae.is_finished(changed, tmp_path / "ae_d4", c.ae.total_steps)
  changed.optimizer.learning_rate = 3e-3
  assert not pca_vs_ae.is_finished(changed, tmp_path / "ae_d4", c.ae.total_steps)
