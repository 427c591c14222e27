"""The input pipeline the train loop and inference read through: `train_batches` and
`eval_batches` pick the backend `data.backend` names, grain (`grain_pipeline`) or tf.data
(`tf_pipeline`, imported only when asked for). Both give the same batches in the same order:
{"image", "label", "mask", "index"} numpy arrays, eval batches padded (mask 0) to one shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np

from imgcls.data import augment, grain_pipeline
from imgcls.data.images import ImageSpec
from imgcls.data.sources import Split

TF_MISSING = (
  "config.data.backend='tf' reads images with tf.data, but TensorFlow is not installed. "
  "Install the tf extra (pip install 'imgcls[tf]', which adds tensorflow-cpu) or use data.backend='grain'."
)


def _tf_pipeline():
  """The tf.data backend module; fails saying how to install TensorFlow if it is missing."""
  try:
    from imgcls.data import tf_pipeline
  except ModuleNotFoundError as e:
    if e.name is None or e.name.split(".")[0] != "tensorflow":
      raise
    raise ModuleNotFoundError(TF_MISSING, name=e.name) from e
  return tf_pipeline


def train_image_size(data_config, epoch: int) -> tuple[int, int]:
  """The training images' (height, width) in `epoch` (from 0): `data.progressive_sizes`' entry
  for it, else `data.image_size`."""
  size = tuple(data_config.image_size)
  for first_epoch, entry_size in data_config.get("progressive_sizes", ()):
    if epoch + 1 >= first_epoch:
      size = tuple(entry_size)
  return size


def train_image_sizes(data_config, epochs: int) -> list[tuple[int, int]]:
  """Every size the training images take in epochs 0..epochs-1 (just `data.image_size` without
  progressive resizing)."""
  return sorted({train_image_size(data_config, epoch) for epoch in range(epochs)})


def train_batches(
  split: Split,
  data_config,
  seed: int,
  epoch: int,
  state: dict[str, Any] | None = None,
  *,
  batch_size: int | None = None,
  shard: tuple[int, int] = (0, 1),
  host_augment: augment.Augment | None = None,
  features: np.ndarray | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """Epoch `epoch` of training batches from `data_config.backend`, resumed from `state` if given.

  The iterator's `get_state()` is `{"next_index": batches read}`, for either backend. With
  `features` (cached backbone features in place of the images) grain reads them, whatever the backend.
  Images take the epoch's size (`train_image_size`: progressive resizing).
  """
  spec = dataclasses.replace(ImageSpec.from_config(data_config), image_size=train_image_size(data_config, epoch))
  batch_size = batch_size or data_config.batch_size
  threads, prefetch = data_config.num_threads, data_config.prefetch
  if data_config.backend == "tf" and features is None:
    if shard[1] > 1 or (host_augment is not None and host_augment.enabled):
      raise ValueError("data.backend='tf' reads for one process without host augmentation; use the grain backend.")
    return _tf_pipeline().train_batches(split, spec, batch_size, seed, epoch, data_config.shuffle, threads, prefetch, state)
  ds = grain_pipeline.train_dataset(split, spec, batch_size, seed, epoch, data_config.shuffle, host_augment, shard, features)
  return grain_pipeline.iterate(ds, threads, prefetch, state)


def eval_batches(
  split: Split,
  data_config,
  batch_size: int | None = None,
  features: np.ndarray | None = None,
  shard: tuple[int, int] = (0, 1),
) -> Iterator[dict[str, np.ndarray]]:
  """All of `split` as padded batches, with the config's backend, image spec and threads
  (`features`: cached backbone features in place of the images, as in `train_batches`; `shard`: this host's
  rows of each batch, as in `grain_pipeline.eval_dataset`)."""
  batch_size = batch_size or data_config.eval_batch_size or data_config.batch_size
  spec = ImageSpec.from_config(data_config)
  if data_config.backend == "tf" and features is None:
    if shard[1] > 1:
      raise ValueError("data.backend='tf' reads for one process; use the grain backend.")
    return _tf_pipeline().eval_batches(split, spec, batch_size, data_config.num_threads, data_config.prefetch)
  ds = grain_pipeline.eval_dataset(split, spec, batch_size, features, shard)
  return grain_pipeline.iterate(ds, data_config.num_threads, data_config.prefetch)
