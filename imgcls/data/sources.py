"""Finding labelled images: class-per-folder trees, train/val/test layouts, Keras-style splits.

`find_splits(config.data, seed)` returns the train / val / test `Split`s of a run. Listing and
splitting follow Keras's `image_dataset_from_directory` (sorted class folders, files sorted per
folder, one shuffle with `np.random.RandomState(seed)`, the last `validation_split` fraction is
the validation subset), so the same seed puts the same files in the same subset.
"""

from __future__ import annotations

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


def scan_folder(root: str, class_names: Sequence[str] = (), follow_links: bool = False) -> Scan:
  """Lists the images of a class-per-folder tree in Keras's order (not shuffled).

  Fails with a clear message for a missing or empty folder, a class folder without images,
  or fewer than two classes. Non-image files are skipped and returned in `skipped`.
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
  for index, name in enumerate(found):
    class_paths, class_skipped = _walk_images(os.path.join(root, name), follow_links)
    skipped += class_skipped
    if not class_paths:
      empty.append(name)
    paths += class_paths
    labels += [index] * len(class_paths)
  if empty:
    raise DataError(
      f"Class folder(s) {empty} in {root!r} hold no images ({', '.join(images.IMAGE_EXTENSIONS)}). "
      "Add images, remove the folder, or list the classes to use in config.data.class_names."
    )
  if len(found) < 2:
    raise DataError(f"Data folder {root!r} has a single class ({found[0]!r}); a classifier needs at least two.")
  return Scan(paths, np.asarray(labels, np.int32), list(found), skipped)


def _walk_images(directory: str, follow_links: bool) -> tuple[list[str], list[str]]:
  """Image files under `directory`, in Keras's order: folders sorted by path, files by name."""
  found, skipped = [], []
  for dirpath, dirnames, filenames in sorted(os.walk(directory, followlinks=follow_links), key=lambda w: w[0]):
    dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    for name in sorted(filenames):
      if name.startswith("."):  # Hidden files (.DS_Store, ._x.jpg) are not data.
        continue
      path = os.path.join(dirpath, name)
      (found if images.is_image_file(name) else skipped).append(path)
  return found, skipped


def keras_split(scan: Scan, validation_split: float, seed: int) -> tuple[Split, Split | None]:
  """Shuffles once with `seed` and holds out the last `validation_split` fraction, as Keras does."""
  paths = list(scan.paths)
  labels = scan.labels.copy()
  np.random.RandomState(seed).shuffle(paths)
  np.random.RandomState(seed).shuffle(labels)
  num_val = int(validation_split * len(paths))
  if not validation_split or num_val == 0:
    return Split(paths, labels, scan.class_names, "train"), None
  train = Split(paths[:-num_val], labels[:-num_val], scan.class_names, "train")
  val = Split(paths[-num_val:], labels[-num_val:], scan.class_names, "val")
  return train, val


def find_bad_images(paths: Sequence[str], color_mode: str = "rgb", num_threads: int = 8) -> dict[str, str]:
  """Decodes every image (JPEGs at reduced size) and returns {path: reason} for those that fail."""

  def check(path: str) -> str | None:
    try:
      images.decode(path, color_mode, draft_size=(64, 64))
    except images.BadImageError as e:
      return str(e).removeprefix(f"{path}: ")
    return None

  with ThreadPoolExecutor(max(1, num_threads)) as pool:
    reasons = list(pool.map(check, paths))
  return {p: r for p, r in zip(paths, reasons) if r is not None}


def without(split: Split, bad: dict[str, str]) -> Split:
  """The split less the `bad` paths."""
  keep = np.asarray([p not in bad for p in split.paths], bool)
  return Split([p for p, k in zip(split.paths, keep) if k], split.labels[keep], split.class_names, split.name)


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


def find_splits(data_config, seed: int) -> dict[str, Split]:
  """The run's subsets: {"train": ..., "val": ... (if any), "test": ... (if any)}.

  `data_config.dir` is either one class-per-folder tree, split with `validation_split` and
  `seed`, or a folder with `train/` and optionally `val/` and `test/` trees. Without `val/`, the
  train tree is split if `validation_split` > 0, else `test/` is used for validation.
  """
  root = _resolve_root(data_config.dir)
  class_names = list(data_config.class_names)
  follow = data_config.follow_links
  train_root = _split_folder(root, "train") if os.path.isdir(root) else None
  scans: dict[str, Scan] = {}
  if train_root is None:
    scans["train"] = scan_folder(root, class_names, follow)
  else:
    scans["train"] = scan_folder(train_root, class_names, follow)
    for split in ("val", "test"):
      folder = _split_folder(root, split)
      if folder is not None:
        scans[split] = scan_folder(folder, class_names, follow)
    for split, scan in scans.items():
      if scan.class_names != scans["train"].class_names:
        raise DataError(
          f"The {split} folder's classes {scan.class_names} differ from train's {scans['train'].class_names}. "
          "Make the class folders match or set config.data.class_names."
        )
  skipped = [p for s in scans.values() for p in s.skipped]
  if skipped:
    shown = ", ".join(os.path.relpath(p, root) for p in skipped[:5])
    more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    logging.warning("Skipped %d non-image file(s) under %s: %s%s.", len(skipped), root, shown, more)

  splits: dict[str, Split] = {}
  train, val = keras_split(scans["train"], data_config.validation_split if "val" not in scans else 0.0, seed)
  splits["train"] = train
  if "val" in scans:
    splits["val"] = Split(scans["val"].paths, scans["val"].labels, scans["val"].class_names, "val")
  elif val is not None:
    splits["val"] = val
  if "test" in scans:
    splits["test"] = Split(scans["test"].paths, scans["test"].labels, scans["test"].class_names, "test")
    if "val" not in splits:
      logging.info("No val/ folder and validation_split=0: validating on %s.", _split_folder(root, "test"))
      splits["val"] = dataclasses.replace(splits["test"], name="val")

  all_paths = sorted({p for s in splits.values() for p in s.paths})
  bad = find_bad_images(all_paths, data_config.color_mode, data_config.num_threads)
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
  if data_config.label_mode == "binary" and len(train.class_names) != 2:
    raise DataError(
      f"label_mode='binary' needs exactly 2 classes, found {len(train.class_names)}: {train.class_names}. "
      "Use label_mode='int' or 'categorical'."
    )
  return splits
