"""Tests for aejax/zoo/music_vae.py: the contract's shapes, the loss terms, free bits, the hooks,
causal teacher forcing, scheduled sampling, sampling, a tiny overfit and the options' checks.

Tiny sizes (T = 32 steps, two bars of 16, V = 12 tokens, latent 8, 16 units); every function is
jitted once per model, since compiling the scans dominates the file's time.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from aejax import configs, errors
from aejax.zoo import music_vae

T, V, D = 32, 12, 8
SHAPE = (T, 1, V)


def _config(**opts):
  c = configs.default_config()
  c.model.name = "music_vae"
  c.model.latent_dim = D
  for name, value in {
    "encoder_units": 16, "conductor_units": 16, "decoder_units": 16, **opts
  }.items():  # fmt: skip
    c.model.options[name] = value
  return c


def _tokens(seed, batch_size=4):
  return jax.random.randint(jax.random.key(seed), (batch_size, T), 0, V)


def _image(tokens_BxT):
  return jax.nn.one_hot(tokens_BxT, V)[:, :, None, :]


def _model(**opts):
  return music_vae.build(_config(**opts).model, SHAPE)


_PARAMS = {}


def _params(decoder):
  """Parameters of the `decoder` model at its defaults; every other option adds none."""
  if decoder not in _PARAMS:
    model = _model(decoder=decoder)
    x = _image(_tokens(0))
    _PARAMS[decoder] = jax.jit(model.init)(jax.random.key(1), x, jax.random.key(2))
  return _PARAMS[decoder]


def _method(model, name, **static):
  """model.<name> applied to parameters, jitted."""
  return jax.jit(lambda params, *args: model.apply(params, *args, method=name, **static))


@pytest.mark.parametrize("decoder", ["hierarchical", "flat"])
def test_contract_shapes_and_values(decoder):
  model, params, c = _model(decoder=decoder), _params(decoder), _config(decoder=decoder)
  tokens = _tokens(3)
  x = _image(tokens)

  @jax.jit
  def everything(params, x, key):
    out = model.apply(params, x, key)
    codes = {"mean": out["mean"], "logvar": out["logvar"]}
    without_key = model.apply(params, codes, None, method="_draw_z")
    teacher = model.apply(params, out["z"], model.tokens(x), method="teacher_forced_logits")
    decoded = model.apply(params, out["z"], method="decode")
    sampled = model.apply(params, key, 5, method="sample")
    terms = model.apply(params, {"input": x, "target": x}, key, c, 0.5, method="losses")
    weights = model.apply(params, codes, x, None, key, method="log_weight_terms")
    return out, without_key, teacher, decoded, sampled, terms, weights

  out, without_key, teacher, decoded, sampled, terms, weights = everything(
    params, x, jax.random.key(4)
  )
  assert {name: out[name].shape for name in out} == {
    "mean": (4, D), "logvar": (4, D), "z": (4, D), "logits": (4, T, 1, V)
  }  # fmt: skip
  # With a key z is a draw, without one the posterior mean.
  assert not np.allclose(out["z"], out["mean"])
  np.testing.assert_array_equal(without_key, out["mean"])
  # The contract's logits are teacher-forced on x.
  np.testing.assert_allclose(out["logits"][:, :, 0], teacher, atol=1e-5)
  assert decoded.shape == (4, T, 1, V)
  # Log-probabilities of each step: normalised, their argmax a token.
  np.testing.assert_allclose(jax.nn.logsumexp(decoded, axis=-1), 0.0, atol=1e-5)
  assert sampled.shape == (5, T, 1, V)
  # The log of a one-hot draw: one 0 per step, the rest NOT_DRAWN.
  np.testing.assert_array_equal((sampled == 0.0).sum(axis=-1), 1)
  np.testing.assert_array_equal((sampled == music_vae.NOT_DRAWN).sum(axis=-1), V - 1)
  for logits in (decoded, sampled):
    drawn = np.argmax(logits, axis=-1)
    assert drawn.min() >= 0 and drawn.max() < V
  assert set(terms) == {"recon", "kl", "kl_penalty", "neg_elbo", "token_accuracy", "loss"}
  for name, value in terms.items():
    assert value.shape == (4,), name
    assert np.all(np.isfinite(value)), name
  # An untrained model is near uniform over V tokens: recon ~ T ln V nats.
  np.testing.assert_allclose(terms["recon"], T * math.log(V), rtol=0.1)
  assert np.all((terms["token_accuracy"] >= 0) & (terms["token_accuracy"] <= 1))
  assert {name: value.shape for name, value in weights.items()} == {
    "log_px_given_z": (4,), "log_pz_minus_log_qz": (4,)
  }  # fmt: skip
  # The same key draws the same z in `losses` and the hook: log p(x|z) is the recon term.
  np.testing.assert_allclose(-weights["log_px_given_z"], terms["recon"], rtol=1e-6)


def _np_kl(codes):
  mean, logvar = np.asarray(codes["mean"], np.float64), np.asarray(codes["logvar"], np.float64)
  return 0.5 * np.sum(np.exp(logvar) + mean**2 - 1.0 - logvar, axis=-1)


def test_free_bits_and_kl_weight():
  params, c = _params("hierarchical"), _config()
  x = _image(_tokens(5, batch_size=8))
  batch = {"input": x, "target": x}
  plain = _model()
  key = jax.random.key(6)

  @jax.jit
  def terms(params, free_bits, weight):
    # free_bits enters as a traced number: one program for every value.
    out = plain.clone(free_bits=free_bits).apply(params, batch, key, c, weight, method="losses")
    return out, plain.apply(params, x, method="encode")

  kl = _np_kl(terms(params, 0.0, 1.0)[1])
  # Half the sequences under the free bits, half over.
  free_bits = float(np.median(kl)) / math.log(2.0)
  for weight in (1.0, 0.25):
    out = terms(params, free_bits, weight)[0]
    np.testing.assert_allclose(out["kl"], kl, rtol=1e-4, atol=1e-7)
    expected = np.maximum(kl - free_bits * math.log(2.0), 0.0)
    np.testing.assert_allclose(out["kl_penalty"], expected, rtol=1e-4, atol=1e-7)
    assert np.any(out["kl_penalty"] == 0.0) and np.any(out["kl_penalty"] > 0.0)
    np.testing.assert_allclose(out["loss"], out["recon"] + weight * out["kl_penalty"], rtol=1e-6)
    np.testing.assert_allclose(out["neg_elbo"], out["recon"] + out["kl"], rtol=1e-6)
  # free_bits 0: the penalty is the KL, and at weight 1 the loss is the negative ELBO.
  out = terms(params, 0.0, 1.0)[0]
  np.testing.assert_allclose(out["kl_penalty"], out["kl"], rtol=1e-6)
  np.testing.assert_allclose(out["loss"], out["neg_elbo"], rtol=1e-6)
  # The built model reads free_bits from its options.
  assert _model(free_bits=48.0).free_bits == 48.0


def test_log_weight_terms_estimate_minus_kl():
  model, params = _model(), _params("hierarchical")
  x = _image(_tokens(7, batch_size=2))
  # Codes far from the prior, so that the KL is several nats: E_q[log p(z) - log q(z|x)] = -KL.
  rng = np.random.default_rng(0)
  codes = {
    "mean": jnp.asarray(rng.normal(0.0, 1.0, (2, D)), jnp.float32),
    "logvar": jnp.asarray(rng.normal(-1.0, 0.5, (2, D)), jnp.float32),
  }
  num_draws = 2000
  keys = jax.random.split(jax.random.key(9), num_draws)
  draws = jax.jit(
    jax.vmap(lambda k: model.apply(params, codes, x, None, k, method="log_weight_terms"))
  )(keys)["log_pz_minus_log_qz"]
  kl = _np_kl(codes)
  assert np.all(kl > 2.0)
  std_error = np.std(draws, axis=0) / math.sqrt(num_draws)
  assert np.all(np.abs(np.mean(draws, axis=0) + kl) < 4 * std_error)


def _changed_steps(logits_a, logits_b):
  return set(np.flatnonzero(np.abs(np.asarray(logits_a) - np.asarray(logits_b)).max(-1) > 1e-6))


@pytest.mark.parametrize("decoder", ["hierarchical", "flat"])
def test_teacher_forcing_is_causal(decoder):
  model, params = _model(decoder=decoder), _params(decoder)
  z = jax.random.normal(jax.random.key(10), (1, D))
  base = _tokens(11, batch_size=1)
  changed_at = (5, 15, 20, 31)
  variants = jnp.concatenate([base] + [base.at[0, t].set((base[0, t] + 1) % V) for t in changed_at])
  z_rows = jnp.repeat(z, len(variants), axis=0)
  logits = _method(model, "teacher_forced_logits")(params, z_rows, variants)
  for row, t in enumerate(changed_at, start=1):
    changed = _changed_steps(logits[0], logits[row])
    if decoder == "flat":
      expected = set(range(t + 1, T))
    else:
      # A bar's LSTM restarts from its conductor embedding; only the token fed across the bar
      # line (step 15's, into step 16) links the two bars.
      bar_end = (t // 16 + 1) * 16
      expected = set(range(t + 1, bar_end)) | (set(range(16, T)) if t == 15 else set())
    assert changed == expected, (t, sorted(changed))


def test_scheduled_sampling():
  params, model = _params("hierarchical"), _model()
  z = jax.random.normal(jax.random.key(12), (3, D))
  tokens, other_tokens = _tokens(13, batch_size=3), _tokens(14, batch_size=3)
  key = jax.random.key(15)

  @jax.jit
  def logits(params):
    def at(probability, tokens):
      scheduled = model.clone(sampling_probability=probability)
      return scheduled.apply(params, z, tokens, key, method="training_logits")

    return {
      "teacher": model.apply(params, z, tokens, method="teacher_forced_logits"),
      "nearly_never": at(1e-12, tokens),
      "always": at(1.0, tokens),
      "always_other_tokens": at(1.0, other_tokens),
      "half": at(0.5, tokens),
      "free": model.apply(params, z, jax.random.split(key)[1], 1.0, method="autoregress")[0],
    }

  out = logits(params)
  teacher, own = out["teacher"], out["always"]
  # p ~ 0 runs the step-by-step path (the token carried across the bar line) on the true tokens:
  # it must give the parallel teacher-forced logits.
  np.testing.assert_allclose(out["nearly_never"], teacher, atol=1e-5)
  # p = 1: every input is the model's own draw; the true tokens are never seen, and the logits
  # are those of free sampling at temperature 1 with the same noise.
  np.testing.assert_allclose(own, out["always_other_tokens"], atol=1e-6)
  np.testing.assert_allclose(own, out["free"], atol=1e-5)
  assert not np.allclose(own, teacher, atol=1e-3)
  # In between, some steps see their true token and some their own draw.
  half = out["half"]
  assert not np.allclose(half, teacher, atol=1e-3) and not np.allclose(half, own, atol=1e-3)
  # Without a key (a deterministic evaluation pass) the loss is teacher-forced whatever p.
  no_key = model.clone(sampling_probability=0.5)
  np.testing.assert_allclose(
    _method(no_key, "training_logits")(params, z, tokens, None), teacher, atol=1e-5
  )


def test_sampling_temperature_and_greedy_decoding():
  model, params = _model(), _params("hierarchical")
  key = jax.random.key(17)
  num_draws, temperature = 4000, 2.0
  # Rows 0..3 four codes; the rest repeat row 0, for the frequencies of step 0's draws.
  z4 = jax.random.normal(jax.random.key(16), (4, D))
  z = jnp.concatenate([z4, jnp.repeat(z4[:1], num_draws, axis=0)])
  autoregress = _method(model, "autoregress")
  decoded = _method(model, "decode")(params, z)
  greedy = np.argmax(decoded[:, :, 0], axis=-1)
  cold_logits, cold = autoregress(params, z, key, 1e-6)
  _, warm = autoregress(params, z, key, 1.0)
  # Greedy decoding: the tokens sampled at temperature -> 0, and decode's log-probabilities are
  # those of each step along that path.
  np.testing.assert_array_equal(cold, greedy)
  np.testing.assert_allclose(decoded[:, :, 0], jax.nn.log_softmax(cold_logits), atol=1e-5)
  assert np.any(np.asarray(warm[:4]) != greedy[:4])

  # `sample` draws z ~ N(0, I) with split(key)[0] and the tokens with split(key)[1] at the
  # model's temperature (here 1).
  sampled = _method(model, "sample", num_samples=len(z))(params, key)
  key_z, key_tokens = jax.random.split(key)
  z_prior = jax.random.normal(key_z, z.shape)
  _, drawn_prior = autoregress(params, z_prior, key_tokens, 1.0)
  np.testing.assert_array_equal(np.argmax(sampled[:, :, 0], axis=-1), drawn_prior)

  # At temperature t, step 0's token (which depends on z alone) ~ softmax(logits_0 / t).
  step_logits, drawn = autoregress(params, z, key, temperature)
  probs = np.asarray(jax.nn.softmax(step_logits[0, 0] / temperature), np.float64)
  freq = np.bincount(np.asarray(drawn[4:, 0]), minlength=V) / num_draws
  np.testing.assert_allclose(freq, probs, atol=4 * np.sqrt(probs * (1 - probs) / num_draws).max())


def test_overfits_four_melodies():
  """Adam (1e-2), 200 steps on 4 fixed random sequences, the KL weighted 1 beyond 4 free bits:
  the teacher-forced token accuracy of the last step >= 0.95 (measured: 0.09 at step 0, 0.89 at
  100, 1.0 at 150, 0.99 at 200), and greedy decoding of the posterior means gives the sequences
  back (measured: all 128 tokens; 0.77 of them after 150 steps)."""
  model, c = _model(free_bits=4.0), _config(free_bits=4.0)
  x = _image(_tokens(18))
  batch = {"input": x, "target": x}
  params = _params("hierarchical")["params"]
  optimizer = optax.adam(1e-2)
  key = jax.random.key(19)

  def loss_fn(params, key):
    terms = model.apply({"params": params}, batch, key, c, 1.0, method="losses")
    return terms["loss"].mean(), terms

  @jax.jit
  def train(params):
    def step(carry, i):
      params, state = carry
      grads, terms = jax.grad(loss_fn, has_aux=True)(params, jax.random.fold_in(key, i))
      updates, state = optimizer.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), terms["token_accuracy"].mean()

    (params, _), accuracy = jax.lax.scan(step, (params, optimizer.init(params)), jnp.arange(200))
    variables = {"params": params}
    mean = model.apply(variables, x, method="encode")["mean"]
    return accuracy, model.apply(variables, mean, method="decode")

  accuracy, decoded = train(params)
  assert accuracy[0] < 0.3
  assert accuracy[-1] >= 0.95
  greedy_accuracy = np.mean(np.argmax(decoded[:, :, 0], axis=-1) == np.argmax(x[:, :, 0], axis=-1))
  assert greedy_accuracy >= 0.95


@pytest.mark.parametrize(
  ("opts", "shape", "field"),
  [
    ({"decoder": "transformer"}, SHAPE, "config.model.options.decoder"),
    ({"steps_per_bar": 12}, SHAPE, "config.model.options.steps_per_bar"),
    ({"steps_per_bar": 0}, SHAPE, "config.model.options.steps_per_bar"),
    ({"free_bits": -1.0}, SHAPE, "config.model.options.free_bits"),
    ({"sampling_probability": 1.5}, SHAPE, "config.model.options.sampling_probability"),
    ({"temperature": 0.0}, SHAPE, "config.model.options.temperature"),
    ({"encoder_units": 0}, SHAPE, "config.model.options.encoder_units"),
    ({"decoder_units": 0}, SHAPE, "config.model.options.decoder_units"),
    ({"conductor_units": 0}, SHAPE, "config.model.options.conductor_units"),
    ({"decoder_units": 1.5}, SHAPE, "config.model.options.decoder_units"),
    ({"free_bit": 48.0}, SHAPE, "config.model.options.free_bit"),
    ({}, (T, 2, V), "config.data.name"),
    ({}, (T, V), "config.data.name"),
  ],
)
def test_bad_options_name_the_field(opts, shape, field):
  with pytest.raises(errors.ConfigError, match=f"^{field}:"):
    music_vae.build(_config(**opts).model, shape)


def test_flat_decoder_ignores_bars_and_conditional_is_rejected():
  # The flat decoder has no bars: any steps_per_bar is fine.
  assert music_vae.build(_config(decoder="flat", steps_per_bar=12).model, SHAPE).num_segments == 1
  c = _config()
  c.model.num_classes = 3
  with pytest.raises(errors.ConfigError, match="^config.model.num_classes:"):
    music_vae.build(c.model, SHAPE)


@pytest.mark.parametrize(("field", "value"), [("num_samples", 2), ("name", "iwae")])
def test_only_the_one_sample_elbo(field, value):
  model, c = _model(), _config()
  c.objective[field] = value
  x = _image(_tokens(20))
  with pytest.raises(errors.ConfigError, match=f"^config.objective.{field}:"):
    model.apply(_params("hierarchical"), {"input": x, "target": x}, None, c, 1.0, method="losses")
