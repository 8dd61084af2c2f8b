"""Convolutions that are fast everywhere: XLA's on GPU/TPU, patches + one matmul on CPU.

`Conv` and `ConvTranspose` compute exactly what `flax.linen.Conv` and
`flax.linen.ConvTranspose` compute, with the same parameter names, shapes and
initialisers (and so the same parameter paths in a model: checkpoints move
freely between implementations). They differ in how the output is formed:

- "xla": `lax.conv_general_dilated`, as Flax does. cuDNN and the TPU's
  convolution units make this the right choice on accelerators.
- "im2col": a regular convolution gathers the kh*kw shifted, strided views
  of the padded input into (B, Ho, Wo, kh*kw*C) patches (plain slices, no
  convolution op) and multiplies them by the kernel reshaped to
  (kh*kw*C, F). A transposed convolution is one matmul
  (B*H*W, C) x (C, kh*kw*F) that gives every tap's contribution, then
  col2im: the contributions of each tap are shifted, summed per output phase
  and the phases interleaved (pads, adds and a reshape). Both have only dots,
  slices, pads and adds in their gradients too, and no multiplications by
  the zeros a dilated-input formulation would insert.

On a CPU, XLA runs the gradients of convolutions (and transposed
convolutions outright) far slower than the same FLOPs as a matmul, worst
inside the while loop of aejax's fused trainer, so "auto" picks "im2col" when
JAX's default backend is the CPU and "xla" otherwise. docs/performance.md has
the measurements and which XLA ops are slow.
"""

import functools
import operator
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from aejax import errors

CONV_IMPLS = ("auto", "xla", "im2col")

Padding = str | Sequence[tuple[int, int]]


def resolve_conv_impl(impl: str) -> str:
  """'auto' -> 'im2col' when JAX's default backend is the CPU, 'xla' otherwise; others are kept."""
  if impl not in CONV_IMPLS:
    raise errors.ConfigError(
      f"config.model.conv_impl: unknown implementation {impl!r}; valid: {', '.join(CONV_IMPLS)}"
    )
  if impl == "auto":
    return "im2col" if jax.default_backend() == "cpu" else "xla"
  return impl


def _pairs(padding: Padding, n: int) -> str | tuple[tuple[int, int], ...]:
  """Flax's padding forms: 'SAME'/'VALID', an int, or per-dimension ints or (low, high) pairs."""
  if isinstance(padding, str):
    if padding not in ("SAME", "VALID"):
      raise ValueError(f"padding must be 'SAME', 'VALID' or (low, high) pairs, got {padding!r}")
    return padding
  if isinstance(padding, int):
    return ((padding, padding),) * n
  pairs = tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)
  if len(pairs) != n:
    raise ValueError(f"padding needs {n} (low, high) pairs, got {padding!r}")
  return pairs


def _tuple(x: int | Sequence[int] | None, n: int) -> tuple[int, ...]:
  if x is None:
    return (1,) * n
  return (x,) * n if isinstance(x, int) else tuple(x)


# ---------------------------------------------------------------------------
# The im2col formulations, pure functions of NHWC inputs and HWIO kernels.


def conv_im2col(
  x_BxHxWxC: jax.Array,
  kernel_KhxKwxCxF: jax.Array,
  strides: tuple[int, int],
  padding: Padding,
  precision=None,
) -> jax.Array:
  """`lax.conv_general_dilated(x, kernel, strides, padding)` (NHWC, HWIO) as patches @ kernel."""
  kh, kw, c, f = kernel_KhxKwxCxF.shape
  sh, sw = strides
  pads = _pairs(padding, 2)
  if isinstance(pads, str):
    pads = lax.padtype_to_pads(x_BxHxWxC.shape[1:3], (kh, kw), strides, pads)
  (ph0, ph1), (pw0, pw1) = pads
  x = jnp.pad(x_BxHxWxC, ((0, 0), (ph0, ph1), (pw0, pw1), (0, 0)))
  ho = (x.shape[1] - kh) // sh + 1
  wo = (x.shape[2] - kw) // sw + 1
  # Tap (i, j) sees the input at (sh*y + i, sw*x + j): one strided slice per tap.
  taps = [
    lax.slice(
      x, (0, i, j, 0), (x.shape[0], i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c), (1, sh, sw, 1)
    )
    for i in range(kh)
    for j in range(kw)
  ]
  # (B, Ho, Wo, kh*kw, C) flattens in the kernel's (kh, kw, C) order.
  patches = jnp.stack(taps, axis=3).reshape(x.shape[0], ho, wo, kh * kw * c)
  return jnp.dot(patches, kernel_KhxKwxCxF.reshape(kh * kw * c, f), precision=precision)


def _transpose_pads(padding: Padding, kernel: tuple[int, int], strides) -> tuple:
  """lax.conv_transpose's padding of the dilated input, from Flax's padding argument."""
  pads = _pairs(padding, 2)
  if not isinstance(pads, str):
    return pads
  out = []
  for k, s in zip(kernel, strides, strict=True):
    if pads == "SAME":
      total = k + s - 2
      low = k - 1 if s > k - 1 else int(np.ceil(total / 2))
    else:  # VALID
      total = k + s - 2 + max(k - s, 0)
      low = k - 1
    out.append((low, total - low))
  return tuple(out)


def _col2im_1d(
  cols: jax.Array, axis: int, tap_axis: int, stride: int, pad: tuple[int, int]
) -> jax.Array:
  """Sums the taps of `tap_axis` into `axis` as a stride-`stride` transposed convolution does.

  Input position i with tap t lands at output o = stride*i + pad_low - t. With u = k-1-t this is
  the "full" position stride*i + u, shifted by k-1-pad_low; full positions of phase p = u % stride
  are a sum of the taps of that phase, each shifted by u // stride, and the phases interleave.
  """
  n, k = cols.shape[axis], cols.shape[tap_axis]
  length = (n - 1) * stride + 1 + pad[0] + pad[1] - k + 1
  m = n + (k - 1) // stride  # Full positions per phase.
  spatial = axis if axis < tap_axis else axis - 1  # `axis` once the tap axis is gone.

  def shifted(u: int) -> jax.Array:
    """Tap k-1-u at its place among the m positions of its phase."""
    part = lax.index_in_dim(cols, k - 1 - u, tap_axis, keepdims=False)
    widths = [(0, 0)] * part.ndim
    widths[spatial] = (u // stride, m - n - u // stride)
    return jnp.pad(part, widths)

  # Phase p sums taps u = p, p + stride, ...; with stride > k the phases past k get none.
  phases = [
    functools.reduce(operator.add, map(shifted, range(p, k, stride))) for p in range(min(k, stride))
  ]
  phases += [jnp.zeros_like(phases[0])] * (stride - len(phases))
  shape = phases[0].shape
  full = jnp.stack(phases, axis=spatial + 1)
  full = full.reshape(*shape[:spatial], m * stride, *shape[spatial + 1 :])
  # Output o is full position o + k-1-pad_low; positions outside the full range are zeros.
  start = k - 1 - pad[0]
  widths = [(0, 0)] * full.ndim
  widths[spatial] = (max(0, -start), max(0, start + length - m * stride))
  full = jnp.pad(full, widths)
  return lax.slice_in_dim(full, max(0, start), max(0, start) + length, axis=spatial)


def conv_transpose_col2im(
  x_BxHxWxC: jax.Array,
  kernel_KhxKwxCxF: jax.Array,
  strides: tuple[int, int],
  padding: Padding,
  precision=None,
) -> jax.Array:
  """`lax.conv_transpose(x, kernel, strides, padding)` (NHWC, HWIO, kernel not flipped).

  One matmul gives every input pixel's contribution through every tap, then col2im places them.
  """
  kh, kw, c, f = kernel_KhxKwxCxF.shape
  b, h, w, _ = x_BxHxWxC.shape
  pads = _transpose_pads(padding, (kh, kw), strides)
  kernel_CxT = kernel_KhxKwxCxF.transpose(2, 0, 1, 3).reshape(c, kh * kw * f)
  cols = jnp.dot(x_BxHxWxC, kernel_CxT, precision=precision)
  cols_BxHxWxKhxKwxF = cols.reshape(b, h, w, kh, kw, f)
  y = _col2im_1d(cols_BxHxWxKhxKwxF, axis=1, tap_axis=3, stride=strides[0], pad=pads[0])
  return _col2im_1d(y, axis=2, tap_axis=3, stride=strides[1], pad=pads[1])


# ---------------------------------------------------------------------------
# Flax modules.


class Conv(nn.Module):
  """`flax.linen.Conv` for NHWC images (same parameters), computed by `impl` (see module doc)."""

  features: int
  kernel_size: Sequence[int]
  strides: int | Sequence[int] = 1
  padding: Padding = "SAME"
  impl: str = "auto"
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    kernel_size = tuple(self.kernel_size)
    strides = _tuple(self.strides, 2)
    shape = (*kernel_size, x_BxHxWxC.shape[-1], self.features)
    kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x_BxHxWxC, kernel, bias, dtype=self.dtype)
    if resolve_conv_impl(self.impl) == "im2col":
      y = conv_im2col(x, kernel, strides, self.padding)
    else:
      pads = _pairs(self.padding, 2)
      y = lax.conv_general_dilated(
        x, kernel, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
      )
    return y + bias.reshape(1, 1, 1, -1)


class ConvTranspose(nn.Module):
  """`flax.linen.ConvTranspose` for NHWC images (same parameters), computed by `impl`."""

  features: int
  kernel_size: Sequence[int]
  strides: int | Sequence[int] = 1
  padding: Padding = "SAME"
  impl: str = "auto"
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    kernel_size = tuple(self.kernel_size)
    strides = _tuple(self.strides, 2)
    shape = (*kernel_size, x_BxHxWxC.shape[-1], self.features)
    kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x_BxHxWxC, kernel, bias, dtype=self.dtype)
    if resolve_conv_impl(self.impl) == "im2col":
      y = conv_transpose_col2im(x, kernel, strides, self.padding)
    else:
      pads = _pairs(self.padding, 2)
      y = lax.conv_transpose(x, kernel, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias.reshape(1, 1, 1, -1)
