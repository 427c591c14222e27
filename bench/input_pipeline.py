"""Input-pipeline throughput: images/s decoded, resized and batched, by each way of reading.

  python bench/input_pipeline.py                       # ../shared/data: pollen 90x90, flowers17 224x224
  python bench/input_pipeline.py --epochs=5 --threads=8 --readers=grain,tf

Side by side in one process, on the same files: imgcls's grain backend (JPEG draft on and off),
imgcls's tf.data backend, and Keras's `image_dataset_from_directory` with `.prefetch(AUTOTUNE)`.
Every reader gets a warm-up epoch, then `--epochs` timed epochs taken in turns (reader A epoch 1,
reader B epoch 1, ...) so a busy machine slows all alike; images/s is the median over epochs.
Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from absl import app, flags

# imgcls keeps freed host memory in one malloc arena (imgcls/host_memory.py): a win for XLA's
# step buffers, but TensorFlow's input threads then contend for that arena (Keras's reader ran at
# 2300 instead of 5100 images/s on pollen). grain's speed does not change, so the readers are
# compared with glibc's defaults.
os.environ.setdefault("IMGCLS_KEEP_HOST_MEMORY", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from imgcls.data import augment, grain_pipeline, images, sources  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATASETS = {  # name: (folder under --data_root, (height, width))
  "pollen": ("pollen", (90, 90)),
  "flowers17": ("flowers17/train", (224, 224)),
}

_DATA_ROOT = flags.DEFINE_string("data_root", str(REPO.parent / "shared" / "data"), "Folder holding the datasets.")
_DATASETS = flags.DEFINE_list("datasets", list(DATASETS), "Datasets to read.")
_READERS = flags.DEFINE_list("readers", ["grain", "grain_no_draft", "tf", "keras"], "Readers to time.")
_EPOCHS = flags.DEFINE_integer("epochs", 3, "Timed epochs per reader (after one warm-up epoch); the median is reported.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Batch size.")
_THREADS = flags.DEFINE_integer("threads", 0, "Decoding threads (0: the machine's cores).")
_PREFETCH = flags.DEFINE_integer("prefetch", 8, "Batches prefetched.")
_AUGMENT = flags.DEFINE_string(
  "augment",
  "",
  "data.augment ops the grain readers also apply on the host, e.g. 'flip_lr|rotate(20)' "
  "(the default trains with them on the device, inside the jitted step, so they cost the pipeline nothing).",
)


def readers(split: sources.Split, root: str, size: tuple[int, int], threads: int) -> dict[str, Callable[[int], Iterable[dict]]]:
  """reader name -> function(epoch) returning that epoch's batches (dicts with "image")."""
  batch, prefetch, seed = _BATCH.value, _PREFETCH.value, 0

  host_augment = augment.parse(_AUGMENT.value) if _AUGMENT.value else None

  def grain(draft: bool):
    spec = images.ImageSpec(size, jpeg_draft=draft)
    return lambda epoch: grain_pipeline.iterate(
      grain_pipeline.train_dataset(split, spec, batch, seed, epoch, host_augment=host_augment), threads, prefetch
    )

  def tf_data(epoch: int):
    from imgcls.data import tf_pipeline

    return tf_pipeline.train_batches(split, images.ImageSpec(size), batch, seed, epoch, True, threads, prefetch)

  keras_ds = []

  def keras(epoch: int):
    del epoch  # The dataset reshuffles every time it is iterated.
    if not keras_ds:
      import tensorflow as tf

      ds = tf.keras.utils.image_dataset_from_directory(
        root, image_size=size, batch_size=batch, shuffle=True, seed=seed, interpolation="bilinear", verbose=False
      ).prefetch(tf.data.AUTOTUNE)
      options = tf.data.Options()
      options.threading.private_threadpool_size = threads
      keras_ds.append(ds.with_options(options))
    return ({"image": x, "label": y} for x, y in keras_ds[0].as_numpy_iterator())

  every = {"grain": grain(True), "grain_no_draft": grain(False), "tf": tf_data, "keras": keras}
  unknown = set(_READERS.value) - set(every)
  if unknown:
    raise SystemExit(f"Unknown readers {sorted(unknown)}; known: {', '.join(every)}.")
  return {name: every[name] for name in _READERS.value}


def read_epoch(batches: Iterable[dict]) -> int:
  return sum(len(batch["image"]) for batch in batches)


def bench_dataset(name: str, threads: int) -> dict:
  folder, size = DATASETS[name]
  root = os.path.join(_DATA_ROOT.value, folder)
  scan = sources.scan_folder(root)
  split = sources.Split(scan.paths, scan.labels, scan.class_names)
  runs = readers(split, root, size, threads)
  epoch_rates = {r: [] for r in runs}
  warmup = {}
  for reader, epoch_batches in runs.items():  # Warm-up: file cache, headers, tracing, compiling.
    start = time.perf_counter()
    read_epoch(epoch_batches(0))
    warmup[reader] = round(time.perf_counter() - start, 2)
  for epoch in range(1, _EPOCHS.value + 1):
    for reader, epoch_batches in runs.items():
      start = time.perf_counter()
      count = read_epoch(epoch_batches(epoch))
      epoch_rates[reader].append(round(count / (time.perf_counter() - start), 1))
  rate = {r: float(np.median(rates)) for r, rates in epoch_rates.items()}  # The median resists a busy moment.
  result = {
    "root": root,
    "images": len(split),
    "image_size": list(size),
    "batch_size": _BATCH.value,
    "timed_epochs": _EPOCHS.value,
    "images_per_s": rate,
    "epoch_images_per_s": epoch_rates,
    "warmup_s": warmup,
  }
  if "keras" in rate:
    for reader in ("grain", "tf"):
      if reader in rate:
        result[f"{reader}_over_keras"] = round(rate[reader] / rate["keras"], 2)
  if "grain" in rate and "grain_no_draft" in rate:
    result["grain_draft_speedup"] = round(rate["grain"] / rate["grain_no_draft"], 2)
  return result


def main(argv):
  del argv
  threads = _THREADS.value or os.cpu_count() or 1
  out = {
    "machine": {"cpu_count": os.cpu_count(), "threads": threads, "python": platform.python_version()},
    "augment": _AUGMENT.value,
    "datasets": {name: bench_dataset(name, threads) for name in _DATASETS.value},
  }
  print(json.dumps(out, indent=2))


if __name__ == "__main__":
  app.run(main)
