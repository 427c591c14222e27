"""The embedded default: scikit-learn's 8x8 digits as a class-per-folder tree, a small CNN.

`make demo` runs this. The tree is written once under ~/.cache/imgcls/digits.
"""

from imgcls.config import default_config


def get_config():
  config = default_config()
  config.data.dir = "builtin:digits"
  config.data.image_size = (16, 16)
  config.data.color_mode = "grayscale"
  config.data.rescale = 1 / 255
  config.data.validation_split = 0.2
  config.data.batch_size = 32
  config.model.name = "insects_cnn"
  config.model.filters = 16
  config.train.epochs = 10
  return config
