"""Train-step throughput of a recipe: images/s after compilation, compile time, peak memory.

  python bench/train_step.py --config=configs/pollen_cnn.py --steps=50

Steps run on real batches from the recipe's pipeline, loaded before timing, so the figure is the
jitted step alone; `pipeline_images_per_s` times the same number of batches read by the pipeline.
Prints one JSON object.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

from imgcls import optim, steps
from imgcls.data import grain_pipeline, images, sources

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file.")
_STEPS = flags.DEFINE_integer("steps", 50, "Timed train steps.")


def main(argv):
  del argv
  config = _CONFIG.value
  splits = sources.find_splits(config.data, config.seed)
  split = splits["train"]
  num_classes = len(split.class_names)
  batch_size = config.data.batch_size
  model = steps.create_model(config, num_classes)
  graphdef, _, params, frozen, stats = steps.split_model(model)
  tx = optim.make_optimizer(config.optimizer, optim.learning_rate_schedule(config.optimizer, 100, 1))
  state = steps.initial_state(params, frozen, stats, tx, num_classes)
  step_cfg = steps.StepConfig(num_classes, config.train.threshold, 0.0, (), config.dtype)
  step_fn = steps.make_train_step(graphdef, tx, optim.update_scales(params, config), step_cfg)

  spec = images.ImageSpec.from_config(config.data)
  ds = grain_pipeline.train_dataset(split, spec, batch_size, config.seed, 0)
  full = [b for b in (ds[i] for i in range(len(ds))) if len(b["label"]) == batch_size]
  key = jax.random.key(0)
  scale = jnp.float32(1.0)

  start = time.perf_counter()
  state = step_fn(state, full[0], key, scale)
  jax.block_until_ready(state.step)
  compile_s = time.perf_counter() - start

  start = time.perf_counter()
  for i in range(_STEPS.value):
    state = step_fn(state, full[i % len(full)], key, scale)
  jax.block_until_ready(state.params)
  step_s = (time.perf_counter() - start) / _STEPS.value

  start = time.perf_counter()
  count = 0
  for epoch in range(100):
    for batch in grain_pipeline.iterate(
      grain_pipeline.train_dataset(split, spec, batch_size, config.seed, epoch), config.data.num_threads, config.data.prefetch
    ):
      count += len(batch["label"])
      if count >= _STEPS.value * batch_size:
        break
    if count >= _STEPS.value * batch_size:
      break
  pipeline_s = time.perf_counter() - start

  print(
    json.dumps(
      {
        "config": sys.argv[1] if len(sys.argv) > 1 else None,
        "model": config.model.name,
        "image_size": list(config.data.image_size),
        "batch_size": batch_size,
        "device": str(jax.devices()[0]),
        "steps": _STEPS.value,
        "compile_s": round(compile_s, 3),
        "step_ms": round(step_s * 1000, 3),
        "train_images_per_s": round(batch_size / step_s, 1),
        "pipeline_images_per_s": round(count / pipeline_s, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
      },
      indent=2,
    )
  )


if __name__ == "__main__":
  app.run(main)
