"""The trainer: one jitted, data-parallel train step for every autoencoder, VAE and task.

Read top to bottom: state and mesh, the loss, the train and eval steps, the
on-device data pipeline, checkpoints, then `train_and_evaluate`, the loop.
Fork this file rather than adding hooks to it.
"""

import functools
import json
import logging
import math
import pathlib
import signal
import time
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from aejax import configs, data, errors, figures, losses, models, optim, tasks
from aejax.metric_writer import MetricWriter

DATA_AXIS = "data"
RUN_INFO_FILE = "run_info.json"


class TrainState(flax.struct.PyTreeNode):
  """Everything a checkpoint holds. The data position and every RNG key derive from `step`."""

  step: jax.Array
  params: Any
  opt_state: Any


class TrainingInterrupted(Exception):
  """Raised after a SIGTERM/SIGINT once the final checkpoint is safely written."""

  def __init__(self, step: int, signum: int, workdir: str):
    self.step, self.signum, self.workdir = step, signum, workdir
    name = signal.Signals(signum).name
    super().__init__(
      f"{name} received: stopped after step {step}, checkpoint saved in {workdir}/checkpoints. "
      "Run the same command again to resume from it."
    )


# ---------------------------------------------------------------------------
# Mesh and state.


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over `devices` (default: all devices of all hosts) with the axis 'data'."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def create_train_state(
  model: nn.Module, tx: optax.GradientTransformation, image_shape, key: jax.Array, mesh: Mesh
) -> TrainState:
  """Initialises parameters and optimizer state, replicated over the mesh."""

  def init(key):
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    sample_key = jax.random.key(0) if model.is_variational else None
    dummy_label = jnp.zeros((1,), jnp.int32) if model.num_classes else None
    params = model.init(key, dummy, sample_key, dummy_label)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  # Initialising under jit with replicated outputs puts the state straight onto every device.
  return jax.jit(init, out_shardings=replicated(mesh))(key)


def count_params(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


# ---------------------------------------------------------------------------
# The loss, shared by training and evaluation.


def per_image_losses(
  model: nn.Module,
  params,
  batch: dict[str, jax.Array],
  key: jax.Array | None,
  config: ml_collections.ConfigDict,
  kl_weight: jax.Array,
) -> dict[str, jax.Array]:
  """Every loss term per image, shape (B,), nats per image (per pixel for *_per_pixel, dB for psnr).

  `loss` is the objective: the reconstruction NLL for an autoencoder,
  NLL + kl_weight * KL for a VAE. `neg_elbo` is NLL + KL (kl_weight 1).
  """
  out = model.apply(
    {"params": params},
    batch["input"],
    key if model.is_variational else None,
    batch.get("label") if model.num_classes else None,
  )
  log_scale = out.get("log_scale", jnp.asarray(config.model.log_scale, jnp.float32))
  recon_B = losses.reconstruction_nll(
    config.model.likelihood, out["logits"], batch["target"], log_scale
  )
  terms = {"recon": recon_B}
  if model.is_variational:
    kl_B = losses.gaussian_kl(out["mean"], out["logvar"]).sum(axis=-1)
    terms.update(kl=kl_B, neg_elbo=recon_B + kl_B, loss=recon_B + kl_weight * kl_B)
  else:
    terms["loss"] = recon_B
  terms.update(losses.per_pixel_metrics(out["logits"], batch["target"]))
  return terms


def train_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  key: jax.Array,
  *,
  model: nn.Module,
  tx: optax.GradientTransformation,
  config: ml_collections.ConfigDict,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on the global batch; returns the new state and batch-mean metrics."""
  kl_weight = losses.kl_weight(state.step, config.objective.beta, config.objective.kl_warmup_steps)

  def loss_fn(params):
    terms = per_image_losses(model, params, batch, key, config, kl_weight)
    return terms["loss"].mean(), terms

  grads, terms = jax.grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {name: value.mean() for name, value in terms.items()}
  metrics["grad_norm"] = optax.tree.norm(grads)
  if model.is_variational:
    metrics["kl_weight"] = kl_weight
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, metrics


def make_train_step(model, tx, config, mesh: Mesh):
  """`train_step(state, batch, key) -> (state, metrics)`, jitted once for this mesh.

  The batch is sharded along 'data' and the state replicated, so XLA inserts
  the gradient all-reduce itself. The old state is donated: its buffers are
  reused for the new one instead of holding two copies of params and moments.
  """
  step = functools.partial(train_step, model=model, tx=tx, config=config)
  return jax.jit(
    step,
    in_shardings=(replicated(mesh), batch_sharded(mesh), replicated(mesh)),
    out_shardings=(replicated(mesh), replicated(mesh)),
    donate_argnums=0,
  )


# ---------------------------------------------------------------------------
# Data on device: the whole split lives on every device and batches are cut
# there, so no host-to-device copy happens per step.


def put_replicated(x: np.ndarray | None, mesh: Mesh) -> jax.Array | None:
  if x is None:
    return None
  # make_array_from_callback works the same on one host and on many.
  return jax.make_array_from_callback(x.shape, replicated(mesh), lambda index: x[index])


def make_train_batch_fn(config, mesh: Mesh, num_train: int, keys: dict[str, jax.Array]):
  """`(images, labels, step) -> batch`: the step's shuffled slice, corrupted for the task.

  The permutation of epoch e is permutation(fold_in(shuffle_key, e)), so the
  data position is a pure function of the step: resuming from a checkpoint
  replays exactly the batches an uninterrupted run would have seen.
  """
  batch_size = config.batch_size
  steps_per_epoch = num_train // batch_size

  def train_batch(images, labels, step):
    epoch, index = jnp.divmod(step, steps_per_epoch)
    perm = jax.random.permutation(jax.random.fold_in(keys["shuffle"], epoch), num_train)
    idx = jax.lax.dynamic_slice_in_dim(perm, index * batch_size, batch_size)
    batch_labels = None if labels is None else labels[idx]
    return tasks.make_batch(
      jax.random.fold_in(keys["corrupt"], step), images[idx], batch_labels, config
    )

  return jax.jit(train_batch, out_shardings=batch_sharded(mesh))


def make_eval_fn(model, config, mesh: Mesh, eval_batch_size: int, keys: dict[str, jax.Array]):
  """`(params, images, labels, mask, j) -> sums of per-image metrics over eval batch j`.

  Keys are fixed per batch index, so evaluation is deterministic. `mask`
  zeroes the padding that makes the split a whole number of batches.
  """
  final_kl_weight = jnp.asarray(config.objective.beta, jnp.float32)

  def eval_batch(params, images, labels, mask, j):
    start = j * eval_batch_size
    x = jax.lax.dynamic_slice_in_dim(images, start, eval_batch_size)
    y = None if labels is None else jax.lax.dynamic_slice_in_dim(labels, start, eval_batch_size)
    m = jax.lax.dynamic_slice_in_dim(mask, start, eval_batch_size)
    batch = tasks.make_batch(jax.random.fold_in(keys["eval_corrupt"], j), x, y, config)
    batch = jax.lax.with_sharding_constraint(batch, batch_sharded(mesh))
    terms = per_image_losses(
      model, params, batch, jax.random.fold_in(keys["eval_sample"], j), config, final_kl_weight
    )
    return {name: jnp.sum(value * m) for name, value in terms.items()}

  return jax.jit(eval_batch, out_shardings=replicated(mesh))


def evaluate(eval_fn, params, eval_data: dict[str, Any]) -> dict[str, float]:
  """Means over the whole evaluation split of every per-image metric."""
  totals = None
  for j in range(eval_data["num_batches"]):
    sums = eval_fn(params, eval_data["images"], eval_data["labels"], eval_data["mask"], j)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)  # The only host sync of an evaluation.
  return {name: float(value) / eval_data["count"] for name, value in totals.items()}


def prepare_eval_data(eval_set: data.ImageSet, eval_batch_size: int, mesh: Mesh) -> dict[str, Any]:
  """Pads the split to whole batches (with a mask) and puts it on every device."""
  count = len(eval_set.images)
  num_batches = math.ceil(count / eval_batch_size)
  pad = num_batches * eval_batch_size - count
  images = np.concatenate(
    [eval_set.images, np.zeros((pad, *eval_set.images.shape[1:]), np.float32)]
  )
  labels = None
  if eval_set.labels is not None:
    labels = np.concatenate([eval_set.labels, np.zeros((pad,), np.int32)])
  mask = np.concatenate([np.ones((count,), np.float32), np.zeros((pad,), np.float32)])
  return {
    "images": put_replicated(images, mesh),
    "labels": put_replicated(labels, mesh),
    "mask": put_replicated(mask, mesh),
    "num_batches": num_batches,
    "count": count,
  }


# ---------------------------------------------------------------------------
# Checkpoints.


def checkpoint_manager(workdir: str | pathlib.Path, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(pathlib.Path(workdir).absolute() / "checkpoints", options=options)


def restore_latest(manager: ocp.CheckpointManager, state: TrainState) -> TrainState | None:
  """The newest checkpoint restored into `state`'s shapes and shardings; None if none."""
  step = manager.latest_step()
  if step is None:
    return None
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
  )
  return manager.restore(step, args=ocp.args.StandardRestore(abstract))


# ---------------------------------------------------------------------------
# Figures.


def _figure_rows(task: str, batch: dict[str, np.ndarray], output: np.ndarray) -> dict:
  if task == "denoise":
    return {"noisy input": batch["input"], "output": output, "clean target": batch["target"]}
  if task == "superres":
    return {"low-res input": batch["input"], "output": output, "high-res target": batch["target"]}
  return {"input": batch["input"], "reconstruction": output}


def write_figures(workdir, model, params, config, eval_data, keys, step: int) -> None:
  """Reconstructions of the first eval images and, for VAEs, samples from the prior."""
  n = min(config.num_figure_images, eval_data["count"])
  images = np.asarray(eval_data["images"][:n])
  labels = None if eval_data["labels"] is None else np.asarray(eval_data["labels"][:n])
  batch = jax.device_get(
    tasks.make_batch(jax.random.fold_in(keys["eval_corrupt"], 0), images, labels, config)
  )
  # Reconstructions use the posterior mean (no key): the picture of what the code holds.
  out = model.apply(
    {"params": params}, batch["input"], None, batch.get("label") if model.num_classes else None
  )
  output = np.asarray(jax.nn.sigmoid(out["logits"]))
  name = f"{config.data.name} {config.task.name}, {config.model.name}, step {step}"
  figures.save_reconstructions(
    pathlib.Path(workdir) / "reconstructions.png",
    _figure_rows(config.task.name, batch, output),
    title=f"Reconstructions: {name}",
  )
  if model.is_variational:
    z = jax.random.normal(keys["figure_samples"], (64, config.model.latent_dim))
    # A conditional model cycles through the classes: 64 samples, class = index mod K.
    labels = jnp.arange(64) % config.model.num_classes if config.model.num_classes else None
    logits = model.apply({"params": params}, z, labels, method=model.decode)
    figures.save_image_grid(
      pathlib.Path(workdir) / "samples.png",
      np.asarray(jax.nn.sigmoid(logits)),
      title=f"Samples from the prior N(0, I): {name}",
    )


# ---------------------------------------------------------------------------
# The loop.


def derived_keys(seed: int) -> dict[str, jax.Array]:
  """Every RNG stream of a run, each a fixed function of the seed."""
  root = jax.random.key(seed)
  names = ("init", "shuffle", "corrupt", "step", "eval_corrupt", "eval_sample", "figure_samples")
  return {name: jax.random.fold_in(root, i) for i, name in enumerate(names)}


def load_data(config) -> tuple[data.ImageSet, data.ImageSet]:
  kwargs = dict(source=config.data.source, data_dir=config.data.data_dir or None)
  train_set = data.load(
    config.data.name, config.data.train_split, limit=config.data.train_limit or None, **kwargs
  )
  eval_set = data.load(
    config.data.name, config.data.eval_split, limit=config.data.eval_limit or None, **kwargs
  )
  return train_set, eval_set


def check_labels(image_set: data.ImageSet, num_classes: int) -> None:
  """A conditional model needs labels in [0, num_classes) for every image."""
  where = f"{image_set.name}/{image_set.split}"
  if image_set.labels is None:
    raise errors.ConfigError(
      f"config.model.num_classes={num_classes}: a conditional model needs labels, "
      f"but {where} has none"
    )
  if image_set.labels.min() < 0 or image_set.labels.max() >= num_classes:
    raise errors.ConfigError(
      f"config.model.num_classes={num_classes}: labels of {where} range over "
      f"[{image_set.labels.min()}, {image_set.labels.max()}]"
    )


class _StopRequest:
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains `config` in `workdir`, resuming from its newest checkpoint if there is one.

  Writes config.json, metrics.jsonl, TensorBoard events, checkpoints/ and
  figures into workdir. Returns the final state. Raises TrainingInterrupted
  (after a final checkpoint) on SIGTERM/SIGINT.
  """
  mesh = make_mesh()
  configs.validate(config, num_devices=mesh.size)
  workdir_path = pathlib.Path(workdir)
  is_writer = jax.process_index() == 0

  # Data and model come first so that a bad data set or model leaves no workdir behind.
  train_set, eval_set = load_data(config)
  image_shape = train_set.images.shape[1:]
  num_train = len(train_set.images)
  steps_per_epoch = num_train // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(
      f"config.batch_size={config.batch_size} is larger than the training set "
      f"({num_train} images of {config.data.name}/{config.data.train_split})"
    )
  total_steps = config.total_steps or config.num_epochs * steps_per_epoch
  eval_every = config.eval_every_steps or steps_per_epoch
  checkpoint_every = config.checkpoint_every_steps or steps_per_epoch
  eval_batch_size = min(
    config.eval_batch_size, mesh.size * math.ceil(len(eval_set.images) / mesh.size)
  )

  if config.model.num_classes:
    check_labels(train_set, config.model.num_classes)
    check_labels(eval_set, config.model.num_classes)
  model = models.build_model(config.model, image_shape)
  tx = optim.make_optimizer(config.optimizer, total_steps)
  if is_writer:
    workdir_path.mkdir(parents=True, exist_ok=True)
    (workdir_path / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    # What aejax.load needs to rebuild the model without loading the data set.
    run_info = {
      "image_shape": list(image_shape),
      "data": f"{config.data.name}/{train_set.source}",
      "num_train": num_train,
      "has_labels": train_set.labels is not None,
    }
    (workdir_path / RUN_INFO_FILE).write_text(json.dumps(run_info, indent=2) + "\n")
  keys = derived_keys(config.seed)
  state = create_train_state(model, tx, image_shape, keys["init"], mesh)

  manager = checkpoint_manager(workdir_path, config.keep_checkpoints)
  restored = restore_latest(manager, state)
  writer = MetricWriter(workdir_path) if is_writer else None
  if restored is not None:
    state = restored
    if writer:
      writer.truncate_after(int(state.step))
    logging.info("Resumed from the checkpoint at step %d in %s", int(state.step), workdir)
  start_step = int(state.step)

  train_images = put_replicated(train_set.images, mesh)
  train_labels = put_replicated(train_set.labels, mesh)
  eval_data = prepare_eval_data(eval_set, eval_batch_size, mesh)
  train_batch_fn = make_train_batch_fn(config, mesh, num_train, keys)
  train_step_fn = make_train_step(model, tx, config, mesh)
  eval_fn = make_eval_fn(model, config, mesh, eval_batch_size, keys)

  logging.info(
    "%s on %s/%s: %d train, %d eval images of shape %s; %d parameters; %d devices (%s); "
    "batch %d (%d per device); %d steps (%d per epoch)",
    config.model.name,
    config.data.name,
    train_set.source,
    num_train,
    eval_data["count"],
    image_shape,
    count_params(state.params),
    mesh.size,
    jax.devices()[0].platform,
    config.batch_size,
    config.batch_size // mesh.size,
    total_steps,
    steps_per_epoch,
  )

  progress = tqdm.tqdm(
    total=total_steps,
    initial=start_step,
    desc="train",
    unit="step",
    dynamic_ncols=True,
    disable=not (config.progress_bar and is_writer),
  )
  pending_metrics = []
  last_log_time, last_log_step = time.perf_counter(), start_step
  start_time = time.perf_counter()
  eval_metrics = {}
  with _StopRequest() as stop:
    for step in range(start_step, total_steps):
      batch = train_batch_fn(train_images, train_labels, step)
      state, metrics = train_step_fn(state, batch, jax.random.fold_in(keys["step"], step))
      pending_metrics.append(metrics)
      done = step + 1
      progress.update(1)

      if done % config.log_every_steps == 0 or done == total_steps:
        # Fetching metrics is the host sync; it happens only here.
        stacked = jax.device_get(pending_metrics)
        train_metrics = {f"train/{k}": float(np.mean([m[k] for m in stacked])) for k in stacked[0]}
        now = time.perf_counter()
        train_metrics["train/images_per_sec"] = (
          (done - last_log_step) * config.batch_size / (now - last_log_time)
        )
        last_log_time, last_log_step, pending_metrics = now, done, []
        if writer:
          writer.write(done, train_metrics)
        progress.set_postfix(
          loss=f"{train_metrics['train/loss']:.4g}",
          img_s=f"{train_metrics['train/images_per_sec']:.0f}",
        )

      if done % eval_every == 0 or done == total_steps:
        eval_metrics = {
          f"eval/{k}": v for k, v in evaluate(eval_fn, state.params, eval_data).items()
        }
        if writer:
          writer.write(done, eval_metrics)
          writer.flush()
          write_figures(workdir_path, model, state.params, config, eval_data, keys, done)
          figures.save_training_curves(
            workdir_path / "curves.png",
            writer.path,
            title=f"Training curves: {config.model.name} on {config.data.name}",
          )

      if done % checkpoint_every == 0 or done == total_steps or stop.signum is not None:
        manager.save(done, args=ocp.args.StandardSave(state), force=True)

      if stop.signum is not None:
        manager.wait_until_finished()
        progress.close()
        if writer:
          writer.close()
        raise TrainingInterrupted(done, stop.signum, str(workdir_path))

  manager.wait_until_finished()
  progress.close()
  if writer:
    writer.close()
    if start_step < total_steps and config.final_figures:
      # Imported here: visualize builds on api, which builds on this module.
      from aejax import api, visualize

      handle = api.TrainedModel(config, state.params, image_shape, total_steps)
      written = visualize.write_final_outputs(handle, eval_set, workdir_path)
      logging.info("Wrote %s", ", ".join(written))
  elapsed = time.perf_counter() - start_time
  _log_summary(config, workdir_path, start_step, total_steps, elapsed, eval_metrics)
  return state


def _log_summary(config, workdir, start_step, total_steps, elapsed, eval_metrics) -> None:
  lines = [
    "=" * 60,
    f"aejax: {config.model.name} on {config.data.name} ({config.task.name})",
    f"steps {start_step} -> {total_steps} in {elapsed:.1f} s",
  ]
  for name in (
    "eval/loss",
    "eval/neg_elbo",
    "eval/recon",
    "eval/kl",
    "eval/bce_per_pixel",
    "eval/mse_per_pixel",
    "eval/psnr",
  ):
    if name in eval_metrics:
      lines.append(f"{name:22s} {eval_metrics[name]:.4f}")
  lines.append(f"workdir {workdir}: config.json metrics.jsonl checkpoints/ *.png tensorboard/")
  lines.append("=" * 60)
  logging.info("\n%s", "\n".join(lines))
  if eval_metrics and jax.process_index() == 0:
    (pathlib.Path(workdir) / "final_metrics.json").write_text(
      json.dumps({"step": total_steps, **eval_metrics}, indent=2) + "\n"
    )
