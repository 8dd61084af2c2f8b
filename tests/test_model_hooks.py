"""The contract's optional members: the `sample` and `log_weight_terms` hooks, the samplers of
`generate` (the prior, the ex-post Gaussian mixture) and a model's own options."""

import os

import ml_collections
import numpy as np
import pytest
from helpers import tiny_digits_config

import aejax
from aejax import configs, data, errors, evaluate, train
from aejax.zoo import options

PLUGINS = os.path.join(os.path.dirname(__file__), "plugins")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
  """The same tiny VAE trained twice: as aejax's dense_vae and as the hooked plug-in."""
  import sys

  sys.path.insert(0, PLUGINS)
  runs = {}
  for name in ("dense_vae", "hooked_vae:build"):
    c = tiny_digits_config(total_steps=8)
    c.model.name = name
    workdir = tmp_path_factory.mktemp(name.partition(":")[0])
    train.train_and_evaluate(c, str(workdir))
    runs[name] = workdir
  yield runs
  sys.path.remove(PLUGINS)


def test_the_hooks_give_the_default_paths_numbers(two_runs):
  default = aejax.load(two_runs["dense_vae"])
  hooked = aejax.load(two_runs["hooked_vae:build"])
  # Same seed, same architecture: the same parameters and so the same model.
  np.testing.assert_array_equal(
    default.params["decoder"]["Dense_0"]["kernel"], hooked.params["decoder"]["Dense_0"]["kernel"]
  )
  np.testing.assert_allclose(hooked.generate(5, seed=3), default.generate(5, seed=3), atol=1e-6)
  assert not np.allclose(hooked.generate(5, seed=3), hooked.generate(5, seed=4))

  kwargs = dict(nll_samples=7, chunk_size=3, fid=False, probe_train_size=0)
  want = evaluate.evaluate(two_runs["dense_vae"], **kwargs)
  got = evaluate.evaluate(two_runs["hooked_vae:build"], **kwargs)
  # The bounds come from the hook's weights over the same sample stream.
  for k in ("1", "5", "7"):
    assert got["iwae_bound_k"][k] == pytest.approx(want["iwae_bound_k"][k], rel=1e-5)
  assert got["nll"] == pytest.approx(want["nll"], rel=1e-5)
  assert got["recon"] == pytest.approx(want["recon"], rel=1e-5)
  # The hook's KL is a one-sample Monte Carlo estimate of the analytic one, and says so.
  assert got["kl"] == pytest.approx(want["kl"], rel=0.5)
  assert got["kl"] != want["kl"]
  assert any("one-sample Monte Carlo" in note for note in got["notes"])
  assert (got["kl_estimate"], want["kl_estimate"]) == ("monte_carlo", "analytic")
  table = evaluate.markdown_table(got)
  assert "KL(q(z\\|x) \\|\\| p(z)), one-sample" in table and "N(0, I))" not in table
  assert "KL(q(z\\|x) \\|\\| N(0, I)), analytic" in evaluate.markdown_table(want)


def test_the_ex_post_mixture_samples_any_model_and_is_cached(tmp_path):
  c = tiny_digits_config(total_steps=8)
  c.model.name = "dense_ae"
  train.train_and_evaluate(c, str(tmp_path))
  model = aejax.load(tmp_path)
  with pytest.raises(errors.InputError, match="no prior to sample from; use sampler='gmm'"):
    model.generate(4)
  with pytest.raises(errors.InputError, match="unknown sampler 'flow'; valid: prior, gmm"):
    model.generate(4, sampler="flow")
  samples = model.generate(6, seed=2, sampler="gmm")
  assert samples.shape == (6, 8, 8, 1) and 0.0 <= samples.min() and samples.max() <= 1.0
  cached = list((tmp_path / "samplers").glob("gmm_step8_*.npz"))
  assert len(cached) == 1
  # The second draw reads the fitted mixture back: the same images for the same seed.
  np.testing.assert_array_equal(aejax.load(tmp_path).generate(6, seed=2, sampler="gmm"), samples)
  assert not np.array_equal(model.generate(6, seed=3, sampler="gmm"), samples)
  # The mixture's samples lie where the codes are, not at an arbitrary N(0, I).
  codes = model.encode(model.generate(500, seed=0, sampler="gmm"))
  train_codes = model.encode(np.asarray(data.load("digits", "train").images[:500]))
  assert np.all(np.abs(codes.mean(0) - train_codes.mean(0)) <= 0.5 * train_codes.std(0))


def test_a_conditional_model_has_no_ex_post_mixture(tmp_path):
  c = tiny_digits_config(total_steps=4, num_classes=10)
  train.train_and_evaluate(c, str(tmp_path))
  with pytest.raises(errors.InputError, match="conditional model's codes depend on the label"):
    aejax.load(tmp_path).generate(4, labels=np.zeros(4, np.int32), sampler="gmm")


def test_model_options_are_checked_against_the_models_defaults():
  model_config = ml_collections.ConfigDict({"name": "my_model", "options": {"width": 3}})
  defaults = {"width": 8, "weight": 0.5, "prior": "normal", "widths": (4, 4), "flag": False}
  got = options.read_options(model_config, defaults)
  assert got == {**defaults, "width": 3}
  model_config.options = {"weight": 2, "widths": [1, 2]}  # An int for a float; a list for a tuple.
  got = options.read_options(model_config, defaults)
  assert got["weight"] == 2.0 and isinstance(got["weight"], float) and got["widths"] == (1, 2)
  for bad, message in (
    ({"wieght": 1.0}, r"config.model.options.wieght: unknown option for model 'my_model'; valid:"),
    ({"width": 2.5}, r"config.model.options.width: expected int like 8 .* got 2.5"),
    ({"flag": 1}, r"config.model.options.flag: expected bool"),
    ({"weight": True}, r"config.model.options.weight: expected float"),
  ):
    model_config.options = bad
    with pytest.raises(errors.ConfigError, match=message):
      options.read_options(model_config, defaults)
  # aejax's own config checks leave the group to the model.
  c = configs.default_config()
  c.model.options.anything = 1
  configs.validate(c, num_devices=1)
