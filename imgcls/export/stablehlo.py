"""StableHLO through `jax.export`: the serialized function, batch size polymorphic, weights inside.

Loading it needs only jax (of this version or a newer one):

    from jax import export
    exported = export.deserialize(open("model.stablehlo", "rb").read())
    probabilities = exported.call(pixels)  # pixels: float32 (N, height, width, channels), 0-255
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from imgcls.export import ExportError, Servable

CONVS = "portable"  # imgcls's JAX kernels where the file runs on a CPU, XLA's convolutions on GPU/TPU
PLATFORMS = ("cpu", "cuda", "tpu")


def check_available() -> None:
  pass  # jax.export is part of jax.


def write(servable: Servable, output: str, *, quantize: str = "none") -> dict:
  """Writes `output`: `jax.export`'s serialization of the function for any batch size."""
  del quantize
  (batch,) = jax.export.symbolic_shape("batch")
  pixels = jax.ShapeDtypeStruct((batch, *servable.input_shape), np.float32)
  try:
    exported = jax.export.export(jax.jit(lambda pixels: servable(pixels)), platforms=PLATFORMS)(pixels)
  except Exception as e:
    raise ExportError(f"jax.export cannot export {servable.run.config.model.name}: {e}") from e
  with open(output, "wb") as f:
    f.write(exported.serialize())
  return {
    "platforms": list(exported.platforms),
    "calling_convention_version": exported.calling_convention_version,
    "loader": "jax.export.deserialize(open(path, 'rb').read()).call(pixels)",
  }


def runner(path: str) -> Callable[[np.ndarray], np.ndarray]:
  with open(path, "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  return lambda pixels: np.asarray(exported.call(np.asarray(pixels, np.float32)))
