"""Real ImageNet MobileNetV2 weights (shared/weights): Keras's predictions on real photos, mismatches."""

from __future__ import annotations

import csv

import jax
import numpy as np
import pytest
from flax import nnx
from paths import load_recipe, shared
from PIL import Image

from imgcls.config import default_config
from imgcls.data.images import ImageSpec, load_image
from imgcls.evaluate import predict
from imgcls.models import build_model, imagenet

TOP = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"
NO_TOP = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
# shared/weights/README.md: what Keras predicts on shared/data/imagenet_samples (index, p).
README_TOP1 = {
  "bird.png": (19, 0.894),
  "cat.png": (285, 0.589),
  "dragonfly.png": (319, 0.875),
  "grace_hopper.png": (652, 0.706),
  "hot_dog.jpg": (934, 0.544),
  "owl.jpg": (82, 0.353),
  "parrot.jpg": (88, 0.923),
  "sunflower.png": (985, 0.866),
}


def mobilenet_config(weights: str, size=(224, 224), **model):
  c = default_config()
  c.model.name = "mobilenet_v2"
  c.model.weights = weights
  c.data.image_size = size
  c.data.rescale = 1 / 255
  for key, value in model.items():
    setattr(c.model, key, value)
  return c


@pytest.fixture(scope="module")
def imagenet_model():
  model = build_model(mobilenet_config(str(shared("weights", TOP)), include_top=True), 1000, rngs=nnx.Rngs(0))
  model.eval()
  return model


def keras_load_img(path, size) -> np.ndarray:
  """keras.utils.load_img(path, target_size=size, interpolation="bilinear"): PIL's bilinear resize
  (which, unlike TensorFlow's, averages over the source pixels when shrinking)."""
  with Image.open(path) as img:
    return np.asarray(img.convert("RGB").resize((size[1], size[0]), Image.BILINEAR), np.float32)


def test_reproduces_keras_top1_table(imagenet_model):
  """The README's table was made with Keras's load_img bilinear resize; with the same pixels we match it."""
  folder = shared("data", "imagenet_samples")
  pixels = np.stack([keras_load_img(folder / name, (224, 224)) for name in README_TOP1])
  probs = np.asarray(jax.nn.softmax(imagenet_model(pixels / 255), axis=-1))
  for (name, (index, p)), row in zip(README_TOP1.items(), probs):
    print(f"{name}: {row.argmax()} {imagenet.class_names()[row.argmax()]} {row.max():.4f} (Keras {index} {p})")
    assert row.argmax() == index, name
    assert abs(row[index] - p) < 1e-3, name


def test_tf_bilinear_pixels_give_the_same_top1(imagenet_model):
  """Through the pipeline's TF-compatible resize the classes are the same (probabilities are not)."""
  folder = shared("data", "imagenet_samples")
  pixels = np.stack([load_image(str(folder / name), ImageSpec((224, 224), jpeg_draft=False)) for name in README_TOP1])
  probs = np.asarray(jax.nn.softmax(imagenet_model(pixels / 255), axis=-1))
  assert [int(i) for i in probs.argmax(-1)] == [index for index, _ in README_TOP1.values()]


def test_predict_writes_top_k_csv(tmp_path):
  config = load_recipe("imagenet", "mobilenet_v2")
  config.model.weights = str(shared("weights", TOP))
  folder = shared("data", "imagenet_samples")
  output = tmp_path / "out" / "predictions.csv"
  rows = predict(config, inputs=str(folder), output=str(output), top_k=3)
  names = imagenet.class_names()
  assert [r["path"].rsplit("/", 1)[-1] for r in rows] == sorted(README_TOP1)
  for row in rows:
    index, p = README_TOP1[row["path"].rsplit("/", 1)[-1]]
    assert row["class_1"] == names[index]
    assert abs(row["prob_1"] - p) < 1e-3  # The recipe resizes as keras.utils.load_img does.
    assert row["prob_1"] >= row["prob_2"] >= row["prob_3"]
  with open(output, newline="") as f:
    written = list(csv.DictReader(f))
  assert list(written[0]) == ["path", "class_1", "prob_1", "class_2", "prob_2", "class_3", "prob_3"]
  assert [w["class_1"] for w in written] == [r["class_1"] for r in rows]
  assert Image.open(output.with_suffix(".png")).size[0] > 400  # The insects tutorial's grid of titled predictions.
  # One file, and a folder's non-image files are skipped.
  one = predict(config, inputs=str(folder / "parrot.jpg"), output=str(tmp_path / "one.csv"), top_k=1)
  assert len(one) == 1 and one[0]["class_1"] == "macaw"


def test_no_top_cut_at_block_6_expand_relu_is_12x12():
  model = build_model(
    mobilenet_config(str(shared("weights", NO_TOP)), (90, 90), cut_at="block_6_expand_relu"), 1, rngs=nnx.Rngs(0)
  )
  model.eval()
  folder = shared("data", "pollen")
  paths = sorted(folder.glob("P/*"))[:2] + sorted(folder.glob("NP/*"))[:2]
  images = np.stack([load_image(str(p), ImageSpec((90, 90), jpeg_draft=False)) for p in paths]) / 255
  features = model.features(images)
  assert features.shape == (4, 12, 12, 192)
  assert model(images).shape == (4, 1)
  assert model.backbone.layer_names[-1] == "block_6_expand_relu"
  assert "block_6_depthwise" not in model.backbone.layers


def test_imagenet_weights_come_from_the_keras_cache(tmp_path, monkeypatch):
  """The pollen recipe (weights="imagenet") finds Keras's file in $KERAS_HOME/models, no download."""
  (tmp_path / "models").mkdir()
  (tmp_path / "models" / NO_TOP).symlink_to(shared("weights", NO_TOP))
  monkeypatch.setenv("KERAS_HOME", str(tmp_path))

  def no_download(url, path):
    raise AssertionError(f"downloaded {url}")

  monkeypatch.setattr("imgcls.models.keras_weights.download", no_download)
  model = build_model(load_recipe("pollen"), 1, rngs=nnx.Rngs(0))
  assert model.backbone.output_shape == (12, 12, 192)
  assert model.head.hidden[0].in_features == 12 * 12 * 192


@pytest.mark.parametrize(
  "model,weights,expected",
  [
    (dict(alpha=0.5), NO_TOP, r"Conv1: kernel \(3, 3, 3, 32\) in the file, \(3, 3, 3, 16\) in the model"),
    (dict(), TOP, r"predictions: kernel \(1280, 1000\), bias \(1000,\).*include_top file"),
    (dict(include_top=True), NO_TOP, r"Missing from the file.*predictions: kernel \(1280, 1000\).*no-top file"),
  ],
  ids=["wrong_alpha", "top_file_into_no_top", "no_top_file_into_top"],
)
def test_mismatched_files_fail_with_one_clear_error(model, weights, expected):
  config = mobilenet_config(str(shared("weights", weights)), (96, 96), **model)
  with pytest.raises(ValueError, match=f"(?s){expected}"):
    build_model(config, 1000 if model.get("include_top") else 3, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("name", ["vgg16", "inception_v3"])
def test_another_models_file_fails(name):
  config = mobilenet_config(str(shared("weights", NO_TOP)), (96, 96))
  config.model.name = name
  with pytest.raises(ValueError) as error:
    build_model(config, 3, rngs=nnx.Rngs(0))
  message = str(error.value)
  assert "another model" in message
  assert ("block1_conv1: kernel (3, 3, 3, 64), bias (64,)" if name == "vgg16" else "conv2d: kernel (3, 3, 3, 32)") in message
  assert "Conv1: kernel (3, 3, 3, 32)" in message  # Listed as unexpected.
