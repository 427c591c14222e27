"""The fine-tuning toolbox on the pollen recipe: flips, BatchNorm momentum 0.99 and cosine decay on
the tutorial's MobileNetV2 cut at block_6_expand_relu, then one addition at a time, then the cut
at block_13_expand_relu that configs/pollen_tuned.py ships (15 runs, 1.5-3 minutes each on 2
cores; best validation accuracy of each in results.md).

python -m imgcls.sweep --config=configs/pollen_tuned.py --sweep=configs/sweeps/pollen_tuned.py \\
  --config.model.weights=PATH_TO/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5

Evaluate each run's best checkpoint with --tta=flip_lr,flip_ud,flip_lr_ud for the flipped figures.
(The recipe's Flatten head takes one image size: progressive resizing is not among them.)
"""

FLIPS = "flip_lr|flip_ud"
BASE = {"train.ema_decay": 0.0, "data.augment": FLIPS, "model.cut_at": "block_6_expand_relu"}
EMA_RAND_AUGMENT = {"train.ema_decay": 0.99, "data.augment": f"{FLIPS}|rand_augment(2, 9)"}


def get_sweep():
  runs = [
    {},  # Flips, BatchNorm momentum 0.99, cosine decay.
    {"train.ema_decay": 0.99},
    {"train.ema_decay": 0.99, "data.augment": f"{FLIPS}|trivial_augment"},
    EMA_RAND_AUGMENT,
    {"train.ema_decay": 0.99, "data.augment": f"{FLIPS}|auto_augment(imagenet)"},
    {"train.ema_decay": 0.99, "data.augment": f"{FLIPS}|random_erasing(0.25)"},
    {"train.ema_decay": 0.99, "train.cutmix_alpha": 1.0},
    {"train.ema_decay": 0.99, "loss.label_smoothing": 0.1, "train.epochs": 30},
    {**EMA_RAND_AUGMENT, "optimizer.warmup_epochs": 2.0},
    {**EMA_RAND_AUGMENT, "optimizer.name": "adamw", "optimizer.weight_decay": 1e-2},
    {**EMA_RAND_AUGMENT, "model.layer_decay": 0.8},
    {**EMA_RAND_AUGMENT, "train.frozen_epochs": 3},
    {"model.cut_at": "block_13_expand_relu"},
    {"model.cut_at": "block_13_expand_relu", "train.ema_decay": 0.99},
    {**EMA_RAND_AUGMENT, "model.cut_at": "block_13_expand_relu"},  # configs/pollen_tuned.py
  ]
  return [{**BASE, **run} for run in runs]
