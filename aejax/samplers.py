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
- "two_stage": the second stage of Dai & Wipf (2019, "Diagnosing and Enhancing
  VAE Models"): a small VAE (aejax/zoo/two_stage_vae.py) fitted to codes of up
  to `max_codes` training images (z ~ q(z|x) for a VAE, as the paper; the
  codes themselves for a deterministic model), then u ~ N(0, I) -> z from the
  second decoder -> the model's decoder. For a two_stage_vae its settings are
  the model's options second_*, for any other model the defaults. Cached as
  samplers/two_stage_step<N>_<settings>_seed<S>.msgpack.

"gmm" and "two_stage" are the ex-post samplers (EX_POST): fitted after
training to the codes of an unconditional model, so they need a continuous
code. A model whose code is not one (a VQ-VAE's grid of codebook indices)
says which of them apply with a class attribute `ex_post_samplers`, a tuple
of names (default: all of EX_POST); `ex_post_samplers = ()` opts out of all,
and asking for one of them is then an InputError naming the sampler.
"""

import logging
import pathlib

import numpy as np

from aejax import data, errors
from aejax.zoo import gmm as gmm_lib
from aejax.zoo import two_stage_vae as two_stage_lib

SAMPLERS = ("prior", "gmm", "two_stage")
EX_POST = ("gmm", "two_stage")  # Fitted to the training codes after training.
GMM_COMPONENTS = 10  # Ghosh et al.: 10 components on MNIST, CIFAR-10 and CelebA.
GMM_MAX_CODES = 10_000  # Training images whose codes the mixture is fitted to.
SAMPLERS_DIR = "samplers"


def check_sampler(name: str) -> None:
  if name not in SAMPLERS:
    raise errors.InputError(f"sampler: unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")


def ex_post_samplers(model) -> tuple[str, ...]:
  """The ex-post samplers that apply to a model: its `ex_post_samplers` attribute, else all."""
  return tuple(getattr(model, "ex_post_samplers", EX_POST))


def check_ex_post(handle, name: str) -> None:
  """An InputError unless the ex-post sampler `name` can be fitted to the model's codes."""
  if name not in ex_post_samplers(handle.model):
    raise errors.InputError(
      f"sampler {name!r}: model {handle.config.model.name!r} has no continuous code to fit it "
      f"to (its ex_post_samplers: {', '.join(ex_post_samplers(handle.model)) or 'none'}); "
      "sample with 'prior'"
    )
  if handle.num_classes:
    raise errors.InputError(
      f"sampler {name!r}: a conditional model's codes depend on the label; sample with 'prior'"
    )


def _training_images(handle, max_codes: int) -> np.ndarray:
  config = handle.config
  return data.load(
    config.data.name, config.data.train_split, limit=max_codes, source=config.data.source,
    data_dir=config.data.data_dir or None,
  ).images  # fmt: skip


def _cache(path: pathlib.Path | None, save, what: str) -> None:
  if path is None:
    return
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    save(path)
  except OSError as error:  # A read-only workdir still samples; it only refits next time.
    logging.warning("could not cache the %s in %s: %s", what, path, error)


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
  check_ex_post(handle, "gmm")
  path = _gmm_path(handle, num_components, max_codes, seed)
  if path is not None and path.is_file():
    return gmm_lib.load(path)
  codes = handle.encode(_training_images(handle, max_codes))
  logging.info(
    "fitting the ex-post Gaussian mixture (%d components) to %d codes of %s/%s",
    num_components, len(codes), handle.config.data.name, handle.config.data.train_split,
  )  # fmt: skip
  mixture = gmm_lib.fit_gmm(np.asarray(codes, np.float64), num_components=num_components, seed=seed)
  _cache(path, lambda p: gmm_lib.save(mixture, p), "ex-post mixture")
  return mixture


def gmm_latents(handle, n: int, seed: int) -> np.ndarray:
  """n codes (n, latent_dim) drawn from the ex-post mixture with `seed`."""
  return gmm_lib.sample(ex_post_gmm(handle), n, seed).astype(np.float32)


def two_stage_settings(handle) -> two_stage_lib.Settings:
  """The model's own second-stage settings (attribute `second_stage`), else the defaults."""
  return getattr(handle.model, "second_stage", None) or two_stage_lib.Settings()


def _two_stage_path(handle, settings: two_stage_lib.Settings, seed: int) -> pathlib.Path | None:
  if handle.workdir is None:
    return None
  name = f"two_stage_step{handle.step}_{settings.tag()}_seed{seed}.msgpack"
  return pathlib.Path(handle.workdir) / SAMPLERS_DIR / name


def ex_post_two_stage(handle, settings=None, seed: int = 0) -> two_stage_lib.SecondStageFit:
  """The second-stage VAE fitted to codes of the first `settings.max_codes` training images.

  A VAE's codes are z ~ q(z|x), drawn afresh at every step of the fit (the
  posterior means and standard deviations); a deterministic model's, its codes.
  Deterministic in (checkpoint, settings, seed); cached in the workdir when
  the model was loaded from one.
  """
  check_ex_post(handle, "two_stage")
  settings = two_stage_settings(handle) if settings is None else settings
  path = _two_stage_path(handle, settings, seed)
  if path is not None and path.is_file():
    return two_stage_lib.load(path)
  images = _training_images(handle, settings.max_codes)
  if handle.is_variational:
    mean, logvar = handle.posterior(images)
    std = np.exp(0.5 * np.asarray(logvar, np.float64))
  else:
    mean, std = handle.encode(images), None
  logging.info(
    "fitting the two-stage sampler's second VAE (%s) to %d codes of %s/%s",
    settings.tag(), len(mean), handle.config.data.name, handle.config.data.train_split,
  )  # fmt: skip
  fitted = two_stage_lib.fit(mean, std, settings, seed)
  _cache(path, lambda p: two_stage_lib.save(fitted, p), "two-stage sampler")
  return fitted


def two_stage_latents(handle, n: int, seed: int) -> np.ndarray:
  """n codes (n, latent_dim) drawn from the fitted second stage with `seed`."""
  return two_stage_lib.sample_codes(ex_post_two_stage(handle), n, seed)


def ex_post_latents(handle, sampler: str, n: int, seed: int) -> np.ndarray:
  """n codes drawn with `seed` by the ex-post sampler `sampler` ("gmm" or "two_stage")."""
  if sampler == "gmm":
    return gmm_latents(handle, n, seed)
  if sampler == "two_stage":
    return two_stage_latents(handle, n, seed)
  raise errors.InputError(f"sampler: {sampler!r} is not an ex-post sampler ({', '.join(EX_POST)})")
