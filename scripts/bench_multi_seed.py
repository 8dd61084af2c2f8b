"""Times S seeds trained as one vmapped program (train.train_population) against S separate runs.

  AEJAX_DATA_DIR=/path/to/data python scripts/bench_multi_seed.py \
    [--config=experiments/latent_sweep.py] [--seeds=1,4,8] [--steps=20] [--reps=5]

Both sides run the trainer's own fused loop (`steps.make_multi_step`, `steps`
steps per dispatch): a separate run is one seed's program, the vmapped group
the same function with S members. S separate runs one after
another cost S times one run's time. Steady state: every program is compiled
and run once before timing; the time is the median of `reps` repetitions, the
two sides alternating so that the machine's load changes hit both alike.
With --end_to_end_steps=N it also times whole runs of N steps: S calls of
train.train_and_evaluate against one train.train_population (data
loading, compilation, evaluation and figures included; in one process, so
without the imports a separate run's own process would also pay), alternating.
Prints Markdown tables (and writes them to --out as JSON).
"""

import argparse
import json
import pathlib
import statistics
import sys
import time


def _median_seconds_alternating(first, second, reps: int) -> tuple[float, float]:
  """Median wall times of `first()` and `second()`, run alternately `reps` times each."""
  times = ([], [])
  for _ in range(reps):
    for fn, out in zip((first, second), times, strict=True):
      start = time.perf_counter()
      fn()
      out.append(time.perf_counter() - start)
  return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="experiments/latent_sweep.py")
  parser.add_argument("--seeds", default="1,4,8", help="comma-separated group sizes S")
  parser.add_argument("--steps", type=int, default=20, help="steps per timed dispatch")
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--end_to_end_steps", type=int, default=0, help="> 0: also whole runs")
  parser.add_argument("--out", default="", help="also write the results here as JSON")
  args = parser.parse_args()

  import jax
  import jax.numpy as jnp

  from aejax import configs, data, models, optim, parallel, steps, sweep_grid

  module, arg = sweep_grid.load_config_module(args.config)
  config = module.get_config(arg)
  mesh = parallel.make_mesh(jax.devices()[:1])
  train_set, _ = data.load_splits(config)
  image_shape = train_set.images.shape[1:]
  num_train = len(train_set.images)
  counts = configs.step_counts(config, num_train)
  steps_per_epoch, total_steps = counts.steps_per_epoch, counts.total_steps
  model = models.build_model(config.model, image_shape)
  tx = optim.make_optimizer(config.optimizer, total_steps, steps_per_epoch)
  images = parallel.put_replicated(train_set.images, mesh)
  labels = parallel.put_replicated(train_set.labels, mesh)
  device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"

  # One separate run: the trainer's program for seed 0.
  keys = steps.derived_keys(0)
  hp = {k: jnp.float32(v) for k, v in steps.hparams(config).items()}
  separate_fn = steps.make_multi_step(model, config, mesh, num_train, total_steps, steps_per_epoch)
  box = {"state": steps.create_train_state(model, tx, image_shape, keys["init"], mesh)}
  perm = steps.make_permutation_fn(mesh)(keys, num_train, 0)

  def run_separate():
    # The steps go on from dispatch to dispatch (batches cut from epoch 0's order, wrapping
    # around): the work of every dispatch is the same.
    box["state"], sums = separate_fn(box["state"], images, labels, perm, args.steps, keys, hp)
    jax.block_until_ready(sums)

  run_separate()  # Compiles.

  rows, hp_s = [], {}
  for size in [int(s) for s in args.seeds.split(",")]:
    member_keys = parallel.stack([steps.derived_keys(seed) for seed in range(size)])
    hp_s[size] = {k: jnp.full((size,), v, jnp.float32) for k, v in steps.hparams(config).items()}
    chunk_fn = steps.make_multi_step(
      model, config, mesh, num_train, total_steps, steps_per_epoch, size, batched=True
    )
    # Vmapped even for S = 1: that row compares the vmapped program with the unbatched one.
    perms = jax.vmap(steps.epoch_permutation, in_axes=(0, None, None))(member_keys, num_train, 0)
    group = {
      "state": jax.vmap(lambda k: steps.create_train_state(model, tx, image_shape, k, mesh))(
        member_keys["init"]
      )
    }

    def run_group(group=group, chunk_fn=chunk_fn, keys=member_keys, perms=perms, size=size):
      group["state"], sums = chunk_fn(
        group["state"], images, labels, perms, args.steps, keys, hp_s[size]
      )
      jax.block_until_ready(sums)

    run_group()  # Compiles.
    # Alternated, so that a change in the machine's load hits both sides alike.
    one_run, vmapped = _median_seconds_alternating(run_separate, run_group, args.reps)
    one_run, vmapped = one_run / args.steps, vmapped / args.steps
    rows.append(
      {
        "seeds": size,
        "separate_ms_per_step": 1e3 * size * one_run,
        "vmapped_ms_per_step": 1e3 * vmapped,
        "speedup": size * one_run / vmapped,
        "vmapped_images_per_sec": size * config.batch_size / vmapped,
      }
    )

  lines = [
    f"{args.config}: {config.model.name} {config.model.hidden_widths} latent "
    f"{config.model.latent_dim} on {config.data.name}, batch {config.batch_size}; {device}; "
    f"{args.steps} steps per dispatch, median of {args.reps}.",
    "",
    "| seeds S | S separate runs (ms per step of all S) | vmapped (ms per step) | speed-up | "
    "vmapped images/s |",
    "|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
      f"| {r['seeds']} | {r['separate_ms_per_step']:.1f} | {r['vmapped_ms_per_step']:.1f} | "
      f"{r['speedup']:.2f}x | {r['vmapped_images_per_sec']:,.0f} |"
    )
  record = {"command": " ".join(["python", *sys.argv]), "device": device, "rows": rows}
  if args.end_to_end_steps:
    record["end_to_end"] = _end_to_end(config, args, lines)
  print("\n".join(lines))
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


def _end_to_end(config, args, lines: list[str]) -> list[dict]:
  """Whole runs: S separate train_and_evaluate calls against one vmapped group, alternating."""
  import copy
  import tempfile

  from aejax import train

  base = copy.deepcopy(config)
  base.total_steps = base.eval_every_steps = base.checkpoint_every_steps = args.end_to_end_steps
  base.final_figures = False
  rows = []
  for size in [int(s) for s in args.seeds.split(",") if int(s) > 1]:
    members = []
    for seed in range(size):
      c = copy.deepcopy(base)
      c.seed = seed
      members.append(c)

    def separate(members=members):
      with tempfile.TemporaryDirectory() as root:
        for i, c in enumerate(members):
          train.train_and_evaluate(c, f"{root}/{i}")

    def vmapped(members=members):
      with tempfile.TemporaryDirectory() as root:
        train.train_population(members, [f"{root}/{i}" for i in range(len(members))])

    seconds_separate, seconds_vmapped = _median_seconds_alternating(separate, vmapped, args.reps)
    rows.append(
      {
        "seeds": size,
        "steps": args.end_to_end_steps,
        "separate_seconds": seconds_separate,
        "vmapped_seconds": seconds_vmapped,
        "speedup": seconds_separate / seconds_vmapped,
      }
    )
  lines += [
    "",
    f"Whole runs of {args.end_to_end_steps} steps (data, compilation, evaluation and figures "
    f"included), median of {args.reps}:",
    "",
    "| seeds S | S separate runs (s) | one vmapped group (s) | speed-up |",
    "|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
      f"| {r['seeds']} | {r['separate_seconds']:.1f} | {r['vmapped_seconds']:.1f} | "
      f"{r['speedup']:.2f}x |"
    )
  return rows


if __name__ == "__main__":
  main()
