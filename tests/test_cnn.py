"""The seed CNNs equal their Keras definitions: same parameter count, same outputs with the same weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest
from conftest import class_pattern, tiny_config
from flax import nnx
from keras import layers

from imgcls.models import build_model
from imgcls.models.heads import Head


def keras_insects(size, classes):  # The insects tutorial.
  return keras.Sequential(
    [
      keras.Input((size, size, 3)),
      layers.Conv2D(16, 3, padding="same", activation="relu"),
      layers.MaxPooling2D(),
      layers.Conv2D(32, 3, padding="same", activation="relu"),
      layers.MaxPooling2D(),
      layers.Conv2D(64, 3, padding="same", activation="relu"),
      layers.MaxPooling2D(),
      layers.Flatten(),
      layers.Dense(128, activation="relu"),
      layers.Dense(classes),
    ]
  )


def keras_bn_cnn(size, classes, filters=32):  # The cats-vs-dogs tutorial (its softmax is our logits).
  bn = dict(momentum=0.1, epsilon=0.00001)
  return keras.Sequential(
    [
      keras.Input((size, size, 3)),
      layers.Conv2D(filters, (7, 7), strides=(2, 2), activation="relu"),
      layers.BatchNormalization(**bn),
      layers.MaxPooling2D((2, 2), strides=(2, 2)),
      layers.Conv2D(filters, (3, 3), activation="relu"),
      layers.BatchNormalization(**bn),
      layers.MaxPooling2D((2, 2)),
      layers.Conv2D(filters, (3, 3), activation="relu"),
      layers.BatchNormalization(**bn),
      layers.MaxPooling2D((2, 2)),
      layers.Dropout(0.3),
      layers.Flatten(),
      layers.Dense(size, activation="relu"),
      layers.BatchNormalization(**bn),
      layers.Dense(classes),
    ]
  )


def keras_dropout_cnn(size, classes):  # The X-ray tutorial.
  return keras.Sequential(
    [
      keras.Input((size, size, 3)),
      layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
      layers.Conv2D(64, (3, 3), activation="relu"),
      layers.MaxPooling2D(pool_size=(2, 2)),
      layers.Dropout(0.25),
      layers.Conv2D(64, (3, 3), activation="relu"),
      layers.MaxPooling2D(pool_size=(2, 2)),
      layers.Dropout(0.25),
      layers.Flatten(),
      layers.Dense(64, activation="relu"),
      layers.Dropout(0.5),
      layers.Dense(classes),
    ]
  )


def our_layers(model):
  """Our weighted layers in Keras's order."""
  b, h = model.backbone, model.head
  convs = [b.conv1, b.conv2, b.conv3]
  if hasattr(b, "norms"):
    convs = [x for pair in zip(convs, b.norms) for x in pair]
  head = [x for pair in zip(h.hidden, h.norms) for x in pair if x is not None]
  return convs + head + [h.output]


def copy_keras_weights(keras_model, model):
  keras_layers = [l for l in keras_model.layers if l.weights]
  ours = our_layers(model)
  assert len(keras_layers) == len(ours)
  for kl, ol in zip(keras_layers, ours):
    w = [np.asarray(v) for v in kl.weights]
    if isinstance(ol, nnx.BatchNorm):
      for var, value in zip((ol.scale, ol.bias, ol.mean, ol.var), w):
        var[...] = jnp.asarray(value)
    else:
      assert ol.kernel.shape == w[0].shape, kl.name
      ol.kernel[...], ol.bias[...] = jnp.asarray(w[0]), jnp.asarray(w[1])


@pytest.mark.parametrize(
  "name, keras_fn, size, classes",
  [("insects_cnn", keras_insects, 180, 3), ("bn_cnn", keras_bn_cnn, 64, 2), ("dropout_cnn", keras_dropout_cnn, 40, 2)],
)
def test_seed_cnn_matches_keras(name, keras_fn, size, classes):
  config = tiny_config("unused", **{"model.name": name, "data.image_size": (size, size), "data.rescale": 1.0})
  config.model.filters = 0
  config.model.head.hidden = (-1,)
  model = build_model(config, classes, rngs=nnx.Rngs(0))
  reference = keras_fn(size, classes)
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  keras_count = sum(int(np.prod(w.shape)) for w in reference.trainable_weights)
  assert count == keras_count
  if name == "insects_cnn":
    assert count == 3_989_027  # The seed's model.summary().

  rng = np.random.default_rng(0)
  for w in reference.weights:  # Random weights, BatchNorm statistics included.
    value = rng.normal(0, 0.2, w.shape)
    if "variance" in w.path:
      value = np.abs(value) + 0.5
    w.assign(value.astype("float32"))
  copy_keras_weights(reference, model)
  images = np.stack([class_pattern(i % 3, i, size) for i in range(4)]).astype(np.float32) / 255.0
  model.eval()
  ours = np.asarray(model(jnp.asarray(images)))
  theirs = np.asarray(reference(images, training=False))
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


def test_batchnorm_updates_statistics_only_in_training():
  config = tiny_config("unused", **{"model.name": "bn_cnn", "data.image_size": (32, 32)})
  with pytest.raises(ValueError, match="too small for bn_cnn"):
    build_model(config, 2, rngs=nnx.Rngs(0))
  config.data.image_size = (48, 48)
  model = build_model(config, 2, rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(0).random((4, 48, 48, 3)), jnp.float32)
  before = np.asarray(model.backbone.norms[0].mean[...]).copy()
  model.eval()
  model(x)
  np.testing.assert_array_equal(model.backbone.norms[0].mean[...], before)
  model.train()
  model(x, rngs=nnx.Rngs(dropout=0))
  assert not np.allclose(model.backbone.norms[0].mean[...], before)


def test_head_dense_layers_start_as_keras_dense():
  """The head's Dense layers use Keras's default initialisers: glorot_uniform kernels, zero biases."""
  import keras

  head = Head((10,), 3, hidden=(64,), rngs=nnx.Rngs(0))
  for layer, shape in ((head.hidden[0], (10, 64)), (head.output, (64, 3))):
    kernel = np.asarray(layer.kernel[...])
    keras_kernel = np.asarray(keras.initializers.GlorotUniform(seed=0)(shape))
    limit = np.sqrt(6 / sum(shape))
    assert kernel.shape == shape and np.abs(kernel).max() <= limit and np.abs(keras_kernel).max() <= limit
    np.testing.assert_allclose(kernel.std(), keras_kernel.std(), rtol=0.2)
    np.testing.assert_array_equal(np.asarray(layer.bias[...]), 0.0)


def test_dropout_in_training_masks_at_its_rate_and_scales_the_rest():
  """heads.dropout (XLA's Threefry bits on the CPU): about `rate` of the values zeroed, the rest
  scaled by 1 / (1 - rate), the gradient through the same mask; a new mask for each key, the same
  for the same key, one draw per image with broadcast_dims, and nothing dropped in inference."""
  from imgcls.models.heads import dropout

  layer = nnx.Dropout(0.25, deterministic=True)
  x = jnp.ones((8, 40, 40, 16))
  assert bool(jnp.all(dropout(layer, x, None) == x)) and bool(jnp.all(dropout(layer, x, nnx.Rngs(0)) == x))  # inference
  layer.deterministic = False
  y = jax.jit(lambda x: dropout(layer, x, nnx.Rngs(dropout=0)))(x)
  values = np.unique(np.asarray(y))
  np.testing.assert_allclose(values, [0.0, 1 / 0.75], rtol=1e-6)
  assert float(jnp.mean(y == 0)) == pytest.approx(0.25, abs=0.005)
  again = dropout(layer, x, nnx.Rngs(dropout=0))
  other = dropout(layer, x, nnx.Rngs(dropout=1))
  assert bool(jnp.all(again == y)) and float(jnp.mean((other == 0) == (y == 0))) < 0.7
  grad = jax.grad(lambda x: jnp.sum(dropout(layer, x, nnx.Rngs(dropout=0))))(x)
  np.testing.assert_array_equal(np.asarray(grad), np.asarray(y))
  per_image = nnx.Dropout(0.5, broadcast_dims=(1, 2, 3))
  z = np.asarray(dropout(per_image, x, nnx.Rngs(dropout=2))).reshape(8, -1)
  assert np.all(z == z[:, :1]) and set(np.unique(z[:, 0])) <= {0.0, 2.0}


@pytest.mark.parametrize("name", ["bn_cnn", "dropout_cnn"])
def test_the_jitted_init_draws_the_eager_build_s_model(name, tree):
  """`create_model` draws a random init in one jitted program: the same parameters, BatchNorm
  statistics, dropout keys and graph as building the model eagerly."""
  from imgcls import steps

  config = tiny_config(tree, **{"model.name": name, "data.image_size": (64, 64)})
  jitted = steps.create_model(config, 3)
  eager = build_model(config, 3, rngs=nnx.Rngs(params=config.seed, dropout=config.seed + 1))
  assert nnx.graphdef(jitted) == nnx.graphdef(eager)

  def values(x):
    return np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x)

  ours, theirs = jax.tree.leaves(nnx.state(jitted)), jax.tree.leaves(nnx.state(eager))
  assert len(ours) == len(theirs) >= 10
  for a, b in zip(ours, theirs):
    np.testing.assert_array_equal(values(a), values(b))
