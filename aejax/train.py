"""The trainer: one host loop for a population of S >= 1 runs (a plain run is S = 1).

Read top to bottom: the set-up every run shares (validation, data, step
counts, the model, the workdir), then `train_population`, the loop. The
device programs it dispatches are in aejax/steps.py. Fork this file rather
than adding hooks to it. Final figures are not drawn here: the CLI and the
sweep worker call `visualize.finalize` after training.
"""

import collections
import contextlib
import dataclasses
import functools
import json
import logging
import os
import signal
import time
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from aejax import (
  checkpoint,
  chorales,
  data,
  distributed,
  errors,
  feeding,
  figures,
  models,
  music,
  objectives,
  padding,
  parallel,
  progress,
  steps,
  tasks,
  utilisation,
  workdir,
)
from aejax import configs as configs_lib
from aejax.metrics import MetricWriter

# The fields a population's members may differ in. NUMBER_FIELDS enter its program as numbers
# (the seed's keys, steps.HPARAM_FIELDS); padding.PADDED_FIELDS change shapes, so members that
# differ in them are padded to the largest (aejax/padding.py).
NUMBER_FIELDS = ("seed", *steps.HPARAM_FIELDS.values())
VMAPPED_FIELDS = (*NUMBER_FIELDS, *padding.PADDED_FIELDS)


def shared_fields(config: ml_collections.ConfigDict, vmapped=VMAPPED_FIELDS) -> dict:
  """The config as a flat {field: value} without the `vmapped` fields: equal for runs that can
  train as one population."""
  flat = workdir.flatten_fields(json.loads(config.to_json_best_effort()))
  return {name: value for name, value in flat.items() if name not in vmapped}


# This process's compiled programs, by their builder and everything they depend on but the
# numbers they take as arguments (keys, beta, learning rate): a run that differs from an earlier
# one only in seed, beta or learning rate compiles nothing new (a jitted function keeps its own
# compilations; building a new one would compile again). The newest PROGRAMS_KEPT are kept.
PROGRAMS_KEPT = 16
_programs: collections.OrderedDict = collections.OrderedDict()


def _key_part(value) -> str:
  """What a builder's argument contributes to reused_program's key."""
  if isinstance(value, ml_collections.ConfigDict):
    return "config"  # Keyed by its shared_fields.
  if isinstance(value, jax.sharding.Mesh):
    return f"mesh {value.axis_names} {[d.id for d in value.devices.flat]}"
  if callable(value) and not isinstance(value, nn.Module):
    return f"{getattr(value, '__qualname__', type(value).__name__)} at {id(value)}"
  return repr(value)


def reused_program(build, config: ml_collections.ConfigDict, *args, **kwargs):
  """`build(*args, **kwargs)`, or what it returned earlier in this process for the same
  builder, config (but NUMBER_FIELDS) and arguments (models by their fields, meshes by their
  devices, functions by identity)."""
  parts = [_key_part(a) for a in args] + [f"{k}={_key_part(v)}" for k, v in sorted(kwargs.items())]
  fields = shared_fields(config, NUMBER_FIELDS)
  key = json.dumps([f"{build.__qualname__} at {id(build)}", fields, parts])
  if key in _programs:
    _programs.move_to_end(key)
    return _programs[key][-1]
  program = build(*args, **kwargs)
  # The builder and arguments are kept with it: the ids in the key stay theirs meanwhile.
  _programs[key] = (build, args, kwargs, program)
  while len(_programs) > PROGRAMS_KEPT:
    _programs.popitem(last=False)
  return program


def check_group(configs: Sequence[ml_collections.ConfigDict]) -> None:
  """Raises ConfigError naming the first field outside VMAPPED_FIELDS that the configs differ in."""
  if not configs:
    raise errors.ConfigError("train: no configs given")
  first = shared_fields(configs[0])
  for i, config in enumerate(configs[1:], start=1):
    other = shared_fields(config)
    differ = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
    if differ:
      field = differ[0]
      raise errors.ConfigError(
        f"config.{field}: member {i} has {other.get(field)!r}, member 0 {first.get(field)!r}; "
        f"vmapped runs may differ only in {', '.join(VMAPPED_FIELDS)}"
      )


@dataclasses.dataclass(frozen=True)
class Setup:
  """What a run derives from its config and data before anything is trained."""

  train_set: data.ImageSet | data.RenderedSet
  eval_set: data.ImageSet
  counts: configs_lib.StepCounts
  eval_batch_size: int
  model: nn.Module
  run_info: dict

  @property
  def image_shape(self) -> tuple[int, ...]:
    return self.train_set.image_shape


def setup(config: ml_collections.ConfigDict, num_devices: int) -> Setup:
  """Validates `config` against its data and builds the model; nothing is written yet.

  Data and model come first so that a bad data set or model leaves no workdir behind.
  """
  configs_lib.validate(config, num_devices=num_devices)
  train_set, eval_set = data.load_splits(config)
  image_shape = train_set.image_shape
  num_train = train_set.num_examples
  configs_lib.validate_for_data(config, image_shape, num_train, eval_set.image_shape)
  if config.model.num_classes:
    data.check_labels(train_set, config.model.num_classes)
    data.check_labels(eval_set, config.model.num_classes)
  # The user named the model in the config they train: an importable name may be imported.
  model = models.build_model(config.model, image_shape, trust_model_code=True)
  configs_lib.validate_objective(config, model.is_variational)
  eval_batch_size = min(
    config.eval_batch_size, parallel.round_up(len(eval_set.images), num_devices)
  )
  # What aejax.load needs to rebuild the model without loading the data set.
  run_info = {
    "image_shape": list(image_shape),
    "data": f"{config.data.name}/{train_set.source}",
    "num_train": num_train,
    "has_labels": train_set.labels is not None,
  }
  counts = configs_lib.step_counts(config, num_train)
  return Setup(train_set, eval_set, counts, eval_batch_size, model, run_info)


def itstime(step: int, every: int, total: int) -> bool:
  """The one boundary predicate: every `every` steps, and always at the last step."""
  return step % every == 0 or step == total


class StopRequest:
  """Records SIGTERM/SIGINT so the loop can checkpoint and stop between steps."""

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __enter__(self):
    for signum in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[signum] = signal.signal(signum, self._handle)
      except ValueError:  # Not the main thread: signals cannot be caught here.
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.signum = signum

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


def _figure_rows(task: str, batch: dict[str, np.ndarray], output: np.ndarray) -> dict:
  if task == "denoise":
    return {"noisy input": batch["input"], "output": output, "clean target": batch["target"]}
  if task == "superres":
    return {"low-res input": batch["input"], "output": output, "high-res target": batch["target"]}
  return {"input": batch["input"], "reconstruction": output}


def make_figure_fns(model: nn.Module) -> dict:
  """The model's programs behind write_figures, jitted: called eagerly, every layer's operations
  compile one by one at the first evaluation (seconds for a small conv model on a CPU)."""
  fns = {
    "reconstruct": jax.jit(
      lambda params, x, label: model.apply({"params": params}, x, None, label)["logits"]
    )
  }
  if hasattr(model, "sample"):
    fns["sample"] = jax.jit(
      lambda params, key, label: model.apply({"params": params}, key, 64, label, method="sample")
    )
  elif model.is_variational:
    fns["decode"] = jax.jit(
      lambda params, z, label: model.apply({"params": params}, z, label, method=model.decode)
    )
  return fns


def write_figures(run_dir, model, params, config, eval_data, keys, step: int, fns=None) -> dict:
  """Reconstructions of the first eval images and, for VAEs, samples from the prior.

  `fns`: make_figure_fns(model), built once per run. Returns the PNGs written, by TensorBoard
  image tag.
  """
  fns = make_figure_fns(model) if fns is None else fns
  n = config.num_figure_images
  images = eval_data["host_images"][:n]
  labels = None if eval_data["host_labels"] is None else eval_data["host_labels"][:n]
  batch = jax.device_get(
    tasks.make_batch(jax.random.fold_in(keys["eval_corrupt"], 0), images, labels, config)
  )
  # Reconstructions use the posterior mean (no key): the picture of what the code holds.
  logits = fns["reconstruct"](
    params, batch["input"], batch.get("label") if model.num_classes else None
  )
  output = np.asarray(jax.nn.sigmoid(logits))
  if not np.all(np.isfinite(output)):
    # Possible with config.nonfinite == "skip": finite parameters can still overflow.
    logging.warning("step %d: non-finite reconstructions; figures not updated", step)
    return {}
  name = f"{config.data.name} {config.task.name}, {config.model.name}, step {step}"
  written = {}
  if config.data.name in data.SEQUENCE_SETS:
    return _write_melody_figures(run_dir, model, params, config, batch, output, keys, fns, name)
  written["figures/reconstructions"] = figures.save_reconstructions(
    workdir.as_path(run_dir) / "reconstructions.png",
    _figure_rows(config.task.name, batch, output),
    title=f"Reconstructions: {name}",
  )
  if hasattr(model, "sample") or model.is_variational:
    # A conditional model cycles through the classes: 64 samples, class = index mod K.
    labels = jnp.arange(64) % config.model.num_classes if config.model.num_classes else None
    if hasattr(model, "sample"):  # The model's own prior (aejax/models.py).
      logits = fns["sample"](params, keys["figure_samples"], labels)
      prior = "the model's prior"
    else:
      z = jax.random.normal(keys["figure_samples"], (64, config.model.latent_dim))
      logits = fns["decode"](params, z, labels)
      prior = "the prior N(0, I)"
    written["figures/samples"] = figures.save_image_grid(
      workdir.as_path(run_dir) / "samples.png",
      np.asarray(jax.nn.sigmoid(logits)),
      title=f"Samples from {prior}: {name}",
    )
  return written


def _write_melody_figures(run_dir, model, params, config, batch, output, keys, fns, name) -> dict:
  """write_figures for token sequences (data.SequenceSet): piano rolls of the inputs against
  their reconstructions and, for a model with a prior, of samples from it."""
  count = min(8, len(output))
  rows = {
    "input": chorales.melodies_of(batch["input"][:count]),
    "reconstruction": chorales.melodies_of(output[:count]),
  }
  written = {
    "figures/reconstructions": music.piano_roll(
      workdir.as_path(run_dir) / "reconstructions.png", rows, title=f"Reconstructions: {name}"
    )
  }
  if hasattr(model, "sample") or model.is_variational:
    if hasattr(model, "sample"):
      logits = fns["sample"](params, keys["figure_samples"], None)
    else:
      z = jax.random.normal(keys["figure_samples"], (64, config.model.latent_dim))
      logits = fns["decode"](params, z, None)
    written["figures/samples"] = music.piano_roll(
      workdir.as_path(run_dir) / "samples.png",
      {"samples": chorales.melodies_of(np.asarray(logits)[:count])},
      title=f"Samples from the prior: {name}",
    )
  return written


def train_and_evaluate(
  config: ml_collections.ConfigDict, run_dir: str, allow_config_change: bool = False
) -> steps.TrainState:
  """Trains `config` in `run_dir`, resuming from its newest checkpoint: a population of one."""
  return train_population([config], [run_dir], allow_config_change)


class Population:
  """S runs trained as one program: their run folders, state, keys and compiled programs.

  With S > 1 the state, keys and hyper-parameters carry a leading member
  axis; with S = 1 they are a plain run's. `log`, `evaluate` and
  `checkpoint` are what the loop does at its boundaries.

  Members that differ in padding.PADDED_FIELDS are padded: `config` and
  `run.model` are at the largest latent size and k (padding.program_config),
  `member_models[i]` is member i's own model, `hp` also holds each member's
  padding.Member and gradient mask, and checkpoints, figures and metrics are
  each member's own, unpadded.
  """

  def __init__(self, configs, dirs: list[epath.Path], run: Setup, mesh, is_writer: bool):
    self.configs, self.dirs, self.run, self.mesh = configs, dirs, run, mesh
    self.size = len(configs)
    self.batched = self.size > 1
    self.padded = padding.is_padded(configs)
    self.config = padding.program_config(configs) if self.padded else configs[0]
    model, counts = run.model, run.counts
    self.member_models = [model] * self.size
    if self.padded:
      self.member_models = [
        models.build_model(c.model, run.image_shape, trust_model_code=True) for c in configs
      ]
    self.member_keys = [steps.derived_keys(c.seed) for c in configs]
    self.keys = parallel.stack(self.member_keys) if self.batched else self.member_keys[0]
    self.hp = jax.tree.map(
      lambda *v: jnp.asarray(v if self.batched else v[0], jnp.float32),
      *[steps.hparams(c) for c in configs],
    )
    # The initial state does not depend on the learning rate: one optimizer builds it for all.
    tx = steps.make_optimizer(model, self.config, counts.total_steps, counts.steps_per_epoch)

    def init(key, model=model):
      return steps.create_train_state(model, tx, run.image_shape, key, mesh)

    self.padding_programs = {}
    if self.padded:
      # Each member starts as its separate run: initialised at its own latent size, then padded.
      own = [init(k["init"], m) for k, m in zip(self.member_keys, self.member_models, strict=True)]
      self.padded_like = jax.eval_shape(init, self.member_keys[0]["init"])
      self.member_like = [jax.eval_shape(lambda x: x, st) for st in own]
      self.state = parallel.stack([self._pad(i, st) for i, st in enumerate(own)])
      if model.is_variational:  # Its losses draw each member's noise and apply its objective.
        self.hp["member"] = padding.members(configs)
      self.hp["grad_mask"] = parallel.stack(
        [
          padding.gradient_mask(self.member_like[i].params, self.padded_like.params, *self._dims(i))
          for i in range(self.size)
        ]
      )
    elif self.batched:
      self.state = jax.vmap(init)(self.keys["init"])
    else:
      self.state = init(self.keys["init"])
    self.managers = [
      checkpoint.checkpoint_manager(
        d, self.config.keep_checkpoints, f"member{i}" if self.batched else None
      )
      for i, d in enumerate(dirs)
    ]
    self.writers = [MetricWriter(d) for d in dirs] if is_writer else []
    self.num_train = run.train_set.num_examples
    self.eval_data = steps.prepare_eval_data(run.eval_set, run.eval_batch_size, mesh)
    self.eval_fn = reused_program(
      steps.make_eval_fn, self.config, model, self.config, mesh, run.eval_batch_size, self.size,
      render=run.eval_set.render,
    )  # fmt: skip
    self.figure_fns = [
      reused_program(make_figure_fns, c, m)
      for c, m in zip(configs, self.member_models, strict=True)
    ]
    # A padded member reports the metrics its separate run reports, not the program's extras.
    self.dropped_metrics = [set() for _ in configs]
    if self.padded:
      self.dropped_metrics = self._extra_metric_names()
    self.pending_sums = []
    self.skipped_steps = np.zeros(self.size, np.int64)
    self.last_log = (time.perf_counter(), 0)
    # Device utilisation (aejax/utilisation.py): the program's FLOPs per step once it has run.
    self.flops_per_step = None
    self.peak_tflops = utilisation.peak_tflops(
      mesh.devices.flat[0], self.config.peak_tflops_per_device
    )

  def members(self, tree) -> list:
    """Member i of a population's pytree, for each i (the tree itself when S = 1)."""
    return [parallel.member(tree, i) for i in range(self.size)] if self.batched else [tree]

  def _dims(self, i: int) -> tuple[int, int]:
    """Member i's latent size and the population's (padding.pad's d and D)."""
    return self.configs[i].model.latent_dim, self.config.model.latent_dim

  def _pad(self, i: int, tree):
    """Member i's own state (or parameters) in the padded shapes, replicated over the mesh."""
    return self._padding_program("pad", i, isinstance(tree, steps.TrainState))(tree)

  def _unpad(self, i: int, tree):
    """Member i's own state (or parameters) from its padded ones."""
    return self._padding_program("unpad", i, isinstance(tree, steps.TrainState))(tree)

  def _padding_program(self, direction: str, i: int, whole_state: bool):
    """padding.pad or unpad for member i's state (or parameters), jitted once per run: every
    checkpoint and evaluation unpads each member."""
    cache = self.padding_programs
    key = (direction, self._dims(i)[0], whole_state)  # Members of one latent size share them.
    if key not in cache:
      d, D = self._dims(i)
      if direction == "pad":
        like = self.padded_like if whole_state else self.padded_like.params
        fn = functools.partial(padding.pad, big_like=like, d=d, D=D)
      else:
        like = self.member_like[i] if whole_state else self.member_like[i].params
        fn = functools.partial(padding.unpad, small_like=like, d=d, D=D)
      cache[key] = jax.jit(fn, out_shardings=parallel.replicated(self.mesh))
    return cache[key]

  def own(self, tree) -> list:
    """Each member's own state (or parameters): unpadded in a padded population."""
    trees = self.members(tree)
    return [self._unpad(i, t) for i, t in enumerate(trees)] if self.padded else trees

  def _extra_metric_names(self) -> list[set[str]]:
    """For each member, the metrics of the padded program that its separate run does not
    report (a one-sample ELBO's neg_iwae_bound): found by tracing both, nothing runs."""
    c0 = self.configs[0]
    images = np.zeros((2, *self.run.image_shape), np.float32)
    labels = np.zeros((2,), np.int32) if self.run.model.num_classes else None
    batch = tasks.make_batch(jax.random.key(0), images, labels, c0)
    key, weight = jax.random.key(0), jnp.float32(1.0)

    def names(model, params, config, member=None):
      terms = jax.eval_shape(
        lambda p: objectives.per_image_losses(model, p, batch, key, config, weight, member), params
      )
      return set(terms)

    hp0 = parallel.member(self.hp, 0)
    padded = names(self.run.model, self.padded_like.params, self.config, hp0.get("member"))
    return [
      padded - names(m, like.params, c)
      for m, like, c in zip(self.member_models, self.member_like, self.configs, strict=True)
    ]

  def restore(self) -> int:
    """Resumes every member from its newest intact checkpoint; returns the step (0 if none)."""
    latest = [m.latest_step() for m in self.managers]
    if any(step is not None for step in latest) and len(set(latest)) != 1:
      raise errors.CheckpointError(
        "the members' newest checkpoints are at different steps ("
        + ", ".join(f"{d.name}: {s}" for d, s in zip(self.dirs, latest, strict=True))
        + "); train them separately, or delete the newer checkpoints"
      )
    restored = [
      checkpoint.restore_latest(manager, state)
      for manager, state in zip(self.managers, self.own(self.state), strict=True)
    ]
    found = [None if r is None else int(r.step) for r in restored]
    if len(set(found)) != 1:
      # restore_latest falls back to an older checkpoint when the newest is damaged.
      raise errors.CheckpointError(
        "the members restored different steps ("
        + ", ".join(f"{d.name}: {s}" for d, s in zip(self.dirs, found, strict=True))
        + "); train them separately"
      )
    step = found[0] or 0
    for writer in self.writers:
      # Lines after the checkpoint (all of them without one) are from a run that died: redone now.
      writer.truncate_after(step)
    if found[0] is not None:
      if self.padded:
        restored = [self._pad(i, r) for i, r in enumerate(restored)]
      self.state = parallel.stack(restored) if self.batched else restored[0]
      logging.info("Resumed from the checkpoint at step %d in %s", step, self.dirs[0])
    self.last_log = (time.perf_counter(), step)
    return step

  def log(self, step: int) -> dict:
    """Writes the mean train/* metrics since the last log; returns member 0's."""
    # Fetching metrics is a host sync; besides one array per dispatch it happens only here.
    fetched = jax.device_get(self.pending_sums)
    fetched = [{k: np.reshape(v, (self.size,)) for k, v in f.items()} for f in fetched]
    counted = np.sum([f["steps"] for f in fetched], axis=0)
    self.skipped_steps += np.sum([f["skipped_steps"] for f in fetched], axis=0)
    names = [k for k in fetched[0] if k not in steps.MULTI_STEP_COUNTERS]
    now = time.perf_counter()
    steps_per_sec = (step - self.last_log[1]) / (now - self.last_log[0])
    # Images per second of each member; a population processes S times as many.
    rate = steps_per_sec * self.config.batch_size
    self.last_log, self.pending_sums = (now, step), []
    # The program's, shared by the members: TFLOP/s per device, utilisation, peak memory.
    device_use = utilisation.utilisation_metrics(
      self.flops_per_step, steps_per_sec, self.peak_tflops, utilisation.peak_memory_bytes()
    )
    records = []
    for i in range(self.size):
      own_names = [k for k in names if k not in self.dropped_metrics[i]]
      record = {
        f"train/{k}": sum(float(f[k][i]) for f in fetched) / max(int(counted[i]), 1)
        for k in own_names
      }
      record["train/images_per_sec"] = rate
      record.update(device_use)
      if self.config.nonfinite == "skip":
        record["train/skipped_steps"] = int(self.skipped_steps[i])
      records.append(record)
    for writer, record in zip(self.writers, records, strict=False):
      writer.write(step, record)
    return records[0]

  def evaluate(self, step: int, write: bool = True) -> list[dict]:
    """eval/* metrics of every member over the evaluation split; written with figures."""
    results = steps.evaluate_split(
      self.eval_fn, self.state.params, self.eval_data, self.keys, self.hp, self.size
    )
    results = [
      {f"eval/{k}": v for k, v in r.items() if k not in dropped}
      for r, dropped in zip(results, self.dropped_metrics, strict=True)
    ]
    if not write:
      return results
    own_params = self.own(self.state.params) if self.writers else []
    for i, (writer, params) in enumerate(zip(self.writers, own_params, strict=False)):
      writer.write(step, results[i])
      c = self.configs[i]
      pngs = write_figures(
        self.dirs[i], self.member_models[i], params, c, self.eval_data, self.member_keys[i], step,
        self.figure_fns[i],
      )  # fmt: skip
      # The same pictures in TensorBoard's Images tab, one per evaluation (a slider over steps).
      writer.write_images(step, pngs)
      writer.flush()
      figures.save_training_curves(
        self.dirs[i] / "curves.png",
        writer.path,
        title=f"Training curves: {c.model.name} on {c.data.name}, step {step}",
      )
    return results

  def checkpoint(self, step: int) -> None:
    # A process that cannot write (full disk, no permission) stops every process before Orbax's
    # save, which waits for all of them.
    with distributed.agreed("checkpoint"):
      for manager in self.managers:
        checkpoint.prepare_checkpoint(manager, step)
    # A padded population's members are saved unpadded: each folder holds a plain run.
    for manager, state in zip(self.managers, self.own(self.state), strict=True):
      checkpoint.save_checkpoint(manager, step, state)

  def close(self) -> None:
    for manager in self.managers:
      checkpoint.wait_for_checkpoints(manager)
    for writer in self.writers:
      writer.close()


def _write_run_folders(configs, dirs, run: Setup, allow_config_change: bool) -> None:
  for c, d in zip(configs, dirs, strict=True):
    workdir.check_config_change(d, c, allow_config_change)
  for c, d in zip(configs, dirs, strict=True):
    d.mkdir(parents=True, exist_ok=True)
    workdir.write_config(d, c)
    workdir.write_run_info(d, run.run_info)


def train_population(
  configs: Sequence[ml_collections.ConfigDict],
  run_dirs: Sequence[str | os.PathLike],
  allow_config_change: bool = False,
) -> steps.TrainState:
  """Trains configs[i] in run_dirs[i] for every i as one program; returns the final state.

  The configs may differ only in VMAPPED_FIELDS (else ConfigError); with more
  than one, the state has a leading member axis, and member i ends with the
  parameters its separate run would have. Every run folder is written in the
  same format (config.json, run_info.json, metrics.jsonl, checkpoints/,
  final_metrics.json, figures) and resumes from its newest checkpoint; the
  members' must be at one step (else CheckpointError). Raises
  errors.TrainingInterrupted on SIGTERM/SIGINT after a final checkpoint,
  errors.NonFiniteError on a NaN/inf step (config.nonfinite == "stop") naming
  the first bad member, and ConfigError if a folder holds checkpoints of a
  different config (workdir.check_config_change).
  """
  if len(configs) != len(run_dirs) or not configs:
    raise ValueError(f"train: {len(configs)} configs for {len(run_dirs)} run folders")
  mesh = parallel.make_mesh()
  dirs = [workdir.as_path(d) for d in run_dirs]
  is_writer = distributed.is_writer()
  # With several processes, what one of them finds wrong stops all of them (distributed.agreed).
  with distributed.agreed("set-up"):
    for d in dirs:
      workdir.check_location(d)
    check_group(configs)
    for c in configs[1:]:
      configs_lib.validate(c, num_devices=mesh.size)
    # Members of different latent sizes or k train at the largest (aejax/padding.py).
    config = padding.program_config(configs) if padding.is_padded(configs) else configs[0]
    run = setup(config, mesh.size)
    padding.check_paddable(type(run.model), configs)
    if is_writer:
      _write_run_folders(configs, dirs, run, allow_config_change)
  # Matmuls and convolutions at the config's precision in every program the run traces.
  with utilisation.matmul_precision(config.matmul_precision):
    return _train_loop(configs, dirs, run, mesh, is_writer)


def _train_loop(configs, dirs: list[epath.Path], run: Setup, mesh, is_writer: bool):
  """train_population once its folders are written: restore, the loop, the summary."""
  pop = Population(configs, dirs, run, mesh, is_writer)
  config, counts = pop.config, run.counts
  with distributed.agreed("restore"):
    start_step = pop.restore()
  # The images (uint8 when 8-bit), or a ground-truth data set's factor indices that the step
  # renders: split over the devices, or streamed from the host (aejax/feeding.py).
  placement = feeding.choose_placement(config, run.train_set, mesh)
  stream, chunk = None, config.steps_per_dispatch
  if placement == "streamed":
    chunk = feeding.chunk_steps(run.train_set, config.batch_size, pop.size, chunk)
    stream = feeding.Stream(
      run.train_set, mesh, pop.member_keys, config.batch_size, counts.steps_per_epoch,
      start_step, counts.total_steps, chunk,
    )  # fmt: skip
    train_labels, perm = None, stream.unused_perm()
  else:
    train_images, train_labels = feeding.put_resident(run.train_set, mesh)
    perm_fn, perm = reused_program(steps.make_permutation_fn, config, mesh, pop.size), None
  multi_step = reused_program(
    steps.make_multi_step, config,
    run.model, config, mesh, pop.num_train, counts.total_steps, counts.steps_per_epoch, pop.size,
    render=run.train_set.render, streamed=stream is not None,
  )  # fmt: skip
  _log_start(pop, counts)
  feeding.log_placement(placement, run.train_set, mesh, chunk)
  # A bar in a terminal; in a log file a plain line at least every 10 s, also while a long
  # dispatch or the first compilation runs (the heartbeat), never a carriage return.
  bar = progress.Progress(
    counts.total_steps,
    unit="steps",
    desc="train" if pop.size == 1 else f"train x{pop.size}",
    initial=start_step,
    heartbeat=True,
    enabled=config.progress_bar and is_writer,
  )
  start_time = time.perf_counter()
  eval_metrics, step = [], start_step
  # Dispatches end at epoch ends too: one epoch's order per dispatch.
  intervals = (
    config.log_every_steps,
    counts.eval_every,
    counts.checkpoint_every,
    counts.steps_per_epoch,
  )

  def dispatch_length(step: int) -> int:
    """Steps of the dispatch from `step`: to the next log/eval/checkpoint boundary (and the end
    of a profile), at most steps_per_dispatch (and a streamed chunk)."""
    ends = [chunk, counts.total_steps - step] + [every - step % every for every in intervals]
    if profile is not None and step < profile[1]:
      ends.append(profile[1] - step)
    return min(ends)

  # config.profile_steps: the steps after the first dispatch, traced by the writer process.
  profile = None  # The first dispatch's length, which places the window, knows no window yet.
  profile = utilisation.profile_window(
    step + dispatch_length(step), config.profile_steps, counts.total_steps
  )
  profile_dir = workdir.local_absolute(dirs[0]) / "profile"
  tracing = False
  if config.profile_steps and profile is None:
    logging.warning("profile_steps: no step after the first dispatch is left to profile")

  with StopRequest() as stop, _stopping_trace(lambda: tracing):
    while step < counts.total_steps:
      if profile is not None and step == profile[0] and is_writer:
        utilisation.start_trace(profile_dir)
        tracing = True
      num_steps = dispatch_length(step)
      if stream is not None:
        train_images, train_labels = stream.take(num_steps)
      elif perm is None or step % counts.steps_per_epoch == 0:
        perm = perm_fn(pop.keys, pop.num_train, step // counts.steps_per_epoch)
      args = (pop.state, train_images, train_labels, perm, num_steps, pop.keys, pop.hp)
      pop.state, sums = multi_step(*args)
      if pop.flops_per_step is None:  # Looked up, not compiled again: the program has run.
        pop.flops_per_step = utilisation.program_flops(multi_step, *args)
      if stream is not None:  # The next chunk is read and sent while this one trains.
        stream.prefetch(
          dispatch_length(step + num_steps) if step + num_steps < counts.total_steps else 0
        )
      pop.pending_sums.append(sums)
      # The one array fetched per dispatch (not per step): did a non-finite step stop the loop?
      first_bad = np.reshape(np.asarray(sums["first_nonfinite_step"]), (pop.size,))
      if config.nonfinite == "stop" and (first_bad >= 0).any():
        i = int(np.argmax(first_bad >= 0))
        what = int(np.reshape(np.asarray(sums["nonfinite"]), (pop.size,))[i])
        pop.close()
        bar.close()
        latest = pop.managers[i].latest_step()
        raise errors.NonFiniteError(int(first_bad[i]), what, latest, str(dirs[i]))
      step += num_steps
      bar.update(num_steps)
      if tracing and step == profile[1]:
        utilisation.stop_trace(wait_for=pop.state)
        tracing = False
        logging.info("Wrote a profile of steps %d to %d in %s", *profile, profile_dir)
      # A signal to any process stops every process after this same step. Every process acts
      # on the agreed value alone: a signal arriving from here on (in one process) is shared
      # after the next dispatch, never acted on by one process while the others go on.
      agreed_signum = distributed.any_process(stop.signum or 0) or None
      if itstime(step, config.log_every_steps, counts.total_steps):
        record = pop.log(step)
        rate = record["train/images_per_sec"] * pop.size
        bar.update(0, loss=f"{record['train/loss']:.4g}", images_per_sec=f"{rate:.0f}")
      stopping = agreed_signum is not None
      if stopping:  # Saved first: a preempted host may have seconds left, not an evaluation's.
        pop.checkpoint(step)
      if itstime(step, counts.eval_every, counts.total_steps):
        eval_metrics = pop.evaluate(step)
      if itstime(step, counts.checkpoint_every, counts.total_steps) and not stopping:
        pop.checkpoint(step)
      if stopping:
        pop.close()
        bar.close()
        where = str(dirs[0]) + (f" (and the other {pop.size - 1} members')" if pop.size > 1 else "")
        raise errors.TrainingInterrupted(step, agreed_signum, where)

  pop.close()
  bar.close()
  for manager in pop.managers:
    manager.close()
  if not eval_metrics and any(workdir.final_step(d) != counts.total_steps for d in dirs):
    # Restored at its last step (killed after the final checkpoint, before the summary): the
    # loop did not run, so evaluate now. Sweeps read final_metrics.json as "finished".
    eval_metrics = pop.evaluate(counts.total_steps, write=False)
  if is_writer:
    for d, metrics in zip(dirs, eval_metrics, strict=False):
      workdir.write_final_metrics(d, counts.total_steps, metrics)
  _log_summary(config, dirs, start_step, counts.total_steps, start_time, eval_metrics)
  return pop.state


@contextlib.contextmanager
def _stopping_trace(is_tracing):
  """Ends a profiler trace still running when the loop ends early (an error, a stop)."""
  try:
    yield
  finally:
    if is_tracing():
      utilisation.stop_trace()


def _log_start(pop: Population, counts) -> None:
  c, run = pop.config, pop.run
  logging.info(
    "%s on %s/%s: %d train, %d eval images of shape %s; %d parameters%s; %d devices (%s); "
    "batch %d (%d per device); %d steps (%d per epoch), up to %d per dispatch; workdir %s",
    c.model.name,
    c.data.name,
    run.train_set.source,
    pop.num_train,
    pop.eval_data["count"],
    run.image_shape,
    steps.count_params(pop.own(pop.state.params)[0]),
    f" x {pop.size} members ({', '.join(d.name for d in pop.dirs)})" if pop.batched else "",
    pop.mesh.size,
    jax.devices()[0].platform,
    c.batch_size,
    c.batch_size // pop.mesh.size,
    counts.total_steps,
    counts.steps_per_epoch,
    c.steps_per_dispatch,
    # A population's members are named above; their common folder is the place to look.
    pop.dirs[0].resolve().parent if pop.batched else pop.dirs[0].resolve(),
  )


SUMMARY_METRICS = (
  "eval/loss", "eval/neg_elbo", "eval/recon", "eval/kl", "eval/bce_per_pixel",
  "eval/mse_per_pixel", "eval/psnr",
)  # fmt: skip


def _log_summary(config, dirs, start_step, total_steps, start_time, eval_metrics) -> None:
  lines = [
    "=" * 60,
    f"aejax: {config.model.name} on {config.data.name} ({config.task.name})",
    f"steps {start_step} -> {total_steps} in {time.perf_counter() - start_time:.1f} s",
  ]
  for d, metrics in zip(dirs, eval_metrics or [{}] * len(dirs), strict=True):
    if len(dirs) > 1:
      lines.append(f"{d.name}:")
    lines += [f"{name:22s} {metrics[name]:.4f}" for name in SUMMARY_METRICS if name in metrics]
  where = dirs[0] if len(dirs) == 1 else f"{dirs[0].parent}/{{{','.join(d.name for d in dirs)}}}"
  lines.append(f"workdir {where}: config.json metrics.jsonl checkpoints/ *.png tensorboard/")
  lines.append("=" * 60)
  logging.info("\n%s", "\n".join(lines))
