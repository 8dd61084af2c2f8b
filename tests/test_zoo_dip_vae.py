"""DIP-VAE-I and DIP-VAE-II of the zoo (aejax/zoo/dip_vae.py).

The covariance against NumPy's (np.cov with ddof=0, the estimator
disentanglement_lib uses), the regulariser against a double loop, every loss
term of both variants against a NumPy float64 re-run of the encoder and
decoder from the same parameters and noise, and a finite gradient that the
regulariser changes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aejax import configs, errors
from aejax.zoo import dip_vae

SHAPE = (4, 4, 1)
BATCH = 8
LATENT = 3
BUILDERS = {"i": dip_vae.build_dip_vae_i, "ii": dip_vae.build_dip_vae_ii}


def _config(name="dip_vae_i", **opts):
  c = configs.default_config()
  c.model.name = name
  c.model.latent_dim = LATENT
  c.model.hidden_widths = (6, 5)
  c.model.activation = "tanh"
  c.model.options.update(opts)
  return c


def _setup(dip_type, config, seed=0):
  model = BUILDERS[dip_type](config.model, SHAPE)
  x = np.asarray(jax.random.uniform(jax.random.key(seed), (BATCH, *SHAPE)), np.float32)
  # Jitted: one compilation instead of one per operation of an eager init.
  init = jax.jit(lambda key, images: model.init(key, images, None, None)["params"])
  params = jax.tree.map(np.asarray, init(jax.random.key(seed + 1), jnp.asarray(x)))
  return model, params, x


def _batch(x):
  return {"input": jnp.asarray(x), "target": jnp.asarray(x)}


def _mlp(layers, h, activation):
  """Dense_0..Dense_n with `activation` between, in float64."""
  h = h.reshape(h.shape[0], -1).astype(np.float64)
  for i in range(len(layers)):
    h = h @ layers[f"Dense_{i}"]["kernel"].astype(np.float64) + layers[f"Dense_{i}"]["bias"]
    if i < len(layers) - 1:
      h = activation(h)
  return h


def _numpy_covariance(mean, logvar, dip_type):
  cov = np.cov(mean.T, ddof=0)  # Divides by B, as dlib's E[mu mu^T] - E[mu] E[mu]^T.
  if dip_type == "ii":
    cov = cov + np.diag(np.exp(logvar).mean(axis=0))
  return cov


def _numpy_regularizer(cov, lambda_od, lambda_d):
  d = cov.shape[0]
  off = sum(cov[i, j] ** 2 for i in range(d) for j in range(d) if i != j)
  diagonal = sum((cov[i, i] - 1.0) ** 2 for i in range(d))
  return lambda_od * off + lambda_d * diagonal


@pytest.mark.parametrize("dip_type", ["i", "ii"])
def test_covariance_and_regularizer_match_numpy(dip_type):
  rng = np.random.default_rng(0)
  # Means far from zero: the centred covariance keeps its digits where E[mu mu^T] - E[mu]^2
  # would cancel.
  mean = (rng.normal(size=(32, 4)) * [1.0, 0.5, 2.0, 0.1] + 30.0).astype(np.float32)
  mean[:, 1] += 0.8 * mean[:, 0]  # Correlated dimensions: off-diagonal entries.
  logvar = rng.normal(size=(32, 4)).astype(np.float32)
  got = np.asarray(dip_vae.latent_covariance(jnp.asarray(mean), jnp.asarray(logvar), dip_type))
  want = _numpy_covariance(mean.astype(np.float64), logvar.astype(np.float64), dip_type)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  got_reg = float(dip_vae.dip_regularizer(jnp.asarray(want), 3.0, 7.0))
  assert got_reg == pytest.approx(_numpy_regularizer(want, 3.0, 7.0), rel=1e-5)
  # The identity costs nothing; one unit off the diagonal costs lambda_od per entry.
  assert float(dip_vae.dip_regularizer(jnp.eye(4), 3.0, 7.0)) == 0.0
  assert float(dip_vae.dip_regularizer(jnp.eye(4) + 0.5 * (1 - jnp.eye(4)), 3.0, 7.0)) == (
    pytest.approx(3.0 * 12 * 0.25)
  )


def test_bad_inputs_name_the_argument():
  with pytest.raises(ValueError, match="dip_type"):
    dip_vae.latent_covariance(jnp.zeros((4, 2)), jnp.zeros((4, 2)), "iii")
  with pytest.raises(ValueError, match=r"mean and logvar.*\(4, 2\).*\(4, 3\)"):
    dip_vae.latent_covariance(jnp.zeros((4, 2)), jnp.zeros((4, 3)), "i")


@pytest.mark.parametrize("dip_type, factor", [("i", 10.0), ("ii", 1.0)])
def test_every_term_matches_numpy(dip_type, factor):
  lambda_od, kl_weight = 4.0, 0.7
  c = _config(f"dip_vae_{dip_type}", lambda_od=lambda_od)
  model, params, x = _setup(dip_type, c)
  # dlib's study: lambda_d = 10 lambda_od (DIP-VAE-I), = lambda_od (DIP-VAE-II).
  assert model.lambda_d == factor * lambda_od and model.dip_type == dip_type
  key = jax.random.key(5)
  fn = jax.jit(lambda p: model.apply({"params": p}, _batch(x), key, c, kl_weight, method="losses"))
  got = {k: np.asarray(v) for k, v in fn(params).items()}

  h = _mlp(params["encoder"], x, np.tanh)
  mean, logvar = h[:, :LATENT], h[:, LATENT:]
  eps = np.asarray(jax.random.normal(key, (BATCH, LATENT)), np.float64)  # The VAE's draw.
  logits = _mlp(params["decoder"], mean + np.exp(0.5 * logvar) * eps, np.tanh)
  target = x.reshape(BATCH, -1).astype(np.float64)
  recon = np.sum(np.logaddexp(0.0, logits) - target * logits, axis=1)
  kl = 0.5 * np.sum(np.exp(logvar) + mean**2 - 1.0 - logvar, axis=1)
  cov = _numpy_covariance(mean, logvar, dip_type)
  regularizer = _numpy_regularizer(cov, lambda_od, factor * lambda_od)

  tol = dict(rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got["recon"], recon, **tol)
  np.testing.assert_allclose(got["kl"], kl, **tol)
  np.testing.assert_allclose(got["neg_elbo"], recon + kl, **tol)
  # One number per batch, broadcast to every image.
  np.testing.assert_allclose(got["dip_regularizer"], np.full(BATCH, regularizer), **tol)
  np.testing.assert_allclose(got["loss"], recon + kl_weight * kl + regularizer, **tol)
  assert all(v.shape == (BATCH,) for v in got.values())


@pytest.mark.parametrize("dip_type", ["i", "ii"])
def test_gradient_is_finite_and_carries_the_regularizer(dip_type):
  name = f"dip_vae_{dip_type}"
  model, params, x = _setup(dip_type, _config(name, lambda_od=5.0))
  key = jax.random.key(2)
  c = _config(name)

  @jax.jit
  def grads(p):
    def mean_loss(p, m):
      return m.apply({"params": p}, _batch(x), key, c, 1.0, method="losses")["loss"].mean()

    plain = model.clone(lambda_od=0.0, lambda_d=0.0)
    return jax.grad(mean_loss)(p, model), jax.grad(mean_loss)(p, plain)

  with_penalty, without = jax.tree.map(np.asarray, grads(params))
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(with_penalty))
  # The penalty moves the encoder (through mu, and for DIP-VAE-II sigma), not the decoder.
  encoder_change = jax.tree.map(lambda a, b: np.max(np.abs(a - b)), with_penalty, without)
  assert max(jax.tree.leaves(encoder_change["encoder"])) > 1e-3
  assert max(jax.tree.leaves(encoder_change["decoder"])) <= 1e-6


@pytest.mark.parametrize(
  "opts, field",
  [
    ({"lambda_od": -1.0}, "lambda_od"),
    ({"lambda_d_factor": -2.0}, "lambda_d_factor"),
    ({"network": "nonsense"}, "network"),
    ({"gamma": 1.0}, "gamma"),
  ],
)
def test_bad_option_names_its_field(opts, field):
  for dip_type, build in BUILDERS.items():
    with pytest.raises(errors.ConfigError, match=rf"config\.model\.options\.{field}\b"):
      build(_config(f"dip_vae_{dip_type}", **opts).model, SHAPE)


def test_other_objectives_and_labels_are_refused():
  c = _config()
  c.model.num_classes = 10
  with pytest.raises(errors.ConfigError, match=r"config\.model\.num_classes"):
    dip_vae.build_dip_vae_i(c.model, SHAPE)
  c = _config()
  model, params, x = _setup("i", c)
  c.objective.num_samples = 5
  with pytest.raises(errors.ConfigError, match=r"config\.objective.*num_samples 5"):
    model.apply({"params": params}, _batch(x), jax.random.key(0), c, 1.0, method="losses")
