"""The model lookup: a config's model name -> a Flax module that keeps aejax's model contract.

The contract (docs/extending.md has a complete example): `build(model_config,
image_shape) -> module`, where the module has
- `__call__(x_BxHxWxC, key, label_B) -> dict` with "logits" (B, H, W, C): used
  to initialise the parameters (`model.init(key, x, sample_key, label)`) and
  for the reconstructions; decoders return logits, the image is sigmoid(logits);
- `encode(x, label) -> dict` ("z", or "mean" and "logvar" for a variational
  model) and `decode(z, label) -> logits`: the API (aejax.load) uses them;
- `losses(batch, key, config, kl_weight) -> {name: (B,) array}`: the loss
  terms per image; "loss" is what training minimises and every term becomes
  a metric (train/NAME, eval/NAME);
- attributes `is_variational` (a Gaussian posterior "mean"/"logvar"; without
  the hooks below also a N(0, I) prior: sampling, NLL bounds), `num_classes`
  (> 0: conditional) and optionally `extra_param_groups`: names of top-level
  parameter subtrees (a critic, a discriminator) that are trained on the term
  `loss_<name>` with their own optimizer state, while the rest is trained on
  `loss`; and optionally `state_param_groups`: names of top-level parameter
  subtrees that no gradient trains (an exponential-moving-average codebook),
  with a method `update_state(batch, key, config) -> {name: new subtree}` that
  the step calls on its batch with the parameters before the step; the new
  values replace the old ones when the step is applied (a non-finite step
  keeps them). Optionally `ex_post_samplers`: the samplers of aejax/samplers.py
  fitted to its codes after training ("gmm", "two_stage") that apply to it
  (default: all; `()` for a code that is not continuous, a VQ-VAE's code
  indices), and `fid_samplers`: samplers whose FID `aejax.evaluate` reports as
  `fid_<name>` besides the prior's `fid`; `second_stage`: the settings
  (aejax.zoo.two_stage_vae.Settings) the "two_stage" sampler fits with
  (default: that class's defaults); `latent_size`: the size of `encode`'s
  "z" when it is not config.model.latent_dim (a VQ-VAE's grid of code vectors).
Optional hooks, for models whose prior is not N(0, I):
- `sample(key, num_samples, label_B) -> logits` (N, H, W, C): draws from the
  model's generative model (`generate`, the samples figure, the FID of samples);
- `log_weight_terms(codes, target, label_B, key) -> {"log_px_given_z": (B,),
  "log_pz_minus_log_qz": (B,)}`: one draw z ~ q(z|x) with `key` (`codes` is
  `encode`'s output), nats per image; the IWAE bounds and NLL use it.
The built-in families are aejax/autoencoder.py and aejax/vae.py. A family
outside the package is named by its import path, `my_package.my_model:build`.
"""

import importlib
import sys
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import ml_collections

from aejax import errors, layers, networks
from aejax.autoencoder import AutoEncoder
from aejax.vae import VAE

# The model lookup: name -> builder(model_config, image_shape).


def _check_divisible(image_shape, num_layers: int, name: str) -> None:
  factor = 2**num_layers
  if image_shape[0] % factor or image_shape[1] % factor:
    raise errors.ConfigError(
      f"config.model.conv_channels: {num_layers} stride-2 layers need image height and width "
      f"divisible by {factor}, got image shape {tuple(image_shape)} for model {name!r}; "
      "use fewer conv_channels"
    )


def _wrap(cfg, encoder, decoder, image_shape, variational: bool) -> nn.Module:
  common = dict(
    encoder=encoder,
    decoder=decoder,
    output_shape=tuple(image_shape),
    learn_log_scale=bool(cfg.get("learn_log_scale", False)),
    init_log_scale=float(cfg.get("log_scale", 0.0)),
    num_classes=int(cfg.get("num_classes", 0)),
  )
  if variational:
    return VAE(latent_dim=cfg.latent_dim, **common)
  return AutoEncoder(**common)


def _compute(cfg) -> dict[str, Any]:
  """How a model computes (never what its parameters are): dtype and, for conv models, conv_impl.

  Read with defaults so that configs without these fields keep working.
  """
  impl = cfg.get("conv_impl", "auto")
  layers.resolve_conv_impl(impl)  # Fails now, naming the field, rather than inside a trace.
  return {"dtype": networks.get_dtype(cfg.get("dtype", "float32")), "conv_impl": impl}


# The encoder/decoder pairs a zoo model can be built on.
NETWORKS = ("dense", "conv", "dlib_conv")


def build_networks(
  cfg, image_shape, encoder_outputs: int, network: str, name: str
) -> tuple[nn.Module, nn.Module]:
  """An encoder to `encoder_outputs` numbers and a decoder from `cfg.latent_dim` to logits.

  "dense": MLPs of `cfg.hidden_widths` (the decoder mirrors them); "conv": one
  stride-2 convolution per `cfg.conv_channels` entry; "dlib_conv":
  disentanglement_lib's fixed conv networks for 64x64 images (networks.DlibConvEncoder,
  DlibConvDecoder; they ignore hidden_widths, conv_channels and activation). The zoo
  builds on these.
  """
  compute = _compute(cfg)
  if network == "dense":
    widths = tuple(cfg.hidden_widths)
    enc = networks.DenseEncoder(widths, encoder_outputs, cfg.activation, dtype=compute["dtype"])
    dec = networks.DenseDecoder(
      tuple(reversed(widths)), tuple(image_shape), cfg.activation, dtype=compute["dtype"]
    )
    return enc, dec
  if network == "conv":
    channels = tuple(cfg.conv_channels)
    _check_divisible(image_shape, len(channels), name)
    enc = networks.ConvEncoder(channels, encoder_outputs, cfg.activation, **compute)
    dec = networks.ConvDecoder(channels, tuple(image_shape), cfg.activation, **compute)
    return enc, dec
  if network == "dlib_conv":
    networks.check_dlib_image_shape(image_shape, name)  # At build time, not inside a trace.
    enc = networks.DlibConvEncoder(encoder_outputs, **compute)
    return enc, networks.DlibConvDecoder(tuple(image_shape), **compute)
  raise errors.ConfigError(
    f"config.model.options.network: unknown network {network!r} for model {name!r}; "
    f"valid: {', '.join(NETWORKS)}"
  )


def _dense(cfg, image_shape, variational):
  out = 2 * cfg.latent_dim if variational else cfg.latent_dim
  enc, dec = build_networks(cfg, image_shape, out, "dense", cfg.name)
  return _wrap(cfg, enc, dec, image_shape, variational)


def _conv(cfg, image_shape, variational, name):
  out = 2 * cfg.latent_dim if variational else cfg.latent_dim
  enc, dec = build_networks(cfg, image_shape, out, "conv", name)
  return _wrap(cfg, enc, dec, image_shape, variational)


def _lesson_conv_ae(cfg, image_shape):
  if tuple(image_shape[:2]) != (28, 28):
    raise errors.ConfigError(
      f"model 'lesson_conv_ae' is the lesson's fixed 28x28 architecture; image shape is "
      f"{tuple(image_shape)}. Use 'conv_ae' for other sizes"
    )
  if cfg.latent_dim != 128:
    raise errors.ConfigError(
      "config.model.latent_dim must be 128 for 'lesson_conv_ae' (its latent is 4x4x8), "
      f"got {cfg.latent_dim}"
    )
  compute = _compute(cfg)
  enc, dec = (
    networks.LessonConvEncoder(**compute),
    networks.LessonConvDecoder(image_shape[2], **compute),
  )
  return _wrap(cfg, enc, dec, image_shape, False)


def _pythae_conv_vae(cfg, image_shape):
  if tuple(image_shape) != (28, 28, 1):
    raise errors.ConfigError(
      f"model 'pythae_conv_vae' is Pythae's fixed 28x28x1 MNIST architecture; image shape is "
      f"{tuple(image_shape)}. Use 'conv_vae' for other sizes"
    )
  compute = _compute(cfg)
  enc = networks.PythaeConvEncoder(cfg.latent_dim, **compute)
  return _wrap(cfg, enc, networks.PythaeConvDecoder(**compute), image_shape, True)


MODELS: dict[str, Callable[[ml_collections.ConfigDict, tuple[int, int, int]], nn.Module]] = {
  "dense_ae": lambda cfg, shape: _dense(cfg, shape, variational=False),
  "conv_ae": lambda cfg, shape: _conv(cfg, shape, False, "conv_ae"),
  "lesson_conv_ae": _lesson_conv_ae,
  "dense_vae": lambda cfg, shape: _dense(cfg, shape, variational=True),
  "conv_vae": lambda cfg, shape: _conv(cfg, shape, True, "conv_vae"),
  # Pythae's MNIST benchmark conv VAE (17.2M parameters at latent_dim 16), for benchmarks;
  # its batch norm always uses batch statistics (see BatchNorm).
  "pythae_conv_vae": _pythae_conv_vae,
}


# The zoo (aejax/zoo/): name -> "module:builder", imported when a config names it, so that
# `import aejax` stays light and one zoo file never breaks another.
ZOO: dict[str, str] = {
  "sparse_ae": "aejax.zoo.sparse_ae:build",
  "contractive_ae": "aejax.zoo.contractive_ae:build",
  "rae": "aejax.zoo.rae:build",
  "aae": "aejax.zoo.aae:build",
  "wae_mmd": "aejax.zoo.wae_mmd:build",
  "info_vae": "aejax.zoo.info_vae:build",
  "vamp_vae": "aejax.zoo.vamp_vae:build",
  "two_layer_vae": "aejax.zoo.two_layer_vae:build",
  "miwae": "aejax.zoo.iwae_variants:build_miwae",
  "piwae": "aejax.zoo.iwae_variants:build_piwae",
  "ciwae": "aejax.zoo.iwae_variants:build_ciwae",
  "two_stage_vae": "aejax.zoo.two_stage_vae:build",
  "vq_vae": "aejax.zoo.vq_vae:build",
  # The beta-VAE family of disentanglement_lib's study (Locatello et al., 2019).
  "beta_vae": "aejax.zoo.beta_vae:build",
  "annealed_vae": "aejax.zoo.annealed_vae:build",
  "beta_tcvae": "aejax.zoo.beta_tcvae:build",
  "factor_vae": "aejax.zoo.factor_vae:build",
  "dip_vae_i": "aejax.zoo.dip_vae:build_dip_vae_i",
  "dip_vae_ii": "aejax.zoo.dip_vae:build_dip_vae_ii",
  # Sequences: melodies as token sequences (aejax/chorales.py).
  "music_vae": "aejax.zoo.music_vae:build",
}


# The zoo's models of token sequences (data.SEQUENCE_SETS: melodies), not of images: measured on
# the Bach chorales (docs/sequences.md), not by the MNIST zoo table.
SEQUENCE_FAMILY = ("music_vae",)
# The zoo's disentanglement family: measured by the disentanglement study on dSprites, not by
# the MNIST zoo table (experiments/zoo_table.py).
DISENTANGLEMENT_FAMILY = (
  "beta_vae", "annealed_vae", "beta_tcvae", "factor_vae", "dip_vae_i", "dip_vae_ii",
)  # fmt: skip


def model_names() -> tuple[str, ...]:
  """Every built-in model name: the core families, then the zoo."""
  return (*MODELS, *ZOO)


# What a module must have to be trained, evaluated and loaded by aejax.
CONTRACT = ("encode", "decode", "losses", "is_variational", "num_classes")


def import_builder(name: str, *, trust_model_code: bool) -> Callable[..., nn.Module]:
  """The builder named `module.path:function`, importing its module only when trusted.

  A saved config is data: the module it names is imported only when the
  caller says so (`trust_model_code`, the `--trust_model_code` flag), or when
  the process has imported it already.
  """
  module_name, _, attr = name.partition(":")
  if not module_name or not attr:
    raise errors.ConfigError(
      f"config.model.name: unknown model {name!r}; valid: {', '.join(model_names())}, "
      "or an importable builder as 'module.path:function'"
    )
  if module_name not in sys.modules and not trust_model_code:
    raise errors.ConfigError(
      f"config.model.name: {name!r} names the module {module_name!r}, which aejax imports only "
      "when asked: pass trust_model_code=True (--trust_model_code) if you trust its code"
    )
  try:
    module = importlib.import_module(module_name)
  except ImportError as error:
    raise errors.ConfigError(
      f"config.model.name: cannot import {module_name!r} for {name!r} ({error}); "
      "is its folder on PYTHONPATH?"
    ) from error
  builder = getattr(module, attr, None)
  if not callable(builder):
    raise errors.ConfigError(f"config.model.name: {module_name!r} has no function {attr!r}")
  return builder


def is_known_name(name: str) -> bool:
  """A built-in model, or a name of the importable form (checked when it is built)."""
  return name in MODELS or name in ZOO or (":" in name and all(name.partition(":")[::2]))


def build_model(
  model_config: ml_collections.ConfigDict, image_shape, *, trust_model_code: bool = False
) -> nn.Module:
  """Builds the model named by `model_config.name` for images of `image_shape` (H, W, C).

  `trust_model_code` lets an importable name (`module.path:function`) import
  its module; training passes True (the user named the model), loading a
  saved workdir does not by default.
  """
  name = model_config.name
  if model_config.latent_dim < 1:
    raise errors.ConfigError(f"config.model.latent_dim must be >= 1, got {model_config.latent_dim}")
  if name in MODELS:
    return MODELS[name](model_config, tuple(image_shape))
  if name in ZOO:  # aejax's own code: always trusted.
    builder = import_builder(ZOO[name], trust_model_code=True)
  else:
    builder = import_builder(name, trust_model_code=trust_model_code)
  model = builder(model_config, tuple(image_shape))
  missing = [a for a in CONTRACT if not hasattr(model, a)]
  if not isinstance(model, nn.Module) or missing:
    raise errors.ConfigError(
      f"config.model.name: {name!r} built {type(model).__name__}, not a Flax module with "
      f"{', '.join(missing or CONTRACT)} (the model contract: docs/extending.md)"
    )
  return model
