"""CSV / Excel indexes and TFDS datasets as sources."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_config, write_tree
from paths import load_recipe

from imgcls import train
from imgcls.data import pipeline, sources


@pytest.fixture(scope="module")
def spreadsheet(tmp_path_factory):
  """The cats-vs-dogs tutorial's layout: an .xlsx with File_names, File_paths and one-hot Cats/Dogs columns, shuffled."""
  root = write_tree(tmp_path_factory.mktemp("sheet") / "images", classes=2, per_class=10)
  rows = []
  for label, folder in enumerate(("class_0", "class_1")):
    for name in sorted(os.listdir(root / folder)):
      rows.append({"File_names": name, "File_paths": str(root / folder / name), "Cats": int(label == 0), "Dogs": int(label == 1)})
  table = pd.DataFrame(rows).sample(frac=1.0, random_state=3).reset_index(drop=True)
  path = root.parent / "train.xlsx"
  table.to_excel(path, index=False)
  return path, table


def test_excel_one_hot_with_ordered_split(spreadsheet):
  path, table = spreadsheet
  config = tiny_config("", **{"data.index": str(path), "data.path_column": "File_paths", "data.class_columns": ("Cats", "Dogs")})
  config.data.validation_split = 0.3  # The cats-vs-dogs tutorial's validation_split=0.7 (its training fraction)...
  config.data.split_order = "ordered"  # ... taken in row order.
  splits = sources.find_splits(config.data, 0)
  assert splits["train"].class_names == ["Cats", "Dogs"]
  assert splits["train"].paths == table["File_paths"].tolist()[:14]
  assert splits["val"].paths == table["File_paths"].tolist()[14:]
  np.testing.assert_array_equal(splits["train"].labels, table["Dogs"].to_numpy()[:14])


def test_cats_dogs_recipe_reads_the_cats_dogs_tutorials_spreadsheet(spreadsheet):
  """configs/cats_dogs.py as is, given the seed's train.xlsx: its first 70% of rows train."""
  path, table = spreadsheet
  config = load_recipe("cats_dogs")
  config.data.index = str(path)
  splits = sources.find_splits(config.data, config.seed)
  assert splits["train"].class_names == ["Cats", "Dogs"]
  assert splits["train"].paths == table["File_paths"].tolist()[:14] and splits["val"].paths == table["File_paths"].tolist()[14:]


def test_csv_label_column_relative_paths_and_test_index(tmp_path):
  root = write_tree(tmp_path / "imgs", classes=3, per_class=4)
  rows = [(f"class_{c}/img_{i:03d}.png", ["cat", "dog", "emu"][c]) for c in range(3) for i in range(4)]
  pd.DataFrame(rows[:9], columns=["path", "label"]).to_csv(tmp_path / "train.csv", index=False)
  pd.DataFrame(rows[9:], columns=["path", "label"]).to_csv(tmp_path / "test.csv", index=False)
  config = tiny_config(root, **{"data.index": str(tmp_path / "train.csv"), "data.test_index": str(tmp_path / "test.csv")})
  splits = sources.find_splits(config.data, 1)
  assert splits["train"].class_names == ["cat", "dog", "emu"]
  assert len(splits["train"]) + len(splits["val"]) == 9 and len(splits["test"]) == 3
  assert all(os.path.isfile(p) for p in splits["train"].paths)
  assert splits["test"].labels.tolist() == [2, 2, 2]


def test_index_errors_name_the_problem(tmp_path):
  root = write_tree(tmp_path / "imgs", classes=2, per_class=2)
  table = pd.DataFrame({"file": ["class_0/img_000.png", "class_1/img_000.png", "class_1/gone.png"], "y": ["a", "b", "b"]})
  table.to_csv(tmp_path / "i.csv", index=False)
  config = tiny_config(root, **{"data.index": str(tmp_path / "i.csv"), "data.validation_split": 0.0})
  with pytest.raises(sources.DataError, match=r"no column\(s\) \['path', 'label'\].*\['file', 'y'\]"):
    sources.find_splits(config.data, 0)
  config.data.path_column, config.data.label_column = "file", "y"
  with pytest.raises(sources.DataError, match="gone.png: file not found"):
    sources.find_splits(config.data, 0)
  config.data.skip_bad_images = True
  assert len(sources.find_splits(config.data, 0)["train"]) == 2
  config.data.class_columns = ("a", "b")
  with pytest.raises(sources.DataError, match=r"no column\(s\) \['a', 'b'\]"):
    sources.find_splits(config.data, 0)
  config.data.class_columns = ()
  for rows, message in (
    ([], "has no rows"),
    ([("class_0/img_000.png", "a"), (None, "b")], r"Rows \[3\] of .* have no 'file'"),
    ([("class_0/img_000.png", "a"), ("class_1/img_000.png", None)], r"Rows \[3\] of .* have no 'y'"),
    (
      [("class_0/img_000.png", "a"), ("class_1/img_000.png", "b"), ("class_0/img_000.png", "a")],
      "1 image\\(s\\) are listed more than once",
    ),
  ):
    pd.DataFrame(rows, columns=["file", "y"]).to_csv(tmp_path / "i.csv", index=False)
    with pytest.raises(sources.DataError, match=message):
      sources.find_splits(config.data, 0)


def test_tfds_dataset_through_data_source(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    config = tiny_config("tfds:tf_flowers", **{"data.validation_split": 0.25, "train.epochs": 1})
    splits = sources.find_splits(config.data, 0)
    assert splits["train"].class_names == ["dandelion", "daisy", "tulips", "sunflowers", "roses"]
    assert (len(splits["train"]), len(splits["val"])) == (9, 3)
    batch = next(iter(pipeline.eval_batches(splits["train"], config.data)))
    assert batch["image"].shape == (8, 16, 16, 3) and batch["image"].max() <= 1.0
    summary = train.train_and_evaluate(config, str(tmp_path))
    assert summary["final"]["step"] == 2


def test_missing_tfds_dataset_says_how_to_prepare_it(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  config = tiny_config("tfds:tf_flowers", **{"data.tfds_data_dir": str(tmp_path)})
  with pytest.raises(FileNotFoundError, match=r"tfds build tf_flowers --file_format=array_record"):
    sources.find_splits(config.data, 0)
