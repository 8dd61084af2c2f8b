"""Tests for the k-sample training objectives (VAE and IWAE) and Burda et al.'s schedule."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import norm

from aejax import configs, errors, losses, models, objectives, optim, train
from tests.helpers import tiny_digits_config


def _model_params_batch(objective: str, k: int, seed: int = 0):
  c = tiny_digits_config(latent_dim=3)
  c.objective.name = objective
  c.objective.num_samples = k
  model = models.build_model(c.model, (8, 8, 1))
  x = (jax.random.uniform(jax.random.key(seed), (16, 8, 8, 1)) > 0.5).astype(jnp.float32)
  params = model.init(jax.random.key(1), x, jax.random.key(2))["params"]
  return c, model, params, {"input": x, "target": x}


def test_iwae_loss_matches_a_direct_computation():
  """-L_k from per_image_losses equals logsumexp of hand-computed log weights (scipy densities)."""
  k = 7
  c, model, params, batch = _model_params_batch("iwae", k)
  key = jax.random.key(5)
  terms = objectives.per_image_losses(model, params, batch, key, c, jnp.float32(1.0))
  post = model.apply({"params": params}, batch["input"], method=model.encode)
  mean, std = post["mean"], jnp.exp(0.5 * post["logvar"])
  eps = jax.random.normal(key, (k, *mean.shape))  # The documented draw: one (k, B, D) normal.
  log_w = []
  for i in range(k):
    z = mean + std * eps[i]
    logits = model.apply({"params": params}, z, method=model.decode)
    log_px = -losses.bernoulli_nll(logits, batch["target"]).sum(axis=(1, 2, 3))
    log_pz = norm.logpdf(z).sum(-1)
    log_qz = norm.logpdf(z, mean, std).sum(-1)
    log_w.append(log_px + log_pz - log_qz)
  expected = -(jax.nn.logsumexp(jnp.stack(log_w), axis=0) - math.log(k))
  np.testing.assert_allclose(terms["loss"], expected, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(terms["neg_iwae_bound"], expected, rtol=1e-5, atol=1e-4)
  assert terms["loss"].shape == (16,)


def test_bounds_tighten_with_k_and_iwae_is_tighter_than_the_elbo():
  """E[L_1] <= E[L_5] <= E[L_50] (Burda et al., Theorem 1), averaged over images and draws."""
  bounds = {}
  for k in (1, 5, 50):
    c, model, params, batch = _model_params_batch("iwae", k)
    draws = [
      objectives.per_image_losses(model, params, batch, jax.random.key(s), c, jnp.float32(1.0))
      for s in range(4)
    ]
    bounds[k] = -float(np.mean([d["loss"] for d in draws]))
    elbo = -float(np.mean([d["neg_elbo"] for d in draws]))  # Analytic-KL estimate of L_1.
    if k == 50:
      assert bounds[k] > elbo + 1.0, (bounds[k], elbo)
  assert bounds[1] < bounds[5] < bounds[50], bounds


def test_k_sample_elbo_averages_reconstructions_and_uses_the_analytic_kl():
  c, model, params, batch = _model_params_batch("elbo", 4)
  c.objective.beta = 2.0
  terms = objectives.per_image_losses(model, params, batch, jax.random.key(3), c, jnp.float32(2.0))
  np.testing.assert_allclose(terms["loss"], terms["recon"] + 2.0 * terms["kl"], rtol=1e-6)
  np.testing.assert_allclose(terms["neg_elbo"], terms["recon"] + terms["kl"], rtol=1e-6)
  post = model.apply({"params": params}, batch["input"], method=model.encode)
  kl = losses.gaussian_kl(post["mean"], post["logvar"]).sum(-1)
  np.testing.assert_allclose(terms["kl"], kl, rtol=1e-6)
  # Without a key the samples collapse onto the posterior mean: k decoder passes of one code.
  no_key = objectives.per_image_losses(model, params, batch, None, c, jnp.float32(1.0))
  logits = model.apply({"params": params}, post["mean"], method=model.decode)
  recon = losses.bernoulli_nll(logits, batch["target"]).sum(axis=(1, 2, 3))
  np.testing.assert_allclose(no_key["recon"], recon, rtol=1e-5)


@pytest.mark.parametrize("objective", ["iwae", "elbo"])
def test_multi_sample_objectives_train(tmp_path, objective):
  c = tiny_digits_config(total_steps=48)
  c.objective.name = objective
  c.objective.num_samples = 5
  c.log_every_steps = 8
  train.train_and_evaluate(c, str(tmp_path))
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train_losses = [r["train/loss"] for r in rows if "train/loss" in r]
  assert train_losses[-1] < train_losses[0] - 5.0, train_losses
  final = json.loads((tmp_path / "final_metrics.json").read_text())
  assert final["eval/neg_iwae_bound"] <= final["eval/neg_elbo"]
  assert np.isfinite(final["eval/loss"])


def test_objective_config_errors():
  c = tiny_digits_config()
  c.objective.name = "wake_sleep"
  with pytest.raises(errors.ConfigError, match="objective.name"):
    configs.validate(c, 8)
  c = tiny_digits_config()
  c.objective.name, c.objective.beta = "iwae", 4.0
  with pytest.raises(errors.ConfigError, match="beta"):
    configs.validate(c, 8)
  c = tiny_digits_config()
  c.objective.num_samples = 0
  with pytest.raises(errors.ConfigError, match="objective.num_samples"):
    configs.validate(c, 8)
  c = tiny_digits_config()
  c.model.name, c.objective.name, c.objective.num_samples = "dense_ae", "iwae", 5
  with pytest.raises(errors.ConfigError, match="needs a VAE"):
    configs.validate_objective(c, is_variational=False)


def test_burda_schedule_stages():
  c = configs.default_config().optimizer
  c.schedule, c.learning_rate = "burda", 1e-3
  steps_per_epoch = 10
  schedule = optim.make_schedule(c, total_steps=0, steps_per_epoch=steps_per_epoch)
  passes_before_stage = np.cumsum([0] + [3**i for i in range(8)])  # 0, 1, 4, 13, ..., 3280
  assert passes_before_stage[-1] == optim.BURDA_TOTAL_PASSES == 3280
  for i in range(8):
    first, last = passes_before_stage[i], passes_before_stage[i + 1]
    for step in (first * steps_per_epoch, last * steps_per_epoch - 1):
      assert float(schedule(step)) == pytest.approx(1e-3 * 10 ** (-i / 7), rel=1e-5), (i, step)
  assert float(schedule(10**6)) == pytest.approx(1e-3 * 10 ** (-1), rel=1e-5)
