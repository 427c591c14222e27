"""Keras application networks as NNX modules, layer for layer, with Keras's layer names.

A model file (`mobilenet_v2.py`, `vgg.py`, `inception_v3.py`) writes its network with `Graph`,
one call per Keras layer, the way `keras.applications` builds it: same names (auto-named layers
are named as in a fresh Keras 3 session: `conv2d`, `conv2d_1`, ...), same order, same padding.
`KerasNet` turns that description into an NNX module that holds parameters for, and computes, only
the layers its output layer needs, so any named layer can be the output (`cut_at`).

Parameters live at `layers/<keras layer name>/<kernel|bias|scale|mean|var>`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import re

import jax
import jax.numpy as jnp
from flax import nnx

from imgcls.models.batch_norm import BatchNorm
from imgcls.models.convs import Conv, DepthwiseConv, PointwiseConv, as_pair, resolve
from imgcls.models.heads import dropout
from imgcls.models.pooling import avg_pool, max_pool

# Keras's default initialisers, so a randomly initialised network starts as it does in Keras.
_KERNEL_INIT = nnx.initializers.glorot_uniform()
# keras.applications.imagenet_utils.preprocess_input(mode="caffe"): BGR channel means.
CAFFE_MEAN = (103.939, 116.779, 123.68)
# preprocess_input(mode="torch"): pixels / 255, then minus these RGB means, over these deviations.
TORCH_MEAN, TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Layer types with parameters.
WEIGHTED = ("conv", "depthwise", "separable", "bn", "layer_norm", "layer_scale", "dense", "normalization")
# Keras's activations by name.
ACTIVATIONS = {
  "relu": jax.nn.relu,
  "swish": jax.nn.silu,
  "hard_swish": jax.nn.hard_swish,  # x * relu6(x + 3) / 6
  "sigmoid": jax.nn.sigmoid,
  "gelu": lambda x: jax.nn.gelu(x, approximate=False),
  "linear": lambda x: x,
}
# The prefix Keras 3 gives an unnamed layer of each type (then _1, _2, ... in a session).
_AUTO_PREFIX = {
  "conv": "conv2d",
  "depthwise": "depthwise_conv2d",
  "separable": "separable_conv2d",
  "bn": "batch_normalization",
  "layer_norm": "layer_normalization",
  "dense": "dense",
  "relu": "activation",
  "activation": "activation",
  "rescaling": "rescaling",
  "normalization": "normalization",
  "fixed_normalization": "normalization",
  "reshape": "reshape",
  "multiply": "multiply",
  "dropout": "dropout",
  "pad": "zero_padding2d",
  "crop": "cropping2d",
  "max_pool": "max_pooling2d",
  "avg_pool": "average_pooling2d",
  "concat": "concatenate",
  "add": "add",
  "scale_add": "custom_scale_layer",
  "flatten": "flatten",
  "global_avg": "global_average_pooling2d",
  "global_max": "global_max_pooling2d",
}


@dataclasses.dataclass(frozen=True)
class Layer:
  """One Keras layer: its name, type, input layers, output shape (no batch axis) and options."""

  name: str
  op: str  # input | conv | depthwise | bn | dense | relu | pad | max_pool | avg_pool | ...
  inputs: tuple[str, ...]
  shape: tuple[int, ...]
  units: int = 0  # Output channels of conv and dense.
  kernel: tuple[int, int] = (1, 1)  # Also the pooling window.
  pads: tuple[tuple[int, int], tuple[int, int]] | None = None  # pad, crop: ((top, bottom), (left, right)); None: correct_pad.
  strides: tuple[int, int] = (1, 1)
  padding: str = "valid"  # valid | same (Keras's, i.e. TensorFlow's, padding).
  use_bias: bool = True
  activation: str = ""  # "" or one of ACTIVATIONS: conv, dense and activation layers.
  max_value: float = 0.0  # relu: 0 is none, 6 is ReLU6.
  scale: bool = True  # bn: has gamma.
  momentum: float = 0.99  # bn, with Keras's (= flax's) meaning.
  epsilon: float = 1e-3  # bn.
  rate: float = 0.0  # dropout.
  per_sample: bool = False  # dropout: noise_shape=(None, 1, 1, 1), one draw per image (stochastic depth).
  factor: tuple[float, ...] = ()  # rescaling: the scale (one, or one per channel).
  keepdims: bool = False  # global pooling: (1, 1, channels), not (channels,).
  offset: float = 0.0  # relu: added before it (relu6(x + 3) in hard_sigmoid); rescaling: added after.
  groups: int = 1  # conv: feature groups (ConvNeXt's depthwise Conv2D(groups=channels)).
  stats: tuple[tuple[float, ...], ...] = ()  # normalization with fixed (mean, variance): no weights.
  group: str = ""  # The nested Keras model (Sequential) this layer is inside, if any.
  hidden: bool = False  # An op between Keras layers (ConvNeXt's residual sum), not a Keras layer.
  auto_named: bool = False  # Named by Keras's counter, not by the application code.


class SeparableConv(nnx.Module):
  """Keras's SeparableConv2D: a depthwise convolution (strides, padding), then a 1x1 one (and the bias)."""

  def __init__(self, channels: int, filters: int, kernel, *, strides, padding: str, use_bias: bool, convs: str, rngs: nnx.Rngs):
    self.depthwise = DepthwiseConv(
      channels,
      kernel,
      strides=strides,
      padding=padding,
      use_bias=False,
      kernel_init=_KERNEL_INIT,
      implementation=convs,
      rngs=rngs,
    )
    self.pointwise = PointwiseConv(
      channels, filters, use_bias=use_bias, kernel_init=_KERNEL_INIT, implementation=convs, rngs=rngs
    )

  def __call__(self, x: jax.Array, *, relu: bool = False) -> jax.Array:
    return self.pointwise(self.depthwise(x), relu=relu)


class LayerScale(nnx.Module):
  """ConvNeXt's LayerScale: x times `gamma`, one per channel (Keras initialises it to 1e-6)."""

  def __init__(self, channels: int, init_value: float = 1e-6):
    self.gamma = nnx.Param(jnp.full((channels,), init_value, jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    return x * self.gamma[...].astype(x.dtype)


class GroupedConv(DepthwiseConv):
  """Conv2D(groups=channels), Keras's other depthwise convolution: its kernel has Conv2D's layout."""


class Normalization(nnx.Module):
  """Keras's Normalization layer (axis=-1) with its adapted statistics as (untrained) variables."""

  def __init__(self, channels: int):
    self.mean = nnx.BatchStat(jnp.zeros((channels,), jnp.float32))
    self.variance = nnx.BatchStat(jnp.ones((channels,), jnp.float32))
    self.count = nnx.BatchStat(jnp.zeros((), jnp.int32))

  def __call__(self, x: jax.Array) -> jax.Array:
    std = jnp.maximum(jnp.sqrt(self.variance[...]), 1e-7)  # keras.backend.epsilon()
    return ((x - self.mean[...]) / std).astype(x.dtype)


def _out_size(size: int, kernel: int, stride: int, padding: str) -> int:
  if padding == "same":
    return -(-size // stride)
  return (size - kernel) // stride + 1


def correct_pad(height: int, width: int, kernel: int = 3) -> tuple[tuple[int, int], tuple[int, int]]:
  """keras.applications.imagenet_utils.correct_pad: zero padding before a stride-2 'valid' conv."""
  adjust = (1 - height % 2, 1 - width % 2)
  half = kernel // 2
  return ((half - adjust[0], half), (half - adjust[1], half))


class Graph:
  """A Keras functional network written down layer by layer; each call returns the layer name."""

  def __init__(self, name: str, input_shape: tuple[int, int, int], *, min_size: int):
    height, width, channels = (int(d) for d in input_shape)
    if height < min_size or width < min_size:
      raise ValueError(f"{name}: input size must be at least {min_size}x{min_size}; got {height}x{width}.")
    self.name = name
    self.layers: list[Layer] = [Layer("input_layer", "input", (), (height, width, channels))]
    self._counts: collections.Counter = collections.Counter()
    self._group = ""

  @contextlib.contextmanager
  def nested(self, group: str):
    """The layers added inside are those of a nested Keras model (a Sequential) named `group`."""
    self._group = group
    try:
      yield
    finally:
      self._group = ""

  def keras_layers(self) -> dict[str, tuple[int, ...]]:
    """{name: output shape} of the Keras model's layers (`model.layers`, input excluded): a nested
    model is one layer, the sums between layers are none."""
    out = {}
    for layer in self.layers[1:]:
      if not layer.hidden:
        out[layer.group or layer.name] = layer.shape
    return out

  def resolve(self, name: str) -> str:
    """A layer's name; a nested model's is that of its last layer."""
    inside = [layer.name for layer in self.layers if layer.group == name]
    return inside[-1] if inside else name

  def __getitem__(self, name: str) -> Layer:
    return next(layer for layer in self.layers if layer.name == name)

  @property
  def output(self) -> str:
    return self.layers[-1].name

  def shape(self, x: str) -> tuple[int, ...]:
    return self[x].shape

  def _append(self, name: str | None, op: str, inputs: tuple[str, ...], shape: tuple[int, ...], **options) -> str:
    prefix = options.pop("auto_prefix", "") or _AUTO_PREFIX.get(op, op)
    if not name:
      count = self._counts[prefix]
      self._counts[prefix] += 1
      name = prefix if count == 0 else f"{prefix}_{count}"
      options["auto_named"] = True
    if any(layer.name == name for layer in self.layers):
      raise ValueError(f"{self.name}: two layers named {name!r}.")
    if self._group:
      options["group"] = self._group
    self.layers.append(Layer(name, op, tuple(inputs), tuple(int(d) for d in shape), **options))
    return name

  def _spatial(self, x: str, kernel, strides, padding) -> tuple[int, int]:
    h, w = self.shape(x)[:2]
    return _out_size(h, kernel[0], strides[0], padding), _out_size(w, kernel[1], strides[1], padding)

  def conv(self, name, x, filters, kernel, *, strides=1, padding="valid", use_bias=True, activation="", groups=1):
    kernel, strides = as_pair(kernel), as_pair(strides)
    shape = (*self._spatial(x, kernel, strides, padding), filters)
    return self._append(
      name,
      "conv",
      (x,),
      shape,
      units=filters,
      kernel=kernel,
      strides=strides,
      padding=padding,
      use_bias=use_bias,
      activation=activation,
      groups=groups,
    )

  def depthwise(self, name, x, kernel, *, strides=1, padding="valid", use_bias=True):
    kernel, strides = as_pair(kernel), as_pair(strides)
    shape = (*self._spatial(x, kernel, strides, padding), self.shape(x)[-1])
    return self._append(name, "depthwise", (x,), shape, kernel=kernel, strides=strides, padding=padding, use_bias=use_bias)

  def separable(self, name, x, filters, kernel, *, strides=1, padding="valid", use_bias=True):
    """SeparableConv2D (depth multiplier 1)."""
    kernel, strides = as_pair(kernel), as_pair(strides)
    shape = (*self._spatial(x, kernel, strides, padding), filters)
    return self._append(
      name, "separable", (x,), shape, units=filters, kernel=kernel, strides=strides, padding=padding, use_bias=use_bias
    )

  def bn(self, name, x, *, momentum=0.99, epsilon=1e-3, scale=True):
    return self._append(name, "bn", (x,), self.shape(x), momentum=momentum, epsilon=epsilon, scale=scale)

  def relu(self, name, x, *, max_value=0.0, offset=0.0, keras_layer="Activation"):
    """Activation("relu") or (keras_layer="ReLU") the ReLU layer, of x + offset, capped at max_value."""
    prefix = {"Activation": "activation", "ReLU": "re_lu"}[keras_layer]
    return self._append(name, "relu", (x,), self.shape(x), max_value=max_value, offset=offset, auto_prefix=prefix)

  def correct_pad(self, name, x, kernel=3):
    """ZeroPadding2D(correct_pad(x, kernel)); the padding is recomputed for each input size."""
    (top, bottom), (left, right) = correct_pad(*self.shape(x)[:2], kernel)
    h, w, c = self.shape(x)
    return self._append(name, "pad", (x,), (h + top + bottom, w + left + right, c), kernel=as_pair(kernel))

  def pad(self, name, x, pads):
    """ZeroPadding2D(padding=pads): an int, or ((top, bottom), (left, right))."""
    pads = ((pads, pads), (pads, pads)) if isinstance(pads, int) else tuple(tuple(p) for p in pads)
    (top, bottom), (left, right) = pads
    h, w, c = self.shape(x)
    return self._append(name, "pad", (x,), (h + top + bottom, w + left + right, c), pads=pads)

  def crop(self, name, x, crops):
    """Cropping2D(cropping=((top, bottom), (left, right)))."""
    (top, bottom), (left, right) = crops = tuple(tuple(c) for c in crops)
    h, w, c = self.shape(x)
    return self._append(name, "crop", (x,), (h - top - bottom, w - left - right, c), pads=crops)

  def activation(self, name, x, kind):
    if kind not in ACTIVATIONS:
      raise ValueError(f"Unknown activation {kind!r}; known: {', '.join(ACTIVATIONS)}.")
    return self._append(name, "activation", (x,), self.shape(x), activation=kind)

  def rescaling(self, name, x, factor, offset=0.0):
    """Rescaling(factor, offset): x times a scale (or one per channel), plus the offset."""
    factor = tuple(float(f) for f in factor) if isinstance(factor, (list, tuple)) else (float(factor),)
    return self._append(name, "rescaling", (x,), self.shape(x), factor=factor, offset=float(offset))

  def normalization(self, name, x, *, mean=None, variance=None):
    """Normalization(axis=-1): (x - mean) / sqrt(variance), both stored as weights (with `count`),
    or both given (then no weights)."""
    if mean is None:
      return self._append(name, "normalization", (x,), self.shape(x))
    stats = (tuple(float(m) for m in mean), tuple(float(v) for v in variance))
    return self._append(name, "fixed_normalization", (x,), self.shape(x), stats=stats)

  def reshape(self, name, x, shape):
    return self._append(name, "reshape", (x,), tuple(shape))

  def multiply(self, name, xs, *, factor=1.0):
    """Multiply()(xs), of the inputs times `factor` (MobileNetV3's hard_sigmoid ends with x * (1 / 6))."""
    return self._append(name, "multiply", tuple(xs), self.shape(xs[0]), factor=(float(factor),))

  def dropout(self, name, x, rate, *, per_sample=False):
    """Dropout(rate) (per_sample: noise_shape=(None, 1, 1, 1), as stochastic depth); training only."""
    return self._append(name, "dropout", (x,), self.shape(x), rate=float(rate), per_sample=per_sample)

  def max_pool(self, name, x, pool, *, strides=None, padding="valid"):
    return self._pool("max_pool", name, x, pool, strides, padding)

  def avg_pool(self, name, x, pool, *, strides=None, padding="valid"):
    return self._pool("avg_pool", name, x, pool, strides, padding)

  def _pool(self, op, name, x, pool, strides, padding):
    pool = as_pair(pool)
    strides = pool if strides is None else as_pair(strides)
    shape = (*self._spatial(x, pool, strides, padding), self.shape(x)[-1])
    return self._append(name, op, (x,), shape, kernel=pool, strides=strides, padding=padding)

  def concat(self, name, xs):
    shapes = [self.shape(x) for x in xs]
    return self._append(name, "concat", tuple(xs), (*shapes[0][:-1], sum(s[-1] for s in shapes)))

  def add(self, name, xs):
    return self._append(name, "add", tuple(xs), self.shape(xs[0]))

  def flatten(self, name, x):
    size = 1
    for d in self.shape(x):
      size *= d
    return self._append(name, "flatten", (x,), (size,))

  def global_pool(self, name, x, kind, *, keepdims=False):
    shape = (1, 1, *self.shape(x)[-1:]) if keepdims else self.shape(x)[-1:]
    return self._append(name, {"avg": "global_avg", "max": "global_max"}[kind], (x,), shape, keepdims=keepdims)

  def dense(self, name, x, units, *, activation=""):
    """Dense on the last axis (of a vector or, as ConvNeXt's, of a feature map)."""
    return self._append(name, "dense", (x,), (*self.shape(x)[:-1], units), units=units, activation=activation)

  def layer_norm(self, name, x, *, epsilon=1e-3):
    """LayerNormalization over the channels."""
    return self._append(name, "layer_norm", (x,), self.shape(x), epsilon=epsilon)

  def layer_scale(self, name, x):
    """ConvNeXt's LayerScale: x times a learned per-channel `gamma`."""
    return self._append(name, "layer_scale", (x,), self.shape(x))

  def scale_add(self, name, xs, scale):
    """InceptionResNetV2's CustomScaleLayer: xs[0] + xs[1] * scale."""
    return self._append(name, "scale_add", tuple(xs), self.shape(xs[0]), factor=(float(scale),))

  def residual_add(self, name, xs):
    """A sum written as `a + b` between Keras layers: no Keras layer of its own."""
    return self._append(name, "add", tuple(xs), self.shape(xs[0]), hidden=True)


def _module(layer: Layer, in_shape: tuple[int, ...], momentum: float, epsilon: float, convs: str, rngs: nnx.Rngs) -> nnx.Module:
  padding = layer.padding.upper()
  if layer.op == "conv" and as_pair(layer.kernel) == (1, 1) and as_pair(layer.strides) == (1, 1) and layer.groups == 1:
    return PointwiseConv(
      in_shape[-1], layer.units, use_bias=layer.use_bias, kernel_init=_KERNEL_INIT, implementation=convs, rngs=rngs
    )
  if layer.op == "conv" and layer.groups == 1:
    return Conv(
      in_shape[-1],
      layer.units,
      layer.kernel,
      strides=layer.strides,
      padding=padding,
      use_bias=layer.use_bias,
      kernel_init=_KERNEL_INIT,
      implementation=convs,
      rngs=rngs,
    )
  if layer.op == "conv" and layer.groups > 1:
    if layer.groups != in_shape[-1] or layer.units != in_shape[-1]:
      raise ValueError(f"{layer.name}: only depthwise grouped convolutions (groups = channels) are supported.")
    return GroupedConv(
      in_shape[-1],
      layer.kernel,
      strides=layer.strides,
      padding=padding,
      use_bias=layer.use_bias,
      kernel_init=_KERNEL_INIT,
      implementation=convs,
      rngs=rngs,
    )
  if layer.op == "depthwise":
    return DepthwiseConv(
      in_shape[-1],
      layer.kernel,
      strides=layer.strides,
      padding=padding,
      use_bias=layer.use_bias,
      kernel_init=_KERNEL_INIT,
      implementation=convs,
      rngs=rngs,
    )
  if layer.op == "separable":
    return SeparableConv(
      in_shape[-1],
      layer.units,
      layer.kernel,
      strides=layer.strides,
      padding=padding,
      use_bias=layer.use_bias,
      convs=convs,
      rngs=rngs,
    )
  if layer.op == "bn":
    return BatchNorm(
      in_shape[-1],
      momentum=momentum or layer.momentum,
      epsilon=epsilon or layer.epsilon,
      use_scale=layer.scale,
      implementation=convs,
      rngs=rngs,
    )
  if layer.op == "normalization":
    return Normalization(in_shape[-1])
  if layer.op == "layer_norm":
    return nnx.LayerNorm(in_shape[-1], epsilon=layer.epsilon, rngs=rngs)
  if layer.op == "layer_scale":
    return LayerScale(in_shape[-1])
  if layer.op == "dense":
    return nnx.Linear(in_shape[-1], layer.units, kernel_init=_KERNEL_INIT, rngs=rngs)
  raise ValueError(f"Layer type {layer.op!r} has no parameters.")


def _apply(layer: Layer, module: nnx.Module | None, xs: list[jax.Array], convs: str) -> jax.Array:
  x = xs[0]
  op = layer.op
  if op in ("conv", "depthwise", "separable"):
    relu = layer.activation == "relu"
    x = module(x, relu=relu)  # ReLU fused into oneDNN's convolution
    return ACTIVATIONS[layer.activation](x) if layer.activation and not relu else x
  if op in WEIGHTED:
    x = module(x)
    return ACTIVATIONS[layer.activation](x) if layer.activation else x
  if op == "activation":
    return ACTIVATIONS[layer.activation](x)
  if op == "fixed_normalization":
    mean, variance = (jnp.asarray(v, x.dtype) for v in layer.stats)
    return (x - mean) / jnp.maximum(jnp.sqrt(variance), 1e-7)
  if op == "rescaling":
    x = x * jnp.asarray(layer.factor, x.dtype)
    return x + jnp.asarray(layer.offset, x.dtype) if layer.offset else x
  if op == "reshape":
    return x.reshape(x.shape[0], *layer.shape)
  if op == "multiply":
    product = xs[0] * xs[1]
    return product * jnp.asarray(layer.factor[0], x.dtype) if layer.factor[0] != 1.0 else product
  if op == "relu":
    x = x + jnp.asarray(layer.offset, x.dtype) if layer.offset else x
    return jnp.clip(x, 0.0, layer.max_value) if layer.max_value else nnx.relu(x)
  if op == "pad":
    (top, bottom), (left, right) = layer.pads or correct_pad(x.shape[1], x.shape[2], layer.kernel[0])
    return jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  if op == "crop":
    (top, bottom), (left, right) = layer.pads
    return x[:, top : x.shape[1] - bottom, left : x.shape[2] - right]
  if op == "max_pool":
    return max_pool(x, layer.kernel, layer.strides, layer.padding, implementation=convs)
  if op == "avg_pool":  # Keras (TensorFlow) averages over the window's real pixels only.
    return avg_pool(x, layer.kernel, layer.strides, layer.padding)
  if op == "concat":
    return jnp.concatenate(xs, axis=-1)
  if op == "add":
    return sum(xs[1:], xs[0])
  if op == "scale_add":
    return xs[0] + xs[1] * jnp.asarray(layer.factor[0], xs[1].dtype)
  if op == "flatten":
    return x.reshape(x.shape[0], -1)
  if op == "global_avg":
    return jnp.mean(x, axis=(1, 2), keepdims=layer.keepdims)
  if op == "global_max":
    return jnp.max(x, axis=(1, 2), keepdims=layer.keepdims)
  raise ValueError(f"Unknown layer type {op!r}.")


class KerasNet(nnx.Module):
  """A `Graph` as a backbone: the layers up to `output` (default: the graph's last layer).

  `preprocessing` is Keras's `preprocess_input` mode of the family: "tf" (x / 127.5 - 1),
  "caffe" (RGB to BGR, minus the ImageNet channel means), "torch" (x / 255, normalised by the
  ImageNet channel means and deviations), "pixels" (0-255 pixels: the network normalises them
  itself, as EfficientNet), or "none". `bn_momentum` / `bn_epsilon` override
  every BatchNorm's (0: Keras's values for the model). `convs` picks how depthwise and 1x1
  convolutions are computed (see `imgcls.models.convs`).
  """

  def __init__(
    self,
    graph: Graph,
    *,
    output: str = "",
    preprocessing: str,
    bn_momentum: float = 0.0,
    bn_epsilon: float = 0.0,
    convs: str = "auto",
    rngs: nnx.Rngs,
  ):
    if preprocessing not in ("tf", "caffe", "torch", "pixels", "none"):
      raise ValueError(f"Unknown preprocessing {preprocessing!r}: use tf, caffe, torch, pixels or none.")
    by_name = {layer.name: layer for layer in graph.layers}
    output = graph.resolve(output or graph.output)
    # A nested Keras model (ConvNeXt's stem, ...) stands for its last layer.
    self.nested = {layer.group: graph.resolve(layer.group) for layer in graph.layers if layer.group}
    if output not in by_name:
      close = [n for n in by_name if output.lower() in n.lower()][:10]
      hint = f" Similar names: {', '.join(close)}." if close else ""
      raise ValueError(f"{graph.name} has no layer named {output!r}.{hint} Its layers are: {', '.join(list(by_name)[1:])}.")
    needed = {output}
    for layer in reversed(graph.layers):
      if layer.name in needed:
        needed.update(layer.inputs)
    self.name = graph.name
    self.spec = tuple(layer for layer in graph.layers if layer.name in needed)
    self.output_name = output
    self.output_shape = by_name[output].shape
    self.preprocessing = preprocessing
    self.convs = resolve(convs)  # max pooling follows it (oneDNN's or imgcls's own)
    # Every weighted layer of the full network (those past `output` too), to check a weights file.
    self.all_weighted = tuple(layer.name for layer in graph.layers if layer.op in WEIGHTED)
    self.auto_named = tuple(layer.name for layer in graph.layers if layer.auto_named and layer.op in WEIGHTED)
    self.layers = nnx.Dict(
      {
        layer.name: _module(layer, by_name[layer.inputs[0]].shape, bn_momentum, bn_epsilon, convs, rngs)
        for layer in self.spec
        if layer.op in WEIGHTED
      }
    )
    # Dropout and stochastic depth (training only; model.eval() turns them off).
    self.dropouts = nnx.Dict(
      {
        layer.name: nnx.Dropout(layer.rate, broadcast_dims=(1, 2, 3) if layer.per_sample else ())
        for layer in self.spec
        if layer.op == "dropout"
      }
    )
    last_use = {}
    for layer in self.spec:
      for name in layer.inputs:
        last_use[name] = layer.name
    self._frees = tuple(
      tuple(name for name in layer.inputs if last_use[name] == layer.name and name != output) for layer in self.spec
    )

  @property
  def default_head(self) -> dict:
    """A vector is already pooled; a feature map is average-pooled; then only the output layer."""
    return dict(pooling="none" if len(self.output_shape) == 1 else "avg", hidden=(), dropout=0.0)

  @property
  def layer_names(self) -> tuple[str, ...]:
    """The Keras names of the layers this backbone computes, in Keras's order."""
    return tuple(layer.name for layer in self.spec[1:])

  def preprocess(self, images: jax.Array, pixel_scale: float) -> jax.Array:
    """Keras's `preprocess_input` for the family, on images that are pixels times `pixel_scale`
    ("none": the images as they are)."""
    # Greyscale: the ImageNet networks take three channels.
    x = jnp.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images
    if self.preprocessing == "none":
      return x
    x = x if pixel_scale == 1.0 else x / pixel_scale
    if self.preprocessing == "pixels":
      return x
    if self.preprocessing == "tf":
      return x / 127.5 - 1.0
    if self.preprocessing == "torch":
      return (x / 255.0 - jnp.asarray(TORCH_MEAN, x.dtype)) / jnp.asarray(TORCH_STD, x.dtype)
    return x[..., ::-1] - jnp.asarray(CAFFE_MEAN, x.dtype)

  def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None, output: str = "") -> jax.Array:
    """The output layer's activations, or those of the layer named `output` (one of `layer_names`)."""
    values = {self.spec[0].name: x}
    for layer, frees in zip(self.spec[1:], self._frees[1:]):
      module = self.layers[layer.name] if layer.op in WEIGHTED else None
      with jax.named_scope(layer.name):  # Names the layer in traces, profiles and export errors.
        if layer.op == "dropout":
          values[layer.name] = dropout(self.dropouts[layer.name], values[layer.inputs[0]], rngs)
        else:
          values[layer.name] = _apply(layer, module, [values[name] for name in layer.inputs], self.convs)
      if layer.name == output:
        return values[output]
      for name in frees:  # Let go of activations no later layer reads.
        del values[name]
    return values[self.output_name]

  def blocks(self) -> dict[str, int]:
    """Weighted layer name -> its block's depth (0 the stem, ... the last block, then the top):
    consecutive blocks as Keras's names number them; an unnumbered layer belongs to the next
    numbered block (a stem, Inception's branches before their `mixed` concatenation), or after
    the last to the top (e.g. MobileNetV2's Conv_1, EfficientNet's top_conv)."""
    depth, seen, pending, found = -1, set(), [], {}
    for name in self.layer_names:
      key = block_key(name)
      if key is not None and key not in seen:
        seen.add(key)
        depth += 1
      if key is None:
        pending.append(name)
        continue
      for waiting in pending:
        found[waiting] = depth
      pending, found[name] = [], depth
    for name in pending:
      found[name] = depth + 1
    return {name: d for name, d in found.items() if name in self.layers}

  def frozen_paths(self, upto: str) -> tuple[tuple[str, ...], ...]:
    """Paths (under this module) of the layers up to and including `upto`, in Keras's order."""
    names = self.layer_names
    upto = self.nested.get(upto, upto)
    if upto not in names:
      raise ValueError(f"Cannot freeze up to {upto!r}: {self.name} here has no such layer; layers: {', '.join(names)}.")
    upto_index = names.index(upto)
    return tuple(("layers", name) for name in names[: upto_index + 1] if name in self.layers)


# The block a Keras layer name belongs to, as the applications number them: ConvNeXt's
# stage_1_block_0, ResNet's and DenseNet's conv3_block2 (and pool3 transitions), Inception-ResNet's
# block35_1, EfficientNet's block2a, VGG's and Xception's block3, MobileNetV2's block_6,
# MobileNetV3's expanded_conv_3, MobileNet's conv_dw_3 / conv_pw_3, Inception's mixed5.
_BLOCK = re.compile(
  r"stage_\d+_block_\d+|conv\d+_block\d+|block\d+_\d+|block_?\d+[a-z]?|expanded_conv_\d+|conv_(?:dw|pw|pad)_\d+"
  r"|mixed_?\d+[a-z]?|pool\d+"
)


def block_key(name: str) -> str | None:
  """The block of a Keras layer name (`_BLOCK`), or None for a name outside the numbered blocks."""
  match = _BLOCK.search(name)
  return re.sub(r"conv_(?:dw|pw|pad)_", "conv_", match.group(0)) if match else None


def auto_name_order(name: str) -> tuple[str, int] | None:
  """('conv2d', 3) for 'conv2d_3', ('conv2d', 0) for 'conv2d': how Keras numbers unnamed layers."""
  match = re.fullmatch(r"(conv2d|depthwise_conv2d|batch_normalization|layer_normalization|dense|normalization)(?:_(\d+))?", name)
  if not match:
    return None
  return match.group(1), int(match.group(2) or 0)
