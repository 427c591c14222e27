"""Datasets shipped by dependencies, written out once as class-per-folder image trees.

`config.data.dir = "builtin:digits"`: scikit-learn's 1797 8x8 handwritten digits as greyscale
PNGs under `$IMGCLS_CACHE` (default `~/.cache/imgcls`), so the demo goes through the same folder
pipeline as user data.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
from PIL import Image


def cache_dir() -> str:
  return os.environ.get("IMGCLS_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "imgcls"))


def materialize(name: str) -> str:
  """The folder of builtin dataset `name`, written on first use."""
  writers = {"digits": _write_digits}
  if name not in writers:
    raise ValueError(f"Unknown builtin dataset {name!r}; known: {', '.join(writers)}.")
  root = os.path.join(cache_dir(), name)
  if not os.path.exists(os.path.join(root, ".complete")):
    os.makedirs(cache_dir(), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir())
    writers[name](tmp)
    open(os.path.join(tmp, ".complete"), "w").close()
    try:
      os.rename(tmp, root)
    except OSError:  # Another process finished first.
      if not os.path.exists(os.path.join(root, ".complete")):
        raise
  return root


def _write_digits(root: str) -> None:
  from sklearn.datasets import load_digits

  digits = load_digits()
  pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  for i, (image, label) in enumerate(zip(pixels, digits.target)):
    folder = os.path.join(root, str(label))
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(image, mode="L").save(os.path.join(folder, f"digit_{i:04d}.png"))
