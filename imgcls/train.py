"""Training: the train state, the jitted steps, and the loop with its checkpoints and logs.

Read top to bottom: `train_and_evaluate` finds the data, builds the model and optimizer,
restores the latest checkpoint if the workdir has one, then runs epochs of jitted train steps,
evaluates, logs, adjusts the learning rate on plateaus, stops early, and saves checkpoints.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from imgcls import checkpoint as ckpt_lib
from imgcls import feature_cache
from imgcls import parallel
from imgcls import metrics as metrics_lib
from imgcls import models
from imgcls.data import augment, pipeline, sources
from imgcls.logs import RunLog


class TrainingDiverged(RuntimeError):
  """The loss became NaN or infinite."""


@flax.struct.dataclass
class TrainState:
  """Everything a step changes: a pytree that Orbax saves as it is."""

  step: jax.Array
  params: nnx.State  # Trained parameters.
  frozen: nnx.State  # Parameters that are not trained (frozen backbone layers).
  stats: nnx.State  # BatchNorm statistics and any other non-parameter variables.
  opt_state: optax.OptState
  epoch_sums: dict  # Running loss sum, example count and confusion matrix of the epoch.
  window_sums: dict  # The same since the last per-batch log line.


def initial_state(params: nnx.State, frozen: nnx.State, stats: nnx.State, tx: optax.GradientTransformation, num_classes: int) -> TrainState:
  """The state at step 0: fresh optimizer state and metric sums."""
  return TrainState(
    step=jnp.zeros((), jnp.int32), params=params, frozen=frozen, stats=stats, opt_state=tx.init(params),
    epoch_sums=zero_sums(num_classes), window_sums=zero_sums(num_classes),
  )


def zero_sums(num_classes: int) -> dict:
  return {
    "loss": jnp.zeros((), jnp.float32),
    "count": jnp.zeros((), jnp.float32),
    "confusion": jnp.zeros((num_classes, num_classes), jnp.float32),
  }


# ---------------------------------------------------------------------------------------------
# Optimizer and learning rate.


def learning_rate_schedule(opt_config: ml_collections.ConfigDict, steps_per_epoch: int, epochs: int) -> optax.Schedule:
  """The base learning rate per step (reduce-on-plateau scales it further, on the host)."""
  lr = opt_config.learning_rate
  total = max(1, steps_per_epoch * epochs)
  warmup = int(round(opt_config.warmup_epochs * steps_per_epoch))
  name = opt_config.schedule
  if name == "constant":
    return optax.constant_schedule(lr)
  if name == "warmup_constant":
    return optax.join_schedules([optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.constant_schedule(lr)], [warmup])
  if name == "cosine":
    return optax.cosine_decay_schedule(lr, total, alpha=opt_config.min_learning_rate / lr if lr else 0.0)
  if name == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 1), total, end_value=opt_config.min_learning_rate)
  raise ValueError(f"Unknown schedule {name!r}.")


def make_optimizer(opt_config: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
  """adam | adamw | sgd with the schedule, optional gradient clipping."""
  if opt_config.name == "adam":
    tx = optax.adam(schedule, b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.eps)
  elif opt_config.name == "adamw":
    tx = optax.adamw(schedule, b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.eps, weight_decay=opt_config.weight_decay)
  elif opt_config.name == "sgd":
    tx = optax.sgd(schedule, momentum=opt_config.momentum or None, nesterov=opt_config.nesterov)
  else:
    raise ValueError(f"Unknown optimizer {opt_config.name!r}.")
  if opt_config.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(opt_config.grad_clip_norm), tx)
  return tx


def update_scales(params: nnx.State, config: ml_collections.ConfigDict) -> nnx.State:
  """Per-parameter multipliers of the update: backbone_learning_rate / learning_rate on the backbone."""
  ratio = 1.0
  backbone_lr = config.model.get("backbone_learning_rate", 0.0)
  if backbone_lr:
    ratio = backbone_lr / config.optimizer.learning_rate

  def scale(path, _):
    return jnp.float32(ratio if getattr(path[0], "key", None) == "backbone" else 1.0)

  return jax.tree_util.tree_map_with_path(scale, params)


# ---------------------------------------------------------------------------------------------
# Loss and the jitted steps.


def loss_per_example(logits: jax.Array, labels: jax.Array, num_classes: int, label_smoothing: float = 0.0) -> jax.Array:
  """Sigmoid binary cross-entropy for one output unit, else softmax cross-entropy, from logits."""
  if logits.shape[-1] == 1:
    targets = labels.astype(jnp.float32)
    if label_smoothing:
      targets = targets * (1 - label_smoothing) + 0.5 * label_smoothing
    return optax.sigmoid_binary_cross_entropy(logits[:, 0], targets)
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def predict_labels(logits: jax.Array, threshold: float) -> jax.Array:
  if logits.shape[-1] == 1:
    return (jax.nn.sigmoid(logits[:, 0]) >= threshold).astype(jnp.int32)
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def add_to_sums(sums: dict, losses: jax.Array, labels: jax.Array, predictions: jax.Array, mask: jax.Array) -> dict:
  k = sums["confusion"].shape[0]
  confusion = (jax.nn.one_hot(labels, k) * mask[:, None]).T @ jax.nn.one_hot(predictions, k)
  return {
    "loss": sums["loss"] + jnp.sum(losses * mask),
    "count": sums["count"] + jnp.sum(mask),
    "confusion": sums["confusion"] + confusion,
  }


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What the jitted steps need besides the state: static, hashable."""

  num_classes: int
  threshold: float
  label_smoothing: float
  class_weights: tuple[float, ...]
  dtype: str = "float32"  # Compute dtype; parameters and optimizer state stay float32.
  on_features: bool = False  # Inputs are cached backbone features: only the head runs.


def compute_cast(tree, dtype: str):
  """Floating-point leaves of `tree` in the compute dtype (identity for float32)."""
  if dtype == "float32":
    return tree
  target = jnp.dtype(dtype)
  return jax.tree.map(lambda x: x.astype(target) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def identity_prepare(images: jax.Array, key: jax.Array | None) -> jax.Array:
  return images


def make_prepare(aug: augment.Augment, normalize: augment.Normalize, pixel_max: float, on_device: bool):
  """`prepare(images, key)`: device augmentation (when `key` is given) then normalisation."""

  def prepare(images: jax.Array, key: jax.Array | None) -> jax.Array:
    if key is not None and on_device:
      images = augment.apply_device(aug, images, key, pixel_max)
    return normalize(images) if normalize.enabled else images

  return prepare


def make_train_step(
  graphdef: nnx.GraphDef, tx: optax.GradientTransformation, scales: nnx.State, cfg: StepConfig,
  prepare=identity_prepare, state_sharding=None,
):
  """A jitted `step(state, batch, key, lr_scale) -> state` (the state is donated).

  With `state_sharding` (replicated over a mesh) and a batch split over it, the step runs data
  parallel: XLA averages gradients and BatchNorm statistics over the global batch.
  """
  weights = jnp.asarray(cfg.class_weights or (1.0,) * cfg.num_classes, jnp.float32)

  @functools.partial(jax.jit, donate_argnums=0, out_shardings=state_sharding)
  def train_step(state: TrainState, batch: dict, key: jax.Array, lr_scale: jax.Array) -> TrainState:
    labels, mask = batch["label"], batch["mask"]
    dropout_key, augment_key = jax.random.split(key)
    images = prepare(batch["image"], augment_key)

    def loss_fn(params, frozen, stats):
      # Mixed precision: bfloat16 weights and activations; BatchNorm statistics, the loss and the
      # gradients (through the cast) stay float32.
      model = nnx.merge(graphdef, compute_cast(params, cfg.dtype), compute_cast(frozen, cfg.dtype), stats, copy=True)
      forward = model.head if cfg.on_features else model
      logits = forward(compute_cast(images, cfg.dtype), rngs=nnx.Rngs(dropout=dropout_key)).astype(jnp.float32)
      losses = loss_per_example(logits, labels, cfg.num_classes, cfg.label_smoothing)
      loss = jnp.sum(losses * weights[labels] * mask) / jnp.maximum(jnp.sum(mask), 1.0)
      return loss, (logits, losses, nnx.state(model, nnx.Not(nnx.Param)))

    (_, (logits, losses, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state.frozen, state.stats)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda u, s: u * s * lr_scale, updates, scales)
    predictions = predict_labels(logits, cfg.threshold)
    return state.replace(
      step=state.step + 1,
      params=optax.apply_updates(state.params, updates),
      stats=stats,
      opt_state=opt_state,
      epoch_sums=add_to_sums(state.epoch_sums, losses, labels, predictions, mask),
      window_sums=add_to_sums(state.window_sums, losses, labels, predictions, mask),
    )

  return train_step


def make_eval_step(
  eval_graphdef: nnx.GraphDef, prepare=identity_prepare, out_sharding=None, dtype: str = "float32", on_features: bool = False
):
  """A jitted `step(state, images) -> logits` with the model in inference mode (`on_features`:
  the inputs are cached backbone features and only the head runs)."""

  @functools.partial(jax.jit, out_shardings=out_sharding)
  def eval_step(state: TrainState, images: jax.Array) -> jax.Array:
    model = nnx.merge(eval_graphdef, compute_cast(state.params, dtype), compute_cast(state.frozen, dtype), state.stats)
    forward = model.head if on_features else model
    return forward(compute_cast(prepare(images, None), dtype)).astype(jnp.float32)

  return eval_step


def predict_split(
  eval_step, state: TrainState, split: sources.Split, data_config, dp: parallel.DataParallel | None = None,
  rows: np.ndarray | None = None,
) -> np.ndarray:
  """Outputs of `eval_step` for every example of `split`, in its order (batches split over `dp`'s
  devices, each process reading only its rows; `rows`: cached features in place of the images)."""
  batch_size = data_config.eval_batch_size or data_config.batch_size
  if dp is not None:
    batch_size = -(-batch_size // dp.devices) * dp.devices
  processes = dp.processes if dp is not None else 1
  outputs = []
  for number, batch in enumerate(pipeline.eval_batches(split, data_config, batch_size, rows, (jax.process_index(), processes))):
    images = dp.global_batch(batch)["image"] if dp is not None else batch["image"]
    logits = np.asarray(eval_step(state, images))  # The whole batch, on every process.
    outputs.append(logits[: min(batch_size, len(split) - number * batch_size)])  # Padding is last.
  return np.concatenate(outputs)


def split_metrics(logits: np.ndarray, split: sources.Split, cfg: StepConfig) -> dict[str, float]:
  """loss, accuracy, precision, recall, f1 of logits against the split's labels."""
  losses = np.asarray(loss_per_example(jnp.asarray(logits), jnp.asarray(split.labels), cfg.num_classes))
  predictions = np.asarray(predict_labels(jnp.asarray(logits), cfg.threshold))
  confusion = metrics_lib.confusion_matrix(split.labels, predictions, cfg.num_classes)
  return metrics_lib.from_confusion(confusion, float(losses.sum()), len(losses))


# ---------------------------------------------------------------------------------------------
# Host-side controllers: reduce-on-plateau, early stopping, best metric.


@dataclasses.dataclass
class Monitor:
  """Tracks the best value of a metric, Keras-style (`min_delta`, `mode`)."""

  mode: str = "min"
  min_delta: float = 0.0
  best: float | None = None

  def improved(self, value: float) -> bool:
    if not math.isfinite(value):
      return False
    if self.best is None:
      return True
    if self.mode == "min":
      return value < self.best - self.min_delta
    return value > self.best + self.min_delta


@dataclasses.dataclass
class Plateau:
  """Keras's ReduceLROnPlateau on an epoch metric, as a multiplier of the learning rate."""

  config: Any
  scale: float = 1.0
  wait: int = 0
  cooldown: int = 0
  best: float | None = None

  def update(self, value: float, base_lr: float) -> bool:
    monitor = Monitor(self.config.mode, self.config.min_delta, self.best)
    if self.cooldown > 0:
      self.cooldown -= 1
      self.wait = 0
    if monitor.improved(value):
      self.best, self.wait = value, 0
      return False
    if self.cooldown > 0:
      return False
    self.wait += 1
    if self.wait < self.config.patience:
      return False
    lr = max(base_lr * self.scale * self.config.factor, self.config.min_learning_rate)
    reduced = lr < base_lr * self.scale
    self.scale = lr / base_lr if base_lr else 1.0
    self.cooldown, self.wait = self.config.cooldown, 0
    return reduced

  def to_json(self) -> dict:
    return {"scale": self.scale, "wait": self.wait, "cooldown": self.cooldown, "best": self.best}


@dataclasses.dataclass
class EarlyStopping:
  """Keras's EarlyStopping: stop after `patience` epochs without improvement."""

  config: Any
  wait: int = 0
  best: float | None = None

  def update(self, value: float) -> bool:
    if Monitor(self.config.mode, self.config.min_delta, self.best).improved(value):
      self.best, self.wait = value, 0
      return False
    self.wait += 1
    return self.wait >= self.config.patience

  def to_json(self) -> dict:
    return {"wait": self.wait, "best": self.best}


# ---------------------------------------------------------------------------------------------
# Building the state.


def class_weights(config: ml_collections.ConfigDict, train: sources.Split) -> tuple[float, ...]:
  num_classes = len(train.class_names)
  if config.loss.balanced:
    counts = np.maximum(train.class_counts(), 1)
    return tuple(float(len(train) / (num_classes * c)) for c in counts)
  weights = tuple(float(w) for w in config.loss.class_weights)
  if weights and len(weights) != num_classes:
    raise ValueError(f"config.loss.class_weights has {len(weights)} values for {num_classes} classes {train.class_names}.")
  return weights


def create_model(config: ml_collections.ConfigDict, num_classes: int, load_weights: bool = True) -> models.Classifier:
  """The configured model for `num_classes` (`load_weights=False`: for a checkpoint to fill)."""
  outputs = metrics_lib.num_outputs(config.data.label_mode, num_classes)
  rngs = nnx.Rngs(params=config.seed, dropout=config.seed + 1)
  return models.build_model(config, outputs, rngs=rngs, load_weights=load_weights)


def split_model(model: models.Classifier) -> tuple[nnx.GraphDef, nnx.GraphDef, nnx.State, nnx.State, nnx.State]:
  """(train graphdef, eval graphdef, trained params, frozen params, other variables)."""
  trainable = nnx.All(nnx.Param, nnx.Not(model.frozen))
  model.eval()
  eval_graphdef = nnx.graphdef(model)
  model.train()
  graphdef, params, frozen, stats = nnx.split(model, trainable, nnx.Param, ...)
  return graphdef, eval_graphdef, params, frozen, stats


def load_weights(state: TrainState, path: str) -> TrainState:
  """`state` with the model variables of another run's checkpoint; fails listing any mismatch."""
  source = ckpt_lib.read_state(ckpt_lib.resolve(path))
  theirs: dict[str, np.ndarray] = {}
  for group in ("params", "frozen", "stats"):
    for keys, value in flax.traverse_util.flatten_dict(source.get(group, {}), sep="/").items():
      theirs[keys.removesuffix("/value")] = value
  problems = []
  wanted = set()

  def take(path_, variable):
    key = "/".join(str(p) for p in path_)
    wanted.add(key)
    if key not in theirs:
      problems.append(f"missing {key} {tuple(variable.shape)}")
      return variable
    if tuple(theirs[key].shape) != tuple(variable.shape):
      problems.append(f"shape of {key}: checkpoint {tuple(theirs[key].shape)}, model {tuple(variable.shape)}")
      return variable
    return jnp.asarray(theirs[key], variable.dtype)

  def load(group: nnx.State) -> nnx.State:
    flat = flax.traverse_util.flatten_dict(nnx.to_pure_dict(group))
    flat = {k: take(k, v) for k, v in flat.items()}
    nnx.replace_by_pure_dict(group, flax.traverse_util.unflatten_dict(flat))
    return group

  params, frozen, stats = load(state.params), load(state.frozen), load(state.stats)
  problems += [f"unexpected {k} {tuple(v.shape)}" for k, v in theirs.items() if k not in wanted]
  if problems:
    raise ckpt_lib.CheckpointError(f"The checkpoint at {path!r} does not fit this model:\n  " + "\n  ".join(problems))
  return state.replace(params=params, frozen=frozen, stats=stats)


# ---------------------------------------------------------------------------------------------
# The loop.


def check_workdir_outside_data(workdir: str, data_config: ml_collections.ConfigDict) -> None:
  """Fails if the run would write into its own image folders (its outputs would be read as classes)."""
  folder = data_config.dir
  if not folder or data_config.index or folder.startswith(("builtin:", "tfds:")):
    return
  data = os.path.realpath(folder)
  if os.path.commonpath([data, os.path.realpath(workdir)]) == data:
    raise ValueError(f"--workdir={workdir} is inside data.dir={folder}: its checkpoints and logs would be read as "
                     "images. Put the workdir elsewhere.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming what is there) and returns the run summary."""
  start_time = time.time()
  check_workdir_outside_data(workdir, config.data)
  os.makedirs(workdir, exist_ok=True)
  enable_compile_cache(config.compile_cache)
  splits = sources.find_splits(config.data, config.seed)
  train_split, val_split = splits["train"], splits.get("val")
  monitor_notes = []
  if val_split is None:
    config, monitor_notes = monitor_training_metrics(config)
  class_names = train_split.class_names
  num_classes = len(class_names)
  dp = parallel.DataParallel()
  if config.data.batch_size % dp.devices:
    raise ValueError(f"config.data.batch_size={config.data.batch_size} must be a multiple of the {dp.devices} devices.")
  batch_size = config.data.batch_size // dp.processes  # Each process reads its share of every batch.
  shard = (jax.process_index(), dp.processes)
  per_process = len(train_split) // dp.processes
  # A last partial batch that does not split evenly over the devices is left out.
  steps_per_epoch = per_process // batch_size + (1 if per_process % batch_size and dp.fits(per_process % batch_size) else 0)
  epochs = config.train.epochs
  step_cfg = StepConfig(
    num_classes, config.train.threshold, config.loss.label_smoothing, class_weights(config, train_split), config.dtype
  )

  model = create_model(config, num_classes)
  graphdef, eval_graphdef, params, frozen, stats = split_model(model)
  schedule = learning_rate_schedule(config.optimizer, steps_per_epoch, epochs)
  tx = make_optimizer(config.optimizer, schedule)
  state = initial_state(params, frozen, stats, tx, num_classes)
  state = dp.replicate(state)
  checkpoints = ckpt_lib.Checkpoints(workdir, config.checkpoint.max_to_keep, config.checkpoint.async_save)
  plateau = Plateau(config.reduce_on_plateau)
  early = EarlyStopping(config.early_stopping)
  best = Monitor(config.checkpoint.mode)
  meta: dict[str, Any] = {"epoch": 0, "data_state": None, "best": None, "history": []}
  if checkpoints.latest_step() is not None:
    state, meta = checkpoints.restore(state)
    if meta.get("class_names") and list(meta["class_names"]) != list(class_names):
      raise ckpt_lib.CheckpointError(
        f"The run in {workdir} was trained on the classes {meta['class_names']}, the data now has {class_names}: "
        f"train in a new --workdir (--config.init_from={workdir} starts it from this run's best weights)."
      )
    plateau = Plateau(config.reduce_on_plateau, **meta["plateau"])
    early = EarlyStopping(config.early_stopping, **meta["early_stopping"])
    best.best = meta["best"]["value"] if meta["best"] else None
  elif config.init_from:
    state = load_weights(state, config.init_from)

  aug = augment.from_config(config.data)
  normalize = augment.make_normalize(config.data, lambda: pipeline.eval_batches(train_split, config.data), meta.get("normalization"))
  meta["normalization"] = {"mean": normalize.mean, "std": normalize.std}
  prepare = make_prepare(aug, normalize, 255.0 * config.data.rescale, config.data.augment_on == "device")
  state = dp.replicate(state)  # Restored or loaded values, onto every device.

  log = RunLog(workdir, config, enabled=jax.process_index() == 0)
  resumed_step = int(state.step)
  log.start(resumed_step, splits, class_names, model)
  for note in monitor_notes:
    log.message(note)
  train_rows = val_rows = None  # Cached backbone features of the train and val images.
  if config.model.freeze == "all" or config.train.cache_features == "on":
    train_rows, val_rows = cache_backbone_features(config, model, state, eval_graphdef, prepare, train_split, val_split, dp, log)
  on_features = train_rows is not None  # The steps then see cached features and run only the head.
  if on_features:
    prepare = feature_cache.make_pick(aug, tuple(config.data.image_size))
  train_step = make_train_step(
    graphdef, tx, update_scales(params, config), dataclasses.replace(step_cfg, on_features=on_features), prepare, dp.replicated
  )
  eval_step = make_eval_step(eval_graphdef, prepare, dp.replicated, config.dtype, on_features=on_features)
  key = jax.random.key(config.seed)
  data = config.data
  history: list[dict] = meta["history"]
  stopped_early = False
  first_step_seconds = None

  def save(epoch: int, data_state: dict | None, *, is_best: bool = False) -> None:
    check_finite(state, int(state.step))
    checkpoints.save(
      int(state.step), state,
      {"epoch": epoch, "data_state": data_state, "best": meta["best"], "history": history,
       "plateau": plateau.to_json(), "early_stopping": early.to_json(), "class_names": class_names,
       "normalization": meta["normalization"]},
      best=is_best,
    )

  for epoch in range(meta["epoch"], epochs):
    resume_state = meta["data_state"] if meta["data_state"] and epoch == meta["epoch"] else None
    epoch_start = time.time()
    iterator = pipeline.train_batches(
      train_split, data, config.seed, epoch, resume_state, batch_size=batch_size, shard=shard,
      host_augment=aug if data.augment_on == "host" else None, rows=train_rows,
    )
    if resume_state is None:
      state = state.replace(epoch_sums=dp.replicate(zero_sums(num_classes)), window_sums=dp.replicate(zero_sums(num_classes)))
    bar = log.progress(epoch, epochs, steps_per_epoch, initial=(resume_state or {}).get("next_index", 0))
    lr_scale = jnp.float32(plateau.scale)
    step = int(state.step)  # Counted on the host from here: no device sync per step.
    for batch in iterator:
      if not dp.fits(len(batch["mask"])):
        continue
      state = train_step(state, dp.global_batch(batch), jax.random.fold_in(key, step), lr_scale)
      if first_step_seconds is None:
        jax.block_until_ready(state.step)
        first_step_seconds = time.time() - start_time
        log.message(f"First step done {first_step_seconds:.1f} s after start (data, model, compile).")
      bar.update(1)
      if (step + 1) % config.train.log_every_steps == 0:
        window = jax.device_get(state.window_sums)
        state = state.replace(window_sums=dp.replicate(zero_sums(num_classes)))
        check_finite(state, step + 1)
        batch_metrics = metrics_lib.from_confusion(window["confusion"], window["loss"], window["count"])
        log.batch(step + 1, epoch, batch_metrics, float(schedule(step)) * plateau.scale)
        bar.set_postfix(loss=f"{batch_metrics['loss']:.4f}", acc=f"{batch_metrics['accuracy']:.4f}")
      every = config.checkpoint.every_steps
      if every and (step + 1) % every == 0 and (step + 1) % steps_per_epoch:
        save(epoch, {"next_index": iterator.get_state()["next_index"]})
      step += 1
    bar.close()

    sums = jax.device_get(state.epoch_sums)
    check_finite(state, int(state.step))
    record = {"epoch": epoch + 1, "step": int(state.step), "learning_rate": float(schedule(int(state.step) - 1)) * plateau.scale}
    record.update({f"train_{k}": v for k, v in metrics_lib.from_confusion(sums["confusion"], sums["loss"], sums["count"]).items()})
    if val_split is not None:
      val_logits = predict_split(eval_step, state, val_split, data, dp, rows=val_rows)
      record.update({f"val_{k}": v for k, v in split_metrics(val_logits, val_split, step_cfg).items()})
    history.append(record)
    monitored = _monitored(record, config.checkpoint.monitor)
    is_best = best.improved(monitored)
    if is_best:
      best.best = monitored
      meta["best"] = {"monitor": config.checkpoint.monitor, "value": monitored, "step": record["step"], "epoch": epoch + 1, "metrics": record}
    if config.reduce_on_plateau.enabled:
      if plateau.update(_monitored(record, config.reduce_on_plateau.monitor), config.optimizer.learning_rate):
        log.message(f"Reducing the learning rate to {config.optimizer.learning_rate * plateau.scale:.3g}.")
    if config.early_stopping.enabled:
      stopped_early = early.update(_monitored(record, config.early_stopping.monitor))
    log.epoch(record, is_best, seconds=time.time() - epoch_start)
    last_epoch = epoch + 1 == epochs or stopped_early
    save(epoch + 1 if not stopped_early else epochs, None, is_best=is_best)
    if last_epoch:
      break

  checkpoints.wait()
  checkpoints.close()
  summary = {
    "final": history[-1] if history else None,
    "best": meta["best"],
    "epochs": len(history),
    "stopped_early": stopped_early,
    "class_names": class_names,
    "data": {
      "sizes": {name: len(split) for name, split in splits.items()},
      "class_counts": {name: split.class_counts().tolist() for name, split in splits.items()},
    },
    "checkpoints": {"latest": checkpoints.latest_dir, "best": checkpoints.best_dir},
    "wall_seconds": time.time() - start_time,
    "first_step_seconds": first_step_seconds,
  }
  log.finish(summary)
  return summary


def cache_backbone_features(
  config, model, state, eval_graphdef, prepare, train_split, val_split, dp, log
) -> tuple[np.ndarray | None, np.ndarray | None]:
  """The frozen backbone's features of the train (every cached flip) and val images, computed
  once; (None, None) when `feature_cache.decide` says not to, or they would not fit in memory."""
  cache, why_not = feature_cache.decide(config, model, dp.processes)
  aug = augment.from_config(config.data)
  variants = feature_cache.flip_variants(aug)
  features_step = feature_cache.make_features_step(eval_graphdef, prepare, variants, config.dtype, dp.replicated)
  if cache:
    image_shape = (*config.data.image_size, 1 if config.data.color_mode == "grayscale" else 3)
    size = feature_cache.feature_bytes(features_step, state, image_shape, len(train_split))
    if size > feature_cache.MAX_BYTES:
      cache, why_not = False, f"they would take {size / 2**30:.1f} GiB"
      if config.train.cache_features == "on":
        raise ValueError(f"config.train.cache_features='on', but the backbone's features {why_not} (limit {feature_cache.MAX_BYTES / 2**30:.0f} GiB).")
  if not cache:
    log.message(f"Backbone features are not cached: {why_not}.")
    return None, None
  start = time.time()
  train_rows = predict_split(features_step, state, train_split, config.data, dp)
  val_rows = None
  if val_split is not None:
    val_step = feature_cache.make_features_step(eval_graphdef, prepare, variants[:1], config.dtype, dp.replicated)
    val_rows = predict_split(val_step, state, val_split, config.data, dp)
  copies = f" ({len(variants)} flipped copies each)" if len(variants) > 1 else ""
  log.message(
    f"Frozen backbone: its features of {len(train_split)} train{copies} and {len(val_split or [])} val images "
    f"computed once in {time.time() - start:.1f} s; epochs train only the head."
  )
  return train_rows, val_rows


def enable_compile_cache(setting: str) -> None:
  """XLA's persistent compilation cache, so a rerun or resume skips compiling."""
  if setting == "off":
    return
  from imgcls.data.builtin import cache_dir

  jax.config.update("jax_compilation_cache_dir", setting or os.path.join(cache_dir(), "jax"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def monitor_training_metrics(config: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, list[str]]:
  """For a run without a validation split: a copy of `config` whose monitors of val_ metrics
  watch the train_ ones, and notes saying so."""
  config, notes = config.copy_and_resolve_references(), []
  for section in ("checkpoint", "reduce_on_plateau", "early_stopping"):
    name = config[section].monitor
    if name.startswith("val_"):
      with config.unlocked():
        config[section].monitor = "train_" + name.removeprefix("val_")
      if config[section].get("enabled", True):
        notes.append(f"No validation split: {section}.monitor watches {config[section].monitor} instead of {name}.")
  return config, notes


def _monitored(record: dict, name: str) -> float:
  if name not in record:
    options = ", ".join(k for k in record if k.startswith(("train_", "val_")))
    raise ValueError(f"Cannot monitor {name!r}: this run logs {options}.")
  return float(record[name])


def check_finite(state: TrainState, step: int) -> None:
  loss = float(jax.device_get(state.epoch_sums["loss"]))
  if not math.isfinite(loss):
    raise TrainingDiverged(
      f"The training loss became {loss} by step {step}. Training stopped; the checkpoints already saved "
      "are intact. Lower optimizer.learning_rate, clip gradients (optimizer.grad_clip_norm) or check the data."
    )
