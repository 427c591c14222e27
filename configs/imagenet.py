"""Keras's ImageNet classifiers as they are: `--config=configs/imagenet.py:vgg19` (default mobilenet_v2).

For predicting the 1000 ImageNet classes of images (`--mode=predict`); no training, no data.dir.
Any Keras family: mobilenet_v2 (set --config.model.alpha), vgg16, vgg19, inception_v3.
"""

from imgcls.config import default_config

# Keras's default input size of each model.
SIZES = {"mobilenet_v2": 224, "vgg16": 224, "vgg19": 224, "inception_v3": 299}


def get_config(arg: str | None = None):
  name = arg or "mobilenet_v2"
  if name not in SIZES:
    raise ValueError(f"configs/imagenet.py:{name}: pick one of {', '.join(SIZES)}.")
  c = default_config()
  c.model.name = name
  c.model.weights = "imagenet"
  c.model.include_top = True
  c.data.image_size = (SIZES[name], SIZES[name])
  c.data.rescale = 1.0  # The model applies Keras's preprocess_input itself, whatever the rescale.
  # As keras.utils.load_img(path, target_size=...), the usual way to classify one photo in Keras.
  c.data.interpolation = "pil_bilinear"
  c.data.jpeg_draft = False  # load_img decodes JPEGs at full size.
  c.data.batch_size = 16
  return c
