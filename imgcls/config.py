"""Default configuration shared by every recipe in `configs/`, and its checks.

A recipe's `get_config()` starts from `default_config()` and changes what it needs, so every
run has every key and a command-line override of a key that does not exist fails at once.
"""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Iterable

import ml_collections


def default_config() -> ml_collections.ConfigDict:
  """Every configurable key of imgcls with its default value (long on purpose: one line per key,
  each documented where it is set)."""
  c = ml_collections.ConfigDict()
  c.seed = 42  # Drives the split, the shuffle, initialisation and dropout.

  c.data = ml_collections.ConfigDict()
  # A class-per-folder tree, or a folder holding train/ (and val/, test/) class-per-folder trees.
  c.data.dir = ""
  c.data.class_names = ()  # Empty: inferred from the sorted subfolder names.
  c.data.validation_split = 0.2  # Fraction held out when there is no val/ folder (0: none).
  c.data.image_size = (90, 90)  # (height, width).
  c.data.color_mode = "rgb"  # rgb | grayscale.
  c.data.label_mode = "int"  # int | binary | categorical.
  # bilinear | nearest (tf.image.resize, as image_dataset_from_directory), pil_bilinear |
  # pil_nearest | pil_bicubic (Pillow's, as keras.utils.load_img and flow_from_directory), or
  # cv2_bicubic (OpenCV's INTER_CUBIC on 8-bit pixels, as cv2.resize of a cv2.imread image).
  c.data.interpolation = "bilinear"
  # Decode JPEGs at a reduced size (a power of two, at least image_size) when that is much
  # smaller: several times faster, pixels within a few levels of a full-size decode.
  c.data.jpeg_draft = True
  c.data.rescale = 1.0  # Pixels are multiplied by this after resizing (1/255 gives [0, 1]).
  c.data.batch_size = 32
  c.data.eval_batch_size = 0  # 0: same as batch_size.
  c.data.shuffle = True  # Reshuffle the training set every epoch.
  c.data.num_threads = 0  # Threads that decode and resize (0: one per CPU core).
  c.data.prefetch = 8  # Elements prefetched by the workers.
  # Input pipeline: grain | tf (tf.data, needs the tf extra). Both give the same batches.
  c.data.backend = "grain"
  c.data.skip_bad_images = False  # Skip corrupt images (listed in a warning) instead of failing.
  c.data.follow_links = False
  c.data.cache = ""  # "", memory or disk: keep decoded, resized images (like Keras's .cache()).
  c.data.cache_dir = ""  # Where disk caches go (default $IMGCLS_CACHE/pixels).
  # Training augmentation, ops separated by "|", e.g. "flip_lr|rotate(20)|zoom(0.1)" (see
  # imgcls/data/augment.py for the ops); run on the device in the train step or on the host.
  c.data.augment = ""
  c.data.augment_on = "device"  # device | host.
  # Progressive resizing: ((first_epoch, (height, width)), ...), epochs counted from 1: the training
  # images take that size from that epoch on, e.g. ((1, (128, 128)), (5, (176, 176)), (9, (224, 224)));
  # epochs before the first entry, validation and evaluation use image_size. One compile per size.
  c.data.progressive_sizes = ()
  c.data.fill_mode = "nearest"  # nearest | constant | reflect | wrap: pixels from outside the image.
  c.data.fill_value = 0.0  # The constant of fill_mode="constant" (in rescaled pixel units).
  # Normalisation as Keras's ImageDataGenerator (feature-wise stats from the training set).
  c.data.featurewise_center = False
  c.data.featurewise_std_normalization = False
  c.data.samplewise_center = False
  c.data.samplewise_std_normalization = False
  # How validation_split holds out data: "shuffle" (Keras's image_dataset_from_directory: shuffle
  # with the seed, hold out the last fraction), "ordered" (the last fraction of the rows/files as
  # listed, no shuffle; the cats-vs-dogs tutorial's `validation_split=0.7` training fraction is validation_split=0.3,
  # split_order="ordered") or "per_class" (Keras's ImageDataGenerator(validation_split).
  # flow_from_directory: the first fraction of each class's files, as listed).
  c.data.split_order = "shuffle"
  # A CSV or Excel (.xlsx) index instead of folders: one row per image, a path column (relative
  # to data.dir, else to the index's folder, or absolute) and a label column or one-hot columns.
  c.data.index = ""
  c.data.val_index = ""  # Optional index of validation images.
  c.data.test_index = ""  # Optional index of test images.
  c.data.path_column = "path"
  c.data.label_column = "label"  # Class names or integers.
  c.data.class_columns = ()  # One-hot columns, one per class (used instead of label_column).
  # TFDS: data.dir = "tfds:NAME" reads a prepared TFDS dataset (array_record) from
  # data.tfds_data_dir or $TFDS_DATA_DIR, no TensorFlow needed. Split strings as in TFDS.
  c.data.tfds_split = "train"
  c.data.tfds_val_split = ""
  c.data.tfds_test_split = ""
  c.data.tfds_data_dir = ""

  c.model = ml_collections.ConfigDict()
  c.model.name = "bn_cnn"  # See imgcls.models.MODELS.
  c.model.filters = 0  # Width of the simple CNNs (0: the model's own default).
  c.model.head = ml_collections.ConfigDict()
  c.model.head.pooling = ""  # flatten | avg | max; empty: the model's own default.
  c.model.head.hidden = (-1,)  # Dense sizes before the output; (-1,): the model's own default.
  c.model.head.dropout = -1.0  # Dropout before the output layer; -1: the model's default.
  c.model.head.input_dropout = -1.0  # Dropout on the backbone's features (the BatchNorm CNN's 0.3); -1: the default.
  c.model.head.batch_norm = False  # BatchNorm after each hidden Dense.
  # Keras application models (`python -m imgcls.models` lists them: mobilenet_v2, resnet50, densenet121, ...):
  c.model.weights = ""  # "": random init; "imagenet": Keras's file (Keras cache, else downloaded); or a path.
  c.model.alpha = 1.0  # MobileNet(V2, V3) width (ImageNet weights: V1 0.25-1.0; V2 0.35-1.4; V3 0.75, 1.0).
  c.model.include_top = False  # Keep Keras's 1000-way classifier as the output layer (model.head unused).
  c.model.pooling = ""  # Keras's include_top=False pooling: "" (the feature map), avg or max (a vector).
  c.model.cut_at = ""  # Keras layer whose output the head sees, e.g. block_6_expand_relu; "": the last.
  # Keras's preprocess_input of the family (e.g. [-1, 1] for MobileNetV2) before the backbone, what
  # its ImageNet weights expect; False feeds the pipeline's images as they are, as the pollen and
  # X-ray tutorials do (in [0, 1] with data.rescale=1/255).
  c.model.preprocess_input = True
  c.model.freeze = ""  # "": train all; "all": freeze the backbone; a Keras layer: freeze up to and with it.
  c.model.backbone_learning_rate = 0.0  # Learning rate of the backbone's parameters (0: optimizer's).
  # Layer-wise learning-rate decay of a Keras backbone (0: off; e.g. 0.75): the top block learns at
  # layer_decay times the head's rate, each block below it layer_decay times slower again.
  c.model.layer_decay = 0.0
  # Backbone BatchNorms in inference mode while the backbone trains (ImageNet's moving statistics
  # used and kept, scale and offset trained), as Keras's fine-tuning guide calls
  # base_model(inputs, training=False) after unfreezing: small batches keep ImageNet's statistics.
  c.model.bn_inference = False
  c.model.bn_momentum = 0.0  # Backbone BatchNorm momentum, Keras's meaning (0: the model's, e.g. 0.999).
  c.model.bn_epsilon = 0.0  # Backbone BatchNorm epsilon (0: the model's own, 1e-3).
  # How convolutions and BatchNorms are computed: "auto" (on the CPU backend "onednn" where its
  # library loaded, else "cpu"; XLA's own ops on GPU/TPU), "onednn" (oneDNN's convolutions, the
  # library TensorFlow and PyTorch use), "cpu" (imgcls's JAX kernels: shifted multiply-adds, matrix
  # products, hand-written gradients) or "xla" (imgcls/models/convs.py, imgcls/models/batch_norm.py).
  c.model.convs = "auto"

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"  # adam | adamw | sgd.
  c.optimizer.learning_rate = 1e-3
  # constant | cosine | warmup_cosine | warmup_constant | one_cycle (fastai's fit_one_cycle: cosine
  # up from learning_rate/25 over warmup_epochs, 0: the first 25% of training, then cosine down).
  c.optimizer.schedule = "constant"
  c.optimizer.warmup_epochs = 0.0
  c.optimizer.min_learning_rate = 0.0  # Floor of the cosine schedules.
  c.optimizer.momentum = 0.9  # sgd only.
  c.optimizer.nesterov = False  # sgd only.
  c.optimizer.weight_decay = 1e-4  # adamw only.
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-7  # Keras's default epsilon.
  c.optimizer.grad_clip_norm = 0.0  # 0: no clipping.

  c.loss = ml_collections.ConfigDict()
  c.loss.class_weights = ()  # One weight per class; empty: none.
  c.loss.balanced = False  # Weights n_samples / (n_classes * count) from the training set.
  c.loss.label_smoothing = 0.0

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 10
  c.train.threshold = 0.5  # Decision threshold of binary (one sigmoid unit) models.
  c.train.progress = True  # Progress bar with ETA and running loss/accuracy.
  c.train.log_every_steps = 10  # Per-batch metrics in metrics.jsonl and TensorBoard.
  # auto | on | off: with a frozen backbone (model.freeze="all") and no augmentation but flips,
  # compute its features once and train only the head (imgcls/feature_cache.py).
  c.train.cache_features = "auto"
  # Mixup and CutMix of each training batch (timm's Mixup, batch mode): Beta(alpha, alpha)
  # coefficients (0: off), the probability a batch is mixed, and with both on the probability of
  # CutMix. Losses use the mixed soft targets; accuracy counts the unmixed labels.
  c.train.mixup_alpha = 0.0
  c.train.cutmix_alpha = 0.0
  c.train.mix_prob = 1.0
  c.train.mix_switch_prob = 0.5
  # Split every batch into this many micro-batches, one update from their summed gradients: the
  # update of the whole batch with a micro-batch's activation memory (BatchNorm sees micro-batches).
  c.train.accumulate_steps = 1
  # Exponential moving average of the weights and BatchNorm statistics (0: off; e.g. 0.999): when
  # on, validation, the best checkpoint, evaluation, prediction and export use the averages.
  c.train.ema_decay = 0.0
  c.train.ema_warmup = True  # decay min(ema_decay, (1 + step) / (10 + step)) early on.
  # Staged fine-tuning in one run and workdir: the first frozen_epochs of train.epochs train the
  # head alone on the frozen backbone (features cached when they can be) at frozen_learning_rate
  # (0: optimizer.learning_rate); the rest train the network as model.freeze and
  # model.backbone_learning_rate say, with a fresh optimizer and schedule.
  c.train.frozen_epochs = 0
  c.train.frozen_learning_rate = 0.0

  # --mode=lr_find: the learning rate grows exponentially from start to end over steps batches.
  c.lr_find = ml_collections.ConfigDict()
  c.lr_find.start = 1e-7
  c.lr_find.end = 10.0
  c.lr_find.steps = 100

  c.reduce_on_plateau = ml_collections.ConfigDict()
  c.reduce_on_plateau.enabled = False
  c.reduce_on_plateau.monitor = "val_loss"
  c.reduce_on_plateau.mode = "min"
  c.reduce_on_plateau.factor = 0.8
  c.reduce_on_plateau.patience = 2
  c.reduce_on_plateau.cooldown = 0
  c.reduce_on_plateau.min_delta = 1e-4
  c.reduce_on_plateau.min_learning_rate = 1e-8

  c.early_stopping = ml_collections.ConfigDict()
  c.early_stopping.enabled = False
  c.early_stopping.monitor = "val_loss"
  c.early_stopping.mode = "min"
  c.early_stopping.patience = 5
  c.early_stopping.min_delta = 0.0

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.monitor = "val_accuracy"  # Metric that picks the best checkpoint.
  c.checkpoint.mode = "max"  # max | min.
  c.checkpoint.max_to_keep = 2  # Latest checkpoints kept (the best is kept besides).
  c.checkpoint.every_steps = 0  # Also save mid-epoch every N steps (0: at epoch ends only).
  c.checkpoint.async_save = True

  # Compute dtype: "bfloat16" runs the model in bfloat16 with float32 parameters, optimizer
  # state, BatchNorm statistics and loss (no loss scaling needed); best on GPU and TPU.
  c.dtype = "float32"
  # Persistent XLA compilation cache (reused by later runs); "" for $IMGCLS_CACHE/jax, "off".
  c.compile_cache = ""

  # Start a new run from another run's weights: a workdir (its best checkpoint) or a checkpoint.
  c.init_from = ""
  return c


def nearest_keys(key: str, valid: Iterable[str], n: int = 3) -> list[str]:
  """The valid dotted keys closest to `key`, best first."""
  valid = list(valid)
  leaf = key.rsplit(".", 1)[-1]
  close = difflib.get_close_matches(key, valid, n=n, cutoff=0.5)
  close += [v for v in valid if v.rsplit(".", 1)[-1] == leaf and v not in close]
  close += [v for v in difflib.get_close_matches(leaf, valid, n=n, cutoff=0.5) if v not in close]
  return close[:n]


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """All dotted keys of a config, nested ones included."""
  keys = []
  for name, value in config.items():
    dotted = f"{prefix}{name}"
    keys.append(dotted)
    if isinstance(value, ml_collections.ConfigDict):
      keys += flat_keys(value, dotted + ".")
  return keys


def load_recipe(spec: str) -> ml_collections.ConfigDict:
  """The config of a recipe named as `--config` names it: `path.py` or `path.py:arg`."""
  import runpy

  path, _, arg = spec.partition(":")
  get_config = runpy.run_path(path).get("get_config")
  if get_config is None:
    raise ValueError(f"The recipe {path} has no get_config() function.")
  return get_config(arg) if arg else get_config()


def check_overrides(config: ml_collections.ConfigDict, argv: Iterable[str], flag: str = "config") -> None:
  """Fails naming the key and its nearest valid keys if an override names no config key."""
  valid = flat_keys(config)
  for arg in argv:
    if not arg.startswith(f"--{flag}."):
      continue
    key = arg[len(flag) + 3 :].split("=", 1)[0]
    if key not in valid:
      near = nearest_keys(key, valid)
      hint = f" Did you mean: {', '.join(near)}?" if near else ""
      raise ValueError(f"Unknown config key '{key}' in {arg!r}.{hint}")


def check_progressive_sizes(entries) -> None:
  """Fails unless `entries` is ((first_epoch, (height, width)), ...) with rising epochs from 1."""
  epochs = []
  for entry in entries:
    ok = isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], int) and entry[0] >= 1
    ok = ok and isinstance(entry[1], (tuple, list)) and len(entry[1]) == 2
    if not ok or not all(isinstance(s, int) and s > 0 for s in entry[1]):
      raise ValueError(
        f"config.data.progressive_sizes={entries!r}: each entry is (first_epoch, (height, width)) with epochs "
        "counted from 1, e.g. ((1, (128, 128)), (5, (224, 224)))."
      )
    epochs.append(entry[0])
  if epochs != sorted(set(epochs)):
    raise ValueError(f"config.data.progressive_sizes={entries!r}: the first epochs must rise.")


def check_config(config: ml_collections.ConfigDict) -> None:
  """Fails if a config (from any recipe) has keys the defaults do not know, or bad values: every
  check that needs no data, in one flat list (long on purpose), so they all run before the scan."""
  valid = set(flat_keys(default_config()))
  for key in flat_keys(config):
    if key not in valid:
      near = nearest_keys(key, valid)
      hint = f" Did you mean: {', '.join(near)}?" if near else ""
      raise ValueError(f"Unknown config key '{key}'.{hint}")
  choices = {
    "data.color_mode": ("rgb", "grayscale"),
    "data.label_mode": ("int", "binary", "categorical"),
    "data.interpolation": ("bilinear", "nearest", "pil_bilinear", "pil_nearest", "pil_bicubic", "cv2_bicubic"),
    "data.split_order": ("shuffle", "ordered", "per_class"),
    "data.augment_on": ("device", "host"),
    "data.cache": ("", "memory", "disk"),
    "data.fill_mode": ("nearest", "constant", "reflect", "wrap"),
    "data.backend": ("grain", "tf"),
    "model.pooling": ("", "avg", "max"),
    "model.convs": ("auto", "onednn", "cpu", "xla"),
    "train.cache_features": ("auto", "on", "off"),
    "dtype": ("float32", "bfloat16"),
    "optimizer.name": ("adam", "adamw", "sgd"),
    "optimizer.schedule": ("constant", "cosine", "warmup_cosine", "warmup_constant", "one_cycle"),
    "checkpoint.mode": ("max", "min"),
    "reduce_on_plateau.mode": ("max", "min"),
    "early_stopping.mode": ("max", "min"),
  }
  for key, allowed in choices.items():
    value = config
    for part in key.split("."):
      value = value[part]
    if value not in allowed:
      raise ValueError(f"config.{key}={value!r} is not one of {', '.join(allowed)}.")
  if not 0.0 <= config.data.validation_split < 1.0:
    raise ValueError(f"config.data.validation_split={config.data.validation_split} must be in [0, 1).")
  size = tuple(config.data.image_size) if isinstance(config.data.image_size, (tuple, list)) else ()
  if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
    raise ValueError(f"config.data.image_size={config.data.image_size!r} must be (height, width), two positive integers.")
  at_least = {
    "data.batch_size": 1,
    "data.eval_batch_size": 0,
    "data.num_threads": 0,
    "data.prefetch": 0,
    "train.epochs": 1,
    "train.log_every_steps": 1,
    "checkpoint.max_to_keep": 1,
    "checkpoint.every_steps": 0,
    "model.filters": 0,
    "train.accumulate_steps": 1,
    "train.mixup_alpha": 0.0,
    "train.cutmix_alpha": 0.0,
  }
  for key, low in at_least.items():
    section, name = key.split(".")
    if config[section][name] < low:
      raise ValueError(f"config.{key}={config[section][name]} must be at least {low}.")
  if not 0 < config.lr_find.start < config.lr_find.end or config.lr_find.steps < 2:
    raise ValueError(
      f"config.lr_find needs 0 < start < end and steps >= 2; it has start={config.lr_find.start}, "
      f"end={config.lr_find.end}, steps={config.lr_find.steps}."
    )
  if not config.optimizer.learning_rate > 0:
    raise ValueError(f"config.optimizer.learning_rate={config.optimizer.learning_rate} must be positive.")
  for key in ("mix_prob", "mix_switch_prob"):
    if not 0.0 <= config.train[key] <= 1.0:
      raise ValueError(f"config.train.{key}={config.train[key]} must be in [0, 1].")
  if not 0.0 <= config.train.ema_decay < 1.0:
    raise ValueError(f"config.train.ema_decay={config.train.ema_decay} must be in [0, 1) (0: off; 0.999 is usual).")
  if not 0 <= config.train.frozen_epochs < config.train.epochs:
    raise ValueError(
      f"config.train.frozen_epochs={config.train.frozen_epochs} must be less than train.epochs={config.train.epochs} "
      "(the epochs that follow train the network)."
    )
  if config.train.frozen_epochs and config.model.freeze == "all":
    raise ValueError(
      "config.train.frozen_epochs unfreezes the backbone after the frozen epochs: leave model.freeze empty or name a layer."
    )
  if config.data.batch_size % config.train.accumulate_steps:
    raise ValueError(
      f"config.data.batch_size={config.data.batch_size} does not split into "
      f"config.train.accumulate_steps={config.train.accumulate_steps} equal micro-batches."
    )
  if not 0.0 <= config.loss.label_smoothing < 1.0:
    raise ValueError(f"config.loss.label_smoothing={config.loss.label_smoothing} must be in [0, 1).")
  metrics = [f"{split}_{name}" for split in ("val", "train") for name in ("loss", "accuracy", "precision", "recall", "f1")]
  for section in ("checkpoint", "reduce_on_plateau", "early_stopping"):
    if config[section].monitor not in metrics:
      near = nearest_keys(config[section].monitor, metrics)
      raise ValueError(
        f"config.{section}.monitor={config[section].monitor!r} is not a logged metric; "
        f"{'did you mean ' + ', '.join(near) + '? ' if near else ''}one of: {', '.join(metrics)}."
      )
  if config.data.backend == "tf" and config.data.interpolation not in ("bilinear", "nearest"):
    raise ValueError(
      f"data.backend='tf' resizes with tf.image.resize: data.interpolation must be bilinear or nearest, "
      f"not {config.data.interpolation!r} (the grain backend has it)."
    )
  from imgcls.data import augment  # Fails naming an unknown op or bad arguments.

  augment.parse(config.data.augment, config.data.fill_mode, config.data.fill_value)
  if config.data.batch_size < 1:
    raise ValueError(f"config.data.batch_size={config.data.batch_size} must be at least 1.")
  check_progressive_sizes(config.data.progressive_sizes)
  if config.model.include_top and (config.model.cut_at or config.model.pooling):
    raise ValueError("config.model.include_top keeps Keras's classifier: leave model.cut_at and model.pooling empty.")
  if not 0.0 <= config.model.layer_decay <= 1.0:
    raise ValueError(f"config.model.layer_decay={config.model.layer_decay} must be in [0, 1] (0: off).")
  if config.model.backbone_learning_rate < 0:
    raise ValueError(f"config.model.backbone_learning_rate={config.model.backbone_learning_rate} must be >= 0.")
  if config.data.backend == "tf" and importlib.util.find_spec("tensorflow") is None:
    from imgcls.data.pipeline import TF_MISSING

    raise ValueError(TF_MISSING)
  if config.data.label_mode == "binary" and config.data.class_names and len(config.data.class_names) != 2:
    raise ValueError(
      f"config.data.label_mode='binary' needs exactly 2 classes; data.class_names has "
      f"{len(config.data.class_names)}: {list(config.data.class_names)}. Use label_mode='int' or 'categorical'."
    )
  if config.train.cache_features == "on":
    from imgcls.feature_cache import config_reasons_not_to_cache

    reasons = config_reasons_not_to_cache(config)
    if reasons:
      raise ValueError(
        "config.train.cache_features='on', but the backbone's features change between epochs: " + "; ".join(reasons) + "."
      )
