"""ONNX through jax2onnx; checked in onnxruntime. Input `pixels` (batch free), output `probabilities`."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from imgcls.export import Servable, _version, conversion_error, require

OPSET = 23


def check_available() -> None:
  for module in ("jax2onnx", "onnx", "onnxruntime"):
    require(module, "--format=onnx")


def write(servable: Servable, output: str, *, quantize: str = "none") -> dict:
  """Writes `output` (.onnx) with the weights as initializers."""
  del quantize
  import onnx
  from jax2onnx import to_onnx

  # jax2onnx logs every plugin it skips (dm_pix's, for this jax), onnx_ir every untyped shape.
  for name in ("jax2onnx", "onnx_ir"):
    logging.getLogger(name).setLevel(logging.ERROR)
  try:
    proto = to_onnx(
      servable,
      [("B", *servable.input_shape)],
      model_name=servable.run.config.model.name,
      opset=OPSET,
      input_names=["pixels"],
      output_names=["probabilities"],
    )
  except (NotImplementedError, ValueError, TypeError) as e:  # jax2onnx names the primitive it cannot translate.
    raise conversion_error("ONNX", servable, str(e)) from e
  onnx.save(proto, output)
  return {
    "input": {"name": "pixels"},
    "outputs": {"name": "probabilities"},
    "versions": {"jax2onnx": _version("jax2onnx"), "onnx": _version("onnx"), "opset": OPSET},
  }


def runner(path: str) -> Callable[[np.ndarray], np.ndarray]:
  """`pixels -> probabilities` in onnxruntime (CPU)."""
  import onnxruntime

  onnxruntime.set_default_logger_severity(3)  # Its shape-merge warnings on jax2onnx's graphs are harmless.
  session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
  return lambda pixels: session.run(["probabilities"], {"pixels": np.asarray(pixels, np.float32)})[0]
