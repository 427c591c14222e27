"""The pollen tutorial: pollen-bearing bees, MobileNetV2 (ImageNet) cut at block_6_expand_relu, binary head."""

from imgcls.config import default_config


def get_config():
  c = default_config()
  c.seed = 42
  c.data.dir = "../shared/data/pollen"
  c.data.image_size = (90, 90)
  c.data.rescale = 1 / 255  # As the seed; the backbone undoes it and applies Keras's preprocess_input.
  # The seed feeds MobileNetV2 the [0, 1] images themselves: --config.model.preprocess_input=False.
  c.model.preprocess_input = True
  c.data.label_mode = "binary"  # One sigmoid output unit.
  c.data.validation_split = 0.2
  c.data.batch_size = 32

  c.model.name = "mobilenet_v2"
  c.model.weights = "imagenet"
  c.model.cut_at = "block_6_expand_relu"  # 12x12x192 at 90x90.
  c.model.head.pooling = "flatten"
  c.model.head.hidden = (64,)  # Dense(64, relu), then Dense(1).
  c.model.head.dropout = 0.0

  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.train.epochs = 20
  return c
