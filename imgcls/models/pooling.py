"""Max pooling whose gradient is elementwise work instead of XLA's select-and-scatter.

For windows that tile the image (window == strides, 'valid' padding: every 2x2/2 pooling of VGG
and the seed CNNs), the pool is a reshape and a max over the window axes; its gradient is
`dy * (x == max)`, split evenly between equal maxima. XLA's `reduce_window` and
`select_and_scatter` were half of the insects CNN's training step on CPU (bench/compare_keras.py).
Other windows (overlapping, 'same') use `nnx.max_pool`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def max_pool(x: jax.Array, window: tuple[int, int], strides: tuple[int, int], padding: str = "VALID") -> jax.Array:
  """NHWC max pooling, as `nnx.max_pool(x, window, strides=strides, padding=padding)`."""
  (wh, ww), (sh, sw) = tuple(window), tuple(strides)
  if (wh, ww) != (sh, sw) or padding.upper() != "VALID":
    return nnx.max_pool(x, (wh, ww), strides=(sh, sw), padding=padding.upper())
  n, height, width, channels = x.shape
  out_h, out_w = height // wh, width // ww
  x = x[:, : out_h * wh, : out_w * ww]
  return jnp.max(x.reshape(n, out_h, wh, out_w, ww, channels), axis=(2, 4))
