"""LiteRT (TensorFlow Lite) through jax2tf and TensorFlow's converter; checked in the
ai-edge-litert interpreter. float32, float16 weights, or int8 (post-training integer
quantization calibrated on the run's training images; float32 input and output).

The batch size is fixed (`batch`, default 1: one image per call, as phones and boards run
them): with a symbolic batch, jax2tf's shape arithmetic keeps the converter from folding
BatchNorm into the convolutions, which costs int8 models most of their accuracy.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable

import numpy as np

from imgcls.export import ExportError, Servable, _version, conversion_error, require
from imgcls.export import saved_model as saved_model_lib


def check_available() -> None:
  require("tensorflow", "--format=litert")
  require("ai_edge_litert.interpreter", "--format=litert")


def write(
  servable: Servable, output: str, *, quantize: str = "none", representative: np.ndarray | None = None, batch: int = 1
) -> dict:
  """Writes `output` (.tflite) for batches of `batch` images."""
  import tensorflow as tf

  with tempfile.TemporaryDirectory() as folder:
    saved = os.path.join(folder, "saved_model")
    saved_model_lib.save(servable, saved, batch=batch)
    converter = tf.lite.TFLiteConverter.from_saved_model(saved)
    if quantize == "float16":
      converter.optimizations = [tf.lite.Optimize.DEFAULT]
      converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
      if representative is None or not len(representative):
        raise ExportError("--quantize=int8 needs training images to calibrate on; the run's training subset has none.")
      converter.optimizations = [tf.lite.Optimize.DEFAULT]
      whole = len(representative) // batch * batch or len(representative)
      converter.representative_dataset = lambda: (
        [np.resize(representative[i : i + batch], (batch, *representative.shape[1:])).astype(np.float32)]
        for i in range(0, whole, batch)
      )
    try:
      flatbuffer = converter.convert()
    except Exception as e:  # The converter's errors name the op it cannot lower.
      raise conversion_error("LiteRT", servable, converter_errors(e)) from e
  with open(output, "wb") as f:
    f.write(flatbuffer)
  return {
    "input": {"name": "pixels", "shape": [batch, *servable.input_shape]},
    "outputs": {"name": "probabilities"},
    "calibration_images": 0 if representative is None else len(representative),
    "versions": {"tensorflow": saved_model_lib.tensorflow_version(), "ai-edge-litert": _version("ai-edge-litert")},
  }


def converter_errors(error: Exception, most: int = 3) -> str:
  """The converter's first few `file:line: error: ...` lines (the op and the line of imgcls that made it)."""
  lines = [line.strip() for line in re.split(r"FlatBuffer\.|\n", str(error))]
  # `<unknown>:0: error: loc(callsite(...)): message` -> `message`; `file:line: error: message` stays.
  lines = [re.sub(r"^<unknown>:0: error: (loc\(.*\)\): )?", "", line) for line in lines if ": error: " in line]
  errors = list(dict.fromkeys(line for line in lines if line and not line.startswith(("loc(", "failed while converting"))))
  return "; ".join(errors[:most]) or str(error)[:2000]


def runner(path: str) -> Callable[[np.ndarray], np.ndarray]:
  """`pixels -> probabilities` in the LiteRT interpreter, any number of images (in batches of the model's)."""
  from ai_edge_litert.interpreter import Interpreter

  interpreter = Interpreter(model_path=path)
  interpreter.allocate_tensors()
  source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
  batch = int(source["shape"][0])

  def run(pixels):
    pixels = np.asarray(pixels, np.float32)
    outputs = []
    for start in range(0, len(pixels), batch):
      chunk = pixels[start : start + batch]
      padded = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), np.float32)])
      interpreter.set_tensor(source["index"], padded)
      interpreter.invoke()
      outputs.append(interpreter.get_tensor(target["index"])[: len(chunk)].copy())
    return np.concatenate(outputs)

  return run
