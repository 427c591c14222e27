"""Each Keras family's preprocessing is Keras's preprocess_input, whatever config.data.rescale is."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
keras = pytest.importorskip("keras")

from flax import nnx  # noqa: E402

from imgcls.config import default_config  # noqa: E402
from imgcls.models import MODELS  # noqa: E402

FAMILIES = {
  "mobilenet_v2": keras.applications.mobilenet_v2.preprocess_input,
  "vgg16": keras.applications.vgg16.preprocess_input,
  "vgg19": keras.applications.vgg19.preprocess_input,
  "inception_v3": keras.applications.inception_v3.preprocess_input,
}


@pytest.mark.parametrize("rescale", [1.0, 1 / 255, 2.0])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_preprocess_is_keras_preprocess_input(name, rescale):
  c = default_config()
  c.model.name = name
  c.data.image_size = (80, 80)
  backbone = nnx.eval_shape(lambda: MODELS[name](c, nnx.Rngs(0)))
  pixels = np.random.default_rng(0).integers(0, 256, (2, 80, 80, 3)).astype(np.float32)
  ours = np.asarray(backbone.preprocess(pixels * np.float32(rescale), rescale))
  theirs = FAMILIES[name](pixels.copy())
  # Undoing a rescale in float32 costs about one rounding of the pixel value (255 * 6e-8).
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6 if rescale == 1.0 else 1e-4)


def test_greyscale_images_are_repeated_to_three_channels():
  c = default_config()
  c.model.name = "vgg16"
  c.data.image_size = (32, 32)
  backbone = nnx.eval_shape(lambda: MODELS["vgg16"](c, nnx.Rngs(0)))
  grey = np.full((1, 4, 4, 1), 100.0, np.float32)
  np.testing.assert_allclose(
    np.asarray(backbone.preprocess(grey, 1.0)),
    keras.applications.vgg16.preprocess_input(np.repeat(grey, 3, axis=-1)),
    atol=1e-5,
  )


def test_without_preprocess_input_the_backbone_sees_the_pipeline_images():
  """the pollen and X-ray tutorials feed their pretrained networks [0, 1] images, no preprocess_input."""
  c = default_config()
  c.model.update(name="mobilenet_v2", preprocess_input=False)
  c.data.image_size = (32, 32)
  backbone = nnx.eval_shape(lambda: MODELS["mobilenet_v2"](c, nnx.Rngs(0)))
  images = np.random.default_rng(0).random((2, 4, 4, 3)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(backbone.preprocess(images, 1 / 255)), images)
  np.testing.assert_array_equal(np.asarray(backbone.preprocess(images[..., :1], 1 / 255)), np.repeat(images[..., :1], 3, axis=-1))
