"""The order examples are read in: a split's records, each epoch's shuffle, batches, shards.

A record is (path, label, index into the split). Training epochs are shuffled from (seed, epoch),
so any epoch can be rebuilt and a resumed run reads the same batches as an uninterrupted one;
both pipelines (grain and tf.data) take their order from here.
"""

from __future__ import annotations

import numpy as np

from imgcls.data.sources import Split

Record = tuple[str, int, int]  # (path, label, index in the split)


def records(split: Split) -> list[Record]:
  """The (path, label, index) records of a split, in its order."""
  return [(p, int(l), i) for i, (p, l) in enumerate(zip(split.paths, split.labels))]


def epoch_seed(seed: int, epoch: int) -> int:
  """The shuffle seed of one epoch."""
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def epoch_records(split: Split, seed: int, epoch: int, shuffle: bool = True) -> list[Record]:
  """The (path, label, index) records of one training epoch in the order they are read."""
  ordered = records(split)
  if shuffle:
    ordered = [ordered[i] for i in np.random.default_rng(epoch_seed(seed, epoch)).permutation(len(ordered))]
  return ordered


def batches(ordered: list[Record], batch_size: int) -> list[list[Record]]:
  """Consecutive groups of `batch_size` records (the last one may be smaller)."""
  return [ordered[start : start + batch_size] for start in range(0, len(ordered), batch_size)]


def train_shard(ordered: list[Record], shard: tuple[int, int]) -> list[Record]:
  """Process `shard=(index, count)`'s share of an epoch: every process gets the same number of
  records (the epoch's last `len % count` are left out)."""
  index, count = shard
  if count == 1:
    return ordered
  return ordered[: len(ordered) // count * count][index::count]


def eval_shards(split: Split, batch_size: int, shard: tuple[int, int]) -> list[list[Record]]:
  """The split in file order as batches of `batch_size`, each cut to process `shard`'s rows
  (`batch_size / count` of them, its share of the padded batch)."""
  index, count = shard
  if batch_size % count:
    raise ValueError(f"An eval batch of {batch_size} does not split over {count} processes.")
  share = batch_size // count
  return [group[index * share : (index + 1) * share] for group in batches(records(split), batch_size)]


def num_batches(split: Split, batch_size: int) -> int:
  return -(-len(split) // batch_size)
