"""The one loop that runs a jitted function over a split: validation in training, eval, predict,
features and the backbone-feature cache all go through `predict_split`.

Batches come padded to one size (mask 0 on padding), so the function compiles once; with
several devices each batch is split over them, each process reading only its rows; with cached
features, those are read in place of the images.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import numpy as np

from imgcls import parallel
from imgcls.data import pipeline, sources
from imgcls.data.images import ImageSpec


def batch_size_for(data_config, dp: parallel.DataParallel | None = None) -> int:
  """The eval batch size (data.eval_batch_size, else data.batch_size), a multiple of `dp`'s devices."""
  batch_size = data_config.eval_batch_size or data_config.batch_size
  if dp is not None:
    batch_size = -(-batch_size // dp.devices) * dp.devices
  return batch_size


def predict_split(
  fn: Callable[[jax.Array], jax.Array],
  split: sources.Split,
  data_config,
  dp: parallel.DataParallel | None = None,
  features: np.ndarray | None = None,
) -> np.ndarray:
  """`fn(inputs)`'s outputs for every example of `split`, in its order, padding left out.

  `dp`: batches split over its devices (every process gets the whole output). `features`: per
  example arrays (cached backbone features) read in place of the images."""
  batch_size = batch_size_for(data_config, dp)
  shard = (jax.process_index(), dp.processes) if dp is not None else (0, 1)
  outputs = []
  for number, batch in enumerate(pipeline.eval_batches(split, data_config, batch_size, features, shard)):
    inputs = dp.global_batch(batch)["image"] if dp is not None else batch["image"]
    out = np.asarray(fn(inputs))  # The whole batch, on every process.
    outputs.append(out[: min(batch_size, len(split) - number * batch_size)])  # Padding is last.
  return np.concatenate(outputs)


def timed_predict(fn: Callable[[jax.Array], jax.Array], split: sources.Split, data_config) -> tuple[np.ndarray, dict]:
  """`predict_split` on one device after compiling `fn` on a batch of zeros: (outputs, timing:
  seconds, compile_seconds, images_per_s, batch_size, batches)."""
  batch_size = batch_size_for(data_config)
  spec = ImageSpec.from_config(data_config)
  start = time.perf_counter()
  # Batches come as numpy arrays: so does this one, so that later calls hit the same cache entry.
  jax.block_until_ready(fn(np.zeros((batch_size, *spec.image_size, spec.channels), np.float32)))
  compile_seconds = time.perf_counter() - start
  start = time.perf_counter()
  outputs = predict_split(fn, split, data_config)
  seconds = time.perf_counter() - start
  timing = {
    "seconds": seconds,
    "compile_seconds": compile_seconds,
    "images_per_s": len(split) / max(seconds, 1e-9),
    "batch_size": batch_size,
    "batches": -(-len(split) // batch_size),
  }
  return outputs, timing
