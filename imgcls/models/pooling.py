"""Max pooling whose gradient is elementwise work instead of XLA's select-and-scatter.

For windows that tile the image (window == strides, 'valid' padding: every 2x2/2 pooling of VGG
and the seed CNNs), the pool is the maximum of the window's strided slices (its taps); its
gradient is `dy * (x == max)`, split evenly between equal maxima, written as elementwise work on
the taps (`_tiled_max`'s backward). XLA's `reduce_window` and `select_and_scatter` were half of
the insects CNN's training step on CPU, and autodiff of a max over reshaped window axes a third
of the dropout CNN's at 224x224 (bench/compare_keras.py). Other windows (overlapping, 'same') use
`nnx.max_pool`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax


def _taps(x: jax.Array, window: tuple[int, int]) -> list[tuple[int, int, jax.Array]]:
  """(i, j, x[:, i::wh, j::ww]) for each position (i, j) of a tiling window."""
  wh, ww = window
  n, height, width, channels = x.shape
  return [(i, j, lax.slice(x, (0, i, j, 0), (n, height, width, channels), (1, wh, ww, 1))) for i in range(wh) for j in range(ww)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _tiled_max(x: jax.Array, window: tuple[int, int]) -> jax.Array:
  """Max over the windows that tile x (NHWC, its height and width multiples of the window)."""
  return functools.reduce(jnp.maximum, [tap for _, _, tap in _taps(x, window)])


def _tiled_max_fwd(x, window):
  y = _tiled_max(x, window)
  return y, (x, y)


def _tiled_max_bwd(window, residuals, dy):
  x, y = residuals
  wh, ww = window
  taps = _taps(x, window)
  hits = [tap == y for _, _, tap in taps]
  share = dy / sum(hit.astype(dy.dtype) for hit in hits)  # equal maxima split the gradient
  zero = jnp.zeros((), dy.dtype)
  # Each tap's share, put back in place: interior padding spreads it to every wh-th row, ww-th column.
  dx = sum(
    lax.pad(jnp.where(hit, share, zero), zero, ((0, 0, 0), (i, wh - 1 - i, wh - 1), (j, ww - 1 - j, ww - 1), (0, 0, 0)))
    for (i, j, _), hit in zip(taps, hits)
  )
  return (dx,)


_tiled_max.defvjp(_tiled_max_fwd, _tiled_max_bwd)


def max_pool(x: jax.Array, window: tuple[int, int], strides: tuple[int, int], padding: str = "VALID") -> jax.Array:
  """NHWC max pooling, as `nnx.max_pool(x, window, strides=strides, padding=padding)`."""
  (wh, ww), (sh, sw) = tuple(window), tuple(strides)
  if (wh, ww) != (sh, sw) or padding.upper() != "VALID":
    return nnx.max_pool(x, window_shape=(wh, ww), strides=(sh, sw), padding=padding.upper())
  n, height, width, channels = x.shape
  out_h, out_w = height // wh, width // ww
  if out_h == 0 or out_w == 0:  # an image smaller than the window: nothing to pool
    return jnp.zeros((n, out_h, out_w, channels), x.dtype)
  if (out_h * wh, out_w * ww) != (height, width):  # lax.slice, not indexing: a gather for a symbolic (exported) batch
    x = lax.slice(x, (0, 0, 0, 0), (n, out_h * wh, out_w * ww, channels))
  return _tiled_max(x, (wh, ww))
