"""Oxford 17 flowers, MobileNetV2 (ImageNet) fine-tuned in two stages: what configs/flowers_mobilenet.py
(frozen backbone, about 0.92 test accuracy) gains from the fine-tuning toolbox.

Adds to it, as Keras's transfer-learning guide and fastai's `fine_tune` do:
- 8 epochs of the head alone on the frozen backbone at 1e-3 (train.frozen_epochs), then 6 of the
  whole network with a fresh Adam at 1e-4 for the head and 3e-5 for the backbone, cosine decay;
- the backbone's BatchNorms kept in inference mode while it trains (model.bn_inference): with
  batches of 32 their ImageNet statistics must stay, or the unfrozen epochs lose 5 points;
- label smoothing 0.1 and an EMA of the weights (0.99);
- evaluate with --tta=flip.
On ../shared/data/flowers17 with ../shared/weights' MobileNetV2: test accuracy 0.956, 0.967 with
--tta=flip (best val 0.963), 10 minutes on 2 cores. Set model.weights to the ImageNet file
(`imagenet`: Keras's own, from the Keras cache or downloaded).
"""

import os
import runpy

frozen_recipe = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "flowers_mobilenet.py"))


def get_config():
  c = frozen_recipe["get_config"]()
  c.model.freeze = ""
  c.model.bn_inference = True
  c.model.backbone_learning_rate = 3e-5
  c.optimizer.learning_rate = 1e-4
  c.optimizer.schedule = "cosine"
  c.loss.label_smoothing = 0.1
  c.train.frozen_epochs = 8
  c.train.frozen_learning_rate = 1e-3
  c.train.epochs = 14
  c.train.ema_decay = 0.99
  return c
