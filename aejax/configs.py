"""The full default experiment config and its validation.

Every experiment in experiments/ starts from `default_config()` and overrides
a few fields, so every config has every field (and `--config.FIELD=VALUE`
works for all of them). Numbers derived from others (steps per epoch,
per-device batch) are computed by the trainer, never stored here.
"""

import ml_collections

from aejax import errors, losses, models, optim, tasks

DATA_SOURCES = ("auto", "tfds", "idx", "amat", "digits")


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 128  # Global batch, split over all devices.
  c.num_epochs = 10
  c.total_steps = 0  # > 0 overrides num_epochs.

  c.data = ml_collections.ConfigDict()
  c.data.name = "mnist"  # mnist, fashion_mnist, binarized_mnist, digits, or any tfds image set.
  c.data.source = "auto"  # auto: local folder if data_dir has it, else tfds (digits: embedded).
  c.data.data_dir = ""  # Empty: $AEJAX_DATA_DIR.
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.dynamic_binarization = False  # Fresh Bernoulli sample of each image every time it is used.
  c.data.train_limit = 0  # > 0: keep only the first N training images (tiny runs).
  c.data.eval_limit = 0

  c.task = ml_collections.ConfigDict()
  c.task.name = "reconstruct"  # reconstruct, denoise, superres.
  c.task.noise_type = "gaussian"  # gaussian, salt_and_pepper.
  c.task.noise_mean = 0.0  # The lesson's denoiser: noise_mean 0.5, noise_std 0.5.
  c.task.noise_std = 0.5
  c.task.noise_amount = 0.2  # Fraction of pixels hit by salt_and_pepper.
  c.task.superres_factor = 2  # 2: 28 -> 14 input, 4: 28 -> 7.

  c.model = ml_collections.ConfigDict()
  c.model.name = "dense_vae"
  c.model.latent_dim = 2
  c.model.hidden_widths = (512,)  # Dense models; the decoder mirrors them.
  c.model.conv_channels = (32, 64)  # Conv models: one stride-2 conv per entry.
  c.model.activation = "relu"
  c.model.likelihood = "bernoulli"  # bernoulli (sigmoid cross-entropy) or gaussian.
  c.model.log_scale = 0.0  # Gaussian: log standard deviation (fixed, or the initial value).
  c.model.learn_log_scale = False
  c.model.num_classes = 0  # > 0: conditional model (one-hot label into encoder and decoder).

  c.objective = ml_collections.ConfigDict()
  c.objective.beta = 1.0  # KL weight (VAEs); 1 is the ELBO.
  c.objective.kl_warmup_steps = 0  # Linear ramp of the KL weight from 0 over this many steps.

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = "constant"
  c.optimizer.warmup_steps = 0
  c.optimizer.piecewise_boundaries = ()
  c.optimizer.piecewise_scales = ()
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 1e-4
  c.optimizer.momentum = 0.0
  c.optimizer.rmsprop_decay = 0.9
  c.optimizer.grad_clip_norm = 0.0  # > 0: clip gradients to this global norm.

  c.log_every_steps = 100
  c.eval_every_steps = 0  # 0: once per epoch (and always at the end).
  c.checkpoint_every_steps = 0  # 0: once per epoch (and always at the end).
  c.keep_checkpoints = 3
  c.eval_batch_size = 1000
  c.num_figure_images = 10
  c.final_figures = True  # After the last step: latent grid/scatter, interpolation, task metrics.
  c.scatter_method = "pca"  # Latent scatter above 2-D: "pca" or "tsne" (slower).
  c.progress_bar = True
  return c


def _fail(field: str, message: str):
  raise errors.ConfigError(f"config.{field}: {message}")


def validate(c: ml_collections.ConfigDict, num_devices: int) -> None:
  """Fails fast, before any data loading or compilation, naming the bad field."""
  for field in ("batch_size", "eval_batch_size"):
    value = c[field]
    if not isinstance(value, int) or value < 1:
      _fail(field, f"must be a positive integer, got {value!r}")
    if value % num_devices:
      _fail(field, f"{value} is not divisible by the number of devices ({num_devices})")
  if c.num_epochs < 1 and c.total_steps < 1:
    _fail("num_epochs", "set num_epochs >= 1 or total_steps >= 1")
  for field in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps"):
    if c[field] < 0:
      _fail(field, f"must be >= 0, got {c[field]}")
  if c.log_every_steps == 0:
    _fail("log_every_steps", "must be >= 1")
  if c.keep_checkpoints < 1:
    _fail("keep_checkpoints", f"must be >= 1, got {c.keep_checkpoints}")
  if c.data.source not in DATA_SOURCES:
    _fail("data.source", f"unknown source {c.data.source!r}; valid: {', '.join(DATA_SOURCES)}")
  if c.task.name not in tasks.TASKS:
    _fail("task.name", f"unknown task {c.task.name!r}; valid: {', '.join(tasks.TASKS)}")
  if c.task.name == "denoise" and c.task.noise_type not in tasks.NOISE_TYPES:
    _fail(
      "task.noise_type",
      f"unknown noise {c.task.noise_type!r}; valid: {', '.join(tasks.NOISE_TYPES)}",
    )
  if c.task.name == "superres" and c.task.superres_factor < 2:
    _fail("task.superres_factor", f"must be >= 2, got {c.task.superres_factor}")
  if c.model.name not in models.MODELS:
    _fail("model.name", f"unknown model {c.model.name!r}; valid: {', '.join(models.MODELS)}")
  if c.model.latent_dim < 1:
    _fail("model.latent_dim", f"must be >= 1, got {c.model.latent_dim}")
  if c.model.num_classes < 0:
    _fail("model.num_classes", f"must be >= 0, got {c.model.num_classes}")
  if c.model.activation not in models.ACTIVATIONS:
    _fail(
      "model.activation",
      f"unknown activation {c.model.activation!r}; valid: {', '.join(models.ACTIVATIONS)}",
    )
  if c.model.likelihood not in losses.LIKELIHOODS:
    _fail(
      "model.likelihood",
      f"unknown likelihood {c.model.likelihood!r}; valid: {', '.join(losses.LIKELIHOODS)}",
    )
  if c.scatter_method not in ("pca", "tsne"):
    _fail("scatter_method", f"unknown method {c.scatter_method!r}; valid: pca, tsne")
  if c.objective.beta < 0:
    _fail("objective.beta", f"must be >= 0, got {c.objective.beta}")
  if c.optimizer.name not in optim.OPTIMIZERS:
    _fail(
      "optimizer.name",
      f"unknown optimizer {c.optimizer.name!r}; valid: {', '.join(optim.OPTIMIZERS)}",
    )
  if c.optimizer.schedule not in optim.SCHEDULES:
    _fail(
      "optimizer.schedule",
      f"unknown schedule {c.optimizer.schedule!r}; valid: {', '.join(optim.SCHEDULES)}",
    )
  if not c.optimizer.learning_rate > 0:
    _fail("optimizer.learning_rate", f"must be > 0, got {c.optimizer.learning_rate}")


def parse_arg(arg: str | None, valid: tuple[str, ...]) -> set[str]:
  """Splits a config argument like 'tiny,4x' into its words; unknown words are an error."""
  words = {w.strip() for w in (arg or "").split(",") if w.strip()}
  unknown = words - set(valid)
  if unknown:
    raise errors.ConfigError(
      f"config argument: unknown {', '.join(sorted(unknown))}; valid: {', '.join(valid)}"
    )
  return words


def make_tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The `:tiny` variant of any experiment: same model and task, a few images, seconds on CPU."""
  c.data.train_limit = 256
  c.data.eval_limit = 64
  c.batch_size = 32
  c.eval_batch_size = 64
  c.num_epochs = 1
  c.total_steps = 16
  c.log_every_steps = 4
  c.eval_every_steps = 8
  c.checkpoint_every_steps = 8
  c.num_figure_images = 4
  c.progress_bar = False
  return c
