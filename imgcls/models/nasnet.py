"""NASNet-A (Zoph et al., CVPR 2018), layer for layer as keras.applications.NASNetMobile and
NASNetLarge: normal and reduction cells of separable convolutions and poolings, each cell also
taking the cell before the last (`p`), adjusted to its input's size and channels."""

from __future__ import annotations

from typing import NamedTuple

from imgcls.models.keras_net import Graph

PREPROCESSING = "tf"  # nasnet.preprocess_input: x / 127.5 - 1.
_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/nasnet/"


class Variant(NamedTuple):
  """One of Keras's NASNet constructors: its architecture arguments and ImageNet files."""

  penultimate_filters: int
  normal_cells: int  # per stage
  stem_filters: int
  skip_reduction: bool  # the normal cell after a reduction takes the reduction's `p`, not its input
  size: int  # Keras's default input size
  keras_name: str
  file_stem: str  # of the cached ImageNet file
  url_stem: str  # of the published one
  hashes: tuple[str, str]  # md5 (top, no top)


VARIANTS = {
  "mobile": Variant(1056, 4, 32, False, 224, "NASNetMobile", "nasnet_mobile", "NASNet-mobile",
                    ("020fb642bf7360b370c678b08e0adf61", "1ed92395b5b598bdda52abe5c0dbfd63")),
  "large": Variant(4032, 6, 96, True, 331, "NASNetLarge", "nasnet_large", "NASNet-large",
                   ("11577c9a518f0070763c2b964a382f17", "d81d89dc07e6e56530c4e77faddd61b5")),
}  # fmt: skip
_BN = dict(momentum=0.9997, epsilon=1e-3)
_FILTER_MULTIPLIER = 2


def default_size(*, variant: str = "mobile") -> int:
  """Keras's input size of the variant (its only one with ImageNet weights and the top)."""
  return VARIANTS[variant].size


def _separable_block(g: Graph, x: str, filters: int, kernel: int, block: str, *, strides: int = 1) -> str:
  """Twice ReLU, separable convolution, BatchNorm; the first strided ('valid' after correct_pad)."""
  x = g.relu(None, x)
  if strides == 2:
    x = g.correct_pad(f"separable_conv_1_pad_{block}", x, kernel)
  x = g.separable(
    f"separable_conv_1_{block}", x, filters, kernel, strides=strides, padding="valid" if strides == 2 else "same", use_bias=False
  )
  x = g.relu(None, g.bn(f"separable_conv_1_bn_{block}", x, **_BN))
  x = g.separable(f"separable_conv_2_{block}", x, filters, kernel, padding="same", use_bias=False)
  return g.bn(f"separable_conv_2_bn_{block}", x, **_BN)


def _adjust(g: Graph, p: str | None, x: str, filters: int, block: str) -> str:
  """The previous cell's output `p` at the size and channels of this cell's input `x`."""
  if p is None:
    return x
  if g.shape(p)[1] != g.shape(x)[1]:  # Halved: two 1x1 convolutions of the even and the odd pixels.
    p = g.relu(f"adjust_relu_1_{block}", p)
    p1 = g.avg_pool(f"adjust_avg_pool_1_{block}", p, 1, strides=2)
    p1 = g.conv(f"adjust_conv_1_{block}", p1, filters // 2, 1, padding="same", use_bias=False)
    p2 = g.crop(None, g.pad(None, p, ((0, 1), (0, 1))), ((1, 0), (1, 0)))
    p2 = g.avg_pool(f"adjust_avg_pool_2_{block}", p2, 1, strides=2)
    p2 = g.conv(f"adjust_conv_2_{block}", p2, filters // 2, 1, padding="same", use_bias=False)
    return g.bn(f"adjust_bn_{block}", g.concat(None, [p1, p2]), **_BN)
  if g.shape(p)[-1] != filters:
    p = g.conv(f"adjust_conv_projection_{block}", g.relu(None, p), filters, 1, padding="same", use_bias=False)
    return g.bn(f"adjust_bn_{block}", p, **_BN)
  return p


def _normal_cell(g: Graph, x: str, p: str | None, filters: int, block: str) -> tuple[str, str]:
  p = _adjust(g, p, x, filters, block)
  h = g.conv(f"normal_conv_1_{block}", g.relu(None, x), filters, 1, padding="same", use_bias=False)
  h = g.bn(f"normal_bn_1_{block}", h, **_BN)
  x1 = g.add(
    f"normal_add_1_{block}",
    [_separable_block(g, h, filters, 5, f"normal_left1_{block}"), _separable_block(g, p, filters, 3, f"normal_right1_{block}")],
  )
  x2 = g.add(
    f"normal_add_2_{block}",
    [_separable_block(g, p, filters, 5, f"normal_left2_{block}"), _separable_block(g, p, filters, 3, f"normal_right2_{block}")],
  )
  x3 = g.add(f"normal_add_3_{block}", [g.avg_pool(f"normal_left3_{block}", h, 3, strides=1, padding="same"), p])
  x4_1 = g.avg_pool(f"normal_left4_{block}", p, 3, strides=1, padding="same")
  x4_2 = g.avg_pool(f"normal_right4_{block}", p, 3, strides=1, padding="same")
  x4 = g.add(f"normal_add_4_{block}", [x4_1, x4_2])
  x5 = g.add(f"normal_add_5_{block}", [_separable_block(g, h, filters, 3, f"normal_left5_{block}"), h])
  return g.concat(f"normal_concat_{block}", [p, x1, x2, x3, x4, x5]), x


def _reduction_cell(g: Graph, x: str, p: str | None, filters: int, block: str) -> tuple[str, str]:
  p = _adjust(g, p, x, filters, block)
  h = g.conv(f"reduction_conv_1_{block}", g.relu(None, x), filters, 1, padding="same", use_bias=False)
  h = g.bn(f"reduction_bn_1_{block}", h, **_BN)
  h3 = g.correct_pad(f"reduction_pad_1_{block}", h, 3)
  x1_1 = _separable_block(g, h, filters, 5, f"reduction_left1_{block}", strides=2)
  x1_2 = _separable_block(g, p, filters, 7, f"reduction_right1_{block}", strides=2)
  x1 = g.add(f"reduction_add_1_{block}", [x1_1, x1_2])
  x2_1 = g.max_pool(f"reduction_left2_{block}", h3, 3, strides=2)
  x2 = g.add(f"reduction_add_2_{block}", [x2_1, _separable_block(g, p, filters, 7, f"reduction_right2_{block}", strides=2)])
  x3_1 = g.avg_pool(f"reduction_left3_{block}", h3, 3, strides=2)
  x3 = g.add(f"reduction_add3_{block}", [x3_1, _separable_block(g, p, filters, 5, f"reduction_right3_{block}", strides=2)])
  x4 = g.add(None, [x2, g.avg_pool(f"reduction_left4_{block}", x1, 3, strides=1, padding="same")])
  x5_1 = _separable_block(g, x1, filters, 3, f"reduction_left4_{block}")  # Keras's name (not left5).
  x5 = g.add(f"reduction_add4_{block}", [x5_1, g.max_pool(f"reduction_right5_{block}", h3, 3, strides=2)])
  return g.concat(f"reduction_concat_{block}", [x2, x3, x4, x5]), x


def graph(
  input_shape: tuple[int, int, int] = (224, 224, 3),
  *,
  variant: str = "mobile",
  include_top: bool = True,
  pooling: str = "",
  classes: int = 1000,
) -> Graph:
  """The Keras NASNet; `predictions` returns logits (Keras applies a softmax)."""
  if variant not in VARIANTS:
    raise ValueError(f"Unknown NASNet variant {variant!r}; known: {', '.join(VARIANTS)}.")
  v = VARIANTS[variant]
  filters, m, blocks = v.penultimate_filters // 24, _FILTER_MULTIPLIER, v.normal_cells
  g = Graph(f"nasnet_{variant}", input_shape, min_size=32)
  x = g.conv("stem_conv1", g.output, v.stem_filters, 3, strides=2, use_bias=False)
  x = g.bn("stem_bn1", x, **_BN)
  x, p = _reduction_cell(g, x, None, filters // m**2, "stem_1")
  x, p = _reduction_cell(g, x, p, filters // m, "stem_2")
  for stage in range(3):
    if stage:
      x, reduced = _reduction_cell(g, x, p, filters * m**stage, f"reduce_{stage * blocks}")
      p = p if v.skip_reduction else reduced
    for i in range(blocks):
      x, p = _normal_cell(g, x, p, filters * m**stage, f"{stage * blocks + i + (stage > 0)}")
  x = g.relu(None, x)
  if include_top:
    g.dense("predictions", g.global_pool(None, x, "avg"), classes)
  elif pooling:
    g.global_pool(None, x, pooling)
  return g


def keras_application(*, variant: str = "mobile") -> tuple[str, dict]:
  """The `keras.applications` constructor of this network and its arguments (for the Keras export)."""
  return VARIANTS[variant].keras_name, {}


def imagenet_file(input_shape: tuple[int, ...], *, include_top: bool, variant: str = "mobile") -> tuple[str, str, str]:
  """(file name, URL, md5) of Keras's ImageNet weights: with the top, at the variant's size only."""
  v = VARIANTS[variant]
  if include_top and input_shape and tuple(input_shape[:2]) != (v.size, v.size):
    raise ValueError(f"Keras's {v.keras_name} ImageNet weights with the top take {v.size}x{v.size} images only.")
  suffix = "" if include_top else "_no_top"
  return f"{v.file_stem}{suffix}.h5", f"{_BASE}{v.url_stem}{suffix.replace('_', '-')}.h5", v.hashes[0 if include_top else 1]
