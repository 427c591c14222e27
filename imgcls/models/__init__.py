"""Models by name: a backbone (cut where the config says) plus a classification head.

Every model is a `Classifier`: `model(images, rngs=...)` returns logits for a batch of pipeline
images (NHWC float32, the pixels times `config.data.rescale`). `model.embed(images)` returns the
penultimate vector. Train/eval behaviour (BatchNorm, Dropout) follows `model.train()` /
`model.eval()`; `model.frozen` is an nnx filter of the parameters that must not be trained, and
frozen BatchNorm layers stay in inference mode in `model.train()`, as Keras's `trainable=False`.

A backbone is an `nnx.Module` with
  - `__call__(x, *, rngs=None) -> features` (a feature map NHWC or a vector),
  - `preprocess(images, pixel_scale) -> x`, mapping pipeline images to what it expects,
  - `default_head`: the keyword arguments of `Head` its recipe uses.

The Keras application families (`KERAS_MODELS`) are `KerasNet` backbones: Keras's layers and
names, Keras's `preprocess_input`, optionally Keras's weights (`config.model.weights`). With
`config.model.include_top`, Keras's own classifier (`predictions`) is the head's output layer.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from imgcls.models import (
  cnn,
  convnext,
  densenet,
  efficientnet,
  efficientnet_v2,
  inception_resnet_v2,
  inception_v3,
  keras_weights,
  mobilenet,
  mobilenet_v2,
  mobilenet_v3,
  nasnet,
  resnet,
  vgg,
  xception,
)
from imgcls.models.heads import Head
from imgcls.models.keras_net import Graph, KerasNet


def _channels(config: ml_collections.ConfigDict) -> int:
  return 1 if config.data.color_mode == "grayscale" else 3


def _filters(config: ml_collections.ConfigDict, default: int) -> int:
  return config.model.filters or default


# Keras application families: name -> (model file, its options from the config).
KERAS_MODELS = {
  "mobilenet": (mobilenet, lambda c: dict(alpha=float(c.model.alpha))),
  "mobilenet_v2": (mobilenet_v2, lambda c: dict(alpha=float(c.model.alpha))),
  **{
    f"mobilenet_v3_{size}{suffix}": (
      mobilenet_v3,
      lambda c, size=size, minimal=bool(suffix): dict(size=size, alpha=float(c.model.alpha), minimalistic=minimal),
    )
    for size in ("small", "large")
    for suffix in ("", "_minimalistic")
  },
  "vgg16": (vgg, lambda c: dict(depth=16)),
  "vgg19": (vgg, lambda c: dict(depth=19)),
  "inception_v3": (inception_v3, lambda c: {}),
  "xception": (xception, lambda c: {}),
  "inception_resnet_v2": (inception_resnet_v2, lambda c: {}),
  **{f"nasnet_{v}": (nasnet, lambda c, v=v: dict(variant=v)) for v in nasnet.VARIANTS},
  **{f"resnet{d}": (resnet, lambda c, d=d: dict(depth=d)) for d in resnet.DEPTHS},
  **{f"resnet{d}_v2": (resnet, lambda c, d=d: dict(depth=d, v2=True)) for d in resnet.DEPTHS},
  **{f"densenet{d}": (densenet, lambda c, d=d: dict(depth=d)) for d in densenet.BLOCKS},
  **{f"efficientnet_v2_{v}": (efficientnet_v2, lambda c, v=v: dict(variant=v)) for v in efficientnet_v2.VARIANTS},
  **{f"convnext_{v}": (convnext, lambda c, v=v: dict(variant=v)) for v in convnext.VARIANTS},
  **{
    f"efficientnet_{v}": (
      efficientnet,
      lambda c, v=v: dict(variant=v, imagenet_rescaling=_keras_imagenet_file(c, efficientnet, v)),
    )
    for v in efficientnet.VARIANTS
  },
}


def _keras_imagenet_file(config: ml_collections.ConfigDict, module, variant: str) -> bool:
  """Whether `config.model.weights` is Keras's ImageNet file of the variant ("imagenet", or that file by name)."""
  weights = config.model.weights
  if weights == "imagenet":
    return True
  names = {module.imagenet_file((), include_top=top, variant=variant)[0] for top in (True, False)}
  return bool(weights) and os.path.basename(str(weights)) in names


def default_size(name: str) -> int:
  """Keras's default input size of model `name` (the variant's where they differ)."""
  module, options = KERAS_MODELS[name]
  if hasattr(module, "default_size"):
    plain = ml_collections.ConfigDict({"model": {"alpha": 1.0, "weights": ""}})  # The sizes depend on the variant only.
    return module.default_size(**options(plain))
  return module.DEFAULT_SIZE


def keras_preprocessing(name: str, options: dict) -> str:
  """The `preprocess_input` mode of Keras model `name` (its family's, or the variant's where they differ)."""
  module = KERAS_MODELS[name][0]
  return module.preprocessing(**options) if hasattr(module, "preprocessing") else module.PREPROCESSING


def keras_classifier(config: ml_collections.ConfigDict) -> str:
  """The layer of the config's Keras model that holds its ImageNet classifier (`predictions`, a 1x1
  convolution, ConvNeXt's head Dense)."""
  module, options = KERAS_MODELS[config.model.name]
  if hasattr(module, "classifier"):
    return module.classifier(**options(config))
  return getattr(module, "CLASSIFIER", "predictions")


def keras_graph(config: ml_collections.ConfigDict) -> Graph:
  """The whole Keras network `config.model.name` at the config's image size."""
  module, options = KERAS_MODELS[config.model.name]
  m = config.model
  shape = (*config.data.image_size, 3)
  return module.graph(shape, include_top=m.include_top, pooling=m.pooling, **options(config))


def keras_backbone(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> KerasNet:
  """The Keras network cut at `config.model.cut_at` ("": Keras's last layer).

  With `include_top`, it stops just before Keras's classifier (`keras_classifier`), which becomes
  the head's output layer.
  """
  m = config.model
  if m.include_top and (m.cut_at or m.pooling):
    raise ValueError("config.model.include_top keeps Keras's classifier: leave model.cut_at and model.pooling empty.")
  g = keras_graph(config)
  output = g[keras_classifier(config)].inputs[0] if m.include_top else m.cut_at
  preprocessing = keras_preprocessing(m.name, KERAS_MODELS[m.name][1](config)) if m.preprocess_input else "none"
  return KerasNet(
    g, output=output, preprocessing=preprocessing, bn_momentum=m.bn_momentum, bn_epsilon=m.bn_epsilon, convs=m.convs, rngs=rngs
  )


# name -> function(config, rngs) -> backbone.
MODELS: dict[str, Callable[[ml_collections.ConfigDict, nnx.Rngs], nnx.Module]] = {
  "insects_cnn": lambda c, rngs: cnn.InsectsCNN(_channels(c), filters=_filters(c, 16), convs=c.model.convs, rngs=rngs),
  "bn_cnn": lambda c, rngs: cnn.BatchNormCNN(
    _channels(c), filters=_filters(c, 32), image_width=c.data.image_size[1], convs=c.model.convs, rngs=rngs
  ),
  "dropout_cnn": lambda c, rngs: cnn.DropoutCNN(_channels(c), filters=_filters(c, 32), convs=c.model.convs, rngs=rngs),
  **{name: keras_backbone for name in KERAS_MODELS},
}


@dataclasses.dataclass(frozen=True)
class PathPrefixes:
  """An nnx filter: what lives under one of the paths `prefixes` (tuples of path keys)."""

  prefixes: tuple[tuple[str, ...], ...]

  def __call__(self, path, value) -> bool:
    del value
    path = tuple(str(key) for key in path)
    return any(path[: len(prefix)] == prefix for prefix in self.prefixes)


NOTHING = nnx.Not(nnx.Everything())


def as_floating(images: jax.Array) -> jax.Array:
  """Integer pixels as float32; floating images as they are, so bfloat16 compute stays bfloat16."""
  return images if jnp.issubdtype(images.dtype, jnp.floating) else images.astype(jnp.float32)


class Classifier(nnx.Module):
  """A backbone followed by a head; the backbone's preprocessing is part of the model."""

  def __init__(
    self,
    backbone: nnx.Module,
    head: Head,
    *,
    pixel_scale: float = 1.0,
    frozen=NOTHING,
    keras_top: str = "",
    bn_inference: bool = False,
  ):
    self.backbone = backbone
    self.head = head
    self.pixel_scale = float(pixel_scale)
    self.frozen = frozen
    # With include_top, the Keras layer the head's output layer is (`predictions`, ...): its weights
    # load with the backbone's. "" otherwise.
    self.keras_top = keras_top
    self.bn_inference = bn_inference  # Every backbone BatchNorm in inference mode, trained or not.

  def train(self, **attributes):
    """Training mode, except for frozen BatchNorm layers: like Keras's trainable=False, they normalise
    with their moving statistics and leave them unchanged. A wholly frozen backbone runs in
    inference mode (its dropout and stochastic depth off too), as Keras's transfer-learning
    recipe calls it: `base_model(inputs, training=False)`. With `bn_inference`
    (`model.bn_inference`) every backbone BatchNorm does so, its scale and offset still trained."""
    super().train(**attributes)
    frozen = {tuple(path) for path, _ in nnx.to_flat_state(nnx.state(self, nnx.All(nnx.Param, self.frozen)))}
    for path, module in nnx.iter_modules(self):
      in_backbone = self.bn_inference and tuple(path)[:1] == ("backbone",)
      if isinstance(module, nnx.BatchNorm) and (in_backbone or any(p[: len(path)] == tuple(path) for p in frozen)):
        module.use_running_average = True
    if self.backbone_frozen():
      for _, module in nnx.iter_modules(self.backbone):
        if isinstance(module, nnx.Dropout):
          module.deterministic = True

  def backbone_frozen(self) -> bool:
    """Whether every backbone parameter is frozen."""
    frozen = {tuple(path) for path, _ in nnx.to_flat_state(nnx.state(self, nnx.All(nnx.Param, self.frozen)))}
    backbone = {("backbone", *path) for path, _ in nnx.to_flat_state(nnx.state(self.backbone, nnx.Param))}
    return bool(backbone) and backbone <= frozen

  def features(self, images: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
    """The backbone's output (the cut layer) for pipeline images."""
    x = self.backbone.preprocess(as_floating(images), self.pixel_scale)
    return self.backbone(x, rngs=rngs)

  def embed(self, images: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
    """The penultimate vector: what the output layer sees."""
    return self.head.embed(self.features(images, rngs=rngs), rngs=rngs)

  def __call__(self, images: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
    with jax.named_scope("backbone"):  # Scopes name the parts in traces, profiles and export errors.
      features = self.features(images, rngs=rngs)
    with jax.named_scope("head"):
      return self.head(features, rngs=rngs)


def head_options(config: ml_collections.ConfigDict, backbone: nnx.Module) -> dict:
  """The backbone's default head, with what `config.model.head` sets on top."""
  options = dict(getattr(backbone, "default_head", {}))
  options.setdefault("pooling", "flatten")
  hc = config.model.head
  if hc.pooling:
    options["pooling"] = hc.pooling
  if tuple(hc.hidden) != (-1,):
    options["hidden"] = tuple(int(h) for h in hc.hidden)
  if hc.dropout >= 0:
    options["dropout"] = float(hc.dropout)
  if hc.input_dropout >= 0:
    options["input_dropout"] = float(hc.input_dropout)
  if hc.batch_norm:
    options["batch_norm"] = True
  return options


def frozen_filter(config: ml_collections.ConfigDict, backbone: nnx.Module):
  """The parameters `config.model.freeze` freezes: "" none, "all" the backbone, or a Keras layer
  name: the backbone's layers up to and including it."""
  freeze = config.model.freeze
  if not freeze:
    return NOTHING
  if freeze == "all":
    return PathPrefixes((("backbone",),))
  if not isinstance(backbone, KerasNet):
    raise ValueError(f"config.model.freeze={freeze!r}: {config.model.name} can only freeze '' or 'all'.")
  return PathPrefixes(tuple(("backbone", *path) for path in backbone.frozen_paths(freeze)))


def backbone_blocks(model: Classifier) -> dict[str, int] | None:
  """The Keras backbone's layer -> block depth (`KerasNet.blocks`), None for the other models."""
  return model.backbone.blocks() if isinstance(getattr(model, "backbone", None), KerasNet) else None


def keras_weights_path(config: ml_collections.ConfigDict) -> str:
  """`config.model.weights` as a file: "imagenet" is Keras's file, from the Keras cache or downloaded."""
  if config.model.weights != "imagenet":
    return config.model.weights
  module, options = KERAS_MODELS[config.model.name]
  shape = (*config.data.image_size, 3)
  name, url, expected_hash = module.imagenet_file(shape, include_top=config.model.include_top, **options(config))
  return str(keras_weights.imagenet_path(name, url, expected_hash))


def load_keras_weights(model: Classifier | KerasNet, path: str) -> None:
  """Loads a Keras weights file into a Keras backbone (and Keras's classifier, with include_top)."""
  net = model.backbone if isinstance(model, Classifier) else model
  if not isinstance(net, KerasNet):
    raise ValueError(f"Keras weights load only into the Keras application models ({', '.join(KERAS_MODELS)}).")
  modules = {name: net.layers[name] for name in net.layer_names if name in net.layers}  # Keras's order.
  if isinstance(model, Classifier) and model.keras_top:
    modules[model.keras_top] = model.head.output
  keras_weights.assign(
    modules,
    keras_weights.read(path),
    known_layers=net.all_weighted,
    auto_named=net.auto_named,
    source=str(path),
    model=f"{net.name} up to {net.output_name}",
  )


def build_model(config: ml_collections.ConfigDict, num_outputs: int, *, rngs: nnx.Rngs, load_weights: bool = True) -> Classifier:
  """The model `config.model.name` for `num_outputs` logits, initialised (or loaded) as configured.

  `load_weights=False` (for a checkpoint that holds every variable) leaves a pretrained
  backbone's parameters abstract and reads no weights file.
  """
  name = config.model.name
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; known models: {', '.join(sorted(MODELS))}.")
  m = config.model
  if name not in KERAS_MODELS and (m.weights or m.include_top or m.cut_at or m.pooling):
    raise ValueError(
      f"model.weights, include_top, cut_at and pooling apply to the Keras models ({', '.join(KERAS_MODELS)}), not {name}."
    )
  if m.include_top and m.weights and num_outputs != 1000:
    raise ValueError(
      f"Keras's ImageNet classifier (include_top) has 1000 outputs, not {num_outputs}: use include_top=False and a head."
    )
  if m.weights:  # Every backbone parameter comes from the file: skip the (slow, eager) random init.
    backbone = nnx.eval_shape(lambda: MODELS[name](config, nnx.Rngs(0)))
  else:
    backbone = MODELS[name](config, rngs)
  channels = _channels(config)
  height, width = config.data.image_size
  example = jnp.zeros((1, height, width, channels), jnp.float32)
  backbone.eval()
  feature_shape = nnx.eval_shape(lambda b, x: b(b.preprocess(x, config.data.rescale)), backbone, example).shape
  if min(feature_shape[1:]) < 1:
    raise ValueError(
      f"config.data.image_size={tuple(config.data.image_size)} is too small for {name}: its features would be {feature_shape[1:]}."
    )
  if m.include_top:  # The output layer is Keras's `predictions` on the pooled features.
    head = Head(feature_shape[1:], num_outputs, pooling="none", rngs=rngs)
  else:
    head = Head(feature_shape[1:], num_outputs, **head_options(config, backbone), rngs=rngs)
  model = Classifier(
    backbone,
    head,
    pixel_scale=config.data.rescale,
    frozen=frozen_filter(config, backbone),
    keras_top=keras_classifier(config) if m.include_top else "",
    bn_inference=m.bn_inference,
  )
  if m.weights and load_weights:
    load_keras_weights(model, keras_weights_path(config))
  model.train()
  return model
