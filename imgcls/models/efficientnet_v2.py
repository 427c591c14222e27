"""EfficientNetV2 (Tan & Le, ICML 2021), layer for layer as keras.applications.EfficientNetV2B0..B3/S/M/L.

The network normalises 0-255 pixels itself (Keras's include_preprocessing: B0-B3 to ImageNet's
mean and deviation, S/M/L to [-1, 1]): `preprocess_input` is the identity. Fused-MBConv blocks
in the first stages, MBConv with squeeze-and-excitation after; stochastic depth in training.
"""

from __future__ import annotations

import math

from flax import nnx

from imgcls.models.keras_net import TORCH_MEAN, TORCH_STD, Graph, KerasNet

PREPROCESSING = "pixels"
VARIANTS = ("b0", "b1", "b2", "b3", "s", "m", "l")
# variant -> (width coefficient, depth coefficient, default input size, blocks).
_B_BLOCKS = "b"
COEFFICIENTS = {
  "b0": (1.0, 1.0, 224, _B_BLOCKS),
  "b1": (1.0, 1.1, 240, _B_BLOCKS),
  "b2": (1.1, 1.2, 260, _B_BLOCKS),
  "b3": (1.2, 1.4, 300, _B_BLOCKS),
  "s": (1.0, 1.0, 384, "s"),
  "m": (1.0, 1.0, 480, "m"),
  "l": (1.0, 1.0, 480, "l"),
}
# Stages: (kernel, repeats, filters in, filters out, expand ratio, squeeze ratio, stride, fused), as Keras's.
BLOCKS = {
  "b": (
    (3, 1, 32, 16, 1, 0.0, 1, True),
    (3, 2, 16, 32, 4, 0.0, 2, True),
    (3, 2, 32, 48, 4, 0.0, 2, True),
    (3, 3, 48, 96, 4, 0.25, 2, False),
    (3, 5, 96, 112, 6, 0.25, 1, False),
    (3, 8, 112, 192, 6, 0.25, 2, False),
  ),
  "s": (
    (3, 2, 24, 24, 1, 0.0, 1, True),
    (3, 4, 24, 48, 4, 0.0, 2, True),
    (3, 4, 48, 64, 4, 0.0, 2, True),
    (3, 6, 64, 128, 4, 0.25, 2, False),
    (3, 9, 128, 160, 6, 0.25, 1, False),
    (3, 15, 160, 256, 6, 0.25, 2, False),
  ),
  "m": (
    (3, 3, 24, 24, 1, 0.0, 1, True),
    (3, 5, 24, 48, 4, 0.0, 2, True),
    (3, 5, 48, 80, 4, 0.0, 2, True),
    (3, 7, 80, 160, 4, 0.25, 2, False),
    (3, 14, 160, 176, 6, 0.25, 1, False),
    (3, 18, 176, 304, 6, 0.25, 2, False),
    (3, 5, 304, 512, 6, 0.25, 1, False),
  ),
  "l": (
    (3, 4, 32, 32, 1, 0.0, 1, True),
    (3, 7, 32, 64, 4, 0.0, 2, True),
    (3, 7, 64, 96, 4, 0.0, 2, True),
    (3, 10, 96, 192, 4, 0.25, 2, False),
    (3, 19, 192, 224, 6, 0.25, 1, False),
    (3, 25, 224, 384, 6, 0.25, 2, False),
    (3, 7, 384, 640, 6, 0.25, 1, False),
  ),
}
DROPOUT_RATE = 0.2
DROP_CONNECT_RATE = 0.2
_BN = dict(momentum=0.9)  # Keras's epsilon (1e-3) stays.
_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/efficientnet_v2/"
# (top, no top) md5 of Keras's ImageNet files, as keras.applications.efficientnet_v2 checks them.
_HASHES = {
  "b0": ("21ecbf6da12460d5c40bb2f29ceb2188", "893217f2bb855e2983157299931e43ff"),
  "b1": ("069f0534ff22adf035c89e2d9547a9dc", "0e80663031ca32d657f9caa404b6ec37"),
  "b2": ("424e49f28180edbde1e94797771950a7", "1dfe2e7a5d45b6632553a8961ea609eb"),
  "b3": ("1f1fc43bd98a6e4fd8fdfd551e02c7a0", "f6abf7b5849ac99a89b50dd3fd532856"),
  "s": ("e1d88a8495beba45748fedd0cecbe016", "af0682fb74e8c54910f2d4393339c070"),
  "m": ("a3bf6aa3276309f4fc6a34aa114c95cd", "1b8dc055df72dde80d614482840fe342"),
  "l": ("27e6d408b53c7ebc868fefa357689935", "b0b66b5c863aef5b46e8608fe1711615"),
}


def _checked(variant: str) -> str:
  if variant not in COEFFICIENTS:
    raise ValueError(f"EfficientNetV2 variant must be one of {', '.join(VARIANTS)}, not {variant!r}.")
  return variant


def default_size(*, variant: str = "b0") -> int:
  """Keras's default input size of the variant."""
  return COEFFICIENTS[_checked(variant)][2]


def round_filters(filters: float, width: float, divisor: int = 8) -> int:
  """The channel count scaled by the width coefficient, to the nearest multiple of 8 (V2 never rounds up)."""
  return int(max(divisor, int(filters * width + divisor / 2) // divisor * divisor))


def _squeeze_excite(g: Graph, x: str, filters_in: int, filters: int, ratio: float, name: str) -> str:
  se = g.global_pool(f"{name}se_squeeze", x, "avg")
  se = g.reshape(f"{name}se_reshape", se, (1, 1, filters))
  se = g.conv(f"{name}se_reduce", se, max(1, int(filters_in * ratio)), 1, padding="same", activation="swish")
  se = g.conv(f"{name}se_expand", se, filters, 1, padding="same", activation="sigmoid")
  return g.multiply(f"{name}se_excite", [x, se])


def _block(g: Graph, x: str, *, kernel, filters_in, filters_out, expand, se_ratio, stride, fused, drop, name) -> str:
  inputs, filters = x, filters_in * expand
  if expand != 1:  # Fused: the expansion is the kxk (strided) convolution; MBConv: a 1x1 one.
    size, strides = (kernel, stride) if fused else (1, 1)
    x = g.conv(f"{name}expand_conv", x, filters, size, strides=strides, padding="same", use_bias=False)
    x = g.activation(f"{name}expand_activation", g.bn(f"{name}expand_bn", x, **_BN), "swish")
  if not fused:
    x = g.depthwise(f"{name}dwconv2", x, kernel, strides=stride, padding="same", use_bias=False)
    x = g.activation(f"{name}activation", g.bn(f"{name}bn", x, **_BN), "swish")
  if 0 < se_ratio <= 1:
    x = _squeeze_excite(g, x, filters_in, filters, se_ratio, name)
  size, strides = (kernel, stride) if fused and expand == 1 else (1, 1)
  x = g.conv(f"{name}project_conv", x, filters_out, size, strides=strides, padding="same", use_bias=False)
  x = g.bn(f"{name}project_bn", x, **_BN)
  if fused and expand == 1:
    x = g.activation(f"{name}project_activation", x, "swish")
  if stride == 1 and filters_in == filters_out:
    if drop > 0:
      x = g.dropout(f"{name}drop", x, drop, per_sample=True)  # Stochastic depth: whole images.
    x = g.add(f"{name}add", [x, inputs])
  return x


def graph(
  input_shape: tuple[int, int, int] = (224, 224, 3),
  *,
  variant: str = "b0",
  include_top: bool = True,
  pooling: str = "",
  classes: int = 1000,
) -> Graph:
  """The Keras EfficientNetV2{variant}; `predictions` returns logits (Keras applies a softmax)."""
  width, depth, _, blocks = COEFFICIENTS[_checked(variant)]
  stages = BLOCKS[blocks]
  g = Graph(f"efficientnetv2-{variant}", input_shape, min_size=32)
  if variant.startswith("b"):
    x = g.rescaling(None, g.output, 1.0 / 255.0)
    x = g.normalization(None, x, mean=TORCH_MEAN, variance=[s**2 for s in TORCH_STD])
  else:
    x = g.rescaling(None, g.output, 1.0 / 128.0, offset=-1.0)
  x = g.conv("stem_conv", x, round_filters(stages[0][2], width), 3, strides=2, padding="same", use_bias=False)
  x = g.activation("stem_activation", g.bn("stem_bn", x, **_BN), "swish")
  total, b = float(sum(stage[1] for stage in stages)), 0  # Keras counts the unscaled repeats here.
  for i, (kernel, repeats, filters_in, filters_out, expand, se_ratio, stride, fused) in enumerate(stages):
    filters_in, filters_out = round_filters(filters_in, width), round_filters(filters_out, width)
    for j in range(int(math.ceil(depth * repeats))):
      x = _block(
        g,
        x,
        kernel=kernel,
        filters_in=filters_in if j == 0 else filters_out,
        filters_out=filters_out,
        expand=expand,
        se_ratio=se_ratio,
        stride=stride if j == 0 else 1,
        fused=fused,
        drop=DROP_CONNECT_RATE * b / total,
        name=f"block{i + 1}{chr(j + 97)}_",
      )
      b += 1
  x = g.conv("top_conv", x, round_filters(1280, width), 1, padding="same", use_bias=False)
  x = g.activation("top_activation", g.bn("top_bn", x, **_BN), "swish")
  if include_top:
    x = g.global_pool("avg_pool", x, "avg")
    x = g.dropout("top_dropout", x, DROPOUT_RATE)
    g.dense("predictions", x, classes)
  elif pooling:
    g.global_pool(f"{pooling}_pool", x, pooling)
  return g


def keras_application(*, variant: str = "b0") -> tuple[str, dict]:
  """The `keras.applications` constructor of this network and its arguments (for the Keras export)."""
  return f"EfficientNetV2{_checked(variant).upper()}", {}


def imagenet_file(input_shape: tuple[int, ...], *, include_top: bool, variant: str = "b0") -> tuple[str, str, str]:
  """(file name, URL, md5) of Keras's ImageNet weights (one file for every input size)."""
  del input_shape
  name = f"efficientnetv2-{_checked(variant)}{'' if include_top else '_notop'}.h5"
  return name, _BASE + name, _HASHES[variant][0 if include_top else 1]


def efficientnet_v2(
  input_shape: tuple[int, int, int] = (224, 224, 3),
  *,
  variant: str = "b0",
  include_top: bool = True,
  pooling: str = "",
  classes: int = 1000,
  cut_at: str = "",
  rngs: nnx.Rngs,
) -> KerasNet:
  """keras.applications.EfficientNetV2{variant}(weights=None, ...) up to the layer `cut_at` ("": the last)."""
  g = graph(input_shape, variant=variant, include_top=include_top, pooling=pooling, classes=classes)
  return KerasNet(g, output=cut_at, preprocessing=PREPROCESSING, rngs=rngs)
