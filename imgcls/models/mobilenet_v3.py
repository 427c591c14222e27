"""MobileNetV3 (Howard et al., ICCV 2019), layer for layer as keras.applications.MobileNetV3Small
and MobileNetV3Large (any alpha; `minimalistic`: 3x3 kernels, ReLU, no squeeze-and-excitation).

The network maps 0-255 pixels to [-1, 1] itself (Keras's include_preprocessing Rescaling):
`preprocess_input` is the identity. Keras's classifier is a 1x1 convolution (`logits`) after
`conv_2` on the pooled features: imgcls's head is `logits` as a Dense layer (same weights).
"""

from __future__ import annotations

from flax import nnx

from imgcls.models.keras_net import Graph, KerasNet

PREPROCESSING = "pixels"
DEFAULT_SIZE = 224
CLASSIFIER = "logits"
SE_RATIO = 0.25
_BN = dict(epsilon=1e-3, momentum=0.999)
# Blocks: (expansion, filters, kernel ("k": 5, or 3 when minimalistic), stride, squeeze-excite, activation ("hs":
# hard swish, or ReLU when minimalistic)), as Keras's stack_fn of each size.
BLOCKS = {
  "small": (
    (1, 16, 3, 2, True, "relu"),
    (72 / 16, 24, 3, 2, False, "relu"),
    (88 / 24, 24, 3, 1, False, "relu"),
    (4, 40, "k", 2, True, "hs"),
    (6, 40, "k", 1, True, "hs"),
    (6, 40, "k", 1, True, "hs"),
    (3, 48, "k", 1, True, "hs"),
    (3, 48, "k", 1, True, "hs"),
    (6, 96, "k", 2, True, "hs"),
    (6, 96, "k", 1, True, "hs"),
    (6, 96, "k", 1, True, "hs"),
  ),
  "large": (
    (1, 16, 3, 1, False, "relu"),
    (4, 24, 3, 2, False, "relu"),
    (3, 24, 3, 1, False, "relu"),
    (3, 40, "k", 2, True, "relu"),
    (3, 40, "k", 1, True, "relu"),
    (3, 40, "k", 1, True, "relu"),
    (6, 80, 3, 2, False, "hs"),
    (2.5, 80, 3, 1, False, "hs"),
    (2.3, 80, 3, 1, False, "hs"),
    (2.3, 80, 3, 1, False, "hs"),
    (6, 112, 3, 1, True, "hs"),
    (6, 112, 3, 1, True, "hs"),
    (6, 160, "k", 2, True, "hs"),
    (6, 160, "k", 1, True, "hs"),
    (6, 160, "k", 1, True, "hs"),
  ),
}
LAST_POINT_CHANNELS = {"small": 1024, "large": 1280}
_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v3/"
# (top, no top) md5 of Keras's ImageNet files, as keras.applications.mobilenet_v3 checks them.
_HASHES = {
  "large_224_0.75_float": ("765b44a33ad4005b3ac83185abf1d0eb", "40af19a13ebea4e2ee0c676887f69a2e"),
  "large_224_1.0_float": ("59e551e166be033d707958cf9e29a6a7", "07fb09a5933dd0c8eaafa16978110389"),
  "large_minimalistic_224_1.0_float": ("675e7b876c45c57e9e63e6d90a36599c", "ec5221f64a2f6d1ef965a614bdae7973"),
  "small_224_0.75_float": ("cb65d4e5be93758266aa0a7f2c6708b7", "ebdb5cc8e0b497cd13a7c275d475c819"),
  "small_224_1.0_float": ("8768d4c2e7dee89b9d02b2d03d65d862", "d3e8ec802a04aa4fc771ee12a9a9b836"),
  "small_minimalistic_224_1.0_float": ("99cd97fb2fcdad2bf028eb838de69e37", "cde8136e733e811080d9fcd8a252f7e4"),
}


def _depth(v: float, divisor: int = 8) -> int:
  """Channels rounded to a multiple of 8, at most 10% down (Keras's _depth)."""
  new = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return new + divisor if new < 0.9 * v else new


def _activation(g: Graph, x: str, kind: str) -> str:
  return g.activation(None, x, "hard_swish") if kind == "hs" else g.relu(None, x, keras_layer="ReLU")


def _squeeze_excite(g: Graph, x: str, filters: int, prefix: str) -> str:
  se = g.global_pool(f"{prefix}squeeze_excite_avg_pool", x, "avg", keepdims=True)
  se = g.conv(f"{prefix}squeeze_excite_conv", se, _depth(filters * SE_RATIO), 1, padding="same")
  se = g.relu(f"{prefix}squeeze_excite_relu", se, keras_layer="ReLU")
  se = g.conv(f"{prefix}squeeze_excite_conv_1", se, filters, 1, padding="same")
  se = g.relu(None, se, max_value=6.0, offset=3.0, keras_layer="ReLU")  # hard_sigmoid: relu6(x + 3) / 6
  return g.multiply(f"{prefix}squeeze_excite_mul", [x, se], factor=1.0 / 6.0)


def _block(g: Graph, x: str, expansion, filters, kernel, stride, se, activation, block_id) -> str:
  shortcut, channels = x, g.shape(x)[-1]
  prefix = f"expanded_conv_{block_id}_" if block_id else "expanded_conv_"
  expanded = _depth(channels * expansion)
  if block_id:
    x = g.conv(f"{prefix}expand", x, expanded, 1, padding="same", use_bias=False)
    x = _activation(g, g.bn(f"{prefix}expand_bn", x, **_BN), activation)
  if stride == 2:
    x = g.correct_pad(f"{prefix}depthwise_pad", x, kernel)
  x = g.depthwise(f"{prefix}depthwise", x, kernel, strides=stride, padding="same" if stride == 1 else "valid", use_bias=False)
  x = _activation(g, g.bn(f"{prefix}depthwise_bn", x, **_BN), activation)
  if se:
    x = _squeeze_excite(g, x, expanded, prefix)
  x = g.conv(f"{prefix}project", x, filters, 1, padding="same", use_bias=False)
  x = g.bn(f"{prefix}project_bn", x, **_BN)
  if stride == 1 and channels == filters:
    x = g.add(f"{prefix}add", [shortcut, x])
  return x


def graph(
  input_shape: tuple[int, int, int] = (224, 224, 3),
  *,
  size: str = "small",
  alpha: float = 1.0,
  minimalistic: bool = False,
  dropout: float = 0.2,
  include_top: bool = True,
  pooling: str = "",
  classes: int = 1000,
) -> Graph:
  """The Keras MobileNetV3{Small,Large}; `predictions` returns logits (Keras applies a softmax)."""
  if size not in BLOCKS:
    raise ValueError(f"MobileNetV3 size must be small or large, not {size!r}.")
  kernel, activation, se_ratio = (3, "relu", False) if minimalistic else (5, "hs", True)
  g = Graph(f"MobileNetV3{size.title()}", input_shape, min_size=32)
  x = g.rescaling(None, g.output, 1.0 / 127.5, offset=-1.0)
  x = g.conv("conv", x, 16, 3, strides=2, padding="same", use_bias=False)
  x = _activation(g, g.bn("conv_bn", x, **_BN), activation)
  for block_id, (expansion, filters, k, stride, se, act) in enumerate(BLOCKS[size]):
    k = kernel if k == "k" else k
    act = activation if act == "hs" else "relu"
    x = _block(g, x, expansion, _depth(filters * alpha), k, stride, se and se_ratio, act, block_id)
  x = g.conv("conv_1", x, _depth(g.shape(x)[-1] * 6), 1, padding="same", use_bias=False)
  x = _activation(g, g.bn("conv_1_bn", x, **_BN), activation)
  if include_top:
    last_point = LAST_POINT_CHANNELS[size]
    last_point = _depth(last_point * alpha) if alpha > 1.0 else last_point
    x = g.global_pool(None, x, "avg", keepdims=True)
    x = _activation(g, g.conv("conv_2", x, last_point, 1, padding="same"), activation)
    if dropout > 0:
      x = g.dropout(None, x, dropout)
    x = g.conv(CLASSIFIER, x, classes, 1, padding="same")
    g.activation("predictions", g.flatten(None, x), "linear")
  elif pooling:
    g.global_pool(f"{pooling}_pool", x, pooling)
  return g


def keras_application(*, size: str = "small", alpha: float = 1.0, minimalistic: bool = False) -> tuple[str, dict]:
  """The `keras.applications` constructor of this network and its arguments (for the Keras export)."""
  return f"MobileNetV3{size.title()}", {"alpha": alpha, "minimalistic": minimalistic}


def imagenet_file(
  input_shape: tuple[int, ...], *, include_top: bool, size: str = "small", alpha: float = 1.0, minimalistic: bool = False
) -> tuple[str, str, str]:
  """(file name, URL, md5) of Keras's ImageNet weights (trained at 224; one file for every input size)."""
  del input_shape
  key = f"{size}{'_minimalistic' if minimalistic else ''}_224_{alpha}_float"
  if key not in _HASHES:
    raise ValueError(
      f"Keras has ImageNet weights for MobileNetV3 alpha 0.75 and 1.0 (minimalistic: 1.0 only), not alpha={alpha}"
      f"{' minimalistic' if minimalistic else ''}."
    )
  name = f"weights_mobilenet_v3_{key}{'' if include_top else '_no_top_v2'}.h5"
  return name, _BASE + name, _HASHES[key][0 if include_top else 1]


def mobilenet_v3(
  input_shape: tuple[int, int, int] = (224, 224, 3),
  *,
  size: str = "small",
  alpha: float = 1.0,
  minimalistic: bool = False,
  include_top: bool = True,
  pooling: str = "",
  classes: int = 1000,
  cut_at: str = "",
  rngs: nnx.Rngs,
) -> KerasNet:
  """keras.applications.MobileNetV3{size}(weights=None, ...) up to the layer `cut_at` ("": the last)."""
  g = graph(
    input_shape, size=size, alpha=alpha, minimalistic=minimalistic, include_top=include_top, pooling=pooling, classes=classes
  )
  return KerasNet(g, output=cut_at, preprocessing=PREPROCESSING, rngs=rngs)
