"""MobileNet (Howard et al., 2017), layer for layer as keras.applications.MobileNet (any alpha).

Keras's classifier is a 1x1 convolution (`conv_preds`) on the pooled features, then a Reshape
and the softmax `predictions`: imgcls's head is `conv_preds` as a Dense layer (same weights).
"""

from __future__ import annotations

from flax import nnx

from imgcls.models.keras_net import Graph, KerasNet

PREPROCESSING = "tf"  # mobilenet.preprocess_input: x / 127.5 - 1.
DEFAULT_SIZE = 224
CLASSIFIER = "conv_preds"  # The layer holding Keras's classifier weights.
IMAGENET_ALPHAS = (0.25, 0.5, 0.75, 1.0)
IMAGENET_SIZES = (128, 160, 192, 224)
# Pointwise filters and stride of the 13 depthwise separable blocks.
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5, (1024, 2), (1024, 1))
_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/"


def graph(
  input_shape: tuple[int, int, int] = (224, 224, 3),
  *,
  alpha: float = 1.0,
  dropout: float = 1e-3,
  include_top: bool = True,
  pooling: str = "",
  classes: int = 1000,
) -> Graph:
  """The Keras MobileNet of width `alpha`; `predictions` returns logits (Keras applies a softmax)."""
  g = Graph("mobilenet", input_shape, min_size=32)
  x = g.conv("conv1", g.output, int(32 * alpha), 3, strides=2, padding="same", use_bias=False)
  x = g.relu("conv1_relu", g.bn("conv1_bn", x), max_value=6.0)
  for block_id, (filters, stride) in enumerate(BLOCKS, start=1):
    if stride == 2:
      x = g.pad(f"conv_pad_{block_id}", x, ((0, 1), (0, 1)))
    x = g.depthwise(f"conv_dw_{block_id}", x, 3, strides=stride, padding="same" if stride == 1 else "valid", use_bias=False)
    x = g.relu(f"conv_dw_{block_id}_relu", g.bn(f"conv_dw_{block_id}_bn", x), max_value=6.0)
    x = g.conv(f"conv_pw_{block_id}", x, int(filters * alpha), 1, padding="same", use_bias=False)
    x = g.relu(f"conv_pw_{block_id}_relu", g.bn(f"conv_pw_{block_id}_bn", x), max_value=6.0)
  if include_top:
    x = g.global_pool(None, x, "avg", keepdims=True)
    x = g.dropout("dropout", x, dropout)
    x = g.conv(CLASSIFIER, x, classes, 1, padding="same")
    x = g.reshape("reshape_2", x, (classes,))
    g.activation("predictions", x, "linear")
  elif pooling:
    g.global_pool(None, x, pooling)
  return g


def keras_application(*, alpha: float = 1.0) -> tuple[str, dict]:
  """The `keras.applications` constructor of this network and its arguments (for the Keras export)."""
  return "MobileNet", {"alpha": alpha}


def imagenet_file(input_shape: tuple[int, ...], *, include_top: bool, alpha: float = 1.0) -> tuple[str, str, str]:
  """(file name, URL, md5) of Keras's ImageNet weights: one per alpha and square size (Keras checks no hash).

  Other sizes take the 224 file, as Keras does (the weights do not depend on the size).
  """
  if alpha not in IMAGENET_ALPHAS:
    raise ValueError(f"Keras has ImageNet weights for MobileNet alpha {IMAGENET_ALPHAS}, not {alpha}.")
  rows = input_shape[0] if len(input_shape) >= 2 and input_shape[0] == input_shape[1] in IMAGENET_SIZES else 224
  alpha_text = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}[alpha]
  name = f"mobilenet_{alpha_text}_{rows}_tf{'' if include_top else '_no_top'}.h5"
  return name, _BASE + name, ""


def mobilenet(
  input_shape: tuple[int, int, int] = (224, 224, 3),
  *,
  alpha: float = 1.0,
  include_top: bool = True,
  pooling: str = "",
  classes: int = 1000,
  cut_at: str = "",
  rngs: nnx.Rngs,
) -> KerasNet:
  """keras.applications.MobileNet(weights=None, alpha=alpha, ...) up to the layer `cut_at` ("": the last)."""
  g = graph(input_shape, alpha=alpha, include_top=include_top, pooling=pooling, classes=classes)
  return KerasNet(g, output=cut_at, preprocessing=PREPROCESSING, rngs=rngs)
