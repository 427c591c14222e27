"""EfficientNet (Tan & Le, ICML 2019), layer for layer as keras.applications.EfficientNetB0..B7.

The network normalises 0-255 pixels itself (Rescaling, then Normalization with ImageNet's
statistics as weights): `preprocess_input` is the identity. With Keras's ImageNet file, Keras adds
one more Rescaling (1 / sqrt(std), a fix for the published weights): `imagenet_rescaling`.
"""

from __future__ import annotations

import math

from flax import nnx

from imgcls.models.keras_net import Graph, KerasNet

PREPROCESSING = "pixels"
VARIANTS = ("b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7")
# variant -> (width coefficient, depth coefficient, default input size, top dropout rate).
COEFFICIENTS = {
  "b0": (1.0, 1.0, 224, 0.2),
  "b1": (1.0, 1.1, 240, 0.2),
  "b2": (1.1, 1.2, 260, 0.3),
  "b3": (1.2, 1.4, 300, 0.3),
  "b4": (1.4, 1.8, 380, 0.4),
  "b5": (1.6, 2.2, 456, 0.4),
  "b6": (1.8, 2.6, 528, 0.5),
  "b7": (2.0, 3.1, 600, 0.5),
}
# Stages: (kernel, repeats, filters in, filters out, expand ratio, stride); squeeze ratio 0.25 in all.
BLOCKS = (
  (3, 1, 32, 16, 1, 1),
  (3, 2, 16, 24, 6, 2),
  (5, 2, 24, 40, 6, 2),
  (3, 3, 40, 80, 6, 2),
  (5, 3, 80, 112, 6, 1),
  (5, 4, 112, 192, 6, 2),
  (3, 1, 192, 320, 6, 1),
)
SE_RATIO = 0.25
DROP_CONNECT_RATE = 0.2
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)
_BASE = "https://storage.googleapis.com/keras-applications/"
# (top, no top) md5 of Keras's ImageNet files, as keras.applications.efficientnet checks them.
_HASHES = {
  "b0": ("902e53a9f72be733fc0bcb005b3ebbac", "50bc09e76180e00e4465e1a485ddc09d"),
  "b1": ("1d254153d4ab51201f1646940f018540", "74c4e6b3e1f6a1eea24c589628592432"),
  "b2": ("b15cce36ff4dcbd00b6dd88e7857a6ad", "111f8e2ac8aa800a7a99e3239f7bfb39"),
  "b3": ("ffd1fdc53d0ce67064dc6a9c7960ede0", "af6d107764bb5b1abb91932881670226"),
  "b4": ("18c95ad55216b8f92d7e70b3a046e2fc", "ebc24e6d6c33eaebbd558eafbeedf1ba"),
  "b5": ("ace28f2a6363774853a83a0b21b9421a", "38879255a25d3c92d5e44e04ae6cec6f"),
  "b6": ("165f6e37dce68623721b423839de8be5", "9ecce42647a20130c1f39a5d4cb75743"),
  "b7": ("8c03f828fec3ef71311cd463b6759d99", "cbcfe4450ddf6f3ad90b1b398090fe4a"),
}


def default_size(*, variant: str = "b0", imagenet_rescaling: bool = False) -> int:
  """Keras's default input size of the variant."""
  del imagenet_rescaling
  return COEFFICIENTS[_checked(variant)][2]


def _checked(variant: str) -> str:
  if variant not in COEFFICIENTS:
    raise ValueError(f"EfficientNet variant must be one of {', '.join(VARIANTS)}, not {variant!r}.")
  return variant


def round_filters(filters: float, width: float, divisor: int = 8) -> int:
  """The channel count scaled by the width coefficient, to a multiple of 8 (at most 10% down)."""
  filters *= width
  new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
  if new < 0.9 * filters:
    new += divisor
  return int(new)


def _block(g: Graph, x: str, *, kernel: int, filters_in: int, filters_out: int, expand: int, stride: int, drop: float, name: str):
  inputs = x
  filters = filters_in * expand
  if expand != 1:
    x = g.conv(f"{name}expand_conv", x, filters, 1, padding="same", use_bias=False)
    x = g.activation(f"{name}expand_activation", g.bn(f"{name}expand_bn", x), "swish")
  if stride == 2:
    x = g.correct_pad(f"{name}dwconv_pad", x, kernel)
  x = g.depthwise(f"{name}dwconv", x, kernel, strides=stride, padding="valid" if stride == 2 else "same", use_bias=False)
  x = g.activation(f"{name}activation", g.bn(f"{name}bn", x), "swish")
  # Squeeze and excitation.
  se = g.global_pool(f"{name}se_squeeze", x, "avg")
  se = g.reshape(f"{name}se_reshape", se, (1, 1, filters))
  se = g.conv(f"{name}se_reduce", se, max(1, int(filters_in * SE_RATIO)), 1, padding="same", activation="swish")
  se = g.conv(f"{name}se_expand", se, filters, 1, padding="same", activation="sigmoid")
  x = g.multiply(f"{name}se_excite", [x, se])
  x = g.conv(f"{name}project_conv", x, filters_out, 1, padding="same", use_bias=False)
  x = g.bn(f"{name}project_bn", x)
  if stride == 1 and filters_in == filters_out:
    if drop > 0:
      x = g.dropout(f"{name}drop", x, drop, per_sample=True)  # Stochastic depth: whole images.
    x = g.add(f"{name}add", [x, inputs])
  return x


def graph(
  input_shape: tuple[int, int, int] = (224, 224, 3),
  *,
  variant: str = "b0",
  imagenet_rescaling: bool = False,
  include_top: bool = True,
  pooling: str = "",
  classes: int = 1000,
) -> Graph:
  """The Keras EfficientNet{variant}; `predictions` returns logits (Keras applies a softmax)."""
  width, depth, _, dropout = COEFFICIENTS[_checked(variant)]
  g = Graph(f"efficientnet{variant}", input_shape, min_size=32)
  x = g.rescaling(None, g.output, 1.0 / 255.0)
  x = g.normalization(None, x)
  if imagenet_rescaling:
    x = g.rescaling(None, x, [1.0 / math.sqrt(std) for std in IMAGENET_STDDEV_RGB])
  x = g.correct_pad("stem_conv_pad", x, 3)
  x = g.conv("stem_conv", x, round_filters(32, width), 3, strides=2, use_bias=False)
  x = g.activation("stem_activation", g.bn("stem_bn", x), "swish")
  repeats = [int(math.ceil(depth * stage[1])) for stage in BLOCKS]
  total, b = float(sum(repeats)), 0
  for i, ((kernel, _, filters_in, filters_out, expand, stride), n) in enumerate(zip(BLOCKS, repeats)):
    filters_in, filters_out = round_filters(filters_in, width), round_filters(filters_out, width)
    for j in range(n):
      x = _block(
        g,
        x,
        kernel=kernel,
        filters_in=filters_in if j == 0 else filters_out,
        filters_out=filters_out,
        expand=expand,
        stride=stride if j == 0 else 1,
        drop=DROP_CONNECT_RATE * b / total,
        name=f"block{i + 1}{chr(j + 97)}_",
      )
      b += 1
  x = g.conv("top_conv", x, round_filters(1280, width), 1, padding="same", use_bias=False)
  x = g.activation("top_activation", g.bn("top_bn", x), "swish")
  if include_top:
    x = g.global_pool("avg_pool", x, "avg")
    if dropout > 0:
      x = g.dropout("top_dropout", x, dropout)
    g.dense("predictions", x, classes)
  elif pooling:
    g.global_pool(f"{pooling}_pool", x, pooling)
  return g


def keras_application(*, variant: str = "b0", imagenet_rescaling: bool = False) -> tuple[str, dict]:
  """The `keras.applications` constructor of this network and its arguments (for the Keras export)."""
  del imagenet_rescaling
  return f"EfficientNet{_checked(variant).upper()}", {}


def imagenet_file(
  input_shape: tuple[int, ...], *, include_top: bool, variant: str = "b0", imagenet_rescaling: bool = False
) -> tuple[str, str, str]:
  """(file name, URL, md5) of Keras's ImageNet weights (one file for every input size)."""
  del input_shape, imagenet_rescaling
  name = f"efficientnet{_checked(variant)}{'' if include_top else '_notop'}.h5"
  return name, _BASE + name, _HASHES[variant][0 if include_top else 1]


def efficientnet(
  input_shape: tuple[int, int, int] = (224, 224, 3),
  *,
  variant: str = "b0",
  include_top: bool = True,
  pooling: str = "",
  classes: int = 1000,
  cut_at: str = "",
  rngs: nnx.Rngs,
) -> KerasNet:
  """keras.applications.EfficientNet{variant}(weights=None, ...) up to the layer `cut_at` ("": the last)."""
  g = graph(input_shape, variant=variant, include_top=include_top, pooling=pooling, classes=classes)
  return KerasNet(g, output=cut_at, preprocessing=PREPROCESSING, rngs=rngs)
