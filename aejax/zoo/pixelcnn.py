"""A small gated PixelCNN over a grid of discrete codes: the VQ-VAE's prior (aejax/zoo/vq_vae.py).

van den Oord, Kalchbrenner, Vinyals, Espeholt, Graves & Kavukcuoglu (2016),
"Conditional Image Generation with PixelCNN Decoders" (NeurIPS). The model
factorises p(c) = prod_p p(c_p | c_<p) over the positions of an h x w grid in
raster order (row by row, left to right) and gives K-way logits per position.

Two stacks of gated layers, both as plain convolutions on shifted, padded
inputs (no masked kernels needed):
- the vertical stack sees the rows above: each layer is a (k//2 + 1) x k
  convolution whose window ends at the current row (it covers the current row
  and k//2 rows above it, k//2 columns to either side); its output is shifted
  down one row before the horizontal stack reads it, so what reaches position
  (i, j) comes only from rows < i;
- the horizontal stack sees the current row to the left: a 1 x (k//2 + 1)
  convolution whose window ends at the current column; in the first layer its
  input is shifted right one column, so position (i, j) never sees c_(i, j).
Splitting the receptive field this way removes the blind spot of the original
masked PixelCNN: the vertical stack's window is as wide to the right as to the
left, so the positions above and to the right of (i, j) reach it too.

Each layer is gated, y = tanh(a) * sigmoid(b) with [a, b] the 2F channels of
the convolution; the horizontal stack adds a 1x1 projection of the (shifted)
vertical pre-activations to its own, projects its gated output with a 1x1
convolution and, after the first layer, adds a residual connection (the first
layer has none: its input holds c_(i, j)). The head is ReLU, 1x1 convolution,
ReLU, 1x1 convolution to K logits.

Deviations from the paper: no conditioning vector, the same 3x3-sized windows
in every layer (the paper's first layer is 7x7), no skip connections from every
layer to the head; the code grid is embedded by a learned table (the paper's
inputs are pixel intensities).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from aejax import layers

KERNEL_SIZE = 3  # k: the vertical window is 2 x 3, the horizontal 1 x 2.


def shift_down(x_BxHxWxF: jax.Array) -> jax.Array:
  """Moves every row one down (row 0 becomes zeros, the last row is dropped)."""
  return jnp.pad(x_BxHxWxF, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]


def shift_right(x_BxHxWxF: jax.Array) -> jax.Array:
  """Moves every column one right (column 0 becomes zeros, the last column is dropped)."""
  return jnp.pad(x_BxHxWxF, ((0, 0), (0, 0), (1, 0), (0, 0)))[:, :, :-1]


def _gate(pre_BxHxWx2F: jax.Array) -> jax.Array:
  value, gate = jnp.split(pre_BxHxWx2F, 2, axis=-1)
  return jnp.tanh(value) * jax.nn.sigmoid(gate)


class GatedLayer(nn.Module):
  """One gated layer of both stacks: (vertical, horizontal) -> (vertical, horizontal)."""

  features: int
  first: bool = False
  conv_impl: str = "auto"
  dtype: Any = None

  @nn.compact
  def __call__(self, v_BxHxWxF: jax.Array, h_BxHxWxF: jax.Array) -> tuple[jax.Array, jax.Array]:
    half = KERNEL_SIZE // 2
    conv = lambda f, k, name: layers.Conv(
      f, k, padding="VALID", impl=self.conv_impl, dtype=self.dtype, name=name
    )
    # Vertical: the window of output (i, j) is rows i - half .. i, columns j - half .. j + half.
    v_pad = jnp.pad(v_BxHxWxF, ((0, 0), (half, 0), (half, half), (0, 0)))
    v_pre = conv(2 * self.features, (half + 1, KERNEL_SIZE), "vertical")(v_pad)
    # Horizontal: columns j - half .. j of the current row (of the shifted input in layer 0).
    h_in = shift_right(h_BxHxWxF) if self.first else h_BxHxWxF
    h_pad = jnp.pad(h_in, ((0, 0), (0, 0), (half, 0), (0, 0)))
    h_pre = conv(2 * self.features, (1, half + 1), "horizontal")(h_pad)
    # The vertical stack reaches the horizontal one only from the rows strictly above.
    h_pre = h_pre + conv(2 * self.features, (1, 1), "vertical_to_horizontal")(shift_down(v_pre))
    h_out = conv(self.features, (1, 1), "horizontal_out")(_gate(h_pre))
    if not self.first:
      h_out = h_out + h_BxHxWxF
    return _gate(v_pre), h_out


class GatedPixelCNN(nn.Module):
  """Codes (B, h, w) int -> logits (B, h, w, K); logits at p depend only on codes before p."""

  num_codes: int  # K.
  features: int = 64  # F: the channels of both stacks.
  num_layers: int = 8
  conv_impl: str = "auto"
  dtype: Any = None

  def setup(self):
    self.embed = nn.Embed(self.num_codes, self.features)
    self.gated = [
      GatedLayer(self.features, i == 0, self.conv_impl, self.dtype, name=f"layer_{i}")
      for i in range(self.num_layers)
    ]
    conv = lambda f: layers.Conv(f, (1, 1), impl=self.conv_impl, dtype=self.dtype)
    self.head_hidden = conv(self.features)
    self.head_logits = conv(self.num_codes)

  def __call__(self, codes_BxHxW: jax.Array) -> jax.Array:
    return self.from_embedding(self.embed(codes_BxHxW))

  def from_embedding(self, x_BxHxWxF: jax.Array) -> jax.Array:
    """The logits (B, h, w, K) of embedded codes (differentiable: the causality tests use it)."""
    v, h = x_BxHxWxF, x_BxHxWxF
    for layer in self.gated:
      v, h = layer(v, h)
    hidden = self.head_hidden(nn.relu(h))
    return self.head_logits(nn.relu(hidden)).astype(jnp.float32)


def log_likelihood(logits_BxHxWxK: jax.Array, codes_BxHxW: jax.Array) -> jax.Array:
  """log p(c) = sum over the grid of log softmax(logits)[c]: (B,), nats per grid."""
  log_probs = jax.nn.log_softmax(logits_BxHxWxK, axis=-1)
  picked = jnp.take_along_axis(log_probs, codes_BxHxW[..., None], axis=-1)[..., 0]
  return picked.sum(axis=(1, 2))


def sample_codes(apply_fn, key: jax.Array, num_samples: int, grid: tuple[int, int]) -> jax.Array:
  """Draws code grids (N, h, w) int32 in raster order: position p from its logits given c_<p.

  `apply_fn(codes) -> logits` is the PixelCNN; position p = i * w + j is drawn
  with fold_in(key, p). One forward pass per position (h * w passes): the grids
  here are small (7 x 7 on MNIST), so caching activations is not worth it.
  """
  height, width = grid

  def body(p, codes_NxHxW):
    logits_NxK = apply_fn(codes_NxHxW)[:, p // width, p % width]
    drawn_N = jax.random.categorical(jax.random.fold_in(key, p), logits_NxK, axis=-1)
    return codes_NxHxW.at[:, p // width, p % width].set(drawn_N.astype(jnp.int32))

  start = jnp.zeros((num_samples, height, width), jnp.int32)
  return jax.lax.fori_loop(0, height * width, body, start)
