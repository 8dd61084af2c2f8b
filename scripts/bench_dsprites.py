"""Render throughput of aejax.dsprites: images per second of the jitted renderer, per batch size.

  python scripts/bench_dsprites.py [--batch_sizes=64,1024] [--seconds=2] [--variant=plain]

What it measures: `dsprites.render` (or render_color / render_noisy with --variant) on the
default JAX device, factors drawn uniformly once per batch size and kept on the device, so the
time is the renderer's alone (no sampling, no host transfer). Steady state: each batch size is
compiled and run once before timing; then the renderer runs back to back until `seconds` have
passed, each call waited for (block_until_ready), and the line reports the median call's
images/s. Prints the device, then one line per batch size.
"""

import argparse
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_sizes", default="64,1024", help="comma-separated batch sizes")
  parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per batch size")
  parser.add_argument("--variant", default="plain", choices=("plain", "color", "noisy"))
  args = parser.parse_args()

  import jax

  from aejax import dsprites

  render = {
    "plain": lambda factors, key: dsprites.render(factors),
    "color": dsprites.render_color,
    "noisy": dsprites.render_noisy,
  }[args.variant]
  device = jax.devices()[0]
  print(f"device: {jax.device_count()} x {device.device_kind} ({device.platform})")
  data = dsprites.DSprites()
  for batch in [int(b) for b in args.batch_sizes.split(",")]:
    key = jax.random.key(batch)
    factors = data.sample_factors(batch, key)
    jax.block_until_ready(render(factors, key))  # Compiles.
    times = []
    end = time.perf_counter() + args.seconds
    while time.perf_counter() < end or len(times) < 3:
      start = time.perf_counter()
      jax.block_until_ready(render(factors, key))
      times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    print(
      f"dsprites {args.variant} batch {batch}: {batch / seconds:,.0f} images/s "
      f"({1e3 * seconds:.2f} ms per batch, median of {len(times)} calls)"
    )


if __name__ == "__main__":
  main()
