"""Keras's ImageNet classifiers as they are: `--config=configs/imagenet.py:resnet50` (default mobilenet_v2).

For predicting the 1000 ImageNet classes of images (`--mode=predict`); no training, no data.dir.
Any Keras application model imgcls has (`python -m imgcls.models` lists them): mobilenet,
mobilenet_v2, mobilenet_v3_small/large[_minimalistic] (set --config.model.alpha), vgg16, vgg19,
inception_v3, inception_resnet_v2, xception, resnet50/101/152, resnet50_v2/101_v2/152_v2, densenet121/169/201,
efficientnet_b0..efficientnet_b7, efficientnet_v2_b0..b3/s/m/l, convnext_tiny/small/base/large/xlarge,
nasnet_mobile, nasnet_large.
"""

from imgcls.config import default_config
from imgcls.models import KERAS_MODELS, default_size


def get_config(arg: str | None = None):
  name = arg or "mobilenet_v2"
  if name not in KERAS_MODELS:
    raise ValueError(f"configs/imagenet.py:{name}: pick one of {', '.join(KERAS_MODELS)}.")
  size = default_size(name)  # Keras's default input size of the model.
  c = default_config()
  c.model.name = name
  c.model.weights = "imagenet"
  c.model.include_top = True
  c.data.image_size = (size, size)
  c.data.rescale = 1.0  # The model applies Keras's preprocess_input itself, whatever the rescale.
  # As keras.utils.load_img(path, target_size=...), the usual way to classify one photo in Keras.
  c.data.interpolation = "pil_bilinear"
  c.data.jpeg_draft = False  # load_img decodes JPEGs at full size.
  c.data.batch_size = 16
  return c
