"""Models by name: a backbone (cut where the config says) plus a classification head.

Every model is a `Classifier`: `model(images, rngs=...)` returns logits for a batch of pipeline
images (NHWC float32, the pixels times `config.data.rescale`). `model.embed(images)` returns the
penultimate vector. Train/eval behaviour (BatchNorm, Dropout) follows `model.train()` /
`model.eval()`; `model.frozen` is an nnx filter of the parameters that must not be trained.

A backbone is an `nnx.Module` with
  - `__call__(x, *, rngs=None) -> features` (a feature map NHWC or a vector),
  - `preprocess(images, pixel_scale) -> x`, mapping pipeline images to what it expects,
  - `default_head`: the keyword arguments of `Head` its recipe uses.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from imgcls.models import cnn
from imgcls.models.heads import Head


def _channels(config: ml_collections.ConfigDict) -> int:
  return 1 if config.data.color_mode == "grayscale" else 3


# name -> function(config, rngs) -> backbone.
def _filters(config: ml_collections.ConfigDict, default: int) -> int:
  return config.model.filters or default


MODELS: dict[str, Callable[[ml_collections.ConfigDict, nnx.Rngs], nnx.Module]] = {
  "insects_cnn": lambda c, rngs: cnn.InsectsCNN(_channels(c), filters=_filters(c, 16), rngs=rngs),
  "bn_cnn": lambda c, rngs: cnn.BatchNormCNN(
    _channels(c), filters=_filters(c, 32), image_width=c.data.image_size[1], rngs=rngs
  ),
  "dropout_cnn": lambda c, rngs: cnn.DropoutCNN(_channels(c), filters=_filters(c, 32), rngs=rngs),
}


class Classifier(nnx.Module):
  """A backbone followed by a head; the backbone's preprocessing is part of the model."""

  def __init__(self, backbone: nnx.Module, head: Head, *, pixel_scale: float = 1.0, frozen=nnx.Not(nnx.Everything())):
    self.backbone = backbone
    self.head = head
    self.pixel_scale = float(pixel_scale)
    self.frozen = frozen

  def features(self, images: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
    """The backbone's output (the cut layer) for pipeline images."""
    x = self.backbone.preprocess(jnp.asarray(images, jnp.float32), self.pixel_scale)
    return self.backbone(x, rngs=rngs)

  def embed(self, images: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
    """The penultimate vector: what the output layer sees."""
    return self.head.embed(self.features(images, rngs=rngs), rngs=rngs)

  def __call__(self, images: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
    return self.head(self.features(images, rngs=rngs), rngs=rngs)


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
  if hc.batch_norm:
    options["batch_norm"] = True
  return options


def build_model(config: ml_collections.ConfigDict, num_outputs: int, *, rngs: nnx.Rngs) -> Classifier:
  """The model `config.model.name` for `num_outputs` logits, freshly initialised."""
  name = config.model.name
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; known models: {', '.join(sorted(MODELS))}.")
  backbone = MODELS[name](config, rngs)
  channels = _channels(config)
  height, width = config.data.image_size
  example = jnp.zeros((1, height, width, channels), jnp.float32)
  backbone.eval()
  feature_shape = jax.eval_shape(lambda x: backbone(backbone.preprocess(x, config.data.rescale)), example).shape
  if min(feature_shape[1:]) < 1:
    raise ValueError(f"config.data.image_size={tuple(config.data.image_size)} is too small for {name}: its features would be {feature_shape[1:]}.")
  head = Head(feature_shape[1:], num_outputs, **head_options(config, backbone), rngs=rngs)
  model = Classifier(backbone, head, pixel_scale=config.data.rescale)
  model.train()
  return model
