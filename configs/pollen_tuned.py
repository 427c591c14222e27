"""The pollen tutorial's recipe with six changes that take it from 0.92 to 0.986 best val accuracy
on the same split (140 of 142 images; the sweep configs/sweeps/pollen_tuned.py ablates them):

- random flips (left-right and up-down): 714 images are few, and pollen has no orientation;
- BatchNorm momentum 0.99 instead of Keras's 0.999, so the backbone's moving statistics follow
  the 90x90 bee images within the 360 steps of the run, instead of staying mostly ImageNet's;
- a cosine learning-rate decay from 1e-3, so the last epochs settle (these three: 0.972);
- an exponential moving average of the weights (0.99), which validation and the best checkpoint use;
- RandAugment (torchvision's, 2 ops at magnitude 9 of 31) after the flips (these five: 0.979);
- MobileNetV2 cut at block_13_expand_relu (6x6x576 at 90x90) instead of the tutorial's
  block_6_expand_relu (12x12x192): deeper ImageNet features, fine-tuned with the rest (0.986).
"""

import os
import runpy

seed_recipe = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "pollen.py"))


def get_config():
  c = seed_recipe["get_config"]()
  c.model.cut_at = "block_13_expand_relu"
  c.data.augment = "flip_lr|flip_ud|rand_augment(2, 9)"
  c.model.bn_momentum = 0.99
  c.optimizer.schedule = "cosine"
  c.train.ema_decay = 0.99
  return c
