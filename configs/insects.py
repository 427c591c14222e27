"""The insects tutorial: the simple CNN (Conv16-32-64 with pooling, Dense 128) at 180x180."""

from imgcls.config import default_config


def get_config():
  c = default_config()
  c.data.dir = ""  # The insects train/ and test/ trees: set --config.data.dir.
  c.data.validation_split = 0.0  # As the seed: train on all of train/, validate on test/.
  c.data.image_size = (180, 180)
  c.data.rescale = 1 / 255
  c.data.cache = "memory"  # As the tutorial's .cache(): images decoded once, in the first epoch.
  c.model.name = "insects_cnn"
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.train.epochs = 10
  return c
