"""Xception (Chollet, CVPR 2017), layer for layer as keras.applications.Xception."""

from __future__ import annotations

from flax import nnx

from imgcls.models.keras_net import Graph, KerasNet

PREPROCESSING = "tf"  # xception.preprocess_input: x / 127.5 - 1.
DEFAULT_SIZE = 299
_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/xception/"
_HASHES = ("0a58e3b7378bc2990ea3b43d5981f1f6", "b0042744bf5b25fce3cb969f33bebb97")  # (top, no top) md5


def _sepconv_bn(g: Graph, x: str, filters: int, name: str) -> str:
  x = g.separable(name, x, filters, 3, padding="same", use_bias=False)
  return g.bn(f"{name}_bn", x)


def _entry_block(g: Graph, x: str, filters: tuple[int, int], block: int, *, first_act: bool = True) -> str:
  """Two separable convolutions and a strided max pooling, with a strided 1x1 projection shortcut."""
  residual = g.bn(None, g.conv(None, x, filters[1], 1, strides=2, padding="same", use_bias=False))
  if first_act:
    x = g.relu(f"block{block}_sepconv1_act", x)
  x = _sepconv_bn(g, x, filters[0], f"block{block}_sepconv1")
  x = g.relu(f"block{block}_sepconv2_act", x)
  x = _sepconv_bn(g, x, filters[1], f"block{block}_sepconv2")
  x = g.max_pool(f"block{block}_pool", x, 3, strides=2, padding="same")
  return g.add(None, [x, residual])


def graph(
  input_shape: tuple[int, int, int] = (299, 299, 3),
  *,
  include_top: bool = True,
  pooling: str = "",
  classes: int = 1000,
) -> Graph:
  """The Keras Xception; `predictions` returns logits (Keras applies a softmax)."""
  g = Graph("xception", input_shape, min_size=71)
  x = g.conv("block1_conv1", g.output, 32, 3, strides=2, use_bias=False)
  x = g.relu("block1_conv1_act", g.bn("block1_conv1_bn", x))
  x = g.conv("block1_conv2", x, 64, 3, use_bias=False)
  x = g.relu("block1_conv2_act", g.bn("block1_conv2_bn", x))
  # Keras names block 2's second activation sepconv2_act and has none before its first convolution.
  residual = g.bn(None, g.conv(None, x, 128, 1, strides=2, padding="same", use_bias=False))
  x = _sepconv_bn(g, x, 128, "block2_sepconv1")
  x = g.relu("block2_sepconv2_act", x)
  x = _sepconv_bn(g, x, 128, "block2_sepconv2")
  x = g.max_pool("block2_pool", x, 3, strides=2, padding="same")
  x = g.add(None, [x, residual])
  x = _entry_block(g, x, (256, 256), 3)
  x = _entry_block(g, x, (728, 728), 4)
  for i in range(5, 13):  # Middle flow: eight residual blocks of three separable convolutions.
    residual = x
    for j in (1, 2, 3):
      x = g.relu(f"block{i}_sepconv{j}_act", x)
      x = _sepconv_bn(g, x, 728, f"block{i}_sepconv{j}")
    x = g.add(None, [x, residual])
  x = _entry_block(g, x, (728, 1024), 13)
  x = g.relu("block14_sepconv1_act", _sepconv_bn(g, x, 1536, "block14_sepconv1"))
  x = g.relu("block14_sepconv2_act", _sepconv_bn(g, x, 2048, "block14_sepconv2"))
  if include_top:
    x = g.global_pool("avg_pool", x, "avg")
    g.dense("predictions", x, classes)
  elif pooling:
    g.global_pool(None, x, pooling)
  return g


def keras_application() -> tuple[str, dict]:
  """The `keras.applications` constructor of this network and its arguments (for the Keras export)."""
  return "Xception", {}


def imagenet_file(input_shape: tuple[int, ...], *, include_top: bool) -> tuple[str, str, str]:
  """(file name, URL, md5) of Keras's ImageNet weights (one file for every input size)."""
  del input_shape
  name = f"xception_weights_tf_dim_ordering_tf_kernels{'' if include_top else '_notop'}.h5"
  return name, _BASE + name, _HASHES[0 if include_top else 1]


def xception(
  input_shape: tuple[int, int, int] = (299, 299, 3),
  *,
  include_top: bool = True,
  pooling: str = "",
  classes: int = 1000,
  cut_at: str = "",
  rngs: nnx.Rngs,
) -> KerasNet:
  """keras.applications.Xception(weights=None, ...) up to the layer `cut_at` ("": the last)."""
  return KerasNet(
    graph(input_shape, include_top=include_top, pooling=pooling, classes=classes),
    output=cut_at,
    preprocessing=PREPROCESSING,
    rngs=rngs,
  )
