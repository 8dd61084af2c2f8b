"""FactorVAE of the zoo (aejax/zoo/factor_vae.py).

permute_dims against its NumPy definition; every loss term against a NumPy
float64 re-run of the encoder, decoder and discriminator from the same
parameters and noise; the two players' gradients cut where the model says;
one training step moving each player by Adam on its own objective.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import log_softmax

from aejax import configs, errors, objectives, parallel, steps
from aejax.zoo import factor_vae

SHAPE = (4, 4, 1)
BATCH = 8
LATENT = 3
SLOPE = 0.2  # The discriminator's leaky ReLU slope (TensorFlow's default, dlib's).


def _config(**opts):
  c = configs.default_config()
  c.model.name = "factor_vae"
  c.model.latent_dim = LATENT
  c.model.hidden_widths = (6, 5)
  c.model.activation = "tanh"
  c.model.options.discriminator_widths = (7, 4)
  c.model.options.update(opts)
  return c


def _setup(config, seed=0):
  model = factor_vae.build(config.model, SHAPE)
  x = np.asarray(jax.random.uniform(jax.random.key(seed), (BATCH, *SHAPE)), np.float32)
  # Jitted: one compilation instead of one per operation of an eager init.
  init = jax.jit(lambda key, images: model.init(key, images, None, None)["params"])
  params = init(jax.random.key(seed + 1), jnp.asarray(x))
  return model, jax.tree.map(np.asarray, params), x


def _batch(x):
  return {"input": jnp.asarray(x), "target": jnp.asarray(x)}


def _losses(model, params, x, config, kl_weight, key):
  fn = jax.jit(lambda p, w: model.apply({"params": p}, _batch(x), key, config, w, method="losses"))
  return {k: np.asarray(v) for k, v in fn(params, jnp.float32(kl_weight)).items()}


def _mlp(layers, h, activation):
  """Dense_0..Dense_n with `activation` between, in float64."""
  h = h.reshape(h.shape[0], -1).astype(np.float64)
  for i in range(len(layers)):
    h = h @ layers[f"Dense_{i}"]["kernel"].astype(np.float64) + layers[f"Dense_{i}"]["bias"]
    if i < len(layers) - 1:
      h = activation(h)
  return h


def _leaky_relu(a):
  return np.where(a >= 0, a, SLOPE * a)


def _numpy_permute(key, z):
  """Column j of z reordered by jax.random.permutation(split(key, D)[j], B): the documented rule."""
  keys = jax.random.split(key, z.shape[1])
  out = np.empty_like(z)
  for j in range(z.shape[1]):
    perm = np.asarray(jax.random.permutation(keys[j], z.shape[0]))
    out[:, j] = z[perm, j]
  return out


def test_permute_dims_keeps_every_column_and_breaks_the_joint():
  b, d = 64, 5
  # Perfectly dependent columns: every row is (i, i, ..., i) + a column offset.
  z = np.arange(b, dtype=np.float32)[:, None] + 100.0 * np.arange(d, dtype=np.float32)[None, :]
  key = jax.random.key(3)
  got = np.asarray(factor_vae.permute_dims(key, jnp.asarray(z)))
  assert got.shape == (b, d)
  np.testing.assert_array_equal(got, _numpy_permute(key, z))
  # Each column keeps its multiset of values (its marginal) ...
  np.testing.assert_array_equal(np.sort(got, axis=0), np.sort(z, axis=0))
  # ... and each is permuted on its own: the rows no longer hold one index.
  index = got - 100.0 * np.arange(d)[None, :]
  assert np.mean(np.all(index == index[:, :1], axis=1)) < 0.1
  correlation = np.corrcoef(index.T)[np.triu_indices(d, 1)]
  assert np.max(np.abs(correlation)) < 0.5, correlation  # Was exactly 1 before.
  assert not np.array_equal(got, np.asarray(factor_vae.permute_dims(jax.random.key(4), z)))
  with pytest.raises(ValueError, match=r"z_BxD.*\(B, D\).*\(2, 3, 4\)"):
    factor_vae.permute_dims(key, jnp.zeros((2, 3, 4)))


def test_every_term_matches_numpy():
  gamma, kl_weight = 7.0, 0.6
  c = _config(gamma=gamma)
  model, params, x = _setup(c)
  assert model.extra_param_groups == ("discriminator",) and model.is_variational
  assert set(params) == {"encoder", "decoder", "discriminator"}
  key = jax.random.key(5)
  got = _losses(model, params, x, c, kl_weight, key)

  h = _mlp(params["encoder"], x, np.tanh)
  mean, logvar = h[:, :LATENT], h[:, LATENT:]
  sample_key, permutation_key = jax.random.split(key)
  eps = np.asarray(jax.random.normal(sample_key, (BATCH, LATENT)), np.float64)
  z = mean + np.exp(0.5 * logvar) * eps
  logits = _mlp(params["decoder"], z, np.tanh)
  target = x.reshape(BATCH, -1).astype(np.float64)
  recon = np.sum(np.logaddexp(0.0, logits) - target * logits, axis=1)
  kl = 0.5 * np.sum(np.exp(logvar) + mean**2 - 1.0 - logvar, axis=1)
  code_logits = _mlp(params["discriminator"], z, _leaky_relu)
  tc = code_logits[:, 0] - code_logits[:, 1]
  permuted_logits = _mlp(params["discriminator"], _numpy_permute(permutation_key, z), _leaky_relu)
  # Cross-entropy with class 0 for the codes and class 1 for the permuted codes.
  cross_entropy = -0.5 * (
    log_softmax(code_logits, axis=1)[:, 0] + log_softmax(permuted_logits, axis=1)[:, 1]
  )
  accuracy = 0.5 * (
    (code_logits[:, 0] > code_logits[:, 1]).astype(float)
    + (permuted_logits[:, 1] > permuted_logits[:, 0]).astype(float)
  )

  tol = dict(rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got["recon"], recon, **tol)
  np.testing.assert_allclose(got["kl"], kl, **tol)
  np.testing.assert_allclose(got["tc_estimate"], tc, **tol)
  np.testing.assert_allclose(got["neg_elbo"], recon + kl, **tol)
  np.testing.assert_allclose(got["loss"], recon + kl_weight * kl + gamma * tc, **tol)
  np.testing.assert_allclose(got["loss_discriminator"], cross_entropy, **tol)
  np.testing.assert_array_equal(got["discriminator_accuracy"], accuracy)
  assert all(v.shape == (BATCH,) for v in got.values())


def test_without_a_key_the_code_is_the_posterior_mean():
  c = _config()
  model, params, x = _setup(c)
  got = _losses(model, params, x, c, 1.0, None)
  h = _mlp(params["encoder"], x, np.tanh)
  logits = _mlp(params["decoder"], h[:, :LATENT], np.tanh)
  target = x.reshape(BATCH, -1).astype(np.float64)
  recon = np.sum(np.logaddexp(0.0, logits) - target * logits, axis=1)
  np.testing.assert_allclose(got["recon"], recon, rtol=1e-5, atol=1e-5)
  again = _losses(model, params, x, c, 1.0, None)
  np.testing.assert_array_equal(got["loss_discriminator"], again["loss_discriminator"])


def _grads(model, params, x, config, name):
  """The gradient of the batch mean of term `name`, then the largest |entry| per group."""
  key = jax.random.key(2)

  def mean_term(p):
    terms = objectives.per_image_losses(model, p, _batch(x), key, config, jnp.float32(1.0))
    return terms[name].mean()

  grads = jax.tree.map(np.asarray, jax.jit(jax.grad(mean_term))(params))
  largest = {
    group: max(float(np.max(np.abs(leaf))) for leaf in jax.tree.leaves(tree))
    for group, tree in grads.items()
  }
  return grads, largest


def test_each_players_objective_reaches_only_its_own_parameters():
  c = _config(gamma=5.0)
  model, params, x = _setup(c)
  grads, from_loss = _grads(model, params, x, c, "loss")
  _, from_discriminator = _grads(model, params, x, c, "loss_discriminator")
  # Exactly zero, not merely small: the stop-gradients cut the paths.
  assert from_loss["discriminator"] == 0.0, from_loss
  assert from_loss["encoder"] > 0.0 and from_loss["decoder"] > 0.0
  assert from_discriminator["encoder"] == 0.0 and from_discriminator["decoder"] == 0.0
  assert from_discriminator["discriminator"] > 0.0
  # The TC term does reach the encoder: with gamma the encoder's gradient changes.
  plain, _ = _grads(model.clone(gamma=0.0), params, x, c, "loss")
  difference = jax.tree.map(lambda a, b: np.max(np.abs(a - b)), grads["encoder"], plain["encoder"])
  assert max(jax.tree.leaves(difference)) > 1e-4 * from_loss["encoder"]


def test_one_step_moves_each_player_by_adam_on_its_own_objective():
  c = _config()
  c.optimizer.learning_rate = 1e-2
  model, _, x = _setup(c)
  tx = steps.make_optimizer(model, c, 4, 1)
  # One device: the step's arithmetic is under test here, not its sharding.
  mesh = parallel.make_mesh(jax.devices()[:1])
  state = steps.create_train_state(model, tx, SHAPE, jax.random.key(1), mesh)
  key = jax.random.key(9)
  step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, config=c))
  new_state, metrics = step(state, _batch(x), key)

  def mean_term(params, name):
    terms = objectives.per_image_losses(model, params, _batch(x), key, c, jnp.float32(1.0))
    return terms[name].mean()

  both = jax.jit(lambda p: [jax.grad(mean_term)(p, n) for n in ("loss", "loss_discriminator")])
  grad_loss, grad_disc = jax.tree.map(np.asarray, both(state.params))

  def adam_first_step(param, grad, lr):
    # Adam's bias-corrected first update: m_hat = g, v_hat = g^2 (whatever b1 and b2).
    g = grad.astype(np.float64)
    return np.asarray(param, np.float64) - lr * g / (np.abs(g) + c.optimizer.eps)

  old, new = jax.tree.map(np.asarray, state.params), jax.tree.map(np.asarray, new_state.params)
  rates = {"encoder": c.optimizer.learning_rate, "decoder": c.optimizer.learning_rate}
  rates["discriminator"] = factor_vae.DEFAULTS["discriminator_learning_rate"]  # Its own Adam.
  for part, grads in (("encoder", grad_loss), ("decoder", grad_loss), ("discriminator", grad_disc)):
    want = jax.tree.map(functools.partial(adam_first_step, lr=rates[part]), old[part], grads[part])
    jax.tree.map(lambda w, g: np.testing.assert_allclose(g, w, atol=1e-6), want, new[part])
  assert {"loss", "loss_discriminator", "tc_estimate", "discriminator_accuracy"} <= set(metrics)


@pytest.mark.parametrize(
  "opts, field",
  [
    ({"gamma": -1.0}, "gamma"),
    ({"discriminator_widths": (8, 0)}, "discriminator_widths"),
    ({"discriminator_widths": ()}, "discriminator_widths"),
    ({"network": "nonsense"}, "network"),
    ({"lambda_od": 1.0}, "lambda_od"),
  ],
)
def test_bad_option_names_its_field(opts, field):
  with pytest.raises(errors.ConfigError, match=rf"config\.model\.options\.{field}\b"):
    factor_vae.build(_config(**opts).model, SHAPE)


def test_other_objectives_and_labels_are_refused():
  c = _config()
  c.model.num_classes = 10
  with pytest.raises(errors.ConfigError, match=r"config\.model\.num_classes"):
    factor_vae.build(c.model, SHAPE)
  c = _config()
  model, params, x = _setup(c)
  c.objective.name = "iwae"
  with pytest.raises(errors.ConfigError, match=r"config\.objective.*'iwae'"):
    _losses(model, params, x, c, 1.0, jax.random.key(0))


def test_the_discriminator_has_dlibs_adam_and_the_vae_config_optimizer():
  config = _config()
  config.optimizer.name, config.optimizer.learning_rate = "adam", 1e-3
  config.optimizer.b1, config.optimizer.b2, config.optimizer.eps = 0.9, 0.999, 0.0
  model, params, _ = _setup(config)
  tx = steps.make_optimizer(model, config, total_steps=10, steps_per_epoch=10)
  opt_state = tx.init(params)
  # Two Adam steps with gradients +1 then -1: the first moves every parameter by -lr, the
  # second by lr (1 - b1) / (1 + b1) (the bias-corrected second moment is then exactly 1).
  moves = []
  for sign in (1.0, -1.0):
    grads = jax.tree.map(lambda p, s=sign: jnp.full_like(p, s), params)
    updates, opt_state = tx.update(grads, opt_state, params)
    moves.append(updates)
  for group, (lr, b1) in {"discriminator": (1e-4, 0.5), "encoder": (1e-3, 0.9)}.items():
    for leaf in jax.tree.leaves(moves[0][group]):
      np.testing.assert_allclose(leaf, -lr, rtol=1e-5)
    for leaf in jax.tree.leaves(moves[1][group]):
      np.testing.assert_allclose(leaf, lr * (1 - b1) / (1 + b1), rtol=1e-4)
  with pytest.raises(errors.ConfigError, match="discriminator_b1: must lie in"):
    factor_vae.build(_config(discriminator_b1=1.0).model, SHAPE)
