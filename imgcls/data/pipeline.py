"""grain pipelines: a `Split` becomes batches of {"image", "label", "mask", "index"} numpy arrays.

Training batches are reshuffled every epoch from (seed, epoch), so any epoch can be rebuilt, and
the position inside an epoch is the grain iterator's state: a resumed run sees exactly the
batches an uninterrupted one would. Evaluation batches are padded to the batch size, with
`mask` 0 on padding, so every eval batch has one shape and nothing recompiles.

`train_batches` and `eval_batches` are what the train loop calls: they read with the backend
`data.backend` names, grain here or tf.data (`tf_pipeline`, imported only when asked for), and
both give the same batches in the same order.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import grain
import numpy as np

from imgcls.config import TF_MISSING
from imgcls.data import augment, images
from imgcls.data import cache as pixel_cache
from imgcls.data.sources import Split


@dataclasses.dataclass(frozen=True)
class ImageSpec:
  """How every image is read: size (height, width), colour mode, resize method, pixel scale.

  `jpeg_draft` lets JPEGs decode at a reduced size (a power of two, still at least `image_size`).
  """

  image_size: tuple[int, int]
  color_mode: str = "rgb"
  interpolation: str = "bilinear"
  rescale: float = 1.0
  cache: str = ""  # "", memory or disk: keep decoded, resized pixels.
  cache_dir: str = ""
  jpeg_draft: bool = True

  @classmethod
  def from_config(cls, data_config) -> ImageSpec:
    return cls(
      tuple(data_config.image_size), data_config.color_mode, data_config.interpolation, data_config.rescale,
      data_config.cache, data_config.cache_dir, data_config.jpeg_draft,
    )

  @property
  def channels(self) -> int:
    return 1 if self.color_mode == "grayscale" else 3


class _LoadBatch(grain.transforms.Map):
  """The records (path, label, index) of one batch -> the batch, its pixels decoded, resized and
  rescaled. One call per batch, not per image: grain's per-element overhead is paid once per batch."""

  def __init__(self, spec: ImageSpec, split: Split):
    self.spec = spec
    self.cache = None
    if spec.cache:
      fields = {"size": list(spec.image_size), "color": spec.color_mode, "interpolation": spec.interpolation,
                "jpeg_draft": spec.jpeg_draft}
      shape = (*spec.image_size, spec.channels)
      self.cache = pixel_cache.for_paths(split.paths, shape, spec.cache, fields, spec.cache_dir)

  def _pixels(self, path: str, index: int) -> np.ndarray:
    pixels = self.cache.get(index) if self.cache is not None else None
    if pixels is None:
      draft_size = self.spec.image_size if self.spec.jpeg_draft else None
      pixels = images.decode(path, self.spec.color_mode, draft_size=draft_size)
      pixels = images.resize(pixels, self.spec.image_size, self.spec.interpolation)
      if self.cache is not None:
        self.cache.put(index, pixels)
    return pixels

  def map(self, batch: list[tuple[str, int, int]]) -> dict[str, np.ndarray]:
    pixels = np.empty((len(batch), *self.spec.image_size, self.spec.channels), np.float32)
    for row, (path, _, index) in enumerate(batch):
      pixels[row] = self._pixels(path, index)
    if self.spec.rescale != 1.0:
      pixels *= np.float32(self.spec.rescale)
    return {"image": pixels, **_batch_fields(batch)}


class _LookupBatch(grain.transforms.Map):
  """The records (path, label, index) of one batch -> the batch, its "image" `rows[index]`
  (cached backbone features)."""

  def __init__(self, rows: np.ndarray):
    self.rows = rows

  def map(self, batch: list[tuple[str, int, int]]) -> dict[str, np.ndarray]:
    return {"image": self.rows[[index for _, _, index in batch]], **_batch_fields(batch)}


def _batch_fields(batch: list[tuple[str, int, int]]) -> dict[str, np.ndarray]:
  return {
    "label": np.array([label for _, label, _ in batch], np.int32),
    "mask": np.ones(len(batch), np.float32),
    "index": np.array([index for _, _, index in batch], np.int32),
  }


def _load_batches(
  groups: list[list[tuple[str, int, int]]], spec: ImageSpec, split: Split, rows: np.ndarray | None
) -> grain.MapDataset:
  """Records grouped into batches, in the order they are read -> batches of examples.

  The records are grouped before grain sees them, so grain handles one element per batch."""
  loader = _LoadBatch(spec, split) if rows is None else _LookupBatch(rows)
  return grain.MapDataset.source(groups).map(loader)


def _groups(ordered: list[tuple[str, int, int]], batch_size: int) -> list[list[tuple[str, int, int]]]:
  return [ordered[start : start + batch_size] for start in range(0, len(ordered), batch_size)]


def records(split: Split) -> list[tuple[str, int, int]]:
  """The (path, label, index) records of a split, in its order."""
  return [(p, int(l), i) for i, (p, l) in enumerate(zip(split.paths, split.labels))]


def epoch_seed(seed: int, epoch: int) -> int:
  """The shuffle seed of one epoch."""
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def epoch_records(split: Split, seed: int, epoch: int, shuffle: bool = True) -> list[tuple[str, int, int]]:
  """The (path, label, index) records of one training epoch in the order they are read."""
  ordered = records(split)
  if shuffle:
    ordered = [ordered[i] for i in np.random.default_rng(epoch_seed(seed, epoch)).permutation(len(ordered))]
  return ordered


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
  split: Split, spec: ImageSpec, batch_size: int, seed: int, epoch: int, shuffle: bool = True,
  host_augment: augment.Augment | None = None, shard: tuple[int, int] = (0, 1), rows: np.ndarray | None = None,
) -> grain.MapDataset:
  """One epoch of training batches (the last one may be smaller), shuffled by (seed, epoch),
  optionally augmented on the host, deterministically per (seed, epoch, example).

  `shard=(index, count)`: this host's share of every epoch (`jax.process_index/count`); every
  host gets the same number of examples (the epoch's last `len % count` are left out).
  `rows`: per-example arrays that replace the images (cached features), indexed like the split.
  """
  ordered = epoch_records(split, seed, epoch, shuffle)
  index, count = shard
  if count > 1:
    ordered = ordered[: len(ordered) // count * count][index::count]
  ds = _load_batches(_groups(ordered, batch_size), spec, split, rows)
  if host_augment is not None and host_augment.enabled:
    ds = ds.random_map(_HostAugment(host_augment, 255.0 * spec.rescale), seed=epoch_seed(seed + 1, epoch))
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
  split: Split, spec: ImageSpec, batch_size: int, rows: np.ndarray | None = None, shard: tuple[int, int] = (0, 1)
) -> grain.MapDataset:
  """Batches of a split in file order, each padded to `batch_size` (`rows`: as `train_dataset`).

  `shard=(index, count)`: this host's rows of every batch, `batch_size / count` of them (its
  share of the padded batch), so each host reads only the images it evaluates.
  """
  index, count = shard
  if batch_size % count:
    raise ValueError(f"An eval batch of {batch_size} does not split over {count} processes.")
  share = batch_size // count
  groups = [group[index * share : (index + 1) * share] for group in _groups(records(split), batch_size)]
  return _load_batches(groups, spec, split, rows).map(_Pad(share))


def iterate(ds: grain.MapDataset, num_threads: int, prefetch: int, state: dict[str, Any] | None = None) -> grain.DatasetIterator:
  """An iterator over `ds` decoding with `num_threads` threads (0: one per CPU core), optionally
  resumed from `state`."""
  options = grain.ReadOptions(num_threads=num_threads or os.cpu_count() or 1, prefetch_buffer_size=prefetch)
  iterator = iter(ds.to_iter_dataset(options))
  if state is not None:
    iterator.set_state(state)
  return iterator


def num_batches(split: Split, batch_size: int) -> int:
  return -(-len(split) // batch_size)


def _tf_pipeline():
  """The tf.data backend module; fails saying how to install TensorFlow if it is missing."""
  try:
    from imgcls.data import tf_pipeline
  except ModuleNotFoundError as e:
    if e.name is None or e.name.split(".")[0] != "tensorflow":
      raise
    raise ModuleNotFoundError(TF_MISSING, name=e.name) from e
  return tf_pipeline


def train_batches(
  split: Split, data_config, seed: int, epoch: int, state: dict[str, Any] | None = None, *,
  batch_size: int | None = None, shard: tuple[int, int] = (0, 1), host_augment: augment.Augment | None = None,
  rows: np.ndarray | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """Epoch `epoch` of training batches from `data_config.backend`, resumed from `state` if given.

  The iterator's `get_state()` is `{"next_index": batches read}`, for either backend. With
  `rows` (cached features in place of the images) grain reads them, whatever the backend.
  """
  spec = ImageSpec.from_config(data_config)
  batch_size = batch_size or data_config.batch_size
  threads, prefetch = data_config.num_threads, data_config.prefetch
  if data_config.backend == "tf" and rows is None:
    if shard[1] > 1 or (host_augment is not None and host_augment.enabled):
      raise ValueError("data.backend='tf' reads for one process without host augmentation; use the grain backend.")
    return _tf_pipeline().train_batches(split, spec, batch_size, seed, epoch, data_config.shuffle, threads, prefetch, state)
  ds = train_dataset(split, spec, batch_size, seed, epoch, data_config.shuffle, host_augment, shard, rows)
  return iterate(ds, threads, prefetch, state)


def eval_batches(
  split: Split, data_config, batch_size: int | None = None, rows: np.ndarray | None = None,
  shard: tuple[int, int] = (0, 1),
) -> Iterator[dict[str, np.ndarray]]:
  """All of `split` as padded batches, with the config's backend, image spec and threads
  (`rows`: cached features in place of the images, as in `train_batches`; `shard`: this host's
  rows of each batch, as in `eval_dataset`)."""
  batch_size = batch_size or data_config.eval_batch_size or data_config.batch_size
  spec = ImageSpec.from_config(data_config)
  if data_config.backend == "tf" and rows is None:
    if shard[1] > 1:
      raise ValueError("data.backend='tf' reads for one process; use the grain backend.")
    return _tf_pipeline().eval_batches(split, spec, batch_size, data_config.num_threads, data_config.prefetch)
  return iterate(eval_dataset(split, spec, batch_size, rows, shard), data_config.num_threads, data_config.prefetch)
