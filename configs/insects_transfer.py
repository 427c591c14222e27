"""Insects by transfer: the frozen MobileNetV2 (ImageNet) 1280-d average-pooled vector, then Dense(classes)."""

from imgcls.config import default_config


def get_config():
  c = default_config()
  c.data.dir = ""  # The insects class-per-folder tree: set --config.data.dir.
  c.data.image_size = (224, 224)  # The size the ImageNet weights were trained at.
  c.data.rescale = 1 / 255
  c.model.name = "mobilenet_v2"
  c.model.weights = "imagenet"
  c.model.pooling = "avg"  # Keras's include_top=False, pooling="avg": global_average_pooling2d.
  c.model.freeze = "all"
  c.model.head.pooling = "none"  # Already a vector.
  c.model.head.hidden = ()
  c.model.head.dropout = 0.0
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.train.epochs = 10
  return c
