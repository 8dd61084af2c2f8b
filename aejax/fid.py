"""Fréchet distance (FID) between image sets, on features of a classifier aejax trains, or yours.

FID (Heusel et al., 2017) fits a Gaussian to the features of each image set
and reports the Fréchet (2-Wasserstein) distance between the two Gaussians:

    FD = ||mu_1 - mu_2||^2 + Tr(C_1) + Tr(C_2) - 2 Tr((C_1 C_2)^(1/2)).

The number depends on the feature network, so it is only comparable between
runs that used the same one: every FID aejax writes names its extractor.

The default extractor (`classifier_extractor`) is a small conv net that aejax
trains on the data set's own training split and labels, caches as an Orbax
checkpoint (folder: the `cache_dir` argument, else $AEJAX_FID_CACHE, else
~/.cache/aejax/fid_classifiers) and reuses; the features are its 128-d
penultimate (post-ReLU) activations. Its test accuracy is stored beside the
checkpoint (classifier.json) so reports can state it. It is not the
Inception network of the literature: aejax numbers are not comparable to
published Inception FIDs, only to each other.

Any network that maps images to features can be used instead, e.g. an
Inception-v3 whose weights you have:

    def inception_pool3(images_NxHxWxC):          # float32 in [0, 1] -> (N, 2048)
      x = resize_to_299_rgb(images_NxHxWxC)       # your preprocessing
      return np.asarray(my_inception_apply(x))    # your network and weights
    extractor = fid.FeatureExtractor("inception-v3:pool3:<weights sha256>", inception_pool3)
    fid.fid(extractor, samples, test_images)
    aejax.evaluate.evaluate(workdir, fid_extractor=extractor)

Anything with a `name` (str) and a `__call__(images) -> (N, F) array` works;
`FeatureExtractor` adds the checks. Name it so that the name states exactly
which network and weights made the features.

`python -m aejax.fid --data=mnist` trains (or loads) the classifier and prints
reference FIDs of real images: test vs train, test vs noisy test (measured in
docs/evaluation.md).
"""

import functools
import hashlib
import json
import logging
import math
import os
import pathlib
import shutil
import time
import uuid

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import app, flags

from aejax import checkpoint, data, errors, parallel, runner
from aejax.frechet import FeatureExtractor, feature_statistics, fid, frechet_distance

# The metric itself is in aejax/frechet.py; fid.fid and fid.FeatureExtractor stay this API.
__all__ = [
  "FeatureExtractor", "classifier_extractor", "feature_statistics", "fid", "frechet_distance",
  "reference_fids", "train_classifier",
]  # fmt: skip

CACHE_ENV = "AEJAX_FID_CACHE"
DEFAULT_CACHE_DIR = "~/.cache/aejax/fid_classifiers"
INFO_FILE = "classifier.json"
CHECKPOINT_FOLDER = "checkpoint"

# The architecture's name, part of the cache key and of the extractor's name: change it whenever
# Classifier changes, so an old checkpoint is never read into a new network.
ARCHITECTURE = "convnet-c32-c64s2-c64s2-d128"
FEATURE_DIM = 128
DEFAULT_EPOCHS = 2
# Small data sets (the 1,437 8x8 digits) need more than 2 epochs to classify well.
MIN_DEFAULT_STEPS = 500
DEFAULT_BATCH_SIZE = 128
DEFAULT_LEARNING_RATE = 1e-3
_APPLY_BATCH = 512  # Images per jitted feature call.


# ---------------------------------------------------------------------------
# The default extractor: a small classifier trained on the data set itself.


class Classifier(nn.Module):
  """Conv 32, conv 64 stride 2, conv 64 stride 2 (3x3, SAME), dense 128, dense num_classes.

  SAME padding and a flatten whose size Dense infers at init: any image size
  works (8x8 digits: 8 -> 4 -> 2; MNIST: 28 -> 14 -> 7). Returns the logits
  (B, num_classes) and the penultimate post-ReLU features (B, 128).
  """

  num_classes: int

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = x_BxHxWxC
    for width, stride in ((32, 1), (64, 2), (64, 2)):
      h = nn.relu(nn.Conv(width, (3, 3), strides=stride, padding="SAME")(h))
    features_BxF = nn.relu(nn.Dense(FEATURE_DIM)(h.reshape(h.shape[0], -1)))
    return nn.Dense(self.num_classes)(features_BxF), features_BxF


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> pathlib.Path:
  """cache_dir if given, else $AEJAX_FID_CACHE if set, else ~/.cache/aejax/fid_classifiers."""
  if cache_dir is not None and str(cache_dir):
    return pathlib.Path(cache_dir).expanduser()
  return pathlib.Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()


def default_steps(num_train: int, batch_size: int = DEFAULT_BATCH_SIZE) -> int:
  """DEFAULT_EPOCHS epochs (936 steps on MNIST), but at least MIN_DEFAULT_STEPS."""
  return max(MIN_DEFAULT_STEPS, DEFAULT_EPOCHS * (num_train // batch_size))


def _resolve_sizes(num_train: int, steps: int | None, batch_size: int) -> tuple[int, int]:
  """(steps, batch size), the batch no bigger than the training set."""
  for name, value in (("steps", steps), ("batch_size", batch_size)):
    if value is not None and (not isinstance(value, int | np.integer) or value < 1):
      raise errors.InputError(f"fid: classifier {name} must be an integer >= 1, got {value!r}")
  batch_size = min(int(batch_size), num_train)
  return int(default_steps(num_train, batch_size) if steps is None else steps), batch_size


def _folder(cache_dir, data_name: str, seed: int, steps: int, batch_size: int, lr: float):
  """The classifier's folder in the cache: keyed by everything that makes its weights."""
  key = f"{data_name}_{ARCHITECTURE}_seed{seed}_steps{steps}_batch{batch_size}_lr{lr:g}"
  return resolve_cache_dir(cache_dir) / key


def _params_sha256(params) -> str:
  """A digest of the weights: the extractor's name pins the exact checkpoint."""
  digest = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(params), key=lambda t: str(t[0])):
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(np.ascontiguousarray(jax.device_get(leaf), np.float32).tobytes())
  return digest.hexdigest()


def _apply_in_batches(apply_fn, params, images: np.ndarray, mesh) -> tuple[np.ndarray, ...]:
  """apply_fn(params, x) over batches sharded over `mesh`, the last one zero-padded: host arrays."""
  sharding = parallel.batch_sharded(mesh)
  # A multiple of the device count, no bigger than the images need.
  size = mesh.size * math.ceil(min(_APPLY_BATCH, len(images)) / mesh.size)
  outs = []
  for start in range(0, len(images), size):
    part = images[start : start + size]
    count = len(part)
    part = np.concatenate([part, np.zeros((size - count, *part.shape[1:]), part.dtype)])
    x = jax.make_array_from_callback(part.shape, sharding, lambda index, p=part: p[index])
    outs.append([np.asarray(a)[:count] for a in jax.device_get(apply_fn(params, x))])
  return tuple(np.concatenate(parts) for parts in zip(*outs, strict=True))


@functools.lru_cache(maxsize=8)  # One compiled program per network and mesh in a process.
def _make_apply(model, mesh):
  """`(params, x_BxHxWxC) -> (logits, features)`, jitted; the outputs stay sharded like the batch.

  Each device computes its own shard and the host gathers them (device_get):
  no collective in the program. (On many fake CPU devices sharing a few
  cores, a collective that waits on Eigen's thread pool can stall.)
  """
  sharding = parallel.batch_sharded(mesh)
  return jax.jit(lambda p, x: model.apply({"params": p}, x), out_shardings=(sharding, sharding))


def _load_labelled(data_name: str, split: str, load_kwargs: dict) -> data.ImageSet:
  image_set = data.load(data_name, split, **load_kwargs)
  if image_set.labels is None:
    raise errors.InputError(
      f"fid: the default feature extractor trains a classifier on the labels of {data_name}, "
      f"but {data_name}/{split} has no labels; pass a FeatureExtractor of your own "
      "(fid_extractor=..., see aejax.fid)"
    )
  return image_set


def train_classifier(
  data_name: str,
  *,
  cache_dir: str | os.PathLike[str] | None = None,
  seed: int = 0,
  steps: int | None = None,
  batch_size: int = DEFAULT_BATCH_SIZE,
  learning_rate: float = DEFAULT_LEARNING_RATE,
  source: str = "auto",
  data_dir: str | os.PathLike[str] | None = None,
) -> dict:
  """Trains the FID classifier on `data_name`'s train split and checkpoints it in the cache.

  Adam with a cosine decay over `steps` (default: `default_steps`) of
  softmax cross-entropy, on one device; the shuffle and the initialisation
  derive from `seed`. `train_seconds` counts loading the data, compiling and
  training. Writes <cache>/<key>/checkpoint (Orbax)
  and <cache>/<key>/classifier.json (hyperparameters, test accuracy, training
  time, weights' sha256) into a temporary folder renamed into place at the
  end, so a concurrent or interrupted run never leaves half a classifier.
  Returns the contents of classifier.json. A classifier already in the cache
  is kept (delete its folder to train it again): nothing is trained, or, if
  another process cached it meanwhile, the new one is dropped.
  """
  started = time.perf_counter()
  load_kwargs = dict(source=source, data_dir=data_dir)
  train_set = _load_labelled(data_name, "train", load_kwargs)
  test_set = _load_labelled(data_name, "test", load_kwargs)
  image_shape = tuple(int(d) for d in train_set.images.shape[1:])
  if tuple(test_set.images.shape[1:]) != image_shape:
    raise errors.InputError(
      f"fid: {data_name}/train has images of shape {image_shape} but {data_name}/test of shape "
      f"{tuple(test_set.images.shape[1:])}; one classifier cannot take both"
    )
  if train_set.labels.min() < 0:
    raise errors.InputError(f"fid: {data_name}/train has negative labels")
  num_classes = int(max(train_set.labels.max(), test_set.labels.max())) + 1
  num_train = len(train_set.images)
  steps, batch_size = _resolve_sizes(num_train, steps, batch_size)
  folder = _folder(cache_dir, data_name, seed, steps, batch_size, learning_rate)
  if (folder / INFO_FILE).is_file():
    logging.info("FID: classifier already cached in %s; delete it to train it again", folder)
    return json.loads((folder / INFO_FILE).read_text())
  logging.info(
    "FID: training the %s classifier on %s/train (%d images, %d steps of %d, seed %d) into %s",
    ARCHITECTURE,
    data_name,
    num_train,
    steps,
    batch_size,
    seed,
    folder,
  )

  model = Classifier(num_classes)
  params, loss = _fit(model, train_set, seed, steps, batch_size, learning_rate)
  steps_per_epoch = num_train // batch_size
  train_seconds = time.perf_counter() - started

  eval_mesh = parallel.make_mesh(jax.local_devices())
  params = jax.device_put(params, parallel.replicated(eval_mesh))
  logits, _ = _apply_in_batches(_make_apply(model, eval_mesh), params, test_set.images, eval_mesh)
  test_accuracy = float(np.mean(np.argmax(logits, axis=-1) == test_set.labels))
  sha = _params_sha256(params)
  info = dict(
    name=f"aejax-classifier:{data_name}:{ARCHITECTURE}:seed{seed}:steps{steps}:{sha[:12]}",
    data=data_name,
    architecture=ARCHITECTURE,
    features=f"penultimate dense layer, {FEATURE_DIM}-d, after ReLU",
    image_shape=list(image_shape),
    num_classes=num_classes,
    seed=seed,
    steps=steps,
    batch_size=batch_size,
    learning_rate=learning_rate,
    epochs=steps / steps_per_epoch,
    num_train_images=num_train,
    final_train_loss=float(loss),
    test_accuracy=test_accuracy,
    num_test_images=len(test_set.images),
    train_seconds=train_seconds,
    params_sha256=sha,
  )
  logging.info(
    "FID: classifier %s trained in %.1f s, test accuracy %.4f on %d images",
    info["name"],
    train_seconds,
    test_accuracy,
    len(test_set.images),
  )
  if not _save(folder, params, steps, info):
    logging.info("FID: another process cached %s meanwhile; using that one", folder)
    return json.loads((folder / INFO_FILE).read_text())
  return info


def _fit(model, train_set: data.ImageSet, seed: int, steps: int, batch_size: int, learning_rate):
  """Adam with a cosine decay over `steps` of softmax cross-entropy, on one device.

  Returns the parameters and the last step's loss. Epoch e's order is a
  function of the seed and e only.
  """
  # One device: a 0.4M-parameter net trained for ~1,000 steps gains little from data parallelism,
  # and its gradient all-reduce is what stalls on fake CPU devices (see _make_apply).
  mesh = parallel.make_mesh(jax.local_devices()[:1])
  image_shape = train_set.images.shape[1:]
  num_train = len(train_set.images)
  tx = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))
  root = jax.random.key(seed)
  key_init, key_shuffle = jax.random.fold_in(root, 0), jax.random.fold_in(root, 1)

  def init(k):
    params = model.init(k, jnp.zeros((1, *image_shape), jnp.float32))["params"]
    return params, tx.init(params)

  # Initialised under jit with replicated outputs: the state goes straight onto every device.
  state = jax.jit(init, out_shardings=parallel.replicated(mesh))(key_init)

  def step_fn(state, x_BxHxWxC, y_B):
    params, opt_state = state

    def loss_fn(p):
      logits, _ = model.apply({"params": p}, x_BxHxWxC)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y_B).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  # The state is donated: updated in place, not copied, at every step.
  step_jit = jax.jit(step_fn, donate_argnums=0)
  sharding = parallel.batch_sharded(mesh)
  steps_per_epoch = num_train // batch_size
  perm = None
  loss = None
  for step in range(steps):
    epoch, index = divmod(step, steps_per_epoch)
    if index == 0:
      # Epoch e's order is a function of the seed and e only.
      perm = np.asarray(jax.random.permutation(jax.random.fold_in(key_shuffle, epoch), num_train))
    idx = perm[index * batch_size : (index + 1) * batch_size]
    x = train_set.images[idx]
    y = train_set.labels[idx]
    x = jax.make_array_from_callback(x.shape, sharding, lambda i, a=x: a[i])
    y = jax.make_array_from_callback(y.shape, sharding, lambda i, a=y: a[i])
    state, loss = step_jit(state, x, y)
  return state[0], loss


def _save(folder: pathlib.Path, params, step: int, info: dict) -> bool:
  """Writes the checkpoint and classifier.json to a temporary folder, renamed into place.

  Returns False, keeping the folder there, if it exists already (another process wrote it).
  """
  folder.parent.mkdir(parents=True, exist_ok=True)
  tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
  options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
  with ocp.CheckpointManager(tmp.absolute() / CHECKPOINT_FOLDER, options=options) as manager:
    manager.save(step, args=ocp.args.StandardSave(params))
    manager.wait_until_finished()
  (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
  try:
    # Atomic, and fails if the folder exists: a reader sees no classifier or a whole one.
    tmp.rename(folder)
    return True
  except OSError:
    shutil.rmtree(tmp, ignore_errors=True)
    return False


def _restore(folder: pathlib.Path) -> tuple[nn.Module, dict, dict]:
  """(model, params on one device, classifier.json) of a cached classifier."""
  info_path = folder / INFO_FILE
  try:
    info = json.loads(info_path.read_text())
    image_shape, num_classes, step = info["image_shape"], info["num_classes"], info["steps"]
  except (OSError, ValueError, KeyError) as e:
    raise errors.CheckpointError(
      f"{info_path}: unreadable ({e}); delete {folder} and it will be trained again"
    ) from e
  model = Classifier(num_classes)
  mesh = parallel.make_mesh(jax.local_devices()[:1])
  abstract = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_shape), jnp.float32))["params"]
  )
  sharding = parallel.replicated(mesh)
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract
  )
  try:
    with checkpoint.read_only_manager(folder / CHECKPOINT_FOLDER) as manager:
      params = manager.restore(step, args=ocp.args.StandardRestore(abstract))
  except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
    raise errors.CheckpointError(
      f"{folder}: the FID classifier's checkpoint does not restore ({e}); delete the folder and "
      "it will be trained again"
    ) from e
  if _params_sha256(params) != info.get("params_sha256"):
    raise errors.CheckpointError(
      f"{folder}: the weights do not match the sha256 in {INFO_FILE}; delete the folder and it "
      "will be trained again"
    )
  return model, params, info


def classifier_extractor(
  data_name: str,
  *,
  cache_dir: str | os.PathLike[str] | None = None,
  seed: int = 0,
  steps: int | None = None,
  batch_size: int = DEFAULT_BATCH_SIZE,
  learning_rate: float = DEFAULT_LEARNING_RATE,
  source: str = "auto",
  data_dir: str | os.PathLike[str] | None = None,
) -> FeatureExtractor:
  """The default FID extractor for `data_name`: the cached classifier's penultimate features.

  Loads the classifier keyed by data set, architecture, seed and training
  hyperparameters from the cache (see `resolve_cache_dir`), training and
  caching it first if it is not there (see `train_classifier`).
  """
  # The key holds the steps and batch size as trained, which depend on the training set's size.
  train_set = _load_labelled(data_name, "train", dict(source=source, data_dir=data_dir))
  steps, batch_size = _resolve_sizes(len(train_set.images), steps, batch_size)
  folder = _folder(cache_dir, data_name, seed, steps, batch_size, learning_rate)
  if not (folder / INFO_FILE).is_file():
    logging.info("FID: no cached classifier at %s", folder)
    train_classifier(
      data_name,
      cache_dir=cache_dir,
      seed=seed,
      steps=steps,
      batch_size=batch_size,
      learning_rate=learning_rate,
      source=source,
      data_dir=data_dir,
    )
  model, params, info = _restore(folder)
  mesh = parallel.make_mesh(jax.local_devices())
  params = jax.device_put(params, parallel.replicated(mesh))
  apply_fn = _make_apply(model, mesh)
  logging.info("FID: features of %s (test accuracy %.4f)", info["name"], info["test_accuracy"])
  return FeatureExtractor(
    name=info["name"],
    fn=functools.partial(_features, apply_fn, params, mesh),
    image_shape=tuple(info["image_shape"]),
    test_accuracy=info["test_accuracy"],
  )


def _features(apply_fn, params, mesh, images_NxHxWxC: np.ndarray) -> np.ndarray:
  _, features_NxF = _apply_in_batches(apply_fn, params, images_NxHxWxC, mesh)
  return features_NxF


# ---------------------------------------------------------------------------
# Command line: train (or load) the classifier and print reference FIDs of real images.


def reference_fids(
  extractor,
  data_name: str,
  *,
  num_images: int = 10000,
  noise_stds: tuple[float, ...] = (0.1, 0.3),
  seed: int = 0,
  source: str = "auto",
  data_dir: str | os.PathLike[str] | None = None,
) -> dict:
  """FIDs that bracket a model's: test vs train images (a floor), test vs noisy test images.

  The first `num_images` of each split; noise is N(0, std^2) per pixel drawn
  with `seed`, the result clipped to [0, 1].
  """
  load_kwargs = dict(source=source, data_dir=data_dir, limit=num_images)
  test = data.load(data_name, "test", **load_kwargs).images
  train_images = data.load(data_name, "train", **load_kwargs).images
  reference = feature_statistics(extractor(test))
  out = {"extractor": extractor.name, "num_test_images": len(test)}
  out["test_vs_train"] = frechet_distance(*reference, *feature_statistics(extractor(train_images)))
  out["num_train_images"] = len(train_images)
  noise = np.random.default_rng(seed).normal(size=test.shape).astype(np.float32)
  for std in noise_stds:
    noisy = np.clip(test + np.float32(std) * noise, 0.0, 1.0)
    out[f"test_vs_noisy_test_std{std:g}"] = frechet_distance(
      *reference, *feature_statistics(extractor(noisy))
    )
  return out


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  runner.setup_logging()
  runner.run(lambda: _reference_fids(flags.FLAGS))


def _reference_fids(f) -> None:
  extractor = classifier_extractor(
    f.data, cache_dir=f.cache_dir, seed=f.seed, steps=f.steps or None, data_dir=f.data_dir
  )
  results = reference_fids(
    extractor,
    f.data,
    num_images=f.num_images,
    noise_stds=tuple(float(s) for s in f.noise_stds),
    data_dir=f.data_dir,
  )
  results["classifier_test_accuracy"] = extractor.test_accuracy
  print(json.dumps(results, indent=2))  # The result on stdout; the log goes to stderr.


def cli() -> None:
  # Defined on use, not at import: aejax.evaluate imports this module and defines its own flags.
  flags.DEFINE_string("data", "mnist", "Data set with labels (train and test splits).")
  flags.DEFINE_string("data_dir", None, "Local data folder (default: $AEJAX_DATA_DIR).")
  flags.DEFINE_string("cache_dir", None, f"Classifier cache (default: ${CACHE_ENV} or ~/.cache).")
  flags.DEFINE_integer("seed", 0, "The classifier's seed.")
  flags.DEFINE_integer("steps", 0, "> 0: training steps (default: 2 epochs, at least 500).")
  flags.DEFINE_integer("num_images", 10000, "Images per split for the reference FIDs.")
  flags.DEFINE_list("noise_stds", ["0.1", "0.3"], "Gaussian noise levels for test vs noisy test.")
  app.run(main)


if __name__ == "__main__":
  cli()
