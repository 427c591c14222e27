"""Inception V3 (Szegedy et al., CVPR 2016), layer for layer as keras.applications.InceptionV3.

Keras names only the blocks (`mixed0` ... `mixed10`, `mixed9_0`, `mixed9_1`) and the top
(`avg_pool`, `predictions`); every other layer gets Keras's counter name, here as in a fresh
Keras 3 session: `conv2d`, `conv2d_1`, ..., `batch_normalization_*`, `activation_*`,
`max_pooling2d*`, `average_pooling2d*`, `concatenate*`. Weight files name them as their Keras
session did (Keras 2's files start at `conv2d_1`); the weight loader matches them by creation order.
"""

from __future__ import annotations

from flax import nnx

from imgcls.models.keras_net import Graph, KerasNet

PREPROCESSING = "tf"  # inception_v3.preprocess_input: x / 127.5 - 1.
DEFAULT_SIZE = 299
_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/"
_HASHES = ("9a0d58056eeedaa3f26cb7ebd46da564", "bcbd6486424b2319ff4ef7d526e38f63")  # (top, no top) md5.


def conv2d_bn(g: Graph, x: str, filters: int, rows: int, cols: int, *, padding="same", strides=1) -> str:
  """Conv2D (no bias), BatchNormalization (no scale), ReLU: Keras's `conv2d_bn`."""
  x = g.conv(None, x, filters, (rows, cols), strides=strides, padding=padding, use_bias=False)
  x = g.bn(None, x, scale=False)
  return g.relu(None, x)


def _avg_branch(g: Graph, x: str, filters: int) -> str:
  return conv2d_bn(g, g.avg_pool(None, x, 3, strides=1, padding="same"), filters, 1, 1)


def graph(
  input_shape: tuple[int, int, int] = (299, 299, 3),
  *,
  include_top: bool = True,
  pooling: str = "",
  classes: int = 1000,
) -> Graph:
  """The Keras InceptionV3; `predictions` returns logits (Keras applies a softmax). Long on purpose:
  Keras's layers one after another, in its order, so each name can be checked against its source."""
  g = Graph("inception_v3", input_shape, min_size=75)
  x = conv2d_bn(g, g.output, 32, 3, 3, strides=2, padding="valid")
  x = conv2d_bn(g, x, 32, 3, 3, padding="valid")
  x = conv2d_bn(g, x, 64, 3, 3)
  x = g.max_pool(None, x, 3, strides=2)
  x = conv2d_bn(g, x, 80, 1, 1, padding="valid")
  x = conv2d_bn(g, x, 192, 3, 3, padding="valid")
  x = g.max_pool(None, x, 3, strides=2)

  # mixed 0, 1, 2: 35 x 35 x 256, 288, 288.
  for i, pool_filters in enumerate((32, 64, 64)):
    branch1x1 = conv2d_bn(g, x, 64, 1, 1)
    branch5x5 = conv2d_bn(g, x, 48, 1, 1)
    branch5x5 = conv2d_bn(g, branch5x5, 64, 5, 5)
    branch3x3dbl = conv2d_bn(g, x, 64, 1, 1)
    branch3x3dbl = conv2d_bn(g, branch3x3dbl, 96, 3, 3)
    branch3x3dbl = conv2d_bn(g, branch3x3dbl, 96, 3, 3)
    branch_pool = _avg_branch(g, x, pool_filters)
    x = g.concat(f"mixed{i}", [branch1x1, branch5x5, branch3x3dbl, branch_pool])

  # mixed 3: 17 x 17 x 768.
  branch3x3 = conv2d_bn(g, x, 384, 3, 3, strides=2, padding="valid")
  branch3x3dbl = conv2d_bn(g, x, 64, 1, 1)
  branch3x3dbl = conv2d_bn(g, branch3x3dbl, 96, 3, 3)
  branch3x3dbl = conv2d_bn(g, branch3x3dbl, 96, 3, 3, strides=2, padding="valid")
  branch_pool = g.max_pool(None, x, 3, strides=2)
  x = g.concat("mixed3", [branch3x3, branch3x3dbl, branch_pool])

  # mixed 4, 5, 6, 7: 17 x 17 x 768.
  for i, width in zip(range(4, 8), (128, 160, 160, 192)):
    branch1x1 = conv2d_bn(g, x, 192, 1, 1)
    branch7x7 = conv2d_bn(g, x, width, 1, 1)
    branch7x7 = conv2d_bn(g, branch7x7, width, 1, 7)
    branch7x7 = conv2d_bn(g, branch7x7, 192, 7, 1)
    branch7x7dbl = conv2d_bn(g, x, width, 1, 1)
    branch7x7dbl = conv2d_bn(g, branch7x7dbl, width, 7, 1)
    branch7x7dbl = conv2d_bn(g, branch7x7dbl, width, 1, 7)
    branch7x7dbl = conv2d_bn(g, branch7x7dbl, width, 7, 1)
    branch7x7dbl = conv2d_bn(g, branch7x7dbl, 192, 1, 7)
    branch_pool = _avg_branch(g, x, 192)
    x = g.concat(f"mixed{i}", [branch1x1, branch7x7, branch7x7dbl, branch_pool])

  # mixed 8: 8 x 8 x 1280.
  branch3x3 = conv2d_bn(g, x, 192, 1, 1)
  branch3x3 = conv2d_bn(g, branch3x3, 320, 3, 3, strides=2, padding="valid")
  branch7x7x3 = conv2d_bn(g, x, 192, 1, 1)
  branch7x7x3 = conv2d_bn(g, branch7x7x3, 192, 1, 7)
  branch7x7x3 = conv2d_bn(g, branch7x7x3, 192, 7, 1)
  branch7x7x3 = conv2d_bn(g, branch7x7x3, 192, 3, 3, strides=2, padding="valid")
  branch_pool = g.max_pool(None, x, 3, strides=2)
  x = g.concat("mixed8", [branch3x3, branch7x7x3, branch_pool])

  # mixed 9, 10: 8 x 8 x 2048.
  for i in range(2):
    branch1x1 = conv2d_bn(g, x, 320, 1, 1)
    branch3x3 = conv2d_bn(g, x, 384, 1, 1)
    branch3x3_1 = conv2d_bn(g, branch3x3, 384, 1, 3)
    branch3x3_2 = conv2d_bn(g, branch3x3, 384, 3, 1)
    branch3x3 = g.concat(f"mixed9_{i}", [branch3x3_1, branch3x3_2])
    branch3x3dbl = conv2d_bn(g, x, 448, 1, 1)
    branch3x3dbl = conv2d_bn(g, branch3x3dbl, 384, 3, 3)
    branch3x3dbl_1 = conv2d_bn(g, branch3x3dbl, 384, 1, 3)
    branch3x3dbl_2 = conv2d_bn(g, branch3x3dbl, 384, 3, 1)
    branch3x3dbl = g.concat(None, [branch3x3dbl_1, branch3x3dbl_2])
    branch_pool = _avg_branch(g, x, 192)
    x = g.concat(f"mixed{9 + i}", [branch1x1, branch3x3, branch3x3dbl, branch_pool])

  if include_top:
    x = g.global_pool("avg_pool", x, "avg")
    g.dense("predictions", x, classes)
  elif pooling:
    g.global_pool(None, x, pooling)
  return g


def keras_application() -> tuple[str, dict]:
  """The `keras.applications` constructor of this network and its arguments (for the Keras export)."""
  return "InceptionV3", {}


def imagenet_file(input_shape: tuple[int, ...], *, include_top: bool) -> tuple[str, str, str]:
  """(file name, URL, md5) of Keras's ImageNet weights."""
  del input_shape
  name = f"inception_v3_weights_tf_dim_ordering_tf_kernels{'' if include_top else '_notop'}.h5"
  return name, _BASE + name, _HASHES[0 if include_top else 1]


def inception_v3(
  input_shape: tuple[int, int, int] = (299, 299, 3),
  *,
  include_top: bool = True,
  pooling: str = "",
  classes: int = 1000,
  cut_at: str = "",
  bn_momentum: float = 0.0,
  bn_epsilon: float = 0.0,
  rngs: nnx.Rngs,
) -> KerasNet:
  """keras.applications.InceptionV3(weights=None, ...) up to the layer `cut_at` ("": the last)."""
  g = graph(input_shape, include_top=include_top, pooling=pooling, classes=classes)
  return KerasNet(g, output=cut_at, preprocessing=PREPROCESSING, bn_momentum=bn_momentum, bn_epsilon=bn_epsilon, rngs=rngs)
