"""Training the head on backbone features computed once.

A frozen backbone (`model.freeze="all"`: fixed weights, BatchNorm in inference mode) without
random augmentation maps each image to the same features every epoch, so they are computed
once, kept in memory, and every epoch trains and evaluates only the head. With flip
augmentation the features of each flipped copy are kept (two with flip_lr or flip_ud, four with
both) and every step picks per example the copy that the device augmentation draws from the
same key, so the run equals the uncached one up to float rounding.

`config.train.cache_features`: "auto" (cache when possible, else say why not), "on" (cache
or fail saying why not), "off".
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from imgcls import models
from imgcls.data import augment, pipeline
from imgcls.steps import compute_cast

MAX_BYTES = 4 << 30  # Features larger than this stay uncached (auto) or fail (on).
SETTINGS = ("auto", "on", "off")


def flip_variants(aug: augment.Augment) -> list[tuple[bool, bool]]:
  """The (flip_lr, flip_ud) copies whose features are cached, in index order."""
  lrs = (False, True) if aug.flip_lr else (False,)
  uds = (False, True) if aug.flip_ud else (False,)
  return [(lr, ud) for ud in uds for lr in lrs]


def config_reasons_not_to_cache(config: ml_collections.ConfigDict) -> list[str]:
  """The reasons `reasons_not_to_cache` finds in the config alone (checked before any data is read)."""
  reasons = []
  if config.model.freeze != "all":
    reasons.append("the backbone is trained (cache needs model.freeze='all')")
  aug = augment.from_config(config.data)
  flips_only = augment.Augment(flip_lr=aug.flip_lr, flip_ud=aug.flip_ud, fill_mode=aug.fill_mode, fill_value=aug.fill_value)
  if aug != flips_only:
    reasons.append(f"data.augment={config.data.augment!r} changes images beyond flips")
  elif aug.enabled and config.data.augment_on != "device":
    reasons.append("flips are drawn on the host (data.augment_on='host')")
  if config.train.mixup_alpha > 0 or config.train.cutmix_alpha > 0:
    reasons.append("mixup and CutMix mix the images themselves")
  if pipeline.train_image_sizes(config.data, config.train.epochs) != [tuple(config.data.image_size)]:
    reasons.append("progressive resizing gives the training images other sizes than data.image_size")
  return reasons


def reasons_not_to_cache(config: ml_collections.ConfigDict, model: models.Classifier, processes: int) -> list[str]:
  """Why this run cannot train on cached features (empty: it can)."""
  reasons = config_reasons_not_to_cache(config)
  # A wholly frozen backbone runs in inference mode, its dropout too (Classifier.train).
  if not model.backbone_frozen() and any(isinstance(m, nnx.Dropout) for _, m in nnx.iter_modules(model.backbone)):
    reasons.append(f"{config.model.name} has dropout inside the backbone")
  if processes > 1:
    reasons.append("runs over several processes read separate shards")
  return reasons


def decide(config: ml_collections.ConfigDict, model: models.Classifier, processes: int) -> tuple[bool, str]:
  """(cache?, why not) for `config.train.cache_features`; "on" fails when caching is impossible."""
  setting = config.train.cache_features
  if setting not in SETTINGS:
    raise ValueError(f"config.train.cache_features={setting!r} is not one of {', '.join(SETTINGS)}.")
  if setting == "off":
    return False, "train.cache_features='off'"
  reasons = reasons_not_to_cache(config, model, processes)
  if reasons and setting == "on":
    raise ValueError(
      "config.train.cache_features='on', but the backbone's features change between epochs: " + "; ".join(reasons) + "."
    )
  return not reasons, "; ".join(reasons)


def make_features_step(eval_graphdef: nnx.GraphDef, prepare, variants: list[tuple[bool, bool]], dtype: str, out_sharding=None):
  """A jitted `step(state, images) -> features [batch, variants, ...]` in inference mode."""

  @functools.partial(jax.jit, out_shardings=out_sharding)
  def features_step(state, images: jax.Array) -> jax.Array:
    model = nnx.merge(eval_graphdef, compute_cast(state.params, dtype), compute_cast(state.frozen, dtype), state.stats)
    outputs = []
    for flip_lr, flip_ud in variants:
      x = images[:, :, ::-1] if flip_lr else images
      x = x[:, ::-1] if flip_ud else x
      outputs.append(model.features(compute_cast(prepare(x, None), dtype)).astype(jnp.float32))
    return jnp.stack(outputs, axis=1)

  return features_step


def feature_bytes(features_step, state, image_shape: tuple[int, ...], count: int) -> int:
  """Memory the cached features of `count` images take."""
  out = jax.eval_shape(features_step, state, jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
  return count * int(np.prod(out.shape[1:])) * 4


def make_pick(aug: augment.Augment, image_size: tuple[int, int]):
  """`pick(features, key)`: per example, the cached flip copy `augment.apply_device` would draw
  from `key` (copy 0, the unflipped one, when `key` is None)."""
  lrs = 2 if aug.flip_lr else 1

  def pick(features: jax.Array, key: jax.Array | None) -> jax.Array:
    if key is None or features.shape[1] == 1:
      return features[:, 0]
    n = features.shape[0]
    p = augment.sample_device(aug, key, n, *image_size)
    index = p["flip_lr"].astype(jnp.int32) + lrs * p["flip_ud"].astype(jnp.int32)
    return features[jnp.arange(n), index]

  return pick
