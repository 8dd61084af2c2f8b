"""MusicVAE: a recurrent VAE of melodies with a hierarchical ("conductor") decoder.

Roberts, Engel, Raffel, Hawthorne & Eck (2018), "A Hierarchical Latent Vector Model for Learning
Long-Term Structure in Music", ICML. A melody is T sixteenth-note steps of V tokens in
MusicVAE's melody encoding (0 = note-off, 1 = no event, 2.. = note-on of a pitch;
aejax/chorales.py). It reaches the model as an image batch, so that the trainer, sharding,
checkpoints and populations need nothing new: x is (B, T, 1, V), a one-hot token per step, and
the tokens are its argmax over the last axis. `build` takes T and V from image_shape = (T, 1, V).

Model:
- encoder: a bidirectional LSTM (`encoder_units` per direction) over the T one-hot tokens; the
  final hidden states of both directions, concatenated, go through Dense(2 * latent_dim): the
  mean and the log-variance of q(z|x) = N(mean, diag(exp(logvar))), as in aejax's VAE; the prior
  is N(0, I) and latent_dim is config.model.latent_dim (MusicVAE: 512).
- decoder "hierarchical": z -> Dense + tanh -> the initial state (c, h) of the conductor LSTM
  (`conductor_units`), which runs U = T / steps_per_bar steps on zero inputs and emits one
  embedding c_u per bar. Bar u's note LSTM (`decoder_units`, one set of weights for all bars)
  starts from Dense + tanh(c_u) and takes [previous token one-hot, c_u] at every step; Dense(V)
  of its output are the logits of the step's token.
- decoder "flat" (MusicVAE's baseline): one note LSTM over all T steps, started from Dense +
  tanh(z), input [previous token one-hot, z]. `steps_per_bar` is not used.
The previous token of step 0 is a zero vector; the first step of every later bar gets the last
token of the bar before (the true one in teacher forcing, the model's own in sampling), as
MusicVAE feeds the previous output token through the bars. Only the LSTM state restarts at a bar.

p(x|z) = prod_t Categorical(token_t; softmax(logits_t)) of the autoregressive decoder, so the
teacher-forced log p(x|z) is exact. Loss terms per sequence, nats, (B,) each:
  recon = -sum_t log softmax(logits_t)[token_t],
  kl = KL(q(z|x) || N(0, I)) (analytic, aejax.losses.gaussian_kl summed over dimensions),
  kl_penalty = max(kl - free_bits * ln 2, 0)  (MusicVAE's free bits; free_bits 0: kl itself),
  neg_elbo = recon + kl,  token_accuracy = the fraction of steps whose argmax logit is the token,
  loss = recon + kl_weight * kl_penalty.
kl_weight is aejax's beta with its linear warm-up config.objective.kl_warmup_steps already
applied: that field is the KL annealing of MusicVAE's training. One draw of z per sequence
(config.objective.num_samples must be 1; objective "elbo").

Scheduled sampling (`sampling_probability` p > 0): in training, each step's input is, with
probability p, the model's own sample (temperature 1) from the step before instead of the true
previous token; the decoder then runs strictly step by step. Gradients do not pass through the
sampled tokens. With p = 0 (default) training is teacher forcing, all bars in parallel.

Options (config.model.options.NAME, aejax/zoo/options.py), MusicVAE's value in brackets:
  encoder_units 256 [2048], decoder "hierarchical" | "flat", conductor_units 256 [1024],
  decoder_units 256 [1024], steps_per_bar 16 [16], free_bits 0.0 [48 for 2-bar melodies],
  sampling_probability 0.0 [an inverse-sigmoid schedule], temperature 1.0 (`sample`'s; `decode`
  is greedy).

The logits, all (B, T, 1, V) like the input:
- `__call__(x, key)`: "mean", "logvar", "z" (a draw from q(z|x) with the key, the mean without)
  and the teacher-forced "logits" on x.
- `decode(z)`: greedy decoding (each step's argmax fed back), as the log-probabilities of every
  step's distribution along that path: their argmax are the decoded tokens.
- `sample(key, n)`: z ~ N(0, I), then tokens drawn from softmax(logits / temperature) step by
  step; returned as the log of the one-hot draw (0 at the drawn token, -1e9 elsewhere), so the
  argmax is the drawn token and sigmoid of it the one-hot melody.
- `log_weight_terms`: log p(x|z) and log p(z) - log q(z|x) for one z ~ q(z|x) (aejax.evaluate's
  IWAE bounds and NLL).

Deviations from MusicVAE: one-layer LSTMs everywhere (MusicVAE stacks two or more layers in
the encoder, the conductor and the note decoder) with smaller default units; a fixed
scheduled-sampling probability, since the model does not see the training step (MusicVAE raises
it along an inverse-sigmoid schedule); the KL weight's linear warm-up of aejax (MusicVAE's beta
approaches its maximum as 1 - rate^step); learning-rate decay and gradient clipping are
config.optimizer's (schedule, grad_clip_norm); float32 whatever config.model.dtype; no
conditioning (chords, styles): labels are ignored and num_classes > 0 is rejected.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from aejax import errors, losses
from aejax.zoo import options

DECODERS = ("hierarchical", "flat")
LOG_2 = math.log(2.0)
# The log-probability `sample` gives the tokens it did not draw: a finite stand-in for log 0.
NOT_DRAWN = -1e9

DEFAULTS = {
  "encoder_units": 256,  # BiLSTM units per direction (MusicVAE: 2048).
  "decoder": "hierarchical",  # hierarchical (a conductor) | flat (MusicVAE's baseline).
  "conductor_units": 256,  # MusicVAE: 1024.
  "decoder_units": 256,  # The note LSTM (MusicVAE: 1024).
  "steps_per_bar": 16,  # Sixteenth notes in a 4/4 bar: one conductor embedding per bar.
  "free_bits": 0.0,  # KL below free_bits * ln 2 nats is not penalised (MusicVAE: 48).
  "sampling_probability": 0.0,  # Scheduled sampling, fixed: 0 is teacher forcing.
  "temperature": 1.0,  # `sample`'s softmax temperature.
}


class InitialState(nn.Module):
  """Dense + tanh of a conditioning vector -> an LSTM carry (c, h), as MusicVAE starts its RNNs."""

  units: int

  @nn.compact
  def __call__(self, cond):
    c, h = jnp.split(jnp.tanh(nn.Dense(2 * self.units)(cond)), 2, axis=-1)
    return c, h


class DecoderStep(nn.Module):
  """One step of the note LSTM, for teacher forcing, scheduled sampling and free sampling alike.

  The carry is the LSTM's (c, h) and the one-hot token the step before chose. Per step `xs` holds
  - "start" (B,): the first step of a bar: (c, h) restarts from "init" ((c, h), (B, H) each);
  - "teacher" (B,): feed "prev" (B, V), the true previous token; else the carried own choice;
  - "cond" (B, C): the bar's conductor embedding (or z), concatenated to the token;
  - "noise" (B, V): the choice is argmax(logits + noise): zeros are greedy, temperature *
    Gumbel noise a draw from softmax(logits / temperature) (the Gumbel-max trick).
  Returns the step's logits (B, V) and chosen token (B,).
  """

  units: int
  vocab_size: int

  @nn.compact
  def __call__(self, carry, xs):
    state, own_BxV = carry
    start_Bx1 = xs["start"][:, None]
    state = tuple(
      jnp.where(start_Bx1, init, old) for init, old in zip(xs["init"], state, strict=True)
    )
    prev_BxV = jnp.where(xs["teacher"][:, None], xs["prev"], own_BxV)
    inputs = jnp.concatenate([prev_BxV, xs["cond"]], axis=-1)
    state, h_BxH = nn.OptimizedLSTMCell(self.units, name="lstm")(state, inputs)
    logits_BxV = nn.Dense(self.vocab_size, name="logits")(h_BxH)
    token_B = jnp.argmax(logits_BxV + xs["noise"], axis=-1)
    own_BxV = jax.nn.one_hot(token_B, self.vocab_size, dtype=logits_BxV.dtype)
    return (state, own_BxV), (logits_BxV, token_B)


class MusicVAE(nn.Module):
  """MusicVAE on one-hot token sequences (B, T, 1, V); see the module docstring."""

  latent_dim: int
  num_steps: int  # T.
  vocab_size: int  # V.
  encoder_units: int = 256
  decoder: str = "hierarchical"
  conductor_units: int = 256
  decoder_units: int = 256
  steps_per_bar: int = 16
  free_bits: float = 0.0
  sampling_probability: float = 0.0
  temperature: float = 1.0

  is_variational = True
  num_classes = 0  # Not conditional: label arguments are accepted and ignored.

  @property
  def segment_steps(self) -> int:
    """Steps per decoder segment: a bar (hierarchical) or the whole sequence (flat)."""
    return self.steps_per_bar if self.decoder == "hierarchical" else self.num_steps

  @property
  def num_segments(self) -> int:
    return self.num_steps // self.segment_steps

  def setup(self):
    self.encoder_rnn = nn.Bidirectional(
      nn.RNN(nn.OptimizedLSTMCell(self.encoder_units)),
      nn.RNN(nn.OptimizedLSTMCell(self.encoder_units)),
      return_carry=True,
    )
    self.posterior = nn.Dense(2 * self.latent_dim)
    if self.decoder == "hierarchical":
      self.conductor_state = InitialState(self.conductor_units)
      self.conductor = nn.RNN(nn.OptimizedLSTMCell(self.conductor_units))
    self.segment_state = InitialState(self.decoder_units)
    self.notes = nn.scan(
      DecoderStep,
      variable_broadcast="params",
      split_rngs={"params": False},
      in_axes=1,
      out_axes=1,
    )(self.decoder_units, self.vocab_size)

  # -- Tokens ----------------------------------------------------------------------------------

  def tokens(self, x_BxTx1xV: jax.Array) -> jax.Array:
    """The token of every step, (B, T): argmax over the one-hot axis."""
    return jnp.argmax(x_BxTx1xV.reshape(x_BxTx1xV.shape[0], self.num_steps, -1), axis=-1)

  def _one_hot(self, tokens_BxT: jax.Array) -> jax.Array:
    return jax.nn.one_hot(tokens_BxT, self.vocab_size, dtype=jnp.float32)

  def _as_image(self, values_BxTxV: jax.Array) -> jax.Array:
    return values_BxTxV.reshape(values_BxTxV.shape[0], self.num_steps, 1, self.vocab_size)

  # -- Encoder -----------------------------------------------------------------------------------

  def encode(self, x_BxTx1xV: jax.Array, label_B: jax.Array | None = None) -> dict[str, jax.Array]:
    """q(z|x): "mean" and "logvar" (B, D) from the BiLSTM's final states."""
    del label_B
    (forward, backward), _ = self.encoder_rnn(self._one_hot(self.tokens(x_BxTx1xV)))
    h_Bx2E = jnp.concatenate([forward[1], backward[1]], axis=-1)
    mean, logvar = jnp.split(self.posterior(h_Bx2E), 2, axis=-1)
    return {"mean": mean, "logvar": logvar}

  # -- Decoder -----------------------------------------------------------------------------------

  def _segment_conditions(self, z_BxD: jax.Array) -> jax.Array:
    """The conditioning vector of every segment, (B, U, C): the conductor's outputs, or z."""
    if self.decoder == "flat":
      return z_BxD[:, None, :]
    zeros_BxUx1 = jnp.zeros((z_BxD.shape[0], self.num_segments, 1), z_BxD.dtype)
    # Zero inputs, as MusicVAE's conductor: the input kernel sees only zeros and stays as set.
    return self.conductor(zeros_BxUx1, initial_carry=self.conductor_state(z_BxD))

  def _run(self, cond_BxUxC, prev_BxTxV, teacher_BxT, noise_BxTxV, parallel: bool):
    """The note LSTM over all T steps: logits (B, T, V) and chosen tokens (B, T).

    `parallel`: every segment starts from its own state and true tokens (teacher forcing), so the
    U segments run side by side as B * U sequences of one segment each; otherwise step by step
    through all T steps, the chosen token carried across bar lines.
    """
    batch_size, num_segments, _ = cond_BxUxC.shape
    steps = self.segment_steps
    init = self.segment_state(cond_BxUxC)  # (c, h), (B, U, H) each.
    if parallel:
      rows, length = batch_size * num_segments, steps
      cond = jnp.repeat(cond_BxUxC.reshape(rows, 1, -1), steps, axis=1)
      init = tuple(jnp.repeat(part.reshape(rows, 1, -1), steps, axis=1) for part in init)
    else:
      rows, length = batch_size, self.num_steps
      cond = jnp.repeat(cond_BxUxC, steps, axis=1)
      init = tuple(jnp.repeat(part, steps, axis=1) for part in init)
    start = jnp.broadcast_to(jnp.arange(length) % steps == 0, (rows, length))
    xs = {
      "start": start,
      "init": init,
      "teacher": teacher_BxT.reshape(rows, length),
      "prev": prev_BxTxV.reshape(rows, length, -1),
      "cond": cond,
      "noise": noise_BxTxV.reshape(rows, length, -1),
    }
    zeros = jnp.zeros((rows, self.decoder_units), jnp.float32)
    carry = ((zeros, zeros), jnp.zeros((rows, self.vocab_size), jnp.float32))
    _, (logits, tokens) = self.notes(carry, xs)
    return (
      logits.reshape(batch_size, self.num_steps, self.vocab_size),
      tokens.reshape(batch_size, self.num_steps),
    )

  def _previous_tokens(self, tokens_BxT: jax.Array) -> jax.Array:
    """The teacher-forcing inputs (B, T, V): the tokens shifted right, a zero vector first."""
    one_hot = self._one_hot(tokens_BxT)
    return jnp.pad(one_hot[:, :-1], ((0, 0), (1, 0), (0, 0)))

  def teacher_forced_logits(self, z_BxD: jax.Array, tokens_BxT: jax.Array) -> jax.Array:
    """Logits (B, T, V) of p(token_t | token_<t, z): every input the true previous token."""
    batch_size = z_BxD.shape[0]
    logits, _ = self._run(
      self._segment_conditions(z_BxD),
      self._previous_tokens(tokens_BxT),
      jnp.ones((batch_size, self.num_steps), bool),
      jnp.zeros((batch_size, self.num_steps, self.vocab_size), jnp.float32),
      parallel=True,
    )
    return logits

  def training_logits(self, z_BxD: jax.Array, tokens_BxT: jax.Array, key) -> jax.Array:
    """The logits (B, T, V) the loss scores: teacher-forced, or scheduled sampling with `key`.

    With sampling_probability p > 0 and a key, each step's input is the model's own draw
    (temperature 1) from the step before with probability p, else the true previous token.
    Without a key (a deterministic evaluation pass) or with p = 0: teacher forcing.
    """
    if self.sampling_probability == 0.0 or key is None:
      return self.teacher_forced_logits(z_BxD, tokens_BxT)
    key_mix, key_noise = jax.random.split(key)
    batch_size = z_BxD.shape[0]
    shape = (batch_size, self.num_steps)
    teacher_BxT = jax.random.uniform(key_mix, shape) >= self.sampling_probability
    noise = jax.random.gumbel(key_noise, (*shape, self.vocab_size), jnp.float32)
    logits, _ = self._run(
      self._segment_conditions(z_BxD),
      self._previous_tokens(tokens_BxT),
      teacher_BxT,
      noise,
      parallel=False,
    )
    return logits

  def autoregress(self, z_BxD: jax.Array, key=None, temperature: float = 1.0):
    """Decode z step by step, each chosen token fed back: (logits (B, T, V), tokens (B, T)).

    With a key, token_t ~ softmax(logits_t / temperature); without one, token_t = argmax (greedy).
    """
    batch_size = z_BxD.shape[0]
    shape = (batch_size, self.num_steps, self.vocab_size)
    if key is None:
      noise = jnp.zeros(shape, jnp.float32)
    else:
      # argmax(logits / t + g) = argmax(logits + t * g) for t > 0: no division by a tiny t.
      noise = temperature * jax.random.gumbel(key, shape, jnp.float32)
    return self._run(
      self._segment_conditions(z_BxD),
      jnp.zeros(shape, jnp.float32),
      jnp.zeros((batch_size, self.num_steps), bool),
      noise,
      parallel=False,
    )

  def decode(self, z_BxD: jax.Array, label_B: jax.Array | None = None) -> jax.Array:
    """Greedy decoding of z: (B, T, 1, V) log-probabilities of each step along the greedy path."""
    del label_B
    logits, _ = self.autoregress(z_BxD)
    return self._as_image(jax.nn.log_softmax(logits, axis=-1))

  def sample(self, key, num_samples: int, label_B=None) -> jax.Array:
    """`num_samples` melodies from z ~ N(0, I) at `temperature`: (N, T, 1, V), 0 at each step's
    drawn token and -1e9 elsewhere (the log of the one-hot draw)."""
    del label_B
    key_z, key_tokens = jax.random.split(key)
    z_NxD = jax.random.normal(key_z, (num_samples, self.latent_dim), jnp.float32)
    _, tokens = self.autoregress(z_NxD, key_tokens, self.temperature)
    return self._as_image(self._drawn(tokens))

  def _drawn(self, tokens_BxT: jax.Array) -> jax.Array:
    return jnp.where(self._one_hot(tokens_BxT) > 0, 0.0, NOT_DRAWN)

  # -- The contract ------------------------------------------------------------------------------

  def _draw_z(self, codes, key) -> jax.Array:
    """z ~ q(z|x) from the first half of split(key) (the same z in `losses` and the hooks)."""
    if key is None:
      return codes["mean"]
    key_z, _ = jax.random.split(key)
    return losses.sample_gaussian(key_z, codes["mean"], codes["logvar"])

  def __call__(
    self, x_BxTx1xV: jax.Array, key: jax.Array | None = None, label_B: jax.Array | None = None
  ) -> dict[str, jax.Array]:
    """With a key, z is a draw from q(z|x); without, the mean. Logits are teacher-forced on x.

    Creates every parameter (encoder, conductor, note decoder).
    """
    out = self.encode(x_BxTx1xV)
    out["z"] = self._draw_z(out, key)
    out["logits"] = self._as_image(self.teacher_forced_logits(out["z"], self.tokens(x_BxTx1xV)))
    return out

  def _recon(self, logits_BxTxV: jax.Array, tokens_BxT: jax.Array) -> jax.Array:
    """-log p(x|z) per sequence, (B,), nats: the categorical NLL summed over the steps."""
    log_probs = jax.nn.log_softmax(logits_BxTxV, axis=-1)
    return -jnp.take_along_axis(log_probs, tokens_BxT[..., None], axis=-1)[..., 0].sum(axis=-1)

  def losses(self, batch, key, config, kl_weight) -> dict[str, jax.Array]:
    """Loss terms per sequence, (B,) each, nats (token_accuracy a fraction); see the docstring.

    z is drawn with the first half of split(key), scheduled sampling uses the second.
    """
    for field, value, valid in (
      ("name", config.objective.name, "elbo"),
      ("num_samples", config.objective.num_samples, 1),
    ):
      if value != valid:
        raise errors.ConfigError(
          f"config.objective.{field}: model {config.model.name!r} trains a one-sample ELBO "
          f"(objective.name='elbo', num_samples=1), got {value!r}"
        )
    codes = self.encode(batch["input"])
    z_BxD = self._draw_z(codes, key)
    tokens_BxT = self.tokens(batch["target"])
    key_sampling = None if key is None else jax.random.split(key)[1]
    logits_BxTxV = self.training_logits(z_BxD, tokens_BxT, key_sampling)
    recon_B = self._recon(logits_BxTxV, tokens_BxT)
    kl_B = losses.gaussian_kl(codes["mean"], codes["logvar"]).sum(axis=-1)
    kl_penalty_B = jnp.maximum(kl_B - self.free_bits * LOG_2, 0.0)
    accuracy_B = jnp.mean(jnp.argmax(logits_BxTxV, axis=-1) == tokens_BxT, axis=-1)
    return {
      "recon": recon_B,
      "kl": kl_B,
      "kl_penalty": kl_penalty_B,
      "neg_elbo": recon_B + kl_B,
      "token_accuracy": accuracy_B.astype(jnp.float32),
      "loss": recon_B + kl_weight * kl_penalty_B,
    }

  def log_weight_terms(self, codes, target, label_B, key) -> dict[str, jax.Array]:
    """One draw z ~ q(z|x) (as `losses` draws it from the same key): the teacher-forced, exact
    log p(x|z) and log p(z) - log q(z|x), (B,) nats each."""
    del label_B
    z_BxD = self._draw_z(codes, key)
    tokens_BxT = self.tokens(target)
    log_px_B = -self._recon(self.teacher_forced_logits(z_BxD, tokens_BxT), tokens_BxT)
    return {
      "log_px_given_z": log_px_B,
      "log_pz_minus_log_qz": losses.log_prior_minus_log_posterior(
        z_BxD, codes["mean"], codes["logvar"]
      ),
    }


def _check_options(model_config, opts, num_steps: int) -> None:
  for name in ("encoder_units", "conductor_units", "decoder_units", "steps_per_bar"):
    options.check(opts[name] >= 1, model_config, name, f"must be >= 1, got {opts[name]}")
  options.check(
    opts["decoder"] in DECODERS, model_config, "decoder",
    f"unknown decoder {opts['decoder']!r}; valid: {', '.join(DECODERS)}",
  )  # fmt: skip
  if opts["decoder"] == "hierarchical":
    options.check(
      num_steps % opts["steps_per_bar"] == 0, model_config, "steps_per_bar",
      f"the hierarchical decoder needs whole bars: {num_steps} steps are not a multiple of "
      f"steps_per_bar={opts['steps_per_bar']}",
    )  # fmt: skip
  options.check(
    opts["free_bits"] >= 0.0, model_config, "free_bits", f"must be >= 0, got {opts['free_bits']}"
  )
  options.check(
    0.0 <= opts["sampling_probability"] <= 1.0, model_config, "sampling_probability",
    f"must be in [0, 1], got {opts['sampling_probability']}",
  )  # fmt: skip
  options.check(
    opts["temperature"] > 0.0, model_config, "temperature",
    f"must be > 0, got {opts['temperature']}",
  )  # fmt: skip


def build(model_config, image_shape) -> MusicVAE:
  """MusicVAE for one-hot token sequences of image_shape (T, 1, V); options in DEFAULTS."""
  opts = options.read_options(model_config, DEFAULTS)
  shape = tuple(image_shape)
  if len(shape) != 3 or shape[1] != 1 or shape[0] < 1 or shape[2] < 2:
    raise errors.ConfigError(
      f"config.data.name: model {model_config.name!r} needs one-hot token sequences of shape "
      f"(steps, 1, tokens) with at least 2 tokens, got {shape}"
    )
  if int(model_config.get("num_classes", 0)):
    raise errors.ConfigError(
      f"config.model.num_classes: model {model_config.name!r} is not conditional; set it to 0"
    )
  _check_options(model_config, opts, shape[0])
  return MusicVAE(
    latent_dim=model_config.latent_dim,
    num_steps=shape[0],
    vocab_size=shape[2],
    **opts,
  )
