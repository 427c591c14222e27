"""VGG16 and VGG19 (Simonyan & Zisserman, ICLR 2015), layer for layer as keras.applications."""

from __future__ import annotations

from flax import nnx

from imgcls.models.keras_net import Graph, KerasNet

PREPROCESSING = "caffe"  # vgg16/vgg19.preprocess_input: RGB to BGR, minus the ImageNet means.
DEFAULT_SIZE = 224
# Convolutions per block (64, 128, 256, 512, 512 filters) of each depth.
CONVS = {16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
FILTERS = (64, 128, 256, 512, 512)
_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"
# (top, no top) file hashes, as keras.applications.vgg16/vgg19 check them.
_HASHES = {
  16: ("64373286793e3c8b2b4e3219cbf3544b", "6d6bbae143d832006294945121d1f1fc"),
  19: ("cbe5617147190e668d6c5d5026f83318", "253f8cb515780f3b799900260a226db6"),
}


def graph(
  input_shape: tuple[int, int, int] = (224, 224, 3),
  *,
  depth: int = 16,
  include_top: bool = True,
  pooling: str = "",
  classes: int = 1000,
) -> Graph:
  """The Keras VGG16/VGG19; `predictions` returns logits (Keras applies a softmax).

  With the top, the input size fixes the size of `fc1` (Keras's ImageNet weights need 224x224).
  """
  if depth not in CONVS:
    raise ValueError(f"VGG depth must be 16 or 19, not {depth}.")
  g = Graph(f"vgg{depth}", input_shape, min_size=32)
  x = g.output
  for block, (convs, filters) in enumerate(zip(CONVS[depth], FILTERS), start=1):
    for i in range(1, convs + 1):
      x = g.conv(f"block{block}_conv{i}", x, filters, 3, padding="same", activation="relu")
    x = g.max_pool(f"block{block}_pool", x, 2, strides=2)
  if include_top:
    x = g.flatten("flatten", x)
    x = g.dense("fc1", x, 4096, activation="relu")
    x = g.dense("fc2", x, 4096, activation="relu")
    g.dense("predictions", x, classes)
  elif pooling:
    g.global_pool(None, x, pooling)
  return g


def keras_application(*, depth: int = 16) -> tuple[str, dict]:
  """The `keras.applications` constructor of this network and its arguments (for the Keras export)."""
  return f"VGG{depth}", {}


def imagenet_file(input_shape: tuple[int, ...], *, include_top: bool, depth: int = 16) -> tuple[str, str, str]:
  """(file name, URL, md5) of Keras's ImageNet weights (one input size: 224 with the top)."""
  del input_shape
  name = f"vgg{depth}_weights_tf_dim_ordering_tf_kernels{'' if include_top else '_notop'}.h5"
  return name, f"{_BASE}vgg{depth}/{name}", _HASHES[depth][0 if include_top else 1]


def vgg(
  input_shape: tuple[int, int, int] = (224, 224, 3),
  *,
  depth: int = 16,
  include_top: bool = True,
  pooling: str = "",
  classes: int = 1000,
  cut_at: str = "",
  rngs: nnx.Rngs,
) -> KerasNet:
  """keras.applications.VGG16/VGG19(weights=None, ...) up to the layer `cut_at` ("": the last)."""
  g = graph(input_shape, depth=depth, include_top=include_top, pooling=pooling, classes=classes)
  return KerasNet(g, output=cut_at, preprocessing=PREPROCESSING, rngs=rngs)
