"""Populations over latent size, objective and k (aejax/padding.py): each member is its own run.

Equal to the separate runs up to float rounding, not bitwise: a padded
matmul sums over more (zero) terms and XLA may block the sums differently,
and the k-sample mean becomes a masked sum over the padded K. Measured on a
CPU: 16 steps leave the parameters within 1.4e-7 of the separate runs';
the tolerance below (atol 1e-6, rtol 1e-5) is that with room, and the final
metrics agree to rel 1e-4.
"""

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_digits_config

import aejax
from aejax import errors, figures, metrics, models, padding, steps, train, vae

STEPS = 8
# (seed, latent size, objective, k): every shape the padding handles, and a one-sample ELBO.
MEMBERS = ((0, 2, "elbo", 1), (1, 5, "elbo", 1), (2, 3, "iwae", 4), (3, 5, "elbo", 3))


def _configs(members=MEMBERS, model="dense_vae"):
  out = []
  for seed, latent_dim, objective, k in members:
    c = tiny_digits_config(total_steps=STEPS)
    c.model.name = model
    c.seed, c.model.latent_dim = seed, latent_dim
    c.objective.name, c.objective.num_samples = objective, k
    out.append(c)
  return out


def _assert_close(a, b):
  a, b = jax.device_get(a), jax.device_get(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(
    lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6),
    a,
    b,
  )


def _no_pictures(monkeypatch):
  # PNGs cost seconds per run and member; tests/test_sweep.py sees members' figures.
  monkeypatch.setattr(figures, "save_training_curves", lambda *args, **kwargs: None)
  monkeypatch.setattr(train, "write_figures", lambda *args, **kwargs: {})


def _metric_names(run_dir) -> list[set[str]]:
  return [set(record) for record in metrics.read_metrics(run_dir)]


def test_members_of_different_latent_sizes_and_objectives_equal_their_separate_runs_and_resume(
  tmp_path, monkeypatch
):
  _no_pictures(monkeypatch)
  separate = [tmp_path / f"s{i}" for i in range(len(MEMBERS))]
  for c, d in zip(_configs(), separate, strict=True):
    train.train_and_evaluate(c, str(d))
  dirs = [tmp_path / f"m{i}" for i in range(len(MEMBERS))]
  train.train_population(_configs(), dirs)
  for i, (ours, theirs) in enumerate(zip(dirs, separate, strict=True)):
    # Each member's checkpoint holds its own, unpadded run: aejax.load reads it as a plain run.
    member, alone = aejax.load(ours), aejax.load(theirs)
    assert member.step == alone.step == STEPS and member.latent_dim == MEMBERS[i][1]
    _assert_close(member.params, alone.params)
    assert (ours / "config.json").read_text() == (theirs / "config.json").read_text()
    # The metrics its separate run reports, no more (a one-sample ELBO has no neg_iwae_bound).
    assert _metric_names(ours) == _metric_names(theirs)
    final = json.loads((ours / "final_metrics.json").read_text())
    expected = json.loads((theirs / "final_metrics.json").read_text())
    assert final.keys() == expected.keys()
    for key in expected:
      assert final[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-5), (i, key)

  # Interrupted by SIGTERM after the first chunk of steps, then resumed from the unpadded
  # checkpoints: the separate runs' parameters again.
  real = steps.make_multi_step

  def make_chunk_that_signals(*args, **kwargs):
    chunk_fn = real(*args, **kwargs)

    def wrapped(*chunk_args):
      os.kill(os.getpid(), signal.SIGTERM)
      return chunk_fn(*chunk_args)

    return wrapped

  resumed = [tmp_path / f"r{i}" for i in range(len(MEMBERS))]
  monkeypatch.setattr(steps, "make_multi_step", make_chunk_that_signals)
  with pytest.raises(errors.TrainingInterrupted, match="after step 4"):
    train.train_population(_configs(), resumed)
  monkeypatch.setattr(steps, "make_multi_step", real)
  assert aejax.load(resumed[1]).step == 4 and aejax.load(resumed[1]).latent_dim == 5
  train.train_population(_configs(), resumed)
  for ours, theirs in zip(resumed, separate, strict=True):
    _assert_close(aejax.load(ours).params, aejax.load(theirs).params)
    assert [r["step"] for r in metrics.read_metrics(ours)] == [
      r["step"] for r in metrics.read_metrics(theirs)
    ]


def test_autoencoders_of_different_latent_sizes_equal_their_separate_runs(tmp_path, monkeypatch):
  _no_pictures(monkeypatch)
  members = ((0, 2, "elbo", 1), (0, 6, "elbo", 1))
  dirs = [tmp_path / "m2", tmp_path / "m6"]
  train.train_population(_configs(members, "dense_ae"), dirs)
  for c, d in zip(_configs(members, "dense_ae"), dirs, strict=True):
    alone = tmp_path / f"s{c.model.latent_dim}"
    train.train_and_evaluate(c, str(alone))
    _assert_close(aejax.load(d).params, aejax.load(alone).params)
    final = json.loads((d / "final_metrics.json").read_text())
    expected = json.loads((alone / "final_metrics.json").read_text())
    assert final["eval/loss"] == pytest.approx(expected["eval/loss"], rel=1e-4)


@pytest.mark.parametrize(
  "name, model_fields",
  [
    ("dense_vae", {"num_classes": 10}),  # The label's one-hot follows z in the decoder's input.
    ("conv_vae", {"conv_channels": (4, 8), "conv_impl": "xla"}),
    ("conv_ae", {"conv_channels": (4, 8), "conv_impl": "xla"}),
  ],
)
def test_padded_parameters_compute_what_the_members_own_compute(name, model_fields):
  small, big = tiny_digits_config(), tiny_digits_config()
  for c, latent_dim in ((small, 3), (big, 7)):
    c.model.name, c.model.latent_dim = name, latent_dim
    for field, value in model_fields.items():
      c.model[field] = value
  shape = (8, 8, 1)
  small_model, big_model = (models.build_model(c.model, shape) for c in (small, big))
  x = jax.random.uniform(jax.random.key(1), (4, *shape))
  label = jnp.arange(4) if small_model.num_classes else None
  params = small_model.init(jax.random.key(0), x, None, label)["params"]
  big_like = jax.eval_shape(lambda: big_model.init(jax.random.key(0), x, None, label)["params"])
  padded = padding.pad(params, big_like, 3, 7)
  assert jax.tree.map(lambda p: p.shape, padded) == jax.tree.map(lambda p: p.shape, big_like)
  # unpad undoes pad exactly.
  jax.tree.map(np.testing.assert_array_equal, padding.unpad(padded, params, 3, 7), params)
  ours = big_model.apply({"params": padded}, x, None, label)
  theirs = small_model.apply({"params": params}, x, None, label)
  np.testing.assert_allclose(ours["logits"], theirs["logits"], rtol=1e-5, atol=1e-5)
  if small_model.is_variational:
    np.testing.assert_allclose(ours["mean"][:, :3], theirs["mean"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ours["mean"][:, 3:], 0.0)
    np.testing.assert_array_equal(ours["logvar"][:, 3:], 0.0)
  # The gradient mask is 1 exactly where the member has parameters.
  mask = padding.gradient_mask(params, big_like, 3, 7)
  assert sum(float(m.sum()) for m in jax.tree.leaves(mask)) == steps.count_params(params)


def test_positions_of_latent_blocks_and_the_entries_after_them():
  # An axis of size 2 * d + 1 (say mean, log-variance, then one more): d = 2 -> D = 4.
  (axis,) = padding._latent_axes((5,), (9,), 2, 4, "leaf")
  assert (axis.blocks, axis.rest) == (2, 1)
  np.testing.assert_array_equal(axis.positions(2, 4), [0, 1, 4, 5, 8])
  with pytest.raises(errors.ConfigError, match=r"leaf: axis 0 has size 5 at latent size 2 and 8"):
    padding._latent_axes((5,), (8,), 2, 4, "leaf")


def test_a_members_noise_is_its_separate_runs_draw():
  key = jax.random.key(3)
  shapes = ((1, 2), (4, 3), (2, 5))
  for index, (k, d) in enumerate(shapes):
    member = padding.Member(shapes=shapes, index=jnp.int32(index), iwae=jnp.bool_(False))
    eps = vae._member_noise(key, member, 4, 6, 5, jnp.float32)
    np.testing.assert_array_equal(eps[:k, :, :d], jax.random.normal(key, (k, 6, d)))
    np.testing.assert_array_equal(eps[k:], 0.0)
    np.testing.assert_array_equal(eps[:, :, d:], 0.0)
  # The one-sample ELBO's draw (losses.sample_gaussian) is the (1, B, d) draw's one sample.
  np.testing.assert_array_equal(
    jax.random.normal(key, (1, 6, 2))[0], jax.random.normal(key, (6, 2))
  )


def test_members_may_differ_in_shape_only_for_models_that_declare_padding(tmp_path):
  configs = _configs(((0, 2, "elbo", 1), (1, 4, "elbo", 1)), "beta_tcvae")
  with pytest.raises(errors.ConfigError, match=r"config\.model\.latent_dim: .*'beta_tcvae'"):
    train.train_population(configs, [tmp_path / "a", tmp_path / "b"])
  assert not (tmp_path / "a").exists()
  configs = _configs(((0, 2, "elbo", 1), (1, 2, "elbo", 1)), "dense_ae")
  configs[1].objective.name = "iwae"
  with pytest.raises(errors.ConfigError, match=r"objective\.name"):
    train.train_population(configs, [tmp_path / "a", tmp_path / "b"])
