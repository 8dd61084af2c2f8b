"""Tests for aejax/zoo/vq_vae.py and aejax/zoo/pixelcnn.py: quantisation, the EMA codebook and
its k-means initialisation and dead-code reset, the loss terms, the PixelCNN prior and sampling.

Each number is checked against a NumPy float64 computation on the same inputs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from aejax import configs, errors, models, steps
from aejax.zoo import pixelcnn, vq_vae

SHAPE = (8, 8, 1)  # A 2 x 2 code grid.


def _config(**opts):
  c = configs.default_config()
  c.model.name = "vq_vae"
  c.model.latent_dim = 3
  small = {"codebook_size": 6, "channels": 4, "residual_blocks": 1, "prior_channels": 8}
  for name, value in {**small, "prior_layers": 2, "kmeans_iterations": 3, **opts}.items():
    c.model.options[name] = value
  c.objective.beta = 0.25
  c.model.conv_impl = "xla"  # The same numbers as im2col; fewer ops to dispatch and compile.
  return c


def _init(c, batch_size=4, seed=0):
  model = models.build_model(c.model, SHAPE)
  x = (jax.random.uniform(jax.random.key(seed), (batch_size, *SHAPE)) > 0.5).astype(jnp.float32)
  params = model.init(jax.random.key(seed + 1), x)["params"]
  return model, params, x


def _apply(model, params, *args, method):
  return model.apply({"params": params}, *args, method=method)


def _np_nearest(z, e):
  d = ((z[:, None, :] - e[None, :, :]) ** 2).sum(-1)
  return d.argmin(-1)


def _np_stats(z, codes, k):
  counts = np.bincount(codes, minlength=k).astype(np.float64)
  sums = np.zeros((k, z.shape[1]))
  np.add.at(sums, codes, z)
  return counts, sums


# -- quantisation ---------------------------------------------------------------------------


def test_nearest_codes_match_numpy_argmin():
  rng = np.random.default_rng(0)
  z, e = rng.normal(size=(50, 4)), rng.normal(size=(7, 4))
  got = np.asarray(vq_vae.nearest_codes(jnp.asarray(z, jnp.float32), jnp.asarray(e, jnp.float32)))
  np.testing.assert_array_equal(got, _np_nearest(z, e))


def test_straight_through_gradient_equals_the_gradient_at_z_q():
  model, params, x = _init(_config())
  z_e = _apply(model, params, x, method="encode_continuous")
  e = params["codebook"]["embedding"]
  target = x

  def recon_of(z_grid):
    logits = _apply(model, params, z_grid, method="decode_grid")
    return jnp.sum(jnp.logaddexp(0.0, logits) - target * logits)

  def through_quantiser(z):
    return recon_of(vq_vae.quantise(z, e)[0])

  z_q, codes = vq_vae.quantise(z_e, e)
  np.testing.assert_allclose(z_q, np.asarray(e)[np.asarray(codes)], rtol=1e-6, atol=1e-6)
  grad_e = jax.jit(jax.grad(through_quantiser))(z_e)
  grad_q = jax.jit(jax.grad(recon_of))(z_q)
  assert float(jnp.abs(grad_q).max()) > 0.0
  np.testing.assert_allclose(grad_e, grad_q, rtol=1e-5, atol=1e-7)


# -- the codebook updates -------------------------------------------------------------------


def test_ema_update_matches_numpy():
  rng = np.random.default_rng(1)
  k, d, decay = 5, 3, 0.9
  z = rng.normal(size=(40, d))
  codes = rng.integers(0, k - 1, size=40)  # Code k - 1 gets nothing: its size only decays.
  size0, sums0 = rng.uniform(0.0, 3.0, size=k), rng.normal(size=(k, d))
  e, size, sums = vq_vae.ema_update(
    jnp.asarray(size0, jnp.float32), jnp.asarray(sums0, jnp.float32),
    jnp.asarray(z, jnp.float32), jnp.asarray(codes, jnp.int32), decay,
  )  # fmt: skip
  counts, batch_sums = _np_stats(z, codes, k)
  want_size = decay * size0 + (1 - decay) * counts
  want_sums = decay * sums0 + (1 - decay) * batch_sums
  eps, total = 1e-5, want_size.sum()
  smoothed = (want_size + eps) / (total + k * eps) * total
  np.testing.assert_allclose(size, want_size, rtol=1e-5)
  np.testing.assert_allclose(sums, want_sums, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(e, want_sums / smoothed[:, None], rtol=1e-4, atol=1e-6)


def _np_lloyd(z, centres, iterations):
  for _ in range(iterations):
    counts, sums = _np_stats(z, _np_nearest(z, centres), len(centres))
    moved = sums / np.maximum(counts, 1)[:, None]
    centres = np.where(counts[:, None] > 0, moved, centres)
  return centres, counts, sums


def test_kmeans_matches_numpy_lloyd_from_the_same_start():
  rng = np.random.default_rng(2)
  # Three blobs and a far-away start that no point chooses: its cluster stays empty.
  z = np.concatenate([rng.normal(c, 0.3, size=(20, 2)) for c in ((0, 0), (4, 0), (0, 4))])
  start = np.stack([z[0], z[1], z[25], np.array([50.0, 50.0])])
  centres, counts, sums = vq_vae.kmeans(jnp.asarray(z, jnp.float32), jnp.asarray(start), 4)
  want_centres, want_counts, want_sums = _np_lloyd(z, start, 4)
  np.testing.assert_allclose(centres, want_centres, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(counts, want_counts)
  np.testing.assert_allclose(sums, want_sums, rtol=1e-5, atol=1e-4)
  assert want_counts[3] == 0 and np.array_equal(np.asarray(centres)[3], [50.0, 50.0])


def test_dead_code_reset_replaces_exactly_the_dead_codes_with_batch_vectors():
  rng = np.random.default_rng(3)
  k, d, threshold = 8, 3, 0.5
  z = rng.normal(size=(30, d)).astype(np.float32)
  e0 = rng.normal(size=(k, d)).astype(np.float32) + 10.0  # Far from every batch vector.
  size0 = np.array([0.0, 2.0, 0.1, 5.0, 0.49, 0.5, 1.0, 0.0], np.float32)
  sums0 = e0 * size0[:, None]
  e, size, sums = vq_vae.reset_dead_codes(
    jnp.asarray(e0), jnp.asarray(size0), jnp.asarray(sums0), jnp.asarray(z), jax.random.key(0),
    threshold,
  )  # fmt: skip
  e, size, sums = map(np.asarray, (e, size, sums))
  dead = size0 < threshold
  assert dead.tolist() == [True, False, True, False, True, False, False, True]
  np.testing.assert_array_equal(e[~dead], e0[~dead])
  np.testing.assert_array_equal(size[~dead], size0[~dead])
  np.testing.assert_array_equal(sums[~dead], sums0[~dead])
  for row in e[dead]:
    assert np.any(np.all(row == z, axis=1)), "a reset code is not a vector of the batch"
  assert len({tuple(row) for row in e[dead]}) == dead.sum()  # Distinct rows (30 >= 8).
  np.testing.assert_array_equal(size[dead], threshold)
  np.testing.assert_allclose(sums[dead], threshold * e[dead], rtol=1e-6)


# -- loss terms -----------------------------------------------------------------------------


def test_code_usage_matches_numpy_on_a_known_histogram():
  codes = jnp.asarray([0, 0, 0, 1, 1, 3, 3, 3, 3, 3], jnp.int32).reshape(2, 5)
  perplexity, used = vq_vae.code_usage(codes, 8)
  p = np.array([3, 2, 5]) / 10.0
  np.testing.assert_allclose(perplexity, np.exp(-(p * np.log(p)).sum()), rtol=1e-6)
  assert float(used) == 3 / 8
  uniform, all_used = vq_vae.code_usage(jnp.arange(8, dtype=jnp.int32), 8)
  np.testing.assert_allclose(uniform, 8.0, rtol=1e-6)
  assert float(all_used) == 1.0


def test_loss_terms_match_numpy():
  c = _config()
  model, params, x = _init(c)
  batch = {"input": x, "target": x}
  terms = model.apply({"params": params}, batch, None, c, 0.25, method="losses")
  assert all(v.shape == (x.shape[0],) for v in terms.values())
  z_e = np.asarray(_apply(model, params, x, method="encode_continuous"), np.float64)
  e = np.asarray(params["codebook"]["embedding"], np.float64)
  codes = _np_nearest(z_e.reshape(-1, 3), e).reshape(z_e.shape[:3])
  commitment = ((z_e - e[codes]) ** 2).sum(axis=(1, 2, 3))
  np.testing.assert_allclose(terms["commitment"], commitment, rtol=1e-5)
  np.testing.assert_allclose(terms["loss"], terms["recon"] + 0.25 * commitment, rtol=1e-5)
  # The prior's NLL: the softmax cross-entropy summed over the grid.
  logits = np.asarray(_apply(model, params, jnp.asarray(codes), method=_prior_logits), np.float64)
  log_probs = logits - special.logsumexp(logits, axis=-1, keepdims=True)
  nll = -np.take_along_axis(log_probs, codes[..., None], axis=-1)[..., 0].sum(axis=(1, 2))
  np.testing.assert_allclose(terms["loss_prior"], nll, rtol=1e-5)
  np.testing.assert_allclose(terms["neg_elbo"], terms["recon"] + nll, rtol=1e-5)
  counts = np.bincount(codes.reshape(-1), minlength=6) / codes.size
  p = counts[counts > 0]
  np.testing.assert_allclose(terms["perplexity"], np.exp(-(p * np.log(p)).sum()), rtol=1e-5)
  np.testing.assert_allclose(terms["codes_used"], len(p) / 6)
  np.testing.assert_array_equal(terms["dead_codes"], 6.0)  # All sizes are 0 before training.


def _prior_logits(module, codes):
  return module.prior(codes)


def test_the_prior_gets_no_gradient_from_loss_and_the_encoder_none_from_loss_prior():
  c = _config()
  model, params, x = _init(c)
  batch = {"input": x, "target": x}

  def term(p, name):
    return model.apply({"params": p}, batch, None, c, 0.25, method="losses")[name].mean()

  both = jax.jit(lambda p: (jax.grad(term)(p, "loss"), jax.grad(term)(p, "loss_prior")))
  from_loss, from_prior = both(params)
  norm = lambda tree: float(sum(jnp.abs(leaf).sum() for leaf in jax.tree.leaves(tree)))
  assert norm(from_loss["prior"]) == 0.0 and norm(from_loss["encoder"]) > 0.0
  assert norm(from_prior["encoder"]) == 0.0 and norm(from_prior["codebook"]) == 0.0
  assert norm(from_prior["prior"]) > 0.0


# -- the PixelCNN ---------------------------------------------------------------------------


def test_pixelcnn_is_causal_in_raster_order_without_a_blind_spot():
  height = width = 4
  net = pixelcnn.GatedPixelCNN(num_codes=5, features=16, num_layers=4)
  params = net.init(jax.random.key(0), jnp.zeros((1, height, width), jnp.int32))
  x = jax.random.normal(jax.random.key(1), (3, height, width, 16))
  jac = jax.jit(jax.jacobian(lambda v: net.apply(params, v, method="from_embedding")))(x)
  # jac: (3, h, w, K, 3, h, w, F); dependence of output position p on input position q.
  dependence = np.abs(np.asarray(jac)).sum(axis=(0, 3, 4, 7)).reshape(16, 16)
  p, q = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
  assert np.all(dependence[q >= p] == 0.0), "a position sees itself or a later one"
  # Four layers reach every earlier position of a 4 x 4 grid, up-right included.
  assert np.all(dependence[q < p] > 0.0), "a blind spot"
  up_right = (1 * width + 1, 0 * width + 2)  # (1, 1) sees (0, 2).
  assert dependence[up_right] > 0.0


def test_loss_prior_is_the_cross_entropy_summed_over_the_grid():
  rng = np.random.default_rng(4)
  logits = rng.normal(size=(3, 2, 2, 5))
  codes = rng.integers(0, 5, size=(3, 2, 2))
  got = pixelcnn.log_likelihood(jnp.asarray(logits, jnp.float32), jnp.asarray(codes, jnp.int32))
  log_probs = logits - special.logsumexp(logits, axis=-1, keepdims=True)
  want = np.take_along_axis(log_probs, codes[..., None], axis=-1)[..., 0].sum(axis=(1, 2))
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_sample_draws_codes_in_raster_order_and_decodes_their_codebook_vectors():
  model, params, _ = _init(_config())
  key = jax.random.key(7)
  logits = _apply(model, params, key, 5, None, method="sample")
  assert logits.shape == (5, *SHAPE)
  np.testing.assert_array_equal(logits, _apply(model, params, key, 5, None, method="sample"))
  codes = np.asarray(_apply(model, params, key, 5, method="sample_codes"))
  assert codes.shape == (5, 2, 2) and codes.min() >= 0 and codes.max() < 6
  e = params["codebook"]["embedding"]
  decoded = _apply(model, params, e[codes], method="decode_grid")
  np.testing.assert_allclose(logits, decoded, rtol=1e-6)
  # The same draws, one position at a time, each from the prior given the codes before it.
  want = np.zeros((5, 2, 2), np.int32)
  for position in range(4):
    i, j = divmod(position, 2)
    step_logits = _apply(model, params, jnp.asarray(want), method=_prior_logits)[:, i, j]
    drawn = jax.random.categorical(jax.random.fold_in(key, position), step_logits, axis=-1)
    want[:, i, j] = np.asarray(drawn)
  np.testing.assert_array_equal(codes, want)


# -- training -------------------------------------------------------------------------------


def test_train_steps_initialise_then_move_the_codebook_by_ema_only():
  c = _config(dead_code_threshold=0.0, ema_decay=0.8)  # No resets: the EMA alone.
  model, params, x = _init(c, batch_size=8)
  tx = steps.make_optimizer(model, c, 10, 10)
  state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  batch = {"input": x, "target": x}
  step = jax.jit(lambda s, k: steps.train_step(s, batch, k, model=model, tx=tx, config=c))
  encode = jax.jit(lambda p: model.apply({"params": p}, x, method="encode_continuous"))

  # Step 1: k-means from rows drawn with the update's key, on the pre-step encoder's outputs.
  key = jax.random.key(11)
  z = np.asarray(encode(state.params), np.float64).reshape(-1, 3)
  key_init, _ = jax.random.split(key)
  start = np.asarray(vq_vae.draw_rows(key_init, jnp.asarray(z, jnp.float32), 6), np.float64)
  state, metrics = step(state, key)
  book = jax.tree.map(np.asarray, state.params["codebook"])
  want_e, want_n, want_m = _np_lloyd(z, start, 3)
  assert float(book["initialised"]) == 1.0
  np.testing.assert_allclose(book["embedding"], want_e, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(book["cluster_size"], want_n)
  np.testing.assert_allclose(book["sums"], want_m, rtol=1e-4, atol=1e-5)
  assert np.isfinite(float(metrics["perplexity"]))

  for i in range(2):  # Steps 2 and 3: the EMA update from the pre-step state.
    before = jax.tree.map(np.asarray, state.params)
    z = np.asarray(encode(state.params), np.float64).reshape(-1, 3)
    codes = _np_nearest(z, before["codebook"]["embedding"].astype(np.float64))
    counts, sums = _np_stats(z, codes, 6)
    size = 0.8 * before["codebook"]["cluster_size"] + 0.2 * counts
    m = 0.8 * before["codebook"]["sums"] + 0.2 * sums
    smoothed = (size + 1e-5) / (size.sum() + 6e-5) * size.sum()
    state, metrics = step(state, jax.random.key(12 + i))
    book = jax.tree.map(np.asarray, state.params["codebook"])
    np.testing.assert_allclose(book["cluster_size"], size, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(book["sums"], m, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(book["embedding"], m / smoothed[:, None], rtol=1e-4, atol=1e-5)
    assert np.isfinite(float(metrics["perplexity"])) and 1.0 <= float(metrics["perplexity"]) <= 6
    # The gradient trains the encoder and the prior; nothing but the EMA touches the codebook.
    for name in ("encoder", "prior"):
      after_leaf, before_leaf = (
        jax.tree.leaves(state.params[name])[0],
        jax.tree.leaves(before[name])[0],
      )
      assert not np.allclose(after_leaf, before_leaf), name


@pytest.mark.parametrize(
  "opts, field",
  [
    ({"codebook_size": 1}, "codebook_size"),
    ({"ema_decay": 1.0}, "ema_decay"),
    ({"ema_decay": -0.1}, "ema_decay"),
    ({"dead_code_threshold": -1.0}, "dead_code_threshold"),
    ({"kmeans_iterations": -1}, "kmeans_iterations"),
    ({"channels": 0}, "channels"),
    ({"residual_blocks": -1}, "residual_blocks"),
    ({"prior_layers": 0}, "prior_layers"),
    ({"prior_channels": 0}, "prior_channels"),
    ({"codebook_size": 8.5}, "codebook_size"),
    ({"no_such_option": 1}, "no_such_option"),
  ],
)
def test_bad_options_are_config_errors_naming_the_field(opts, field):
  with pytest.raises(errors.ConfigError, match=rf"config\.model\.options\.{field}"):
    models.build_model(_config(**opts).model, SHAPE)


def test_conditional_and_odd_image_sizes_are_config_errors():
  c = _config()
  c.model.num_classes = 10
  with pytest.raises(errors.ConfigError, match=r"config\.model\.num_classes"):
    models.build_model(c.model, SHAPE)
  with pytest.raises(errors.ConfigError, match="divisible by 4"):
    models.build_model(_config().model, (10, 8, 1))
