"""Caches of decoded, resized pixels (before rescaling), like Keras's `dataset.cache()`.

`data.cache = "memory"` keeps them in the process; `"disk"` in a `.npy` file under
`data.cache_dir` (default `$IMGCLS_CACHE/pixels`), reused by later runs on the same files. The
cache key covers the file list, their sizes and modification times and the image spec, so a
changed file or size gets a new cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading

import numpy as np

_OPEN: dict[str, PixelCache] = {}
_LOCK = threading.Lock()


class PixelCache:
  """Float32 pixels of `count` images of one shape, filled as they are first read."""

  def __init__(self, count: int, shape: tuple[int, int, int], path: str | None = None):
    if path is None:
      self.pixels = np.zeros((count, *shape), np.float32)
      self.filled = np.zeros(count, np.bool_)
    else:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      exists = os.path.exists(path) and os.path.exists(path + ".filled.npy")
      mode = "r+" if exists else "w+"
      self.pixels = np.lib.format.open_memmap(path, mode=mode, dtype=np.float32, shape=(count, *shape))
      self.filled = np.lib.format.open_memmap(path + ".filled.npy", mode=mode, dtype=np.bool_, shape=(count,))

  def get(self, index: int) -> np.ndarray | None:
    return np.array(self.pixels[index]) if self.filled[index] else None

  def put(self, index: int, pixels: np.ndarray) -> None:
    self.pixels[index] = pixels
    self.filled[index] = True

  def fraction_filled(self) -> float:
    return float(np.mean(self.filled)) if len(self.filled) else 1.0


def cache_key(paths: list[str], spec_fields: dict) -> str:
  digest = hashlib.sha1(json.dumps(spec_fields, sort_keys=True).encode())
  for path in paths:
    try:
      info = os.stat(path)
      stamp = f"{info.st_size}:{info.st_mtime_ns}"
    except OSError:
      stamp = "?"
    digest.update(f"{path}\0{stamp}\n".encode())
  return digest.hexdigest()[:20]


def for_paths(paths: list[str], shape: tuple[int, int, int], mode: str, spec_fields: dict, directory: str = "") -> PixelCache:
  """The cache of these files with this spec (one per process and key)."""
  if mode not in ("memory", "disk"):
    raise ValueError(f"data.cache={mode!r} is not one of '', memory, disk.")
  key = f"{mode}:{cache_key(paths, spec_fields)}"
  with _LOCK:
    if key not in _OPEN:
      path = None
      if mode == "disk":
        from imgcls.data.builtin import cache_dir

        path = os.path.join(directory or os.path.join(cache_dir(), "pixels"), key.split(":")[1] + ".npy")
      _OPEN[key] = PixelCache(len(paths), shape, path)
    return _OPEN[key]
