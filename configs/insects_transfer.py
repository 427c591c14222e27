"""Insects by transfer: the frozen MobileNetV2 (ImageNet) 1280-d average-pooled vector, then Dense(classes)."""

from imgcls.config import default_config


def get_config():
  c = default_config()
  c.data.dir = ""  # The insects train/ and test/ trees: set --config.data.dir.
  c.data.validation_split = 0.0  # Train on all of train/ (the seed does not validate; test/ is reported).
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
  c.train.epochs = 2
  c.train.log_every_steps = 1  # The seed's CollectBatchStats: loss and accuracy of every batch.
  return c
