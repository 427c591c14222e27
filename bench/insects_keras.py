"""The insects tutorial's own Keras script (the simple CNN at 180x180), as `bench/compare_keras.py
--cases=insects_fit` runs it against `python -m imgcls.main --config=configs/insects.py`.

  python bench/insects_keras.py DATA_DIR [EPOCHS]

DATA_DIR holds train/ and test/ class folders. Prints one JSON line: the final validation accuracy.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["KERAS_BACKEND"] = "tensorflow"

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402


def insects_cnn(num_classes: int, shape=(180, 180, 3), rescale: bool = True) -> keras.Model:
  """The tutorial's CNN (its Rescaling layer left out where the images come already rescaled)."""
  return keras.Sequential(
    [
      keras.Input(shape),
      *([layers.Rescaling(1.0 / 255)] if rescale else []),
      layers.Conv2D(16, 3, padding="same", activation="relu"),
      layers.MaxPooling2D(),
      layers.Conv2D(32, 3, padding="same", activation="relu"),
      layers.MaxPooling2D(),
      layers.Conv2D(64, 3, padding="same", activation="relu"),
      layers.MaxPooling2D(),
      layers.Flatten(),
      layers.Dense(128, activation="relu"),
      layers.Dense(num_classes),
    ]
  )


def main(root: str, epochs: int) -> None:
  load = lambda folder: keras.utils.image_dataset_from_directory(  # noqa: E731
    os.path.join(root, folder), image_size=(180, 180), batch_size=32, verbose=False
  )
  train_ds, test_ds = load("train"), load("test")
  num_classes = len(train_ds.class_names)
  train_ds = train_ds.cache().shuffle(1000).prefetch(tf.data.AUTOTUNE)
  test_ds = test_ds.cache().prefetch(tf.data.AUTOTUNE)
  model = insects_cnn(num_classes)
  model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
  history = model.fit(train_ds, validation_data=test_ds, epochs=epochs, verbose=0)
  print(json.dumps({"final_val_accuracy": round(history.history["val_accuracy"][-1], 3)}))


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 10)
