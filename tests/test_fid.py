"""aejax.fid: the Fréchet distance against closed forms, the cached classifier, FID in evaluate."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from helpers import tiny_digits_config
from scipy import linalg

import aejax
from aejax import data, errors, fid, train
from aejax import evaluate as ev

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Enough for the digits classifier to learn something (test accuracy 0.86 measured), in seconds.
TINY_STEPS = 40


def _random_cov(rng, f):
  a = rng.normal(size=(f, f))
  return a @ a.T / f + 0.1 * np.eye(f)


# ---------------------------------------------------------------------------
# The distance.


def test_frechet_distance_of_identical_statistics_is_zero():
  rng = np.random.default_rng(0)
  mu, cov = rng.normal(size=16), _random_cov(rng, 16)
  assert fid.frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-9)
  # Fewer samples than features: a rank-4 covariance of 16 features, exactly singular. Still a
  # real number, still 0 (a naive sqrtm of the product is complex or inaccurate here).
  mu4, cov4 = fid.feature_statistics(rng.normal(size=(5, 16)))
  assert np.linalg.matrix_rank(cov4) == 4
  assert fid.frechet_distance(mu4, cov4, mu4, cov4) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_diagonal_closed_form_and_symmetry():
  rng = np.random.default_rng(1)
  mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
  s1, s2 = rng.uniform(0.1, 3.0, size=8), rng.uniform(0.1, 3.0, size=8)
  # Diagonal Gaussians: FD = ||mu1 - mu2||^2 + sum_i (s1_i + s2_i - 2 sqrt(s1_i s2_i)).
  expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
  forward = fid.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
  backward = fid.frechet_distance(mu2, np.diag(s2), mu1, np.diag(s1))
  assert forward == pytest.approx(expected, rel=1e-10)
  assert backward == pytest.approx(forward, rel=1e-10)
  # One dimension: N(0, 1) to N(3, 4) is 3^2 + (1 - 2)^2 = 10.
  assert fid.frechet_distance([0.0], [[1.0]], [3.0], [[4.0]]) == pytest.approx(10.0)


def test_frechet_distance_matches_scipy_sqrtm_on_full_covariances():
  rng = np.random.default_rng(2)
  mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
  cov1, cov2 = _random_cov(rng, 12), _random_cov(rng, 12)
  # The textbook formula with scipy's general matrix square root of the non-symmetric product.
  trace_sqrt = np.trace(linalg.sqrtm(cov1 @ cov2)).real
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt
  assert fid.frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(expected, rel=1e-9)
  assert fid.frechet_distance(mu2, cov2, mu1, cov1) == pytest.approx(expected, rel=1e-9)


def test_feature_statistics_and_bad_inputs():
  x = np.random.default_rng(3).normal(size=(50, 4)).astype(np.float32)
  mean, cov = fid.feature_statistics(x)
  assert mean.dtype == cov.dtype == np.float64 and cov.shape == (4, 4)
  np.testing.assert_allclose(cov, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12)
  with pytest.raises(errors.InputError, match="N >= 2"):
    fid.feature_statistics(x[:1])
  with pytest.raises(errors.InputError, match="covariances"):
    fid.frechet_distance(mean, cov, mean[:3], cov)


# ---------------------------------------------------------------------------
# The classifier extractor, trained for a few steps on the embedded 8x8 digits.


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("fid_cache")


@pytest.fixture(scope="module")
def extractor(cache_dir):
  return fid.classifier_extractor("digits", cache_dir=cache_dir, steps=TINY_STEPS)


def test_classifier_is_cached_and_reused(cache_dir, extractor, monkeypatch):
  (folder,) = cache_dir.iterdir()  # One classifier, renamed into place: no temporary left.
  info = json.loads((folder / fid.INFO_FILE).read_text())
  assert folder.name.startswith(f"digits_{fid.ARCHITECTURE}_seed0_steps{TINY_STEPS}_")
  assert extractor.name == info["name"]
  assert extractor.name.startswith(f"aejax-classifier:digits:{fid.ARCHITECTURE}:seed0:")
  assert info["params_sha256"][:12] in extractor.name
  assert info["steps"] == TINY_STEPS and info["image_shape"] == [8, 8, 1]
  assert info["num_test_images"] == 360
  # Well above chance (0.1) after 40 steps; the accuracy is what the extractor reports.
  assert 0.6 < info["test_accuracy"] <= 1.0 and extractor.test_accuracy == info["test_accuracy"]
  mtime = (folder / fid.INFO_FILE).stat().st_mtime_ns
  # Training again what is cached is a no-op that returns the cached classifier's description.
  assert fid.train_classifier("digits", cache_dir=cache_dir, steps=TINY_STEPS) == info

  def no_training(*args, **kwargs):
    raise AssertionError("the cached classifier was trained again")

  monkeypatch.setattr(fid, "train_classifier", no_training)
  again = fid.classifier_extractor("digits", cache_dir=cache_dir, steps=TINY_STEPS)
  assert again.name == extractor.name and (folder / fid.INFO_FILE).stat().st_mtime_ns == mtime
  images = data.load("digits", "test", limit=16).images
  np.testing.assert_array_equal(again(images), extractor(images))
  # Another seed is another network: not the cached one.
  with pytest.raises(AssertionError, match="trained again"):
    fid.classifier_extractor("digits", cache_dir=cache_dir, steps=TINY_STEPS, seed=1)


def test_fid_is_zero_on_itself_and_grows_with_noise(extractor):
  images = data.load("digits", "test").images
  features = extractor(images)
  assert features.shape == (360, fid.FEATURE_DIM) and np.all(features >= 0)  # Post-ReLU.
  assert fid.fid(extractor, images, images) == pytest.approx(0.0, abs=1e-6)
  rng = np.random.default_rng(0)
  noise = rng.normal(size=images.shape).astype(np.float32)
  scores = [
    fid.fid(extractor, images, np.clip(images + std * noise, 0.0, 1.0)) for std in (0.1, 0.2, 0.4)
  ]
  # Measured with this classifier: about 0.13, 0.63, 2.9.
  assert 0.0 < scores[0] < scores[1] < scores[2], scores
  assert scores[2] > 4 * scores[0], scores


def test_cli_prints_reference_fids_with_the_cached_classifier(cache_dir, extractor):
  result = subprocess.run(
    [sys.executable, "-m", "aejax.fid", "--data=digits", f"--steps={TINY_STEPS}"]
    + [f"--cache_dir={cache_dir}", "--num_images=200", "--noise_stds=0.1,0.4"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  out = json.loads(result.stdout)
  assert out["extractor"] == extractor.name and "FID: training" not in result.stderr
  assert out["num_test_images"] == out["num_train_images"] == 200
  assert out["classifier_test_accuracy"] == extractor.test_accuracy
  assert 0 < out["test_vs_noisy_test_std0.1"] < out["test_vs_noisy_test_std0.4"]
  assert out["test_vs_train"] > 0


def test_extractor_rejects_other_image_shapes(extractor):
  with pytest.raises(errors.InputError, match=r"takes \(8, 8, 1\)"):
    extractor(np.zeros((4, 28, 28, 1), np.float32))
  with pytest.raises(errors.InputError, match=r"\[0, 1\]"):
    extractor(np.full((4, 8, 8, 1), 2.0, np.float32))


def test_data_set_without_labels_is_a_clear_error(tmp_path, data_dir):
  with pytest.raises(errors.InputError, match="binarized_mnist/train has no labels"):
    fid.classifier_extractor("binarized_mnist", cache_dir=tmp_path, data_dir=data_dir)
  assert not list(tmp_path.iterdir())


def test_cache_dir_from_argument_then_environment(monkeypatch, tmp_path):
  monkeypatch.setenv(fid.CACHE_ENV, str(tmp_path / "env"))
  assert fid.resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
  assert fid.resolve_cache_dir() == tmp_path / "env"
  monkeypatch.delenv(fid.CACHE_ENV)
  assert str(fid.resolve_cache_dir()).endswith(".cache/aejax/fid_classifiers")


# ---------------------------------------------------------------------------
# In evaluate: a pluggable extractor, and data sets without labels.


@pytest.fixture(scope="module")
def vae_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("vae")
  train.train_and_evaluate(tiny_digits_config(16), str(workdir))
  return workdir


def _random_projection(dim: int = 32) -> fid.FeatureExtractor:
  weights = np.random.default_rng(0).normal(size=(64, dim)).astype(np.float32)
  return fid.FeatureExtractor(
    f"random-projection:64-to-{dim}:seed0", lambda x: x.reshape(len(x), -1) @ weights, (8, 8, 1)
  )


def test_evaluate_with_a_custom_extractor(vae_workdir, tmp_path):
  extractor = _random_projection()
  results = ev.evaluate(
    vae_workdir,
    nll_samples=4,
    limit=100,
    probe_train_size=0,
    seed=3,
    fid_extractor=extractor,
    fid_cache_dir=tmp_path / "cache",
  )
  assert results["fid_features"] == {"name": extractor.name, "feature_dim": 32}
  assert not (tmp_path / "cache").exists()  # No classifier trained.
  # The same numbers by hand: 100 prior samples (decoder means) drawn with the evaluation seed,
  # and the deterministic reconstructions, each against the 100 evaluation images.
  model = aejax.load(vae_workdir)
  images = data.load("digits", "test", limit=100).images
  assert results["fid"] == pytest.approx(
    fid.fid(extractor, model.generate(100, seed=3), images), rel=1e-6
  )
  assert results["fid_reconstructions"] == pytest.approx(
    fid.fid(extractor, model.reconstruct(images), images), rel=1e-3
  )
  assert results["fid"] > 0 and results["fid_reconstructions"] > 0
  saved = json.loads((vae_workdir / ev.RESULTS_JSON).read_text())
  assert saved["fid_features"]["name"] == extractor.name and saved["fid"] == results["fid"]
  md = (vae_workdir / ev.RESULTS_MD).read_text()
  assert "prior samples (decoder means)" in md and extractor.name in md
  assert "test accuracy" not in md


def test_evaluate_notes_missing_labels_instead_of_fid(vae_workdir):
  handle = aejax.load(vae_workdir)
  test = data.load("digits", "test", limit=20)
  unlabelled = data.ImageSet(test.images, None, "digits", "test", "digits")
  out, notes = ev._fid_results(handle, unlabelled, test.images, None, None, None, 0, {})
  assert out == {} and len(notes) == 1 and "no labels" in notes[0]
  # With an extractor of one's own, labels are not needed.
  out, notes = ev._fid_results(
    handle, unlabelled, test.images, _random_projection(8), None, None, 0, {}
  )
  assert not notes and out["fid_features"]["feature_dim"] == 8 and out["fid"] > 0
