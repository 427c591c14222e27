"""Ablation of the tuned flowers17 recipe: the recipe itself, then with one of its additions taken
away or one more toolbox feature added (10 runs, about 10 minutes each on 2 cores).

python -m imgcls.sweep --config=configs/flowers_mobilenet_tuned.py --sweep=configs/sweeps/flowers17.py \\
  --config.model.weights=PATH_TO/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5

Evaluate each run with --split=test --tta=flip for the test figures.
"""


def get_sweep():
  return [
    {},  # The recipe.
    {"model.bn_inference": False},  # Its BatchNorms learn the flower batches' statistics.
    {"train.frozen_epochs": 0},  # One stage: the whole network from the start.
    {"train.ema_decay": 0.0},
    {"loss.label_smoothing": 0.0},
    {"train.mixup_alpha": 0.2},
    {"train.cutmix_alpha": 1.0},
    {"data.augment": "flip_lr|random_resized_crop(0.35, 1)"},
    {"data.augment": "flip_lr|trivial_augment"},  # The frozen stage then reads images, not cached features.
    # The unfrozen epochs 9-11 at 160x160, the last three at 224x224 (the frozen ones stay cached at 224).
    {"data.progressive_sizes": ((9, (160, 160)), (12, (224, 224)))},
  ]
