"""Training and evaluation throughput of aejax's models, one JSON line per case.

  AEJAX_DATA_DIR=/path/to/data python scripts/benchmark.py --case=all --framework=both > b.jsonl
  python scripts/benchmark.py --table=b.jsonl    # the lines as a Markdown table with the ratios
  python scripts/benchmark.py --case=pythae_conv_vae [--batch_size=128] [--framework=jax|torch]

Cases (real MNIST, Adam): `lesson_conv_ae` (the lesson's conv AE, batch 128),
`iwae_mlp` (Burda et al.'s 784-200-200-50 tanh VAE, k=1 ELBO, dynamic
binarization; batch 20 and 128), `pythae_conv_vae` (Pythae's MNIST benchmark
conv VAE, 17.2M parameters, batch 128). `--case=all` runs every case (and both
IWAE batch sizes), each in a fresh process so that peak memory is per case.

What a JAX line reports (medians over `--reps` repetitions, compilation excluded):
- train_images_per_sec: the fused trainer (`steps.make_multi_step`: up to K
  steps per dispatch in one `lax.while_loop`, batches cut on device);
  train_images_per_sec_plain: one step per dispatch (`steps.make_train_step`,
  the batch cut by `steps.cut_batch` in its own dispatch, a plain Python
  loop); fused_over_plain.
- compile_seconds: tracing + XLA compilation of the fused step.
- eval_images_per_sec: `steps.make_eval_fn` over the test split (ELBO terms);
  for iwae_mlp also nll_images_per_sec: the 5000-sample importance-weighted
  bound (`estimators.iwae_bounds`, chunks of 128 samples).
- flops_per_image: XLA's cost analysis of one training step (forward,
  backward, Adam) over the batch size; achieved_gflops and
  fraction_of_matmul against matmul_gflops, a 2048x2048 float32 matmul
  measured by this script just before the case.
- peak_memory_mb: on CPU the process's peak resident set size (getrusage
  ru_maxrss: everything the process held, data set included); on GPU/TPU the
  device's peak_bytes_in_use.
- load_avg_start/end: the 1-minute load average, since other processes skew CPU numbers.

`--framework=torch` (or `both`) runs scripts/benchmark_torch.py, the same cases
in PyTorch (not an aejax dependency: `pip install torch`; Pythae's own VAE is
added where `pip install pythae` has been done).
"""

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Default batch sizes: `--case=all` (and a case without --batch_size) runs each of them.
CASES = {
  "lesson_conv_ae": (128,),
  "iwae_mlp": (20, 128),
  "pythae_conv_vae": (128,),
}
# Images of the test split used by the evaluation throughput (the conv VAE is slow on CPUs).
EVAL_IMAGES = {"lesson_conv_ae": 10_000, "iwae_mlp": 10_000, "pythae_conv_vae": 1_000}
NLL_SAMPLES, NLL_IMAGES = 5000, 100


def _parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--case", default="all", help=f"all or one of {', '.join(CASES)}")
  parser.add_argument("--batch_size", type=int, default=0, help="0: the case's default(s)")
  parser.add_argument("--framework", default="jax", choices=("jax", "torch", "both"))
  parser.add_argument("--reps", type=int, default=5, help="timed repetitions (median)")
  parser.add_argument(
    "--seconds_per_rep", type=float, default=4.0, help="training steps per repetition: about this"
  )
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--conv_impl", default="auto", choices=("auto", "xla", "im2col"))
  parser.add_argument("--no_plain", action="store_true", help="skip the one-step-per-dispatch loop")
  parser.add_argument("--quick", action="store_true", help="few, short repetitions (tests)")
  parser.add_argument("--torch_threads", type=int, default=0, help="0: the CPU cores")
  parser.add_argument(
    "--table",
    default="",
    help="a file of this script's JSON lines: print them as Markdown, run nothing",
  )
  args = parser.parse_args(argv)
  if args.case != "all" and args.case not in CASES:
    parser.error(f"--case: unknown case {args.case!r}; valid: all, {', '.join(CASES)}")
  if args.quick:
    args.reps, args.seconds_per_rep = 2, 0.2
  return args


def _runs(args) -> list[tuple[str, int]]:
  names = list(CASES) if args.case == "all" else [args.case]
  return [(n, b) for n in names for b in ((args.batch_size,) if args.batch_size else CASES[n])]


def _cpu_seconds() -> float:
  """User + system CPU time of this process, all threads."""
  return sum(os.times()[:2])


def _timed(fn, reps: int) -> tuple[float, float]:
  """Medians of (wall seconds, process CPU seconds) of `reps` calls of fn."""
  walls, cpus = [], []
  for _ in range(reps):
    start, cpu = time.perf_counter(), _cpu_seconds()
    fn()
    walls.append(time.perf_counter() - start)
    cpus.append(_cpu_seconds() - cpu)
  return statistics.median(walls), statistics.median(cpus)


def _median_time(fn, reps: int) -> float:
  return _timed(fn, reps)[0]


def matmul_gflops(reps: int = 5, n: int = 2048) -> tuple[float, float]:
  """float32 matmul throughput as XLA reaches it (n x n x n, median): per second and per CPU-second.

  Per CPU-second (process user + system time) is the steadier number on a shared machine:
  it counts only the time this process's threads ran.
  """
  import jax
  import jax.numpy as jnp

  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  matmul = jax.jit(jnp.dot)
  matmul(a, b).block_until_ready()
  wall, cpu = _timed(lambda: matmul(a, b).block_until_ready(), reps)
  return 2 * n**3 / wall / 1e9, 2 * n**3 / max(cpu, 1e-3) / 1e9


def case_config(name: str, batch_size: int, dtype: str, conv_impl: str, quick: bool = False):
  """The experiment config of a case, with the benchmark's batch size and compute settings."""
  from aejax import configs
  from experiments import iwae_burda, lesson_conv_ae

  if name == "lesson_conv_ae":
    c = lesson_conv_ae.get_config()
  elif name == "iwae_mlp":
    c = iwae_burda.get_config("vae,k1")
  elif name == "pythae_conv_vae":
    # Pythae's MNIST benchmark: latent 16, Adam 1e-3; Bernoulli decoder on grey levels.
    c = configs.default_config()
    c.data.name = "mnist"
    c.model.name = "pythae_conv_vae"
    c.model.latent_dim = 16
  else:
    raise ValueError(f"unknown case {name!r}; valid: {', '.join(CASES)}")
  c.batch_size = batch_size
  c.eval_batch_size = 1000 if name != "pythae_conv_vae" else 500
  c.data.eval_limit = EVAL_IMAGES[name] if not quick else 64
  c.progress_bar = False
  configs.validate(c, num_devices=1)
  # Compute settings are read with defaults by aejax.models (config fields may not exist yet).
  c.model.dtype = dtype
  c.model.conv_impl = conv_impl
  return c


def _peak_memory_mb() -> tuple[float, str]:
  import jax

  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2**20, "device peak_bytes_in_use"
  # ru_maxrss is in KiB on Linux.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process max RSS"


def _steps_for(seconds_per_step: float, target: float, lo: int = 1, hi: int = 20_000) -> int:
  return int(min(hi, max(lo, round(target / max(seconds_per_step, 1e-6)))))


def run_case(name: str, batch_size: int, args) -> dict:
  """Measures one case in JAX; returns its JSON record."""
  import jax
  import jax.numpy as jnp

  from aejax import data, estimators, layers, losses, models, optim, parallel, steps

  load_start = os.getloadavg()[0]
  gflops_matmul, gflops_matmul_cpu = matmul_gflops(*((3, 1024) if args.quick else ()))
  c = case_config(name, batch_size, args.dtype, args.conv_impl, args.quick)
  mesh = parallel.make_mesh()
  train_set, eval_set = data.load_splits(c)
  image_shape = train_set.images.shape[1:]
  num_train = len(train_set.images)
  model = models.build_model(c.model, image_shape)
  tx = optim.make_optimizer(c.optimizer, 10**6, num_train // batch_size)
  keys = steps.derived_keys(c.seed)
  state = steps.create_train_state(model, tx, image_shape, keys["init"], mesh)
  images = parallel.put_replicated(train_set.images, mesh)
  labels = None
  reps = args.reps

  # Fused steps: compiled ahead of time, so compile time is measured on its own; num_steps is a
  # traced argument, so every chunk length below runs the same executable.
  steps_per_epoch = num_train // batch_size
  multi_step = steps.make_multi_step(model, c, mesh, num_train, 10**6, steps_per_epoch)
  hp = {k: jnp.float32(v) for k, v in steps.hparams(c).items()}
  perm_jit = jax.jit(
    lambda epoch: jax.random.permutation(jax.random.fold_in(keys["shuffle"], epoch), num_train)
  )
  perms = {}

  def perm_fn(epoch):
    # Drawn once per epoch, as the trainer does (a permutation of 60,000 costs more than a step).
    if epoch not in perms:
      perms.clear()
      perms[epoch] = perm_jit(epoch)
    return perms[epoch]

  start = time.perf_counter()
  compiled = multi_step.lower(state, images, labels, perm_fn(0), 1, keys, hp).compile()
  compile_seconds = time.perf_counter() - start

  def run_fused(state, num_steps):
    """num_steps fused steps, one dispatch per epoch they touch, as train_and_evaluate runs them."""
    step, end = int(state.step), int(state.step) + num_steps
    while step < end:
      chunk = min(end - step, steps_per_epoch - step % steps_per_epoch)
      perm = perm_fn(step // steps_per_epoch)
      state, sums = compiled(state, images, labels, perm, chunk, keys, hp)
      step += chunk
    jax.block_until_ready(state)
    assert int(sums["first_nonfinite_step"]) < 0, "a non-finite step during the benchmark"
    return state

  state = run_fused(state, 2)  # Warm-up: first-touch allocations.
  start = time.perf_counter()
  state = run_fused(state, 2)
  # At least 3 steps per dispatch, so that even the slowest case measures fused steps.
  num_steps = _steps_for((time.perf_counter() - start) / 2, args.seconds_per_rep, lo=3)
  times, cpu_times = [], []
  for _ in range(reps):
    start, cpu = time.perf_counter(), _cpu_seconds()
    state = run_fused(state, num_steps)
    times.append(time.perf_counter() - start)
    cpu_times.append(_cpu_seconds() - cpu)
  fused_ips = num_steps * batch_size / statistics.median(times)
  fused_ips_cpu = num_steps * batch_size / max(statistics.median(cpu_times), 1e-3)

  # One step per dispatch: the loop the fused trainer replaces. The same batches (the epoch's
  # permutation drawn once per epoch, the batch cut and corrupted in its own small dispatch) and
  # the trainer's jitted, donating train step.
  plain_ips = None
  if not args.no_plain:
    step_fn = steps.make_train_step(model, tx, c, mesh)

    # The trainer's own batch cutter, in its own dispatch.
    cut_batch = jax.jit(lambda perm, step: steps.cut_batch(c, keys, images, labels, perm, step))

    def run_plain(state, num_steps):
      perm, epoch = None, None
      for s in range(int(state.step), int(state.step) + num_steps):
        if s // steps_per_epoch != epoch:
          epoch = s // steps_per_epoch
          perm = perm_fn(epoch)
        batch = cut_batch(perm, s)
        state, _ = step_fn(state, batch, jax.random.fold_in(keys["step"], s))
      jax.block_until_ready(state)
      return state

    state = run_plain(state, 2)  # Compiles.
    start = time.perf_counter()
    state = run_plain(state, 2)
    plain_steps = _steps_for((time.perf_counter() - start) / 2, args.seconds_per_rep / 2)
    plain_times = []
    for _ in range(max(2, reps - 2)):
      start = time.perf_counter()
      state = run_plain(state, plain_steps)
      plain_times.append(time.perf_counter() - start)
    plain_ips = plain_steps * batch_size / statistics.median(plain_times)

  # FLOPs of one training step from XLA's cost analysis (a step, not the while loop, whose
  # cost analysis would count the body once without its trip count).
  step_flops = None
  try:
    batch = {"input": images[:batch_size], "target": images[:batch_size]}
    step_jit = jax.jit(
      lambda st, b, k: steps.train_step(st, b, k, model=model, tx=tx, config=c),
    )
    cost = step_jit.lower(state, batch, keys["step"]).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    step_flops = float(cost["flops"]) if cost and cost.get("flops", 0) > 0 else None
  except Exception:  # noqa: BLE001 Cost analysis is best effort; some backends have none.
    step_flops = None

  # Evaluation: the trainer's eval function over (config.data.eval_limit images of) the test split.
  eval_bs = min(c.eval_batch_size, len(eval_set.images))
  eval_data = steps.prepare_eval_data(eval_set, eval_bs, mesh)
  eval_fn = steps.make_eval_fn(model, c, mesh, eval_bs, render=eval_set.render)
  steps.evaluate_split(eval_fn, state.params, eval_data, keys, hp)  # Compiles.
  eval_seconds = _median_time(
    lambda: steps.evaluate_split(eval_fn, state.params, eval_data, keys, hp), max(2, reps - 2)
  )
  record = {}
  record["eval_images_per_sec"] = eval_data["count"] / eval_seconds

  if name == "iwae_mlp":
    num_samples, nll_images = (20, 8) if args.quick else (NLL_SAMPLES, NLL_IMAGES)
    likelihood = c.model.likelihood

    @jax.jit
    def nll(params, x, key):
      key_bin, key_iwae = jax.random.split(key)
      x = jax.random.bernoulli(key_bin, x).astype(x.dtype)
      post = model.apply({"params": params}, x, method="encode")

      def log_px_given_z(x_BxHxWxC, z_BxD):
        logits = model.apply({"params": params}, z_BxD, method="decode")
        return -losses.reconstruction_nll(likelihood, logits, x_BxHxWxC)

      bounds = estimators.iwae_bounds(
        key_iwae, x, post["mean"], post["logvar"], log_px_given_z, (num_samples,)
      )
      return -bounds[0]

    x = jnp.asarray(eval_set.images[:nll_images])
    nll(state.params, x, keys["eval_sample"]).block_until_ready()  # Compiles.
    nll_seconds = _median_time(
      lambda: nll(state.params, x, keys["eval_sample"]).block_until_ready(), max(2, reps - 3)
    )
    record["nll_samples"] = num_samples
    record["nll_images_per_sec"] = nll_images / nll_seconds

  peak_mb, peak_kind = _peak_memory_mb()
  device = jax.devices()[0]
  flops_per_image = step_flops / batch_size if step_flops else None
  achieved = fused_ips * flops_per_image / 1e9 if flops_per_image else None
  on_cpu = jax.devices()[0].platform == "cpu"
  achieved_cpu = fused_ips_cpu * flops_per_image / 1e9 if flops_per_image and on_cpu else None
  return {
    "case": name,
    "framework": "jax",
    "batch_size": batch_size,
    "train_images_per_sec": fused_ips,
    "train_images_per_sec_plain": plain_ips,
    "fused_over_plain": fused_ips / plain_ips if plain_ips else None,
    "steps_per_dispatch": num_steps,
    "reps": reps,
    "compile_seconds": compile_seconds,
    **record,
    "flops_per_image": flops_per_image,
    "achieved_gflops": achieved,
    "matmul_gflops": gflops_matmul,
    "fraction_of_matmul": achieved / gflops_matmul if achieved else None,
    # The same per CPU-second of this process (CPU only): steadier when other processes run.
    "train_images_per_cpu_sec": fused_ips_cpu if on_cpu else None,
    "matmul_gflops_per_cpu_sec": gflops_matmul_cpu if on_cpu else None,
    "fraction_of_matmul_cpu": achieved_cpu / gflops_matmul_cpu if achieved_cpu else None,
    "peak_memory_mb": peak_mb,
    "peak_memory_kind": peak_kind,
    "device": device.platform,
    "device_kind": device.device_kind,
    "device_count": jax.device_count(),
    "num_params": steps.count_params(state.params),
    "dtype": args.dtype,
    "conv_impl": layers.resolve_conv_impl(args.conv_impl),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "jax_version": jax.__version__,
    "load_avg_start": load_start,
    "load_avg_end": os.getloadavg()[0],
  }


def _forward(argv: list[str], script: pathlib.Path) -> int:
  """Runs `script argv` in a fresh process, passing its JSON lines through."""
  result = subprocess.run([sys.executable, str(script), *argv], stdout=subprocess.PIPE, text=True)
  sys.stdout.write(result.stdout)
  sys.stdout.flush()
  return result.returncode


def markdown_table(records: list[dict]) -> str:
  """The JSON lines of one or more runs as a Markdown table, with each JAX line's ratios to the
  PyTorch and Pythae lines of the same case and batch size."""
  by_case = {}
  for r in records:
    by_case.setdefault((r["case"], r["batch_size"]), {})[r["framework"]] = r
  lines = [
    "| case | batch | framework | train img/s | plain img/s | eval img/s | peak MB "
    "| x PyTorch | x Pythae | fraction of matmul | load |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ]

  def num(value, digits=0):
    return "" if value is None else f"{value:,.{digits}f}"

  for (case, batch), frameworks in by_case.items():
    jax_ips = frameworks.get("jax", {}).get("train_images_per_sec")
    for name, r in frameworks.items():
      ratios = ["", ""]
      if name == "jax":
        for i, other in enumerate(("torch", "pythae")):
          if other in frameworks:
            ratios[i] = f"{jax_ips / frameworks[other]['train_images_per_sec']:.2f}"
      load = f"{r.get('load_avg_start', 0):.1f}-{r.get('load_avg_end', 0):.1f}"
      lines.append(
        f"| {case} | {batch} | {name} | {num(r['train_images_per_sec'])} "
        f"| {num(r.get('train_images_per_sec_plain'))} | {num(r.get('eval_images_per_sec'))} "
        f"| {num(r.get('peak_memory_mb'))} | {ratios[0]} | {ratios[1]} "
        f"| {num(r.get('fraction_of_matmul'), 2)} | {load} |"
      )
  return "\n".join(lines)


def main(argv=None) -> int:
  args = _parse_args(argv)
  if args.table:
    records = [json.loads(line) for line in pathlib.Path(args.table).read_text().splitlines()]
    print(markdown_table([r for r in records if r]))
    return 0
  runs = _runs(args)
  passthrough = (
    [
      f"--reps={args.reps}",
      f"--seconds_per_rep={args.seconds_per_rep}",
      f"--dtype={args.dtype}",
      f"--conv_impl={args.conv_impl}",
    ]
    + (["--no_plain"] if args.no_plain else [])
    + (["--quick"] if args.quick else [])
  )
  if args.framework != "jax" or len(runs) > 1:
    # Every case (and framework) in its own process: clean peak memory, no thread-pool overlap.
    status = 0
    for name, batch_size in runs:
      case_args = [f"--case={name}", f"--batch_size={batch_size}", *passthrough]
      if args.framework in ("jax", "both"):
        status |= _forward([*case_args, "--framework=jax"], pathlib.Path(__file__))
      if args.framework in ("torch", "both"):
        torch_script = pathlib.Path(__file__).with_name("benchmark_torch.py")
        threads = [f"--threads={args.torch_threads}"] if args.torch_threads else []
        for framework in ("torch", "pythae"):
          status |= _forward([*case_args, *threads, f"--frameworks={framework}"], torch_script)
    return status
  name, batch_size = runs[0]
  print(json.dumps(run_case(name, batch_size, args)), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
