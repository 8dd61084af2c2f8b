"""aejax.evaluate: the IWAE estimator against an exact linear-Gaussian model, then end to end."""

import json
import math
import pathlib
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_digits_config
from scipy import stats

from aejax import disentanglement, errors, estimators, train
from aejax import evaluate as ev

ROOT = pathlib.Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------
# Probabilistic PCA: p(z) = N(0, I_d), p(x|z) = N(W z + b, s^2 I), so p(x) = N(b, W W^T + s^2 I)
# exactly. W has orthogonal columns, so the exact posterior has a diagonal covariance and lies
# in the encoder's family q(z|x) = N(mean, diag(exp(logvar))).

X_DIM, Z_DIM, NOISE_STD = 10, 2, 0.5
COLUMN_SCALES = np.array([2.0, 1.0])


class PPCA:
  def __init__(self, seed: int, num_images: int):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(X_DIM, Z_DIM)))
    self.w, self.b = q * COLUMN_SCALES, 0.3 * rng.normal(size=X_DIM)
    z = rng.normal(size=(num_images, Z_DIM))
    x = z @ self.w.T + self.b + NOISE_STD * rng.normal(size=(num_images, X_DIM))
    self.x_flat = x.astype(np.float32)
    # As (B, H, W, C) images, the shape the estimator is given in aejax.
    self.x_BxHxWxC = jnp.asarray(self.x_flat.reshape(num_images, 1, X_DIM, 1))
    marginal = stats.multivariate_normal(self.b, self.w @ self.w.T + NOISE_STD**2 * np.eye(X_DIM))
    self.log_px = marginal.logpdf(self.x_flat.astype(np.float64))  # float64, exact.
    # Exact posterior: covariance (I + W^T W / s^2)^-1 (diagonal here), mean cov W^T (x - b) / s^2.
    self.post_var_D = NOISE_STD**2 / (NOISE_STD**2 + COLUMN_SCALES**2)
    self.post_mean = (self.x_flat - self.b) @ self.w * self.post_var_D / NOISE_STD**2
    w32, b32 = jnp.asarray(self.w, jnp.float32), jnp.asarray(self.b, jnp.float32)

    def log_px_given_z(x_BxHxWxC, z_BxD):
      residual = x_BxHxWxC.reshape(x_BxHxWxC.shape[0], -1) - (z_BxD @ w32.T + b32[None])
      return (
        -0.5 * jnp.sum(jnp.square(residual), axis=-1) / NOISE_STD**2
        - X_DIM * math.log(NOISE_STD)
        - 0.5 * X_DIM * math.log(2 * math.pi)
      )

    self.log_px_given_z = log_px_given_z

  def posterior(self, mean_shift_in_std: float = 0.0, variance_factor: float = 1.0):
    """(mean, logvar) of q: the exact posterior, or one shifted and with inflated variance."""
    mean = self.post_mean + mean_shift_in_std * np.sqrt(self.post_var_D)
    logvar = np.broadcast_to(np.log(variance_factor * self.post_var_D), mean.shape)
    return jnp.asarray(mean, jnp.float32), jnp.asarray(logvar, jnp.float32)


@pytest.fixture(scope="module")
def ppca():
  return PPCA(seed=0, num_images=1000)


# The exact-posterior and chunking tests share shapes and static arguments (100 images, k = 100,
# chunks of 7 for L_10 and L_100 at once), so each program compiles once for both.
KS_SMALL, NUM_SMALL = (10, 100), 100


def test_exact_posterior_gives_log_px_with_zero_variance(ppca):
  mean, logvar = ppca.posterior()
  x, mean, logvar = ppca.x_BxHxWxC[:NUM_SMALL], mean[:NUM_SMALL], logvar[:NUM_SMALL]
  fn, exact = ppca.log_px_given_z, ppca.log_px[:NUM_SMALL]
  # With q = p(z|x), every weight p(x, z) / q(z|x) is p(x): no sample-to-sample variance at all,
  # so L_1 (a single log weight) and L_k are log p(x) exactly, up to float32 rounding.
  log_w = np.asarray(estimators.log_importance_weights(jax.random.key(0), x, mean, logvar, fn, 100))
  assert log_w.shape == (100, NUM_SMALL)
  np.testing.assert_allclose(log_w, np.broadcast_to(exact, log_w.shape), rtol=0, atol=1e-4)
  assert log_w.std(axis=0).max() < 1e-4
  bounds = estimators.iwae_bounds(jax.random.key(1), x, mean, logvar, fn, KS_SMALL, 7)
  np.testing.assert_allclose(np.asarray(bounds), np.broadcast_to(exact, (2, NUM_SMALL)), atol=1e-4)


def test_wrong_posterior_bound_tightens_with_k_to_log_px(ppca):
  # 2 posterior standard deviations off, 4x the variance: L_1 is ~5.4 nats below log p(x).
  mean, logvar = ppca.posterior(mean_shift_in_std=2.0, variance_factor=4.0)
  ks = (1, 10, 100, 1000, 5000)
  # Nested: L_k uses the first k samples of one stream, so the differences between k are not
  # swamped by independent noise.
  bounds = estimators.iwae_bounds(
    jax.random.key(1), ppca.x_BxHxWxC, mean, logvar, ppca.log_px_given_z, ks, chunk_size=500
  )
  gaps = dict(zip(ks, np.mean(np.asarray(bounds, np.float64) - ppca.log_px, axis=1), strict=True))
  # Measured (1,000 images): -5.39, -0.44, -0.039, -0.007, -0.001 nats; over seeds 0..9 of the
  # data and key L_100 < L_1000 always held by >= 0.02 nats.
  assert gaps[1] < gaps[10] < gaps[100] < gaps[1000] <= 0.01, gaps
  assert gaps[1] < -3.0
  assert abs(gaps[5000]) < 0.02, gaps


def test_chunk_size_does_not_change_the_samples(ppca):
  # Sample i is drawn from fold_in(key, i) whatever chunk it falls in, so chunk size 7 (with a
  # masked, partly empty last chunk) and chunk size k see the same samples; only the order of
  # the floating point sums differs. And both are the log-mean-exp of the materialised weights.
  mean, logvar = ppca.posterior(mean_shift_in_std=1.0, variance_factor=2.0)
  x, mean, logvar = ppca.x_BxHxWxC[:NUM_SMALL], mean[:NUM_SMALL], logvar[:NUM_SMALL]
  fn, key = ppca.log_px_given_z, jax.random.key(3)
  # Chunks of 7 for k = 10 and k = 100 at once (nested: L_10 is the first 10 samples of L_100).
  by_7 = np.asarray(estimators.iwae_bounds(key, x, mean, logvar, fn, KS_SMALL, 7))
  by_k = np.asarray(estimators.iwae_bound(key, x, mean, logvar, fn, 100, chunk_size=100))
  np.testing.assert_allclose(by_k, by_7[1], rtol=0, atol=2e-5)
  log_w = estimators.log_importance_weights(key, x, mean, logvar, fn, 100)
  for row, k in enumerate(KS_SMALL):
    direct = jax.scipy.special.logsumexp(log_w[:k], axis=0) - math.log(k)
    np.testing.assert_allclose(np.asarray(direct), by_7[row], rtol=0, atol=2e-5)


def test_log_weights_far_from_zero_stay_finite(ppca):
  # exp(-1e4) underflows and exp(1e4) overflows in any float: a naive mean of w gives -inf or
  # inf; the running log-sum-exp gives log p(x) + offset (to float32 rounding at 1e4: ~1e-3).
  mean, logvar = ppca.posterior()
  x, mean, logvar = ppca.x_BxHxWxC[:20], mean[:20], logvar[:20]
  offset_B = np.repeat([-1e4, 1e4], 10).astype(np.float32)

  def shifted(x_BxHxWxC, z_BxD):
    return ppca.log_px_given_z(x_BxHxWxC, z_BxD) + offset_B

  bound = np.asarray(estimators.iwae_bound(jax.random.key(0), x, mean, logvar, shifted, 300, 64))
  assert np.all(np.isfinite(bound))
  np.testing.assert_allclose(bound, ppca.log_px[:20] + offset_B, rtol=0, atol=1e-2)


def test_iwae_bound_rejects_bad_k(ppca):
  mean, logvar = ppca.posterior()
  with pytest.raises(errors.InputError, match="k >= 1"):
    estimators.iwae_bound(jax.random.key(0), ppca.x_BxHxWxC[:2], mean[:2], logvar[:2], abs, 0)


def test_active_units_and_kl_per_dim_on_known_arrays():
  rng = np.random.default_rng(0)
  # Unit 0 varies a lot, unit 1 a little (var 0.04), unit 2 just below the threshold, 3 not at all.
  means = np.stack(
    [rng.normal(size=1000), 0.2 * rng.normal(size=1000), np.zeros(1000), np.full(1000, 3.0)], 1
  )
  means[::2, 2], means[1::2, 2] = 0.09, -0.09  # Variance 0.0081 < 0.01.
  count, variances = estimators.active_units(means)
  assert count == 2
  np.testing.assert_allclose(variances, np.var(means, axis=0))
  assert estimators.active_units(means, threshold=1e-3)[0] == 3
  # KL(N(m, exp(lv)) || N(0, 1)) = 0.5 (exp(lv) + m^2 - 1 - lv): 0 at the prior, 0.5 at m = 1,
  # 0.5 (e - 2) at lv = 1; averaged over the two images.
  mean = np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
  logvar = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]], np.float32)
  np.testing.assert_allclose(
    estimators.kl_per_dim(mean, logvar), [0.0, 0.5, 0.25 * (math.e - 2)], rtol=1e-6
  )


def test_bits_per_dim_and_dequantisation():
  # A uniform density on [0, 1)^D (nll 0) is exactly 8 bits per dimension of 8-bit data.
  assert estimators.bits_per_dim(0.0, 784) == pytest.approx(8.0)
  assert estimators.bits_per_dim(784 * math.log(2), 784) == pytest.approx(9.0)
  levels = np.arange(256, dtype=np.float32).reshape(1, 16, 16, 1)
  y = np.asarray(estimators.dequantise(jax.random.key(0), levels / 255.0))
  # Level k lands in its own bin [k / 256, (k + 1) / 256).
  assert np.all(np.floor(y * 256) == levels)


# ---------------------------------------------------------------------------
# End to end on tiny trained workdirs (the embedded 8x8 digits; 8-bit MNIST for bits/dim).


@pytest.fixture(scope="module")
def vae_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("vae")
  train.train_and_evaluate(tiny_digits_config(16), str(workdir))
  return workdir


# The evaluation of test_evaluate_vae, which the CLI must reproduce. The FID classifier is
# trained for a few steps only, into a temporary cache (never the home folder).
EVAL_ARGS = dict(
  nll_samples=64, limit=100, batch_size=64, probe_train_size=500, fid_classifier_steps=40
)


@pytest.fixture(scope="module")
def fid_cache(tmp_path_factory):
  return tmp_path_factory.mktemp("fid_cache")


@pytest.fixture(scope="module")
def vae_results(vae_workdir, fid_cache):
  results = ev.evaluate(vae_workdir, fid_cache_dir=fid_cache, **EVAL_ARGS)
  return results, json.loads((vae_workdir / ev.RESULTS_JSON).read_text())


def _evaluate_cli(*args):
  return subprocess.run(
    [sys.executable, "-m", "aejax.evaluate", *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_evaluate_vae(vae_workdir, vae_results):
  results, saved = vae_results
  assert saved.keys() == results.keys() and saved["nll"] == results["nll"]
  for key in (
    "elbo elbo_stderr elbo_mc elbo_mc_stderr recon kl nll nll_stderr nll_samples iwae_bound_k "
    "active_units kl_per_dim linear_probe_accuracy knn_accuracy bce_per_pixel mse psnr ssim "
    "seed split num_images batch_size chunk_size step workdir seconds fid fid_reconstructions "
    "fid_features"
  ).split():
    assert key in saved, key
  assert "bits_per_dim" not in saved  # Bernoulli decoder.
  # The 8x8 digits are grey levels: under a Bernoulli decoder the "NLL" is a cross-entropy.
  assert any("cross-entropies" in note for note in saved["notes"])
  assert saved["num_images"] == 100 and saved["step"] == 16 and saved["nll_samples"] == 64
  assert saved["batch_size"] == 64 and saved["split"] == "test"
  numbers = [v for v in saved.values() if isinstance(v, float)]
  numbers += saved["kl_per_dim"] + list(saved["iwae_bound_k"].values())
  assert np.all(np.isfinite(numbers))
  assert saved["elbo"] < 0 and saved["nll"] > 0
  assert saved["elbo"] == pytest.approx(-(saved["recon"] + saved["kl"]))
  assert saved["kl"] == pytest.approx(sum(saved["kl_per_dim"]), rel=1e-5)
  # The importance-weighted bound is tighter than the ELBO (L_64 >= L_1 on average).
  assert saved["nll"] <= -saved["elbo"] + 3 * saved["elbo_stderr"]
  assert saved["nll"] <= -saved["elbo_mc"] + 3 * saved["elbo_mc_stderr"]
  bounds = saved["iwae_bound_k"]
  assert list(bounds) == ["1", "5", "50", "64"] and bounds["1"] == pytest.approx(saved["elbo_mc"])
  assert bounds["1"] < bounds["5"] < bounds["64"] and saved["nll"] == pytest.approx(-bounds["64"])
  assert 0 <= saved["active_units"] <= 2 and len(saved["kl_per_dim"]) == 2
  for key in ("linear_probe_accuracy", "knn_accuracy", "ssim"):
    assert 0.0 <= saved[key] <= 1.0
  assert saved["linear_probe_accuracy"] > 0.2  # 10 classes: chance is 0.1.
  # FID on the default classifier, trained on the digits' labels (a tiny one here).
  features = saved["fid_features"]
  assert features["name"].startswith("aejax-classifier:digits:") and ":steps40:" in features["name"]
  assert 0.1 < features["test_accuracy"] <= 1.0 and features["feature_dim"] == 128
  assert saved["fid"] > 0 and saved["fid_reconstructions"] > 0
  md = (vae_workdir / ev.RESULTS_MD).read_text()
  assert "nats per image" in md and f"{saved['nll']:.2f}" in md
  assert f"{saved['fid']:.2f}" in md and features["name"] in md and "test accuracy" in md


def test_evaluate_cli(vae_workdir, vae_results, fid_cache):
  # The same evaluation as test_evaluate_vae from the command line (without the probes): the
  # same numbers, a function of the seed and the batch size, written anew; the same cached
  # FID classifier.
  _, expected = vae_results
  (vae_workdir / ev.RESULTS_JSON).unlink()
  flags = {**EVAL_ARGS, "probe_train_size": 0, "fid_cache_dir": fid_cache}
  result = _evaluate_cli(f"--workdir={vae_workdir}", *(f"--{k}={v}" for k, v in flags.items()))
  assert result.returncode == 0, result.stderr[-2000:]
  saved = json.loads((vae_workdir / ev.RESULTS_JSON).read_text())
  assert "linear_probe_accuracy" not in saved
  assert saved["fid_features"] == expected["fid_features"]
  for key in ("nll", "elbo", "elbo_mc", "kl", "ssim", "active_units", "fid"):
    assert saved[key] == pytest.approx(expected[key], rel=1e-6), key
  assert saved["iwae_bound_k"] == pytest.approx(expected["iwae_bound_k"], rel=1e-6)
  assert "| metric | value | unit |" in result.stdout
  bad = _evaluate_cli(f"--workdir={vae_workdir / 'nope'}")
  assert bad.returncode == 2 and "CheckpointError" in bad.stderr and "does not exist" in bad.stderr
  assert "Traceback" not in bad.stderr
  assert len([line for line in bad.stderr.splitlines() if "Error" in line]) == 1
  off = _evaluate_cli(f"--workdir={vae_workdir}", "--nll_samples=2", "--limit=8", "--nofid")
  assert off.returncode == 0, off.stderr[-2000:]
  assert "fid" not in json.loads((vae_workdir / ev.RESULTS_JSON).read_text())


def test_evaluate_plain_autoencoder(tmp_path, fid_cache):
  train.train_and_evaluate(
    tiny_digits_config(total_steps=4, name="dense_ae", latent_dim=4), str(tmp_path)
  )
  results = ev.evaluate(
    tmp_path, limit=50, probe_train_size=200, fid_cache_dir=fid_cache, fid_classifier_steps=40
  )
  for key in "recon bce_per_pixel mse psnr ssim linear_probe_accuracy fid_reconstructions".split():
    assert np.isfinite(results[key]), key
  # No prior to sample from: only the FID of the reconstructions.
  for key in "elbo nll kl iwae_bound_k active_units kl_per_dim nll_samples fid".split():
    assert key not in results, key
  assert results["recon"] > 0 and 0.0 <= results["knn_accuracy"] <= 1.0


def test_evaluate_bad_arguments(vae_workdir, tmp_path):
  with pytest.raises(errors.CheckpointError, match="does not exist"):
    ev.evaluate(tmp_path / "nope")
  with pytest.raises(errors.InputError, match="nll_samples"):
    ev.evaluate(vae_workdir, nll_samples=0)


def test_gaussian_decoder_on_8bit_mnist_gets_bits_per_dim(tmp_path, data_dir):
  c = tiny_digits_config(total_steps=1, likelihood="gaussian", log_scale=-1.0)
  c.data.name, c.data.data_dir = "mnist", str(data_dir)
  train.train_and_evaluate(c, str(tmp_path))
  results = ev.evaluate(tmp_path, nll_samples=8, limit=16, probe_train_size=0, fid=False)
  assert "linear_probe_accuracy" not in results and "fid_features" not in results
  # (nll(y) / 784 + log 256) / log 2 with nll(y) of the dequantised images: near, not equal to,
  # the same formula on the undequantised nll (the images move by less than 1/256).
  from_nll = estimators.bits_per_dim(results["nll"], 784)
  assert np.isfinite(results["bits_per_dim"]) and abs(results["bits_per_dim"] - from_nll) < 0.1
  assert results["bits_per_dim"] == pytest.approx(
    estimators.bits_per_dim(results["nll_dequantised"], 784)
  )
  assert "bits/dim" in (tmp_path / ev.RESULTS_MD).read_text()


def test_each_samplers_fid_gets_its_line_and_the_opt_out_is_respected():
  results = dict(
    model="two_stage_vae", task="reconstruct", likelihood="gaussian", data="digits",
    split="test", step=8, num_images=40, seed=0, batch_size=40, num_devices=1, seconds=1.0,
    main_pass_seconds=0.5, main_pass_images_per_sec=80.0, recon=1.0, bce_per_pixel=0.1,
    mse=0.01, psnr=20.0, ssim=0.5, fid=30.25, fid_gmm=20.5, fid_two_stage=10.75,
    fid_reconstructions=5.0, fid_features={"name": "pixels", "feature_dim": 64},
  )  # fmt: skip
  md = ev.markdown_table(results)
  assert (
    "| FID, 40 samples of the second-stage VAE of the training codes vs the 40 images | 10.75" in md
  )
  assert (
    "| FID, 40 samples of the ex-post mixture of the training codes vs the 40 images | 20.50" in md
  )
  assert "| FID, 40 prior samples (decoder means) vs the 40 images | 30.25" in md
  # gmm for unconditional models that allow it, then the model's own fid_samplers.
  handle = types.SimpleNamespace(num_classes=0, model=types.SimpleNamespace())
  assert ev.fid_samplers(handle) == ("gmm",)
  handle.model = types.SimpleNamespace(fid_samplers=("two_stage",))
  assert ev.fid_samplers(handle) == ("gmm", "two_stage")
  handle.model = types.SimpleNamespace(ex_post_samplers=(), fid_samplers=())
  assert ev.fid_samplers(handle) == ()
  handle.num_classes, handle.model = 10, types.SimpleNamespace()
  assert ev.fid_samplers(handle) == ()


def test_a_run_on_dsprites_gets_every_disentanglement_score(tmp_path):
  c = tiny_digits_config()
  c.data.name = "dsprites"
  c.data.train_limit, c.data.eval_limit = 256, 64
  c.model.latent_dim = 3
  train.train_and_evaluate(c, str(tmp_path))
  # The trainer rendered its batches from the factors (tests/test_train.py checks how).
  run_info = json.loads((tmp_path / "run_info.json").read_text())
  assert run_info["data"] == "dsprites/rendered" and run_info["num_train"] == 256
  assert run_info["image_shape"] == [64, 64, 1] and run_info["has_labels"]
  results = ev.evaluate(
    tmp_path, nll_samples=2, limit=64, probe_train_size=100, disentanglement_points=200
  )
  assert results["disentanglement_points"] == 200
  for key, what in disentanglement.SCORES:
    assert math.isfinite(results[key]), key
    if "nats" not in what:
      assert 0.0 <= results[key] <= 1.0, key
  assert np.asarray(results["mutual_info_matrix"]).shape == (3, 5)
  assert (tmp_path / ev.MUTUAL_INFO_PNG).is_file()
  assert any("fid omitted" in note for note in results["notes"])
  table = (tmp_path / ev.RESULTS_MD).read_text()
  assert "| MIG (200 + 100 points) |" in table
  skipped = ev.evaluate(tmp_path, nll_samples=2, limit=64, fid=False, disentanglement_points=0)
  assert "mig" not in skipped and "disentanglement_points=0" in " ".join(skipped["notes"])
