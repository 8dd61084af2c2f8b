"""The VQ-VAE: a grid of discrete codes from a learned codebook, and a PixelCNN prior over them.

van den Oord, Vinyals & Kavukcuoglu (2017), "Neural Discrete Representation
Learning" (NeurIPS; arXiv 1711.00937). A convolutional encoder maps an image
to a grid z_e of h x w vectors of dimension D (config.model.latent_dim); each
vector is replaced by its nearest codebook vector e_k (squared Euclidean
distance, K = option `codebook_size` codes) and the decoder reconstructs from
that grid z_q. The quantisation has no gradient; the straight-through
estimator z_q = z_e + stop_gradient(e_k - z_e) has the value e_k and passes
the decoder's gradient to the encoder unchanged.

Networks (the paper's shape, narrower): the encoder is two 4x4 stride-2
convolutions (H x W -> H/4 x W/4) of option `channels` channels, option
`residual_blocks` residual blocks (ReLU, 3x3 convolution, ReLU, 1x1
convolution, added to the input), ReLU and a 1x1 convolution to D. The
decoder mirrors it: a 3x3 convolution from D, the residual blocks, ReLU and
two 4x4 stride-2 transposed convolutions, the last to the image's channels
(logits; the image is sigmoid(logits)). H and W must be divisible by 4.

Loss per image, (B,), nats per image:
  recon      = -log p(x | z_q), summed over pixels;
  commitment = sum over the h x w positions and D dimensions of (z_e - sg(e_k))^2;
  loss       = recon + kl_weight * commitment  (kl_weight: config.objective.beta with its
               warm-up, the paper's beta 0.25);
  loss_prior = -log p_prior(sg(codes)) = the PixelCNN's softmax cross-entropy summed over
               the grid, trained as its own parameter group ("prior");
  neg_elbo   = recon + loss_prior: with the one-hot posterior q(z|x) (entropy 0) this is the
               negative ELBO under the PixelCNN prior (a bound on -log p(x) only when p(x|z)
               is a density of the data: binary images with the Bernoulli decoder).
There is no codebook loss ||sg(z_e) - e||^2: the codebook follows the codes by
exponential moving averages instead (below). Batch statistics, the same
number broadcast to every image of the batch (so their evaluation mean is a
mean over batches, not over images):
  perplexity = exp(entropy of the batch's histogram of codes over all B x h x w positions),
               K when every code is used equally, 1 when one code takes all;
  codes_used = the fraction of the K codes that occur in the batch;
  dead_codes = the number of codes whose EMA cluster size is below
               `dead_code_threshold` in the codebook the batch was quantised with.

The codebook is a state group (aejax/steps.py: `state_param_groups`):
params["codebook"] holds the embeddings e (K, D), the EMA cluster sizes N (K,),
the EMA sums m (K, D) and the flag `initialised`; no gradient trains it.
Each training step `update_state` encodes the step's batch with the
parameters before the step, assigns every z_e vector to its nearest code and
- k-means initialisation: on the first update (initialised = 0) it runs
  `kmeans_iterations` Lloyd iterations on the batch's z_e vectors from K of
  them drawn at random (without replacement when the batch has at least K
  vectors), and sets e to the centres, N to the cluster sizes and m to the
  cluster sums of the last assignment (a cluster left empty keeps its start).
  Why: codes initialised at random far from the encoder's outputs are never
  the nearest of any vector and never move (codebook collapse); centres drawn
  from the data all start where the data is;
- otherwise the EMA update (the paper's appendix; Razavi et al. 2019): with n_k
  the number of the batch's vectors assigned to code k and s_k their sum,
    N_k <- g N_k + (1 - g) n_k,   m_k <- g m_k + (1 - g) s_k,
    e_k = m_k / N~_k,   N~_k = (N_k + eps) / (sum_j N_j + K eps) * sum_j N_j,
  g = `ema_decay`, eps = 1e-5: N~ is N Laplace-smoothed, so a code whose
  cluster size decays to zero never divides by zero;
- dead-code reset, after either: every code whose cluster size N_k is below
  `dead_code_threshold` is moved to a z_e vector of the batch drawn at random
  (e_k = z, N_k = dead_code_threshold, m_k = N_k z, so the next EMA update
  starts from it). Why: a code that no vector chooses gets no update and stays
  unused for good (codebook collapse); moved into the data it gets a chance
  to capture vectors. A threshold of 0 disables the reset.
The initialisation is a lax.cond (under jit only the taken branch runs; in a
vmapped population both run and one is selected).

The prior (option `prior_channels`, `prior_layers`): a gated PixelCNN over
the grid of codes (aejax/zoo/pixelcnn.py) with K-way softmax outputs.
`sample` draws a grid in raster order, looks the codes up in the codebook
and decodes. Deviation from the paper: the paper fits the prior after
training the VQ-VAE; here it is trained alongside, on the stop-gradient codes
of every batch (its gradient never reaches the encoder or the codebook), so it
tracks the codes as they settle; a prior trained afterwards on the final
codes would fit them better.

Hooks: `encode(x)` gives "z" (B, h * w * D), the quantised grid z_q
flattened (what probes and active units read), and "codes" (B, h, w) int32;
`decode(z)` takes z_q flattened. The attribute `latent_size` = h * w * D is
the length of "z" (config.model.latent_dim is D). No ex-post samplers (`ex_post_samplers =
()`): a Gaussian mixture over flattened discrete codes has no meaning.

Other deviations: the paper's 256 channels everywhere and its image sizes;
the paper's codebook is the EMA variant only in its appendix (the main text
trains e with the codebook loss); k-means initialisation and dead-code reset
are later practice (e.g. Dhariwal et al. 2020's Jukebox restarts codes), not
the paper's.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from aejax import errors, layers, networks
from aejax.autoencoder import LikelihoodScale, reconstruction_terms, resize_to
from aejax.zoo import options, pixelcnn

LAPLACE_EPS = 1e-5  # eps of the Laplace smoothing of the EMA cluster sizes.
DOWNSAMPLING = 4  # Two stride-2 convolutions.

DEFAULTS = {
  "codebook_size": 512,  # K, the paper's.
  "ema_decay": 0.99,  # g, the paper's.
  "kmeans_iterations": 10,
  "dead_code_threshold": 1.0,  # EMA cluster size below which a code is reset (0: never).
  "channels": 64,  # The encoder's and decoder's width (the paper's: 256).
  "residual_blocks": 2,  # The paper's.
  "prior_channels": 64,
  "prior_layers": 8,
}


# -- the codebook: pure functions (tests/test_zoo_vq_vae.py checks each against NumPy) ----------


def squared_distances(z_MxD: jax.Array, e_KxD: jax.Array) -> jax.Array:
  """||z_m - e_k||^2, (M, K)."""
  return (
    jnp.sum(jnp.square(z_MxD), axis=-1, keepdims=True)
    - 2.0 * z_MxD @ e_KxD.T
    + jnp.sum(jnp.square(e_KxD), axis=-1)[None, :]
  )


def nearest_codes(z_MxD: jax.Array, e_KxD: jax.Array) -> jax.Array:
  """The index of the nearest codebook vector of each row: (M,) int32."""
  return jnp.argmin(squared_distances(z_MxD, e_KxD), axis=-1).astype(jnp.int32)


def cluster_stats(z_MxD: jax.Array, codes_M: jax.Array, num_codes: int):
  """The number n_k (K,) and sum s_k (K, D) of the rows assigned to each code."""
  onehot_MxK = jax.nn.one_hot(codes_M, num_codes, dtype=z_MxD.dtype)
  return onehot_MxK.sum(axis=0), onehot_MxK.T @ z_MxD


def ema_update(cluster_size_K, sums_KxD, z_MxD, codes_M, decay: float):
  """One EMA step of (N, m) towards the batch's counts and sums; returns (e, N, m).

  e = m / N~ with N~ the Laplace-smoothed N (module docstring).
  """
  counts_K, batch_sums_KxD = cluster_stats(z_MxD, codes_M, cluster_size_K.shape[0])
  cluster_size_K = decay * cluster_size_K + (1.0 - decay) * counts_K
  sums_KxD = decay * sums_KxD + (1.0 - decay) * batch_sums_KxD
  total = cluster_size_K.sum()
  num_codes = cluster_size_K.shape[0]
  smoothed_K = (cluster_size_K + LAPLACE_EPS) / (total + num_codes * LAPLACE_EPS) * total
  return sums_KxD / smoothed_K[:, None], cluster_size_K, sums_KxD


def kmeans(z_MxD: jax.Array, centres_KxD: jax.Array, num_iterations: int):
  """`num_iterations` Lloyd iterations from `centres`; returns (centres, sizes, sums).

  Each iteration assigns every row to its nearest centre and moves each
  centre to the mean of its rows (a centre with none stays). The sizes and
  sums are those of the last assignment. num_iterations = 0 returns the start
  with the sizes and sums of its assignment.
  """
  num_codes = centres_KxD.shape[0]

  def assign(centres):
    counts, sums = cluster_stats(z_MxD, nearest_codes(z_MxD, centres), num_codes)
    return counts, sums

  def step(_, centres):
    counts, sums = assign(centres)
    return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], centres)

  if num_iterations == 0:
    counts, sums = assign(centres_KxD)
    return centres_KxD, counts, sums
  before = jax.lax.fori_loop(0, num_iterations - 1, step, centres_KxD)
  counts, sums = assign(before)
  centres = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], before)
  return centres, counts, sums


def draw_rows(key: jax.Array, z_MxD: jax.Array, num: int) -> jax.Array:
  """`num` rows of z drawn at random: distinct rows when there are enough, else with repeats.

  Distinct rows are the top `num` of M uniform draws (a random subset, without the sorting
  network of a full permutation).
  """
  rows = z_MxD.shape[0]
  if rows >= num:
    _, index = jax.lax.top_k(jax.random.uniform(key, (rows,)), num)
  else:
    index = jax.random.randint(key, (num,), 0, rows)
  return z_MxD[index]


def reset_dead_codes(e_KxD, cluster_size_K, sums_KxD, z_MxD, key, threshold: float):
  """Codes with cluster size < threshold move to random rows of z; returns (e, N, m).

  A moved code gets e_k = z, N_k = threshold, m_k = threshold * z; the others are untouched.
  """
  dead_K = cluster_size_K < threshold
  fresh_KxD = draw_rows(key, z_MxD, e_KxD.shape[0])
  e_KxD = jnp.where(dead_K[:, None], fresh_KxD, e_KxD)
  cluster_size_K = jnp.where(dead_K, threshold, cluster_size_K)
  sums_KxD = jnp.where(dead_K[:, None], threshold * fresh_KxD, sums_KxD)
  return e_KxD, cluster_size_K, sums_KxD


def code_usage(codes: jax.Array, num_codes: int) -> tuple[jax.Array, jax.Array]:
  """The perplexity exp(-sum_k p_k log p_k) of the histogram p of `codes` (any shape), and the
  fraction of the K codes that occur."""
  counts_K = jnp.bincount(codes.reshape(-1), length=num_codes).astype(jnp.float32)
  p_K = counts_K / counts_K.sum()
  entropy = -jnp.sum(jnp.where(p_K > 0, p_K * jnp.log(jnp.where(p_K > 0, p_K, 1.0)), 0.0))
  return jnp.exp(entropy), jnp.mean((counts_K > 0).astype(jnp.float32))


def quantise(z_e_BxHxWxD: jax.Array, e_KxD: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(z_q, codes): the nearest codebook vectors with the straight-through gradient, and their
  indices (B, h, w) int32. z_q = z_e + sg(e_k - z_e): its value is e_k, its gradient passes to
  z_e unchanged."""
  batch, height, width, dim = z_e_BxHxWxD.shape
  codes_M = nearest_codes(z_e_BxHxWxD.reshape(-1, dim), e_KxD)
  codes = codes_M.reshape(batch, height, width)
  chosen = e_KxD[codes]
  return z_e_BxHxWxD + jax.lax.stop_gradient(chosen - z_e_BxHxWxD), codes


# -- the networks -----------------------------------------------------------------------------


class ResidualBlock(nn.Module):
  """x + conv1x1(relu(conv3x3(relu(x)))), the paper's residual block."""

  channels: int
  conv_impl: str = "auto"
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(layers.Conv, impl=self.conv_impl, dtype=self.dtype)
    h = conv(self.channels, (3, 3), padding="SAME")(nn.relu(x))
    return x + conv(self.channels, (1, 1))(nn.relu(h))


class VQEncoder(nn.Module):
  """Image (B, H, W, C) -> z_e (B, H/4, W/4, D)."""

  latent_dim: int
  channels: int
  residual_blocks: int
  conv_impl: str = "auto"
  dtype: Any = None

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    conv = functools.partial(layers.Conv, impl=self.conv_impl, dtype=self.dtype)
    h = nn.relu(conv(self.channels, (4, 4), strides=(2, 2), padding="SAME")(x_BxHxWxC))
    h = conv(self.channels, (4, 4), strides=(2, 2), padding="SAME")(h)
    for _ in range(self.residual_blocks):
      h = ResidualBlock(self.channels, self.conv_impl, self.dtype)(h)
    return conv(self.latent_dim, (1, 1))(nn.relu(h)).astype(jnp.float32)


class VQDecoder(nn.Module):
  """z_q (B, H/4, W/4, D) -> logits (B, H, W, C)."""

  out_channels: int
  channels: int
  residual_blocks: int
  conv_impl: str = "auto"
  dtype: Any = None

  @nn.compact
  def __call__(self, z_BxhxwxD: jax.Array) -> jax.Array:
    conv = functools.partial(layers.Conv, impl=self.conv_impl, dtype=self.dtype)
    conv_t = functools.partial(layers.ConvTranspose, impl=self.conv_impl, dtype=self.dtype)
    h = conv(self.channels, (3, 3), padding="SAME")(z_BxhxwxD)
    for _ in range(self.residual_blocks):
      h = ResidualBlock(self.channels, self.conv_impl, self.dtype)(h)
    h = nn.relu(conv_t(self.channels, (4, 4), strides=(2, 2), padding="SAME")(nn.relu(h)))
    out = conv_t(self.out_channels, (4, 4), strides=(2, 2), padding="SAME")(h)
    return out.astype(jnp.float32)


class Codebook(nn.Module):
  """The state group: embeddings e (K, D), EMA cluster sizes N (K,) and sums m (K, D), and the
  flag `initialised` (0.0 until the first update_state, then 1.0)."""

  num_codes: int
  dim: int

  def setup(self):
    # A placeholder until the k-means initialisation of the first training step.
    self.embedding = self.param(
      "embedding", nn.initializers.normal(1.0), (self.num_codes, self.dim)
    )
    self.cluster_size = self.param("cluster_size", nn.initializers.zeros, (self.num_codes,))
    self.sums = self.param("sums", nn.initializers.zeros, (self.num_codes, self.dim))
    self.initialised = self.param("initialised", nn.initializers.zeros, ())

  def __call__(self) -> dict[str, jax.Array]:
    return {
      "embedding": self.embedding,
      "cluster_size": self.cluster_size,
      "sums": self.sums,
      "initialised": self.initialised,
    }


# -- the model ------------------------------------------------------------------------------


class VQVAE(nn.Module):
  """Encoder, EMA codebook (state group), decoder and PixelCNN prior; see the module docstring."""

  output_shape: tuple[int, int, int]
  latent_dim: int  # D, the dimension of a code vector.
  codebook_size: int = 512
  ema_decay: float = 0.99
  kmeans_iterations: int = 10
  dead_code_threshold: float = 1.0
  channels: int = 64
  residual_blocks: int = 2
  prior_channels: int = 64
  prior_layers: int = 8
  learn_log_scale: bool = False
  init_log_scale: float = 0.0
  conv_impl: str = "auto"
  dtype: Any = None

  is_variational = False
  num_classes = 0  # Not conditional: label arguments are accepted and ignored.
  state_param_groups = ("codebook",)  # Replaced by update_state each step, never trained.
  extra_param_groups = ("prior",)  # params["prior"] descends loss_prior.
  ex_post_samplers = ()  # A Gaussian mixture over flattened discrete codes means nothing.

  def setup(self):
    self.encoder = VQEncoder(
      self.latent_dim, self.channels, self.residual_blocks, self.conv_impl, self.dtype
    )
    self.decoder = VQDecoder(
      self.output_shape[2], self.channels, self.residual_blocks, self.conv_impl, self.dtype
    )
    self.codebook = Codebook(self.codebook_size, self.latent_dim)
    self.prior = pixelcnn.GatedPixelCNN(
      self.codebook_size, self.prior_channels, self.prior_layers, self.conv_impl, self.dtype
    )
    if self.learn_log_scale:
      # Named "likelihood" like the core families': objectives.likelihood_log_scale reads it.
      self.likelihood = LikelihoodScale(self.init_log_scale)

  @property
  def grid(self) -> tuple[int, int]:
    """(h, w): the code grid of an image."""
    return self.output_shape[0] // DOWNSAMPLING, self.output_shape[1] // DOWNSAMPLING

  @property
  def latent_size(self) -> int:
    """The length h * w * D of "z", the flattened code grid (config.model.latent_dim is D)."""
    height, width = self.grid
    return height * width * self.latent_dim

  def encode_continuous(self, x_BxHxWxC: jax.Array) -> jax.Array:
    """z_e (B, h, w, D), before quantisation."""
    return self.encoder(resize_to(x_BxHxWxC, self.output_shape))

  def encode(self, x_BxHxWxC: jax.Array, label_B: jax.Array | None = None) -> dict[str, jax.Array]:
    """ "z": z_q flattened (B, h * w * D); "codes": (B, h, w) int32."""
    del label_B
    z_q, codes = quantise(self.encode_continuous(x_BxHxWxC), self.codebook()["embedding"])
    return {"z": z_q.reshape(z_q.shape[0], -1), "codes": codes}

  def decode_grid(self, z_q_BxhxwxD: jax.Array) -> jax.Array:
    return self.decoder(z_q_BxhxwxD)

  def decode(self, z_BxL: jax.Array, label_B: jax.Array | None = None) -> jax.Array:
    """Logits (B, H, W, C) of z_q flattened (B, h * w * D)."""
    del label_B
    height, width = self.grid
    return self.decode_grid(z_BxL.reshape(z_BxL.shape[0], height, width, self.latent_dim))

  def decode_codes(self, codes_BxHxW: jax.Array) -> jax.Array:
    """Logits of a grid of code indices: the codebook vectors, decoded."""
    return self.decode_grid(self.codebook()["embedding"][codes_BxHxW])

  def _log_scale(self, config) -> jax.Array:
    if self.learn_log_scale:
      return self.likelihood()
    return jnp.asarray(config.model.log_scale, jnp.float32)

  def __call__(
    self, x_BxHxWxC: jax.Array, key: jax.Array | None = None, label_B: jax.Array | None = None
  ) -> dict[str, jax.Array]:
    """Codes, logits and the prior's logits of the codes (this creates every parameter)."""
    del key, label_B  # Deterministic; not conditional.
    out = self.encode(x_BxHxWxC)
    out["logits"] = self.decode(out["z"])
    out["prior_logits"] = self.prior(out["codes"])
    if self.learn_log_scale:
      out["log_scale"] = self.likelihood()
    return out

  def losses(self, batch, key, config, kl_weight) -> dict[str, jax.Array]:
    """Per image, (B,): see the module docstring (nats per image; batch statistics broadcast)."""
    del key
    codebook = self.codebook()
    z_e = self.encode_continuous(batch["input"])
    z_q, codes = quantise(z_e, codebook["embedding"])
    logits = self.decode_grid(z_q)
    terms = reconstruction_terms(
      logits, batch["target"], config.model.likelihood, self._log_scale(config)
    )
    chosen = jax.lax.stop_gradient(codebook["embedding"][codes])
    terms["commitment"] = jnp.sum(jnp.square(z_e - chosen), axis=(1, 2, 3))
    terms["loss"] = terms["recon"] + kl_weight * terms["commitment"]
    # Integer codes carry no gradient: the prior learns from them without moving the encoder.
    prior_logits = self.prior(jax.lax.stop_gradient(codes))
    terms["loss_prior"] = -pixelcnn.log_likelihood(prior_logits, codes)
    terms["neg_elbo"] = terms["recon"] + terms["loss_prior"]
    batch_size = codes.shape[0]
    perplexity, codes_used = code_usage(codes, self.codebook_size)
    dead = jnp.sum(codebook["cluster_size"] < self.dead_code_threshold).astype(jnp.float32)
    terms["perplexity"] = jnp.full((batch_size,), perplexity)
    terms["codes_used"] = jnp.full((batch_size,), codes_used)
    terms["dead_codes"] = jnp.full((batch_size,), dead)
    return terms

  def update_state(self, batch, key, config) -> dict[str, Any]:
    """The codebook after this batch: k-means on the first call, else the EMA update; then the
    dead-code reset (module docstring). Uses the parameters before the step."""
    del config  # The rule's constants are the model's options.
    codebook = self.codebook()
    z_MxD = jax.lax.stop_gradient(self.encode_continuous(batch["input"]))
    z_MxD = z_MxD.reshape(-1, self.latent_dim)
    key_init, key_reset = jax.random.split(jax.random.key(0) if key is None else key)

    def initialise():
      start = draw_rows(key_init, z_MxD, self.codebook_size)
      return kmeans(z_MxD, start, self.kmeans_iterations)

    def follow():
      codes_M = nearest_codes(z_MxD, codebook["embedding"])
      return ema_update(codebook["cluster_size"], codebook["sums"], z_MxD, codes_M, self.ema_decay)

    e, n, m = jax.lax.cond(codebook["initialised"] > 0.5, follow, initialise)
    if self.dead_code_threshold > 0.0:
      e, n, m = reset_dead_codes(e, n, m, z_MxD, key_reset, self.dead_code_threshold)
    new = {
      "embedding": e,
      "cluster_size": n,
      "sums": m,
      "initialised": jnp.ones_like(codebook["initialised"]),
    }
    return {"codebook": new}

  def sample_codes(self, key: jax.Array, num_samples: int) -> jax.Array:
    """Code grids (N, h, w) int32 drawn from the PixelCNN in raster order."""
    return pixelcnn.sample_codes(self.prior, key, num_samples, self.grid)

  def sample(self, key: jax.Array, num_samples: int, label_B=None) -> jax.Array:
    """Logits (N, H, W, C): a code grid from the prior, looked up in the codebook, decoded."""
    del label_B
    return self.decode_codes(self.sample_codes(key, num_samples))


def _positive_int(model_config, opts, name: str, minimum: int = 1) -> None:
  value = opts[name]
  options.check(value >= minimum, model_config, name, f"must be >= {minimum}, got {value}")


def build(model_config, image_shape) -> VQVAE:
  """The VQ-VAE of `model_config`; every option is checked here, naming its field."""
  opts = options.read_options(model_config, DEFAULTS)
  _positive_int(model_config, opts, "codebook_size", 2)
  _positive_int(model_config, opts, "channels")
  _positive_int(model_config, opts, "prior_channels")
  _positive_int(model_config, opts, "prior_layers")
  _positive_int(model_config, opts, "residual_blocks", 0)
  _positive_int(model_config, opts, "kmeans_iterations", 0)
  decay = opts["ema_decay"]
  options.check(0.0 <= decay < 1.0, model_config, "ema_decay", f"must be in [0, 1), got {decay}")
  threshold = opts["dead_code_threshold"]
  options.check(
    threshold >= 0.0, model_config, "dead_code_threshold", f"must be >= 0, got {threshold}"
  )
  if int(model_config.get("num_classes", 0)):
    raise errors.ConfigError(
      f"config.model.num_classes: model {model_config.name!r} is not conditional; set it to 0"
    )
  image_shape = tuple(int(d) for d in image_shape)
  if image_shape[0] % DOWNSAMPLING or image_shape[1] % DOWNSAMPLING:
    raise errors.ConfigError(
      f"config.data: model {model_config.name!r} downsamples by {DOWNSAMPLING} (two stride-2 "
      f"convolutions) and needs image height and width divisible by {DOWNSAMPLING}, got image "
      f"shape {image_shape}"
    )
  compute_impl = model_config.get("conv_impl", "auto")
  layers.resolve_conv_impl(compute_impl)  # Fails now, naming the field, not inside a trace.
  return VQVAE(
    output_shape=image_shape,
    latent_dim=int(model_config.latent_dim),
    codebook_size=opts["codebook_size"],
    ema_decay=float(decay),
    kmeans_iterations=opts["kmeans_iterations"],
    dead_code_threshold=float(threshold),
    channels=opts["channels"],
    residual_blocks=opts["residual_blocks"],
    prior_channels=opts["prior_channels"],
    prior_layers=opts["prior_layers"],
    learn_log_scale=bool(model_config.get("learn_log_scale", False)),
    init_log_scale=float(model_config.get("log_scale", 0.0)),
    conv_impl=compute_impl,
    dtype=networks.get_dtype(model_config.get("dtype", "float32")),
  )
