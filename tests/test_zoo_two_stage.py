"""The two-stage VAE (aejax/zoo/two_stage_vae.py) and its sampler "two_stage" (aejax/samplers.py).

The second stage's loss is checked against NumPy/SciPy float64 computed from
the same parameters and noise; its fit against a known Gaussian; the sampler
end to end on a tiny two_stage_vae trained on the embedded 8x8 digits.
"""

import types

import flax
import jax
import numpy as np
import pytest
from helpers import tiny_digits_config
from scipy import stats

import aejax
from aejax import data, errors, evaluate, frechet, models, samplers, train
from aejax.zoo import two_stage_vae as ts

SMALL = ts.Settings(widths=(16, 16), steps=300, learning_rate=3e-3, batch_size=32, max_codes=128)


# -- the second stage's loss -----------------------------------------------------


def _np_terms(z, mean_u, logvar_u, z_hat, log_gamma):
  """kl and nll per code from SciPy densities, float64."""
  var_u = np.exp(logvar_u)
  kl = 0.5 * np.sum(var_u + mean_u**2 - 1.0 - logvar_u, axis=-1)
  gamma = np.exp(log_gamma)
  nll = np.array(
    [
      -stats.multivariate_normal(m, gamma * np.eye(len(m))).logpdf(x)
      for x, m in zip(z, z_hat, strict=True)
    ]
  )
  return kl, nll


def test_second_stage_terms_match_scipy():
  rng = np.random.default_rng(0)
  z, mean_u, z_hat = (rng.normal(size=(5, 3)) for _ in range(3))
  logvar_u = rng.normal(scale=0.5, size=(5, 3))
  for log_gamma in (-2.0, 0.0, 1.3):
    got = ts.second_stage_terms(z, mean_u, logvar_u, z_hat, log_gamma)
    kl, nll = _np_terms(z, mean_u, logvar_u, z_hat, log_gamma)
    np.testing.assert_allclose(got["kl"], kl, rtol=1e-5)
    np.testing.assert_allclose(got["nll"], nll, rtol=1e-5)
    np.testing.assert_allclose(got["loss"], kl + nll, rtol=1e-5)


def _np_skip_mlp(p, x):
  """ReLU layers Dense_0..Dense_{n-2}, the input concatenated to the last, then Dense_{n-1}."""
  names = sorted(p, key=lambda n: int(n.split("_")[1]))
  h = x
  for name in names[:-1]:
    h = np.maximum(h @ p[name]["kernel"] + p[name]["bias"], 0.0)
  last = p[names[-1]]
  return np.concatenate([x, h], axis=-1) @ last["kernel"] + last["bias"]


def test_the_modules_loss_is_the_numpy_forward_pass():
  module = ts.SecondStage(widths=(6, 5), dim=3)
  rng = np.random.default_rng(1)
  z, eps = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
  params = module.init(jax.random.key(0), z, eps)["params"]
  params = flax.core.unfreeze(params)
  params["log_gamma_z"] = np.float32(-0.7)  # Away from its initial 0, so that it is tested.
  got = module.apply({"params": params}, z, eps)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  out = _np_skip_mlp(p["encoder"], z.astype(np.float64))
  mean_u, logvar_u = out[:, :3], out[:, 3:]
  u = mean_u + np.exp(0.5 * logvar_u) * eps
  kl, nll = _np_terms(z, mean_u, logvar_u, _np_skip_mlp(p["decoder"], u), -0.7)
  np.testing.assert_allclose(got["kl"], kl, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got["nll"], nll, rtol=1e-4, atol=1e-5)


# -- the fit ---------------------------------------------------------------------

MEAN = np.array([1.0, -2.0])
COV = np.array([[1.0, 0.8], [0.8, 1.5]])


def test_the_fit_lowers_its_loss_and_samples_the_codes_distribution():
  codes = np.random.default_rng(2).multivariate_normal(MEAN, COV, size=2000)
  settings = ts.Settings(widths=(32, 32), steps=1500, learning_rate=3e-3, batch_size=128)
  fitted = ts.fit(codes, None, settings, seed=0)
  assert len(fitted.history) == 15
  # The mean loss per code falls and ends near the codes' entropy (the best possible).
  entropy = 0.5 * np.linalg.slogdet(2 * np.pi * np.e * COV)[1]
  assert fitted.history[-1] < fitted.history[0] - 0.2
  assert fitted.history[-1] == pytest.approx(entropy, abs=0.15)
  assert ts.mean_loss(fitted, codes) == pytest.approx(entropy, abs=0.15)
  draws = ts.sample_codes(fitted, 20_000, seed=1)
  assert draws.shape == (20_000, 2) and draws.dtype == np.float32
  np.testing.assert_allclose(draws.mean(0), MEAN, atol=0.1)
  np.testing.assert_allclose(np.cov(draws.T), COV, atol=0.2)
  # Deterministic in codes, settings and seed; another seed draws otherwise.
  np.testing.assert_array_equal(ts.sample_codes(fitted, 20_000, seed=1), draws)
  assert not np.allclose(ts.sample_codes(fitted, 5, seed=2), draws[:5])


def test_a_fit_is_deterministic_and_fits_noisy_codes():
  # 128 2-D codes, as the tiny model's below: one compiled program serves every fit of SMALL.
  mean = np.random.default_rng(3).normal(size=(SMALL.max_codes, 2)).astype(np.float32)
  a = ts.fit(mean, np.full_like(mean, 0.5), SMALL, seed=4)
  b = ts.fit(mean, np.full_like(mean, 0.5), SMALL, seed=4)
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
    np.testing.assert_array_equal(x, y)
  c = ts.fit(mean, None, SMALL, seed=4)  # Without the posterior's noise: other codes, other fit.
  assert not np.array_equal(a.params["log_gamma_z"], c.params["log_gamma_z"])
  # The fit works in the codes' own units: codes in other units give the same draws in those.
  d = ts.fit(100.0 * mean + 5.0, None, SMALL, seed=4)
  np.testing.assert_allclose(
    ts.sample_codes(d, 50, 0), 100.0 * ts.sample_codes(c, 50, 0) + 5.0, rtol=1e-3, atol=1e-2
  )
  assert d.history[-1] == pytest.approx(c.history[-1] + 2 * np.log(100.0), abs=1e-2)
  with pytest.raises(errors.InputError, match="codes: expected"):
    ts.fit(mean[:, 0], None, SMALL)
  with pytest.raises(errors.InputError, match="negative standard deviation"):
    ts.fit(mean, -np.ones_like(mean), SMALL)


def test_save_and_load_give_back_the_same_fit(tmp_path):
  fitted = ts.fit(np.random.default_rng(5).normal(size=(SMALL.max_codes, 2)), None, SMALL, seed=7)
  path = tmp_path / "fit.msgpack"
  ts.save(fitted, path)
  back = ts.load(path)
  assert back.settings == fitted.settings and back.seed == 7 and back.history == fitted.history
  assert back.scale == fitted.scale and np.array_equal(back.shift_D, fitted.shift_D)
  assert back.module == fitted.module
  assert jax.tree.structure(back.params) == jax.tree.structure(fitted.params)
  for x, y in zip(jax.tree.leaves(back.params), jax.tree.leaves(fitted.params), strict=True):
    np.testing.assert_array_equal(x, y)
  np.testing.assert_array_equal(ts.sample_codes(back, 8, 3), ts.sample_codes(fitted, 8, 3))
  (tmp_path / "bad.msgpack").write_bytes(b"not msgpack")
  with pytest.raises(errors.InputError, match="not a readable two-stage sampler file"):
    ts.load(tmp_path / "bad.msgpack")


# -- the model -------------------------------------------------------------------


def _config(**options):
  c = tiny_digits_config(
    total_steps=8, name="two_stage_vae", likelihood="gaussian", learn_log_scale=True
  )
  c.model.options.second_widths = SMALL.widths
  c.model.options.second_steps = SMALL.steps
  c.model.options.second_batch_size = SMALL.batch_size
  c.model.options.second_max_codes = SMALL.max_codes
  for name, value in options.items():
    c.model.options[name] = value
  return c


def test_build_enforces_the_papers_learned_decoder_variance():
  model = models.build_model(_config().model, (8, 8, 1))
  assert model.is_variational and model.learn_log_scale and model.fid_samplers == ("two_stage",)
  c = _config()
  c.model.likelihood, c.model.learn_log_scale = "bernoulli", False  # No variance to learn.
  assert not models.build_model(c.model, (8, 8, 1)).learn_log_scale
  c = _config()
  c.model.learn_log_scale = False
  with pytest.raises(errors.ConfigError, match="config.model.learn_log_scale"):
    models.build_model(c.model, (8, 8, 1))
  for name, value, match in (
    ("second_steps", 0, "second_steps: must be >= 1"),
    ("second_widths", (8, 0), "second_widths: expected a tuple of integers >= 1"),
    ("second_learning_rate", -1.0, "second_learning_rate: must be a finite number > 0"),
    ("network", "gated", "network: unknown network 'gated'"),
  ):
    with pytest.raises(errors.ConfigError, match=f"config.model.options.{match}"):
      models.build_model(_config(**{name: value}).model, (8, 8, 1))


def test_the_sampler_takes_a_two_stage_vaes_own_settings_and_defaults_for_others():
  model = models.build_model(_config(second_steps=7, second_widths=(24,)).model, (8, 8, 1))
  assert (model.second_stage.widths, model.second_stage.steps) == ((24,), 7)
  assert samplers.two_stage_settings(types.SimpleNamespace(model=model)) == model.second_stage
  other = models.build_model(tiny_digits_config().model, (8, 8, 1))
  assert samplers.two_stage_settings(types.SimpleNamespace(model=other)) == ts.Settings()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = tmp_path_factory.mktemp("two_stage_vae")
  train.train_and_evaluate(_config(), str(path))
  return path


def test_the_two_stage_sampler_is_deterministic_and_cached(workdir, monkeypatch):
  model = aejax.load(workdir)
  samples = model.generate(6, seed=2, sampler="two_stage")
  assert samples.shape == (6, 8, 8, 1) and 0.0 <= samples.min() and samples.max() <= 1.0
  cached = list((workdir / "samplers").glob("two_stage_*.msgpack"))
  assert [p.name for p in cached] == [f"two_stage_step8_{SMALL.tag()}_seed0.msgpack"]
  assert SMALL.tag() == "w16x16_s300_lr0.003_b32_n128"

  def no_refit(*args, **kwargs):
    raise AssertionError("the cached fit should have been loaded")

  monkeypatch.setattr(ts, "fit", no_refit)
  again = aejax.load(workdir)
  np.testing.assert_array_equal(again.generate(6, seed=2, sampler="two_stage"), samples)
  assert not np.array_equal(again.generate(6, seed=3, sampler="two_stage"), samples)
  # The first stage alone still samples its N(0, I) prior.
  assert not np.array_equal(again.generate(6, seed=2), samples)


def test_a_model_without_a_continuous_code_refuses_the_ex_post_samplers(workdir):
  model = aejax.load(workdir)
  model.model = types.SimpleNamespace(ex_post_samplers=())  # As a VQ-VAE declares.
  for name in ("two_stage", "gmm"):
    with pytest.raises(errors.InputError, match=f"sampler '{name}': model 'two_stage_vae' has no"):
      model.generate(4, sampler=name)
  model.model = types.SimpleNamespace(ex_post_samplers=("gmm",), fid_samplers=("two_stage",))
  assert evaluate.fid_samplers(model) == ("gmm", "two_stage")
  model.model = types.SimpleNamespace(ex_post_samplers=())
  assert evaluate.fid_samplers(model) == ()


def test_evaluate_reports_the_fid_of_the_two_stage_samples(workdir):
  # Raw pixels as features: no classifier to train, and the FID still compares distributions.
  extractor = frechet.FeatureExtractor("pixels", lambda x: x.reshape(len(x), -1))
  results = evaluate.evaluate(
    workdir, nll_samples=2, limit=40, probe_train_size=0, fid_extractor=extractor
  )
  for key in ("fid", "fid_gmm", "fid_two_stage", "fid_reconstructions"):
    assert np.isfinite(results[key]) and results[key] >= 0.0, key
  # The same number from the sampler's own draws with the evaluation seed.
  handle, images = aejax.load(workdir), data.load("digits", "test", limit=40).images
  want = frechet.fid(extractor, handle.generate(40, seed=0, sampler="two_stage"), images)
  assert results["fid_two_stage"] == pytest.approx(want, rel=1e-6)
  text = (workdir / evaluate.RESULTS_MD).read_text()
  assert "samples of the second-stage VAE of the training codes" in text
  assert f"{results['fid_two_stage']:.2f}" in text
  assert samplers.EX_POST == ("gmm", "two_stage")
