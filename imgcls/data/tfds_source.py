"""TFDS datasets without TensorFlow: `tfds.data_source` over prepared array_record files.

Examples are addressed as `tfds:NAME/SPLIT/INDEX`, which `images.decode` reads through here.
"""

from __future__ import annotations

import functools
import os

import numpy as np

PREFIX = "tfds:"
_DATA_DIRS: dict[tuple[str, str], str] = {}  # Where each opened (name, split) lives.


@functools.lru_cache(maxsize=16)
def open_split(name: str, split: str, data_dir: str = ""):
  """The random-access source of one TFDS split (opened once per process)."""
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError("TFDS sources need tensorflow-datasets: pip install 'imgcls[tfds]'.") from e
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
  except Exception as e:  # TFDS raises several types for a dataset that is not there.
    where = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
    raise FileNotFoundError(
      f"TFDS dataset {name!r} (split {split!r}) is not prepared in {where}: {e}. Prepare it where you have "
      f"internet with `tfds build {name} --file_format=array_record` and point $TFDS_DATA_DIR or "
      "config.data.tfds_data_dir at it."
    ) from e


def uris_and_labels(name: str, split: str, data_dir: str = "") -> tuple[list[str], np.ndarray, list[str]]:
  """Addresses of every example of a split, their labels and the class names."""
  source = open_split(name, split, data_dir)
  label_feature = source.dataset_info.features["label"]
  labels = np.asarray([int(source[i]["label"]) for i in range(len(source))], np.int32)
  uris = [f"{PREFIX}{name}/{split}/{i}" for i in range(len(source))]
  _DATA_DIRS[(name, split)] = data_dir
  return uris, labels, list(label_feature.names)


def read(uri: str) -> np.ndarray:
  """HxWxC uint8 pixels of the example at `uri`."""
  name, split, index = uri.removeprefix(PREFIX).rsplit("/", 2)
  source = open_split(name, split, _DATA_DIRS.get((name, split), ""))
  return np.asarray(source[int(index)]["image"])
