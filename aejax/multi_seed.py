"""Runs that differ only in seed (and beta or learning rate), trained as one vmapped program.

The S members' TrainStates are stacked on a leading axis and the trainer's own
step (`train.guarded_train_step`) is vmapped over (state, batch, keys, beta,
learning rate) inside a fused loop like the trainer's: S seeds cost one
compilation, one data load, one evaluation program and one dispatch per
chunk of steps instead of S (measured: whole runs 1.4x to 1.8x faster for
S = 2 to 8 on a 2-core CPU, though XLA's CPU backend makes the batched steps
themselves slower; docs/latent_sweep.md). Each member sees exactly the
batches and keys of its separate run (its seed's `train.derived_keys`), so
member i ends with the parameters `train.train_and_evaluate(configs[i])`
would give (tests/test_multi_seed.py). Each member's workdir is written in
the trainer's format (config.json, run_info.json, metrics.jsonl,
checkpoints/, final_metrics.json, figures): `aejax.load`, `aejax.evaluate`
and `python -m aejax.main` (which finds it finished) work on it.
"""

import json
import logging
import pathlib
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from aejax import configs as configs_lib
from aejax import errors, figures, models, optim, train
from aejax.metric_writer import MetricWriter

# The fields members may differ in. They enter the step only as numbers (a traced scalar per
# member), never in Python control flow, which is what lets one program serve every member.
VMAPPED_FIELDS = ("seed", "objective.beta", "optimizer.learning_rate")


def shared_fields(config: ml_collections.ConfigDict) -> dict:
  """The config as a flat {field: value} without VMAPPED_FIELDS: equal for runs that can share."""
  flat = train.flatten_fields(json.loads(config.to_json_best_effort()))
  return {name: value for name, value in flat.items() if name not in VMAPPED_FIELDS}


def check_group(configs: Sequence[ml_collections.ConfigDict]) -> None:
  """Raises ConfigError naming the first field outside VMAPPED_FIELDS that the configs differ in."""
  if not configs:
    raise errors.ConfigError("multi_seed: no configs given")
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


def _traced_config(config, beta: jax.Array, learning_rate: jax.Array) -> ml_collections.ConfigDict:
  """A copy of `config` whose beta and learning rate are this member's traced values.

  Type checks are off in the copy: the two fields hold tracers instead of floats.
  """
  c = ml_collections.ConfigDict(config.to_dict(), type_safe=False)
  c.objective.beta = beta
  c.optimizer.learning_rate = learning_rate
  return c


def make_group_chunk(model, config, mesh, num_train: int, total_steps: int, steps_per_epoch: int):
  """`(state_S, images, labels, perm_S, num_steps, keys_S, beta_S, lr_S) -> (state_S, sums_S)`.

  Jitted once: up to num_steps steps of every member in one dispatch, like the
  trainer's fused loop (train.make_multi_step), of which it keeps the outputs
  (metric sums and the non-finite counters, each (S,)). The loop counter is
  shared, and only the step inside it is vmapped: a vmapped while loop would
  carry a per-member predicate and select every member's whole state at
  every step. Per member the step is the trainer's own
  (`train.guarded_train_step`) with the member's keys, beta and learning rate
  as traced values. The batch stays sharded along 'data' under the member
  axis, the state is replicated and donated, as in the trainer.
  """
  stop_on_nonfinite = config.nonfinite == "stop"
  rep = train.replicated(mesh)

  def member_step(state, images, labels, perm, step, keys, beta, learning_rate):
    c = _traced_config(config, beta, learning_rate)
    # The optimizer's structure (and so the state's) does not depend on the rate, only its
    # numbers do: built inside the trace, it carries this member's rate.
    tx = optim.make_optimizer(c.optimizer, total_steps, steps_per_epoch)
    batch = jax.lax.with_sharding_constraint(
      train.cut_batch(c, keys, images, labels, perm, step), train.batch_sharded(mesh)
    )
    key = jax.random.fold_in(keys["step"], step)
    return train.guarded_train_step(state, batch, key, model=model, tx=tx, config=c)

  group_step = jax.vmap(member_step, in_axes=(0, None, None, 0, None, 0, 0, 0))

  def chunk(state, images, labels, perm, num_steps, keys, beta, learning_rate):
    first_step = state.step[0]  # Every member is at the same step.
    num_members = beta.shape[0]
    abstract = jax.eval_shape(
      lambda st: group_step(st, images, labels, perm, first_step, keys, beta, learning_rate)[1],
      state,
    )
    carry = {
      "i": jnp.zeros((), jnp.int32),
      "state": state,
      **train.init_step_counters(abstract, (num_members,)),
    }

    def cond(c):
      running = c["i"] < num_steps
      if stop_on_nonfinite:
        running &= jnp.all(c["first_nonfinite_step"] < 0)
      return running

    def body(c):
      step = first_step + c["i"]
      st = c["state"]
      new_st, metrics, finite, nonfinite = group_step(
        st, images, labels, perm, step, keys, beta, learning_rate
      )
      if stop_on_nonfinite:
        # As in the trainer: a bad member stays at the bad step (the loop then ends). Its
        # parameters and optimizer state are already the old ones: only the counter is held.
        new_st = new_st.replace(step=jnp.where(finite, new_st.step, st.step))
      return {
        "i": c["i"] + 1,
        "state": new_st,
        **train.count_step(c, metrics, finite, nonfinite, step),
      }

    out = jax.lax.while_loop(cond, body, carry)
    return out["state"], train.step_sums(out)

  return jax.jit(
    chunk,
    in_shardings=(rep, rep, rep, rep, None, rep, rep, rep),
    out_shardings=(rep, rep),
    donate_argnums=0,
  )


def make_group_permutation(mesh):
  """`(keys_S, num_train, epoch) -> perm_S`: each member's order of the training images in epoch."""
  return jax.jit(
    jax.vmap(train.epoch_permutation, in_axes=(0, None, None)),
    static_argnums=1,
    out_shardings=train.replicated(mesh),
  )


def make_group_eval(model, config, mesh, eval_batch_size: int):
  """`(params_S, images, labels, mask, j, keys_S, beta_S) -> sums of metrics over batch j, (S,)`."""

  def member_eval(params, images, labels, mask, j, keys, beta):
    c = _traced_config(config, beta, config.optimizer.learning_rate)
    eval_fn = train.make_eval_fn(model, c, mesh, eval_batch_size, keys)
    return eval_fn(params, images, labels, mask, j)

  return jax.jit(
    jax.vmap(member_eval, in_axes=(0, None, None, None, None, 0, 0)),
    out_shardings=train.replicated(mesh),
  )


def evaluate_group(eval_fn, params, eval_data: dict, keys, beta) -> list[dict[str, float]]:
  """Means over the evaluation split of every per-image metric, one dict per member."""
  totals = None
  for j in range(eval_data["num_batches"]):
    sums = eval_fn(
      params, eval_data["images"], eval_data["labels"], eval_data["mask"], j, keys, beta
    )
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  return [
    {name: float(value[i]) / eval_data["count"] for name, value in totals.items()}
    for i in range(len(beta))
  ]


# One compiled program for a whole pytree (with a traced index) instead of one per leaf shape.
@jax.jit
def _take(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


@jax.jit
def _stack(members):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *members)


def member(tree, i: int):
  """Member i of a pytree stacked on a leading axis."""
  return _take(tree, i)


def stack(members: Sequence):
  """Stacks equally shaped pytrees on a new leading axis."""
  return _stack(list(members))


def _final_step(workdir: pathlib.Path) -> int | None:
  try:
    return json.loads((workdir / "final_metrics.json").read_text())["step"]
  except (OSError, ValueError, KeyError):
    return None


def train_and_evaluate(
  configs: Sequence[ml_collections.ConfigDict],
  workdirs: Sequence[str | pathlib.Path],
  allow_config_change: bool = False,
) -> train.TrainState:
  """Trains configs[i] in workdirs[i] for every i as one vmapped program; returns the stacked state.

  The configs may differ only in VMAPPED_FIELDS (else ConfigError). Resumes
  when every member's newest checkpoint is at the same step (else
  CheckpointError), refusing checkpoints of another config like the trainer
  (train.check_config_change). Raises train.TrainingInterrupted on
  SIGTERM/SIGINT after checkpointing every member, and train.NonFiniteError
  for the first member with a NaN/inf step (config.nonfinite == "stop").
  """
  if len(configs) != len(workdirs) or not configs:
    raise ValueError(f"multi_seed: {len(configs)} configs for {len(workdirs)} workdirs")
  check_group(configs)
  mesh = train.make_mesh()
  for c in configs:
    configs_lib.validate(c, num_devices=mesh.size)
  config = configs[0]
  dirs = [pathlib.Path(w) for w in workdirs]
  num_members = len(configs)
  is_writer = jax.process_index() == 0

  # As in train.train_and_evaluate: data and model first, so bad ones leave no workdir behind.
  train_set, eval_set = train.load_data(config)
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
  eval_batch_size = min(config.eval_batch_size, mesh.size * -(-len(eval_set.images) // mesh.size))
  if config.model.num_classes:
    train.check_labels(train_set, config.model.num_classes)
    train.check_labels(eval_set, config.model.num_classes)
  model = models.build_model(config.model, image_shape)
  configs_lib.validate_objective(config, model.is_variational)
  if is_writer:
    run_info = {
      "image_shape": list(image_shape),
      "data": f"{config.data.name}/{train_set.source}",
      "num_train": num_train,
      "has_labels": train_set.labels is not None,
    }
    for c, d in zip(configs, dirs, strict=True):
      train.check_config_change(d, c, allow_config_change)
    for c, d in zip(configs, dirs, strict=True):
      d.mkdir(parents=True, exist_ok=True)
      (d / "config.json").write_text(c.to_json_best_effort(indent=2) + "\n")
      (d / train.RUN_INFO_FILE).write_text(json.dumps(run_info, indent=2) + "\n")

  member_keys = [train.derived_keys(c.seed) for c in configs]
  keys = stack(member_keys)
  beta = jnp.asarray([c.objective.beta for c in configs], jnp.float32)
  learning_rate = jnp.asarray([c.optimizer.learning_rate for c in configs], jnp.float32)
  # The trainer's own initialisation, vmapped over the init keys: member i starts from the
  # parameters of its separate run. The rate does not enter the initial state.
  tx = optim.make_optimizer(config.optimizer, total_steps, steps_per_epoch)
  state = jax.vmap(lambda k: train.create_train_state(model, tx, image_shape, k, mesh))(
    keys["init"]
  )

  managers = [train.checkpoint_manager(d, config.keep_checkpoints) for d in dirs]
  latest = [m.latest_step() for m in managers]
  writers = [MetricWriter(d) for d in dirs] if is_writer else []
  if any(step is not None for step in latest):
    if len(set(latest)) != 1:
      raise errors.CheckpointError(
        "multi_seed: the members' newest checkpoints are at different steps ("
        + ", ".join(f"{d.name}: {s}" for d, s in zip(dirs, latest, strict=True))
        + "); train them separately, or delete the newer checkpoints"
      )
    restored = [train.restore_latest(m, member(state, i)) for i, m in enumerate(managers)]
    steps = [None if r is None else int(r.step) for r in restored]
    if len(set(steps)) != 1:
      # restore_latest falls back to an older checkpoint when the newest is damaged.
      raise errors.CheckpointError(
        "multi_seed: the members restored different steps ("
        + ", ".join(f"{d.name}: {s}" for d, s in zip(dirs, steps, strict=True))
        + "); train them separately"
      )
    state = stack(restored)
    latest = steps
    for writer in writers:
      writer.truncate_after(latest[0])
    logging.info("Resumed %d members from their checkpoints at step %d", num_members, latest[0])
  start_step = latest[0] or 0

  train_images = train.put_replicated(train_set.images, mesh)
  train_labels = train.put_replicated(train_set.labels, mesh)
  eval_data = train.prepare_eval_data(eval_set, eval_batch_size, mesh)
  chunk_fn = make_group_chunk(model, config, mesh, num_train, total_steps, steps_per_epoch)
  eval_fn = make_group_eval(model, config, mesh, eval_batch_size)
  logging.info(
    "%s on %s/%s: %d members (%s) in one vmapped program; %d parameters each; %d devices (%s); "
    "batch %d; %d steps (%d per epoch), up to %d per dispatch",
    config.model.name,
    config.data.name,
    train_set.source,
    num_members,
    ", ".join(d.name for d in dirs),
    train.count_params(member(state.params, 0)),
    mesh.size,
    jax.devices()[0].platform,
    config.batch_size,
    total_steps,
    steps_per_epoch,
    config.steps_per_dispatch,
  )

  def save_all(step: int) -> None:
    for i, manager in enumerate(managers):
      train.save_checkpoint(manager, step, member(state, i))

  def close_all() -> None:
    for manager in managers:
      train.wait_for_checkpoints(manager)
    progress.close()
    for writer in writers:
      writer.close()

  def run_eval(step: int) -> list[dict]:
    results = evaluate_group(eval_fn, state.params, eval_data, keys, beta)
    eval_metrics = [{f"eval/{k}": v for k, v in r.items()} for r in results]
    for i, writer in enumerate(writers):
      writer.write(step, eval_metrics[i])
      writer.flush()
      params_i = member(state.params, i)
      train.write_figures(dirs[i], model, params_i, configs[i], eval_data, member_keys[i], step)
      figures.save_training_curves(
        dirs[i] / "curves.png",
        writer.path,
        title=f"Training curves: {config.model.name} on {config.data.name}",
      )
    return eval_metrics

  progress = tqdm.tqdm(
    total=total_steps,
    initial=start_step,
    desc=f"train x{num_members}",
    unit="step",
    dynamic_ncols=True,
    disable=not (config.progress_bar and is_writer),
  )
  pending_sums = []
  last_log_time, last_log_step = time.perf_counter(), start_step
  start_time = time.perf_counter()
  eval_metrics = []
  skipped_steps = np.zeros(num_members, np.int64)
  # The trainer's chunking: a dispatch ends at the next log/eval/checkpoint or epoch boundary.
  intervals = (config.log_every_steps, eval_every, checkpoint_every, steps_per_epoch)
  step = start_step
  perm_fn = make_group_permutation(mesh)
  perm = None
  with train.StopRequest() as stop:
    while step < total_steps:
      num_steps = min(
        [config.steps_per_dispatch, total_steps - step]
        + [every - step % every for every in intervals]
      )
      if step % steps_per_epoch == 0 or perm is None:
        perm = perm_fn(keys, num_train, step // steps_per_epoch)
      state, sums = chunk_fn(
        state, train_images, train_labels, perm, num_steps, keys, beta, learning_rate
      )
      pending_sums.append(sums)
      first_bad = np.asarray(sums["first_nonfinite_step"])
      if config.nonfinite == "stop" and (first_bad >= 0).any():
        i = int(np.argmax(first_bad >= 0))
        close_all()
        raise train.NonFiniteError(
          int(first_bad[i]), int(sums["nonfinite"][i]), managers[i].latest_step(), str(dirs[i])
        )
      step += num_steps
      done = step
      progress.update(num_steps)

      if done % config.log_every_steps == 0 or done == total_steps:
        fetched = jax.device_get(pending_sums)  # The host sync: (S,) sums per chunk.
        counted = np.sum([f["steps"] for f in fetched], axis=0)
        skipped_steps += np.sum([f["skipped_steps"] for f in fetched], axis=0)
        names = [k for k in fetched[0] if k not in train.MULTI_STEP_COUNTERS]
        now = time.perf_counter()
        # Images per second of each member; the group processes num_members times as many.
        rate = (done - last_log_step) * config.batch_size / (now - last_log_time)
        last_log_time, last_log_step, pending_sums = now, done, []
        for i, writer in enumerate(writers):
          record = {
            f"train/{k}": float(sum(f[k][i] for f in fetched)) / max(int(counted[i]), 1)
            for k in names
          }
          record["train/images_per_sec"] = rate
          if config.nonfinite == "skip":
            record["train/skipped_steps"] = int(skipped_steps[i])
          writer.write(done, record)
        progress.set_postfix(img_s=f"{rate * num_members:.0f}")

      if done % eval_every == 0 or done == total_steps:
        eval_metrics = run_eval(done)
      if done % checkpoint_every == 0 or done == total_steps or stop.signum is not None:
        save_all(done)
      if stop.signum is not None:
        close_all()
        where = f"{dirs[0]} (and the other {num_members - 1} members')"
        raise train.TrainingInterrupted(done, stop.signum, where)

  for manager in managers:
    train.wait_for_checkpoints(manager)
  progress.close()
  if is_writer:
    if not eval_metrics and not all(_final_step(d) == total_steps for d in dirs):
      # Resumed at the end without final metrics (stopped between the last checkpoint and
      # them): evaluate now rather than leave the members unfinished.
      eval_metrics = run_eval(total_steps)
    for d, metrics in zip(dirs, eval_metrics, strict=False):
      # The trainer's final_metrics.json: a member is finished exactly like a run.
      (d / "final_metrics.json").write_text(
        json.dumps({"step": total_steps, **metrics}, indent=2) + "\n"
      )
    if start_step < total_steps and config.final_figures:
      # Imported here like the trainer does: visualize builds on api, which builds on train.
      from aejax import api, visualize

      for i, (c, d) in enumerate(zip(configs, dirs, strict=True)):
        handle = api.TrainedModel(c, member(state.params, i), image_shape, total_steps)
        visualize.write_final_outputs(handle, eval_set, d)
    for writer in writers:
      writer.close()
  logging.info(
    "%d members: steps %d -> %d in %.1f s%s",
    num_members,
    start_step,
    total_steps,
    time.perf_counter() - start_time,
    "".join(
      f"\n  {d.name}: eval/loss {m['eval/loss']:.4f}"
      for d, m in zip(dirs, eval_metrics, strict=False)
    ),
  )
  return state
