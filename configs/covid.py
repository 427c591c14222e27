"""The X-ray tutorial: COVID-19 vs normal chest X-rays, InceptionV3 (ImageNet), GAP - Dense(1024) - Dense(2) softmax."""

from imgcls.config import default_config


def get_config():
  c = default_config()
  c.data.dir = "../shared/data/covid_xray_small"
  c.data.image_size = (224, 224)
  c.data.rescale = 1 / 255  # The backbone undoes it and applies Inception's preprocess_input.
  # The seed feeds InceptionV3 the [0, 1] images themselves: --config.model.preprocess_input=False.
  c.model.preprocess_input = True
  c.data.interpolation = "pil_nearest"  # flow_from_directory(interpolation="nearest").
  c.data.color_mode = "rgb"  # Greyscale X-rays are read as three equal channels.
  # ImageDataGenerator(validation_split=0.2): the first 20% of each class's files validate.
  c.data.validation_split = 0.2
  c.data.split_order = "per_class"
  c.data.label_mode = "categorical"  # Two softmax outputs.
  c.data.batch_size = 32
  # The X-ray tutorial's ImageDataGenerator: shear_range=0.1, zoom_range=0.1, horizontal_flip=True.
  c.data.augment = "shear(0.1)|zoom(0.1)|flip_lr"
  c.model.name = "inception_v3"
  c.model.weights = "imagenet"
  c.model.head.pooling = "avg"
  c.model.head.hidden = (1024,)
  c.model.head.dropout = 0.0
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-5
  c.train.epochs = 5
  return c
