"""The fine-tuning toolbox on the pollen recipe: flips, BatchNorm momentum 0.99 and cosine decay
(configs/pollen_tuned.py without its EMA and RandAugment), then one addition at a time (8 runs,
about 2 minutes each on 2 cores; best validation accuracy of each in results.md).

python -m imgcls.sweep --config=configs/pollen_tuned.py --sweep=configs/sweeps/pollen_tuned.py \\
  --config.model.weights=PATH_TO/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5

Evaluate each run's best checkpoint with --tta=flip_lr,flip_ud,flip_lr_ud for the flipped figures.
(The recipe's Flatten head takes one image size: progressive resizing is not among them.)
"""

FLIPS = "flip_lr|flip_ud"
BASE = {"train.ema_decay": 0.0, "data.augment": FLIPS}


def get_sweep():
  runs = [
    {},  # Flips, BatchNorm momentum 0.99, cosine decay.
    {"train.ema_decay": 0.99},
    {"train.ema_decay": 0.99, "data.augment": f"{FLIPS}|trivial_augment"},
    {"train.ema_decay": 0.99, "data.augment": f"{FLIPS}|rand_augment(2, 9)"},
    {"train.ema_decay": 0.99, "data.augment": f"{FLIPS}|auto_augment(imagenet)"},
    {"train.ema_decay": 0.99, "data.augment": f"{FLIPS}|random_erasing(0.25)"},
    {"train.ema_decay": 0.99, "train.cutmix_alpha": 1.0},
    {"train.ema_decay": 0.99, "loss.label_smoothing": 0.1, "train.epochs": 30},
  ]
  return [{**BASE, **run} for run in runs]
