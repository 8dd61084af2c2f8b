"""Tests for MIWAE, PIWAE and CIWAE (aejax/zoo/iwae_variants.py) against float64 numpy."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.special import logsumexp
from scipy.stats import norm

from aejax import configs, errors, models, objectives, steps

IMAGE_SHAPE = (6, 6, 1)
LATENT_DIM = 3
BATCH = 5


def _config(name: str, **options):
  c = configs.default_config()
  c.model.name = name
  c.model.latent_dim = LATENT_DIM
  c.model.hidden_widths = (12, 10)
  c.model.activation = "tanh"
  for key, value in options.items():
    c.model.options[key] = value
  return c


def _setup(name: str, **options):
  """Config, model, parameters and a binary batch; the parameters depend only on the networks."""
  c = _config(name, **options)
  model = models.build_model(c.model, IMAGE_SHAPE)
  x = (jax.random.uniform(jax.random.key(7), (BATCH, *IMAGE_SHAPE)) > 0.5).astype(jnp.float32)
  params = model.init(jax.random.key(1), x, jax.random.key(2))["params"]
  return c, model, params, {"input": x, "target": x}


def _terms(c, model, params, batch, key):
  return objectives.per_image_losses(model, params, batch, key, c, jnp.float32(1.0))


def _np_mlp(layers: dict, h: np.ndarray) -> np.ndarray:
  """Dense_0 .. Dense_n with tanh between them, in float64."""
  names = sorted(layers, key=lambda n: int(n.split("_")[1]))
  for i, name in enumerate(names):
    h = h @ np.float64(layers[name]["kernel"]) + np.float64(layers[name]["bias"])
    if i < len(names) - 1:
      h = np.tanh(h)
  return h


def _np_log_weights(params, x, key, num_draws: int):
  """log w (N, B) and recon (N, B) in float64 from the same params and the documented draw."""
  x_BxP = np.float64(x).reshape(x.shape[0], -1)
  h = _np_mlp(params["encoder"], x_BxP)
  mean, logvar = h[:, :LATENT_DIM], h[:, LATENT_DIM:]
  std = np.exp(0.5 * logvar)
  eps = np.float64(jax.random.normal(key, (num_draws, x.shape[0], LATENT_DIM)))
  z = mean[None] + std[None] * eps
  logits = _np_mlp(params["decoder"], z)  # (N, B, P)
  log_px = np.sum(x_BxP[None] * logits - np.logaddexp(0.0, logits), axis=-1)
  log_pz = norm.logpdf(z).sum(-1)
  log_qz = norm.logpdf(z, mean[None], std[None]).sum(-1)
  kl = 0.5 * np.sum(np.exp(logvar) + mean**2 - 1.0 - logvar, axis=-1)
  return log_px + log_pz - log_qz, -log_px, kl


def _np_iwae(log_w):
  return logsumexp(log_w, axis=0) - math.log(log_w.shape[0])


def _np_miwae(log_w, m, k):
  groups = log_w.reshape(m, k, -1)
  return (logsumexp(groups, axis=1) - math.log(k)).mean(axis=0)


def _close(got, want):
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=2e-4)


def test_miwae_terms_match_numpy():
  m, k = 3, 4
  c, model, params, batch = _setup("miwae", num_groups=m, samples_per_group=k)
  key = jax.random.key(11)
  terms = _terms(c, model, params, batch, key)
  log_w, recon, kl = _np_log_weights(params, batch["input"], key, m * k)
  miwae = _np_miwae(log_w, m, k)
  _close(terms["loss"], -miwae)
  _close(terms["neg_miwae_bound"], -miwae)
  _close(terms["neg_iwae_bound"], -_np_iwae(log_w))
  _close(terms["recon"], recon.mean(0))
  _close(terms["kl"], kl)
  _close(terms["neg_elbo"], recon.mean(0) + kl)
  # The grouping matters: MIWAE(3, 4) lies strictly between the MC ELBO and IWAE(12).
  assert np.all(-miwae < -log_w.mean(0)) and np.all(-_np_iwae(log_w) < -miwae)
  assert all(v.shape == (BATCH,) for v in terms.values())
  assert {"bce_per_pixel", "mse_per_pixel", "psnr"} <= set(terms)


def test_piwae_terms_match_numpy():
  m, k = 2, 3
  c, model, params, batch = _setup("piwae", num_groups=m, samples_per_group=k)
  key = jax.random.key(12)
  terms = _terms(c, model, params, batch, key)
  log_w, _, _ = _np_log_weights(params, batch["input"], key, m * k)
  _close(terms["loss"], -_np_iwae(log_w))
  _close(terms["loss_encoder"], -_np_miwae(log_w, m, k))
  _close(terms["neg_iwae_bound"], -_np_iwae(log_w))


def test_ciwae_terms_match_numpy():
  k, beta = 5, 0.3
  c, model, params, batch = _setup("ciwae", num_samples=k, ciwae_beta=beta)
  key = jax.random.key(13)
  terms = _terms(c, model, params, batch, key)
  log_w, recon, kl = _np_log_weights(params, batch["input"], key, k)
  _close(terms["loss"], -(beta * log_w.mean(0) + (1 - beta) * _np_iwae(log_w)))
  _close(terms["neg_elbo_mc"], -log_w.mean(0))
  _close(terms["neg_iwae_bound"], -_np_iwae(log_w))
  _close(terms["neg_elbo"], recon.mean(0) + kl)


def test_special_cases_reduce_to_iwae_and_the_elbo():
  """MIWAE(1, K) = IWAE_K (also aejax's own "iwae" objective), MIWAE(M, 1) = the MC ELBO, and
  CIWAE(beta=1) = ELBO_K, CIWAE(beta=0) = IWAE_K, all on the same draw."""
  key, k = jax.random.key(14), 6
  c, model, params, batch = _setup("miwae", num_groups=1, samples_per_group=k)
  log_w, _, _ = _np_log_weights(params, batch["input"], key, k)
  miwae_1k = _terms(c, model, params, batch, key)["loss"]
  _close(miwae_1k, -_np_iwae(log_w))
  vae_c = _config("dense_vae")
  vae_c.objective.name, vae_c.objective.num_samples = "iwae", k
  vae = models.build_model(vae_c.model, IMAGE_SHAPE)
  np.testing.assert_allclose(_terms(vae_c, vae, params, batch, key)["loss"], miwae_1k, rtol=1e-6)

  c, model, params, batch = _setup("miwae", num_groups=k, samples_per_group=1)
  miwae_m1 = _terms(c, model, params, batch, key)["loss"]
  _close(miwae_m1, -log_w.mean(0))

  for beta, want in ((1.0, -log_w.mean(0)), (0.0, -_np_iwae(log_w))):
    c, model, params, batch = _setup("ciwae", num_samples=k, ciwae_beta=beta)
    _close(_terms(c, model, params, batch, key)["loss"], want)
  assert np.all(np.asarray(miwae_1k) < np.asarray(miwae_m1))  # IWAE_K is tighter.


def test_without_a_key_every_sample_is_the_posterior_mean():
  c, model, params, batch = _setup("miwae", num_groups=2, samples_per_group=3)
  terms = _terms(c, model, params, batch, None)
  post = model.apply({"params": params}, batch["input"], method=model.encode)
  logits = np.float64(model.apply({"params": params}, post["mean"], method=model.decode))
  x = np.float64(batch["input"])
  recon = np.sum(np.logaddexp(0.0, logits) - x * logits, axis=(1, 2, 3))
  _close(terms["recon"], recon)
  # Equal weights: every bound is the one log weight.
  _close(terms["neg_iwae_bound"], np.asarray(terms["neg_miwae_bound"]))


def test_piwae_step_moves_each_group_by_adam_on_its_own_loss():
  """One aejax train step = Adam on grad(loss_encoder) for params["encoder"] and Adam on
  grad(loss) for the decoder, each with its own state."""
  c, model, params, batch = _setup("piwae", num_groups=2, samples_per_group=2)
  c.optimizer.learning_rate = 0.1
  # A large eps makes Adam's first step scale with |grad| rather than be lr * sign(grad), so
  # the two gradients give visibly different updates.
  c.optimizer.eps = 1.0
  assert steps.param_groups(model) == ("encoder",) and set(params) == {"encoder", "decoder"}
  tx = steps.make_optimizer(model, c, total_steps=10, steps_per_epoch=10)
  state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  key = jax.random.key(15)
  step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, config=c))
  new_state, metrics = step(state, batch, key)

  def grad_of(name):
    def loss(p):
      return objectives.per_image_losses(model, p, batch, key, c, jnp.float32(1.0))[name].mean()

    return jax.jit(jax.grad(loss))(params)

  @jax.jit
  def adam_step(tree, grads):
    adam = optax.adam(0.1, b1=c.optimizer.b1, b2=c.optimizer.b2, eps=c.optimizer.eps)
    updates, _ = adam.update(grads, adam.init(tree), tree)
    return optax.apply_updates(tree, updates)

  g_loss, g_encoder = grad_of("loss"), grad_of("loss_encoder")
  want = {
    "encoder": adam_step(params["encoder"], g_encoder["encoder"]),
    "decoder": adam_step(params["decoder"], g_loss["decoder"]),
  }
  jax.tree.map(
    lambda got, w: np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6), new_state.params, want
  )
  # The other pairing (encoder on loss, decoder on loss_encoder) is measurably different.
  wrong_encoder = adam_step(params["encoder"], g_loss["encoder"])
  diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), new_state.params["encoder"],
                      wrong_encoder)  # fmt: skip
  assert max(jax.tree.leaves(diff)) > 1e-3, diff
  wrong_decoder = adam_step(params["decoder"], g_encoder["decoder"])
  diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), new_state.params["decoder"],
                      wrong_decoder)  # fmt: skip
  assert max(jax.tree.leaves(diff)) > 1e-3, diff
  assert float(metrics["loss_encoder"]) > float(metrics["loss"])  # -MIWAE(2,2) > -IWAE(4).


@pytest.mark.parametrize(
  "name, options, field",
  [
    ("miwae", {"num_groups": 0}, "num_groups"),
    ("piwae", {"samples_per_group": -1}, "samples_per_group"),
    ("miwae", {"num_groups": 2.5}, "num_groups"),
    ("miwae", {"ciwae_beta": 0.5}, "ciwae_beta"),
    ("ciwae", {"num_samples": 0}, "num_samples"),
    ("ciwae", {"ciwae_beta": 1.5}, "ciwae_beta"),
    ("ciwae", {"ciwae_beta": -0.1}, "ciwae_beta"),
    ("ciwae", {"num_groups": 8}, "num_groups"),
    ("piwae", {"network": "mlp"}, "network"),
  ],
)
def test_bad_options_name_the_field(name, options, field):
  c = _config(name, **options)
  with pytest.raises(errors.ConfigError, match=rf"config\.model\.options\.{field}\b"):
    models.build_model(c.model, IMAGE_SHAPE)


@pytest.mark.parametrize("name", ["miwae", "piwae", "ciwae"])
@pytest.mark.parametrize(
  "field, value",
  [("beta", 0.5), ("kl_warmup_steps", 100), ("num_samples", 8), ("name", "iwae")],
)
def test_objective_settings_without_meaning_are_rejected(name, field, value):
  c, model, params, batch = _setup(name, **({"num_samples": 2} if name == "ciwae" else {}))
  c.objective[field] = value
  with pytest.raises(errors.ConfigError, match=rf"config\.objective\.{field}\b"):
    _terms(c, model, params, batch, jax.random.key(0))


def test_conditional_config_is_rejected():
  c = _config("miwae")
  c.model.num_classes = 10
  with pytest.raises(errors.ConfigError, match=r"config\.model\.num_classes"):
    models.build_model(c.model, IMAGE_SHAPE)


def test_conv_network_builds_and_is_finite():
  c = _config("ciwae", network="conv", num_samples=3)
  c.model.conv_channels = (4,)
  model = models.build_model(c.model, IMAGE_SHAPE)
  x = jnp.ones((BATCH, *IMAGE_SHAPE)) * 0.5
  # Jitted: op by op, the convolution's many small ops cost more than compiling them.
  params = jax.jit(model.init)(jax.random.key(1), x, jax.random.key(2))["params"]
  terms = jax.jit(functools.partial(_terms, c, model))(
    params, {"input": x, "target": x}, jax.random.key(3)
  )
  assert all(np.all(np.isfinite(v)) for v in terms.values())
  assert model.is_variational and model.num_classes == 0
