"""Max and average pooling written as elementwise work on the window's strided slices (its taps).

The pool is the maximum (or mean) of the window's wh*ww strided slices of the input; the max's
gradient is `dy * (x == max)`, split evenly between equal maxima, put back in place by padding
each tap's share (`_window_max`'s backward); a stride-1 mean's gradient is again a window sum
(`_stride_one_mean`). XLA fuses all of it into a few loops, where its CPU `reduce_window` and
`select_and_scatter` were half of the insects CNN's training step, and InceptionV3's 3x3 pools
(strided max, 'same' average) run 1.8-5.8x faster forward and backward (bench/conv_ops.py).
'same' padding is TensorFlow's (Keras's): the odd row and column at the end, averages over the
window's real pixels only. Equal maxima split the gradient where XLA gives it to the first.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import imgcls.models.onednn as onednn

Pair = tuple[int, int]


def _out_size(size: int, window: int, stride: int) -> int:
  return (size - window) // stride + 1


def _taps(x: jax.Array, window: Pair, strides: Pair) -> list[tuple[int, int, jax.Array]]:
  """(i, j, the window's (i, j) pixel for every output position) over x's 'valid' windows."""
  (wh, ww), (sh, sw) = window, strides
  n, height, width, channels = x.shape
  out_h, out_w = _out_size(height, wh, sh), _out_size(width, ww, sw)
  return [
    (i, j, lax.slice(x, (0, i, j, 0), (n, i + (out_h - 1) * sh + 1, j + (out_w - 1) * sw + 1, channels), (1, sh, sw, 1)))
    for i in range(wh)
    for j in range(ww)
  ]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _window_max(x: jax.Array, window: Pair, strides: Pair) -> jax.Array:
  """Max over x's 'valid' windows (NHWC, at least one window each way)."""
  return functools.reduce(jnp.maximum, [tap for _, _, tap in _taps(x, window, strides)])


def _window_max_fwd(x, window, strides):
  y = _window_max(x, window, strides)
  return y, (x, y)


def _window_max_bwd(window, strides, residuals, dy):
  x, y = residuals
  (sh, sw), (_, height, width, _) = strides, x.shape
  taps = _taps(x, window, strides)
  hits = [tap == y for _, _, tap in taps]
  share = dy / sum(hit.astype(dy.dtype) for hit in hits)  # equal maxima split the gradient
  zero = jnp.zeros((), dy.dtype)
  out_h, out_w = y.shape[1:3]

  def back_in_place(i, j, values):  # interior padding spreads a tap to every sh-th row, sw-th column
    span_h, span_w = (out_h - 1) * sh + 1, (out_w - 1) * sw + 1
    return lax.pad(values, zero, ((0, 0, 0), (i, height - i - span_h, sh - 1), (j, width - j - span_w, sw - 1), (0, 0, 0)))

  dx = sum(back_in_place(i, j, jnp.where(hit, share, zero)) for (i, j, _), hit in zip(taps, hits))
  return (dx,)


_window_max.defvjp(_window_max_fwd, _window_max_bwd)


def _same_pads(size: int, window: int, stride: int) -> tuple[int, int]:
  """TensorFlow's 'SAME' padding: ceil(size / stride) outputs, the odd pixel at the end."""
  total = max((-(-size // stride) - 1) * stride + window - size, 0)
  return total // 2, total - total // 2


def _pads(image: Pair, window: Pair, strides: Pair, padding: str) -> list[tuple[int, int]]:
  """(before, after) pads of the image's height and width for 'valid' or 'same' padding."""
  if padding.upper() not in ("VALID", "SAME"):
    raise ValueError(f"Pooling padding must be 'valid' or 'same', not {padding!r}.")
  if padding.upper() == "VALID":
    return [(0, 0), (0, 0)]
  return [_same_pads(image[axis], window[axis], strides[axis]) for axis in (0, 1)]


def _padded(x: jax.Array, window: Pair, strides: Pair, padding: str, value: float) -> jax.Array:
  pads = _pads(x.shape[1:3], window, strides, padding)
  return jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=value) if any(sum(p) for p in pads) else x


def _empty(x: jax.Array, window: Pair, strides: Pair, padding: str) -> jax.Array | None:
  """Zeros of the output's shape when the image is smaller than the window (nothing to pool), else None."""
  pads = _pads(x.shape[1:3], window, strides, padding)
  out_h, out_w = (max(_out_size(x.shape[a + 1] + sum(pads[a]), window[a], strides[a]), 0) for a in (0, 1))
  return jnp.zeros((x.shape[0], out_h, out_w, x.shape[3]), x.dtype) if out_h == 0 or out_w == 0 else None


def max_pool(
  x: jax.Array, window: Pair, strides: Pair | None = None, padding: str = "VALID", implementation: str = "cpu"
) -> jax.Array:
  """NHWC max pooling, as `nnx.max_pool(x, window, strides=strides, padding=padding)`.

  `implementation="onednn"` (a resolved `model.convs`) pools float32 through oneDNN, 2x faster
  forward and backward on the tutorials' CNNs (bench/conv_ops.py); its gradient goes to the first
  of equal maxima, as TensorFlow's. Otherwise the taps above."""
  window = tuple(window)
  strides = tuple(strides or window)
  empty = _empty(x, window, strides, padding)
  if empty is not None:
    return empty
  if implementation == "onednn" and x.dtype == jnp.float32:
    return onednn.max_pool(x, window, strides, _pads(x.shape[1:3], window, strides, padding))
  return _window_max(_padded(x, window, strides, padding, -jnp.inf), window, strides)


def _window_sum(x: jax.Array, window: Pair, strides: Pair) -> jax.Array:
  """Sum over x's 'valid' windows, rows first then columns (2 * (wh + ww) strided slices, not wh * ww)."""
  (wh, ww), (sh, sw) = window, strides
  n, height, width, channels = x.shape
  out_h, out_w = _out_size(height, wh, sh), _out_size(width, ww, sw)
  rows = sum(lax.slice(x, (0, i, 0, 0), (n, i + (out_h - 1) * sh + 1, width, channels), (1, sh, 1, 1)) for i in range(wh))
  return sum(lax.slice(rows, (0, 0, j, 0), (n, out_h, j + (out_w - 1) * sw + 1, channels), (1, 1, sw, 1)) for j in range(ww))


def _inverse_counts(shape: Pair, window: Pair, strides: Pair, padding: str) -> np.ndarray:
  """1 / (how many real pixels each output's window holds), as (1, out_h, out_w, 1) float32."""
  ones = np.pad(np.ones(shape, np.float32), _pads(shape, window, strides, padding))
  (wh, ww), (sh, sw) = window, strides
  out_h, out_w = _out_size(ones.shape[0], wh, sh), _out_size(ones.shape[1], ww, sw)
  counts = sum(ones[i : i + (out_h - 1) * sh + 1 : sh, j : j + (out_w - 1) * sw + 1 : sw] for i in range(wh) for j in range(ww))
  return (1.0 / counts)[None, :, :, None]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _stride_one_mean(x: jax.Array, window: Pair, padding: str) -> jax.Array:
  """Stride-1 average pooling; its gradient is again a window sum (of dy / counts), not wh * ww pads."""
  padded = _padded(x, window, (1, 1), padding, 0.0)
  return _window_sum(padded, window, (1, 1)) * _inverse_counts(x.shape[1:3], window, (1, 1), padding)


def _stride_one_mean_fwd(x, window, padding):
  return _stride_one_mean(x, window, padding), None


def _stride_one_mean_bwd(window, padding, _, dy):
  same = padding.upper() == "SAME"
  image = dy.shape[1:3] if same else (dy.shape[1] + window[0] - 1, dy.shape[2] + window[1] - 1)
  share = dy * _inverse_counts(image, window, (1, 1), padding).astype(dy.dtype)
  # Input pixel p is in the windows of outputs p - hi .. p + lo (per axis): pad the shares the other way round.
  pads = [(hi, lo) if same else (w - 1, w - 1) for (lo, hi), w in zip(_pads(image, window, (1, 1), padding), window)]
  return (_window_sum(jnp.pad(share, ((0, 0), *pads, (0, 0))), window, (1, 1)),)


_stride_one_mean.defvjp(_stride_one_mean_fwd, _stride_one_mean_bwd)


def avg_pool(x: jax.Array, window: Pair, strides: Pair | None = None, padding: str = "VALID") -> jax.Array:
  """NHWC average pooling over each window's real pixels (Keras's; `count_include_pad=False`)."""
  window = tuple(window)
  strides = tuple(strides or window)
  empty = _empty(x, window, strides, padding)
  if empty is not None:
    return empty
  if strides == (1, 1):
    return _stride_one_mean(x.astype(jnp.float32), window, padding).astype(x.dtype)
  total = _window_sum(_padded(x, window, strides, padding, 0.0).astype(jnp.float32), window, strides)
  return (total * _inverse_counts(x.shape[1:3], window, strides, padding)).astype(x.dtype)
