"""Seed 004's own CNN for the X-rays: Conv32-Conv64-Pool-Dropout-Conv64-Pool-Dropout-Dense64-Dropout.

The seed ends in Dense(2, sigmoid) with binary cross-entropy on one-hot labels; here the two
outputs are a softmax with categorical cross-entropy (the same decision, probabilities that sum
to 1). Data as configs/covid.py.
"""

from imgcls.config import default_config


def get_config():
  c = default_config()
  c.data.dir = "../shared/data/covid_xray_small"
  c.data.image_size = (224, 224)
  c.data.interpolation = "pil_nearest"
  c.data.rescale = 1 / 255
  c.data.label_mode = "categorical"
  c.data.batch_size = 32
  c.data.validation_split = 0.2
  c.data.split_order = "per_class"
  c.data.augment = "shear(0.1)|zoom(0.1)|flip_lr"
  c.model.name = "dropout_cnn"
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.train.epochs = 5
  return c
