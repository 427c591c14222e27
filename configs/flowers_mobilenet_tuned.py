"""Oxford 17 flowers, MobileNetV2 (ImageNet) fine-tuned in two stages: what configs/flowers_mobilenet.py
(frozen backbone, about 0.92 test accuracy) gains from the fine-tuning toolbox.

Adds to it: 3 epochs of the head alone on the frozen backbone (train.frozen_epochs), then the
whole network with the backbone at a tenth of the head's learning rate, a cosine schedule,
label smoothing 0.1 and an EMA of the weights; evaluate with --tta=flip. Set model.weights to
the ImageNet file (`imagenet`: Keras's own, from the Keras cache or downloaded).
"""

import os
import runpy

frozen_recipe = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "flowers_mobilenet.py"))


def get_config():
  c = frozen_recipe["get_config"]()
  c.model.freeze = ""
  c.model.backbone_learning_rate = 1e-4
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = "cosine"
  c.loss.label_smoothing = 0.1
  c.train.frozen_epochs = 3
  c.train.frozen_learning_rate = 1e-3
  c.train.epochs = 12
  c.train.ema_decay = 0.99
  return c
