"""The cats-vs-dogs tutorial: the BatchNorm CNN at 256x256, learning rate reduced on plateau.

The seed's data are two spreadsheets its script writes from `cats_dogs/train` and `cats_dogs/test`
(rows shuffled; a `File_paths` column and one-hot `Cats`/`Dogs` columns), the first 70% of the
training rows train:

  --config=configs/cats_dogs.py --config.data.index=train.xlsx --config.data.test_index=test.xlsx

`--config=configs/cats_dogs.py:folders --config.data.dir=cats_dogs` reads class-per-folder trees
instead (train/ and test/, or one tree), holding out a shuffled 30% for validation.
The cats-vs-dogs tutorial's features mode is `--mode=features --layer=head/hidden/0` (its `model.layers[-3]`).
"""

from imgcls.config import default_config


def get_config(arg: str = "spreadsheet"):
  if arg not in ("spreadsheet", "folders"):
    raise ValueError(f"configs/cats_dogs.py:{arg}: pick spreadsheet (default) or folders.")
  c = default_config()
  c.data.validation_split = 0.3  # The seed's validation_split=0.7 is its training fraction.
  if arg == "spreadsheet":
    c.data.index = ""  # The seed's train.xlsx: set --config.data.index (and data.test_index).
    c.data.path_column = "File_paths"
    c.data.class_columns = ("Cats", "Dogs")
    c.data.split_order = "ordered"  # Rows as listed: the first 70% train.
  else:
    c.data.dir = ""  # The cats and dogs tree(s): set --config.data.dir.
  c.data.image_size = (256, 256)
  c.data.interpolation = "cv2_bicubic"  # The seed resizes with cv2.resize(..., cv2.INTER_CUBIC).
  c.data.rescale = 1 / 255
  c.data.batch_size = 16
  # Per image one of: flip left-right, flip up-down, rotate within 30 degrees (black corners, as
  # imgaug's Affine), or nothing (2 in 5).
  c.data.augment = "one_of(flip_lr, flip_ud, rotate(30), none, none)"
  c.data.fill_mode = "constant"
  c.model.name = "bn_cnn"
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.train.epochs = 20
  c.reduce_on_plateau.enabled = True
  c.reduce_on_plateau.monitor = "val_loss"
  c.reduce_on_plateau.mode = "min"
  c.reduce_on_plateau.factor = 0.8
  c.reduce_on_plateau.patience = 2
  c.checkpoint.monitor = "val_accuracy"
  c.checkpoint.mode = "max"
  return c
