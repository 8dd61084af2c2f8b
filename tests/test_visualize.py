"""Tests for aejax/visualize.py's traversals: which dimensions, in which order, over which range."""

import types

import ml_collections
import numpy as np
import pytest

from aejax import latent_figures, visualize


def _stub(is_variational: bool, mean, logvar=None):
  """A trained-model stand-in whose decoder records the codes it is given."""
  decoded = []

  def decode(z, labels=None):
    decoded.append(np.array(z))
    return np.zeros((len(z), 4, 4, 1), np.float32)

  config = ml_collections.ConfigDict({"model": {"name": "m"}, "data": {"name": "d"}})
  handle = types.SimpleNamespace(
    is_variational=is_variational, num_classes=0, config=config, step=7, decode=decode,
    posterior=lambda images, labels=None: (mean, logvar),
  )  # fmt: skip
  return handle, decoded


@pytest.fixture
def saved(monkeypatch):
  calls = []
  monkeypatch.setattr(
    latent_figures, "save_traversals", lambda path, *args, **kwargs: calls.append((args, kwargs))
  )
  return calls


def test_vae_traversal_rows_are_sorted_by_kl_and_sweep_one_dimension_each(saved, tmp_path):
  rng = np.random.default_rng(0)
  # Dimension 1 carries most information (wide means, narrow posteriors), then 2, then 0.
  mean = rng.normal(size=(50, 3)) * np.array([0.1, 3.0, 1.0])
  logvar = np.log(np.array([[1.0, 0.01, 0.3]])) * np.ones((50, 1))
  handle, decoded = _stub(True, mean, logvar)
  visualize.traversals(handle, tmp_path, np.zeros((50, 4, 4, 1)), None, mean)
  ((args, kwargs),) = saved
  rows, values, names = args[:3]
  assert [n.split("\n")[0] for n in names] == ["z[1]", "z[2]", "z[0]"]
  steps = np.linspace(-2.5, 2.5, visualize.TRAVERSAL_STEPS)
  np.testing.assert_allclose(values, steps)
  assert rows.shape == (3, visualize.TRAVERSAL_STEPS, 4, 4, 1)
  for z, d in zip(decoded, (1, 2, 0), strict=True):
    np.testing.assert_allclose(z[:, d], steps, rtol=1e-6)
    others = [k for k in range(3) if k != d]
    np.testing.assert_allclose(z[:, others], np.repeat(mean[:1, others], len(steps), 0), rtol=1e-6)
  assert "rows by KL" in kwargs["title"]


def test_autoencoder_traversals_use_each_codes_own_range_and_keep_the_widest(
  saved, tmp_path, monkeypatch
):
  monkeypatch.setattr(visualize, "MAX_TRAVERSAL_ROWS", 2)
  codes = np.random.default_rng(1).normal(size=(80, 3)) * np.array([1.0, 5.0, 0.2]) + 10.0
  handle, decoded = _stub(False, None)
  visualize.traversals(handle, tmp_path, np.zeros((80, 4, 4, 1)), None, codes)
  ((args, kwargs),) = saved
  rows, values, names = args[:3]
  assert [n.split("\n")[0] for n in names] == ["z[1]", "z[0]"] and len(decoded) == 2
  want = codes[:, 1].mean() + codes[:, 1].std() * np.linspace(-2.5, 2.5, 9)
  np.testing.assert_allclose(values[0], want, rtol=1e-6)
  np.testing.assert_allclose(decoded[0][:, 1], want, rtol=1e-5)
  assert "the 2 of 3 dimensions" in kwargs["title"]
