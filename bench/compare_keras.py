"""imgcls vs Keras on TensorFlow, side by side in one process: train images/s, ratio, compile time.

  python bench/compare_keras.py [--cases=pollen,insects,flowers_vgg19,pollen_eval,flowers_vgg19_epochs] [--steps=10] [--repeats=3]

Same model, batch size and real batches (from imgcls's pipeline) for both. After compiling, each
repeat times `--steps` steps of imgcls, then of Keras, so a busy moment slows both; the step time
reported is each side's median over repeats. The first case is also timed before TensorFlow is
loaded (`imgcls_before_tf`), since imgcls runs faster in a process where TensorFlow has run. Needs the `tf` extra
(`pip install -e '.[tf]'`). Random weights: speed does not depend on them. Prints one JSON object.

`flowers_vgg19_epochs` times whole epochs of seed 002's recipe (frozen VGG19, random flips) on
`--images` flowers17 training images: Keras's `fit` on the decoded images in memory, and
imgcls's train loop with the backbone's features cached (the default) and not cached.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["KERAS_BACKEND"] = "tensorflow"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from imgcls import train  # noqa: E402
from imgcls.config import default_config  # noqa: E402
from imgcls.data import pipeline, sources  # noqa: E402

SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")


def configs() -> dict:
  pollen = default_config()
  pollen.data.update(dir=os.path.join(SHARED, "pollen"), image_size=(90, 90), rescale=1 / 255, label_mode="binary", batch_size=32)
  pollen.model.update(name="mobilenet_v2", cut_at="block_6_expand_relu")
  pollen.model.head.update(pooling="flatten", hidden=(64,), dropout=0.0)
  insects = default_config()
  insects.data.update(dir=os.path.join(SHARED, "flowers17", "train"), image_size=(180, 180), rescale=1 / 255, batch_size=32)
  insects.model.update(name="insects_cnn")
  flowers = default_config()
  flowers.data.update(dir=os.path.join(SHARED, "flowers17"), image_size=(224, 224), rescale=1 / 255, batch_size=32)
  flowers.model.update(name="vgg19", pooling="max", freeze="all")
  flowers.model.head.update(pooling="none", hidden=(128,), dropout=0.3)
  return {"pollen": pollen, "insects": insects, "flowers_vgg19": flowers}


def keras_model(case: str, num_classes: int):
  import keras
  from keras import layers

  if case.startswith("pollen"):
    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(90, 90, 3))
    cut = keras.Model(base.input, base.get_layer("block_6_expand_relu").output)
    model = keras.Sequential([cut, layers.Flatten(), layers.Dense(64, activation="relu"), layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy")
  elif case == "insects":
    model = keras.Sequential([
      keras.Input((180, 180, 3)),
      layers.Conv2D(16, 3, padding="same", activation="relu"), layers.MaxPooling2D(),
      layers.Conv2D(32, 3, padding="same", activation="relu"), layers.MaxPooling2D(),
      layers.Conv2D(64, 3, padding="same", activation="relu"), layers.MaxPooling2D(),
      layers.Flatten(), layers.Dense(128, activation="relu"), layers.Dense(num_classes),
    ])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  else:
    base = keras.applications.VGG19(include_top=False, weights=None, input_shape=(224, 224, 3), pooling="max")
    base.trainable = False
    model = keras.Sequential([base, layers.Dense(128, activation="relu"), layers.Dropout(0.3), layers.Dense(num_classes, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
  return model


def real_batches(config, count: int) -> list[dict]:
  split = sources.find_splits(config.data, 0)["train"]
  ds = pipeline.train_dataset(split, pipeline.ImageSpec.from_config(config.data), config.data.batch_size, 0, 0)
  full = [ds[i] for i in range(len(ds)) if len(ds[i]["label"]) == config.data.batch_size]
  return [full[i % len(full)] for i in range(count)], len(split.class_names)


def timed(run, batches: list) -> tuple[float, Callable[[], float]]:
  """(seconds of the first call, a function timing one pass over the other batches: seconds per step).

  `run(i)` runs on batch i; `run(None)` waits for what was run."""
  start = time.perf_counter()
  run(0)
  run(None)
  compile_s = time.perf_counter() - start

  def one_pass() -> float:
    start = time.perf_counter()
    for i in range(1, len(batches)):
      run(i)
    run(None)  # Waits for the last step.
    return (time.perf_counter() - start) / (len(batches) - 1)

  return compile_s, one_pass


def imgcls_runner(config, batches, num_classes, eval_only: bool) -> tuple[float, Callable[[], float]]:
  model = train.create_model(config, num_classes)
  graphdef, eval_graphdef, params, frozen, stats = train.split_model(model)
  tx = train.make_optimizer(config.optimizer, train.learning_rate_schedule(config.optimizer, 100, 1))
  state = train.initial_state(params, frozen, stats, tx, num_classes)
  if eval_only:
    step = train.make_eval_step(eval_graphdef)
    run = lambda s, b: (s, step(s, b["image"]))
  else:
    fn = train.make_train_step(graphdef, tx, train.update_scales(params, config), train.StepConfig(num_classes, 0.5, 0.0, ()))
    key, scale = jax.random.key(0), jnp.float32(1.0)
    run = lambda s, b: (fn(s, b, key, scale), None)
  latest = [state, None]

  def run_index(i: int | None) -> None:
    if i is None:
      jax.block_until_ready(latest)
    else:
      latest[:] = run(latest[0], batches[i])

  return timed(run_index, batches)


def keras_runner(case, batches, num_classes, eval_only: bool) -> tuple[float, Callable[[], float]]:
  model = keras_model(case, num_classes)
  x = [b["image"] * 255.0 if case.startswith("pollen") or case == "flowers_vgg19" else b["image"] for b in batches]
  y = [b["label"].astype("float32") if case.startswith("pollen") else b["label"] for b in batches]
  step = (lambda i: model.predict_on_batch(x[i])) if eval_only else (lambda i: model.train_on_batch(x[i], y[i]))
  return timed(lambda i: None if i is None else step(i), batches)  # Keras returns numpy: each step waits.


def time_epochs(epochs: int, images: int) -> dict:
  """Seconds per epoch of the frozen-VGG19 flowers recipe, Keras-TF vs imgcls cached and not."""
  import csv
  import runpy
  import tempfile

  import keras
  import numpy as np
  from keras import layers

  root = os.path.join(SHARED, "flowers17", "train")
  rows = [(os.path.join(c, f), c) for c in sorted(os.listdir(root)) for f in sorted(os.listdir(os.path.join(root, c)))]
  rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))[:images]]
  workdir = tempfile.mkdtemp(prefix="imgcls_epochs_")
  with open(os.path.join(workdir, "index.csv"), "w", newline="") as f:
    csv.writer(f).writerows([("path", "label"), *rows])
  config = runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "configs", "flowers.py"))["get_config"]()
  config.data.update(dir=root, index=os.path.join(workdir, "index.csv"), validation_split=0.0, cache="memory")
  config.model.weights = ""
  config.train.update(epochs=epochs, progress=False)
  config.compile_cache = "off"
  results = {}
  for setting in ("auto", "off"):
    config.train.cache_features = setting
    run_dir = os.path.join(workdir, setting)
    summary = train.train_and_evaluate(config, run_dir)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
      seconds = [r["seconds"] for r in map(json.loads, f) if r["type"] == "epoch"]
    results["imgcls_cached" if setting == "auto" else "imgcls_uncached"] = {
      "total_s": round(summary["wall_seconds"], 1), "epoch_s": seconds, "final_train_loss": round(summary["final"]["train_loss"], 4)
    }
  split = sources.find_splits(config.data, 0)["train"]
  batches = list(pipeline.eval_batches(split, config.data))
  x = np.concatenate([b["image"][b["mask"] > 0] for b in batches]) * 255.0
  y = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
  base = keras.applications.VGG19(include_top=False, weights=None, input_shape=(224, 224, 3), pooling="max")
  base.trainable = False
  model = keras.Sequential([
    keras.Input((224, 224, 3)), layers.RandomFlip("horizontal"), base,
    layers.Dense(128, activation="relu"), layers.Dropout(0.3), layers.Dense(17, activation="softmax"),
  ])
  model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
  times = []

  class Timer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
      self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
      times.append(round(time.perf_counter() - self.start, 2))

  start = time.perf_counter()
  model.fit(x, y, batch_size=32, epochs=epochs, shuffle=True, verbose=0, callbacks=[Timer()])
  results["keras_tf"] = {"total_s": round(time.perf_counter() - start, 1), "epoch_s": times}
  later = lambda r: sum(r["epoch_s"][1:]) / max(len(r["epoch_s"]) - 1, 1)  # noqa: E731
  results["images"] = len(y)
  results["speedup_later_epochs"] = round(later(results["keras_tf"]) / later(results["imgcls_cached"]), 1)
  results["speedup_total"] = round(results["keras_tf"]["total_s"] / results["imgcls_cached"]["total_s"], 2)
  return results


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--cases", default="pollen,insects,pollen_eval,flowers_vgg19")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=3, help="passes of --steps steps per side, taken in turns")
  parser.add_argument("--epochs", type=int, default=3, help="flowers_vgg19_epochs: epochs per run")
  parser.add_argument("--images", type=int, default=256, help="flowers_vgg19_epochs: training images")
  args = parser.parse_args()
  cases = configs()
  results = {}
  for case in args.cases.split(","):
    if case == "flowers_vgg19_epochs":
      results[case] = time_epochs(args.epochs, args.images)
      print(json.dumps({case: results[case]}), flush=True)
      continue
    config = cases[case.removesuffix("_eval")]
    batches, num_classes = real_batches(config, args.steps + 1)
    eval_only = case.endswith("_eval")
    ours = imgcls_runner(config, batches, num_classes, eval_only)
    # imgcls also runs faster once TensorFlow has run in the process (pollen: about 138 before,
    # 120 ms/step after): so it is timed alone too, while TensorFlow is not yet loaded.
    alone = [ours[1]() for _ in range(args.repeats)] if "tensorflow" not in sys.modules else []
    runners = {"imgcls": ours, "keras_tf": keras_runner(case, batches, num_classes, eval_only)}
    passes = {side: [] for side in runners}
    for _ in range(args.repeats):
      for side, (_, one_pass) in runners.items():
        passes[side].append(one_pass())
    results[case] = {}
    for side, (compile_s, _) in runners.items():
      seconds = statistics.median(passes[side])
      results[case][side] = {
        "compile_s": round(compile_s, 2), "step_ms": round(seconds * 1000, 1),
        "images_per_s": round(config.data.batch_size / seconds, 1), "pass_step_ms": [round(t * 1000, 1) for t in passes[side]],
      }
    if alone:
      seconds = statistics.median(alone)
      results[case]["imgcls_before_tf"] = {"step_ms": round(seconds * 1000, 1), "pass_step_ms": [round(t * 1000, 1) for t in alone]}
      results[case]["speedup_before_tf"] = round(results[case]["keras_tf"]["step_ms"] / (seconds * 1000), 2)
    results[case]["speedup"] = round(results[case]["imgcls"]["images_per_s"] / results[case]["keras_tf"]["images_per_s"], 2)
    print(json.dumps({case: results[case]}), flush=True)
  results["device"] = str(jax.devices()[0])
  results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
