"""Training: the loop with its callbacks, checkpoints and logs.

Read top to bottom: `train_and_evaluate` finds the data, builds the model and optimizer,
restores the latest checkpoint if the workdir has one, then runs epochs of jitted train steps
(`steps.py`), validates (`predict.py`), logs, adjusts the learning rate on plateaus, stops
early, and saves checkpoints (`checkpoint.py`). Only `main.py`, `sweep.py` and tests import it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from imgcls import checkpoint as ckpt_lib
from imgcls import feature_cache, models, optim, parallel, steps
from imgcls import metrics as metrics_lib
from imgcls.data import augment, pipeline, sources
from imgcls.logs import RunLog
from imgcls.predict import predict_split
from imgcls.steps import TrainState


class TrainingDiverged(RuntimeError):
  """The loss became NaN or infinite."""


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


@dataclasses.dataclass
class Callbacks:
  """What runs after every epoch: the best-checkpoint monitor, reduce-on-plateau and early
  stopping, resumed from a checkpoint's meta."""

  plateau: Plateau
  early: EarlyStopping
  best: Monitor  # The checkpoint's monitored metric.

  @classmethod
  def from_meta(cls, config: ml_collections.ConfigDict, meta: ckpt_lib.RunMeta) -> Callbacks:
    best = Monitor(config.checkpoint.mode, best=meta.best["value"] if meta.best else None)
    return cls(
      Plateau(config.reduce_on_plateau, **meta.plateau), EarlyStopping(config.early_stopping, **meta.early_stopping), best
    )

  def end_of_epoch(
    self, config: ml_collections.ConfigDict, record: dict, meta: ckpt_lib.RunMeta, log: RunLog
  ) -> tuple[bool, bool]:
    """(is this epoch the best so far, stop now) after `record`; the best goes into `meta`."""
    monitored = _monitored(record, config.checkpoint.monitor)
    is_best = self.best.improved(monitored)
    if is_best:
      self.best.best = monitored
      meta.best = {
        "monitor": config.checkpoint.monitor,
        "value": monitored,
        "step": record["step"],
        "epoch": record["epoch"],
        "metrics": record,
      }
    if config.reduce_on_plateau.enabled:
      if self.plateau.update(_monitored(record, config.reduce_on_plateau.monitor), config.optimizer.learning_rate):
        log.message(f"Reducing the learning rate to {config.optimizer.learning_rate * self.plateau.scale:.3g}.")
    stop = config.early_stopping.enabled and self.early.update(_monitored(record, config.early_stopping.monitor))
    return is_best, stop


# ---------------------------------------------------------------------------------------------
# The loop.


def check_workdir_outside_data(workdir: str, data_config: ml_collections.ConfigDict) -> None:
  """Fails if the run would write into its own image folders (its outputs would be read as classes)."""
  folder = data_config.dir
  if not folder or data_config.index or folder.startswith(("builtin:", "tfds:")):
    return
  data = os.path.realpath(folder)
  if os.path.commonpath([data, os.path.realpath(workdir)]) == data:
    raise ValueError(
      f"--workdir={workdir} is inside data.dir={folder}: its checkpoints and logs would be read as "
      "images. Put the workdir elsewhere."
    )


def stage_configs(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
  """The configs of the run's stages: itself, or with `train.frozen_epochs` two, as Keras's
  transfer-learning guide and fastai's `fine_tune`: the head alone on the frozen backbone (in
  inference mode; its features cached when they can be) for frozen_epochs epochs at
  `train.frozen_learning_rate`, then the network as configured (`model.freeze`,
  `model.backbone_learning_rate`) for the remaining epochs, each stage with a fresh optimizer and
  schedule."""
  if not config.train.frozen_epochs:
    return [config]
  frozen = config.copy_and_resolve_references()
  frozen.model.freeze, frozen.model.backbone_learning_rate = "all", 0.0
  frozen.train.epochs = config.train.frozen_epochs
  frozen.optimizer.learning_rate = config.train.frozen_learning_rate or config.optimizer.learning_rate
  return [frozen, config]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming what is there, in whichever stage) and returns the run summary."""
  stages = stage_configs(config)
  summary = {}
  for stage, stage_config in enumerate(stages):
    summary = train_stage(stage_config, workdir, stage=stage, stages=len(stages), run_config=config) or summary
  return summary


def train_stage(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  stage: int = 0,
  stages: int = 1,
  run_config: ml_collections.ConfigDict | None = None,
) -> dict | None:
  """Trains `config` (one stage of `run_config`) in `workdir`, resuming what is there; returns the
  run summary after the last stage (None for a stage that the workdir has already finished).

  One function on purpose, as the flax examples' `train_and_evaluate`: the loop reads top to bottom,
  set-up, epochs of steps, validation, callbacks, checkpoints; its parts are the functions above."""
  start_time = time.time()
  run_config = run_config or config
  check_workdir_outside_data(workdir, config.data)
  os.makedirs(workdir, exist_ok=True)
  enable_compile_cache(config.compile_cache)
  checkpoints = ckpt_lib.Checkpoints(workdir, config.checkpoint.max_to_keep, config.checkpoint.async_save)
  latest = checkpoints.latest_step()
  saved = ckpt_lib.read_meta(os.path.join(checkpoints.latest_dir, str(latest))) if latest is not None else None
  if saved is not None and saved.stage > stage:
    checkpoints.close()
    return None  # A later stage has begun: this one is done.
  splits = sources.find_splits(config.data, config.seed)
  train_split, val_split = splits["train"], splits.get("val")
  monitor_notes = []
  if val_split is None:
    config, monitor_notes = steps.monitor_training_metrics(config)
    run_config = steps.monitor_training_metrics(run_config)[0]
  class_names = train_split.class_names
  num_classes = len(class_names)
  dp = parallel.DataParallel()
  batch_size, shard, steps_per_epoch = steps.process_batches(config, len(train_split), dp)
  epochs = config.train.epochs
  first_epoch = run_config.train.frozen_epochs if stage else 0  # Where this stage's schedule starts.
  step_cfg = steps.step_config(config, train_split)

  model = steps.create_model(config, num_classes)
  graphdef, eval_graphdef, params, frozen, stats = steps.split_model(model)
  # Every stage's sizes, checked before the first stage trains.
  train_sizes = pipeline.train_image_sizes(config.data, run_config.train.epochs)
  if train_sizes != [tuple(config.data.image_size)]:
    steps.check_image_sizes(eval_graphdef, (params, frozen, stats), train_sizes, config)
  schedule = optim.learning_rate_schedule(config.optimizer, steps_per_epoch, epochs - first_epoch)
  tx = optim.make_optimizer(config.optimizer, schedule)
  use_ema = config.train.ema_decay > 0
  state = steps.initial_state(params, frozen, stats, tx, num_classes, ema=use_ema)
  state = dp.replicate(state)
  meta = ckpt_lib.RunMeta(class_names=list(class_names))
  if saved is not None and saved.stage < stage:
    # The previous stage ended at the latest checkpoint: its weights (not their averages), a fresh
    # optimizer and schedule, the run's history and best so far.
    state = ckpt_lib.load_weights(state, os.path.join(checkpoints.latest_dir, str(latest)), prefer_ema=False)
    state = state.replace(step=jnp.asarray(latest, jnp.int32))
    if use_ema:
      state = state.replace(ema=steps.start_ema(state.params, state.stats))
    meta = dataclasses.replace(saved, stage=stage, stage_start_step=latest, data_state=None, plateau={}, early_stopping={})
  elif saved is not None:
    state, meta = checkpoints.restore(state)
    if meta.class_names and list(meta.class_names) != list(class_names):
      raise ckpt_lib.CheckpointError(
        f"The run in {workdir} was trained on the classes {meta.class_names}, the data now has {class_names}: "
        f"train in a new --workdir (--config.init_from={workdir} starts it from this run's best weights)."
      )
  elif config.init_from:
    state = ckpt_lib.load_weights(state, config.init_from)
    if use_ema:
      state = state.replace(ema=steps.start_ema(state.params, state.stats))
  callbacks = Callbacks.from_meta(config, meta)

  aug = augment.from_config(config.data)
  normalize = augment.make_normalize(config.data, lambda: pipeline.eval_batches(train_split, config.data), meta.normalization)
  meta.normalization = {"mean": normalize.mean, "std": normalize.std}
  prepare_images = steps.make_prepare(aug, normalize, 255.0 * config.data.rescale, config.data.augment_on == "device")
  state = dp.replicate(state)  # Restored or loaded values, onto every device.

  log = RunLog(workdir, run_config, enabled=jax.process_index() == 0)
  resumed_step = int(state.step)
  log.start(resumed_step, splits, class_names, model)
  for note in monitor_notes:
    log.message(note)
  if stages > 1:
    what = "the head on the frozen backbone" if stage == 0 else "the network as configured, a fresh optimizer"
    log.message(f"Stage {stage + 1} of {stages}: epochs {first_epoch + 1}-{epochs}, {what}.")
  train_features = val_features = None  # Cached backbone features of the train and val images.
  if config.model.freeze == "all" or config.train.cache_features == "on":
    train_features, val_features = cache_backbone_features(
      config, model, state, eval_graphdef, prepare_images, train_split, val_split, dp, log
    )
  on_features = train_features is not None  # The steps then see cached features and run only the head.
  # What the steps do to their inputs: augment and normalise images, or pick a cached flip's features.
  prepare = feature_cache.make_pick(aug, tuple(config.data.image_size)) if on_features else prepare_images
  train_step = steps.make_train_step(
    graphdef,
    tx,
    optim.update_scales(params, config, models.backbone_blocks(model)),
    dataclasses.replace(step_cfg, on_features=on_features),
    prepare,
    dp.replicated,
  )
  eval_step = steps.make_eval_step(eval_graphdef, prepare, dp.replicated, config.dtype, on_features=on_features)
  key = jax.random.key(config.seed)
  data = config.data
  history = meta.history
  stopped_early = False
  first_step_seconds = None

  def save(epoch: int, data_state: dict | None, *, is_best: bool = False) -> None:
    check_finite(state, int(state.step))
    meta.epoch, meta.data_state, meta.stage = epoch, data_state, stage
    meta.plateau, meta.early_stopping = callbacks.plateau.to_json(), callbacks.early.to_json()
    checkpoints.save(int(state.step), state, meta, best=is_best)

  start_epoch, start_data_state = meta.epoch, meta.data_state
  for epoch in range(start_epoch, epochs):
    resume_state = start_data_state if start_data_state and epoch == start_epoch else None
    epoch_start = time.time()
    size = pipeline.train_image_size(data, epoch)
    if data.progressive_sizes and (epoch == start_epoch or size != pipeline.train_image_size(data, epoch - 1)):
      evaluated = "x".join(map(str, data.image_size))
      log.message(f"Epoch {epoch + 1}: training on {size[0]}x{size[1]} images (progressive resizing; validation at {evaluated}).")
    iterator = pipeline.train_batches(
      train_split,
      data,
      config.seed,
      epoch,
      resume_state,
      batch_size=batch_size,
      shard=shard,
      host_augment=aug if data.augment_on == "host" else None,
      features=train_features,
    )
    if resume_state is None:
      state = state.replace(
        epoch_sums=dp.replicate(steps.zero_sums(num_classes)), window_sums=dp.replicate(steps.zero_sums(num_classes))
      )
    bar = log.progress(epoch, epochs, steps_per_epoch, initial=(resume_state or {}).get("next_index", 0))
    lr_scale = jnp.float32(callbacks.plateau.scale)
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
        state = state.replace(window_sums=dp.replicate(steps.zero_sums(num_classes)))
        check_finite(state, step + 1)
        batch_metrics = metrics_lib.from_confusion(window["confusion"], window["loss"], window["count"])
        log.batch(step + 1, epoch, batch_metrics, float(schedule(step - meta.stage_start_step)) * callbacks.plateau.scale)
        bar.set_postfix(loss=f"{batch_metrics['loss']:.4f}", acc=f"{batch_metrics['accuracy']:.4f}")
      every = config.checkpoint.every_steps
      if every and (step + 1) % every == 0 and (step + 1) % steps_per_epoch:
        save(epoch, {"next_index": iterator.get_state()["next_index"]})
      step += 1
    bar.close()

    sums = jax.device_get(state.epoch_sums)
    check_finite(state, int(state.step))
    learning_rate = float(schedule(int(state.step) - 1 - meta.stage_start_step)) * callbacks.plateau.scale
    record = {"epoch": epoch + 1, "step": int(state.step), "learning_rate": learning_rate}
    record.update(
      {f"train_{k}": v for k, v in metrics_lib.from_confusion(sums["confusion"], sums["loss"], sums["count"]).items()}
    )
    if val_split is not None:
      # With EMA on, validation (and so the best checkpoint) judges the moving averages, as timm's.
      val_logits = predict_split(functools.partial(eval_step, steps.ema_view(state)), val_split, data, dp, features=val_features)
      val_metrics = metrics_lib.from_logits(val_logits, val_split.labels, num_classes, step_cfg.threshold)
      record.update({f"val_{k}": v for k, v in val_metrics.items()})
    history.append(record)
    is_best, stopped_early = callbacks.end_of_epoch(config, record, meta, log)
    log.epoch(record, is_best, seconds=time.time() - epoch_start)
    last_epoch = epoch + 1 == epochs or stopped_early
    save(epoch + 1 if not stopped_early else epochs, None, is_best=is_best)
    if last_epoch:
      break

  checkpoints.wait()
  checkpoints.close()
  summary = {
    "final": history[-1] if history else None,
    "best": meta.best,
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
  if stage + 1 == stages:
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
        raise ValueError(
          f"config.train.cache_features='on', but the backbone's features {why_not} (limit {feature_cache.MAX_BYTES / 2**30:.0f} GiB)."
        )
  if not cache:
    log.message(f"Backbone features are not cached: {why_not}.")
    return None, None
  start = time.time()
  train_features = predict_split(functools.partial(features_step, state), train_split, config.data, dp)
  val_features = None
  if val_split is not None:
    val_step = feature_cache.make_features_step(eval_graphdef, prepare, variants[:1], config.dtype, dp.replicated)
    val_features = predict_split(functools.partial(val_step, state), val_split, config.data, dp)
  copies = f" ({len(variants)} flipped copies each)" if len(variants) > 1 else ""
  log.message(
    f"Frozen backbone: its features of {len(train_split)} train{copies} and {len(val_split or [])} val images "
    f"computed once in {time.time() - start:.1f} s; epochs train only the head."
  )
  return train_features, val_features


def enable_compile_cache(setting: str) -> None:
  """XLA's persistent compilation cache, so a rerun or resume skips compiling."""
  if setting == "off":
    return
  from imgcls.data.builtin import cache_dir

  jax.config.update("jax_compilation_cache_dir", setting or os.path.join(cache_dir(), "jax"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


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
