"""The ex-post Gaussian mixture (aejax/zoo/gmm.py): densities, EM, sampling, files and errors."""

import numpy as np
import pytest
from scipy import special, stats

from aejax import errors
from aejax.zoo import gmm

# A well-separated 2-D mixture: three components of different weights and shapes.
WEIGHTS = np.array([0.5, 0.3, 0.2])
MEANS = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
COVARIANCES = np.array(
  [[[1.0, 0.3], [0.3, 0.5]], [[0.4, 0.0], [0.0, 2.0]], [[1.5, -0.6], [-0.6, 1.0]]]
)


def _known_mixture():
  return gmm.GaussianMixture(
    weights_K=WEIGHTS,
    means_KxD=MEANS,
    covariances_KxDxD=COVARIANCES,
    log_likelihood=0.0,
    iterations=0,
  )


def _draw(n, seed):
  rng = np.random.default_rng(seed)
  component = rng.choice(3, size=n, p=WEIGHTS)
  out = np.empty((n, 2))
  for k in range(3):
    where = component == k
    out[where] = rng.multivariate_normal(MEANS[k], COVARIANCES[k], size=int(where.sum()))
  return out


def _scipy_log_density(weights, means, covariances, x):
  logs = [
    np.log(w) + stats.multivariate_normal(m, c).logpdf(x)
    for w, m, c in zip(weights, means, covariances, strict=True)
  ]
  return special.logsumexp(np.stack(logs, axis=1), axis=1)


def test_log_density_matches_scipy():
  rng = np.random.default_rng(0)
  k, d = 4, 5
  weights = rng.dirichlet(np.ones(k))
  means = rng.normal(size=(k, d)) * 3
  factors = rng.normal(size=(k, d, d))
  covariances = factors @ factors.transpose(0, 2, 1) + 0.1 * np.eye(d)
  mixture = gmm.GaussianMixture(weights, means, covariances, log_likelihood=0.0, iterations=0)
  x = rng.normal(size=(50, d)) * 4
  got = gmm.log_density(mixture, x)
  assert got.shape == (50,) and got.dtype == np.float64
  np.testing.assert_allclose(got, _scipy_log_density(weights, means, covariances, x), rtol=1e-10)
  # Far from every component the densities underflow to 0, but their logs stay exact.
  far = np.full((2, d), 1e3)
  want = _scipy_log_density(weights, means, covariances, far)
  assert np.all(np.isfinite(want)) and np.all(want < -1e4)
  np.testing.assert_allclose(gmm.log_density(mixture, far), want, rtol=1e-10)


def test_em_recovers_a_well_separated_mixture_and_never_lowers_the_likelihood():
  codes = _draw(3000, seed=1)
  fit = gmm.fit_gmm(codes, num_components=3, seed=0)
  order = [int(np.argmin(np.linalg.norm(fit.means_KxD - m, axis=1))) for m in MEANS]
  assert sorted(order) == [0, 1, 2]  # One fitted component per true one.
  np.testing.assert_allclose(fit.weights_K[order], WEIGHTS, atol=0.03)
  np.testing.assert_allclose(fit.means_KxD[order], MEANS, atol=0.15)
  np.testing.assert_allclose(fit.covariances_KxDxD[order], COVARIANCES, atol=0.25)
  assert fit.weights_K.sum() == pytest.approx(1.0)
  history = np.asarray(fit.history)
  assert len(history) == fit.iterations + 1 and 1 <= fit.iterations < 100
  assert np.all(np.diff(history) >= -1e-9), np.diff(history)
  # The reported log-likelihood is that of the returned parameters, per code.
  assert fit.log_likelihood == pytest.approx(np.mean(gmm.log_density(fit, codes)), abs=1e-9)
  assert fit.log_likelihood == history[-1]
  # Near the truth's own log-likelihood on the same codes.
  assert fit.log_likelihood >= np.mean(gmm.log_density(_known_mixture(), codes)) - 1e-9


def test_em_likelihood_rises_monotonically_on_an_overlapping_mixture():
  # A hard case (overlapping components, more components than clusters) takes many iterations.
  rng = np.random.default_rng(3)
  codes = np.concatenate([rng.normal(size=(400, 3)), rng.normal(size=(400, 3)) * 2 + 1.0])
  fit = gmm.fit_gmm(codes, num_components=5, seed=2, max_iter=60, tol=0.0)
  assert fit.iterations == 60  # tol=0: every M-step runs.
  assert np.all(np.diff(fit.history) >= -1e-9)
  assert fit.history[-1] > fit.history[0] + 1e-3


def test_fit_is_deterministic_in_the_seed():
  codes = _draw(500, seed=2)
  a, b = gmm.fit_gmm(codes, 3, seed=5), gmm.fit_gmm(codes, 3, seed=5)
  np.testing.assert_array_equal(a.means_KxD, b.means_KxD)
  np.testing.assert_array_equal(a.covariances_KxDxD, b.covariances_KxDxD)
  assert a.history == b.history


def test_duplicate_codes_stay_finite():
  # Codes on three points only (a collapsed code space): reg_covar keeps every component valid.
  codes = np.repeat(np.array([[0.0, 1.0], [2.0, 2.0], [5.0, -1.0]]), 20, axis=0)
  fit = gmm.fit_gmm(codes, num_components=5, seed=0)
  assert np.all(np.isfinite(fit.means_KxD)) and np.isfinite(fit.log_likelihood)
  assert np.all(np.linalg.eigvalsh(fit.covariances_KxDxD) > 0)
  assert np.all(np.isfinite(gmm.sample(fit, 10, seed=0)))


def test_sample_statistics_match_the_mixture():
  mixture = _known_mixture()
  draws = gmm.sample(mixture, 200_000, seed=0)
  assert draws.shape == (200_000, 2) and draws.dtype == np.float32
  mean = WEIGHTS @ MEANS
  second = np.einsum("k,kij->ij", WEIGHTS, COVARIANCES + np.einsum("ki,kj->kij", MEANS, MEANS))
  np.testing.assert_allclose(draws.mean(axis=0), mean, atol=0.05)
  np.testing.assert_allclose(np.cov(draws.T), second - np.outer(mean, mean), rtol=0.02, atol=0.05)
  # Each component's share: the draws nearest each mean (the components barely overlap).
  nearest = np.argmin(np.linalg.norm(draws[:, None, :] - MEANS[None], axis=2), axis=1)
  np.testing.assert_allclose(np.bincount(nearest) / len(draws), WEIGHTS, atol=0.01)
  np.testing.assert_array_equal(gmm.sample(mixture, 100, seed=0), gmm.sample(mixture, 100, seed=0))
  assert not np.array_equal(gmm.sample(mixture, 100, seed=1), gmm.sample(mixture, 100, seed=0))


def test_save_load_round_trip(tmp_path):
  fit = gmm.fit_gmm(_draw(300, seed=4), num_components=3, seed=1)
  path = tmp_path / "gmm.npz"
  gmm.save(fit, path)
  gmm.save(fit, path)  # Overwrites in place.
  assert [p.name for p in tmp_path.iterdir()] == ["gmm.npz"]  # No temporary file left.
  back = gmm.load(path)
  np.testing.assert_array_equal(back.weights_K, fit.weights_K)
  np.testing.assert_array_equal(back.means_KxD, fit.means_KxD)
  np.testing.assert_array_equal(back.covariances_KxDxD, fit.covariances_KxDxD)
  assert (back.log_likelihood, back.iterations, back.history) == (
    fit.log_likelihood,
    fit.iterations,
    fit.history,
  )
  np.testing.assert_array_equal(gmm.sample(back, 20, seed=3), gmm.sample(fit, 20, seed=3))
  np.savez(tmp_path / "other.npz", weights=np.ones(3))
  with pytest.raises(errors.InputError, match="not a Gaussian mixture file"):
    gmm.load(tmp_path / "other.npz")
  (tmp_path / "broken.npz").write_bytes(b"not a zip")
  with pytest.raises(errors.InputError, match="broken.npz"):
    gmm.load(tmp_path / "broken.npz")


@pytest.mark.parametrize(
  "codes, pattern",
  [
    (
      np.array([[0.0, np.nan]] + [[0.0, 0.0]] * 19),
      r"codes_NxD: 1 NaN or infinite values in the array of shape \(20, 2\)",
    ),
    (np.zeros(20), r"codes_NxD: expected a 2-D array .* got shape \(20,\)"),
    (np.zeros((5, 2, 2)), r"codes_NxD: .* got shape \(5, 2, 2\)"),
    (np.zeros((4, 3)), r"codes_NxD: 4 codes \(shape \(4, 3\)\) are fewer than num_components=10"),
  ],
)
def test_bad_codes_raise_input_errors_naming_argument_and_shape(codes, pattern):
  with pytest.raises(errors.InputError, match=pattern):
    gmm.fit_gmm(codes, num_components=10)


def test_bad_arguments_raise_input_errors():
  fit = gmm.fit_gmm(_draw(100, seed=0), num_components=2)
  with pytest.raises(errors.InputError, match=r"x_NxD: the mixture has 2 dimensions.*\(4, 3\)"):
    gmm.log_density(fit, np.zeros((4, 3)))
  with pytest.raises(errors.InputError, match=r"x_NxD: 1 NaN"):
    gmm.log_density(fit, np.array([[np.inf, 0.0]]))
  with pytest.raises(errors.InputError, match=r"^n: "):
    gmm.sample(fit, 0, seed=0)
  with pytest.raises(errors.InputError, match=r"^num_components: "):
    gmm.fit_gmm(_draw(100, seed=0), num_components=0)
  with pytest.raises(errors.InputError, match=r"^reg_covar: "):
    gmm.fit_gmm(_draw(100, seed=0), num_components=2, reg_covar=-1.0)
