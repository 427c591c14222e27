"""What the model is fed: one training batch as the train step sees it, augmentations included,
as a grid of images titled with their class names (`--mode=inspect`)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from imgcls.data import augment, grain_pipeline, images, order, sources


def training_batch(config: ml_collections.ConfigDict, step: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """(images, labels, class names) of the training batch of `step`, augmented as the train step
  augments it (host augmentation in the pipeline, device augmentation with the step's key), before
  normalisation. Single-process view: the whole batch."""
  splits = sources.find_splits(config.data, config.seed)
  split = splits["train"]
  data = config.data
  steps_per_epoch = order.num_batches(split, data.batch_size)
  epoch, index = divmod(step, steps_per_epoch)
  aug = augment.from_config(data)
  host_aug = aug if data.augment_on == "host" else None
  ds = grain_pipeline.train_dataset(
    split, images.ImageSpec.from_config(data), data.batch_size, config.seed, epoch, data.shuffle, host_aug
  )
  batch = ds[index]
  pixels = batch["image"]
  if data.augment_on == "device" and aug.enabled:
    # As train_step: key = fold_in(key(seed), step), split into (dropout, augment).
    _, augment_key = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), step))
    pixels = augment.apply_device(aug, jnp.asarray(pixels), augment_key, 255.0 * data.rescale)
  return np.asarray(pixels), np.asarray(batch["label"]), list(split.class_names)


def inspect(config: ml_collections.ConfigDict, workdir: str, step: int = 0) -> dict:
  """Writes `workdir/inspect/train_batch_step<step>.png` and returns its path and titles."""
  from imgcls.report import html, plots

  images, labels, class_names = training_batch(config, step)
  titles = [class_names[i] for i in labels]
  ops = config.data.augment or "none"
  title = f"training batch of step {step}: augmentation {ops} ({config.data.augment_on}), before normalisation"
  path = plots.image_grid(images, titles, os.path.join(workdir, "inspect", f"train_batch_step{step}.png"), title=title)
  if os.path.isfile(os.path.join(workdir, "config.json")):
    html.write_report(workdir)
  print(f"{len(images)} training images of step {step}: {os.path.abspath(path)}")
  return {"path": path, "titles": titles, "labels": labels.tolist()}
