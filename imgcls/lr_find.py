"""`--mode=lr_find`: fastai's learning-rate finder on the run's own data and model.

A short run from the config's initial weights whose learning rate grows exponentially from
`lr_find.start` to `lr_find.end` over `lr_find.steps` train steps (the recipe's optimizer,
augmentation, mixing and frozen layers), recording each batch's loss, until the smoothed loss
passes 4x its minimum. Writes `lr_find.json` (rates, losses, suggestions) and `lr_find.png` to
the workdir, and the report shows them. Nothing else in the workdir changes: no checkpoints.

The suggestion is fastai's "valley" (the middle of the longest descending stretch of the loss);
"steepest" (the most negative slope) and "minimum / 10" are reported too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from imgcls import models, optim, parallel, steps
from imgcls.data import augment, pipeline, sources


def valley(losses: np.ndarray) -> int:
  """fastai's `valley`: the index a little past the middle of the longest decreasing subsequence."""
  n = len(losses)
  longest = [1] * n
  start = end = 0
  for i in range(1, n):
    for j in range(i):
      if losses[i] < losses[j] and longest[i] < longest[j] + 1:
        longest[i] = longest[j] + 1
      if longest[end] < longest[i]:
        end, start = i, i - longest[i]
  sections = (end - start) / 3
  return start + int(sections) + int(sections / 2)


def suggestions(lrs: np.ndarray, smoothed: np.ndarray) -> dict[str, float]:
  """{"valley", "steepest", "minimum_over_10"} learning rates of a loss-vs-rate curve."""
  slopes = np.gradient(smoothed, np.log(lrs)) if len(lrs) > 1 else np.zeros(1)
  return {
    "valley": float(lrs[valley(smoothed)]),
    "steepest": float(lrs[int(np.argmin(slopes))]),
    "minimum_over_10": float(lrs[int(np.argmin(smoothed))] / 10),
  }


def lr_find(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the finder (see the module docstring) and returns what `lr_find.json` holds."""
  finder = config.lr_find
  config = steps.monitor_training_metrics(config)[0]
  splits = sources.find_splits(config.data, config.seed)
  train_split = splits["train"]
  num_classes = len(train_split.class_names)
  dp = parallel.DataParallel()
  batch_size, shard, _ = steps.process_batches(config, len(train_split), dp)
  step_cfg = dataclasses.replace(steps.step_config(config, train_split), ema_decay=0.0)  # No averages: a throwaway run.
  model = steps.create_model(config, num_classes)
  graphdef, _, params, frozen, stats = steps.split_model(model)
  ratio = (finder.end / finder.start) ** (1 / max(finder.steps - 1, 1))
  schedule = optax.exponential_decay(finder.start, transition_steps=1, decay_rate=ratio)
  tx = optim.make_optimizer(config.optimizer, schedule)
  state = dp.replicate(steps.initial_state(params, frozen, stats, tx, num_classes))
  aug = augment.from_config(config.data)
  normalize = augment.make_normalize(config.data, lambda: pipeline.eval_batches(train_split, config.data))
  prepare = steps.make_prepare(aug, normalize, 255.0 * config.data.rescale, config.data.augment_on == "device")
  train_step = steps.make_train_step(
    graphdef, tx, optim.update_scales(params, config, models.backbone_blocks(model)), step_cfg, prepare, dp.replicated
  )
  key = jax.random.key(config.seed)
  lrs, losses, smoothed = [], [], []
  average, best, epoch, done = 0.0, math.inf, 0, False
  while not done:  # Epochs of the training data, as many as the steps need.
    host_augment = aug if config.data.augment_on == "host" else None
    for batch in pipeline.train_batches(
      train_split, config.data, config.seed, epoch, batch_size=batch_size, shard=shard, host_augment=host_augment
    ):
      if not dp.fits(len(batch["mask"])):
        continue
      step = len(lrs)
      state = state.replace(window_sums=dp.replicate(steps.zero_sums(num_classes)))
      state = train_step(state, dp.global_batch(batch), jax.random.fold_in(key, step), jnp.float32(1.0))
      sums = jax.device_get(state.window_sums)
      loss = float(sums["loss"] / max(float(sums["count"]), 1.0))
      average = 0.98 * average + 0.02 * loss  # fastai's smoothing, debiased.
      lrs.append(float(schedule(step)))
      losses.append(loss)
      smoothed.append(average / (1 - 0.98 ** (step + 1)))
      best = min(best, smoothed[-1])
      done = not math.isfinite(loss) or smoothed[-1] > 4 * best or len(lrs) >= finder.steps
      if done:
        break
    epoch += 1
  rates, curve = np.asarray(lrs), np.asarray(smoothed)
  finite = np.isfinite(curve)
  result = {
    "learning_rates": lrs,
    "losses": losses,
    "smoothed_losses": smoothed,
    "suggestions": suggestions(rates[finite], curve[finite]) if finite.any() else {},
    "stopped_early": len(lrs) < finder.steps,
    "start": finder.start,
    "end": finder.end,
    "optimizer": config.optimizer.name,
  }
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "lr_find.json"), "w") as f:
    json.dump(result, f, indent=1)
  from imgcls.report import html, plots

  plots.lr_find_curve(result, os.path.join(workdir, "lr_find.png"))
  html.write_report(workdir)
  suggested = result["suggestions"].get("valley")
  print(
    f"Learning-rate finder: {len(lrs)} steps from {finder.start:g} to {lrs[-1]:.3g}; suggested learning rate "
    f"{suggested:.3g} (fastai's valley; steepest {result['suggestions']['steepest']:.3g}). "
    f"Curve in {os.path.join(os.path.abspath(workdir), 'lr_find.png')}"
    if suggested
    else f"Learning-rate finder: the loss was not finite from the first step at {finder.start:g}."
  )
  return result
