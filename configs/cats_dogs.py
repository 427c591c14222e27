"""Seed 003: cats vs dogs, the BatchNorm CNN at 256x256, learning rate reduced on plateau."""

from imgcls.config import default_config


def get_config():
  c = default_config()
  c.data.dir = ""  # The cats and dogs class-per-folder tree: set --config.data.dir.
  c.data.image_size = (256, 256)
  c.data.rescale = 1 / 255
  c.data.batch_size = 16
  # Seed 003 flips left-right, flips up-down or rotates by up to 30 degrees.
  c.data.augment = "flip_lr|flip_ud|rotate(30)"
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
