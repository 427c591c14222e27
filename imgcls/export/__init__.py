"""Exporting a trained run for deployment: `python -m imgcls.main --mode=export --workdir=RUN --format=F`.

Every format holds one function, `pixels -> probabilities`: images as a user has them (RGB or
greyscale, 0-255, resized to the run's image size, float32, NHWC, any batch size) in, class
probabilities out (two columns for a binary model, as `--mode=predict` writes them). The run's
rescale, its backbone's `preprocess_input` and its normalisation are inside. `export.json`
beside the file says what is inside and how close the file's outputs came to imgcls's own
predictions on the run's images when it was written.

Formats (each in its own module, with a `write(servable, output, ...)` and a `runner(path)`):
onnx (jax2onnx, onnxruntime), litert (.tflite through jax2tf and TensorFlow's converter,
float32 / float16 / int8), saved_model (TensorFlow), stablehlo (`jax.export`), keras (a Keras 3
`.weights.h5` and the code that builds the network in Keras).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
import warnings
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from imgcls import metrics, restore
from imgcls.data import augment, sources

FORMATS = ("onnx", "litert", "saved_model", "stablehlo", "keras")
QUANTIZE = {"litert": ("none", "float16", "int8")}  # The other formats keep float32 weights.
FILE_NAMES = {
  "onnx": "model.onnx",
  "litert": "model.tflite",
  "saved_model": "saved_model",
  "stablehlo": "model.stablehlo",
  "keras": "model.weights.h5",
}
PARITY_IMAGES = 16  # Images of the run's data on which each export is compared with imgcls.
REPRESENTATIVE_IMAGES = 128  # Training images that calibrate int8 quantization.
FLOAT_TOLERANCE = 1e-4  # Largest probability difference a float export may show.


class ExportError(ValueError):
  """An export that cannot be made: a missing package, an op a format lacks, a bad option."""


def require(module: str, what: str):
  """`module` imported, or an ExportError naming the extra that installs it."""
  if module.startswith(("tensorflow", "keras")):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up lines on every export.
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise ExportError(f"{what} needs {module.split('.')[0]}, which is not installed: pip install -e '.[export]' ({e}).") from e


@dataclasses.dataclass
class Servable:
  """A run's inference function, ready for a converter."""

  logits: Callable  # logits(weights, pixels) -> the network's outputs; weights: the flat list `weights`.
  weights: list[np.ndarray]
  input_shape: tuple[int, int, int]  # (height, width, channels); the batch is free.
  class_names: list[str]
  run: restore.Run

  def apply(self, weights: Sequence[jax.Array], pixels: jax.Array) -> jax.Array:
    """Probabilities as imgcls computes them (two columns for one output unit)."""
    return metrics.probabilities(self.logits(weights, pixels), xp=jnp)

  def __call__(self, pixels: jax.Array) -> jax.Array:
    """The function with the weights as constants (what jax2onnx and jax.export take)."""
    return self.apply([jnp.asarray(w) for w in self.weights], pixels)


# Primitives XLA runs as library calls (LAPACK, callbacks, imgcls's oneDNN kernels), which no
# other runtime has: named in a conversion error with the line of imgcls that computes them.
LIBRARY_CALLS = (
  "cholesky",
  "eig",
  "eigh",
  "lu",
  "qr",
  "householder_product",
  "svd",
  "schur",
  "triangular_solve",
  "ffi_call",
  "pure_callback",
  "io_callback",
)


def _equations(jaxpr, where: str = "", scope: str = ""):
  """(equation, 'file:line (function)', 'named/scope') of `jaxpr` and the jaxprs inside it; an
  inner equation in jax's own code takes the place of the call that reached it."""
  from jax._src import source_info_util

  for eqn in jaxpr.eqns:
    here = source_info_util.summarize(eqn.source_info) or where
    named = "/".join(part for part in (scope, str(eqn.source_info.name_stack)) if part)
    yield eqn, here, named
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else (value,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _equations(inner, here, named)


def library_calls(servable: Servable) -> list[str]:
  """'op in layer backbone/NAME at file:line (function)' for each library call the exported
  function makes (layers: the named scopes of imgcls.models, Keras's layer names in a backbone)."""
  pixels = jax.ShapeDtypeStruct((1, *servable.input_shape), jnp.float32)
  jaxpr = jax.make_jaxpr(servable)(pixels).jaxpr
  found = [
    eqn.primitive.name + (f" in layer {scope}" if scope else "") + f" at {where}"
    for eqn, where, scope in _equations(jaxpr)
    if eqn.primitive.name in LIBRARY_CALLS
  ]
  return list(dict.fromkeys(found))


def conversion_error(fmt: str, servable: Servable, detail: str) -> ExportError:
  """An ExportError for a converter's failure, naming the op (and where imgcls computes it)."""
  calls = library_calls(servable)
  where = f"; it computes {', '.join(calls)}, which {fmt} has no op for" if calls else ""
  return ExportError(f"{fmt} cannot express an op of {servable.run.config.model.name}: {detail.rstrip('. ')}{where}.")


def servable(run: restore.Run) -> Servable:
  """`pixels -> probabilities` of a run: its rescale, preprocessing and normalisation inside."""
  scale = np.float32(run.config.data.rescale)
  weights, treedef = jax.tree.flatten((run.state.params, run.state.frozen, run.state.stats))
  graphdef = run.eval_graphdef

  # Keras's preprocess_input takes 0-255 pixels: with nothing between the rescale and the backbone
  # (no normalisation), the backbone gets the pixels, not the rescaled pixels it would scale back.
  # Fewer ops, and LiteRT's int8 calibration gets a rescale and its inverse wrong.
  direct = not normalization(run).enabled and getattr(run.model.backbone, "preprocessing", "none") != "none"

  def logits(weights, pixels):
    params, frozen, stats = jax.tree.unflatten(treedef, list(weights))
    model = nnx.merge(graphdef, params, frozen, stats)
    if direct:
      model.pixel_scale = 1.0
      return model(pixels)
    images = pixels * scale if scale != 1.0 else pixels
    return model(run.prepare(images, None))

  height, width = run.config.data.image_size
  channels = 1 if run.config.data.color_mode == "grayscale" else 3
  return Servable(logits, [np.asarray(w) for w in weights], (height, width, channels), list(run.class_names), run)


def normalization(run: restore.Run) -> augment.Normalize:
  """The run's normalisation, its feature-wise statistics from the checkpoint's meta."""
  return augment.make_normalize(run.config.data, None, run.meta.normalization)


def default_output(workdir: str, fmt: str, quantize: str) -> str:
  """WORKDIR/export/FORMAT[_QUANTIZE]/FILE: one folder per export, each with its export.json."""
  folder = fmt if quantize in ("", "none") else f"{fmt}_{quantize}"
  return os.path.join(workdir, "export", folder, FILE_NAMES[fmt])


def _sample_paths(config: ml_collections.ConfigDict, split: str, count: int) -> list[str]:
  """Up to `count` image paths of the run's `split` subset (its validation subset if there is
  none of that name), drawn with the run's seed."""
  splits = sources.find_splits(config.data, config.seed)
  chosen = splits.get(split) or splits.get("val") or splits["train"]
  order = np.random.default_rng(config.seed).permutation(len(chosen))[:count]
  return [chosen.paths[i] for i in sorted(order)]


def sample_pixels(config: ml_collections.ConfigDict, split: str, count: int) -> tuple[list[str], np.ndarray]:
  """(paths, pixels 0-255 as the pipeline decodes and resizes them) of up to `count` images."""
  from imgcls import evaluate

  paths = _sample_paths(config, split, count)
  found = evaluate.without_bad_images(sources.Split(paths, np.zeros(len(paths), np.int32), [], split), config.data)
  return list(found.paths), evaluate.load_pixels(found.paths, config.data)


def reference_probabilities(run: restore.Run, paths: Sequence[str]) -> np.ndarray:
  """imgcls's own predictions (the predict path: pipeline, normalisation, eval step) of `paths`."""
  from imgcls import evaluate

  split = sources.Split(list(paths), np.zeros(len(paths), np.int32), run.class_names, "export")
  logits, _ = evaluate.run_logits(run, split)
  return metrics.probabilities(logits)


def baked_in(run: restore.Run) -> dict:
  """What the exported function does to the pixels before the network proper."""
  data = run.config.data
  preprocessing = getattr(run.model.backbone, "preprocessing", "none")
  norm = normalization(run)
  normalization_steps = {
    "samplewise_center": norm.samplewise_center,
    "samplewise_std_normalization": norm.samplewise_std,
    "featurewise_mean": None if norm.mean is None else list(norm.mean),
    "featurewise_std": None if norm.std is None else list(norm.std),
  }
  return {
    "rescale": float(data.rescale),
    "preprocess_input": {
      "tf": "x / 127.5 - 1 (Keras's 'tf' mode)",
      "caffe": "RGB to BGR, minus ImageNet means (Keras's 'caffe' mode)",
      "torch": "x / 255, minus ImageNet means, over their deviations (Keras's 'torch' mode)",
      "pixels": "none: the network normalises 0-255 pixels itself (its Rescaling and Normalization layers)",
    }.get(preprocessing, "none"),
    "normalization": normalization_steps,
    "output": "softmax probabilities" if not run.binary else "[1 - p, p] with p the sigmoid of the one output unit",
  }


def _format_module(fmt: str):
  return importlib.import_module(f"imgcls.export.{fmt}")


def export(
  config: ml_collections.ConfigDict,
  workdir: str,
  fmt: str,
  *,
  output: str | None = None,
  checkpoint: str | None = None,
  step: int | None = None,
  quantize: str = "none",
  batch: int = 0,
  parity_split: str = "val",
) -> dict:
  """Writes the run's model in `fmt` to `output` (default WORKDIR/export/FORMAT/FILE) and
  export.json beside it; returns export.json's content. `batch`: the fixed batch size of a
  LiteRT model (default 1; the other formats take any)."""
  if fmt not in FORMATS:
    raise ExportError(f"--format={fmt!r} is not one of {', '.join(FORMATS)}.")
  quantize = quantize or "none"
  if quantize not in QUANTIZE.get(fmt, ("none",)):
    if fmt not in QUANTIZE:
      raise ExportError(f"--quantize={quantize} applies to {', '.join(QUANTIZE)} only; {fmt} keeps float32 weights.")
    raise ExportError(f"--quantize={quantize} is not one of {', '.join(QUANTIZE[fmt])} for {fmt}.")
  module = _format_module(fmt)
  module.check_available()
  # No oneDNN custom calls in a file: XLA's standard convolutions where another converter reads
  # the graph; where XLA compiles it (StableHLO, SavedModel), imgcls's JAX CPU kernels on the CPU.
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.convs = getattr(module, "CONVS", "xla")
  run = restore.load(config, workdir, checkpoint, step)
  serving = servable(run)
  output = output or default_output(workdir, fmt, quantize)
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)

  paths, pixels = sample_pixels(run.config, parity_split, PARITY_IMAGES)
  options = {}
  if fmt == "litert":
    options["batch"] = batch or 1
  elif batch:
    raise ExportError(f"--batch_size applies to --format=litert; {fmt} takes any batch size.")
  if quantize == "int8":
    _, options["representative"] = sample_pixels(run.config, "train", REPRESENTATIVE_IMAGES)
  info = module.write(serving, output, quantize=quantize, **options)
  reference = reference_probabilities(run, paths)
  exported = np.asarray(module.runner(output)(pixels), np.float64)
  parity = {
    "images": len(paths),
    "source": f"{parity_split} subset of {run.config.data.index or run.config.data.dir}",
    "max_abs_difference": float(np.abs(exported - reference).max()),
    "top1_agreement": float(np.mean(exported.argmax(-1) == reference.argmax(-1))),
  }
  float_export = quantize in ("none", "")
  if float_export and parity["max_abs_difference"] > FLOAT_TOLERANCE:
    warnings.warn(
      f"The {fmt} export's probabilities differ from imgcls's by up to {parity['max_abs_difference']:.2e} "
      f"(more than {FLOAT_TOLERANCE:g}) on {len(paths)} images.",
      stacklevel=2,
    )
  description = {
    "format": fmt,
    "quantize": quantize,
    "file": os.path.basename(os.path.normpath(output)),
    "file_bytes": _size(output),
    "model": run.config.model.name,
    "class_names": run.class_names,
    "input": {
      "shape": [None, *serving.input_shape],  # A format with a fixed batch size says so below.
      "dtype": "float32",
      "pixels": "0-255, " + ("greyscale" if serving.input_shape[-1] == 1 else "RGB") + ", resized to the run's image size",
      **info.pop("input", {}),
    },
    "outputs": {"probabilities": [None, len(run.class_names)], **info.pop("outputs", {})},
    "baked_in": baked_in(run),
    "binary_threshold": float(run.config.train.threshold) if run.binary else None,
    "checkpoint": run.checkpoint,
    "step": run.step,
    "parity_with_predict": parity,
    "versions": {"jax": jax.__version__, "flax": _version("flax"), **info.pop("versions", {})},
    **info,
  }
  with open(os.path.join(os.path.dirname(os.path.abspath(output)), "export.json"), "w") as f:
    json.dump(description, f, indent=1)
  print(
    f"Exported {run.config.model.name} ({run.checkpoint}) as {fmt}"
    + (f" ({quantize})" if not float_export else "")
    + f": {output}, {description['file_bytes'] / 1e6:.1f} MB; on {len(paths)} images its probabilities differ from "
    f"imgcls's by at most {parity['max_abs_difference']:.1e}, top-1 agreement {parity['top1_agreement']:.3f}.",
    file=sys.stderr,
  )
  return description


def _size(path: str) -> int:
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(root, n)) for root, _, names in os.walk(path) for n in names)


def _version(package: str) -> str:
  from importlib import metadata

  try:
    return metadata.version(package)
  except metadata.PackageNotFoundError:
    return "not installed"
