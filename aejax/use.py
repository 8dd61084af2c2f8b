"""Command line for trained models: encode, decode, generate, reconstruct, figures, task metrics.

  python -m aejax.use encode --workdir=W (--images=x.npy | --data=mnist [--split=test]) --out=z.npy
  python -m aejax.use decode --workdir=W --latents=z.npy --out=x.npy [--png=x.png]
  python -m aejax.use generate --workdir=W --n=64 [--seed=0] [--label=3] \
    [--sampler=gmm|two_stage] --out=s.npy [--png=s.png]
  python -m aejax.use reconstruct --workdir=W (--images=x.npy | --data=NAME) --out=r.npy [--png=P]
  python -m aejax.use figures --workdir=W [--data=NAME --split=SPLIT]
  python -m aejax.use task_metrics --workdir=W --data=fashion_mnist [--name=NAME]

All take --step=N (default: the newest checkpoint). Images are .npy arrays
of shape (N, H, W[, C]) with values in [0, 1]; --data loads a data set the
way training does (AEJAX_DATA_DIR or --data_dir, else tfds). Errors are one
line, exit status 2.
"""

import logging
import pathlib

import numpy as np
from absl import app, flags

from aejax import api, data, errors, figures, runner, samplers, visualize


def _load_images(args, handle: api.TrainedModel):
  """(images, labels) from --images/--labels or from --data/--split."""
  if args.images:
    path = pathlib.Path(args.images)
    if not path.is_file():
      raise errors.InputError(f"--images: {path} does not exist")
    try:
      images = np.load(path, allow_pickle=False)
    except ValueError as e:
      raise errors.InputError(f"--images: {path} is not a NumPy .npy array: {e}") from e
    labels = np.load(args.labels, allow_pickle=False) if args.labels else None
    return images, labels
  if args.data:
    image_set = data.load(
      args.data, args.split, source="auto", data_dir=args.data_dir or None, limit=args.limit or None
    )
    return image_set.images, image_set.labels
  raise errors.InputError("give --images=FILE.npy or --data=NAME")


def _save(out: str, array: np.ndarray) -> None:
  path = pathlib.Path(out)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp.npy")  # Write then rename: no half-written output.
  np.save(tmp, array)
  tmp.replace(path)
  logging.info("wrote %s %s", path, array.shape)


def _conditional_labels(handle, labels):
  return labels if handle.num_classes else None


COMMANDS = ("encode", "decode", "generate", "reconstruct", "figures", "task_metrics")


def _define_flags() -> None:
  flags.DEFINE_string("workdir", None, "The trained run's folder.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
  flags.DEFINE_string("out", None, "Output .npy file (encode, decode, generate, reconstruct).")
  flags.DEFINE_string("png", None, "Also draw the output into this PNG.")
  flags.DEFINE_string("images", None, "Input images, a .npy array (N, H, W[, C]) in [0, 1].")
  flags.DEFINE_string("labels", None, "Class labels (.npy) of a conditional model's inputs.")
  flags.DEFINE_string("latents", None, "Latents to decode (.npy, (N, latent_dim)).")
  flags.DEFINE_string("data", None, "Input images from a data set, loaded as training does.")
  flags.DEFINE_string("split", "test", "Split of --data.")
  flags.DEFINE_string("data_dir", None, "Local data folder (default: $AEJAX_DATA_DIR).")
  flags.DEFINE_integer("limit", 0, "> 0: the first N images of --data only.")
  flags.DEFINE_integer("n", 64, "generate: number of samples.")
  flags.DEFINE_integer("seed", 0, "generate: the seed of the latent draws.")
  flags.DEFINE_enum(
    "sampler", "prior", samplers.SAMPLERS,
    "generate: 'prior' (the model's prior), 'gmm' (a mixture fitted to the training codes) or "
    "'two_stage' (a second VAE fitted to them).",
  )  # fmt: skip
  flags.DEFINE_integer("label", None, "generate: the class of a conditional model's samples.")
  flags.DEFINE_string("name", None, "task_metrics: the output files' name.")
  flags.DEFINE_bool(
    "trust_model_code",
    False,
    "Import the model module that the workdir's config names (module.path:function).",
  )
  flags.mark_flags_as_required(["workdir"])


def use(command: str, args) -> None:
  """Runs `command` with the parsed flags `args` (attributes as the flags above)."""
  if command in ("encode", "decode", "generate", "reconstruct") and not args.out:
    raise app.UsageError(f"{command}: --out is required")
  handle = api.load(args.workdir, args.step, trust_model_code=args.trust_model_code)
  # Every picture says which model drew it: model, training data, checkpoint step.
  model = f"{handle.config.model.name} on {handle.config.data.name}, step {handle.step}"
  if command == "encode":
    images, labels = _load_images(args, handle)
    _save(args.out, handle.encode(images, _conditional_labels(handle, labels)))
  elif command == "decode":
    if not args.latents:
      raise errors.InputError("--latents=FILE.npy is required")
    latents = np.load(args.latents, allow_pickle=False)
    labels = np.load(args.labels, allow_pickle=False) if args.labels else None
    images = handle.decode(latents, labels)
    _save(args.out, images)
    if args.png:
      figures.save_image_grid(
        args.png, images[:100], title=f"Decoded latents ({args.latents}): {model}"
      )
  elif command == "generate":
    labels = None
    if handle.num_classes:
      labels = (
        np.full(args.n, args.label, np.int32)
        if args.label is not None
        else np.arange(args.n, dtype=np.int32) % handle.num_classes
      )
    images = handle.generate(args.n, args.seed, labels, sampler=args.sampler)
    _save(args.out, images)
    if args.png:
      what = "" if labels is None else f", class {args.label}" if args.label is not None else ""
      figures.save_image_grid(
        args.png,
        images,
        title=f"{args.n} samples, sampler {args.sampler} (seed {args.seed}{what}): {model}",
      )
  elif command == "reconstruct":
    images, labels = _load_images(args, handle)
    output = handle.reconstruct(images, _conditional_labels(handle, labels))
    _save(args.out, output)
    if args.png:
      shown = np.asarray(images if np.asarray(images).ndim == 4 else np.asarray(images)[..., None])
      figures.save_reconstructions(
        args.png, {"input": shown, "reconstruction": output}, title=f"Reconstructions: {model}"
      )
  elif command in ("figures", "task_metrics"):
    config = handle.config
    name = args.data or config.data.name
    split = args.split if args.data else config.data.eval_split
    image_set = data.load(
      name,
      split,
      source="auto" if args.data else config.data.source,
      data_dir=args.data_dir or config.data.data_dir or None,
      limit=args.limit or None,
    )
    workdir = pathlib.Path(args.workdir)
    if command == "figures":
      written = visualize.write_final_outputs(handle, image_set, workdir)
      logging.info("wrote %s", ", ".join(written))
    else:
      if config.task.name not in ("denoise", "superres"):
        raise errors.InputError(
          f"task_metrics: the model's task is {config.task.name!r}; only denoise and superres "
          "have task metrics"
        )
      results = visualize.task_metrics(
        handle, image_set, workdir, name=args.name or f"task_metrics_{name}"
      )
      print((workdir / f"{args.name or f'task_metrics_{name}'}.md").read_text())
      del results


def main(argv) -> None:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"give one command: {', '.join(COMMANDS)} (got {' '.join(argv[1:])!r})")
  runner.setup_logging()
  runner.run(lambda: use(argv[1], flags.FLAGS))


def cli() -> None:
  _define_flags()
  app.run(main)


if __name__ == "__main__":
  cli()
