"""MobileNetV2 (Sandler et al., CVPR 2018), layer for layer as keras.applications.MobileNetV2."""

from __future__ import annotations

from flax import nnx

from imgcls.models.keras_net import Graph, KerasNet

PREPROCESSING = "tf"  # mobilenet_v2.preprocess_input: x / 127.5 - 1.
DEFAULT_SIZE = 224
ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)  # Widths with ImageNet weights.
BASE_WEIGHT_PATH = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
# Inverted residual blocks 0-16: (filters, stride, expansion).
BLOCKS = (
  (16, 1, 1),
  (24, 2, 6),
  (24, 1, 6),
  (32, 2, 6),
  (32, 1, 6),
  (32, 1, 6),
  (64, 2, 6),
  (64, 1, 6),
  (64, 1, 6),
  (64, 1, 6),
  (96, 1, 6),
  (96, 1, 6),
  (96, 1, 6),
  (160, 2, 6),
  (160, 1, 6),
  (160, 1, 6),
  (320, 1, 6),
)
_BN = dict(epsilon=1e-3, momentum=0.999)


def make_divisible(v: float, divisor: int = 8) -> int:
  """Keras's `_make_divisible`: round to a multiple of `divisor`, never more than 10% down."""
  new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
  if new_v < 0.9 * v:
    new_v += divisor
  return new_v


def graph(
  input_shape: tuple[int, int, int] = (224, 224, 3),
  *,
  alpha: float = 1.0,
  include_top: bool = True,
  pooling: str = "",
  classes: int = 1000,
) -> Graph:
  """The Keras MobileNetV2; `predictions` returns logits (Keras applies a softmax)."""
  g = Graph(f"mobilenetv2_{alpha:0.2f}_{input_shape[0]}", input_shape, min_size=32)
  x = g.conv("Conv1", g.output, make_divisible(32 * alpha), 3, strides=2, padding="same", use_bias=False)
  x = g.bn("bn_Conv1", x, **_BN)
  x = g.relu("Conv1_relu", x, max_value=6.0)
  for block_id, (filters, stride, expansion) in enumerate(BLOCKS):
    x = _inverted_res_block(g, x, filters=filters, alpha=alpha, stride=stride, expansion=expansion, block_id=block_id)
  # No alpha on the last convolution, except to widen it.
  last_filters = make_divisible(1280 * alpha) if alpha > 1.0 else 1280
  x = g.conv("Conv_1", x, last_filters, 1, use_bias=False)
  x = g.bn("Conv_1_bn", x, **_BN)
  x = g.relu("out_relu", x, max_value=6.0)
  if include_top:
    x = g.global_pool(None, x, "avg")
    g.dense("predictions", x, classes)
  elif pooling:
    g.global_pool(None, x, pooling)
  return g


def _inverted_res_block(g: Graph, inputs: str, *, filters, alpha, stride, expansion, block_id) -> str:
  in_channels = g.shape(inputs)[-1]
  pointwise_filters = make_divisible(int(filters * alpha))
  x = inputs
  prefix = f"block_{block_id}_"
  if block_id:
    x = g.conv(f"{prefix}expand", x, expansion * in_channels, 1, padding="same", use_bias=False)
    x = g.bn(f"{prefix}expand_BN", x, **_BN)
    x = g.relu(f"{prefix}expand_relu", x, max_value=6.0)
  else:
    prefix = "expanded_conv_"
  if stride == 2:
    x = g.correct_pad(f"{prefix}pad", x, 3)
  x = g.depthwise(f"{prefix}depthwise", x, 3, strides=stride, padding="same" if stride == 1 else "valid", use_bias=False)
  x = g.bn(f"{prefix}depthwise_BN", x, **_BN)
  x = g.relu(f"{prefix}depthwise_relu", x, max_value=6.0)
  x = g.conv(f"{prefix}project", x, pointwise_filters, 1, padding="same", use_bias=False)
  x = g.bn(f"{prefix}project_BN", x, **_BN)
  if in_channels == pointwise_filters and stride == 1:
    return g.add(f"{prefix}add", [inputs, x])
  return x


def keras_application(*, alpha: float = 1.0) -> tuple[str, dict]:
  """The `keras.applications` constructor of this network and its arguments (for the Keras export)."""
  return "MobileNetV2", {"alpha": float(alpha)}


def imagenet_file(input_shape: tuple[int, ...], *, include_top: bool, alpha: float = 1.0) -> tuple[str, str, str]:
  """(file name, URL, hash) of Keras's ImageNet weights; Keras publishes no MobileNetV2 hashes.

  As in Keras, square inputs of 96, 128, 160, 192 or 224 get the weights trained at that size,
  any other size the 224 ones.
  """
  if alpha not in ALPHAS:
    raise ValueError(f"Keras has ImageNet MobileNetV2 weights for alpha in {ALPHAS} only, not {alpha}.")
  rows, cols = input_shape[:2]
  if rows != cols or rows not in (96, 128, 160, 192, 224):
    rows = 224
  name = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}{'' if include_top else '_no_top'}.h5"
  return name, BASE_WEIGHT_PATH + name, ""


def mobilenet_v2(
  input_shape: tuple[int, int, int] = (224, 224, 3),
  *,
  alpha: float = 1.0,
  include_top: bool = True,
  pooling: str = "",
  classes: int = 1000,
  cut_at: str = "",
  bn_momentum: float = 0.0,
  bn_epsilon: float = 0.0,
  rngs: nnx.Rngs,
) -> KerasNet:
  """keras.applications.MobileNetV2(weights=None, ...) up to the layer `cut_at` ("": the last)."""
  g = graph(input_shape, alpha=alpha, include_top=include_top, pooling=pooling, classes=classes)
  return KerasNet(g, output=cut_at, preprocessing=PREPROCESSING, bn_momentum=bn_momentum, bn_epsilon=bn_epsilon, rngs=rngs)
