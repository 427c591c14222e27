"""Oxford 17 flowers with a frozen MobileNetV2 (ImageNet): average-pooled 1280-d vector, Dropout, Dense(17).

A linear classifier on these features is enough for about 0.9 test accuracy; unfreeze with a small
backbone learning rate (e.g. --config.model.freeze= --config.model.backbone_learning_rate=1e-5)
to fine-tune.
"""

from imgcls.config import default_config


def get_config():
  c = default_config()
  c.data.dir = "../shared/data/flowers17"  # train/ and test/; validation is split off train/.
  c.data.image_size = (224, 224)
  c.data.rescale = 1 / 255
  c.data.batch_size = 32
  c.data.augment = "flip_lr|zoom(0.1)"
  c.model.name = "mobilenet_v2"
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
