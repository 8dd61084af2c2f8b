"""Metric files: TensorBoard's HParams session of a run, read back with TensorBoard's reader."""

import math

import pytest
from helpers import read_tensorboard

from aejax import metrics


def test_hparams_session_is_replaced_not_duplicated_and_drops_nonfinite(tmp_path):
  metrics.write_hparams(tmp_path, {"model.latent_dim": 8, "seed": 0}, {"test/elbo": -99.0})
  hparams = {"model.latent_dim": 8, "objective.beta": 4.0, "seed": 1, "model.hidden_widths": (64,)}
  hparams["data.name"] = "mnist"
  final = {"test/elbo": -101.5, "test/kl": 20.25, "test/fid": math.nan}
  metrics.write_hparams(tmp_path, hparams, final)

  runs = read_tensorboard(tmp_path / "tensorboard")
  assert list(runs) == [metrics.HPARAMS_RUN]  # One session: the second write replaced the first.
  run = runs[metrics.HPARAMS_RUN]
  assert run["hparams"] == {
    "model.latent_dim": 8.0,  # TensorBoard keeps numbers as doubles.
    "objective.beta": 4.0,
    "seed": 1.0,
    "model.hidden_widths": "(64,)",
    "data.name": "mnist",
  }
  # NaN cannot be shown or sorted in the dashboard: left out, not written as a number.
  assert sorted(run["hparams_metrics"]) == ["test/elbo", "test/kl"]
  assert run["scalars"]["test/elbo"] == [(0, pytest.approx(-101.5))]
  assert "test/fid" not in run["scalars"]


def test_write_images_logs_the_png_at_its_size(tmp_path):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig = plt.figure(figsize=(2.0, 1.0), dpi=100)
  fig.savefig(tmp_path / "picture.png")
  plt.close(fig)
  writer = metrics.MetricWriter(tmp_path)
  writer.write_images(7, {"figures/picture": tmp_path / "picture.png"})
  writer.close()
  images = read_tensorboard(tmp_path / "tensorboard")["."]["images"]
  assert images == {"figures/picture": [(7, 200, 100)]}
