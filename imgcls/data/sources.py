"""Finding labelled images: class-per-folder trees, train/val/test layouts, Keras-style splits.

`find_splits(config.data, seed)` returns the train / val / test `Split`s of a run. Listing and
splitting follow Keras's `image_dataset_from_directory` (sorted class folders, files sorted per
folder, one shuffle with `np.random.RandomState(seed)`, the last `validation_split` fraction is
the validation subset), so the same seed puts the same files in the same subset.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from absl import logging

from imgcls.data import images

SPLIT_FOLDERS = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}


class DataError(ValueError):
  """A dataset that cannot be used as it is; the message says what to change."""


@dataclasses.dataclass
class Split:
  """The files of one subset, their integer labels and the class names the labels index."""

  paths: list[str]
  labels: np.ndarray
  class_names: list[str]
  name: str = "train"

  def __len__(self) -> int:
    return len(self.paths)

  def class_counts(self) -> np.ndarray:
    return np.bincount(self.labels, minlength=len(self.class_names))


@dataclasses.dataclass
class Scan:
  """What listing a class-per-folder tree found."""

  paths: list[str]
  labels: np.ndarray
  class_names: list[str]
  skipped: list[str]  # Files that are not images (by extension).


def list_class_folders(root: str) -> list[str]:
  return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))


def scan_folder(root: str, class_names: Sequence[str] = (), follow_links: bool = False, for_training: bool = True) -> Scan:
  """Lists the images of a class-per-folder tree in Keras's order (not shuffled).

  Fails with a clear message for a missing or empty folder, and (`for_training`) a class folder
  without images or fewer than two classes. Non-image files are skipped and returned in `skipped`.
  """
  if not os.path.exists(root):
    raise DataError(f"Data folder {root!r} does not exist. Set config.data.dir to a folder of class subfolders.")
  if not os.path.isdir(root):
    raise DataError(f"Data path {root!r} is not a folder. Set config.data.dir to a folder of class subfolders.")
  found = list_class_folders(root)
  if not found:
    loose = [f for f in os.listdir(root) if images.is_image_file(f)]
    extra = f" It holds {len(loose)} loose images: put each class's images in its own subfolder." if loose else ""
    raise DataError(f"Data folder {root!r} has no class subfolders (expected {root}/<class>/<image>).{extra}")
  if class_names:
    missing = [c for c in class_names if c not in found]
    if missing:
      raise DataError(f"config.data.class_names names {missing}, which are not subfolders of {root!r} (found: {found}).")
    found = list(class_names)
  paths, labels, skipped, empty = [], [], [], []
  # Folders already walked: a link back up (or to another class) is not walked again.
  seen = {os.path.realpath(root), *(os.path.realpath(os.path.join(root, name)) for name in found)}
  for index, name in enumerate(found):
    class_paths, class_skipped = _walk_images(os.path.join(root, name), follow_links, seen)
    skipped += class_skipped
    if not class_paths:
      empty.append(name)
    paths += class_paths
    labels += [index] * len(class_paths)
  if empty and for_training:
    raise DataError(
      f"Class folder(s) {empty} in {root!r} hold no images ({', '.join(images.IMAGE_EXTENSIONS)}). "
      "Add images, remove the folder, or list the classes to use in config.data.class_names."
    )
  if not paths:
    raise DataError(f"Data folder {root!r} holds no images ({', '.join(images.IMAGE_EXTENSIONS)}) in its class folders {found}.")
  if len(found) < 2 and for_training:
    raise DataError(f"Data folder {root!r} has a single class ({found[0]!r}); a classifier needs at least two.")
  return Scan(paths, np.asarray(labels, np.int32), list(found), skipped)


def _walk_images(directory: str, follow_links: bool, seen: set[str]) -> tuple[list[str], list[str]]:
  """Image files under `directory`, in Keras's order: folders sorted by path, files by name.
  Folders in `seen` (real paths, added to as it walks) are not entered: a link loop, or a second
  link to one folder, adds nothing."""
  found, skipped = [], []
  for dirpath, _, filenames in sorted(_walk_once(directory, follow_links, seen), key=lambda w: w[0]):
    for name in sorted(filenames):
      if name.startswith("."):  # Hidden files (.DS_Store, ._x.jpg) are not data.
        continue
      path = os.path.join(dirpath, name)
      (found if images.is_image_file(name) else skipped).append(path)
  return found, skipped


def _walk_once(directory: str, follow_links: bool, seen: set[str]):
  """os.walk without hidden folders, never entering a real folder in `seen`."""
  for dirpath, dirnames, filenames in os.walk(directory, followlinks=follow_links):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and os.path.realpath(os.path.join(dirpath, d)) not in seen)
    seen.update(os.path.realpath(os.path.join(dirpath, d)) for d in dirnames)
    yield dirpath, dirnames, filenames


def holdout_split(scan: Scan, validation_split: float, seed: int, order: str = "shuffle") -> tuple[Split, Split | None]:
  """Holds out the last `validation_split` fraction, after one shuffle with `seed` as Keras does
  (`order="shuffle"`), or of the files/rows as listed (`order="ordered"`); or the first fraction
  of each class's files as listed (`order="per_class"`, as Keras's ImageDataGenerator)."""
  paths = list(scan.paths)
  labels = scan.labels.copy()
  if order == "shuffle":
    np.random.RandomState(seed).shuffle(paths)
    np.random.RandomState(seed).shuffle(labels)
  held = np.zeros(len(paths), bool)
  if order == "per_class":
    for label in np.unique(labels):
      rows = np.flatnonzero(labels == label)
      held[rows[: int(validation_split * len(rows))]] = True
  elif int(validation_split * len(paths)):
    held[-int(validation_split * len(paths)) :] = True
  if not held.any():
    if validation_split:
      logging.warning(
        "validation_split=%s of %d images holds out none: the run has no validation subset.", validation_split, len(paths)
      )
    return Split(paths, labels, scan.class_names, "train"), None
  train, val = np.flatnonzero(~held), np.flatnonzero(held)
  return (
    Split([paths[i] for i in train], labels[train], scan.class_names, "train"),
    Split([paths[i] for i in val], labels[val], scan.class_names, "val"),
  )


def find_bad_images(paths: Sequence[str], color_mode: str = "rgb", num_threads: int = 8) -> dict[str, str]:
  """Decodes every image (JPEGs at reduced size) and returns {path: reason} for those that fail."""

  def check(path: str) -> str | None:
    try:
      images.decode(path, color_mode, draft_size=(64, 64))
    except images.BadImageError as e:
      return str(e).removeprefix(f"{path}: ")
    return None

  with ThreadPoolExecutor(num_threads or os.cpu_count() or 1) as pool:
    reasons = list(pool.map(check, paths))
  return {p: r for p, r in zip(paths, reasons) if r is not None}


def without(split: Split, bad: dict[str, str]) -> Split:
  """The split less the `bad` paths."""
  keep = np.asarray([p not in bad for p in split.paths], bool)
  return Split([p for p, k in zip(split.paths, keep) if k], split.labels[keep], split.class_names, split.name)


def scan_index(index: str, data_config, class_names: Sequence[str] = ()) -> Scan:
  """Images listed in a CSV or Excel file: a path column plus a label column or one-hot columns."""
  import pandas as pd

  if not os.path.isfile(index):
    raise DataError(f"Index file {index!r} does not exist.")
  try:
    table = pd.read_excel(index) if index.lower().endswith((".xlsx", ".xls")) else pd.read_csv(index)
  except Exception as e:  # pandas raises many types for unreadable files.
    raise DataError(f"Cannot read index {index!r}: {e}") from e
  if table.empty:
    raise DataError(f"Index {index!r} has no rows.")
  columns = list(table.columns)
  one_hot = list(data_config.class_columns)
  needed = [data_config.path_column] + (one_hot or [data_config.label_column])
  missing = [c for c in needed if c not in columns]
  if missing:
    raise DataError(
      f"Index {index!r} has no column(s) {missing}; its columns are {columns}. Set data.path_column and data.label_column or data.class_columns."
    )
  if one_hot:
    values = table[one_hot].to_numpy()
    bad_rows = [i + 2 for i, row in enumerate(values) if sorted(row.tolist()) != [0] * (len(one_hot) - 1) + [1]]
    if bad_rows:
      raise DataError(
        f"Rows {bad_rows[:10]} of {index!r} do not have exactly one 1 in {one_hot} (row numbers as in a spreadsheet)."
      )
    names, labels = one_hot, values.argmax(axis=1)
  else:
    raw = table[data_config.label_column]
    if raw.isna().any():
      raise DataError(
        f"Rows {[int(i) + 2 for i in np.flatnonzero(raw.isna())][:10]} of {index!r} have no {data_config.label_column!r}."
      )
    if pd.api.types.is_integer_dtype(raw):
      found = [str(v) for v in sorted(set(raw.tolist()))]
    else:
      found = sorted(set(raw.astype(str)))
    names = list(class_names) or found
    unknown = sorted(set(raw.astype(str)) - set(names))
    if unknown:
      raise DataError(f"Labels {unknown} in {index!r} are not among the classes {names}.")
    labels = np.asarray([names.index(v) for v in raw.astype(str)])
  column = table[data_config.path_column]
  if column.isna().any():
    raise DataError(
      f"Rows {[int(i) + 2 for i in np.flatnonzero(column.isna())][:10]} of {index!r} have no {data_config.path_column!r}."
    )
  root = data_config.dir or os.path.dirname(os.path.abspath(index))
  paths = [p if os.path.isabs(p) else os.path.join(root, p) for p in column.astype(str)]
  repeated = sorted(p for p, n in collections.Counter(paths).items() if n > 1)
  if repeated:
    raise DataError(
      f"{len(repeated)} image(s) are listed more than once in {index!r} (they would land in several splits), e.g. {repeated[:3]}."
    )
  if len(names) < 2:
    raise DataError(f"Index {index!r} has a single class ({names}); a classifier needs at least two.")
  return Scan(paths, np.asarray(labels, np.int32), list(names), [])


def scan_tfds(name: str, split: str, data_dir: str) -> Scan:
  from imgcls.data import tfds_source

  uris, labels, names = tfds_source.uris_and_labels(name, split, data_dir)
  return Scan(uris, labels, names, [])


def _resolve_root(data_dir: str) -> str:
  if data_dir.startswith("builtin:"):
    from imgcls.data import builtin  # Writes the tree on first use.

    return builtin.materialize(data_dir.removeprefix("builtin:"))
  if not data_dir:
    raise DataError("config.data.dir is empty: set it to a folder of class subfolders (or with train/ val/ test/).")
  return os.path.expanduser(data_dir)


def _split_folder(root: str, split: str) -> str | None:
  for name in SPLIT_FOLDERS[split]:
    path = os.path.join(root, name)
    if os.path.isdir(path):
      return path
  return None


def _scans(data_config) -> tuple[str, dict[str, Scan]]:
  """Where the data is (for messages) and what each of its subsets lists, before any split."""
  class_names = list(data_config.class_names)
  scans: dict[str, Scan] = {}
  if data_config.dir.startswith("tfds:"):
    name = data_config.dir.removeprefix("tfds:")
    for split, key in (("train", "tfds_split"), ("val", "tfds_val_split"), ("test", "tfds_test_split")):
      if data_config[key]:
        scans[split] = scan_tfds(name, data_config[key], data_config.tfds_data_dir)
    return data_config.dir, scans
  if data_config.index:
    for split, key in (("train", "index"), ("val", "val_index"), ("test", "test_index")):
      if data_config[key]:
        given = class_names or (scans["train"].class_names if scans else [])
        scans[split] = scan_index(data_config[key], data_config, given)
    return data_config.index, scans
  root = _resolve_root(data_config.dir)
  train_root = _split_folder(root, "train") if os.path.isdir(root) else None
  if train_root is None:
    return root, {"train": scan_folder(root, class_names, data_config.follow_links)}
  scans["train"] = scan_folder(train_root, class_names, data_config.follow_links)
  for split in ("val", "test"):
    folder = _split_folder(root, split)
    if folder is not None:
      scans[split] = scan_folder(folder, class_names, data_config.follow_links)
  return root, scans


def find_splits(data_config, seed: int) -> dict[str, Split]:
  """The run's subsets: {"train": ..., "val": ... (if any), "test": ... (if any)}.

  The data is a class-per-folder tree `data_config.dir`, split with `validation_split` and
  `seed`; or a folder with `train/` and optionally `val/` and `test/` trees; or CSV/Excel
  indexes (`data_config.index`, `val_index`, `test_index`); or a TFDS dataset (`tfds:NAME`).
  Without a validation subset, the training one is split if `validation_split` > 0, else the
  test subset is used for validation.
  """
  root, scans = _scans(data_config)
  for split, scan in scans.items():
    if scan.class_names != scans["train"].class_names:
      raise DataError(
        f"The {split} subset's classes {scan.class_names} differ from train's {scans['train'].class_names}. "
        "Make the class folders (or labels) match or set config.data.class_names."
      )
  skipped = [p for s in scans.values() for p in s.skipped]
  if skipped:
    shown = ", ".join(os.path.relpath(p, root) for p in skipped[:5])
    more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    logging.warning("Skipped %d non-image file(s) under %s: %s%s.", len(skipped), root, shown, more)

  found = scans["train"].class_names
  if data_config.label_mode == "binary" and len(found) != 2:  # Before decoding every image to check it.
    raise DataError(
      f"label_mode='binary' needs exactly 2 classes, found {len(found)}: {found}. Use label_mode='int' or 'categorical'."
    )
  splits: dict[str, Split] = {}
  holdout = data_config.validation_split if "val" not in scans else 0.0
  train, val = holdout_split(scans["train"], holdout, seed, data_config.split_order)
  splits["train"] = train
  if "val" in scans:
    splits["val"] = Split(scans["val"].paths, scans["val"].labels, scans["val"].class_names, "val")
  elif val is not None:
    splits["val"] = val
  if "test" in scans:
    splits["test"] = Split(scans["test"].paths, scans["test"].labels, scans["test"].class_names, "test")
    if "val" not in splits:
      logging.info("No validation subset and validation_split=0: validating on the test subset.")
      splits["val"] = dataclasses.replace(splits["test"], name="val")

  files = sorted({p for s in splits.values() for p in s.paths if not p.startswith("tfds:")})
  bad = {p: "file not found" for p in files if not os.path.isfile(p)}
  bad.update(find_bad_images([p for p in files if p not in bad], data_config.color_mode, data_config.num_threads))
  if bad:
    listing = "\n".join(f"  {p}: {r}" for p, r in sorted(bad.items()))
    if not data_config.skip_bad_images:
      raise DataError(
        f"{len(bad)} image file(s) cannot be decoded:\n{listing}\n"
        "Fix or remove them, or set config.data.skip_bad_images=True to train without them."
      )
    logging.warning("Skipping %d image file(s) that cannot be decoded:\n%s", len(bad), listing)
    splits = {name: without(s, bad) for name, s in splits.items()}
  for name, split in splits.items():
    if len(split) == 0:
      raise DataError(f"The {name} subset of {root!r} is empty.")
  return splits
