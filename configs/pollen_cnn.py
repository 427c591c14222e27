"""Pollen-bearing bees with the cats-vs-dogs tutorial's BatchNorm CNN, trained from scratch at 90x90."""

from imgcls.config import default_config


def get_config():
  config = default_config()
  config.data.dir = "../shared/data/pollen"
  config.data.image_size = (90, 90)
  config.data.rescale = 1 / 255
  config.data.validation_split = 0.2
  config.data.label_mode = "binary"
  config.data.batch_size = 32
  config.seed = 42
  config.model.name = "bn_cnn"
  config.optimizer.learning_rate = 1e-3
  config.train.epochs = 20
  config.checkpoint.monitor = "val_accuracy"
  return config
