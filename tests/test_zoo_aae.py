"""The adversarial autoencoder of the zoo (aejax/zoo/aae.py).

Its loss terms are checked against NumPy float64 re-runs of the encoder,
decoder and critic from the same parameters and prior draws; one training step
against Adam's first update computed by hand from the gradient of each
player's own objective; the mixture prior against its specification.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aejax import configs, errors, models, objectives, parallel, steps
from aejax.zoo import aae

SHAPE = (4, 4, 1)
BATCH = 8
LATENT = 3


def _config(**opts):
  c = configs.default_config()
  c.model.name = "aae"
  c.model.latent_dim = LATENT
  c.model.hidden_widths = (6, 5)
  c.model.activation = "tanh"
  c.model.options.critic_widths = (7, 4)
  c.model.options.update(opts)
  return c


def _setup(config, seed=0):
  model = models.build_model(config.model, SHAPE)
  x = np.asarray(jax.random.uniform(jax.random.key(seed), (BATCH, *SHAPE)), np.float32)
  params = model.init(jax.random.key(seed + 1), jnp.asarray(x), None, None)["params"]
  return model, jax.tree.map(np.asarray, params), x


def _losses(model, params, x, config, kl_weight, key):
  batch = {"input": jnp.asarray(x), "target": jnp.asarray(x)}
  fn = jax.jit(lambda p, w: model.apply({"params": p}, batch, key, config, w, method="losses"))
  return {k: np.asarray(v) for k, v in fn(params, jnp.float32(kl_weight)).items()}


def _mlp(layers, h, activation):
  """Dense_0..Dense_n with `activation` between, in float64."""
  h = h.reshape(h.shape[0], -1).astype(np.float64)
  for i in range(len(layers)):
    h = h @ layers[f"Dense_{i}"]["kernel"].astype(np.float64) + layers[f"Dense_{i}"]["bias"]
    if i < len(layers) - 1:
      h = activation(h)
  return h


def _critic(params, z):
  return _mlp(params["critic"], z, lambda a: np.maximum(a, 0.0))[:, 0]


def _softplus(a):
  return np.logaddexp(0.0, a)


def test_generator_and_critic_terms_match_numpy():
  c = _config()
  model, params, x = _setup(c)
  assert model.extra_param_groups == ("critic",) and not model.is_variational
  assert set(params) == {"encoder", "decoder", "critic"}
  key, kl_weight = jax.random.key(5), 2.5
  got = _losses(model, params, x, c, kl_weight, key)

  z = _mlp(params["encoder"], x, np.tanh)
  logits = _mlp(params["decoder"], z, np.tanh)
  target = x.reshape(BATCH, -1).astype(np.float64)
  recon = np.sum(np.logaddexp(0.0, logits) - target * logits, axis=1)
  prior = np.asarray(jax.random.normal(key, (BATCH, LATENT)), np.float64)  # The step's key.
  code_logit, prior_logit = _critic(params, z), _critic(params, prior)
  adversarial = _softplus(-code_logit)  # -log sigmoid(D(z)): the non-saturating term.
  np.testing.assert_allclose(got["recon"], recon, rtol=1e-5)
  np.testing.assert_allclose(got["adversarial"], adversarial, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got["loss"], recon + kl_weight * adversarial, rtol=1e-5)
  want_critic = _softplus(-prior_logit) + _softplus(code_logit)
  np.testing.assert_allclose(got["loss_critic"], want_critic, rtol=1e-5, atol=1e-6)
  accuracy = 0.5 * ((prior_logit > 0).astype(float) + (code_logit < 0).astype(float))
  np.testing.assert_array_equal(got["critic_accuracy"], accuracy)


def test_one_step_moves_each_player_by_adam_on_its_own_objective():
  c = _config()
  c.optimizer.learning_rate = 1e-2
  model, _, x = _setup(c)
  tx = steps.make_optimizer(model, c, 4, 1)
  state = steps.create_train_state(model, tx, SHAPE, jax.random.key(1), parallel.make_mesh())
  batch, key = {"input": jnp.asarray(x), "target": jnp.asarray(x)}, jax.random.key(9)
  new_state, metrics = steps.train_step(state, batch, key, model=model, tx=tx, config=c)

  def mean_term(params, name):
    terms = objectives.per_image_losses(model, params, batch, key, c, jnp.float32(1.0))
    return terms[name].mean()

  grad_loss = jax.tree.map(np.asarray, jax.grad(mean_term)(state.params, "loss"))
  grad_critic = jax.tree.map(np.asarray, jax.grad(mean_term)(state.params, "loss_critic"))

  def adam_first_step(param, grad):
    # Adam's bias-corrected first update: m_hat = g, v_hat = g^2.
    g = grad.astype(np.float64)
    return np.asarray(param, np.float64) - c.optimizer.learning_rate * g / (
      np.abs(g) + c.optimizer.eps
    )

  old, new = jax.tree.map(np.asarray, state.params), jax.tree.map(np.asarray, new_state.params)
  for part, grads in (("encoder", grad_loss), ("decoder", grad_loss), ("critic", grad_critic)):
    want = jax.tree.map(adam_first_step, old[part], grads[part])
    jax.tree.map(lambda w, g: np.testing.assert_allclose(g, w, atol=1e-6), want, new[part])
  # The critic's step from `loss` (the encoder's wish) would differ: the test can tell them apart.
  wrong = jax.tree.map(adam_first_step, old["critic"], grad_loss["critic"])
  assert not all(
    np.allclose(w, g, atol=1e-6)
    for w, g in zip(jax.tree.leaves(wrong), jax.tree.leaves(new["critic"]), strict=True)
  )
  assert {"loss", "loss_critic", "adversarial", "critic_accuracy"} <= set(metrics)


def test_mixture_prior_has_the_specified_means_stds_and_weights():
  k, radius, std, dim, n = 10, 4.0, 0.5, 4, 20_000
  means = np.asarray(aae.mixture_means(k, radius, dim))
  angles = 2 * math.pi * np.arange(k) / k
  want_means = np.zeros((k, dim))
  want_means[:, 0], want_means[:, 1] = radius * np.cos(angles), radius * np.sin(angles)
  np.testing.assert_allclose(means, want_means, atol=1e-5)
  stds = np.asarray(aae.mixture_stds(std, dim))
  np.testing.assert_allclose(stds, [std, std, 1.0, 1.0])

  z, component = aae.sample_mixture(jax.random.key(0), n, jnp.asarray(means), jnp.asarray(stds))
  z, component = np.asarray(z, np.float64), np.asarray(component)
  counts = np.bincount(component, minlength=k)
  # Equal weights: each count is Binomial(n, 1/k), standard deviation 30.
  assert np.all(np.abs(counts - n / k) < 5 * math.sqrt(n * (1 / k) * (1 - 1 / k))), counts
  for j in range(k):
    members = z[component == j]
    np.testing.assert_allclose(members.mean(axis=0), want_means[j], atol=0.1)
    np.testing.assert_allclose(members.std(axis=0), [std, std, 1.0, 1.0], rtol=0.08)
  # Neighbouring means are 2 r sin(pi / k) = 2.47 apart, 4.9 stds: the nearest mean is the
  # drawn component but for about 2 * Phi(-2.47) = 1.4% of the draws.
  nearest = np.argmin(((z[:, None, :2] - want_means[None, :, :2]) ** 2).sum(-1), axis=1)
  assert 0.98 < np.mean(nearest == component) < 0.995


def test_sample_hook_decodes_draws_of_the_chosen_prior():
  key = jax.random.key(4)
  for prior in ("normal", "mixture"):
    c = _config(prior=prior, mixture_radius=3.0, mixture_std=0.2)
    model, params, _ = _setup(c)
    got = np.asarray(model.apply({"params": params}, key, 6, None, method="sample"))
    if prior == "normal":
      z = jax.random.normal(key, (6, LATENT))
    else:
      means, stds = aae.mixture_means(10, 3.0, LATENT), aae.mixture_stds(0.2, LATENT)
      z = aae.sample_mixture(key, 6, means, stds)[0]
    want = _mlp(params["decoder"], np.asarray(z, np.float64), np.tanh)
    np.testing.assert_allclose(got.reshape(6, -1), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  "opts, field",
  [
    ({"prior": "uniform"}, "prior"),
    ({"critic_widths": (8, 0)}, "critic_widths"),
    ({"mixture_std": 0.0}, "mixture_std"),
    ({"mixture_components": 0}, "mixture_components"),
    ({"mixture_radius": -1.0}, "mixture_radius"),
    ({"kernel": "imq"}, "kernel"),
  ],
)
def test_bad_option_names_its_field(opts, field):
  with pytest.raises(errors.ConfigError, match=rf"config\.model\.options\.{field}\b"):
    models.build_model(_config(**opts).model, SHAPE)


def test_mixture_prior_needs_two_latent_dimensions():
  c = _config(prior="mixture")
  c.model.latent_dim = 1
  with pytest.raises(errors.ConfigError, match=r"config\.model\.options\.prior.*latent_dim"):
    models.build_model(c.model, SHAPE)
