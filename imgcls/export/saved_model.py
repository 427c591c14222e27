"""A TensorFlow SavedModel through jax2tf: signature `serving_default`, input `pixels`, output
`probabilities`, the weights as TF variables."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from imgcls.export import ExportError, Servable, conversion_error, require

SIGNATURE = "serving_default"
CONVS = "portable"  # imgcls's JAX kernels where TensorFlow runs the model on a CPU, XLA's elsewhere
PLATFORMS = ("cpu", "cuda", "tpu")


def check_available() -> None:
  require("tensorflow", "--format=saved_model")


def tf_probabilities(logits):
  """metrics.probabilities in TensorFlow's own ops, which LiteRT has as LOGISTIC and SOFTMAX
  (int8 kernels included; the sigmoid jax2tf writes becomes a division int8 LiteRT cannot run)."""
  import tensorflow as tf

  if logits.shape[-1] == 1:
    p = tf.sigmoid(logits)
    return tf.concat([1.0 - p, p], axis=-1)
  return tf.nn.softmax(logits, axis=-1)


def tf_module(servable: Servable, batch: int | None = None, platforms: tuple[str, ...] | None = None):
  """A `tf.Module` whose `serve(pixels)` is the run's function, for any batch size (`batch`: that one),
  lowered for `platforms` (default: this machine's backend)."""
  import tensorflow as tf
  from jax.experimental import jax2tf

  height, width, channels = servable.input_shape
  converted = jax2tf.convert(
    servable.logits,
    polymorphic_shapes=None if batch else [None, f"(b, {height}, {width}, {channels})"],
    with_gradient=False,
    native_serialization_platforms=platforms,
  )
  module = tf.Module()
  module.weights = [tf.Variable(w, trainable=False) for w in servable.weights]

  @tf.function(input_signature=[tf.TensorSpec([batch, height, width, channels], tf.float32, name="pixels")], autograph=False)
  def serve(pixels):
    return {"probabilities": tf_probabilities(converted(module.weights, pixels))}

  module.serve = serve
  return module


def save(servable: Servable, output: str, batch: int | None = None, platforms: tuple[str, ...] | None = None) -> None:
  """Writes the SavedModel folder `output` (for batches of `batch` images, default any; for
  `platforms`, default this machine's backend)."""
  import tensorflow as tf

  module = tf_module(servable, batch, platforms)
  try:
    concrete = module.serve.get_concrete_function()
  except Exception as e:  # jax2tf raises NotImplementedError or TF errors for what it cannot lower.
    raise conversion_error("TensorFlow", servable, str(e)) from e
  tf.saved_model.save(module, output, signatures={SIGNATURE: concrete})


def write(servable: Servable, output: str, *, quantize: str = "none") -> dict:
  del quantize
  if os.path.isfile(output):
    raise ExportError(f"--output={output} is a file; a SavedModel is a folder.")
  save(servable, output, platforms=PLATFORMS)
  return {
    "input": {"name": "pixels", "signature": SIGNATURE},
    "outputs": {"name": "probabilities"},
    "platforms": list(PLATFORMS),
    "versions": {"tensorflow": tensorflow_version()},
  }


def tensorflow_version() -> str:
  """The version of TensorFlow, whichever of its packages (tensorflow, tensorflow-cpu) installed it."""
  import tensorflow as tf

  return tf.__version__


def runner(path: str) -> Callable[[np.ndarray], np.ndarray]:
  """`pixels -> probabilities` through `tf.saved_model.load`."""
  import tensorflow as tf

  serve = tf.saved_model.load(path).signatures[SIGNATURE]
  return lambda pixels: serve(pixels=tf.constant(np.asarray(pixels, np.float32)))["probabilities"].numpy()
