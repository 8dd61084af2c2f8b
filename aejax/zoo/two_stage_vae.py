"""The two-stage VAE: a Gaussian VAE with a learned decoder variance, then a VAE of its codes.

Dai & Wipf (2019), "Diagnosing and Enhancing VAE Models" (ICLR). A VAE with
a Gaussian decoder N(x; mu_x(z), gamma I) whose variance gamma is learned can
send gamma towards 0 and reconstruct sharply, but its aggregate posterior
q(z) = E_x q(z|x) then need not be N(0, I), so z ~ N(0, I) decodes to poor
samples. The paper's remedy is a second VAE fitted to codes z ~ q(z|x) of the
training images: u ~ N(0, I) -> z = the second decoder's mean -> x.

First stage (`build`): aejax's VAE (aejax/vae.py). With the paper's
config.model.likelihood "gaussian" (or "discretized_logistic"), `build`
requires config.model.learn_log_scale True: the decoder's log standard
deviation is one learned scalar (gamma = exp(2 * log_scale)). A Bernoulli
decoder on binary data (the zoo table's protocol) has no variance to learn;
the second stage applies to its codes all the same. Option `network`: aejax's "dense" or "conv"
networks (models.build_networks). Its loss is the VAE's ELBO.

Second stage (this file, fitted after training by aejax/samplers.py, sampler
"two_stage", for this model or any unconditional model with a continuous code):
- `SecondStage`: an encoder z -> (mean_u, logvar_u) and a decoder u -> z_hat,
  each `widths` ReLU dense layers whose last hidden layer is concatenated
  with the layer's input before the linear output (as in the authors' released
  code), u of the same size as z, and one learned scalar log gamma_z, the log
  VARIANCE of p(z|u) = N(z; z_hat(u), gamma_z I) (the paper's gamma; the
  authors' code parameterises a standard deviation, the same model).
- `second_stage_terms`: per code, nats: kl = KL(q(u|z) || N(0, I)) and
  nll = -log N(z; z_hat(u), gamma_z I) at one reparameterised u; loss = kl + nll.
- `fit`: Adam on that loss for `steps` minibatches of `batch_size` codes drawn
  with replacement; each code is z = mean + std * eps with fresh eps at every
  draw (std 0 for a deterministic model's codes), as the authors' code draws
  z ~ q(z|x) anew every epoch. The learning rate decays by a cosine to 0.
  The codes are centred and divided by one number, their root mean variance,
  and mapped back after sampling: a change of units that leaves the model as
  it is (gamma_z scales with them) but lets Adam start at the codes' scale,
  whatever a model's code scale is (the authors fit a VAE's codes, near unit
  scale, in raw units). Losses are reported in nats per code of the original
  codes. Deterministic in its inputs, settings and seed.
- `sample_codes`: u ~ N(0, I), z ~ N(z_hat(u), gamma_z I), the second stage's
  generative model, as the authors' code samples it (gamma_z shrinks as the
  fit improves, so z is close to the decoder's mean z_hat(u)).
- `save` / `load`: the parameters and settings in one msgpack file
  (flax.serialization), written atomically.

Defaults and deviations: the paper's second stage is 3 x 1024 dense layers
trained for 800 epochs (Adam 1e-4, halved every 300 epochs, batch 64) on all
training codes; here 2 x 512 layers, 3,000 Adam steps of 128 codes from at
most 10,000 training images, lr 3e-3 with a cosine decay, so that the fit
takes seconds on one CPU core. Options second_widths, second_steps,
second_learning_rate, second_batch_size and second_max_codes set them for a
two_stage_vae; other models get the defaults.
"""

import dataclasses
import functools
import math
import os
import pathlib
import tempfile

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from aejax import errors, losses, models
from aejax.vae import VAE
from aejax.zoo import options

_LOG_2PI = math.log(2.0 * math.pi)
_FORMAT_VERSION = 1
_STEPS_PER_DISPATCH = 100  # Adam steps fused into one jitted scan.

NETWORKS = ("dense", "conv")


@dataclasses.dataclass(frozen=True)
class Settings:
  """How the second stage is built and fitted (the options second_* of a two_stage_vae)."""

  widths: tuple[int, ...] = (512, 512)
  steps: int = 3000
  learning_rate: float = 3e-3
  batch_size: int = 128
  max_codes: int = 10_000  # Training images whose codes the second stage is fitted to.

  def tag(self) -> str:
    """The settings in a file name: w512x512_s3000_lr0.003_b128_n10000."""
    widths = "x".join(str(w) for w in self.widths)
    return f"w{widths}_s{self.steps}_lr{self.learning_rate:g}_b{self.batch_size}_n{self.max_codes}"


DEFAULTS = {
  "network": "dense",
  "second_widths": Settings.widths,
  "second_steps": Settings.steps,
  "second_learning_rate": Settings.learning_rate,
  "second_batch_size": Settings.batch_size,
  "second_max_codes": Settings.max_codes,
}


def read_settings(model_config) -> Settings:
  """The second stage's settings from a two_stage_vae's options, checked; ConfigError if bad."""
  opts = options.read_options(model_config, DEFAULTS)
  widths = tuple(opts["second_widths"])
  options.check(
    all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths),
    model_config, "second_widths", f"expected a tuple of integers >= 1, got {widths!r}",
  )  # fmt: skip
  for name, minimum in (("second_steps", 1), ("second_batch_size", 1), ("second_max_codes", 2)):
    options.check(
      opts[name] >= minimum, model_config, name, f"must be >= {minimum}, got {opts[name]}"
    )
  rate = opts["second_learning_rate"]
  options.check(
    math.isfinite(rate) and rate > 0.0, model_config, "second_learning_rate",
    f"must be a finite number > 0, got {rate}",
  )  # fmt: skip
  return Settings(
    widths=widths,
    steps=opts["second_steps"],
    learning_rate=float(rate),
    batch_size=opts["second_batch_size"],
    max_codes=opts["second_max_codes"],
  )


# -- the first stage ------------------------------------------------------------


class TwoStageVAE(VAE):
  """Dai & Wipf's first stage: aejax's VAE with a learned Gaussian decoder variance."""

  # The samplers whose FID aejax.evaluate reports besides the prior's (fid_two_stage).
  fid_samplers = ("two_stage",)
  # How the `two_stage` sampler builds and fits this model's second stage (options second_*);
  # other models get Settings() (aejax/samplers.py).
  second_stage: Settings = Settings()


def build(model_config, image_shape) -> TwoStageVAE:
  """The first stage of `model_config` (option network); the second stage's options are checked."""
  opts = options.read_options(model_config, DEFAULTS)
  options.check(
    opts["network"] in NETWORKS, model_config, "network",
    f"unknown network {opts['network']!r}; valid: {', '.join(NETWORKS)}",
  )  # fmt: skip
  second_stage = read_settings(model_config)  # A bad option fails now, not after training.
  name = model_config.name
  learned_scale = model_config.likelihood in losses.SCALED_LIKELIHOODS
  if learned_scale and not model_config.get("learn_log_scale", False):
    raise errors.ConfigError(
      f"config.model.learn_log_scale: model {name!r} with the {model_config.likelihood!r} "
      "likelihood learns the decoder variance gamma (the paper's point); set it to True"
    )
  if int(model_config.get("num_classes", 0)):
    raise errors.ConfigError(
      f"config.model.num_classes: model {name!r} is not conditional; set it to 0"
    )
  encoder, decoder = models.build_networks(
    model_config, image_shape, 2 * model_config.latent_dim, opts["network"], name
  )
  return TwoStageVAE(
    encoder=encoder,
    decoder=decoder,
    output_shape=tuple(image_shape),
    latent_dim=model_config.latent_dim,
    learn_log_scale=learned_scale,
    init_log_scale=float(model_config.get("log_scale", 0.0)),
    second_stage=second_stage,
  )


# -- the second stage -----------------------------------------------------------


class _SkipMLP(nn.Module):
  """ReLU dense layers of `widths`, the input concatenated to the last, then Dense(out_dim)."""

  widths: tuple[int, ...]
  out_dim: int

  @nn.compact
  def __call__(self, x_BxD: jax.Array) -> jax.Array:
    h = x_BxD
    for width in self.widths:
      h = nn.relu(nn.Dense(width)(h))
    return nn.Dense(self.out_dim)(jnp.concatenate([x_BxD, h], axis=-1))


class SecondStage(nn.Module):
  """q(u|z) = N(mean_u, diag(exp(logvar_u))), p(z|u) = N(z_hat(u), gamma_z I), p(u) = N(0, I)."""

  widths: tuple[int, ...]
  dim: int  # Of z and of u.

  def setup(self):
    self.encoder = _SkipMLP(self.widths, 2 * self.dim)
    self.decoder = _SkipMLP(self.widths, self.dim)
    self.log_gamma_z = self.param("log_gamma_z", nn.initializers.zeros, ())

  def encode(self, z_BxD: jax.Array) -> tuple[jax.Array, jax.Array]:
    mean_u, logvar_u = jnp.split(self.encoder(z_BxD), 2, axis=-1)
    return mean_u, logvar_u

  def decode(self, u_BxD: jax.Array) -> jax.Array:
    return self.decoder(u_BxD)

  def __call__(self, z_BxD: jax.Array, eps_BxD: jax.Array) -> dict[str, jax.Array]:
    """The per-code terms (see `second_stage_terms`) at u = mean_u + std_u * eps."""
    mean_u, logvar_u = self.encode(z_BxD)
    u_BxD = mean_u + jnp.exp(0.5 * logvar_u) * eps_BxD
    return second_stage_terms(z_BxD, mean_u, logvar_u, self.decode(u_BxD), self.log_gamma_z)


def second_stage_terms(z_BxD, mean_u_BxD, logvar_u_BxD, z_hat_BxD, log_gamma_z):
  """kl, nll and loss = kl + nll per code, (B,) each, nats per code.

  kl = KL(N(mean_u, diag(exp(logvar_u))) || N(0, I)); nll = -log N(z; z_hat, gamma_z I)
  = sum_j [(z_j - z_hat_j)^2 / (2 gamma_z) + log(2 pi gamma_z) / 2].
  """
  kl_B = losses.gaussian_kl(mean_u_BxD, logvar_u_BxD).sum(axis=-1)
  sq_B = jnp.sum(jnp.square(z_BxD - z_hat_BxD), axis=-1)
  dim = z_BxD.shape[-1]
  nll_B = 0.5 * sq_B * jnp.exp(-log_gamma_z) + 0.5 * dim * (_LOG_2PI + log_gamma_z)
  return {"kl": kl_B, "nll": nll_B, "loss": kl_B + nll_B}


@dataclasses.dataclass(frozen=True, eq=False)
class SecondStageFit:
  """A fitted second stage: its module and parameters, on codes in units (z - shift_D) / scale.

  `history` holds the mean minibatch loss (nats per code of the original codes)
  of each run of _STEPS_PER_DISPATCH steps (a shorter last one included), in order.
  """

  module: SecondStage
  params: dict
  settings: Settings
  seed: int
  shift_D: np.ndarray
  scale: float
  history: tuple[float, ...] = ()

  def log_jacobian(self) -> float:
    """D log(scale): nats per code from the fitted units back to the codes' own."""
    return self.module.dim * math.log(self.scale)


def _check_codes(mean_NxD, std_NxD) -> tuple[np.ndarray, np.ndarray]:
  mean = np.asarray(mean_NxD, np.float32)
  std = np.zeros_like(mean) if std_NxD is None else np.asarray(std_NxD, np.float32)
  if mean.ndim != 2 or mean.shape[0] < 2 or mean.shape[1] < 1 or std.shape != mean.shape:
    raise errors.InputError(
      f"codes: expected (N >= 2, D) means and standard deviations of one shape, got "
      f"{mean.shape} and {std.shape}"
    )
  if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std >= 0)):
    raise errors.InputError("codes: NaN, infinite or negative standard deviation values")
  return mean, std


@functools.lru_cache(maxsize=8)
def _chunk_runner(widths: tuple[int, ...], dim: int, settings: Settings):
  """(module, optimizer, jitted run of a chunk of Adam steps); cached so that refits reuse it."""
  module = SecondStage(widths, dim)
  tx = optax.adam(optax.cosine_decay_schedule(settings.learning_rate, settings.steps))
  batch = settings.batch_size

  def loss_fn(params, mean_NxD, std_NxD, key):
    key_index, key_z, key_u = jax.random.split(key, 3)
    index_B = jax.random.randint(key_index, (batch,), 0, mean_NxD.shape[0])
    z_BxD = mean_NxD[index_B] + std_NxD[index_B] * jax.random.normal(key_z, (batch, dim))
    eps_BxD = jax.random.normal(key_u, (batch, dim))
    return jnp.mean(module.apply({"params": params}, z_BxD, eps_BxD)["loss"])

  @jax.jit
  def run(carry, mean_NxD, std_NxD, keys):
    def step(carry, key):
      params, opt_state = carry
      loss, grads = jax.value_and_grad(loss_fn)(params, mean_NxD, std_NxD, key)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    carry, losses_S = jax.lax.scan(step, carry, keys)
    return carry, jnp.mean(losses_S)

  return module, tx, run


def fit(mean_NxD, std_NxD=None, settings: Settings = Settings(), seed: int = 0) -> SecondStageFit:
  """The second stage fitted to codes z = mean + std * eps (std None: the means themselves).

  Deterministic in (codes, settings, seed) on one backend.
  """
  mean_NxD, std_NxD = _check_codes(mean_NxD, std_NxD)
  num, dim = mean_NxD.shape
  # The variance of the draws z per dimension: of the means, plus the mean posterior variance.
  shift_D = mean_NxD.astype(np.float64).mean(axis=0)
  variance = np.mean(mean_NxD.astype(np.float64).var(axis=0) + np.mean(np.square(std_NxD), axis=0))
  scale = math.sqrt(variance) if variance > 0 else 1.0
  mean_NxD = ((mean_NxD - shift_D) / scale).astype(np.float32)
  std_NxD = (std_NxD / scale).astype(np.float32)
  log_jacobian = dim * math.log(scale)
  module, tx, run = _chunk_runner(tuple(settings.widths), dim, settings)
  key_init, key_train = jax.random.split(jax.random.key(seed))
  params = module.init(key_init, mean_NxD[:1], np.zeros((1, dim), np.float32))["params"]
  carry, history = (params, tx.init(params)), []
  keys = jax.random.split(key_train, settings.steps)
  for start in range(0, settings.steps, _STEPS_PER_DISPATCH):
    carry, loss = run(carry, mean_NxD, std_NxD, keys[start : start + _STEPS_PER_DISPATCH])
    history.append(float(loss) + log_jacobian)
  if not math.isfinite(history[-1]):
    raise errors.InputError(
      f"two-stage sampler: the second stage's loss became {history[-1]} while fitting "
      f"{num} codes of dimension {dim}; try a smaller second_learning_rate"
    )
  params = jax.device_get(carry[0])
  return SecondStageFit(
    module, params, settings, int(seed), shift_D.astype(np.float32), scale, tuple(history)
  )


def sample_codes(fitted: SecondStageFit, n: int, seed: int) -> np.ndarray:
  """n codes (n, D) float32 drawn with `seed`: u ~ N(0, I), z ~ N(z_hat(u), gamma_z I)."""
  key_u, key_z = jax.random.split(jax.random.key(seed))
  shape = (n, fitted.module.dim)
  z_hat_NxD = fitted.module.apply(
    {"params": fitted.params}, jax.random.normal(key_u, shape), method="decode"
  )
  std_z = jnp.exp(0.5 * fitted.params["log_gamma_z"])
  z_NxD = z_hat_NxD + std_z * jax.random.normal(key_z, shape)
  return (fitted.shift_D + fitted.scale * np.asarray(jax.device_get(z_NxD))).astype(np.float32)


def mean_loss(fitted: SecondStageFit, z_NxD, seed: int = 0) -> float:
  """The mean loss (kl + nll, nats per code) of the fitted stage on codes z, one u per code."""
  z_NxD = ((np.asarray(z_NxD, np.float64) - fitted.shift_D) / fitted.scale).astype(np.float32)
  eps = jax.random.normal(jax.random.key(seed), z_NxD.shape)
  terms = fitted.module.apply({"params": fitted.params}, z_NxD, eps)
  return float(jnp.mean(terms["loss"])) + fitted.log_jacobian()


def save(fitted: SecondStageFit, path) -> None:
  """Writes the fit to `path` (msgpack): a temporary file in the same folder, then a rename."""
  path = pathlib.Path(path)
  state = {
    "version": _FORMAT_VERSION,
    "dim": fitted.module.dim,
    "widths": list(fitted.settings.widths),
    "settings": {
      "steps": fitted.settings.steps,
      "learning_rate": fitted.settings.learning_rate,
      "batch_size": fitted.settings.batch_size,
      "max_codes": fitted.settings.max_codes,
    },
    "seed": fitted.seed,
    "shift": np.asarray(fitted.shift_D, np.float32),
    "scale": float(fitted.scale),
    "history": np.asarray(fitted.history, np.float64),
    "params": jax.tree.map(np.asarray, fitted.params),
  }
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(flax.serialization.msgpack_serialize(state))
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def load(path) -> SecondStageFit:
  """The fit that `save` wrote to `path`; an InputError if the file is not one."""
  path = pathlib.Path(path)
  try:
    state = flax.serialization.msgpack_restore(path.read_bytes())
    if int(state["version"]) != _FORMAT_VERSION:
      raise ValueError(f"version {state['version']}, expected {_FORMAT_VERSION}")
    settings = Settings(
      widths=tuple(int(w) for w in state["widths"]),
      steps=int(state["settings"]["steps"]),
      learning_rate=float(state["settings"]["learning_rate"]),
      batch_size=int(state["settings"]["batch_size"]),
      max_codes=int(state["settings"]["max_codes"]),
    )
    module = SecondStage(settings.widths, int(state["dim"]))
    template = jax.eval_shape(
      lambda: module.init(
        jax.random.key(0), jnp.zeros((1, module.dim)), jnp.zeros((1, module.dim))
      )["params"]
    )
    params = flax.serialization.from_state_dict(template, state["params"])
    for want, got in zip(jax.tree.leaves(template), jax.tree.leaves(params), strict=True):
      if tuple(want.shape) != tuple(np.shape(got)):
        raise ValueError(f"a parameter of shape {np.shape(got)}, expected {want.shape}")
    shift_D = np.asarray(state["shift"], np.float32)
    if shift_D.shape != (module.dim,):
      raise ValueError(f"a shift of shape {shift_D.shape}, expected ({module.dim},)")
    scale = float(state["scale"])
  except (OSError, ValueError, KeyError, TypeError) as error:
    raise errors.InputError(f"{path}: not a readable two-stage sampler file ({error})") from error
  history = tuple(float(v) for v in np.asarray(state["history"]).ravel())
  return SecondStageFit(module, params, settings, int(state["seed"]), shift_D, scale, history)
