"""Inception-ResNet-v2 (Szegedy et al., AAAI 2017), layer for layer as keras.applications.InceptionResNetV2.

Keras names the blocks (`mixed_5b`, `block35_1` ... `block8_10`, `conv_7b`) and their last
layers; the stem's and branches' layers get Keras's counter names (`conv2d_*`,
`batch_normalization_*`, `activation_*`, `custom_scale_layer_*`), here as in a fresh Keras 3 session.
"""

from __future__ import annotations

from flax import nnx

from imgcls.models.keras_net import Graph, KerasNet

PREPROCESSING = "tf"  # inception_resnet_v2.preprocess_input: x / 127.5 - 1.
DEFAULT_SIZE = 299
_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/inception_resnet_v2/"
_HASHES = ("e693bd0210a403b3192acc6073ad2e96", "d19885ff4a710c122648d3b5c3b684e4")  # (top, no top) md5.


def conv2d_bn(g: Graph, x: str, filters: int, kernel, *, strides=1, padding="same", activation=True, use_bias=False, name=None):
  """Keras's `conv2d_bn`: Conv2D, then (without a bias) BatchNormalization (no scale), then ReLU."""
  x = g.conv(name, x, filters, kernel, strides=strides, padding=padding, use_bias=use_bias)
  if not use_bias:
    x = g.bn(f"{name}_bn" if name else None, x, scale=False)
  if activation:
    x = g.relu(f"{name}_ac" if name else None, x)
  return x


def _block(g: Graph, x: str, scale: float, block_type: str, block_idx: int, *, activation: bool = True) -> str:
  if block_type == "block35":
    branches = [
      conv2d_bn(g, x, 32, 1),
      conv2d_bn(g, conv2d_bn(g, x, 32, 1), 32, 3),
      conv2d_bn(g, conv2d_bn(g, conv2d_bn(g, x, 32, 1), 48, 3), 64, 3),
    ]
  elif block_type == "block17":
    branches = [conv2d_bn(g, x, 192, 1), conv2d_bn(g, conv2d_bn(g, conv2d_bn(g, x, 128, 1), 160, (1, 7)), 192, (7, 1))]
  else:
    branches = [conv2d_bn(g, x, 192, 1), conv2d_bn(g, conv2d_bn(g, conv2d_bn(g, x, 192, 1), 224, (1, 3)), 256, (3, 1))]
  name = f"{block_type}_{block_idx}"
  mixed = g.concat(f"{name}_mixed", branches)
  up = conv2d_bn(g, mixed, g.shape(x)[-1], 1, activation=False, use_bias=True, name=f"{name}_conv")
  x = g.scale_add(None, [x, up], scale)
  return g.relu(f"{name}_ac", x) if activation else x


def graph(
  input_shape: tuple[int, int, int] = (299, 299, 3),
  *,
  include_top: bool = True,
  pooling: str = "",
  classes: int = 1000,
) -> Graph:
  """The Keras InceptionResNetV2; `predictions` returns logits (Keras applies a softmax)."""
  g = Graph("inception_resnet_v2", input_shape, min_size=75)
  x = conv2d_bn(g, g.output, 32, 3, strides=2, padding="valid")
  x = conv2d_bn(g, x, 32, 3, padding="valid")
  x = conv2d_bn(g, x, 64, 3)
  x = g.max_pool(None, x, 3, strides=2)
  x = conv2d_bn(g, x, 80, 1, padding="valid")
  x = conv2d_bn(g, x, 192, 3, padding="valid")
  x = g.max_pool(None, x, 3, strides=2)
  branch_0 = conv2d_bn(g, x, 96, 1)
  branch_1 = conv2d_bn(g, conv2d_bn(g, x, 48, 1), 64, 5)
  branch_2 = conv2d_bn(g, conv2d_bn(g, conv2d_bn(g, x, 64, 1), 96, 3), 96, 3)
  branch_pool = conv2d_bn(g, g.avg_pool(None, x, 3, strides=1, padding="same"), 64, 1)
  x = g.concat("mixed_5b", [branch_0, branch_1, branch_2, branch_pool])
  for i in range(1, 11):
    x = _block(g, x, 0.17, "block35", i)
  branch_0 = conv2d_bn(g, x, 384, 3, strides=2, padding="valid")
  branch_1 = conv2d_bn(g, conv2d_bn(g, conv2d_bn(g, x, 256, 1), 256, 3), 384, 3, strides=2, padding="valid")
  branch_pool = g.max_pool(None, x, 3, strides=2)
  x = g.concat("mixed_6a", [branch_0, branch_1, branch_pool])
  for i in range(1, 21):
    x = _block(g, x, 0.1, "block17", i)
  branch_0 = conv2d_bn(g, conv2d_bn(g, x, 256, 1), 384, 3, strides=2, padding="valid")
  branch_1 = conv2d_bn(g, conv2d_bn(g, x, 256, 1), 288, 3, strides=2, padding="valid")
  branch_2 = conv2d_bn(g, conv2d_bn(g, conv2d_bn(g, x, 256, 1), 288, 3), 320, 3, strides=2, padding="valid")
  branch_pool = g.max_pool(None, x, 3, strides=2)
  x = g.concat("mixed_7a", [branch_0, branch_1, branch_2, branch_pool])
  for i in range(1, 10):
    x = _block(g, x, 0.2, "block8", i)
  x = _block(g, x, 1.0, "block8", 10, activation=False)
  x = conv2d_bn(g, x, 1536, 1, name="conv_7b")
  if include_top:
    x = g.global_pool("avg_pool", x, "avg")
    g.dense("predictions", x, classes)
  elif pooling:
    g.global_pool(None, x, pooling)
  return g


def keras_application() -> tuple[str, dict]:
  """The `keras.applications` constructor of this network and its arguments (for the Keras export)."""
  return "InceptionResNetV2", {}


def imagenet_file(input_shape: tuple[int, ...], *, include_top: bool) -> tuple[str, str, str]:
  """(file name, URL, md5) of Keras's ImageNet weights (one file for every input size)."""
  del input_shape
  name = f"inception_resnet_v2_weights_tf_dim_ordering_tf_kernels{'' if include_top else '_notop'}.h5"
  return name, _BASE + name, _HASHES[0 if include_top else 1]


def inception_resnet_v2(
  input_shape: tuple[int, int, int] = (299, 299, 3),
  *,
  include_top: bool = True,
  pooling: str = "",
  classes: int = 1000,
  cut_at: str = "",
  rngs: nnx.Rngs,
) -> KerasNet:
  """keras.applications.InceptionResNetV2(weights=None, ...) up to the layer `cut_at` ("": the last)."""
  g = graph(input_shape, include_top=include_top, pooling=pooling, classes=classes)
  return KerasNet(g, output=cut_at, preprocessing=PREPROCESSING, rngs=rngs)
