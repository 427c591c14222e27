"""ConvNeXt (Liu et al., CVPR 2022), layer for layer as keras.applications.ConvNeXtTiny/Small/Base/Large/XLarge.

The network normalises 0-255 pixels itself (Keras's include_preprocessing: a Normalization with
ImageNet's statistics): `preprocess_input` is the identity. The stem and each downsampling step
are nested Keras models (Sequential): `cut_at` takes their names (e.g. convnext_tiny_stem) as
Keras does, and their inner layers' names too. As Keras's defaults: layer scale (1e-6), no
stochastic depth.
"""

from __future__ import annotations

from flax import nnx

from imgcls.models.keras_net import TORCH_MEAN, TORCH_STD, Graph, KerasNet

PREPROCESSING = "pixels"
DEFAULT_SIZE = 224
VARIANTS = ("tiny", "small", "base", "large", "xlarge")
# variant -> (blocks per stage, channels per stage)
CONFIGS = {
  "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
  "small": ((3, 3, 27, 3), (96, 192, 384, 768)),
  "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
  "large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
  "xlarge": ((3, 3, 27, 3), (256, 512, 1024, 2048)),
}
_EPS = 1e-6
_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/convnext/"
# (top, no top) sha256 of Keras's ImageNet files, as keras.applications.convnext checks them.
_HASHES = {
  "tiny": (
    "8ae6e78ce2933352b1ef4008e6dd2f17bc40771563877d156bc6426c7cf503ff",
    "d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1",
  ),
  "small": (
    "ce1277d8f1ee5a0ef0e171469089c18f5233860ceaf9b168049cb9263fd7483c",
    "6fc8009faa2f00c1c1dfce59feea9b0745eb260a7dd11bee65c8e20843da6eab",
  ),
  "base": (
    "52cbb006d3dadd03f6e095a8ca1aca47aecdd75acb4bc74bce1f5c695d0086e6",
    "40a20c5548a5e9202f69735ecc06c990e6b7c9d2de39f0361e27baeb24cb7c45",
  ),
  "large": (
    "070c5ed9ed289581e477741d3b34beffa920db8cf590899d6d2c67fba2a198a6",
    "96f02b6f0753d4f543261bc9d09bed650f24dd6bc02ddde3066135b63d23a1cd",
  ),
  "xlarge": (
    "c1f5ccab661354fc3a79a10fa99af82f0fbf10ec65cb894a3ae0815f17a889ee",
    "de3f8a54174130e0cecdc71583354753d557fcf1f4487331558e2a16ba0cfe05",
  ),
}


def _checked(variant: str) -> str:
  if variant not in CONFIGS:
    raise ValueError(f"ConvNeXt variant must be one of {', '.join(VARIANTS)}, not {variant!r}.")
  return variant


def classifier(*, variant: str = "tiny") -> str:
  """The layer holding Keras's classifier weights."""
  return f"convnext_{_checked(variant)}_head_dense"


def _block(g: Graph, x: str, channels: int, name: str) -> str:
  inputs = x
  x = g.conv(f"{name}_depthwise_conv", x, channels, 7, padding="same", groups=channels)
  x = g.layer_norm(f"{name}_layernorm", x, epsilon=_EPS)
  x = g.dense(f"{name}_pointwise_conv_1", x, 4 * channels)
  x = g.activation(f"{name}_gelu", x, "gelu")
  x = g.dense(f"{name}_pointwise_conv_2", x, channels)
  x = g.layer_scale(f"{name}_layer_scale", x)
  x = g.activation(f"{name}_identity", x, "linear")  # Keras's StochasticDepth when drop_path_rate > 0.
  return g.residual_add(f"{name}_residual", [inputs, x])


def graph(
  input_shape: tuple[int, int, int] = (224, 224, 3),
  *,
  variant: str = "tiny",
  include_top: bool = True,
  pooling: str = "",
  classes: int = 1000,
) -> Graph:
  """The Keras ConvNeXt{variant}; the head's Dense returns logits (Keras applies a softmax)."""
  depths, channels = CONFIGS[_checked(variant)]
  name = f"convnext_{variant}"
  g = Graph(name, input_shape, min_size=32)
  mean = [m * 255 for m in TORCH_MEAN]
  variance = [(s * 255) ** 2 for s in TORCH_STD]
  x = g.normalization(f"{name}_prestem_normalization", g.output, mean=mean, variance=variance)
  with g.nested(f"{name}_stem"):
    x = g.conv(f"{name}_stem_conv", x, channels[0], 4, strides=4)
    x = g.layer_norm(f"{name}_stem_layernorm", x, epsilon=_EPS)
  for stage in range(4):
    if stage:
      with g.nested(f"{name}_downsampling_block_{stage - 1}"):
        x = g.layer_norm(f"{name}_downsampling_layernorm_{stage - 1}", x, epsilon=_EPS)
        x = g.conv(f"{name}_downsampling_conv_{stage - 1}", x, channels[stage], 2, strides=2)
    for block in range(depths[stage]):
      x = _block(g, x, channels[stage], f"{name}_stage_{stage}_block_{block}")
  if include_top:
    x = g.global_pool(f"{name}_head_gap", x, "avg")
    x = g.layer_norm(f"{name}_head_layernorm", x, epsilon=_EPS)
    g.dense(classifier(variant=variant), x, classes)
  elif pooling:
    g.global_pool(None, x, pooling)
  return g


def keras_application(*, variant: str = "tiny") -> tuple[str, dict]:
  """The `keras.applications` constructor of this network and its arguments (for the Keras export)."""
  return {"xlarge": "ConvNeXtXLarge"}.get(variant, f"ConvNeXt{_checked(variant).title()}"), {}


def imagenet_file(input_shape: tuple[int, ...], *, include_top: bool, variant: str = "tiny") -> tuple[str, str, str]:
  """(file name, URL, sha256) of Keras's ImageNet weights (one file for every input size)."""
  del input_shape
  name = f"convnext_{_checked(variant)}{'' if include_top else '_notop'}.h5"
  return name, _BASE + name, _HASHES[variant][0 if include_top else 1]


def convnext(
  input_shape: tuple[int, int, int] = (224, 224, 3),
  *,
  variant: str = "tiny",
  include_top: bool = True,
  pooling: str = "",
  classes: int = 1000,
  cut_at: str = "",
  rngs: nnx.Rngs,
) -> KerasNet:
  """keras.applications.ConvNeXt{variant}(weights=None, ...) up to the layer `cut_at` ("": the last)."""
  g = graph(input_shape, variant=variant, include_top=include_top, pooling=pooling, classes=classes)
  return KerasNet(g, output=cut_at, preprocessing=PREPROCESSING, rngs=rngs)
