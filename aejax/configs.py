"""The full default experiment config and its validation.

Every experiment in experiments/ starts from `default_config()` and overrides
a few fields, so every config has every field (and `--config.FIELD=VALUE`
works for all of them). Numbers derived from others (steps per epoch,
per-device batch) are computed by the trainer, never stored here.
"""

import difflib
import importlib.util
import math
import pathlib
from typing import NamedTuple

import ml_collections

from aejax import errors, layers, losses, models, networks, optim, tasks, utilisation

DATA_SOURCES = ("auto", "tfds", "idx", "amat", "digits", "rendered")
# Where the training split lives while training (aejax/feeding.py).
DATA_PLACEMENTS = ("auto", "resident", "streamed")
OBJECTIVES = ("elbo", "iwae")


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 128  # Global batch, split over all devices.
  c.num_epochs = 10
  c.total_steps = 0  # > 0 overrides num_epochs.

  c.data = ml_collections.ConfigDict()
  # mnist, fashion_mnist, binarized_mnist, digits, dsprites, color_dsprites, noisy_dsprites (the
  # last three rendered from their factors, no file), or any tfds image set.
  c.data.name = "mnist"
  c.data.source = "auto"  # auto: local folder if data_dir has it, else tfds (digits: embedded).
  c.data.data_dir = ""  # Empty: $AEJAX_DATA_DIR.
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.dynamic_binarization = False  # Fresh Bernoulli sample of each image every time it is used.
  c.data.train_limit = 0  # > 0: keep only the first N training images (tiny runs).
  c.data.eval_limit = 0
  # "resident": the split on device, split over the devices (uint8 when 8-bit); "streamed":
  # read on the host a dispatch ahead; "auto": resident unless it would take more than a
  # quarter of a device's memory. Both give the same batches (aejax/feeding.py).
  c.data.placement = "auto"

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
  # bernoulli (sigmoid cross-entropy), gaussian, or discretized_logistic (8-bit levels k / 255).
  c.model.likelihood = "bernoulli"
  # gaussian: log standard deviation; discretized_logistic: log of the logistic's scale, in the
  # image's [0, 1] units. Fixed, or the initial value with learn_log_scale.
  c.model.log_scale = 0.0
  c.model.learn_log_scale = False
  c.model.num_classes = 0  # > 0: conditional model (one-hot label into encoder and decoder).
  # How the model computes, never what its parameters are (aejax/models.py): "float32", or
  # "bfloat16" for mixed precision (bf16 compute; parameters, optimizer state and losses stay
  # float32). conv_impl: "auto" (im2col on CPU, XLA's convolution elsewhere), "xla", "im2col".
  c.model.dtype = "float32"
  c.model.conv_impl = "auto"
  # A zoo model's own hyper-parameters (aejax/zoo/): each model declares its options and their
  # defaults, and rejects a name it does not know (e.g. model.options.num_pseudo_inputs).
  c.model.options = ml_collections.ConfigDict()

  c.objective = ml_collections.ConfigDict()
  # VAEs: "elbo" (one or num_samples reparameterised samples, analytic KL) or "iwae" (the
  # num_samples importance-weighted bound of Burda et al.). See train.per_image_losses.
  c.objective.name = "elbo"
  c.objective.num_samples = 1  # k: samples of z per image in the training objective.
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

  # Training steps fused into one device dispatch (a loop inside jit); dispatches also end at
  # every log, eval and checkpoint boundary. 1 gives the plain one-step-per-dispatch loop.
  c.steps_per_dispatch = 100
  # A NaN/inf loss or gradient: "stop" (default) ends the run naming the step; "skip" drops
  # that update and counts it (train/skipped_steps). Neither ever applies the bad update.
  c.nonfinite = "stop"
  c.log_every_steps = 100
  c.eval_every_steps = 0  # 0: once per epoch (and always at the end).
  c.checkpoint_every_steps = 0  # 0: once per epoch (and always at the end).
  c.keep_checkpoints = 3
  c.eval_batch_size = 1000
  c.num_figure_images = 10
  c.final_figures = True  # After the last step: latent grid/scatter, interpolation, task metrics.
  c.scatter_method = "pca"  # Latent scatter above 2-D: "pca" or "tsne" (slower).
  c.progress_bar = True
  # Matmuls and convolutions: "default" (the backend's choice), "bfloat16", "tensorfloat32" or
  # "float32" (jax_default_matmul_precision; TPUs default to one bfloat16 pass).
  c.matmul_precision = "default"
  # > 0: a jax.profiler trace of this many steps after the first dispatch, in workdir/profile.
  c.profile_steps = 0
  # The device's peak TFLOP/s for train/mfu; 0: looked up by device kind (aejax/utilisation.py).
  c.peak_tflops_per_device = 0.0
  return c


def _fail(field: str, message: str):
  raise errors.ConfigError(f"config.{field}: {message}")


# The type and range of every numeric field, checked before anything else so that the checks
# after them compare numbers: (field, int or float, minimum, maximum), None for unbounded. Ints
# stop at 2**31 - 1, where int32 step counters and XLA dimensions stop; floats must be finite.
_INT_MAX = 2**31 - 1
_NUMBERS = (
  ("seed", int, 0, 2**32 - 1),
  ("batch_size", int, 1, _INT_MAX),
  ("num_epochs", int, 0, _INT_MAX),
  ("total_steps", int, 0, _INT_MAX),
  ("data.train_limit", int, 0, _INT_MAX),
  ("data.eval_limit", int, 0, _INT_MAX),
  ("task.noise_mean", float, None, None),
  ("task.noise_std", float, 0, None),
  ("task.noise_amount", float, 0, 1),
  ("task.superres_factor", int, 1, _INT_MAX),
  ("model.latent_dim", int, 1, _INT_MAX),
  ("model.log_scale", float, None, None),
  ("model.num_classes", int, 0, _INT_MAX),
  ("objective.beta", float, 0, None),
  ("objective.kl_warmup_steps", int, 0, _INT_MAX),
  ("objective.num_samples", int, 1, _INT_MAX),
  ("optimizer.learning_rate", float, 0, None),
  ("optimizer.warmup_steps", int, 0, _INT_MAX),
  ("optimizer.b1", float, 0, 1),
  ("optimizer.b2", float, 0, 1),
  ("optimizer.eps", float, 0, None),
  ("optimizer.weight_decay", float, 0, None),
  ("optimizer.momentum", float, 0, 1),
  ("optimizer.rmsprop_decay", float, 0, 1),
  ("optimizer.grad_clip_norm", float, 0, None),
  ("steps_per_dispatch", int, 1, _INT_MAX),
  ("log_every_steps", int, 0, _INT_MAX),
  ("eval_every_steps", int, 0, _INT_MAX),
  ("checkpoint_every_steps", int, 0, _INT_MAX),
  ("keep_checkpoints", int, 1, _INT_MAX),
  ("eval_batch_size", int, 1, _INT_MAX),
  ("num_figure_images", int, 1, _INT_MAX),
  ("profile_steps", int, 0, _INT_MAX),
  ("peak_tflops_per_device", float, 0, None),
)
# Fields holding a sequence of numbers: (field, int or float, minimum of each entry).
_SEQUENCES = (
  ("model.hidden_widths", int, 1),
  ("model.conv_channels", int, 1),
  ("optimizer.piecewise_boundaries", int, 0),
  ("optimizer.piecewise_scales", float, 0),
)
_BOOLS = ("data.dynamic_binarization", "model.learn_log_scale", "final_figures", "progress_bar")
_STRINGS = (
  "data.name", "data.data_dir", "data.train_split", "data.eval_split", "data.placement",
  "model.dtype", "model.conv_impl", "matmul_precision",
)  # fmt: skip


def _get(c: ml_collections.ConfigDict, field: str):
  for part in field.split("."):
    c = c[part]
  return c


def _has(c: ml_collections.ConfigDict, field: str) -> bool:
  for part in field.split("."):
    if not isinstance(c, ml_collections.ConfigDict) or part not in c:
      return False
    c = c[part]
  return True


def _is_number(value, kind) -> bool:
  if isinstance(value, bool):
    return False
  if kind is int:
    return isinstance(value, int)
  return isinstance(value, int | float) and math.isfinite(value)


# Groups whose fields are not aejax's but a model's: the model checks them (aejax/zoo/options.py).
_FREE_GROUPS = ("model.options",)


def _check_fields(c, reference, prefix: str = "") -> None:
  """Every field of `c` exists in the default config, and every default field is in `c`."""
  for name in c.keys():
    if name not in reference:
      close = difflib.get_close_matches(name, list(reference.keys()), n=1)
      hint = f"did you mean {prefix}{close[0]}? " if close else ""
      _fail(f"{prefix}{name}", f"unknown field; {hint}valid: {', '.join(reference.keys())}")
    if isinstance(reference[name], ml_collections.ConfigDict):
      if not isinstance(c[name], ml_collections.ConfigDict):
        _fail(f"{prefix}{name}", f"must be a group of fields, got {c[name]!r}")
      if f"{prefix}{name}" not in _FREE_GROUPS:
        _check_fields(c[name], reference[name], f"{prefix}{name}.")
  for name in reference.keys():
    if name not in c:
      _fail(f"{prefix}{name}", "missing; build configs from aejax.configs.default_config()")


def _check_types(c: ml_collections.ConfigDict) -> None:
  """Unknown or missing fields, and the type and range of every number, flag and name."""
  _check_fields(c, default_config())
  for field, kind, low, high in _NUMBERS:
    if not _has(c, field):  # A field another version of aejax does not have.
      continue
    value = _get(c, field)
    what = "an integer" if kind is int else "a finite number"
    if not _is_number(value, kind):
      _fail(field, f"must be {what}, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
      bounds = f">= {low}" if high in (None, _INT_MAX) else f"in [{low}, {high}]"
      _fail(field, f"must be {what} {bounds}, got {value!r}")
  for field, kind, low in _SEQUENCES:
    value = _get(c, field)
    if not isinstance(value, tuple | list) or not all(
      _is_number(v, kind) and v >= low for v in value
    ):
      what = "integers" if kind is int else "finite numbers"
      _fail(field, f"must be a sequence of {what} >= {low}, got {value!r}")
  for field in _BOOLS:
    if not isinstance(_get(c, field), bool):
      _fail(field, f"must be True or False, got {_get(c, field)!r}")
  for field in _STRINGS:
    if not isinstance(_get(c, field), str):
      _fail(field, f"must be a string, got {_get(c, field)!r}")
  if not _get(c, "data.name"):
    _fail("data.name", "must name a data set, got ''")


def validate(c: ml_collections.ConfigDict, num_devices: int) -> None:
  """Fails fast, before any data loading or compilation, naming the bad field."""
  _check_types(c)
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
  if not isinstance(c.steps_per_dispatch, int) or c.steps_per_dispatch < 1:
    _fail("steps_per_dispatch", f"must be an integer >= 1, got {c.steps_per_dispatch!r}")
  if c.nonfinite not in ("stop", "skip"):
    _fail("nonfinite", f"unknown policy {c.nonfinite!r}; valid: stop, skip")
  if c.log_every_steps == 0:
    _fail("log_every_steps", "must be >= 1")
  if c.keep_checkpoints < 1:
    _fail("keep_checkpoints", f"must be >= 1, got {c.keep_checkpoints}")
  if c.data.placement not in DATA_PLACEMENTS:
    _fail(
      "data.placement",
      f"unknown placement {c.data.placement!r}; valid: {', '.join(DATA_PLACEMENTS)}",
    )
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
  if not models.is_known_name(c.model.name):
    _fail(
      "model.name",
      f"unknown model {c.model.name!r}; valid: {', '.join(models.model_names())}, or an importable "
      "builder as 'module.path:function'",
    )
  if c.model.latent_dim < 1:
    _fail("model.latent_dim", f"must be >= 1, got {c.model.latent_dim}")
  if c.model.num_classes < 0:
    _fail("model.num_classes", f"must be >= 0, got {c.model.num_classes}")
  if c.model.activation not in networks.ACTIVATIONS:
    _fail(
      "model.activation",
      f"unknown activation {c.model.activation!r}; valid: {', '.join(networks.ACTIVATIONS)}",
    )
  if c.model.likelihood not in losses.LIKELIHOODS:
    _fail(
      "model.likelihood",
      f"unknown likelihood {c.model.likelihood!r}; valid: {', '.join(losses.LIKELIHOODS)}",
    )
  if c.model.dtype not in networks.DTYPES:
    _fail("model.dtype", f"unknown dtype {c.model.dtype!r}; valid: {', '.join(networks.DTYPES)}")
  if c.model.conv_impl not in layers.CONV_IMPLS:
    _fail(
      "model.conv_impl",
      f"unknown convolution {c.model.conv_impl!r}; valid: {', '.join(layers.CONV_IMPLS)}",
    )
  if c.matmul_precision not in utilisation.MATMUL_PRECISIONS:
    valid = ", ".join(utilisation.MATMUL_PRECISIONS)
    _fail("matmul_precision", f"unknown precision {c.matmul_precision!r}; valid: {valid}")
  if c.scatter_method not in ("pca", "tsne"):
    _fail("scatter_method", f"unknown method {c.scatter_method!r}; valid: pca, tsne")
  if c.objective.beta < 0:
    _fail("objective.beta", f"must be >= 0, got {c.objective.beta}")
  if c.objective.name not in OBJECTIVES:
    _fail(
      "objective.name", f"unknown objective {c.objective.name!r}; valid: {', '.join(OBJECTIVES)}"
    )
  if not isinstance(c.objective.num_samples, int) or c.objective.num_samples < 1:
    _fail("objective.num_samples", f"must be an integer >= 1, got {c.objective.num_samples!r}")
  if c.objective.name == "iwae" and (c.objective.beta != 1 or c.objective.kl_warmup_steps):
    _fail(
      "objective.beta",
      "the IWAE bound has no KL term to weight: use beta=1 and kl_warmup_steps=0 with iwae",
    )
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


def validate_for_data(
  c: ml_collections.ConfigDict, image_shape, num_train: int, eval_image_shape=None
) -> None:
  """The checks that need the loaded data: run after loading it, before building anything."""
  height, width = int(image_shape[0]), int(image_shape[1])
  where = f"{c.data.name}/{c.data.train_split}"
  if c.batch_size > num_train:
    _fail(
      "batch_size",
      f"{c.batch_size} is larger than the training set ({num_train} images of {where}); "
      "lower it or raise data.train_limit",
    )
  if eval_image_shape is not None and tuple(eval_image_shape) != tuple(image_shape):
    _fail(
      "data.eval_split",
      f"images of {c.data.name}/{c.data.eval_split} have shape {tuple(eval_image_shape)}, "
      f"the training images {tuple(image_shape)}",
    )
  factor = c.task.superres_factor
  if c.task.name == "superres" and (height % factor or width % factor):
    _fail(
      "task.superres_factor",
      f"{factor} does not divide the image size {height}x{width} of {where}",
    )


def validate_objective(c: ml_collections.ConfigDict, is_variational: bool) -> None:
  """Multi-sample objectives need a posterior to sample from (checked once the model is built)."""
  if (c.objective.name != "elbo" or c.objective.num_samples > 1) and not is_variational:
    _fail(
      "objective.name",
      f"{c.objective.name!r} with num_samples={c.objective.num_samples} needs a VAE; "
      f"{c.model.name!r} is a plain autoencoder (use objective.name='elbo', num_samples=1)",
    )


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


class StepCounts(NamedTuple):
  """The step numbers a run derives from its config and the size of its training set."""

  steps_per_epoch: int
  total_steps: int
  eval_every: int
  checkpoint_every: int


def step_counts(c: ml_collections.ConfigDict, num_train: int) -> StepCounts:
  """The one place where epochs become steps (batches that do not fill a batch are dropped)."""
  steps_per_epoch = max(num_train // c.batch_size, 1)
  return StepCounts(
    steps_per_epoch=steps_per_epoch,
    total_steps=c.total_steps or c.num_epochs * steps_per_epoch,
    eval_every=c.eval_every_steps or steps_per_epoch,
    checkpoint_every=c.checkpoint_every_steps or steps_per_epoch,
  )


# ---------------------------------------------------------------------------
# Experiment files and the command that runs each kind of config.

EXPERIMENTS_FOLDER = "experiments"
# The installed copy of experiments/ (pyproject.toml maps the folder to this package).
EXPERIMENTS_PACKAGE = "aejax.experiments"

TRAIN_COMMAND = "python -m aejax.main"
PCA_VS_AE_COMMAND = "python -m aejax.pca_vs_ae"


def installed_experiments_folder() -> pathlib.Path | None:
  """The folder of the experiment configs installed with aejax; None if there is none."""
  spec = importlib.util.find_spec(EXPERIMENTS_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    return None
  return pathlib.Path(list(spec.submodule_search_locations)[0])


def resolve_experiment_arg(value: str) -> str:
  """`--config`'s value, with `experiments/[zoo/]NAME.py[:ARG]` pointing at the installed copy when
  the working folder has no such file (an installed aejax run from anywhere); else unchanged."""
  path, sep, arg = value.partition(":")
  parts = pathlib.PurePath(path).parts
  if len(parts) < 2 or parts[0] != EXPERIMENTS_FOLDER or pathlib.Path(path).exists():
    return value
  folder = installed_experiments_folder()
  if folder is None or not folder.joinpath(*parts[1:]).is_file():
    return value
  return f"{folder.joinpath(*parts[1:])}{sep}{arg}"


def config_flag_value(argv: list[str]) -> str | None:
  """The value of the `--config` flag in `argv` as typed, or None."""
  for i, word in enumerate(argv):
    if word.startswith("--config="):
      return word.split("=", 1)[1]
    if word == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def resolve_experiment_args(argv: list[str]) -> list[str]:
  """argv with its `--config=experiments/NAME.py[:ARG]` resolved by `resolve_experiment_arg`."""
  out = list(argv)
  for i, word in enumerate(out):
    if word.startswith("--config="):
      out[i] = "--config=" + resolve_experiment_arg(word.split("=", 1)[1])
    elif word == "--config" and i + 1 < len(out):
      out[i + 1] = resolve_experiment_arg(out[i + 1])
  return out


def command_for(c: ml_collections.ConfigDict) -> str:
  """The program that runs config `c`: a PCA-vs-autoencoder comparison nests the config of its
  autoencoder runs under `ae`; every other experiment is one training run (or a sweep of them)."""
  if "ae" in c and "latent_dims" in c and "model" not in c:
    return PCA_VS_AE_COMMAND
  return TRAIN_COMMAND


def check_command(
  c: ml_collections.ConfigDict, accepted: str, program: str, config_arg: str
) -> None:
  """A ConfigError naming the right program when `program`, which runs configs of `command_for`
  kind `accepted`, is given config `c` of another kind (`config_arg`: --config as typed)."""
  expected = command_for(c)
  if expected == accepted:
    return
  raise errors.ConfigError(
    f"--config={config_arg} configures {expected}, not {program}; run: "
    f"{expected} --config={config_arg} --workdir=DIR"
  )
