"""grain pipelines: a `Split` becomes batches of {"image", "label", "mask", "index"} numpy arrays.

The records come in `order`'s order; the position inside an epoch is the grain iterator's state,
so a resumed run sees exactly the batches an uninterrupted one would. Evaluation batches are
padded to the batch size, with `mask` 0 on padding, so every eval batch has one shape and nothing
recompiles. Pixels come from `images.load_image`, optionally kept in a `cache.PixelCache`.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import numpy as np

from imgcls.data import augment, images, order, pixel_cache
from imgcls.data.images import ImageSpec
from imgcls.data.order import Record
from imgcls.data.sources import Split


class _LoadBatch(grain.transforms.Map):
  """The records (path, label, index) of one batch -> the batch, its pixels decoded, resized and
  rescaled. One call per batch, not per image: grain's per-element overhead is paid once per batch."""

  def __init__(self, spec: ImageSpec, split: Split):
    self.spec = spec
    self.cache = None
    if spec.cache:
      fields = {
        "size": list(spec.image_size),
        "color": spec.color_mode,
        "interpolation": spec.interpolation,
        "jpeg_draft": spec.jpeg_draft,
      }
      shape = (*spec.image_size, spec.channels)
      self.cache = pixel_cache.for_paths(split.paths, shape, spec.cache, fields, spec.cache_dir)

  def _pixels(self, path: str, index: int) -> np.ndarray:
    pixels = self.cache.get(index) if self.cache is not None else None
    if pixels is None:
      pixels = images.load_image(path, self.spec)
      if self.cache is not None:
        self.cache.put(index, pixels)
    return pixels

  def map(self, batch: list[Record]) -> dict[str, np.ndarray]:
    pixels = np.empty((len(batch), *self.spec.image_size, self.spec.channels), np.float32)
    for row, (path, _, index) in enumerate(batch):
      pixels[row] = self._pixels(path, index)
    if self.spec.rescale != 1.0:
      pixels *= np.float32(self.spec.rescale)
    return {"image": pixels, **_batch_fields(batch)}


class _LookupBatch(grain.transforms.Map):
  """The records (path, label, index) of one batch -> the batch, its "image" `features[index]`
  (cached backbone features)."""

  def __init__(self, features: np.ndarray):
    self.features = features

  def map(self, batch: list[Record]) -> dict[str, np.ndarray]:
    return {"image": self.features[[index for _, _, index in batch]], **_batch_fields(batch)}


def _batch_fields(batch: list[Record]) -> dict[str, np.ndarray]:
  return {
    "label": np.array([label for _, label, _ in batch], np.int32),
    "mask": np.ones(len(batch), np.float32),
    "index": np.array([index for _, _, index in batch], np.int32),
  }


def _load_batches(groups: list[list[Record]], spec: ImageSpec, split: Split, features: np.ndarray | None) -> grain.MapDataset:
  """Records grouped into batches, in the order they are read -> batches of examples.

  The records are grouped before grain sees them, so grain handles one element per batch."""
  loader = _LoadBatch(spec, split) if features is None else _LookupBatch(features)
  return grain.MapDataset.source(groups).map(loader)


class _HostAugment(grain.transforms.RandomMap):
  """Augments a batch on the host, each example with its own generator seeded from the one grain
  seeds for the batch (by draws, not `spawn`: grain reuses its generator between batches)."""

  def __init__(self, aug: augment.Augment, pixel_max: float):
    self.aug, self.pixel_max = aug, pixel_max

  def random_map(self, batch: dict, rng: np.random.Generator) -> dict:
    pixels = batch["image"].copy()
    for row, example_seed in enumerate(rng.integers(2**63, size=len(pixels))):
      pixels[row] = augment.apply_host(self.aug, pixels[row], np.random.default_rng(example_seed), self.pixel_max)
    return {**batch, "image": pixels}


def train_dataset(
  split: Split,
  spec: ImageSpec,
  batch_size: int,
  seed: int,
  epoch: int,
  shuffle: bool = True,
  host_augment: augment.Augment | None = None,
  shard: tuple[int, int] = (0, 1),
  features: np.ndarray | None = None,
) -> grain.MapDataset:
  """One epoch of training batches (the last one may be smaller), shuffled by (seed, epoch),
  optionally augmented on the host, deterministically per (seed, epoch, example).

  `shard=(index, count)`: this host's share of every epoch (`jax.process_index/count`); every
  host gets the same number of examples (the epoch's last `len % count` are left out).
  `features`: per-example arrays that replace the images (cached features), indexed like the split.
  """
  ordered = order.train_shard(order.epoch_records(split, seed, epoch, shuffle), shard)
  ds = _load_batches(order.batches(ordered, batch_size), spec, split, features)
  if host_augment is not None and host_augment.enabled:
    ds = ds.random_map(_HostAugment(host_augment, 255.0 * spec.rescale), seed=order.epoch_seed(seed + 1, epoch))
  return ds


class _Pad(grain.transforms.Map):
  """Pads a batch to `batch_size` rows with zeros (mask 0)."""

  def __init__(self, batch_size: int):
    self.batch_size = batch_size

  def map(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    missing = self.batch_size - len(batch["mask"])
    if missing <= 0:
      return batch
    return {k: np.concatenate([v, np.zeros((missing,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}


def eval_dataset(
  split: Split, spec: ImageSpec, batch_size: int, features: np.ndarray | None = None, shard: tuple[int, int] = (0, 1)
) -> grain.MapDataset:
  """Batches of a split in file order, each padded to `batch_size` (`features`: as `train_dataset`).

  `shard=(index, count)`: this host's rows of every batch, `batch_size / count` of them (its
  share of the padded batch), so each host reads only the images it evaluates.
  """
  return _load_batches(order.eval_shards(split, batch_size, shard), spec, split, features).map(_Pad(batch_size // shard[1]))


def iterate(ds: grain.MapDataset, num_threads: int, prefetch: int, state: dict[str, Any] | None = None) -> grain.DatasetIterator:
  """An iterator over `ds` decoding with `num_threads` threads (0: one per CPU core), optionally
  resumed from `state`."""
  options = grain.ReadOptions(num_threads=num_threads or os.cpu_count() or 1, prefetch_buffer_size=prefetch)
  iterator = iter(ds.to_iter_dataset(options))
  if state is not None:
    iterator.set_state(state)
  return iterator
