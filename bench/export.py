"""Every export format of a trained run: file size, validation accuracy, and CPU latency for one
image and a batch of 32 in each format's runtime, against imgcls's own predict.

  python bench/export.py --workdir=runs/pollen [--repeats=20] [--output=/tmp/export_bench]

The run (e.g. `configs/pollen.py`, the pollen tutorial's MobileNetV2) is exported to each format
under --output; each file is then run on the run's whole validation subset (accuracy, and the
largest probability difference from imgcls) and timed: after one untimed call each, every repeat
calls every runtime in turn on the same images (one image, then 32), so a busy moment slows all of
them; a runtime's latency is its median. onnxruntime, the LiteRT interpreter (a model for batch 1
and one for batch 32: LiteRT models have a fixed batch), TensorFlow (the SavedModel), jax.export's
deserialised function, Keras 3 (on TensorFlow) and imgcls (the jitted eval step as `--mode=predict`
runs it, `model.convs=auto`) share this one process and its cores. Prints one JSON object;
`speedup_vs_imgcls` above 1 means the runtime is faster than imgcls's predict.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

from imgcls import evaluate, export, metrics, restore, steps  # noqa: E402
from imgcls.data import sources  # noqa: E402

# name -> (format, quantize, LiteRT batch)
EXPORTS = {
  "onnx": ("onnx", "none", 0),
  "litert": ("litert", "none", 1),
  "litert_float16": ("litert", "float16", 1),
  "litert_int8": ("litert", "int8", 1),
  "saved_model": ("saved_model", "none", 0),
  "stablehlo": ("stablehlo", "none", 0),
  "keras": ("keras", "none", 0),
}


def _runner(fmt: str, path: str):
  return export._format_module(fmt).runner(path)


def _accuracy(probs: np.ndarray, labels: np.ndarray, threshold: float | None) -> float:
  return float(np.mean(metrics.predicted_labels(probs, threshold) == labels))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="A trained run (its best checkpoint is exported).")
  parser.add_argument("--output", default="/tmp/imgcls_export_bench", help="Where the exported files go.")
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--formats", default=",".join(EXPORTS), help="Comma-separated subset of " + ", ".join(EXPORTS))
  args = parser.parse_args()
  config = restore.saved_config(args.workdir)
  run = restore.load(config, args.workdir)
  threshold = evaluate.decision_threshold(run, None)
  val = sources.find_splits(config.data, config.seed)["val"]
  pixels = evaluate.load_pixels(val.paths, config.data)
  batch = pixels[:32]

  eval_step = steps.make_eval_step(run.eval_graphdef, run.prepare)
  scale = np.float32(config.data.rescale)

  def imgcls_predict(x):
    return metrics.probabilities(np.asarray(eval_step(run.state, x * scale)))

  reference = np.concatenate([imgcls_predict(pixels[i : i + 32]) for i in range(0, len(pixels), 32)])
  results = {
    "imgcls": {"accuracy": _accuracy(reference, val.labels, threshold), "file_mb": None},
  }
  single = {"imgcls": imgcls_predict}
  batched = {"imgcls": imgcls_predict}
  for name in args.formats.split(","):
    fmt, quantize, litert_batch = EXPORTS[name]
    output = os.path.join(args.output, name, export.FILE_NAMES[fmt])
    start = time.perf_counter()
    info = export.export(config, args.workdir, fmt, output=output, quantize=quantize, batch=litert_batch)
    seconds = time.perf_counter() - start
    run_file = _runner(fmt, output)
    probs = np.asarray(run_file(pixels), np.float64)
    results[name] = {
      "file_mb": info["file_bytes"] / 1e6,
      "export_s": seconds,
      "accuracy": _accuracy(probs, val.labels, threshold),
      "max_abs_difference": float(np.abs(probs - reference).max()),
      "top1_agreement": float(np.mean(probs.argmax(1) == reference.argmax(1))),
    }
    single[name] = run_file
    if fmt == "litert":  # A second model, for batches of 32.
      output32 = os.path.join(args.output, f"{name}_batch32", export.FILE_NAMES[fmt])
      export.export(config, args.workdir, fmt, output=output32, quantize=quantize, batch=32)
      batched[name] = _runner(fmt, output32)
    else:
      batched[name] = run_file

  times = {name: {"1": [], "32": []} for name in single}
  for fns, x, _ in ((single, pixels[:1], "1"), (batched, batch, "32")):
    for fn in fns.values():
      fn(x)  # untimed: first calls compile, allocate, fault in memory
  for _ in range(args.repeats):
    for fns, x, key in ((single, pixels[:1], "1"), (batched, batch, "32")):
      for name, fn in fns.items():
        start = time.perf_counter()
        np.asarray(fn(x))
        times[name][key].append(1e3 * (time.perf_counter() - start))
  base = {key: statistics.median(times["imgcls"][key]) for key in ("1", "32")}
  for name, t in times.items():
    for key in ("1", "32"):
      ms = statistics.median(t[key])
      results[name][f"ms_batch{key}"] = ms
      results[name][f"speedup_vs_imgcls_batch{key}"] = base[key] / ms
  summary = {
    "workdir": os.path.abspath(args.workdir),
    "model": config.model.name,
    "image_size": list(config.data.image_size),
    "val_images": len(val),
    "repeats": args.repeats,
    "cpus": os.cpu_count(),
    "results": results,
  }
  json.dump(summary, sys.stdout, indent=1)
  print()


if __name__ == "__main__":
  main()
