"""The device programs of training: state, the train step, the fused loop and the eval step.

Everything here is a pure function of its arguments, jitted once per run.
A population of S runs that differ only in seed, beta or learning rate (a
sweep's seeds) is one program: the same step vmapped over a leading member
axis of the state, keys and hyper-parameters. A single run (S = 1) runs the
unbatched step behind the same signature: XLA's CPU backend makes batched
steps slower, and the unbatched step is the one every test pins down.
"""

import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from aejax import data, errors, losses, objectives, optim, parallel, tasks
from aejax.metrics import Average


class TrainState(flax.struct.PyTreeNode):
  """Everything a checkpoint holds. The data position and every RNG key derive from `step`."""

  step: jax.Array
  params: Any
  opt_state: Any


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
  return jax.jit(init, out_shardings=parallel.replicated(mesh))(key)


def count_params(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def derived_keys(seed: int) -> dict[str, jax.Array]:
  """Every RNG stream of a run, each a fixed function of the seed."""
  root = jax.random.key(seed)
  names = (
    "init", "shuffle", "corrupt", "step", "eval_corrupt", "eval_sample", "figure_samples",
    "render",
  )  # fmt: skip
  return {name: jax.random.fold_in(root, i) for i, name in enumerate(names)}


# The hyper-parameters a population's members may differ in. They enter the step only as
# numbers (an array per member), never in Python control flow or in a shape, which is what
# lets one compiled program serve every member.
HPARAM_FIELDS = {"beta": "objective.beta", "learning_rate": "optimizer.learning_rate"}


def hparams(config: ml_collections.ConfigDict) -> dict[str, float]:
  return {"beta": config.objective.beta, "learning_rate": config.optimizer.learning_rate}


# ---------------------------------------------------------------------------
# Batches, cut on device from the device-resident split.


def epoch_permutation(keys: dict[str, jax.Array], num_train: int, epoch: jax.Array) -> jax.Array:
  """The order of the training images in `epoch`: permutation(fold_in(shuffle_key, epoch))."""
  return jax.random.permutation(jax.random.fold_in(keys["shuffle"], epoch), num_train)


def cut_batch(config, keys, images, labels, perm, step, render=None):
  """The batch of `step`, whose epoch's order is `perm`, corrupted for the task.

  Pure and traceable: the data position is a function of the step alone, so a
  resumed run replays exactly the batches of an uninterrupted one, and a
  population's member sees the batches of its separate run. With `render`
  (a data.RenderedSet's), `images` holds factor indices and the batch's images
  are drawn from them here, their nuisances with fold_in(render_key, step).
  """
  index = step % (len(perm) // config.batch_size)
  idx = jax.lax.dynamic_slice_in_dim(perm, index * config.batch_size, config.batch_size)
  batch_labels = None if labels is None else labels[idx]
  batch_images = images[idx]
  if render is not None:
    batch_images = render(batch_images, jax.random.fold_in(keys["render"], step))
  return tasks.make_batch(
    jax.random.fold_in(keys["corrupt"], step), batch_images, batch_labels, config
  )


def streamed_batch(config, keys, images, labels, i, step, render=None):
  """Batch i of a streamed chunk, the batch of `step`, corrupted for the task as cut_batch's."""
  batch_images = images[i]
  batch_labels = None if labels is None else labels[i]
  if render is not None:
    batch_images = render(batch_images, jax.random.fold_in(keys["render"], step))
  return tasks.make_batch(
    jax.random.fold_in(keys["corrupt"], step), batch_images, batch_labels, config
  )


def make_train_batch_fn(
  config, mesh: Mesh, num_train: int, keys: dict[str, jax.Array], render=None
):  # fmt: skip
  """`(images, labels, step) -> batch`: the step's shuffled slice, sharded along 'data'."""
  steps_per_epoch = num_train // config.batch_size

  def train_batch(images, labels, step):
    perm = epoch_permutation(keys, num_train, step // steps_per_epoch)
    return cut_batch(config, keys, images, labels, perm, step, render)

  return jax.jit(train_batch, out_shardings=parallel.batch_sharded(mesh))


# ---------------------------------------------------------------------------
# The step.


def param_groups(model) -> tuple[str, ...]:
  """The model's extra parameter groups (a critic, a discriminator): see aejax/models.py."""
  return tuple(getattr(model, "extra_param_groups", ()))


def state_groups(model) -> tuple[str, ...]:
  """The model's parameter groups that `update_state` replaces each step instead of a gradient
  (an exponential-moving-average codebook): see aejax/models.py."""
  return tuple(getattr(model, "state_param_groups", ()))


def make_optimizer(
  model, config, total_steps: int, steps_per_epoch: int, learning_rate=None
) -> optax.GradientTransformation:
  """config.optimizer for the model's parameters, and a copy with its own state for each extra
  parameter group (with the fields the model's `group_optimizer(group)` replaces, if it has
  one); a state group gets no update from it (and holds no optimizer state). Without extra or
  state groups it is exactly optim.make_optimizer (the optimizer state of every checkpoint
  written so far)."""
  make = functools.partial(
    optim.make_optimizer, config.optimizer, total_steps, steps_per_epoch, learning_rate
  )
  groups, held = param_groups(model), state_groups(model)
  if not groups and not held:
    return make()

  def make_for(group):
    # A model may give a group settings of its own (FactorVAE's discriminator: dlib's Adam with
    # b1 0.5, b2 0.9): config.optimizer with those fields replaced. Its own learning rate, when
    # set, is fixed: a population's learning rates are the main optimizer's.
    settings = dict(model.group_optimizer(group)) if hasattr(model, "group_optimizer") else {}
    if not settings:
      return make()
    group_config = ml_collections.ConfigDict(config.optimizer.to_dict())
    for field, value in settings.items():
      if field not in group_config:
        raise errors.ConfigError(
          f"model {config.model.name!r}: group_optimizer({group!r}) sets {field!r}, which "
          f"config.optimizer does not have"
        )
      group_config[field] = value
    rate = None if "learning_rate" in settings else learning_rate
    return optim.make_optimizer(group_config, total_steps, steps_per_epoch, rate)

  transforms = {"model": make(), **{group: make_for(group) for group in groups}}
  transforms.update({group: optax.set_to_zero() for group in held})
  own = set(groups) | set(held)
  return optax.multi_transform(
    transforms, lambda params: {name: name if name in own else "model" for name in params}
  )


def _grads_and_metrics(state, batch, key, beta, *, model, config, hp=None):
  """The gradient of the batch-mean loss, the batch-mean metrics (with grad_norm) and the new
  values of the model's state groups.

  `hp` (a population member's, optional): its "member" (a padding.Member) goes to the losses and
  its "grad_mask" zeroes the gradient of its padding (aejax/padding.py).

  An extra parameter group g gets the gradient of its own term `loss_<g>`
  instead, and the rest of the parameters that of `loss`: each player of an
  adversarial pair descends its own objective on the same batch. A state group
  takes the value `update_state` computes from the same batch and the
  parameters before the step (its gradient is dropped).
  """
  kl_weight = losses.kl_weight(state.step, beta, config.objective.kl_warmup_steps)
  hp = hp or {}

  def loss_fn(params, name="loss"):
    terms = objectives.per_image_losses(
      model, params, batch, key, config, kl_weight, hp.get("member")
    )
    if name not in terms:
      raise errors.ConfigError(
        f"config.model.name: {config.model.name!r} declares the parameter group "
        f"{name[len('loss_') :]!r} but its losses() returns no {name!r} term"
      )
    return terms[name].mean(), terms

  grads, terms = jax.grad(loss_fn, has_aux=True)(state.params)
  for group in param_groups(model):
    group_grads, _ = jax.grad(loss_fn, has_aux=True)(state.params, f"loss_{group}")
    grads = {**grads, group: group_grads[group]}
  held = state_groups(model)
  new_groups = {}
  if held:
    new_groups = model.apply({"params": state.params}, batch, key, config, method="update_state")
    if set(new_groups) != set(held):
      raise errors.ConfigError(
        f"config.model.name: {config.model.name!r} declares the state groups {sorted(held)} but "
        f"its update_state() returns {sorted(new_groups)}"
      )
    grads = {**grads, **{group: jax.tree.map(jnp.zeros_like, grads[group]) for group in held}}
  if "grad_mask" in hp:
    grads = jax.tree.map(jnp.multiply, grads, hp["grad_mask"])
  metrics = {name: value.mean() for name, value in terms.items()}
  metrics["grad_norm"] = optax.tree.norm(grads)
  if model.is_variational:
    metrics["kl_weight"] = kl_weight
  return grads, metrics, new_groups


def _apply_gradients(
  state: TrainState, grads, tx: optax.GradientTransformation, new_groups=None
) -> TrainState:
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  if new_groups:
    params = {**params, **new_groups}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state)


def train_step(state, batch, key, *, model, tx, config):
  """One optimizer step on the global batch; returns the new state and batch-mean metrics."""
  grads, metrics, new_groups = _grads_and_metrics(
    state, batch, key, config.objective.beta, model=model, config=config
  )
  return _apply_gradients(state, grads, tx, new_groups), metrics


def make_train_step(model, tx, config, mesh: Mesh):
  """`train_step(state, batch, key) -> (state, metrics)`, jitted once for this mesh.

  The batch is sharded along 'data' and the state replicated, so XLA inserts
  the gradient all-reduce itself. The old state is donated: its buffers are
  reused for the new one instead of holding two copies of params and moments.
  """
  step = functools.partial(train_step, model=model, tx=tx, config=config)
  rep = parallel.replicated(mesh)
  return jax.jit(
    step,
    in_shardings=(rep, parallel.batch_sharded(mesh), rep),
    out_shardings=(rep, rep),
    donate_argnums=0,
  )


# Non-finite guard codes, reported by the fused loop: which quantity went bad first.
NONFINITE_LOSS, NONFINITE_GRADS = 1, 2
# What a fused loop returns besides the summed metrics.
MULTI_STEP_COUNTERS = ("steps", "skipped_steps", "first_nonfinite_step", "nonfinite")


def guarded_train_step(state, batch, key, hp, *, model, tx, config):
  """`train_step` with the member's hyper-parameters `hp` that never applies a non-finite update.

  If the loss or any gradient is NaN/inf, the parameters and optimizer state
  stay as they were (the step counter still advances, so the data position
  and keys move on) and `nonfinite` says what went bad (NONFINITE_* bits).
  """
  grads, metrics, new_groups = _grads_and_metrics(
    state, batch, key, hp["beta"], model=model, config=config, hp=hp
  )
  bad_loss = ~jnp.isfinite(metrics["loss"])
  bad_grads = ~jnp.isfinite(metrics["grad_norm"])  # The global norm is NaN/inf iff a leaf is.
  if new_groups:  # A non-finite state update counts as a non-finite gradient.
    bad_grads |= ~jnp.isfinite(optax.tree.norm(new_groups))
  finite = ~(bad_loss | bad_grads)
  # A conditional, not a select of new against old: only one branch runs, so a finite step
  # costs what train_step costs (docs/performance.md measures the difference).
  new_state = jax.lax.cond(
    finite,
    lambda: _apply_gradients(state, grads, tx, new_groups),
    lambda: state.replace(step=state.step + 1),
  )
  nonfinite = bad_loss.astype(jnp.int32) * NONFINITE_LOSS + bad_grads.astype(jnp.int32) * (
    NONFINITE_GRADS
  )
  return new_state, metrics, finite, nonfinite


def _init_counters(abstract_metrics, shape: tuple[int, ...]) -> dict[str, jax.Array]:
  return {
    "sums": jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), abstract_metrics),
    "steps": jnp.zeros(shape, jnp.int32),
    "skipped_steps": jnp.zeros(shape, jnp.int32),
    "first_nonfinite_step": jnp.full(shape, -1, jnp.int32),
    "nonfinite": jnp.zeros(shape, jnp.int32),
  }


def _count_step(counters, metrics, finite, nonfinite, step) -> dict[str, jax.Array]:
  """A finite step's metrics are summed and counted in `steps`; a non-finite one in
  `skipped_steps`, and the first one's step and what went bad (NONFINITE_* bits) are kept."""
  first_bad = counters["first_nonfinite_step"]
  return {
    "sums": jax.tree.map(lambda t, m: t + jnp.where(finite, m, 0.0), counters["sums"], metrics),
    "steps": counters["steps"] + finite.astype(jnp.int32),
    "skipped_steps": counters["skipped_steps"] + (~finite).astype(jnp.int32),
    "first_nonfinite_step": jnp.where((first_bad < 0) & ~finite, step, first_bad),
    "nonfinite": jnp.where(counters["nonfinite"] == 0, nonfinite, counters["nonfinite"]),
  }


def make_multi_step(
  model, config, mesh: Mesh, num_train: int, total_steps: int, steps_per_epoch: int,
  num_members: int = 1, batched: bool | None = None, render=None, streamed: bool = False,
):  # fmt: skip
  """`(state, images, labels, perm, num_steps, keys, hp) -> (state, sums)`: fused steps.

  Runs up to num_steps steps of every member on device in one dispatch: the
  batch of step s is cut from the device-resident data set and corrupted for
  the task, the step key is fold_in(step_key, s), and the metrics are summed
  on device. All the steps lie in one epoch, whose order `perm` the caller
  draws once per epoch (a permutation of 60,000 images costs more than an
  MLP's training step). `num_steps` is traced, so one `lax.while_loop` serves
  every chunk length with one compilation: log, eval, checkpoint and epoch
  boundaries never recompile (a `lax.scan` needs its length at compile time).

  With num_members > 1 the state, perm, keys and hp carry a leading member
  axis and the step is vmapped; the loop counter is shared (a vmapped while
  loop would select every member's whole state at every step). Each member
  builds its optimizer inside the trace from its own learning rate: the
  optimizer state's structure does not depend on the rate, only its numbers.

  Non-finite steps are never applied (`guarded_train_step`). With
  config.nonfinite == "stop" the loop ends at the first one and `sums`
  reports its step (`first_nonfinite_step`, else -1) and what went bad; with
  "skip" it goes on and counts `skipped_steps`. `sums["steps"]` counts the
  finite steps whose metrics are summed. The state is donated.

  `render` (a data.RenderedSet's): `images` are factor indices, rendered per
  batch in the step (see cut_batch); an ImageSet's decodes uint8 grey levels.

  `streamed`: `images` and `labels` are not the split but a chunk of the next
  batches from the host (aejax/feeding.py), (K, B, ...) or with members
  (S, K, B, ...), step i of the dispatch using row i; `perm` is then unused.

  `batched` (default: num_members > 1) forces the vmapped program for one
  member too: scripts/bench_multi_seed.py times it against the unbatched one.
  """
  stop_on_nonfinite = config.nonfinite == "stop"
  batched = num_members > 1 if batched is None else batched

  def member_step(state, images, labels, perm, i, step, keys, hp):
    tx = make_optimizer(model, config, total_steps, steps_per_epoch, hp["learning_rate"])
    if streamed:
      batch = streamed_batch(config, keys, images, labels, i, step, render)
    else:
      batch = cut_batch(config, keys, images, labels, perm, step, render)
    batch = jax.lax.with_sharding_constraint(batch, parallel.batch_sharded(mesh))
    key = jax.random.fold_in(keys["step"], step)
    return guarded_train_step(state, batch, key, hp, model=model, tx=tx, config=config)

  # A stream's chunk holds each member's own batches; a resident split is shared.
  data_axis = 0 if streamed else None
  step_fn = member_step
  if batched:
    step_fn = jax.vmap(member_step, in_axes=(0, data_axis, data_axis, 0, None, None, 0, 0))

  def multi_step(state, images, labels, perm, num_steps, keys, hp):
    first_step = state.step[0] if batched else state.step  # Every member is at the same step.
    abstract = jax.eval_shape(
      lambda st: step_fn(st, images, labels, perm, 0, first_step, keys, hp)[1], state
    )
    shape = (num_members,) if batched else ()
    carry = {"i": jnp.zeros((), jnp.int32), "state": state, **_init_counters(abstract, shape)}

    def cond(c):
      running = c["i"] < num_steps
      if stop_on_nonfinite:
        running &= jnp.all(c["first_nonfinite_step"] < 0)
      return running

    def body(c):
      step = first_step + c["i"]
      st = c["state"]
      new_st, metrics, finite, nonfinite = step_fn(st, images, labels, perm, c["i"], step, keys, hp)
      if stop_on_nonfinite:
        # The state stays at the bad step: a rerun (or the checkpoint) starts right before it.
        # Parameters and optimizer state are already the old ones (guarded_train_step), so only
        # the counter is held back: a select over the whole state costs as much as Adam.
        new_st = new_st.replace(step=jnp.where(finite, new_st.step, st.step))
      return {"i": c["i"] + 1, "state": new_st, **_count_step(c, metrics, finite, nonfinite, step)}

    out = jax.lax.while_loop(cond, body, carry)
    sums = {**out["sums"], **{name: out[name] for name in MULTI_STEP_COUNTERS}}
    return out["state"], sums

  rep = parallel.replicated(mesh)
  # The data keep the sharding they were put with: a resident split sharded or replicated
  # over 'data' (XLA gathers a batch from shards with one all-reduce of the batch), a
  # streamed chunk sharded along its batch axis.
  return jax.jit(
    multi_step,
    in_shardings=(rep, None, None, rep, None, rep, rep),
    out_shardings=(rep, rep),
    donate_argnums=0,
  )


def make_permutation_fn(mesh: Mesh, num_members: int = 1):
  """`(keys, num_train, epoch) -> perm`: each member's order of the training images in epoch."""
  fn = epoch_permutation
  if num_members > 1:
    fn = jax.vmap(epoch_permutation, in_axes=(0, None, None))
  return jax.jit(fn, static_argnums=1, out_shardings=parallel.replicated(mesh))


# ---------------------------------------------------------------------------
# Evaluation over a padded, device-resident split.


def prepare_eval_data(eval_set: data.ImageSet, eval_batch_size: int, mesh: Mesh) -> dict[str, Any]:
  """The split as whole batches on device, sharded over 'data' along each batch.

  Padded to a multiple of eval_batch_size (a mask keeps the padding out of the
  means) and laid out (num_batches, eval_batch_size, ...) with the second axis
  split over the devices: batch j is already where its step needs it, and each
  device holds 1/num_devices of the split, as uint8 when the images are 8-bit
  (eval_set.render decodes them in the step). `host_*`: the split on the host
  (not copied), for figures.
  """
  images, mask = parallel.pad_to_multiple(eval_set.stored, eval_batch_size)
  labels = None
  if eval_set.labels is not None:
    labels, _ = parallel.pad_to_multiple(eval_set.labels.astype(np.int32), eval_batch_size)
  num_batches = len(images) // eval_batch_size

  def put(x):
    if x is None:
      return None
    return parallel.put_sharded(x.reshape(num_batches, eval_batch_size, *x.shape[1:]), mesh, 1)

  return {
    "images": put(images),
    "labels": put(labels),
    "mask": put(mask),
    "num_batches": num_batches,
    "count": len(eval_set.images),
    "host_images": eval_set.images,
    "host_labels": eval_set.labels,
  }


def make_eval_fn(
  model, config, mesh: Mesh, eval_batch_size: int, num_members: int = 1, render=None
):  # fmt: skip
  """`(params, images, labels, mask, j, keys, hp) -> {name: Average}` over eval batch j.

  `images`, `labels` and `mask` are prepare_eval_data's; `render` the eval
  set's (decodes uint8 grey levels). Keys are fixed per batch index, so
  evaluation is deterministic; the KL weight is the member's final beta
  (hp["beta"]; a padded member's hp["member"] goes to the losses). With
  num_members > 1, params, keys and hp carry a member axis.
  """
  del eval_batch_size  # The layout of prepare_eval_data holds it.

  def eval_batch(params, images, labels, mask, j, keys, hp):
    x = images[j]
    if render is not None:
      x = render(x, None)
    y = None if labels is None else labels[j]
    m = mask[j]
    batch = tasks.make_batch(jax.random.fold_in(keys["eval_corrupt"], j), x, y, config)
    batch = jax.lax.with_sharding_constraint(batch, parallel.batch_sharded(mesh))
    final_kl_weight = jnp.asarray(hp["beta"], jnp.float32)
    key = jax.random.fold_in(keys["eval_sample"], j)
    terms = objectives.per_image_losses(
      model, params, batch, key, config, final_kl_weight, hp.get("member")
    )
    return {name: Average.from_array(value, m) for name, value in terms.items()}

  if num_members > 1:
    eval_batch = jax.vmap(eval_batch, in_axes=(0, None, None, None, None, 0, 0))
  return jax.jit(eval_batch, out_shardings=parallel.replicated(mesh))


def evaluate_split(eval_fn, params, eval_data: dict, keys, hp, num_members: int = 1) -> list[dict]:
  """Means over the whole evaluation split of every per-image metric, one dict per member.

  `hp`: the members' hyper-parameters (make_eval_fn reads "beta" and "member")."""
  totals = None
  for j in range(eval_data["num_batches"]):
    batch = eval_fn(
      params, eval_data["images"], eval_data["labels"], eval_data["mask"], j, keys, hp
    )
    totals = batch if totals is None else jax.tree.map(Average.merge, totals, batch, is_leaf=_avg)
  totals = jax.device_get(totals)  # The only host sync of an evaluation.
  if num_members == 1:
    return [{name: avg.compute() for name, avg in totals.items()}]
  return [
    {name: Average(avg.total[i], avg.count[i]).compute() for name, avg in totals.items()}
    for i in range(num_members)
  ]


def _avg(x) -> bool:
  return isinstance(x, Average)
