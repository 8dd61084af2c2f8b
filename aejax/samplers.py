"""Samplers: how a trained model draws new images (`aejax.load(w).generate(n, sampler=...)`).

- "prior": the model's generative model: its own `sample` hook (a VampPrior,
  a hierarchy, an adversarial autoencoder's prior), else z ~ N(0, I) decoded
  (VAEs). Plain autoencoders have none.
- "gmm": the ex-post density estimate of Ghosh et al. (2020, "From Variational
  to Deterministic Autoencoders", sec. 4): a Gaussian mixture with full
  covariances, fitted by EM to the codes (posterior means for a VAE) of up to
  `GMM_MAX_CODES` training images, sampled and decoded. Any unconditional
  model has it, deterministic ones included, which is what makes a regularised
  autoencoder generative. The fit is cached next to the checkpoints
  (samplers/gmm_step<N>_....npz), so it is paid once per checkpoint.
"""

import logging
import pathlib

import numpy as np

from aejax import data, errors
from aejax.zoo import gmm as gmm_lib

SAMPLERS = ("prior", "gmm")
GMM_COMPONENTS = 10  # Ghosh et al.: 10 components on MNIST, CIFAR-10 and CelebA.
GMM_MAX_CODES = 10_000  # Training images whose codes the mixture is fitted to.
SAMPLERS_DIR = "samplers"


def check_sampler(name: str) -> None:
  if name not in SAMPLERS:
    raise errors.InputError(f"sampler: unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")


def _gmm_path(handle, num_components: int, max_codes: int, seed: int) -> pathlib.Path | None:
  if handle.workdir is None:
    return None
  name = f"gmm_step{handle.step}_k{num_components}_n{max_codes}_seed{seed}.npz"
  return pathlib.Path(handle.workdir) / SAMPLERS_DIR / name


def ex_post_gmm(
  handle, num_components: int = GMM_COMPONENTS, max_codes: int = GMM_MAX_CODES, seed: int = 0
) -> gmm_lib.GaussianMixture:
  """The mixture (aejax/zoo/gmm.py) fitted to the codes of the first `max_codes` training images.

  Deterministic in (checkpoint, num_components, max_codes, seed); cached in the
  workdir when the model was loaded from one.
  """
  if handle.num_classes:
    raise errors.InputError(
      "sampler 'gmm': a conditional model's codes depend on the label; sample with 'prior'"
    )
  path = _gmm_path(handle, num_components, max_codes, seed)
  if path is not None and path.is_file():
    return gmm_lib.load(path)
  config = handle.config
  train_set = data.load(
    config.data.name, config.data.train_split, limit=max_codes, source=config.data.source,
    data_dir=config.data.data_dir or None,
  )  # fmt: skip
  codes = handle.encode(train_set.images)
  logging.info(
    "fitting the ex-post Gaussian mixture (%d components) to %d codes of %s/%s",
    num_components, len(codes), config.data.name, config.data.train_split,
  )  # fmt: skip
  mixture = gmm_lib.fit_gmm(np.asarray(codes, np.float64), num_components=num_components, seed=seed)
  if path is not None:
    try:
      path.parent.mkdir(parents=True, exist_ok=True)
      gmm_lib.save(mixture, path)
    except OSError as error:  # A read-only workdir still samples; it only refits next time.
      logging.warning("could not cache the ex-post mixture in %s: %s", path, error)
  return mixture


def gmm_latents(handle, n: int, seed: int) -> np.ndarray:
  """n codes (n, latent_dim) drawn from the ex-post mixture with `seed`."""
  return gmm_lib.sample(ex_post_gmm(handle), n, seed).astype(np.float32)
