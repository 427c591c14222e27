"""ResNet (He et al., CVPR 2016) and ResNetV2 (He et al., ECCV 2016), layer for layer as
keras.applications.ResNet50/101/152 and ResNet50V2/101V2/152V2."""

from __future__ import annotations

from flax import nnx

from imgcls.models.keras_net import Graph, KerasNet

DEFAULT_SIZE = 224
DEPTHS = (50, 101, 152)
# Residual blocks in the stages conv2..conv5 of each depth.
STAGES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
# (top, no top) md5 of Keras's ImageNet files, as keras.applications.resnet checks them.
_HASHES = {
  "resnet50": ("2cb95161c43110f7111970584f804107", "4d473c1dd8becc155b73f8504c6f6626"),
  "resnet101": ("f1aeb4b969a6efcfb50fad2f0c20cfc5", "88cf7a10940856eca736dc7b7e228a21"),
  "resnet152": ("100835be76be38e30d865e96f2aaae62", "ee4c566cf9a93f14d82f913c2dc6dd0c"),
  "resnet50v2": ("3ef43a0b657b3be2300d5770ece849e0", "fac2f116257151a9d068a22e544a4917"),
  "resnet101v2": ("6343647c601c52e1368623803854d971", "c0ed64b8031c3730f411d2eb4eea35b5"),
  "resnet152v2": ("a49b44d1979771252814e80f8ec446f9", "ed17cf2e0169df9d443503ef94b23b33"),
}
_BN = dict(epsilon=1.001e-5)  # Keras's momentum (0.99) stays.


def preprocessing(*, v2: bool = False, depth: int = 50) -> str:
  """resnet.preprocess_input is "caffe" (BGR minus the means), resnet_v2's "tf" (x / 127.5 - 1)."""
  del depth
  return "tf" if v2 else "caffe"


def _block_v1(g: Graph, x: str, filters: int, *, stride: int = 1, conv_shortcut: bool = True, name: str) -> str:
  if conv_shortcut:
    shortcut = g.conv(f"{name}_0_conv", x, 4 * filters, 1, strides=stride)
    shortcut = g.bn(f"{name}_0_bn", shortcut, **_BN)
  else:
    shortcut = x
  x = g.conv(f"{name}_1_conv", x, filters, 1, strides=stride)
  x = g.relu(f"{name}_1_relu", g.bn(f"{name}_1_bn", x, **_BN))
  x = g.conv(f"{name}_2_conv", x, filters, 3, padding="same")
  x = g.relu(f"{name}_2_relu", g.bn(f"{name}_2_bn", x, **_BN))
  x = g.bn(f"{name}_3_bn", g.conv(f"{name}_3_conv", x, 4 * filters, 1), **_BN)
  return g.relu(f"{name}_out", g.add(f"{name}_add", [shortcut, x]))


def _block_v2(g: Graph, x: str, filters: int, *, stride: int = 1, conv_shortcut: bool = False, name: str) -> str:
  preact = g.relu(f"{name}_preact_relu", g.bn(f"{name}_preact_bn", x, **_BN))
  if conv_shortcut:
    shortcut = g.conv(f"{name}_0_conv", preact, 4 * filters, 1, strides=stride)
  else:
    shortcut = g.max_pool(None, x, 1, strides=stride) if stride > 1 else x
  x = g.conv(f"{name}_1_conv", preact, filters, 1, use_bias=False)
  x = g.relu(f"{name}_1_relu", g.bn(f"{name}_1_bn", x, **_BN))
  x = g.pad(f"{name}_2_pad", x, 1)
  x = g.conv(f"{name}_2_conv", x, filters, 3, strides=stride, use_bias=False)
  x = g.relu(f"{name}_2_relu", g.bn(f"{name}_2_bn", x, **_BN))
  x = g.conv(f"{name}_3_conv", x, 4 * filters, 1)
  return g.add(f"{name}_out", [shortcut, x])


def graph(
  input_shape: tuple[int, int, int] = (224, 224, 3),
  *,
  depth: int = 50,
  v2: bool = False,
  include_top: bool = True,
  pooling: str = "",
  classes: int = 1000,
) -> Graph:
  """The Keras ResNet{depth} (V2: ResNet{depth}V2); `predictions` returns logits (Keras applies a softmax)."""
  if depth not in STAGES:
    raise ValueError(f"ResNet depth must be one of {DEPTHS}, not {depth}.")
  g = Graph(f"resnet{depth}{'v2' if v2 else ''}", input_shape, min_size=32)
  x = g.pad("conv1_pad", g.output, 3)
  x = g.conv("conv1_conv", x, 64, 7, strides=2)
  if not v2:
    x = g.relu("conv1_relu", g.bn("conv1_bn", x, **_BN))
  x = g.pad("pool1_pad", x, 1)
  x = g.max_pool("pool1_pool", x, 3, strides=2)
  for stage, (blocks, filters) in enumerate(zip(STAGES[depth], (64, 128, 256, 512)), start=2):
    name = f"conv{stage}"
    if v2:  # The stride is on the last block of a stage (none on conv5), the projection on the first.
      stride = 1 if stage == 5 else 2
      for i in range(1, blocks + 1):
        x = _block_v2(g, x, filters, stride=stride if i == blocks else 1, conv_shortcut=i == 1, name=f"{name}_block{i}")
    else:
      x = _block_v1(g, x, filters, stride=1 if stage == 2 else 2, name=f"{name}_block1")
      for i in range(2, blocks + 1):
        x = _block_v1(g, x, filters, conv_shortcut=False, name=f"{name}_block{i}")
  if v2:
    x = g.relu("post_relu", g.bn("post_bn", x, **_BN))
  if include_top:
    x = g.global_pool("avg_pool", x, "avg")
    g.dense("predictions", x, classes)
  elif pooling:
    g.global_pool(f"{pooling}_pool", x, pooling)
  return g


def keras_application(*, depth: int = 50, v2: bool = False) -> tuple[str, dict]:
  """The `keras.applications` constructor of this network and its arguments (for the Keras export)."""
  return f"ResNet{depth}{'V2' if v2 else ''}", {}


def imagenet_file(input_shape: tuple[int, ...], *, include_top: bool, depth: int = 50, v2: bool = False) -> tuple[str, str, str]:
  """(file name, URL, md5) of Keras's ImageNet weights (one file for every input size)."""
  del input_shape
  key = f"resnet{depth}{'v2' if v2 else ''}"
  name = f"{key}_weights_tf_dim_ordering_tf_kernels{'' if include_top else '_notop'}.h5"
  return name, _BASE + name, _HASHES[key][0 if include_top else 1]


def resnet(
  input_shape: tuple[int, int, int] = (224, 224, 3),
  *,
  depth: int = 50,
  v2: bool = False,
  include_top: bool = True,
  pooling: str = "",
  classes: int = 1000,
  cut_at: str = "",
  rngs: nnx.Rngs,
) -> KerasNet:
  """keras.applications.ResNet{depth}[V2](weights=None, ...) up to the layer `cut_at` ("": the last)."""
  g = graph(input_shape, depth=depth, v2=v2, include_top=include_top, pooling=pooling, classes=classes)
  return KerasNet(g, output=cut_at, preprocessing=preprocessing(v2=v2), rngs=rngs)
