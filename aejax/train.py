"""The trainer: one jitted, data-parallel train step for every autoencoder, VAE and task.

Read top to bottom: state and mesh, the loss, the train and eval steps, the
on-device data pipeline, checkpoints, then `train_and_evaluate`, the loop.
Fork this file rather than adding hooks to it.
"""

import functools
import hashlib
import json
import logging
import math
import os
import pathlib
import signal
import tempfile
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


class NonFiniteError(Exception):
  """Raised when a training step's loss or gradients are NaN/inf (config.nonfinite == "stop")."""

  def __init__(self, step: int, what: int, last_checkpoint: int | None, workdir: str):
    self.step, self.last_checkpoint = step, last_checkpoint
    bad = [name for bit, name in ((1, "loss"), (2, "gradients")) if what & bit]
    where = (
      f"the last good checkpoint is step {last_checkpoint} in {workdir}/checkpoints"
      if last_checkpoint is not None
      else f"no checkpoint was written yet in {workdir}"
    )
    super().__init__(
      f"non-finite {' and '.join(bad) or 'value'} at step {step} (train/"
      f"{'loss' if what & 1 else 'grad_norm'} is NaN or inf); the update was not applied and "
      f"no NaN parameters were saved; {where}. Lower the learning rate, clip gradients "
      "(config.optimizer.grad_clip_norm) or set config.nonfinite='skip'."
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
  NLL + kl_weight * KL for a VAE, or -L_k for the IWAE objective (see
  `_multi_sample_terms`). `neg_elbo` is NLL + KL (kl_weight 1).
  """
  if model.is_variational and (config.objective.name != "elbo" or config.objective.num_samples > 1):
    return _multi_sample_terms(model, params, batch, key, config, kl_weight)
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


def _multi_sample_terms(model, params, batch, key, config, kl_weight) -> dict[str, jax.Array]:
  """The k-sample objectives of Burda et al. (2016), k = config.objective.num_samples.

  Draws z_1..z_k ~ q(z|x) (one encoder pass, one decoder pass over all k*B
  codes) and forms log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x).
  - "elbo": the k-sample VAE objective, recon averaged over the k samples
    plus kl_weight * the analytic KL: an unbiased estimate of the ELBO with
    k times fewer noisy reconstruction terms.
  - "iwae": loss = -L_k = -(logsumexp_i log w_i - log k), the importance-
    weighted bound; at k = 1 it is the fully Monte Carlo ELBO.
  Both also report `neg_elbo` (k-sample mean recon + analytic KL), so runs
  with different objectives compare on the same scale, and `neg_iwae_bound`.
  Without a key (never in training) z_i is the posterior mean.
  """
  k = config.objective.num_samples
  label = batch.get("label") if model.num_classes else None
  post = model.apply({"params": params}, batch["input"], label, method=model.encode)
  mean_BxD, logvar_BxD = post["mean"], post["logvar"]
  batch_size, latent_dim = mean_BxD.shape
  if key is None:
    eps_KxBxD = jnp.zeros((k, batch_size, latent_dim), mean_BxD.dtype)
  else:
    eps_KxBxD = jax.random.normal(key, (k, batch_size, latent_dim), mean_BxD.dtype)
  mean_1xBxD, logvar_1xBxD = mean_BxD[None], logvar_BxD[None]
  z_KxBxD = mean_1xBxD + jnp.exp(0.5 * logvar_1xBxD) * eps_KxBxD
  labels = None if label is None else jnp.tile(label, k)
  logits = model.apply(
    {"params": params}, z_KxBxD.reshape(k * batch_size, latent_dim), labels, method=model.decode
  )
  target = batch["target"]
  targets = jnp.broadcast_to(target, (k, *target.shape)).reshape(k * batch_size, *target.shape[1:])
  recon_KxB = losses.reconstruction_nll(
    config.model.likelihood, logits, targets, likelihood_log_scale(params, config)
  ).reshape(k, batch_size)
  log_w_KxB = -recon_KxB + losses.log_prior_minus_log_posterior(z_KxBxD, mean_1xBxD, logvar_1xBxD)
  iwae_bound_B = jax.nn.logsumexp(log_w_KxB, axis=0) - math.log(k)
  recon_B = recon_KxB.mean(axis=0)
  kl_B = losses.gaussian_kl(mean_BxD, logvar_BxD).sum(axis=-1)
  if config.objective.name == "iwae":
    loss_B = -iwae_bound_B
  else:
    loss_B = recon_B + kl_weight * kl_B
  terms = {
    "recon": recon_B,
    "kl": kl_B,
    "neg_elbo": recon_B + kl_B,
    "neg_iwae_bound": -iwae_bound_B,
    "loss": loss_B,
  }
  first_sample_logits = logits[:batch_size]
  terms.update(losses.per_pixel_metrics(first_sample_logits, target))
  return terms


def likelihood_log_scale(params, config) -> jax.Array:
  """The Gaussian decoder's log standard deviation: learned (a parameter) or fixed (config)."""
  if config.model.learn_log_scale:
    return params["likelihood"]["log_scale"]
  return jnp.asarray(config.model.log_scale, jnp.float32)


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
  grads, metrics = _grads_and_metrics(state, batch, key, model=model, config=config)
  return _apply_gradients(state, grads, tx), metrics


def _grads_and_metrics(state, batch, key, *, model, config):
  """The gradient of the batch-mean loss and the batch-mean metrics (with grad_norm)."""
  kl_weight = losses.kl_weight(state.step, config.objective.beta, config.objective.kl_warmup_steps)

  def loss_fn(params):
    terms = per_image_losses(model, params, batch, key, config, kl_weight)
    return terms["loss"].mean(), terms

  grads, terms = jax.grad(loss_fn, has_aux=True)(state.params)
  metrics = {name: value.mean() for name, value in terms.items()}
  metrics["grad_norm"] = optax.tree.norm(grads)
  if model.is_variational:
    metrics["kl_weight"] = kl_weight
  return grads, metrics


def _apply_gradients(state: TrainState, grads, tx: optax.GradientTransformation) -> TrainState:
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state)


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
  return jax.jit(_train_batch_fn(config, num_train, keys), out_shardings=batch_sharded(mesh))


def epoch_permutation(keys: dict[str, jax.Array], num_train: int, epoch: jax.Array) -> jax.Array:
  """The order of the training images in `epoch`: permutation(fold_in(shuffle_key, epoch))."""
  return jax.random.permutation(jax.random.fold_in(keys["shuffle"], epoch), num_train)


def cut_batch(config, keys, images, labels, perm, step):
  """The batch of `step`, whose epoch's order is `perm`, corrupted for the task.

  Pure and traceable: the trainer, its fused loop and multi_seed's vmapped members all cut
  their batches here, so a member and its separate run see the same images.
  """
  index = step % (len(perm) // config.batch_size)
  idx = jax.lax.dynamic_slice_in_dim(perm, index * config.batch_size, config.batch_size)
  batch_labels = None if labels is None else labels[idx]
  return tasks.make_batch(
    jax.random.fold_in(keys["corrupt"], step), images[idx], batch_labels, config
  )


def _train_batch_fn(config, num_train: int, keys: dict[str, jax.Array]):
  steps_per_epoch = num_train // config.batch_size

  def train_batch(images, labels, step):
    perm = epoch_permutation(keys, num_train, step // steps_per_epoch)
    return cut_batch(config, keys, images, labels, perm, step)

  return train_batch


# Non-finite guard codes, reported by the fused loop: which quantity went bad first.
NONFINITE_LOSS, NONFINITE_GRADS = 1, 2
# What multi_step returns besides the summed metrics.
MULTI_STEP_COUNTERS = ("steps", "skipped_steps", "first_nonfinite_step", "nonfinite")


def init_step_counters(abstract_metrics, shape: tuple[int, ...] = ()) -> dict[str, jax.Array]:
  """A fused loop's metric sums (zeros like `abstract_metrics`) and counters, each `shape`."""
  return {
    "sums": jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), abstract_metrics),
    "steps": jnp.zeros(shape, jnp.int32),
    "skipped_steps": jnp.zeros(shape, jnp.int32),
    "first_nonfinite_step": jnp.full(shape, -1, jnp.int32),
    "nonfinite": jnp.zeros(shape, jnp.int32),
  }


def count_step(counters, metrics, finite, nonfinite, step) -> dict[str, jax.Array]:
  """The counters after one guarded step at `step`: a finite step's metrics are summed and it is
  counted in `steps`; a non-finite one in `skipped_steps`, and the first one's step and what went
  bad (NONFINITE_* bits) are kept."""
  first_bad = counters["first_nonfinite_step"]
  return {
    "sums": jax.tree.map(lambda t, m: t + jnp.where(finite, m, 0.0), counters["sums"], metrics),
    "steps": counters["steps"] + finite.astype(jnp.int32),
    "skipped_steps": counters["skipped_steps"] + (~finite).astype(jnp.int32),
    "first_nonfinite_step": jnp.where((first_bad < 0) & ~finite, step, first_bad),
    "nonfinite": jnp.where(counters["nonfinite"] == 0, nonfinite, counters["nonfinite"]),
  }


def step_sums(counters) -> dict[str, jax.Array]:
  """What a fused loop returns: the metric sums with the MULTI_STEP_COUNTERS beside them."""
  return {**counters["sums"], **{name: counters[name] for name in MULTI_STEP_COUNTERS}}


def guarded_train_step(state, batch, key, *, model, tx, config):
  """`train_step` that never applies a non-finite update.

  If the loss or any gradient is NaN/inf, the parameters and optimizer state
  stay as they were (the step counter still advances, so the data position
  and keys move on) and `nonfinite` says what went bad (NONFINITE_* bits).
  """
  grads, metrics = _grads_and_metrics(state, batch, key, model=model, config=config)
  bad_loss = ~jnp.isfinite(metrics["loss"])
  bad_grads = ~jnp.isfinite(metrics["grad_norm"])  # The global norm is NaN/inf iff a leaf is.
  finite = ~(bad_loss | bad_grads)
  # A conditional, not a select of new against old: only one branch runs, so a finite step
  # costs what train_step costs (a jnp.where over parameters and both Adam moments added a
  # third to the MLP's step at batch 20 on CPU).
  new_state = jax.lax.cond(
    finite,
    lambda: _apply_gradients(state, grads, tx),
    lambda: state.replace(step=state.step + 1),
  )
  nonfinite = bad_loss.astype(jnp.int32) * NONFINITE_LOSS + bad_grads.astype(jnp.int32) * (
    NONFINITE_GRADS
  )
  return new_state, metrics, finite, nonfinite


def make_multi_step(model, tx, config, mesh: Mesh, num_train: int, keys: dict[str, jax.Array]):
  """`multi_step(state, images, labels, perm, num_steps) -> (state, sums)`: fused steps.

  Runs up to num_steps steps on device in one dispatch: the batch of step s is
  cut from the device-resident data set and corrupted for the task (the same
  batches as `make_train_batch_fn`), the step key is fold_in(step_key, s), and
  the metrics are summed on device. All the steps must lie in one epoch, whose
  order `perm` is (`epoch_permutation`, drawn by the caller once per epoch:
  a permutation of 60,000 images costs more than an MLP's training step).
  `num_steps` is a traced argument, so one `lax.while_loop` serves every
  chunk length with one compilation: logging, evaluation, checkpoint and
  epoch boundaries never trigger a recompile (a `lax.scan` needs its length
  at compile time).

  Non-finite steps are never applied (`guarded_train_step`). With
  config.nonfinite == "stop" the loop ends at the first one and `sums`
  reports its step (`first_nonfinite_step`, else -1) and what went bad; with
  "skip" it goes on and counts `skipped_steps`. `sums["steps"]` counts the
  finite steps whose metrics are summed.
  """
  step_fn = functools.partial(guarded_train_step, model=model, tx=tx, config=config)
  stop_on_nonfinite = config.nonfinite == "stop"

  def multi_step(state, images, labels, perm, num_steps):
    first_step = state.step
    abstract = jax.eval_shape(
      lambda st: step_fn(st, cut_batch(config, keys, images, labels, perm, st.step), keys["step"])[
        1
      ],
      state,
    )
    carry = {"state": state, **init_step_counters(abstract)}

    def cond(c):
      running = c["state"].step < first_step + num_steps
      if stop_on_nonfinite:
        running &= c["first_nonfinite_step"] < 0
      return running

    def body(c):
      st = c["state"]
      batch = jax.lax.with_sharding_constraint(
        cut_batch(config, keys, images, labels, perm, st.step), batch_sharded(mesh)
      )
      new_st, metrics, finite, nonfinite = step_fn(
        st, batch, jax.random.fold_in(keys["step"], st.step)
      )
      if stop_on_nonfinite:
        # The state stays at the bad step: a rerun (or the checkpoint) starts right before it.
        # Parameters and optimizer state are already the old ones (guarded_train_step), so only
        # the counter is held back: a select over the whole state costs as much as Adam.
        new_st = new_st.replace(step=jnp.where(finite, new_st.step, st.step))
      return {"state": new_st, **count_step(c, metrics, finite, nonfinite, st.step)}

    out = jax.lax.while_loop(cond, body, carry)
    return out["state"], step_sums(out)

  rep = replicated(mesh)
  return jax.jit(
    multi_step,
    in_shardings=(rep, rep, rep, rep, None),
    out_shardings=(rep, rep),
    donate_argnums=0,
  )


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
# Checkpoints. Orbax writes each one into a temporary folder and renames it once
# complete, so a kill leaves either a whole checkpoint or a temporary folder,
# which is removed on the next start and never read. Files damaged later fail to
# restore, and a checksum of the state in the checkpoint's metadata catches those
# that still restore but hold other numbers; either way the previous one is used.

CHECKSUM_KEY = "aejax_state_sha256"
# A checkpoint that fails to restore is renamed to `<step>.unreadable` (kept for
# inspection; Orbax only sees folders named by a step number).
UNREADABLE_SUFFIX = ".unreadable"


def checkpoint_manager(workdir: str | pathlib.Path, keep: int) -> ocp.CheckpointManager:
  """Orbax's manager of workdir/checkpoints, keeping the newest `keep` checkpoints.

  Raises CheckpointError if the folder cannot be created.
  """
  directory = pathlib.Path(workdir).absolute() / "checkpoints"
  # cleanup_tmp_directories: the half-written checkpoint of a killed run is deleted, not trusted.
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep, create=True, cleanup_tmp_directories=True
  )
  try:
    # One unnamed item, fixed here: left to Orbax, the first folder it reads decides, and a
    # damaged one would make every other checkpoint unreadable too.
    return ocp.CheckpointManager(
      directory, item_handlers=ocp.StandardCheckpointHandler(), options=options
    )
  except OSError as error:
    raise errors.CheckpointError(
      f"cannot create the checkpoint folder {directory}: {_brief(error)}"
    ) from error


def state_checksum(state) -> str:
  """sha256 over every leaf's dtype, shape and bytes (one replica: the state is replicated)."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(state):
    # addressable_data(0) is this host's copy, also on multi-host runs.
    value = np.asarray(leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf)
    digest.update(f"{value.dtype}{value.shape}".encode())
    digest.update(np.ascontiguousarray(value).tobytes())
  return digest.hexdigest()


def save_checkpoint(manager: ocp.CheckpointManager, step: int, state: TrainState) -> None:
  """Starts writing `state` and its checksum as checkpoint `step`; Orbax finishes in the background.

  Raises CheckpointError, naming the folder and the checkpoints still on disk,
  if this write or the previous one failed (disk full, no permission). A failed
  write never removes older checkpoints: Orbax deletes the ones beyond `keep`
  only after the new one is complete.
  """
  wait_for_checkpoints(manager)
  try:
    # Orbax creates the checkpoint's folder in a background thread, and if that fails its other
    # threads wait minutes for the folder before the process can exit: try it here first.
    os.rmdir(tempfile.mkdtemp(prefix=".write-test-", dir=manager.directory))
    manager.save(
      step,
      args=ocp.args.StandardSave(state),
      force=True,
      custom_metadata={CHECKSUM_KEY: state_checksum(state)},
    )
  except Exception as error:  # Orbax and TensorStore raise many types; all mean "not saved".
    raise _write_error(manager, error, step) from error


def wait_for_checkpoints(manager: ocp.CheckpointManager) -> None:
  """Blocks until the checkpoint being written is complete; CheckpointError if writing it failed."""
  try:
    manager.wait_until_finished()
  except Exception as error:
    raise _write_error(manager, error) from error


def restore_checkpoint(manager: ocp.CheckpointManager, step: int, abstract_state):
  """Checkpoint `step` restored into `abstract_state` (shapes, dtypes, shardings) and verified.

  Raises CheckpointError saying why if it cannot be read or its checksum does not match.
  """
  try:
    state = manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
    expected = (manager.metadata(step).custom_metadata or {}).get(CHECKSUM_KEY)
  except Exception as error:  # Damaged files surface as many types (JSON, TensorStore, ...).
    raise errors.CheckpointError(f"step {step}: {_brief(error)}") from error
  if expected is None:
    logging.warning(
      "Checkpoint %d in %s has no checksum (written by an older aejax): not verified",
      step,
      manager.directory,
    )
  elif state_checksum(state) != expected:
    raise errors.CheckpointError(f"step {step}: checksum mismatch (damaged files)")
  return state


def restore_latest(
  manager: ocp.CheckpointManager, state: TrainState, *, set_aside: bool = True
) -> TrainState | None:
  """The newest checkpoint that restores intact, in `state`'s shapes and shardings; None if none.

  A checkpoint that fails (missing, truncated or damaged files, checksum
  mismatch) is reported with a warning naming its step and the error, and the
  next older one is tried. Older checkpoints are never deleted. With
  `set_aside`, the failed ones newer than the restored one are renamed to
  `<step>.unreadable`, so that the resumed run can write those steps again.
  Raises CheckpointError naming the folder if checkpoints exist but none restores;
  then nothing is renamed (a config that does not fit any of them is not damage).
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return None
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
  )
  failed = []
  for step in steps:
    try:
      restored = restore_checkpoint(manager, step, abstract)
    except errors.CheckpointError as error:
      failed.append((step, error))
      logging.warning(
        "Checkpoint %d in %s cannot be restored (%s); trying the previous one",
        step,
        manager.directory,
        error,
      )
      continue
    if failed and set_aside:
      _set_aside(manager, [s for s, _ in failed])
    if failed:
      logging.warning(
        "Resuming from checkpoint %d in %s instead of the newest, %d",
        step,
        manager.directory,
        steps[0],
      )
    return restored
  reasons = "; ".join(str(error) for _, error in failed)
  raise errors.CheckpointError(
    f"none of the {len(steps)} checkpoints in {manager.directory} can be restored ({reasons}). "
    "They are left as they are. If the config changed, rerun with the config of these "
    "checkpoints or use a new --workdir; if the files are damaged, move the folder away to "
    "start from scratch"
  )


def _set_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
  """Renames unreadable checkpoints to `<step>.unreadable[.N]`, out of Orbax's sight."""
  directory = pathlib.Path(manager.directory)
  if jax.process_index() == 0:
    for step in steps:
      target = directory / f"{step}{UNREADABLE_SUFFIX}"
      n = 1
      while target.exists():
        target, n = directory / f"{step}{UNREADABLE_SUFFIX}.{n}", n + 1
      try:
        (directory / str(step)).rename(target)
      except OSError as error:
        raise errors.CheckpointError(
          f"cannot set aside the unreadable checkpoint {directory / str(step)}: {_brief(error)}"
        ) from error
      logging.warning("Kept the unreadable checkpoint %d as %s", step, target)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("aejax: unreadable checkpoints set aside")
  manager.reload()


def _steps_on_disk(directory: pathlib.Path) -> list[int]:
  try:
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())
  except OSError:
    return []


def _write_error(
  manager: ocp.CheckpointManager, error: Exception, step: int | None = None
) -> errors.CheckpointError:
  directory = pathlib.Path(manager.directory)
  steps = _steps_on_disk(directory)
  what = "a checkpoint" if step is None else f"checkpoint {step}"
  kept = (
    f"the checkpoints already there are kept (steps {', '.join(map(str, steps))}); rerun the "
    f"same command to resume from step {steps[-1]}"
    if steps
    else "no earlier checkpoint exists"
  )
  return errors.CheckpointError(
    f"writing {what} to {directory} failed ({_brief(error)}). Free disk space or make the "
    f"folder writable; {kept}"
  )


def _brief(error: BaseException) -> str:
  """`Type: first line of the message`, at most 300 characters: for one-line error reports."""
  lines = str(error).strip().splitlines()
  text = f"{type(error).__name__}: {lines[0] if lines else ''}"
  return text if len(text) <= 300 else text[:297] + "..."


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
  if not np.all(np.isfinite(output)):
    # Possible with config.nonfinite == "skip": finite parameters can still overflow.
    logging.warning("step %d: non-finite reconstructions; figures not updated", step)
    return
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


# Fields that may change when a run resumes in the same workdir: they change how long it
# runs, how often it logs or where it reads files, not what its checkpoints are.
RESUMABLE_FIELDS = frozenset({
  "num_epochs", "total_steps", "log_every_steps", "eval_every_steps", "checkpoint_every_steps",
  "keep_checkpoints", "eval_batch_size", "num_figure_images", "final_figures", "scatter_method",
  "progress_bar", "steps_per_dispatch", "nonfinite", "data.data_dir", "data.source",
  "data.eval_split", "data.eval_limit",
})  # fmt: skip


def flatten_fields(tree: dict, prefix: str = "") -> dict[str, Any]:
  """A nested config dict as {"model.latent_dim": value, ...}."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten_fields(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def config_diff(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
  """{field: (old, new)} for every dotted field whose value differs (missing is None)."""
  old_flat, new_flat = flatten_fields(old), flatten_fields(new)
  return {
    field: (old_flat.get(field), new_flat.get(field))
    for field in sorted(set(old_flat) | set(new_flat))
    if old_flat.get(field) != new_flat.get(field)
  }


def check_config_change(workdir: pathlib.Path, config, allow: bool) -> None:
  """Refuses to resume checkpoints of another config in `workdir`, listing the changed fields.

  Only fields outside RESUMABLE_FIELDS count. A workdir without checkpoints
  can be reused freely; `allow` (--allow_config_change) overrides the check,
  and the new config.json then replaces the old one.
  """
  saved = workdir / "config.json"
  checkpoints = workdir / "checkpoints"
  has_checkpoints = checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())
  if not (saved.exists() and has_checkpoints):
    return
  try:
    old = json.loads(saved.read_text())
  except (OSError, json.JSONDecodeError) as error:
    raise errors.ConfigError(f"{saved}: unreadable saved config ({error})") from error
  new = json.loads(config.to_json_best_effort())  # The same JSON round trip as the saved one.
  changed = {f: v for f, v in config_diff(old, new).items() if f not in RESUMABLE_FIELDS}
  if not changed:
    return
  lines = "; ".join(f"config.{f}: {o!r} -> {n!r}" for f, (o, n) in changed.items())
  if allow:
    logging.warning("config changed in %s (allowed by --allow_config_change): %s", workdir, lines)
    return
  raise errors.ConfigError(
    f"{workdir} holds checkpoints of a different config: {lines}. Use a new --workdir, or "
    "pass --allow_config_change to resume these checkpoints with the new config"
  )


def write_atomically(path: pathlib.Path, text: str) -> None:
  """Writes to a temporary file, then renames it: a kill never leaves a half-written file."""
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  tmp.replace(path)


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


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool = False
) -> TrainState:
  """Trains `config` in `workdir`, resuming from its newest checkpoint if there is one.

  Writes config.json, metrics.jsonl, TensorBoard events, checkpoints/ and
  figures into workdir. Returns the final state. Raises TrainingInterrupted
  (after a final checkpoint) on SIGTERM/SIGINT, NonFiniteError on a NaN/inf
  step (config.nonfinite == "stop"), and ConfigError if the workdir holds
  checkpoints of a different config (see `check_config_change`).
  """
  mesh = make_mesh()
  configs.validate(config, num_devices=mesh.size)
  workdir_path = pathlib.Path(workdir)
  is_writer = jax.process_index() == 0

  # Data and model come first so that a bad data set or model leaves no workdir behind.
  train_set, eval_set = load_data(config)
  image_shape = train_set.images.shape[1:]
  num_train = len(train_set.images)
  configs.validate_for_data(config, image_shape, num_train, eval_set.images.shape[1:])
  steps_per_epoch = num_train // config.batch_size  # >= 1: validate_for_data checked it.
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
  configs.validate_objective(config, model.is_variational)
  tx = optim.make_optimizer(config.optimizer, total_steps, steps_per_epoch)
  if is_writer:
    workdir_path.mkdir(parents=True, exist_ok=True)
    check_config_change(workdir_path, config, allow_config_change)
    write_atomically(workdir_path / "config.json", config.to_json_best_effort(indent=2) + "\n")
    # What aejax.load needs to rebuild the model without loading the data set.
    run_info = {
      "image_shape": list(image_shape),
      "data": f"{config.data.name}/{train_set.source}",
      "num_train": num_train,
      "has_labels": train_set.labels is not None,
    }
    write_atomically(workdir_path / RUN_INFO_FILE, json.dumps(run_info, indent=2) + "\n")
  keys = derived_keys(config.seed)
  state = create_train_state(model, tx, image_shape, keys["init"], mesh)

  manager = checkpoint_manager(workdir_path, config.keep_checkpoints)
  restored = restore_latest(manager, state)
  writer = MetricWriter(workdir_path) if is_writer else None
  if writer:
    # Lines after the checkpoint (all of them without one) are from a run that died: redone now.
    writer.truncate_after(0 if restored is None else int(restored.step))
  if restored is not None:
    state = restored
    logging.info("Resumed from the checkpoint at step %d in %s", int(state.step), workdir)
  start_step = int(state.step)

  train_images = put_replicated(train_set.images, mesh)
  train_labels = put_replicated(train_set.labels, mesh)
  eval_data = prepare_eval_data(eval_set, eval_batch_size, mesh)
  multi_step_fn = make_multi_step(model, tx, config, mesh, num_train, keys)
  eval_fn = make_eval_fn(model, config, mesh, eval_batch_size, keys)

  logging.info(
    "%s on %s/%s: %d train, %d eval images of shape %s; %d parameters; %d devices (%s); "
    "batch %d (%d per device); %d steps (%d per epoch), up to %d per dispatch",
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
    config.steps_per_dispatch,
  )

  progress = tqdm.tqdm(
    total=total_steps,
    initial=start_step,
    desc="train",
    unit="step",
    dynamic_ncols=True,
    disable=not (config.progress_bar and is_writer),
  )
  pending_sums = []
  last_log_time, last_log_step = time.perf_counter(), start_step
  start_time = time.perf_counter()
  eval_metrics = {}
  skipped_steps = 0
  # Dispatches end at epoch ends too: one epoch's order per dispatch.
  intervals = (config.log_every_steps, eval_every, checkpoint_every, steps_per_epoch)
  step = start_step
  perm_fn = jax.jit(epoch_permutation, static_argnums=1, out_shardings=replicated(mesh))
  perm = None
  with StopRequest() as stop:
    while step < total_steps:
      # One dispatch runs up to the next log/eval/checkpoint boundary, at most K steps.
      num_steps = min(
        [config.steps_per_dispatch, total_steps - step]
        + [every - step % every for every in intervals]
      )
      if step % steps_per_epoch == 0 or perm is None:
        perm = perm_fn(keys, num_train, step // steps_per_epoch)
      state, sums = multi_step_fn(state, train_images, train_labels, perm, num_steps)
      pending_sums.append(sums)
      # The one scalar fetched per dispatch (not per step): did a non-finite step stop the loop?
      first_bad = int(sums["first_nonfinite_step"])
      if first_bad >= 0 and config.nonfinite == "stop":
        wait_for_checkpoints(manager)
        progress.close()
        if writer:
          writer.close()
        raise NonFiniteError(
          first_bad, int(sums["nonfinite"]), manager.latest_step(), str(workdir_path)
        )
      step += num_steps
      done = step
      progress.update(num_steps)

      if done % config.log_every_steps == 0 or done == total_steps:
        # Fetching metrics is a host sync; besides the scalar above it happens only here.
        fetched = jax.device_get(pending_sums)
        counted = sum(int(f["steps"]) for f in fetched)
        skipped_steps += sum(int(f["skipped_steps"]) for f in fetched)
        names = [k for k in fetched[0] if k not in MULTI_STEP_COUNTERS]
        train_metrics = {
          f"train/{k}": sum(float(f[k]) for f in fetched) / max(counted, 1) for k in names
        }
        now = time.perf_counter()
        train_metrics["train/images_per_sec"] = (
          (done - last_log_step) * config.batch_size / (now - last_log_time)
        )
        if config.nonfinite == "skip":
          train_metrics["train/skipped_steps"] = skipped_steps
        last_log_time, last_log_step, pending_sums = now, done, []
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
        save_checkpoint(manager, done, state)

      if stop.signum is not None:
        wait_for_checkpoints(manager)
        progress.close()
        if writer:
          writer.close()
        raise TrainingInterrupted(done, stop.signum, str(workdir_path))

  wait_for_checkpoints(manager)
  manager.close()
  progress.close()
  if not eval_metrics and not (workdir_path / "final_metrics.json").exists():
    # Restored at its last step (killed after the final checkpoint, before the summary): the
    # loop did not run, so evaluate now. Sweeps read final_metrics.json as "finished".
    eval_metrics = {f"eval/{k}": v for k, v in evaluate(eval_fn, state.params, eval_data).items()}
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
