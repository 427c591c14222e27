"""The flowers tutorial: Oxford 17 flowers, frozen VGG19 (ImageNet) max-pooled, Dense(128) - Dropout(0.3) - Dense(17)."""

from imgcls.config import default_config


def get_config():
  c = default_config()
  c.data.dir = "../shared/data/flowers17"  # train/ and test/ (val/ when there is one).
  c.data.validation_split = 0.0  # As the seed: train on all of train/, validate on the held-out folder.
  c.data.image_size = (224, 224)
  c.data.rescale = 1 / 255  # The backbone undoes it and applies VGG's preprocess_input.
  c.data.batch_size = 32
  c.data.augment = "flip_lr"  # The flowers tutorial's random left-right flips.
  c.model.name = "vgg19"
  c.model.weights = "imagenet"
  c.model.pooling = "max"  # Keras's include_top=False, pooling="max": a 512-d vector.
  c.model.freeze = "all"
  c.model.head.pooling = "none"
  c.model.head.hidden = (128,)
  c.model.head.dropout = 0.3
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.train.epochs = 10
  return c
