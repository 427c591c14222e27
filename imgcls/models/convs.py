"""Depthwise and 1x1 convolutions with an implementation chosen per backend.

XLA's CPU convolutions are slow for these two, their gradients most of all (Keras on JAX runs
MobileNetV2 several times slower than on TensorFlow for it). With `"cpu"`:
  - a depthwise convolution is k*k shifted, strided slices times the kernel's taps, added up:
    plain elementwise work that XLA fuses, forwards and backwards;
  - a 1x1 convolution is a matrix product of the (N*H*W, C) pixels with the (C, D) kernel.
`"xla"` is `lax.conv_general_dilated`, kept on GPU and TPU. Both give the same results to float
rounding; `"auto"` picks `"cpu"` on the CPU backend. Measured by bench/conv_ops.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

IMPLEMENTATIONS = ("auto", "xla", "cpu")


def resolve(implementation: str) -> str:
  """"auto" -> "cpu" on the CPU backend, "xla" elsewhere."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"Convolution implementation {implementation!r} is not one of {', '.join(IMPLEMENTATIONS)}.")
  if implementation == "auto":
    return "cpu" if jax.default_backend() == "cpu" else "xla"
  return implementation


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def depthwise_shift(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: str) -> jax.Array:
  """NHWC depthwise convolution (kernel HxWx1xC, multiplier 1) as shifted multiply-adds."""
  kh, kw = kernel.shape[:2]
  sh, sw = strides
  n, height, width, channels = x.shape
  if padding == "SAME":
    x = jnp.pad(x, ((0, 0), _same_pads(height, kh, sh), _same_pads(width, kw, sw), (0, 0)))
  elif padding != "VALID":
    raise ValueError(f"Unsupported padding {padding!r}.")
  out_h = (x.shape[1] - kh) // sh + 1
  out_w = (x.shape[2] - kw) // sw + 1
  taps = kernel.reshape(kh, kw, channels).astype(x.dtype)
  out = None
  for i in range(kh):
    for j in range(kw):
      patch = lax.slice(x, (0, i, j, 0), (n, i + (out_h - 1) * sh + 1, j + (out_w - 1) * sw + 1, channels), (1, sh, sw, 1))
      term = patch * taps[i, j]
      out = term if out is None else out + term
  return out


class DepthwiseConv(nnx.Conv):
  """`nnx.Conv` with `feature_group_count == in_features` (same parameters), computed by `implementation`."""

  def __init__(self, channels: int, kernel_size, *, implementation: str = "auto", **kwargs):
    super().__init__(channels, channels, kernel_size, feature_group_count=channels, **kwargs)
    self.implementation = resolve(implementation)

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.implementation == "xla" or not isinstance(self.padding, str):
      return super().__call__(x)
    strides = self.strides if isinstance(self.strides, tuple) else (self.strides, self.strides)
    y = depthwise_shift(x, self.kernel[...], tuple(strides), self.padding)
    if self.bias is not None:
      y = y + self.bias[...].astype(y.dtype)
    return y


def pointwise_dot(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """NHWC 1x1 convolution (kernel 1x1xCxD, stride 1) as one matrix product."""
  n, height, width, channels = x.shape
  out = x.reshape(-1, channels) @ kernel.reshape(channels, -1).astype(x.dtype)
  return out.reshape(n, height, width, -1)


class PointwiseConv(nnx.Conv):
  """`nnx.Conv` with a 1x1 kernel and stride 1 (same parameters), computed by `implementation`."""

  def __init__(self, in_features: int, out_features: int, *, implementation: str = "auto", **kwargs):
    super().__init__(in_features, out_features, (1, 1), **kwargs)
    self.implementation = resolve(implementation)

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.implementation == "xla":
      return super().__call__(x)
    y = pointwise_dot(x, self.kernel[...])
    if self.bias is not None:
      y = y + self.bias[...].astype(y.dtype)
    return y
