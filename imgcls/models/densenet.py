"""DenseNet (Huang et al., CVPR 2017), layer for layer as keras.applications.DenseNet121/169/201."""

from __future__ import annotations

from flax import nnx

from imgcls.models.keras_net import Graph, KerasNet

PREPROCESSING = "torch"  # densenet.preprocess_input: x / 255, minus the ImageNet means, over their deviations.
DEFAULT_SIZE = 224
# Convolution blocks in the dense blocks conv2..conv5 of each depth.
BLOCKS = {121: (6, 12, 24, 16), 169: (6, 12, 32, 32), 201: (6, 12, 48, 32)}
GROWTH_RATE = 32
_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/densenet/"
# (top, no top) md5 of Keras's ImageNet files, as keras.applications.densenet checks them.
_HASHES = {
  121: ("9d60b8095a5708f2dcce2bca79d332c7", "30ee3e1110167f948a6b9946edeeb738"),
  169: ("d699b8f76981ab1b30698df4c175e90b", "b8c4d4c20dd625c148057b9ff1c1176b"),
  201: ("1ceb130c1ea1b78c3bf6114dbdfd8807", "c13680b51ded0fb44dff2d8f86ac8bb1"),
}
_BN = dict(epsilon=1.001e-5)


def _conv_block(g: Graph, x: str, name: str) -> str:
  x1 = g.relu(f"{name}_0_relu", g.bn(f"{name}_0_bn", x, **_BN))
  x1 = g.conv(f"{name}_1_conv", x1, 4 * GROWTH_RATE, 1, use_bias=False)
  x1 = g.relu(f"{name}_1_relu", g.bn(f"{name}_1_bn", x1, **_BN))
  x1 = g.conv(f"{name}_2_conv", x1, GROWTH_RATE, 3, padding="same", use_bias=False)
  return g.concat(f"{name}_concat", [x, x1])


def _transition_block(g: Graph, x: str, name: str) -> str:
  x = g.relu(f"{name}_relu", g.bn(f"{name}_bn", x, **_BN))
  x = g.conv(f"{name}_conv", x, int(g.shape(x)[-1] * 0.5), 1, use_bias=False)
  return g.avg_pool(f"{name}_pool", x, 2, strides=2)


def graph(
  input_shape: tuple[int, int, int] = (224, 224, 3),
  *,
  depth: int = 121,
  include_top: bool = True,
  pooling: str = "",
  classes: int = 1000,
) -> Graph:
  """The Keras DenseNet{depth}; `predictions` returns logits (Keras applies a softmax)."""
  if depth not in BLOCKS:
    raise ValueError(f"DenseNet depth must be one of {tuple(BLOCKS)}, not {depth}.")
  g = Graph(f"densenet{depth}", input_shape, min_size=32)
  x = g.pad(None, g.output, 3)
  x = g.conv("conv1_conv", x, 64, 7, strides=2, use_bias=False)
  x = g.relu("conv1_relu", g.bn("conv1_bn", x, **_BN))
  x = g.pad(None, x, 1)
  x = g.max_pool("pool1", x, 3, strides=2)
  for stage, blocks in enumerate(BLOCKS[depth], start=2):
    for i in range(1, blocks + 1):
      x = _conv_block(g, x, f"conv{stage}_block{i}")
    if stage < 5:
      x = _transition_block(g, x, f"pool{stage}")
  x = g.relu("relu", g.bn("bn", x, **_BN))
  if include_top:
    x = g.global_pool("avg_pool", x, "avg")
    g.dense("predictions", x, classes)
  elif pooling:
    g.global_pool(f"{pooling}_pool", x, pooling)
  return g


def keras_application(*, depth: int = 121) -> tuple[str, dict]:
  """The `keras.applications` constructor of this network and its arguments (for the Keras export)."""
  return f"DenseNet{depth}", {}


def imagenet_file(input_shape: tuple[int, ...], *, include_top: bool, depth: int = 121) -> tuple[str, str, str]:
  """(file name, URL, md5) of Keras's ImageNet weights (one file for every input size)."""
  del input_shape
  name = f"densenet{depth}_weights_tf_dim_ordering_tf_kernels{'' if include_top else '_notop'}.h5"
  return name, _BASE + name, _HASHES[depth][0 if include_top else 1]


def densenet(
  input_shape: tuple[int, int, int] = (224, 224, 3),
  *,
  depth: int = 121,
  include_top: bool = True,
  pooling: str = "",
  classes: int = 1000,
  cut_at: str = "",
  rngs: nnx.Rngs,
) -> KerasNet:
  """keras.applications.DenseNet{depth}(weights=None, ...) up to the layer `cut_at` ("": the last)."""
  g = graph(input_shape, depth=depth, include_top=include_top, pooling=pooling, classes=classes)
  return KerasNet(g, output=cut_at, preprocessing=PREPROCESSING, rngs=rngs)
