"""Oxford 17 flowers on a frozen Keras ImageNet backbone: `--config=configs/flowers_transfer.py:resnet50`
(any Keras model imgcls has; default efficientnet_b0), average-pooled features, Dropout, Dense(17).

The frozen backbone's features are computed once before the first epoch (for each flipped copy),
then only the classifier trains: minutes on a laptop CPU. Unfreeze with a small backbone learning
rate (--config.model.freeze= --config.model.backbone_learning_rate=1e-5) to fine-tune.
"""

from imgcls.config import default_config
from imgcls.models import KERAS_MODELS


def get_config(arg: str | None = None):
  name = arg or "efficientnet_b0"
  if name not in KERAS_MODELS:
    raise ValueError(f"configs/flowers_transfer.py:{name}: pick one of {', '.join(KERAS_MODELS)}.")
  c = default_config()
  c.data.dir = "../shared/data/flowers17"  # train/ and test/; validation is split off train/.
  c.data.image_size = (224, 224)
  c.data.rescale = 1 / 255
  c.data.batch_size = 32
  c.data.augment = "flip_lr"  # Flips only: the frozen features are cached.
  c.model.name = name
  c.model.weights = "imagenet"
  c.model.pooling = "avg"
  c.model.freeze = "all"
  c.model.head.pooling = "none"
  c.model.head.hidden = ()
  c.model.head.dropout = 0.2
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.train.epochs = 15
  return c
