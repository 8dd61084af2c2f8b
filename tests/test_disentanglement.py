"""Disentanglement metrics against independent computations of their published formulas."""

import collections
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.stats
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import MultiLabelBinarizer

from aejax import disentanglement as dis
from aejax import errors, ground_truth

N = 2000
SIZES = (3, 4, 5, 6)
FEW_TREES = 20  # DCI's default is 100 trees; 20 keep each fit under a second here.


def _factors(rng, n=N, sizes=SIZES):
  return np.stack([rng.integers(0, k, n) for k in sizes], axis=1)


@pytest.fixture(scope="module")
def split():
  """Train and test factors with identity codes (plus tiny noise) and independent random codes."""
  rng = np.random.default_rng(0)
  factors, factors_test = _factors(rng), _factors(rng)
  return {
    "factors": factors,
    "factors_test": factors_test,
    "identity": factors + 1e-3 * rng.normal(size=factors.shape),
    "identity_test": factors_test + 1e-3 * rng.normal(size=factors.shape),
    "random": rng.normal(size=(N, len(SIZES))),
    "random_test": rng.normal(size=(N, len(SIZES))),
  }


# ---------------------------------------------------------------------------
# Independent reference computations: plain Python loops over counts.


def _loop_mi(a, b):
  """I(a; b) in nats from a dict-counted contingency table."""
  n = len(a)
  joint = collections.Counter(zip(a.tolist(), b.tolist(), strict=True))
  count_a, count_b = collections.Counter(a.tolist()), collections.Counter(b.tolist())
  return sum(
    c / n * math.log((c / n) / ((count_a[x] / n) * (count_b[y] / n))) for (x, y), c in joint.items()
  )


def _loop_entropy(a):
  n = len(a)
  return -sum(c / n * math.log(c / n) for c in collections.Counter(a.tolist()).values())


def _loop_bins(column, num_bins):
  """Equal-width bins over [min, max]: index = 1 + number of interior edges at or below x."""
  edges = np.linspace(column.min(), column.max(), num_bins + 1)
  return np.array([1 + sum(x >= e for e in edges[1:-1]) for x in column])


def _loop_mig(codes, factors, num_bins):
  disc = np.stack([_loop_bins(codes[:, d], num_bins) for d in range(codes.shape[1])], axis=1)
  gaps = []
  for f in range(factors.shape[1]):
    mi = sorted((_loop_mi(disc[:, d], factors[:, f]) for d in range(codes.shape[1])), reverse=True)
    gaps.append((mi[0] - mi[1]) / _loop_entropy(factors[:, f]))
  return np.array(gaps)


def _entangled_codes(rng, factors):
  """Codes that mix factors (a rotation of pairs) plus a nuisance dim: scores between 0 and 1."""
  f = factors.astype(np.float64)
  return np.stack(
    [
      f[:, 0] + 0.3 * f[:, 1],
      f[:, 1] - 0.5 * f[:, 0],
      f[:, 2] + 0.2 * rng.normal(size=len(f)),
      f[:, 3] + f[:, 2],
      rng.normal(size=len(f)),
    ],
    axis=1,
  )


# ---------------------------------------------------------------------------
# Building blocks.


def test_discretize_matches_equal_width_bins():
  rng = np.random.default_rng(1)
  codes = rng.normal(size=(300, 3)) * [1.0, 10.0, 0.01] + [0.0, -5.0, 3.0]
  for num_bins in (2, 7, 20):
    got = dis.discretize(codes, num_bins)
    want = np.stack([_loop_bins(codes[:, d], num_bins) for d in range(3)], axis=1)
    np.testing.assert_array_equal(got, want)
    assert got.min() == 1 and got.max() == num_bins


def test_mutual_info_matrix_and_entropies_match_a_loop():
  rng = np.random.default_rng(2)
  factors = _factors(rng, 500)
  codes = np.stack([factors[:, 0] + rng.integers(0, 2, 500), rng.integers(0, 4, 500)], axis=1)
  got = dis.mutual_info_matrix(codes, factors)
  want = [[_loop_mi(codes[:, d], factors[:, f]) for f in range(4)] for d in range(2)]
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
  want_h = [_loop_entropy(factors[:, f]) for f in range(4)]
  np.testing.assert_allclose(dis.factor_entropies(factors), want_h, rtol=1e-12)
  # MI of a column with itself is its entropy.
  np.testing.assert_allclose(np.diag(dis.mutual_info_matrix(factors, factors)), want_h, rtol=1e-12)


def test_mig_matches_the_published_formula_computed_with_loops():
  rng = np.random.default_rng(3)
  factors = _factors(rng, 1000)
  codes = _entangled_codes(rng, factors)
  got = dis.mig(codes, factors)
  want = _loop_mig(codes, factors, 20)
  np.testing.assert_allclose(got["mig_per_factor"], want, atol=1e-6)
  assert got["mig"] == pytest.approx(np.mean(want), abs=1e-6)
  assert 0.05 < got["mig"] < 0.95  # a real test: neither extreme


def test_dci_from_importance_matches_hand_entropies():
  rng = np.random.default_rng(4)
  r = rng.uniform(size=(5, 3)) ** 3
  r[1, 2] = 0.0  # exercises 0 log 0 = 0
  got = dis.dci_from_importance(r)

  def one_minus_entropy(weights, base):
    p = [w / sum(weights) for w in weights]
    return 1 - sum(-q * math.log(q, base) for q in p if q > 0)

  d_i = [one_minus_entropy(r[i], 3) for i in range(5)]
  c_j = [one_minus_entropy(r[:, j], 5) for j in range(3)]
  rho = r.sum(axis=1) / r.sum()
  weight = r.sum(axis=0) / r.sum()
  np.testing.assert_allclose(got["disentanglement_per_code"], d_i, rtol=1e-12)
  np.testing.assert_allclose(got["completeness_per_factor"], c_j, rtol=1e-12)
  assert got["disentanglement"] == pytest.approx(float(np.dot(rho, d_i)), rel=1e-12)
  assert got["completeness"] == pytest.approx(float(np.dot(weight, c_j)), rel=1e-12)
  # A one-to-one importance is perfect, a uniform one has nothing to tell.
  perfect = dis.dci_from_importance(np.eye(3))
  assert perfect["disentanglement"] == pytest.approx(1.0) == perfect["completeness"]
  flat = dis.dci_from_importance(np.ones((4, 3)))
  assert flat["disentanglement"] == pytest.approx(0.0, abs=1e-12)
  assert flat["completeness"] == pytest.approx(0.0, abs=1e-12)


def test_modularity_from_mi_matches_its_formula():
  m = np.array([[0.9, 0.1, 0.0], [0.2, 0.2, 0.4], [0.0, 0.0, 0.0]])
  want = [1 - (0.81 + 0.01 - 0.81) / (0.81 * 2), 1 - (0.04 + 0.04 + 0.16 - 0.16) / (0.16 * 2), 0.0]
  assert dis.modularity_from_mi(m) == pytest.approx(np.mean(want), rel=1e-12)


# ---------------------------------------------------------------------------
# Perfect and useless codes.


def test_identity_codes_score_near_one(split):
  f, ft = split["factors"], split["factors_test"]
  codes, codes_test = split["identity"], split["identity_test"]
  assert dis.mig(codes, f)["mig"] > 0.95
  assert dis.sap(codes, f, continuous_factors=True) > 0.99
  scores = dis.dci(codes, f, codes_test, ft, num_trees=FEW_TREES)
  assert scores["disentanglement"] > 0.95 and scores["completeness"] > 0.95
  assert scores["informativeness_test"] > 0.99
  mod = dis.modularity_explicitness(codes, f, codes_test, ft)
  assert mod["modularity"] > 0.95 and mod["explicitness_test"] > 0.99


def test_identity_discrete_sap_is_capped_by_chance_of_the_rivals():
  # Each factor's own code predicts it perfectly, but the rival codes still score about
  # chance 1/3 on a 3-valued factor, so the discrete SAP is near 1 - 1/3, not 1.
  rng = np.random.default_rng(5)
  sizes = (3, 3, 3)
  f, ft = _factors(rng, N, sizes), _factors(rng, N, sizes)
  codes, codes_test = f + 1e-3 * rng.normal(size=f.shape), ft + 1e-3 * rng.normal(size=f.shape)
  matrix = dis.sap_score_matrix(codes, f, codes_test, ft)
  np.testing.assert_array_equal(np.diag(matrix), 1.0)
  assert np.all(matrix[~np.eye(3, dtype=bool)] < 0.45)
  assert 0.55 < dis.sap(codes, f, codes_test, ft) < 2 / 3 + 0.05


def test_random_codes_score_near_zero(split):
  f, ft = split["factors"], split["factors_test"]
  codes, codes_test = split["random"], split["random_test"]
  assert dis.mig(codes, f)["mig"] < 0.1
  assert dis.sap(codes, f, codes_test, ft) < 0.1
  assert dis.sap(codes, f, continuous_factors=True) < 0.1
  assert dis.dci(codes, f, codes_test, ft, num_trees=FEW_TREES)["disentanglement"] < 0.1


# ---------------------------------------------------------------------------
# Invariances.


def test_permuting_code_dimensions_changes_no_score():
  rng = np.random.default_rng(6)
  f, ft = _factors(rng, 1000), _factors(rng, 1000)
  codes, codes_test = _entangled_codes(rng, f), _entangled_codes(rng, ft)
  perm = np.array([3, 0, 4, 2, 1])
  p, pt = codes[:, perm], codes_test[:, perm]
  assert dis.mig(p, f)["mig"] == pytest.approx(dis.mig(codes, f)["mig"], abs=1e-12)
  assert dis.sap(p, f, pt, ft) == pytest.approx(dis.sap(codes, f, codes_test, ft), abs=1e-12)
  a = dis.modularity_explicitness(codes, f, codes_test, ft)
  b = dis.modularity_explicitness(p, f, pt, ft)
  assert b["modularity"] == pytest.approx(a["modularity"], abs=1e-12)
  dci_a = dis.dci(codes, f, codes_test, ft, num_trees=FEW_TREES)
  dci_b = dis.dci(p, f, pt, ft, num_trees=FEW_TREES)
  # Trees break ties between equally good splits by a random feature order, which a
  # permutation reorders; the scores agree up to those ties.
  assert dci_b["disentanglement"] == pytest.approx(dci_a["disentanglement"], abs=0.02)
  np.testing.assert_allclose(
    dci_b["importance_matrix"], dci_a["importance_matrix"][perm], atol=0.02
  )


def test_mig_is_invariant_to_positive_affine_maps_per_dimension():
  rng = np.random.default_rng(7)
  f = _factors(rng, 1000)
  codes = _entangled_codes(rng, f)
  scaled = codes * np.array([3.0, 0.25, 17.0, 1e-3, 2.0]) + np.array([-4.0, 1e3, 0.5, 7.0, 0.0])
  a, b = dis.mig(codes, f), dis.mig(scaled, f)
  np.testing.assert_allclose(b["mig_per_factor"], a["mig_per_factor"], rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------
# Explicitness and the unsupervised scores.


def test_explicitness_matches_a_multilabel_roc_auc(split):
  rng = np.random.default_rng(8)
  f, ft = split["factors"], split["factors_test"]
  codes = _entangled_codes(rng, f)[:, :4] + rng.normal(size=(N, 4))
  codes_test = _entangled_codes(rng, ft)[:, :4] + rng.normal(size=(N, 4))
  got = dis.modularity_explicitness(codes, f, codes_test, ft)
  mean, std = codes.mean(axis=0), codes.std(axis=0)
  train, test = (codes - mean) / std, (codes_test - mean) / std
  want_train, want_test = [], []
  for j in range(f.shape[1]):
    clf = LogisticRegression().fit(train, f[:, j])
    mlb = MultiLabelBinarizer()
    want_train.append(roc_auc_score(mlb.fit_transform(f[:, j : j + 1]), clf.predict_proba(train)))
    want_test.append(roc_auc_score(mlb.fit_transform(ft[:, j : j + 1]), clf.predict_proba(test)))
  assert got["explicitness_train"] == pytest.approx(np.mean(want_train), abs=1e-9)
  assert got["explicitness_test"] == pytest.approx(np.mean(want_test), abs=1e-9)
  assert 0.6 < got["explicitness_test"] < 0.99


def test_gaussian_total_correlation_closed_form_and_entropies():
  rng = np.random.default_rng(9)
  a = rng.normal(size=(4, 4))
  cov = a @ a.T + 0.5 * np.eye(4)
  tc = dis.gaussian_total_correlation(cov)
  closed = 0.5 * (np.sum(np.log(np.diag(cov))) - np.linalg.slogdet(cov)[1])
  assert tc == pytest.approx(closed, rel=1e-12)
  # TC = sum of the marginal entropies - the joint entropy.
  marginals = sum(scipy.stats.norm(scale=math.sqrt(v)).entropy() for v in np.diag(cov))
  joint = scipy.stats.multivariate_normal(mean=np.zeros(4), cov=cov).entropy()
  assert tc == pytest.approx(marginals - joint, rel=1e-9)
  assert dis.gaussian_total_correlation(np.diag([1.0, 2.0, 3.0])) == pytest.approx(0.0, abs=1e-15)
  # A constant dim is independent of the rest (dropped); a duplicated dim is infinitely dependent.
  padded = np.zeros((5, 5))
  padded[:4, :4] = cov
  assert dis.gaussian_total_correlation(padded) == pytest.approx(tc, rel=1e-12)
  assert dis.gaussian_total_correlation(np.ones((2, 2))) == math.inf


def test_gaussian_wasserstein_correlation_matches_the_sqrtm_formula():
  rng = np.random.default_rng(10)
  a = rng.normal(size=(4, 4))
  cov = a @ a.T + 0.1 * np.eye(4)
  want = 2 * np.trace(cov) - 2 * np.trace(scipy.linalg.sqrtm(cov * np.diag(cov)[:, None])).real
  assert dis.gaussian_wasserstein_correlation(cov) == pytest.approx(want, rel=1e-9)
  assert dis.gaussian_wasserstein_correlation(np.diag([1.0, 4.0])) == pytest.approx(0, abs=1e-12)


def test_unsupervised_scores_match_their_parts():
  rng = np.random.default_rng(11)
  # Dim 1 is dim 0 plus noise (correlation 0.9), dim 2 independent of both.
  base = rng.normal(size=(N, 3))
  codes = np.stack([base[:, 0], base[:, 0] + 0.5 * base[:, 1], 2.0 * base[:, 2]], axis=1)
  scores = dis.unsupervised_scores(codes)
  cov = np.cov(codes.T)
  assert scores["gaussian_total_correlation"] == pytest.approx(
    dis.gaussian_total_correlation(cov), rel=1e-12
  )
  assert scores["gaussian_wasserstein_correlation_norm"] == pytest.approx(
    scores["gaussian_wasserstein_correlation"] / np.trace(cov), rel=1e-12
  )
  disc = np.stack([_loop_bins(codes[:, d], 20) for d in range(3)], axis=1)
  pairs = [_loop_mi(disc[:, i], disc[:, k]) for i in range(3) for k in range(3) if i != k]
  assert scores["mutual_info_score"] == pytest.approx(sum(pairs) / 6, abs=1e-9)
  # The dependent pair's MI stands well above the independent pair's (its plug-in bias).
  assert _loop_mi(disc[:, 0], disc[:, 1]) > 3 * _loop_mi(disc[:, 0], disc[:, 2])


# ---------------------------------------------------------------------------
# Sampling-based scores on a toy data set whose images are their factors.


class FactorImages:
  """A ground-truth data set whose image of factors f is f itself, as a (1, 1, F) image."""

  def __init__(self, factor_sizes=SIZES):
    self.factor_sizes = tuple(factor_sizes)
    self.factor_names = tuple(f"factor{i}" for i in range(len(factor_sizes)))
    self.image_shape = (1, 1, len(factor_sizes))

  def sample_factors(self, n, key):
    keys = jax.random.split(key, len(self.factor_sizes))
    sizes = self.factor_sizes
    columns = [jax.random.randint(k, (n,), 0, s) for k, s in zip(keys, sizes, strict=True)]
    return jnp.stack(columns, axis=1)

  def images_from_factors(self, factors, key=None):
    factors = np.asarray(factors, np.float32)
    return factors.reshape(len(factors), 1, 1, -1)


def _identity(images):
  return images.reshape(len(images), -1)


def _random_encoder(seed=0, dims=4):
  rng = np.random.default_rng(seed)
  return lambda images: rng.normal(size=(len(images), dims))


def test_toy_data_keeps_the_protocol():
  data = FactorImages()
  assert isinstance(data, ground_truth.GroundTruthData)
  codes, factors = dis.sample_codes_and_factors(data, _identity, 300, jax.random.key(0), 64)
  assert codes.shape == factors.shape == (300, len(SIZES))
  np.testing.assert_array_equal(codes, factors)
  again, _ = dis.sample_codes_and_factors(data, _identity, 300, jax.random.key(0), 7)
  np.testing.assert_array_equal(again, codes)  # the encode batch size changes nothing here


def test_beta_vae_score_identity_is_perfect_and_random_is_chance():
  data, key = FactorImages(), jax.random.key(1)
  perfect = dis.beta_vae_score(data, _identity, key, num_train=400, num_eval=400)
  assert perfect["train_accuracy"] >= 0.99 and perfect["eval_accuracy"] >= 0.99
  chance = dis.beta_vae_score(data, _random_encoder(), key, num_train=400, num_eval=600)
  assert abs(chance["eval_accuracy"] - 1 / len(SIZES)) < 0.08


def test_factor_vae_score_identity_is_perfect_and_random_is_chance():
  data, key = FactorImages(), jax.random.key(2)
  kwargs = {"num_train": 300, "num_eval": 600, "num_variance_estimate": 1000}
  perfect = dis.factor_vae_score(data, _identity, key, **kwargs)
  assert perfect == {"train_accuracy": 1.0, "eval_accuracy": 1.0, "num_active_dims": len(SIZES)}
  chance = dis.factor_vae_score(data, _random_encoder(dims=6), key, **kwargs)
  assert abs(chance["eval_accuracy"] - 1 / len(SIZES)) < 0.08
  assert chance["num_active_dims"] == 6


def test_factor_vae_score_prunes_collapsed_dims():
  data, key = FactorImages(), jax.random.key(3)
  rng = np.random.default_rng(0)

  def with_collapsed(images):
    # The identity plus a constant dim and a dim of std 0.01 (< 0.05): both collapsed.
    z = _identity(images)
    return np.concatenate([z, np.full((len(z), 1), 2.0), 0.01 * rng.normal(size=(len(z), 1))], 1)

  kwargs = {"num_train": 200, "num_eval": 200, "num_variance_estimate": 1000}
  scores = dis.factor_vae_score(data, with_collapsed, key, **kwargs)
  assert scores == {"train_accuracy": 1.0, "eval_accuracy": 1.0, "num_active_dims": len(SIZES)}
  nothing = dis.factor_vae_score(data, lambda x: np.zeros((len(x), 3)), key, **kwargs)
  assert nothing == {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}


def test_defaults_are_disentanglement_libs():
  def defaults(fn):
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()}

  assert defaults(dis.discretize)["num_bins"] == 20
  assert defaults(dis.mig)["num_bins"] == 20
  assert defaults(dis.sap)["svm_c"] == 0.01
  assert defaults(dis.sap)["continuous_factors"] is False
  assert defaults(dis.dci)["num_trees"] == 100
  assert defaults(dis.modularity_explicitness)["num_bins"] == 20
  beta = defaults(dis.beta_vae_score)
  assert (beta["batch_size"], beta["num_train"], beta["num_eval"]) == (64, 10_000, 5_000)
  factor = defaults(dis.factor_vae_score)
  assert (factor["batch_size"], factor["num_train"], factor["num_eval"]) == (64, 10_000, 5_000)
  assert (factor["num_variance_estimate"], factor["prune_std"]) == (10_000, 0.05)


# ---------------------------------------------------------------------------
# Bad inputs.


def test_bad_inputs_raise_naming_the_argument():
  rng = np.random.default_rng(12)
  codes, factors = rng.normal(size=(50, 3)), _factors(rng, 50)
  with pytest.raises(errors.DataError, match=r"codes and factors.*\(50, 3\).*\(49, 4\)"):
    dis.mig(codes, factors[:49])
  with pytest.raises(errors.DataError, match=r"codes: expected a 2-D.*\(50,\)"):
    dis.mig(codes[:, 0], factors)
  nan_codes = codes.copy()
  nan_codes[3, 1] = np.nan
  with pytest.raises(errors.DataError, match=r"codes: expected finite.*\(3, 1\)"):
    dis.mig(nan_codes, factors)
  with pytest.raises(ValueError, match="num_bins: expected an integer >= 2, got 1"):
    dis.mig(codes, factors, num_bins=1)
  with pytest.raises(errors.DataError, match=r"codes_test.*\(50, 2\)"):
    dis.dci(codes, factors, codes[:, :2], factors, num_trees=2)
  with pytest.raises(ValueError, match="codes_test, factors_test"):
    dis.sap(codes, factors)
  with pytest.raises(errors.DataError, match=r"factors\[:, 1\]: takes the single value"):
    dis.mig(codes, np.stack([factors[:, 0], np.zeros(50, int)], axis=1))
  with pytest.raises(errors.DataError, match=r"cov: expected a square.*\(2, 3\)"):
    dis.gaussian_total_correlation(np.ones((2, 3)))
  data, key = FactorImages(), jax.random.key(0)
  with pytest.raises(errors.DataError, match=r"encode: expected codes of shape \(10, D\)"):
    dis.sample_codes_and_factors(data, lambda x: np.zeros((3, 2)), 10, key)
  with pytest.raises(errors.DataError, match="encode: returned NaN"):
    dis.sample_codes_and_factors(data, lambda x: np.full((len(x), 2), np.nan), 10, key)
  with pytest.raises(ValueError, match="batch_size: expected an integer >= 2, got 1"):
    dis.factor_vae_score(data, _identity, key, batch_size=1)


def test_scores_of_one_encoder_agree_with_each_metric_on_the_same_tables():
  data, key = FactorImages(), jax.random.key(3)
  found = dis.scores(data, _identity, key, num_train=400, num_eval=300, num_trees=10)
  assert [k for k, _ in dis.SCORES] == [k for k in found if k != "mutual_info_matrix"]
  key_train, key_test, key_beta, key_factor = jax.random.split(key, 4)
  codes, factors = dis.sample_codes_and_factors(data, _identity, 400, key_train)
  test_codes, test_factors = dis.sample_codes_and_factors(data, _identity, 300, key_test)
  assert found["mig"] == pytest.approx(dis.mig(codes, factors)["mig"], abs=1e-12)
  assert found["sap"] == pytest.approx(dis.sap(codes, factors, test_codes, test_factors))
  dci = dis.dci(codes, factors, test_codes, test_factors, num_trees=10)
  assert found["dci_disentanglement"] == pytest.approx(dci["disentanglement"])
  assert found["dci_informativeness"] == pytest.approx(dci["informativeness_test"])
  beta = dis.beta_vae_score(data, _identity, key_beta, num_train=400, num_eval=300)
  assert found["beta_vae_score"] == beta["eval_accuracy"]
  np.testing.assert_allclose(
    found["mutual_info_matrix"], dis.mutual_info_matrix(dis.discretize(codes), factors)
  )
  # The identity code of this data set is disentangled: the top of every bounded score.
  for name in ("beta_vae_score", "factor_vae_score", "mig", "dci_disentanglement"):
    assert found[name] > 0.9, name
