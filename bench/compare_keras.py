"""imgcls vs Keras on TensorFlow and PyTorch on the CPU, side by side in one run, in turns: ms/step and ratios.

  python bench/compare_keras.py [--cases=pollen,pollen_eval,insects,bn_cnn,dropout_cnn,flowers_vgg19,inception_v3]
      [--sides=imgcls,keras_tf,torch_eager,torch_compile] [--steps=10] [--repeats=3]
  python bench/compare_keras.py --cases=resnet50_finetune,efficientnet_b0_finetune --sides=imgcls,keras_tf

Sides `imgcls_onednn`, `imgcls_cpu` and `imgcls_xla` force one convolution implementation
(`model.convs`; `imgcls` is the default, `auto`).

Same architecture, batch size and real batches (from imgcls's pipeline, flowers17 or pollen) on
every side. After each side has compiled (its first step: `compile_s`), each repeat times `--steps`
steps of every side in turn, so a busy moment slows all of them, after one untimed pass each
(`warmup_step_ms`: there the processes first fault in their memory); a side's step time is its median
over repeats. `speedup_vs_<side>` is that side's step time over imgcls's (above 1: imgcls is faster).
PyTorch runs channels_last (its faster CPU layout), eager and `torch.compile`d (inductor). Each side
runs in a process of its own, as a user runs one framework (in one process they shared malloc's
arenas and OpenMP threads, and slowed each other by up to 2x). Peak RSS is that process's resident
memory at its highest while the side built, compiled and ran (`peak_rss_mb`), and what it added to
the process's memory after its imports (`added_rss_mb`). Needs the `bench` extra
(`pip install -e '.[bench]'`: TensorFlow and PyTorch). Random weights: speed does not depend on them. Prints one JSON line per case, then one JSON object.

`insects_fit` times the insects tutorial end to end on flowers17, each side's command from launch
to exit: `python -m imgcls.main --config=configs/insects.py` against the tutorial's Keras script
(`bench/insects_keras.py`), `--fit_epochs` epochs each, in turns `--fit_repeats` times; medians.

`flowers_vgg19_epochs` times whole epochs of the flowers tutorial's recipe (frozen VGG19, random
flips) on `--images` flowers17 training images: Keras's `fit` on the decoded images in memory, and
imgcls's train loop with the backbone's features cached (the default) and not cached.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["KERAS_BACKEND"] = "tensorflow"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from imgcls import optim, steps, train  # noqa: E402  (train: the end-to-end cases time its loop)
from imgcls.config import default_config  # noqa: E402
from imgcls.data import grain_pipeline, images, pipeline, sources  # noqa: E402
from imgcls.models import onednn  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(REPO, "..", "shared", "data")
SIDES = ("imgcls", "keras_tf", "torch_eager", "torch_compile")
IMGCLS_CONVS = ("onednn", "cpu", "xla")  # sides imgcls_onednn, imgcls_cpu, imgcls_xla: one implementation forced

# case -> (model, image size, batch size, data folder, label mode, model and head settings)
CASES = {
  "pollen": (
    "mobilenet_v2",
    (90, 90),
    32,
    "pollen",
    "binary",
    dict(cut_at="block_6_expand_relu"),
    dict(pooling="flatten", hidden=(64,), dropout=0.0),
  ),
  "insects": ("insects_cnn", (180, 180), 32, "flowers17/train", "int", {}, {}),
  "bn_cnn": ("bn_cnn", (256, 256), 16, "flowers17/train", "int", {}, {}),
  "dropout_cnn": ("dropout_cnn", (224, 224), 32, "flowers17/train", "int", {}, {}),
  "flowers_vgg19": (
    "vgg19",
    (224, 224),
    32,
    "flowers17/train",
    "int",
    dict(pooling="max", freeze="all"),
    dict(pooling="none", hidden=(128,), dropout=0.3),
  ),
  "inception_v3": (
    "inception_v3",
    (299, 299),
    16,
    "flowers17/train",
    "int",
    {},
    dict(pooling="avg", hidden=(1024,), dropout=0.0),
  ),
  # Fine-tuning a Keras backbone on new classes at 224: pooled features, one Dense (Keras's
  # transfer-learning guide). Keras-TF is their peer (no PyTorch build of these here).
  "resnet50_finetune": (
    "resnet50",
    (224, 224),
    16,
    "flowers17/train",
    "int",
    dict(pooling="avg"),
    dict(pooling="none", hidden=(), dropout=0.0),
  ),
  "efficientnet_b0_finetune": (
    "efficientnet_b0",
    (224, 224),
    16,
    "flowers17/train",
    "int",
    dict(pooling="avg"),
    dict(pooling="none", hidden=(), dropout=0.0),
  ),
}


def case_config(case: str):
  name, size, batch, folder, label_mode, model, head = CASES[case.removesuffix("_eval")]
  config = default_config()
  config.data.update(dir=os.path.join(SHARED, folder), image_size=size, rescale=1 / 255, label_mode=label_mode, batch_size=batch)
  config.model.update(name=name, weights="", **model)
  config.model.head.update(**head)
  return config


def keras_model(case: str, num_classes: int, image_size: tuple[int, int]):
  import keras
  from keras import layers

  shape = (*image_size, 3)
  loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  if case.startswith("pollen"):
    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=shape)
    cut = keras.Model(base.input, base.get_layer("block_6_expand_relu").output)
    model = keras.Sequential([cut, layers.Flatten(), layers.Dense(64, activation="relu"), layers.Dense(1, activation="sigmoid")])
    loss = "binary_crossentropy"
  elif case == "insects":
    from insects_keras import insects_cnn

    model = insects_cnn(num_classes, shape, rescale=False)
  elif case == "bn_cnn":
    bn = lambda: layers.BatchNormalization(momentum=0.1, epsilon=1e-5)  # noqa: E731
    model = keras.Sequential(
      [
        keras.Input(shape),
        layers.Conv2D(32, 7, strides=2, activation="relu"),
        bn(),
        layers.MaxPooling2D(),
        layers.Conv2D(32, 3, activation="relu"),
        bn(),
        layers.MaxPooling2D(),
        layers.Conv2D(32, 3, activation="relu"),
        bn(),
        layers.MaxPooling2D(),
        layers.Dropout(0.3),
        layers.Flatten(),
        layers.Dense(image_size[1], activation="relu"),
        bn(),
        layers.Dense(num_classes),
      ]
    )
  elif case == "dropout_cnn":
    model = keras.Sequential(
      [
        keras.Input(shape),
        layers.Conv2D(32, 3, activation="relu"),
        layers.Conv2D(64, 3, activation="relu"),
        layers.MaxPooling2D(),
        layers.Dropout(0.25),
        layers.Conv2D(64, 3, activation="relu"),
        layers.MaxPooling2D(),
        layers.Dropout(0.25),
        layers.Flatten(),
        layers.Dense(64, activation="relu"),
        layers.Dropout(0.5),
        layers.Dense(num_classes),
      ]
    )
  elif case.startswith("flowers_vgg19"):
    base = keras.applications.VGG19(include_top=False, weights=None, input_shape=shape, pooling="max")
    base.trainable = False
    model = keras.Sequential([base, layers.Dense(128, activation="relu"), layers.Dropout(0.3), layers.Dense(num_classes)])
  elif case == "inception_v3":
    base = keras.applications.InceptionV3(include_top=False, weights=None, input_shape=shape, pooling="avg")
    model = keras.Sequential([base, layers.Dense(1024, activation="relu"), layers.Dense(num_classes)])
  elif case.endswith("_finetune"):
    constructor = {"resnet50_finetune": "ResNet50", "efficientnet_b0_finetune": "EfficientNetB0"}[case]
    base = getattr(keras.applications, constructor)(include_top=False, weights=None, input_shape=shape, pooling="avg")
    model = keras.Sequential([base, layers.Dense(num_classes)])
  else:
    raise ValueError(f"No Keras model for case {case!r}.")
  model.compile(optimizer="adam", loss=loss)
  return model


def real_batches(config, count: int) -> list[dict]:
  split = sources.find_splits(config.data, 0)["train"]
  ds = grain_pipeline.train_dataset(split, images.ImageSpec.from_config(config.data), config.data.batch_size, 0, 0)
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
  model = steps.create_model(config, num_classes)
  graphdef, eval_graphdef, params, frozen, stats = steps.split_model(model)
  tx = optim.make_optimizer(config.optimizer, optim.learning_rate_schedule(config.optimizer, 100, 1))
  state = steps.initial_state(params, frozen, stats, tx, num_classes)
  if eval_only:
    step = steps.make_eval_step(eval_graphdef)
    run = lambda s, b: (s, step(s, b["image"]))
  else:
    fn = steps.make_train_step(graphdef, tx, optim.update_scales(params, config), steps.StepConfig(num_classes, 0.5, 0.0, ()))
    key, scale = jax.random.key(0), jnp.float32(1.0)
    run = lambda s, b: (fn(s, b, key, scale), None)
  latest = [state, None]

  def run_index(i: int | None) -> None:
    if i is None:
      jax.block_until_ready(latest)
    else:
      latest[:] = run(latest[0], batches[i])

  return timed(run_index, batches)


def keras_runner(case, batches, num_classes, eval_only: bool, image_size) -> tuple[float, Callable[[], float]]:
  model = keras_model(case, num_classes, image_size)
  x = [b["image"] for b in batches]
  y = [b["label"].astype("float32") if case.startswith("pollen") else b["label"] for b in batches]
  step = (lambda i: model.predict_on_batch(x[i])) if eval_only else (lambda i: model.train_on_batch(x[i], y[i]))
  return timed(lambda i: None if i is None else step(i), batches)  # Keras returns numpy: each step waits.


def torch_runner(case, batches, num_classes, eval_only: bool, image_size, compiled: bool) -> tuple[float, Callable[[], float]]:
  import torch
  import torch_models

  torch.manual_seed(0)
  backbone, head, frozen = torch_models.model(case, num_classes, image_size)
  backbone, head = backbone.to(memory_format=torch.channels_last), head.to(memory_format=torch.channels_last)
  x = [
    torch.from_numpy(np.ascontiguousarray(b["image"])).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    for b in batches
  ]
  binary = case.startswith("pollen")
  y = [torch.from_numpy(np.asarray(b["label"], np.float32 if binary else np.int64)) for b in batches]
  loss_fn = torch.nn.BCEWithLogitsLoss() if binary else torch.nn.CrossEntropyLoss()
  if frozen:
    backbone.eval()
    backbone.requires_grad_(False)

  def forward(images):
    if frozen:
      with torch.no_grad():
        features = backbone(images)
    else:
      features = backbone(images)
    out = head(features)
    return out[:, 0] if binary else out

  forward = torch.compile(forward) if compiled else forward
  if eval_only:
    backbone.eval()
    head.eval()

    def step(i):
      with torch.inference_mode():
        forward(x[i])
  else:
    backbone.train(not frozen)
    head.train()
    optimizer = torch.optim.Adam([p for p in (*backbone.parameters(), *head.parameters()) if p.requires_grad], lr=1e-3)

    def step(i):
      optimizer.zero_grad(set_to_none=True)
      loss_fn(forward(x[i]), y[i]).backward()
      optimizer.step()

  return timed(lambda i: None if i is None else step(i), batches)  # Eager on the CPU: each step has run when it returns.


class ResidentMemory:
  """Samples this process's resident memory every 10 ms: `peak()` since the last `reset()`."""

  def __init__(self):
    self._peak = self.now()
    threading.Thread(target=self._sample, daemon=True).start()

  @staticmethod
  def now() -> float:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

  def _sample(self) -> None:
    while True:
      self._peak = max(self._peak, self.now())
      time.sleep(0.01)

  def reset(self) -> float:
    self._peak = self.now()
    return self._peak

  def peak(self) -> float:
    return max(self._peak, self.now())


def _side_worker(connection, case: str, side: str, args: dict) -> None:
  """One side in its own process: builds and compiles it, then times a pass per request."""
  ARGS.__dict__.update(args)
  memory = ResidentMemory()
  before = memory.now()
  compile_s, one_pass = make_side(case, side)
  connection.send((compile_s, before, memory.peak()))
  while connection.recv() == "pass":
    before_pass = resource.getrusage(resource.RUSAGE_SELF)
    seconds = one_pass()
    after = resource.getrusage(resource.RUSAGE_SELF)
    kernel = {"sys_s": after.ru_stime - before_pass.ru_stime, "page_faults": after.ru_minflt - before_pass.ru_minflt}
    connection.send((seconds, memory.peak(), kernel))


class Side:
  """A side running in a child process of its own, as a user would run it: frameworks in one
  process share malloc's arenas and OpenMP runtimes, and there one side's freed memory and
  threads slowed the next one's steps by up to 2x."""

  def __init__(self, case: str, side: str):
    context = multiprocessing.get_context("spawn")
    self.connection, child = context.Pipe()
    self.process = context.Process(target=_side_worker, args=(child, case, side, vars(ARGS)), daemon=True)
    self.process.start()
    self.compile_s, self.rss_before, self.rss_peak = self._receive()
    self.kernel = []  # per pass: seconds in the kernel, page faults

  def _receive(self):
    if not self.connection.poll(3600) or not self.process.is_alive() and not self.connection.poll():
      raise RuntimeError(f"a benchmark side's process stopped (exit code {self.process.exitcode})")
    return self.connection.recv()

  def one_pass(self) -> float:
    self.connection.send("pass")
    seconds, self.rss_peak, kernel = self._receive()
    self.kernel.append(kernel)
    return seconds

  def close(self) -> None:
    self.connection.send("stop")
    self.process.join()


def make_side(case: str, side: str) -> tuple[float, Callable[[], float]]:
  """Builds one side of `case` in this process: (compile seconds, one timed pass)."""
  config = case_config(case)
  eval_only = case.endswith("_eval")
  batches, num_classes = real_batches(config, ARGS.steps + 1)
  size = tuple(config.data.image_size)
  if side.startswith("imgcls"):
    config.model.convs = side.removeprefix("imgcls").removeprefix("_") or config.model.convs
    return imgcls_runner(config, batches, num_classes, eval_only)
  if side == "keras_tf":
    return keras_runner(case, batches, num_classes, eval_only, size)
  return torch_runner(case, batches, num_classes, eval_only, size, compiled=side == "torch_compile")


def compare(case: str, sides: list[str]) -> dict:
  runners = {}
  try:
    for side in sides:  # One after another: each compiles on an idle machine.
      runners[side] = Side(case, side)
    warmup = {side: runner.one_pass() for side, runner in runners.items()}  # First touches of the memory: not timed.
    for runner in runners.values():
      runner.kernel.clear()
    passes = {side: [] for side in runners}
    for _ in range(ARGS.repeats):
      for side, runner in runners.items():
        passes[side].append(runner.one_pass())
  finally:
    for runner in runners.values():
      runner.close()
  batch = case_config(case).data.batch_size
  result = {}
  for side, runner in runners.items():
    seconds = statistics.median(passes[side])
    result[side] = {
      "compile_s": round(runner.compile_s, 2),
      "warmup_step_ms": round(warmup[side] * 1000, 1),
      "step_ms": round(seconds * 1000, 1),
      "images_per_s": round(batch / seconds, 1),
      "pass_step_ms": [round(t * 1000, 1) for t in passes[side]],
      "peak_rss_mb": round(runner.rss_peak),
      "added_rss_mb": round(runner.rss_peak - runner.rss_before),
      "pass_sys_s": [round(k["sys_s"], 2) for k in runner.kernel],
      "pass_page_faults": [k["page_faults"] for k in runner.kernel],
    }
  for side in sides:
    if side != "imgcls" and "imgcls" in result:
      result[f"speedup_vs_{side}"] = round(result[side]["step_ms"] / result["imgcls"]["step_ms"], 2)
  return result


ARGS = argparse.Namespace(steps=10, repeats=3)


def in_child(function: Callable, *args):
  """`function(*args)` in a fresh process of its own (see `Side`): its result."""
  with multiprocessing.get_context("spawn").Pool(1) as pool:
    return pool.apply(function, args)


def _flowers_config(epochs: int, images: int):
  import csv
  import runpy
  import tempfile

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
  return config, workdir


def _epochs_imgcls(epochs: int, images: int, cache_features: str) -> dict:
  config, workdir = _flowers_config(epochs, images)
  config.train.cache_features = cache_features
  summary = train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    seconds = [r["seconds"] for r in map(json.loads, f) if r["type"] == "epoch"]
  return {
    "total_s": round(summary["wall_seconds"], 1),
    "epoch_s": seconds,
    "final_train_loss": round(summary["final"]["train_loss"], 4),
  }


def _epochs_keras(epochs: int, images: int) -> dict:
  import keras
  from keras import layers

  config, _ = _flowers_config(epochs, images)
  split = sources.find_splits(config.data, 0)["train"]
  batches = list(pipeline.eval_batches(split, config.data))
  x = np.concatenate([b["image"][b["mask"] > 0] for b in batches]) * 255.0
  y = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
  base = keras.applications.VGG19(include_top=False, weights=None, input_shape=(224, 224, 3), pooling="max")
  base.trainable = False
  model = keras.Sequential(
    [
      keras.Input((224, 224, 3)),
      layers.RandomFlip("horizontal"),
      base,
      layers.Dense(128, activation="relu"),
      layers.Dropout(0.3),
      layers.Dense(17, activation="softmax"),
    ]
  )
  model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
  times = []

  class Timer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
      self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
      times.append(round(time.perf_counter() - self.start, 2))

  start = time.perf_counter()
  model.fit(x, y, batch_size=32, epochs=epochs, shuffle=True, verbose=0, callbacks=[Timer()])
  return {"total_s": round(time.perf_counter() - start, 1), "epoch_s": times, "images": len(y)}


def time_epochs(epochs: int, images: int) -> dict:
  """Seconds per epoch of the frozen-VGG19 flowers recipe, Keras-TF vs imgcls cached and not."""
  results = {
    "imgcls_cached": in_child(_epochs_imgcls, epochs, images, "auto"),
    "imgcls_uncached": in_child(_epochs_imgcls, epochs, images, "off"),
    "keras_tf": in_child(_epochs_keras, epochs, images),
  }
  later = lambda r: sum(r["epoch_s"][1:]) / max(len(r["epoch_s"]) - 1, 1)  # noqa: E731
  results["images"] = results["keras_tf"].pop("images")
  results["speedup_later_epochs"] = round(later(results["keras_tf"]) / later(results["imgcls_cached"]), 1)
  results["speedup_total"] = round(results["keras_tf"]["total_s"] / results["imgcls_cached"]["total_s"], 2)
  return results


def _timed_command(command: list[str]) -> tuple[float, str]:
  """Wall seconds of `command` from launch to exit, and its output."""
  start = time.perf_counter()
  done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
  seconds = time.perf_counter() - start
  if done.returncode:
    raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
  return round(seconds, 1), done.stdout


def _insects_fit_imgcls(epochs: int) -> dict:
  import tempfile

  workdir = tempfile.mkdtemp(prefix="imgcls_insects_")
  flags = [f"--config.data.dir={os.path.join(SHARED, 'flowers17')}", f"--config.train.epochs={epochs}"]
  flags += ["--config.train.progress=False", "--config.compile_cache=off", f"--workdir={workdir}"]
  seconds, _ = _timed_command(
    [sys.executable, "-m", "imgcls.main", f"--config={os.path.join(REPO, 'configs', 'insects.py')}", *flags]
  )
  with open(os.path.join(workdir, "summary.json")) as f:
    return {"total_s": seconds, "final_val_accuracy": round(json.load(f)["final"]["val_accuracy"], 3)}


def _insects_fit_keras(epochs: int) -> dict:
  script = os.path.join(REPO, "bench", "insects_keras.py")
  seconds, output = _timed_command([sys.executable, script, os.path.join(SHARED, "flowers17"), str(epochs)])
  return {"total_s": seconds, **json.loads(output.strip().splitlines()[-1])}


def time_insects_fit(epochs: int, repeats: int) -> dict:
  """Wall seconds of the insects tutorial end to end on flowers17 (17 classes at 180x180), each
  side's command from launch to exit: `python -m imgcls.main --config=configs/insects.py` against
  the tutorial's own Keras script (`bench/insects_keras.py`: image_dataset_from_directory, cache,
  shuffle, prefetch, `fit` validating on test/). The sides run in turns, `repeats` times each, so
  the machine's drift reaches both; medians."""
  runs = {"imgcls": [], "keras_tf": []}
  for _ in range(repeats):
    runs["imgcls"].append(_insects_fit_imgcls(epochs))
    runs["keras_tf"].append(_insects_fit_keras(epochs))
  results = {"epochs": epochs, "runs": runs}
  for side, side_runs in runs.items():
    results[f"{side}_s"] = round(statistics.median(r["total_s"] for r in side_runs), 1)
  results["speedup"] = round(results["keras_tf_s"] / results["imgcls_s"], 2)
  return results


def _installed(*distributions: str) -> str | None:
  """The version of the first of `distributions` installed (TensorFlow's CPU build is another name)."""
  for distribution in distributions:
    try:
      return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
      pass
  return None


def main() -> None:
  global ARGS
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--cases", default="pollen,pollen_eval,insects,bn_cnn,dropout_cnn,flowers_vgg19,inception_v3")
  parser.add_argument("--sides", default=",".join(SIDES))
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=3, help="passes of --steps steps per side, taken in turns")
  parser.add_argument("--epochs", type=int, default=3, help="flowers_vgg19_epochs: epochs per run")
  parser.add_argument("--images", type=int, default=256, help="flowers_vgg19_epochs: training images")
  parser.add_argument("--fit_epochs", type=int, default=10, help="insects_fit: epochs (the tutorial's 10)")
  parser.add_argument("--fit_repeats", type=int, default=2, help="insects_fit: runs of each side, in turns")
  ARGS = parser.parse_args()
  sides = ARGS.sides.split(",")
  unknown = set(sides) - set(SIDES) - {f"imgcls_{convs}" for convs in IMGCLS_CONVS}
  if unknown:
    parser.error(f"unknown sides {sorted(unknown)}; pick from {', '.join(SIDES)}")
  results = {}
  for case in ARGS.cases.split(","):
    if case == "flowers_vgg19_epochs":
      results[case] = time_epochs(ARGS.epochs, ARGS.images)
    elif case == "insects_fit":
      results[case] = time_insects_fit(ARGS.fit_epochs, ARGS.fit_repeats)
    elif case.removesuffix("_eval") in CASES:
      results[case] = compare(case, sides)
    else:
      parser.error(f"unknown case {case!r}")
    print(json.dumps({case: results[case]}), flush=True)
  results["device"] = f"{jax.devices()[0]}, {os.cpu_count()} cores"
  results["versions"] = {
    "jax": jax.__version__,
    "onednn": onednn.version(),
    "tensorflow": _installed("tensorflow", "tensorflow-cpu"),
    "keras": _installed("keras"),
    "torch": _installed("torch"),
  }
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
