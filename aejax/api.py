"""Use a trained model: `aejax.load(workdir)` -> encode, decode, generate, reconstruct.

    import aejax
    model = aejax.load("runs/conv_vae")           # newest checkpoint; step=N for another
    z = model.encode(images)                      # (N, H, W, C) in [0, 1] -> (N, latent_dim)
    x = model.decode(z)                           # -> (N, H, W, C) in [0, 1]
    samples = model.generate(64, seed=0)          # VAEs and zoo models: draws from the prior
    samples = model.generate(64, sampler="gmm")   # any model: a mixture fitted to its codes
    samples = model.generate(64, sampler="two_stage")  # or a second VAE fitted to them

Everything takes and returns NumPy arrays in the data set's image shape and
[0, 1] range. Conditional models take `labels` (int array, one per image).
Bad input raises aejax.errors.InputError; a missing or mismatched
checkpoint raises aejax.errors.CheckpointError.
"""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from aejax import (
  checkpoint,
  data,
  errors,
  losses,
  models,
  parallel,
  samplers,
  steps,
  utilisation,
)
from aejax import workdir as workdir_lib
from aejax.workdir import CONFIG_FILE, RUN_INFO_FILE

_CHUNK = 1024  # Images per jitted call: bounded memory whatever the input size.


def _as_array(value, name: str) -> np.ndarray:
  """np.asarray(value), with ragged or unconvertible input as an InputError."""
  try:
    return np.asarray(value)
  except (ValueError, TypeError) as e:
    raise errors.InputError(f"{name}: not an array of numbers ({e})") from e


def _pad(x: np.ndarray, size: int) -> np.ndarray:
  return (
    np.concatenate([x, np.zeros((size - len(x), *x.shape[1:]), x.dtype)]) if len(x) < size else x
  )


class TrainedModel:
  """A trained autoencoder or VAE with NumPy-in, NumPy-out methods."""

  def __init__(
    self, config: ml_collections.ConfigDict, params, image_shape, step: int, model, workdir=None
  ):
    self.config = config
    self.workdir = workdir  # Where fitted samplers are cached (None: nowhere).
    self.image_shape = tuple(int(d) for d in image_shape)
    self.step = int(step)
    self.model = model  # A Flax module keeping the model contract (aejax/models.py).
    self.params = params
    # The size of encode's "z": config.model.latent_dim unless the model says otherwise (a
    # VQ-VAE's z is its grid of code vectors, latent_size = h * w * D).
    self.latent_dim = int(getattr(model, "latent_size", config.model.latent_dim))
    self.num_classes = int(config.model.num_classes)
    self.is_variational = self.model.is_variational
    # The run's config.matmul_precision (configs saved before the field existed: the default).
    self.matmul_precision = config.get("matmul_precision", "default")
    self._encode = jax.jit(lambda p, x, y: self.apply({"params": p}, x, y, method="encode"))
    self._decode = jax.jit(lambda p, z, y: self.apply({"params": p}, z, y, method="decode"))
    self._sample_fn = None
    # A run on token sequences (data.SEQUENCE_SETS: melodies) sees them as one-hot (T, 1, V)
    # images; its methods also take (N, T) int tokens, and `tokens` turns outputs back into them.
    self.is_sequence_model = config.data.name in data.SEQUENCE_SETS

  def apply(self, *args, **kwargs):
    """`self.model.apply` at the run's matmul precision: what the methods below trace."""
    with utilisation.matmul_precision(self.matmul_precision):
      return self.model.apply(*args, **kwargs)

  # -- input checks -------------------------------------------------------

  def _check_images(self, images, name: str = "images") -> np.ndarray:
    x = _as_array(images, name)
    if self.is_sequence_model and x.ndim == 2 and np.issubdtype(x.dtype, np.integer):
      x = self._one_hot(x, name)
    given = x.shape
    height, width, channels = self.image_shape
    if x.ndim == 3 and channels == 1:
      x = x[..., None]  # (N, H, W) grey images are welcome.
    if x.ndim != 4:
      raise errors.InputError(
        f"{name}: expected shape (N, {height}, {width}, {channels}), got {given}"
      )
    allowed = {(height, width)}
    if self.config.task.name == "superres":
      factor = self.config.task.superres_factor
      allowed.add((height // factor, width // factor))
    if tuple(x.shape[1:3]) not in allowed or x.shape[3] != channels:
      sizes = " or ".join(f"(N, {h}, {w}, {channels})" for h, w in sorted(allowed))
      raise errors.InputError(f"{name}: expected shape {sizes}, got {given}")
    if not np.issubdtype(x.dtype, np.floating):
      raise errors.InputError(
        f"{name}: dtype {x.dtype}; expected floating point values in [0, 1] "
        "(divide uint8 images by 255)"
      )
    if not np.all(np.isfinite(x)):
      raise errors.InputError(f"{name}: contains NaN or inf")
    if x.size and (x.min() < 0.0 or x.max() > 1.0):
      raise errors.InputError(
        f"{name}: values must lie in [0, 1], got [{x.min():.3g}, {x.max():.3g}]"
      )
    return x.astype(np.float32)

  def _one_hot(self, tokens_NxT: np.ndarray, name: str) -> np.ndarray:
    """(N, T) int tokens -> the (N, T, 1, V) one-hot "images" a sequence model sees."""
    num_steps, _, vocab = self.image_shape
    if tokens_NxT.shape[1] != num_steps:
      raise errors.InputError(
        f"{name}: expected tokens of shape (N, {num_steps}), got {tokens_NxT.shape}"
      )
    if tokens_NxT.size and (tokens_NxT.min() < 0 or tokens_NxT.max() >= vocab):
      raise errors.InputError(
        f"{name}: tokens must lie in [0, {vocab}), got [{tokens_NxT.min()}, {tokens_NxT.max()}]"
      )
    return np.eye(vocab, dtype=np.float32)[tokens_NxT][:, :, None, :]

  def tokens(self, outputs) -> np.ndarray:
    """Sequence models: (N, T) int32 tokens of `decode`, `reconstruct` or `generate`'s outputs
    (each step's most likely token); aejax.chorales.decode_melody turns a row into notes."""
    if not self.is_sequence_model:
      raise errors.InputError(
        f"tokens: {self.config.data.name} is not a sequence data set (data.SEQUENCE_SETS)"
      )
    x = self._check_images(outputs, "outputs")
    return x[:, :, 0, :].argmax(axis=-1).astype(np.int32)

  def _check_latents(self, latents) -> np.ndarray:
    z = _as_array(latents, "latents")
    if z.ndim != 2 or z.shape[1] != self.latent_dim:
      raise errors.InputError(f"latents: expected shape (N, {self.latent_dim}), got {z.shape}")
    if not np.issubdtype(z.dtype, np.floating) or not np.all(np.isfinite(z)):
      raise errors.InputError("latents: expected finite floating point values")
    return z.astype(np.float32)

  def _check_labels(self, labels, n: int) -> np.ndarray | None:
    if not self.num_classes:
      if labels is not None:
        raise errors.InputError("labels: this model is not conditional; pass labels=None")
      return None
    if labels is None:
      raise errors.InputError(
        f"labels: this conditional model needs one class label in [0, {self.num_classes}) per image"
      )
    y = _as_array(labels, "labels")
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
      raise errors.InputError(f"labels: expected {n} integers, got shape {y.shape} {y.dtype}")
    if n and (y.min() < 0 or y.max() >= self.num_classes):
      raise errors.InputError(f"labels: values must lie in [0, {self.num_classes})")
    return y.astype(np.int32)

  def _chunked(self, fn, *arrays):
    """Applies fn to chunks of the leading axis and concatenates the (pytree) results.

    Each chunk is zero-padded to a power of two (at least 16), so any number
    of images compiles at most a handful of shapes instead of one per size.
    """
    n = len(arrays[0])
    outs = []
    for start in range(0, n, _CHUNK):
      size = min(_CHUNK, n - start)
      padded = max(16, 1 << (size - 1).bit_length())
      part = [None if a is None else _pad(a[start : start + size], padded) for a in arrays]
      outs.append(jax.tree.map(lambda x, size=size: x[:size], jax.device_get(fn(*part))))
    if not outs:
      raise errors.InputError("no images given (N = 0)")
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)

  # -- the API ------------------------------------------------------------

  def posterior(self, images, labels=None) -> tuple[np.ndarray, np.ndarray]:
    """VAEs: the mean and log-variance of q(z|x), each (N, latent_dim)."""
    if not self.is_variational:
      raise errors.InputError("posterior: this model is a plain autoencoder, not a VAE")
    x = self._check_images(images)
    y = self._check_labels(labels, len(x))
    out = self._chunked(lambda a, b: self._encode(self.params, a, b), x, y)
    return out["mean"], out["logvar"]

  def encode(self, images, labels=None) -> np.ndarray:
    """The embedding of each image, (N, latent_dim): z for an AE, the posterior mean for a VAE."""
    x = self._check_images(images)
    y = self._check_labels(labels, len(x))
    out = self._chunked(lambda a, b: self._encode(self.params, a, b), x, y)
    return out["mean"] if self.is_variational else out["z"]

  def decode(self, latents, labels=None) -> np.ndarray:
    """Images (N, H, W, C) in [0, 1]: the decoder's mean, sigmoid(logits)."""
    z = self._check_latents(latents)
    y = self._check_labels(labels, len(z))
    return self._chunked(lambda a, b: jax.nn.sigmoid(self._decode(self.params, a, b)), z, y)

  def reconstruct(self, images, labels=None) -> np.ndarray:
    """decode(encode(images)): the deterministic reconstruction (posterior mean for a VAE)."""
    return self.decode(self.encode(images, labels), labels)

  @property
  def can_generate(self) -> bool:
    """A model with a prior to sample: a VAE (N(0, I)), or a model with its own `sample`."""
    return hasattr(self.model, "sample") or self.is_variational

  def generate(
    self, n: int, seed: int = 0, labels=None, sampler: str = "prior", temperature=None
  ) -> np.ndarray:
    """n images (N, H, W, C) in [0, 1] drawn with `seed` by `sampler` (aejax/samplers.py):

    "prior": the model's prior: its own `sample` hook (a VampPrior, a
    hierarchy), else z ~ N(0, I) decoded (VAEs); "gmm": a Gaussian mixture
    fitted to the codes of the training images (Ghosh et al.'s ex-post
    sampler, any unconditional model, cached in the workdir); "two_stage": a
    second VAE fitted to those codes (Dai & Wipf's second stage, likewise).
    `temperature` (> 0): the prior's sampling temperature for a model that
    has one (music_vae draws each token from softmax(logits / temperature));
    None: the run's own.
    """
    samplers.check_sampler(sampler)
    if temperature is not None:
      if "temperature" not in getattr(self.model, "__dataclass_fields__", {}):
        raise errors.InputError(
          f"temperature: {self.config.model.name} samples with no temperature (music_vae has one)"
        )
      if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise errors.InputError(f"temperature: expected a number > 0, got {temperature!r}")
      if not temperature > 0 or sampler != "prior":
        raise errors.InputError(
          f"temperature: expected a number > 0 with sampler='prior', got {temperature!r} "
          f"with sampler={sampler!r}"
        )
      temperature = float(temperature)
    if not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 1:
      raise errors.InputError(f"n: expected a positive integer, got {n!r}")
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or not 0 <= seed < 2**32:
      raise errors.InputError(f"seed: expected an integer in [0, 2**32), got {seed!r}")
    if sampler in samplers.EX_POST:
      return self.decode(samplers.ex_post_latents(self, sampler, int(n), int(seed)), labels)
    if not self.can_generate:
      raise errors.InputError(
        f"generate: {self.config.model.name} is a plain autoencoder with no prior to sample "
        "from; use sampler='gmm' (a mixture fitted to its codes), sampler='two_stage' (a second "
        "VAE fitted to them) or train a VAE"
      )
    key = jax.random.key(seed)
    if hasattr(self.model, "sample"):
      y = self._check_labels(labels, int(n))
      logits = self._sample(self.params, key, int(n), y, temperature)
      return np.asarray(jax.device_get(jax.nn.sigmoid(logits)))
    z = np.asarray(jax.random.normal(key, (int(n), self.latent_dim)))
    return self.decode(z, labels)

  def _sample(self, params, key, n: int, labels, temperature=None):
    """The model's `sample` hook, jitted once per (n, labels given, temperature)."""
    if self._sample_fn is None:

      def sample(p, k, n, y, temperature):
        model = self.model if temperature is None else self.model.clone(temperature=temperature)
        with utilisation.matmul_precision(self.matmul_precision):
          return model.apply({"params": p}, k, n, y, method="sample")

      self._sample_fn = jax.jit(sample, static_argnums=(2, 4))
    return self._sample_fn(params, key, n, labels, temperature)

  def log_likelihood(self, images, latents, labels=None) -> np.ndarray:
    """log p(x | z) of each image under the decoder, summed over pixels: (N,), nats."""
    x = self._check_images(images)
    z = self._check_latents(latents)
    if len(z) != len(x):
      raise errors.InputError(f"latents: {len(z)} latents for {len(x)} images")
    y = self._check_labels(labels, len(x))
    likelihood = self.config.model.likelihood
    fixed_log_scale = jnp.asarray(self.config.model.log_scale, jnp.float32)

    def fn(x, z, y):
      logits = self._decode(self.params, z, y)
      log_scale = fixed_log_scale
      if self.config.model.learn_log_scale:
        log_scale = self.params["likelihood"]["log_scale"]
      return -losses.reconstruction_nll(likelihood, logits, x, log_scale)

    return self._chunked(fn, x, z, y)


def load(
  workdir: str | os.PathLike, step: int | None = None, *, trust_model_code: bool = False
) -> TrainedModel:
  """The model trained in `workdir`, restored from its newest checkpoint (or `step`).

  A workdir is data: if its config names a model by import path
  (`module.path:function`), that module is imported only with
  `trust_model_code=True` or if this process imported it already.
  """
  workdir = workdir_lib.as_path(workdir)
  if not workdir.is_dir():
    raise errors.CheckpointError(f"workdir {workdir} does not exist")
  for name in (CONFIG_FILE, RUN_INFO_FILE):
    if not (workdir / name).is_file():
      raise errors.CheckpointError(
        f"{workdir / name} is missing: not an aejax workdir, or training never started"
      )
  try:
    config = ml_collections.ConfigDict(json.loads((workdir / CONFIG_FILE).read_text()))
    run_info = json.loads((workdir / RUN_INFO_FILE).read_text())
    image_shape = tuple(int(d) for d in run_info["image_shape"])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise errors.CheckpointError(
      f"{workdir}: unreadable config.json or {RUN_INFO_FILE} ({type(e).__name__}: {e})"
    ) from e

  ckpt_dir = workdir_lib.local_absolute(workdir) / workdir_lib.CHECKPOINTS_DIR
  if not ckpt_dir.is_dir():
    raise errors.CheckpointError(f"{ckpt_dir} does not exist: no checkpoint was saved")
  # One unnamed item, as checkpoint.checkpoint_manager writes it.
  manager = checkpoint.read_only_manager(ckpt_dir, item_handlers=ocp.StandardCheckpointHandler())
  saved_steps = sorted(manager.all_steps())
  if not saved_steps:
    raise errors.CheckpointError(f"{ckpt_dir} holds no checkpoint")
  if step is not None and step not in saved_steps:
    raise errors.CheckpointError(
      f"no checkpoint for step {step} in {ckpt_dir}; available: {', '.join(map(str, saved_steps))}"
    )

  # The abstract state (shapes only) of this config, on one device, to restore into.
  model = models.build_model(config.model, image_shape, trust_model_code=trust_model_code)
  tx = steps.make_optimizer(model, config, max(1, config.total_steps), 1)
  mesh = parallel.make_mesh(jax.local_devices()[:1])
  with utilisation.matmul_precision(config.get("matmul_precision", "default")):
    abstract = jax.eval_shape(
      lambda: steps.create_train_state(model, tx, image_shape, jax.random.key(0), mesh)
    )
  sharding = parallel.replicated(mesh)
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract
  )
  try:
    if step is None:
      # The newest intact checkpoint: a damaged newer one is reported and skipped, not renamed
      # (loading never changes the workdir).
      state = checkpoint.restore_latest(manager, abstract, set_aside=False)
    else:
      state = checkpoint.restore_checkpoint(manager, step, abstract)
  except errors.CheckpointError as e:
    manager.close()
    raise errors.CheckpointError(
      f"{workdir / CONFIG_FILE} (model {config.model.name}, image shape {image_shape}) "
      f"does not match the checkpoints in {ckpt_dir}, or they are damaged: {e}"
    ) from e
  manager.close()
  return TrainedModel(config, state.params, image_shape, int(state.step), model, workdir)
