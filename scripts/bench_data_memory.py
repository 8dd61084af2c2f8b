"""Device memory of the training split on each data path: replicated float32, resident, streamed.

  AEJAX_DATA_DIR=/path/to/data python scripts/bench_data_memory.py [--devices=8] [--batch_size=128]

For MNIST (the real files) and a synthetic set of CelebA's training size
(162,770 random 64x64x3 uint8 images), on `--devices` devices (fake CPU
devices unless an accelerator is present): the bytes on each device of

- replicated float32: the design before aejax/feeding.py (every device held
  the whole split as float32); computed, not allocated (64 GB for CelebA on 8
  CPU devices would not fit this host);
- resident: the split as aejax keeps it now (uint8 when 8-bit, split over the
  devices), allocated with feeding.put_resident and measured from its shards;
- streamed: one chunk of batches (feeding.Stream, steps_per_dispatch steps
  within STREAM_CHUNK_BYTES), allocated and measured; two are on device while
  training (the one training and the next one arriving).

Prints a Markdown table (and writes it as JSON to --out).
"""

import argparse
import json
import os
import pathlib
import sys
import time
import types


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", type=int, default=8, help="Fake CPU devices (CPU only).")
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--steps_per_dispatch", type=int, default=100)
  parser.add_argument("--celeba_images", type=int, default=162_770)
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={args.devices}")
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
  import jax
  import numpy as np

  from aejax import data, feeding, parallel, steps

  mesh = parallel.make_mesh()
  num_devices = mesh.size
  mnist = data.load("mnist", "train")
  rng = np.random.default_rng(0)
  started = time.perf_counter()
  celeba_levels = rng.integers(0, 256, (args.celeba_images, 64, 64, 3), dtype=np.uint8)
  print(f"synthetic CelebA-size set drawn in {time.perf_counter() - started:.0f} s")
  # Stands in for an ImageSet whose float32 images (8 GB) this host need not hold.
  celeba = types.SimpleNamespace(
    stored=celeba_levels,
    labels=None,
    num_examples=args.celeba_images,
    render=data.decode_grey_levels,
  )
  rows = []
  for name, split, labels in (
    ("mnist", mnist, mnist.labels),
    ("celeba-size 64x64x3", celeba, None),
  ):
    n = split.num_examples
    image_bytes = split.stored[0].size * 4  # float32
    replicated = n * image_bytes + (0 if labels is None else labels.nbytes)
    images, labels_dev = feeding.put_resident(split, mesh)
    resident = max(parallel.device_bytes([images, labels_dev]).values())
    del images, labels_dev
    chunk = feeding.chunk_steps(split, args.batch_size, 1, args.steps_per_dispatch)
    stream = feeding.Stream(
      split, mesh, [steps.derived_keys(0)], args.batch_size, n // args.batch_size, 0, chunk, chunk
    )
    streamed = max(parallel.device_bytes(list(stream.take(chunk))).values())
    rows.append({
      "data": name,
      "images": n,
      "devices": num_devices,
      "device": jax.devices()[0].device_kind,
      "replicated_float32_bytes": replicated,
      "resident_bytes": resident,
      "streamed_chunk_bytes": streamed,
      "streamed_in_flight_bytes": 2 * streamed,
      "chunk_steps": chunk,
      "batch_size": args.batch_size,
    })  # fmt: skip

  def mib(b: int) -> str:
    return f"{b / 2**20:,.1f}"

  print(
    f"\nTraining split bytes on each of {num_devices} devices "
    f"({rows[0]['device']}), MiB; batch {args.batch_size}:\n"
  )
  print("| data | images | replicated float32 | resident (uint8, split) | streamed (2 chunks) |")
  print("|---|---:|---:|---:|---:|")
  for r in rows:
    print(
      f"| {r['data']} | {r['images']:,} | {mib(r['replicated_float32_bytes'])} | "
      f"{mib(r['resident_bytes'])} | {mib(r['streamed_in_flight_bytes'])} "
      f"({r['chunk_steps']} steps a chunk) |"
    )
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
  main()
