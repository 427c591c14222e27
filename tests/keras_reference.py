"""Keras's own networks as references: random but realistic weights, written by Keras's h5 writer.

Importing this sets KERAS_BACKEND=jax unless set (Keras 3 on JAX; no TensorFlow needed).
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import h5py  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras.src.legacy.saving import legacy_h5_format  # noqa: E402


def randomize(model: keras.Model, seed: int = 0, logit_scale: float = 4.0, images=None, residual_scale: float = 1.0) -> None:
  """Random weights everywhere, BatchNorm moving statistics included (so inference BN is tested).

  Kernels are He-normal (activations keep their scale), biases and BN shifts small, BN scales and
  variances around 1, Normalization statistics those of 0-1 pixels. If `images` are given, the classifier is scaled so that its logits spread by
  about `logit_scale`: softmax probabilities then differ from uniform and the comparison means something.
  `residual_scale` multiplies the scales of the BatchNorms that end residual branches (`*project_bn`):
  the deepest networks (EfficientNetV2-S/M/L) amplify float rounding through 40-80 random residual
  blocks until Keras on JAX and Keras on TensorFlow disagree (0.19 on V2-S); 0.5 brings them within 1.4e-6.
  """
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      for variable in layer.weights:
        name = variable.path.rsplit("/", 1)[-1]
        n = variable.shape
        value = {
          "gamma": rng.uniform(0.6, 1.4, n),
          "beta": rng.normal(0.0, 0.2, n),
          "moving_mean": rng.normal(0.0, 0.3, n),
          "moving_variance": rng.uniform(0.5, 2.0, n),
        }[name]
        if name == "gamma" and layer.name.endswith("project_bn"):
          value = value * residual_scale
        variable.assign(value.astype("float32"))
    elif isinstance(layer, keras.layers.LayerNormalization):
      layer.gamma.assign(rng.uniform(0.6, 1.4, layer.gamma.shape).astype("float32"))
      layer.beta.assign(rng.normal(0.0, 0.2, layer.beta.shape).astype("float32"))
    elif isinstance(layer, keras.layers.Normalization) and not layer.weights:  # Given statistics: no weights.
      continue
    elif isinstance(layer, keras.layers.Normalization):  # Adapted statistics of 0-1 pixels.
      n = layer.adapt_mean.shape
      layer.adapt_mean.assign(rng.normal(0.45, 0.1, n).astype("float32"))
      layer.adapt_variance.assign(rng.uniform(0.03, 0.1, n).astype("float32"))
      layer.count.assign(1000)
      layer.finalize_state()
    else:
      for variable in layer.weights:
        shape = variable.shape
        if len(shape) == 1:
          variable.assign(rng.normal(0.0, 0.05, shape).astype("float32"))
        else:
          depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
          fan_in = int(np.prod(shape[:2] if depthwise else shape[:-1]))
          variable.assign(rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in)))
  names = [layer.name for layer in model.layers]
  if images is not None and ("predictions" in names or names[-1].endswith("_head_dense")):
    top = [layer for layer in model.layers if layer.weights][-1]  # predictions, or a 1x1 conv classifier
    features = keras.Model(model.input, top.input)(images, training=False)
    features = np.asarray(features)
    rms = float(np.sqrt(np.mean(features**2))) or 1.0
    d = features.shape[-1]
    scale = np.float32(logit_scale / (rms * np.sqrt(d)))
    top.kernel.assign(rng.standard_normal(top.kernel.shape, dtype=np.float32) * scale)


def save_legacy_h5(model: keras.Model, path) -> None:
  """Keras's legacy HDF5 weights layout (what keras.applications downloads), by Keras's own writer."""
  with h5py.File(path, "w") as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, model)


def sub_model(model: keras.Model, layer: str, pooling: str = "") -> keras.Model:
  """The network up to `layer` (sharing weights), optionally globally pooled as include_top=False does."""
  # "<layer>:input": what that layer reads (ConvNeXt's last sum is an op, not a layer).
  x = model.get_layer(layer[: -len(":input")]).input if layer.endswith(":input") else model.get_layer(layer).output
  if pooling == "avg":
    x = keras.layers.GlobalAveragePooling2D()(x)
  elif pooling == "max":
    x = keras.layers.GlobalMaxPooling2D()(x)
  return keras.Model(model.input, x)


def layer_names(model: keras.Model) -> set[str]:
  """The names of the model's layers, nested models' layers included."""
  names = set()
  for layer in model.layers:
    names |= {layer.name} | (layer_names(layer) if isinstance(layer, keras.Model) else set())
  return names


def run(model: keras.Model, x) -> np.ndarray:
  return np.asarray(model(x, training=False))
