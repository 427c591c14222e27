"""Our Keras families against Keras itself (Keras 3 on JAX), on real photos (shared/, if there).

Each reference is `keras.applications.X(weights=None, include_top=True)` at a small input size,
given random weights (BatchNorm moving statistics included), written with Keras's own legacy h5
writer (the top file, and the network up to Keras's include_top=False output as the no-top file)
and loaded through `config.model.weights`, as a user would.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable

import h5py
import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
keras = pytest.importorskip("keras")

import jax  # noqa: E402
import keras_reference as kr  # noqa: E402
from flax import nnx  # noqa: E402
from paths import IMAGENET_SAMPLES  # noqa: E402

from imgcls.config import default_config  # noqa: E402
from imgcls.data.images import ImageSpec, load_image  # noqa: E402
from imgcls.models import build_model, keras_graph, keras_weights, mobilenet_v2  # noqa: E402
from imgcls.models.__main__ import parameter_count  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:keras")

PHOTOS = ("bird.png", "hot_dog.jpg", "parrot.jpg")
RESCALE = 1 / 255  # Pipeline images are pixels times this; the models must undo it.
PROB_TOL = 1e-4  # Absolute, on softmax probabilities.
FEATURE_TOL = 1e-4  # max |ours - keras| / max |keras|.


@dataclasses.dataclass(frozen=True)
class Case:
  name: str  # config.model.name
  size: tuple[int, int]
  keras_model: Callable[[], keras.Model]
  preprocess: Callable
  notop_layer: str  # Keras's include_top=False output ("<layer>:input": that layer's input).
  alpha: float = 1.0


CASES = {
  # Odd, non-square input: MobileNetV2's correct_pad pads differently.
  "mobilenet_v2_0.35": Case(
    "mobilenet_v2",
    (63, 75),
    lambda: keras.applications.MobileNetV2(weights=None, input_shape=(63, 75, 3), alpha=0.35),
    keras.applications.mobilenet_v2.preprocess_input,
    "out_relu",
    alpha=0.35,
  ),
  # alpha > 1 also widens the last convolution.
  "mobilenet_v2_1.3": Case(
    "mobilenet_v2",
    (64, 64),
    lambda: keras.applications.MobileNetV2(weights=None, input_shape=(64, 64, 3), alpha=1.3),
    keras.applications.mobilenet_v2.preprocess_input,
    "out_relu",
    alpha=1.3,
  ),
  # With the top at 32x32 (Keras allows any size >= 32 without ImageNet weights): fc1 is 512 x 4096.
  "vgg19": Case(
    "vgg19",
    (32, 32),
    lambda: keras.applications.VGG19(weights=None, input_shape=(32, 32, 3)),
    keras.applications.vgg19.preprocess_input,
    "block5_pool",
  ),
  # The real thing once: 224x224 with the 138M-parameter top.
  "vgg16_224": Case(
    "vgg16",
    (224, 224),
    lambda: keras.applications.VGG16(weights=None),
    keras.applications.vgg16.preprocess_input,
    "block5_pool",
  ),
  # Inception's smallest input, non-square.
  "inception_v3": Case(
    "inception_v3",
    (75, 83),
    lambda: keras.applications.InceptionV3(weights=None, input_shape=(75, 83, 3)),
    keras.applications.inception_v3.preprocess_input,
    "mixed10",
  ),
  # Odd and non-square: the strided 1x1 projections and 3x3 'valid' stem see odd sizes.
  "resnet50": Case(
    "resnet50",
    (37, 45),
    lambda: keras.applications.ResNet50(weights=None, input_shape=(37, 45, 3)),
    keras.applications.resnet.preprocess_input,
    "conv5_block3_out",
  ),
  "resnet50_v2": Case(
    "resnet50_v2",
    (35, 33),
    lambda: keras.applications.ResNet50V2(weights=None, input_shape=(35, 33, 3)),
    keras.applications.resnet_v2.preprocess_input,
    "post_relu",
  ),
  "densenet121": Case(
    "densenet121",
    (32, 36),
    lambda: keras.applications.DenseNet121(weights=None, input_shape=(32, 36, 3)),
    keras.applications.densenet.preprocess_input,
    "relu",
  ),
  # Its smallest input, odd: three block types, the scaled residual sums (CustomScaleLayer).
  "inception_resnet_v2": Case(
    "inception_resnet_v2",
    (75, 79),
    lambda: keras.applications.InceptionResNetV2(weights=None, input_shape=(75, 79, 3)),
    keras.applications.inception_resnet_v2.preprocess_input,
    "conv_7b_ac",
  ),
  # Xception's smallest input, odd: separable convolutions, 'same' strided poolings and projections.
  "xception": Case(
    "xception",
    (71, 77),
    lambda: keras.applications.Xception(weights=None, input_shape=(71, 77, 3)),
    keras.applications.xception.preprocess_input,
    "block14_sepconv2_act",
  ),
  # Fused-MBConv and MBConv blocks, 'same' strided convolutions at odd sizes, a fixed Normalization.
  "efficientnet_v2_b0": Case(
    "efficientnet_v2_b0",
    (35, 39),
    lambda: keras.applications.EfficientNetV2B0(weights=None, input_shape=(35, 39, 3)),
    keras.applications.efficientnet_v2.preprocess_input,
    "top_activation",
  ),
  # Sizes not multiples of the 4x4/4 stem and 2x2/2 downsampling convolutions ('valid': cropped).
  "convnext_tiny": Case(
    "convnext_tiny",
    (37, 43),
    lambda: keras.applications.ConvNeXtTiny(weights=None, input_shape=(37, 43, 3)),
    keras.applications.convnext.preprocess_input,
    "convnext_tiny_head_gap:input",  # The last block's sum.
  ),
  # Odd and non-square: the (0, 1) paddings before each stride 2; the classifier is a 1x1 convolution.
  "mobilenet_0.5": Case(
    "mobilenet",
    (35, 41),
    lambda: keras.applications.MobileNet(weights=None, input_shape=(35, 41, 3), alpha=0.5),
    keras.applications.mobilenet.preprocess_input,
    "conv_pw_13_relu",
    alpha=0.5,
  ),
  # Squeeze-excite with hard sigmoid, hard swish, the 1x1 convolution classifier after conv_2.
  "mobilenet_v3_small_0.75": Case(
    "mobilenet_v3_small",
    (37, 35),
    lambda: keras.applications.MobileNetV3Small(weights=None, input_shape=(37, 35, 3), alpha=0.75),
    keras.applications.mobilenet_v3.preprocess_input,
    "activation_17",
    alpha=0.75,
  ),
  # Odd and non-square: the cells' correct_pad paddings and the adjust blocks' shifted, halved
  # previous path (ZeroPadding2D, Cropping2D, 1x1 average pooling), 'same' average pools.
  "nasnet_mobile": Case(
    "nasnet_mobile",
    (35, 33),
    lambda: keras.applications.NASNetMobile(weights=None, input_shape=(35, 33, 3)),
    keras.applications.nasnet.preprocess_input,
    "activation_187",
  ),
  # Odd and non-square: every stride-2 depthwise block pads by correct_pad; normalises inside.
  "efficientnet_b0": Case(
    "efficientnet_b0",
    (33, 37),
    lambda: keras.applications.EfficientNetB0(weights=None, input_shape=(33, 37, 3)),
    keras.applications.efficientnet.preprocess_input,
    "top_activation",
  ),
}


@dataclasses.dataclass
class Reference:
  case: Case
  model: keras.Model
  images: np.ndarray  # Pipeline images: pixels times RESCALE.
  keras_inputs: np.ndarray  # Keras's preprocess_input of the pixels.
  top_file: str
  notop_file: str


_REFERENCES: dict[str, Reference] = {}


def photos(size: tuple[int, int]) -> np.ndarray:
  """The real photos at `size`; without shared/, smooth synthetic images (colour gradients, rings)."""
  if all((IMAGENET_SAMPLES / p).is_file() for p in PHOTOS):
    return np.stack([load_image(str(IMAGENET_SAMPLES / p), ImageSpec(size, jpeg_draft=False)) for p in PHOTOS])
  y, x = np.meshgrid(np.linspace(-1, 1, size[0]), np.linspace(-1, 1, size[1]), indexing="ij")
  images = []
  for i in range(len(PHOTOS)):
    rings = np.sin((i + 3) * np.pi * np.hypot(x - 0.2 * i, y))
    images.append(np.stack([rings, x * (i - 1), y * np.cos(i)], axis=-1))
  return ((np.stack(images) + 1) * 127.5).clip(0, 255).astype(np.float32)


@pytest.fixture(scope="session")
def reference_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("keras_reference")


def get_reference(key: str, folder) -> Reference:
  """Built once per session: Keras model, random weights, both weight files."""
  if key not in _REFERENCES:
    case = CASES[key]
    pixels = photos(case.size)
    keras.backend.clear_session()  # Unnamed layers get the names of a fresh session, as ours have.
    model = case.keras_model()
    keras_inputs = case.preprocess(pixels.copy())
    kr.randomize(model, seed=len(_REFERENCES), images=keras_inputs)
    top_file, notop_file = str(folder / f"{key}_top.h5"), str(folder / f"{key}_notop.h5")
    kr.save_legacy_h5(model, top_file)
    kr.save_legacy_h5(kr.sub_model(model, case.notop_layer), notop_file)
    _REFERENCES[key] = Reference(case, model, pixels * RESCALE, keras_inputs, top_file, notop_file)
  return _REFERENCES[key]


def config_for(case: Case, **model):
  c = default_config()
  c.model.name = case.name
  c.model.alpha = case.alpha
  c.data.image_size = case.size
  c.data.rescale = RESCALE
  for key, value in model.items():
    setattr(c.model, key, value)
  return c


def max_rel(ours, theirs) -> float:
  return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


@pytest.mark.parametrize("key", list(CASES))
def test_layer_names_and_shapes_match_keras(key, reference_dir):
  ref = get_reference(key, reference_dir)
  ours = keras_graph(config_for(ref.case, include_top=True)).keras_layers()
  theirs = {layer.name: tuple(layer.output.shape[1:]) for layer in ref.model.layers[1:]}
  assert ours == theirs


@pytest.mark.parametrize("key", list(CASES))
def test_parameter_counts_match_keras(key, reference_dir):
  ref = get_reference(key, reference_dir)
  assert parameter_count(keras_graph(config_for(ref.case, include_top=True)).layers) == ref.model.count_params()


@pytest.mark.parametrize("alpha", [0.5, 0.75, 1.4])  # 1.0: the real weights load shape-checked.
def test_other_alphas_have_keras_layers_and_shapes(alpha):
  """Widths not in CASES: every layer's name and output shape (so every weight's shape) as Keras."""
  theirs = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), alpha=alpha, include_top=False)
  ours = mobilenet_v2.graph((32, 32, 3), alpha=alpha, include_top=False)
  assert {l.name: l.shape for l in ours.layers[1:]} == {l.name: tuple(l.output.shape[1:]) for l in theirs.layers[1:]}


VARIANTS = {  # Variants not in CASES with their own block tables or options (bench/keras_parity.py checks
  # every variant's probabilities, the deepest and widest included): name -> Keras's.
  "resnet101": "ResNet101",
  "resnet101_v2": "ResNet101V2",
  "mobilenet": "MobileNet",
  "mobilenet_v3_large": "MobileNetV3Large",
  "mobilenet_v3_small_minimalistic": ("MobileNetV3Small", {"minimalistic": True}),
  "mobilenet_v3_large_minimalistic": ("MobileNetV3Large", {"minimalistic": True}),
  "nasnet_large": "NASNetLarge",
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_has_keras_layers_and_shapes(name):
  """Every layer's name and output shape (so every weight's shape) as Keras, with the top; the parameter count."""
  keras.backend.clear_session()
  constructor, arguments = VARIANTS[name] if isinstance(VARIANTS[name], tuple) else (VARIANTS[name], {})
  theirs = getattr(keras.applications, constructor)(weights=None, input_shape=(32, 32, 3), **arguments)
  c = default_config()
  c.model.name, c.model.include_top, c.data.image_size = name, True, (32, 32)
  ours = keras_graph(c)
  assert ours.keras_layers() == {l.name: tuple(l.output.shape[1:]) for l in theirs.layers[1:]}
  assert parameter_count(ours.layers) == theirs.count_params()


@pytest.mark.parametrize("key", list(CASES))
def test_include_top_probabilities_match_keras(key, reference_dir):
  ref = get_reference(key, reference_dir)
  model = build_model(config_for(ref.case, include_top=True, weights=ref.top_file), 1000, rngs=nnx.Rngs(0))
  model.eval()
  probs = np.asarray(jax.nn.softmax(model(ref.images), axis=-1))
  expected = kr.run(ref.model, ref.keras_inputs)
  assert expected.max() > 0.05  # The comparison is not between two near-uniform distributions.
  diff = float(np.abs(probs - expected).max())
  print(f"{key}: include_top max |p - p_keras| = {diff:.2e}")
  assert diff < PROB_TOL
  np.testing.assert_array_equal(probs.argmax(-1), expected.argmax(-1))


FEATURE_CASES = [
  ("mobilenet_v2_0.35", "", "avg"),
  ("mobilenet_v2_0.35", "block_6_expand_relu", ""),
  ("mobilenet_v2_1.3", "", "max"),
  ("mobilenet_v2_1.3", "block_16_project_BN", ""),
  ("vgg19", "", "max"),
  ("vgg19", "block4_conv2", ""),
  ("vgg16_224", "", "avg"),
  ("vgg16_224", "block3_pool", ""),
  ("inception_v3", "", "avg"),
  ("inception_v3", "mixed7", ""),
  ("inception_v3", "activation_4", ""),  # Counter-named, in the stem: conv2d_bn unit 5 of 94.
  ("resnet50", "", "avg"),
  ("resnet50", "conv3_block4_out", ""),
  ("resnet50_v2", "", ""),
  ("resnet50_v2", "conv4_block6_out", ""),  # After the V2 stride's 1x1 max pooling shortcut.
  ("densenet121", "", "max"),
  ("densenet121", "pool3_pool", ""),
  ("mobilenet_0.5", "", "avg"),
  ("mobilenet_0.5", "conv_pad_6", ""),
  ("efficientnet_v2_b0", "", "max"),
  ("efficientnet_v2_b0", "block2b_add", ""),  # Fused-MBConv, after its stochastic depth.
  ("convnext_tiny", "", "avg"),
  ("convnext_tiny", "convnext_tiny_stem", ""),  # A nested Sequential, as Keras names it.
  ("convnext_tiny", "convnext_tiny_stage_2_block_4_layer_scale", ""),
  ("inception_resnet_v2", "", "avg"),
  ("inception_resnet_v2", "custom_scale_layer_39", ""),  # Counter-named: block8_10's sum, no ReLU.
  ("xception", "", "avg"),
  ("xception", "add_7", ""),  # Counter-named: the middle flow's fourth block.
  ("mobilenet_v3_small_0.75", "", "max"),
  ("mobilenet_v3_small_0.75", "re_lu_1", ""),  # Inside the hard sigmoid: relu6(x + 3).
  ("mobilenet_v3_small_0.75", "expanded_conv_5_add", ""),
  ("nasnet_mobile", "", "max"),
  ("nasnet_mobile", "normal_concat_5", ""),  # The first normal cell after a reduction.
  ("nasnet_mobile", "cropping2d_1", ""),  # Counter-named: inside stem_2's adjust block.
  ("efficientnet_b0", "", "avg"),
  ("efficientnet_b0", "block6c_add", ""),  # After a stochastic depth Dropout (identity in inference).
  ("efficientnet_b0", "normalization", ""),  # The stem's normalisation of the pixels.
]


@pytest.mark.parametrize("key,cut_at,pooling", FEATURE_CASES)
def test_features_match_keras(key, cut_at, pooling, reference_dir):
  ref = get_reference(key, reference_dir)
  config = config_for(ref.case, weights=ref.notop_file, cut_at=cut_at, pooling=pooling if not cut_at else "")
  model = build_model(config, 2, rngs=nnx.Rngs(0))
  model.eval()
  features = np.asarray(model.features(ref.images))
  expected = kr.run(kr.sub_model(ref.model, cut_at or ref.case.notop_layer, pooling), ref.keras_inputs)
  assert features.shape == expected.shape
  rel = max_rel(features, expected)
  print(f"{key} {cut_at or ref.case.notop_layer} {pooling}: {features.shape} max rel diff {rel:.2e}")
  assert rel < FEATURE_TOL
  # The backbone holds only the layers up to the cut.
  assert set(model.backbone.layers) <= kr.layer_names(ref.model)
  if cut_at:  # A nested model's name stands for its last layer.
    assert model.backbone.layer_names[-1] == model.backbone.nested.get(cut_at, cut_at)


def test_efficientnet_imagenet_file_adds_keras_imagenet_rescaling(reference_dir, tmp_path, monkeypatch):
  """With Keras's ImageNet file, Keras's EfficientNet has one more Rescaling (1 / sqrt(std)) after its
  Normalization; loaded by that file's name, imgcls's has it too."""
  from keras.src.applications import efficientnet as keras_efficientnet

  ref = get_reference("efficientnet_b0", reference_dir)
  path = tmp_path / "efficientnetb0_notop.h5"
  shutil.copy(ref.notop_file, path)
  monkeypatch.setattr(keras_efficientnet.file_utils, "get_file", lambda *args, **kwargs: str(path))  # Offline.
  keras.backend.clear_session()
  theirs = keras.applications.EfficientNetB0(weights="imagenet", include_top=False, input_shape=(*ref.case.size, 3))
  assert "rescaling_1" in [layer.name for layer in theirs.layers]
  expected = kr.run(theirs, ref.keras_inputs)
  assert max_rel(kr.run(kr.sub_model(ref.model, "top_activation"), ref.keras_inputs), expected) > 10 * FEATURE_TOL
  model = build_model(config_for(ref.case, weights=str(path)), 2, rngs=nnx.Rngs(0))
  model.eval()
  assert "rescaling_1" in model.backbone.layer_names
  rel = max_rel(np.asarray(model.features(ref.images)), expected)
  print(f"efficientnet_b0 with Keras's ImageNet rescaling: max rel diff {rel:.2e}")
  assert rel < FEATURE_TOL


# Separable convolutions, Normalization, LayerNormalization and LayerScale, nested Sequentials.
@pytest.mark.parametrize("key", ["mobilenet_v2_0.35", "xception", "efficientnet_b0", "convnext_tiny"])
def test_keras3_weights_file_loads_the_same(key, reference_dir, tmp_path):
  ref = get_reference(key, reference_dir)
  path = str(tmp_path / "mobilenet.weights.h5")
  ref.model.save_weights(path)
  flat = keras_weights.read(path)
  legacy = keras_weights.read(ref.top_file)
  assert flat.keys() == legacy.keys()
  for key in flat:
    np.testing.assert_array_equal(flat[key], legacy[key])
  model = build_model(config_for(ref.case, include_top=True, weights=path), 1000, rngs=nnx.Rngs(0))
  model.eval()
  expected = kr.run(ref.model, ref.keras_inputs)
  assert np.abs(np.asarray(jax.nn.softmax(model(ref.images), -1)) - expected).max() < PROB_TOL


def _rewrite_as_keras2(source: str, target: str) -> None:
  """The file as Keras 2 named things: counter names from _1 (conv2d_1, ...) and ':0' weight names."""

  def rename(layer: str) -> str:
    for prefix in ("conv2d", "batch_normalization", "activation"):
      if layer == prefix or layer.startswith(prefix + "_") and layer[len(prefix) + 1 :].isdigit():
        number = int(layer[len(prefix) + 1 :] or 0) if layer != prefix else 0
        return f"{prefix}_{number + 1}"
    return layer

  with h5py.File(source, "r") as src, h5py.File(target, "w") as dst:
    names = [n.decode() if isinstance(n, bytes) else n for n in src.attrs["layer_names"]]
    dst.attrs["layer_names"] = [rename(n).encode() for n in names]
    for name in names:
      group = dst.create_group(rename(name))
      weight_names = [w.decode() if isinstance(w, bytes) else w for w in src[name].attrs["weight_names"]]
      new_names = [f"{rename(name)}/{w.rsplit('/', 1)[-1]}:0" for w in weight_names]
      group.attrs["weight_names"] = [w.encode() for w in new_names]
      for old, new in zip(weight_names, new_names):
        group.create_dataset(new, data=src[name][old][()])


def test_inception_loads_keras2_counter_names(reference_dir, tmp_path):
  """Keras's own InceptionV3 files name layers conv2d_1...; a Keras 3 session may start anywhere."""
  ref = get_reference("inception_v3", reference_dir)
  renamed = str(tmp_path / "inception_keras2_names.h5")
  _rewrite_as_keras2(ref.notop_file, renamed)
  with h5py.File(renamed) as f:
    assert "conv2d_94" in f and "conv2d_95" not in f
  features = {}
  for path in (ref.notop_file, renamed):
    model = build_model(config_for(ref.case, weights=path, cut_at="mixed7"), 2, rngs=nnx.Rngs(0))
    model.eval()
    features[path] = np.asarray(model.features(ref.images))
  np.testing.assert_array_equal(features[ref.notop_file], features[renamed])


def test_wrong_alpha_fails_naming_layers_and_shapes(reference_dir):
  ref = get_reference("mobilenet_v2_0.35", reference_dir)
  with pytest.raises(ValueError) as error:
    build_model(config_for(CASES["mobilenet_v2_1.3"], weights=ref.notop_file), 2, rngs=nnx.Rngs(0))
  message = str(error.value)
  assert "Conv1: kernel (3, 3, 3, 16) in the file, (3, 3, 3, 40) in the model" in message
  assert ("block_16_project_BN: gamma, beta, moving_mean, moving_variance (112,) in the file, (416,) in the model") in message
  assert "MobileNetV2 alpha" in message


def test_top_file_into_notop_model_fails(reference_dir):
  ref = get_reference("vgg19", reference_dir)
  with pytest.raises(ValueError, match=r"(?s)In the file but not in this model:.*predictions: kernel \(4096, 1000\)"):
    build_model(config_for(ref.case, weights=ref.top_file), 2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"(?s)Missing from the file.*fc1: kernel \(512, 4096\).*no-top file"):
    build_model(config_for(ref.case, weights=ref.notop_file, include_top=True), 1000, rngs=nnx.Rngs(0))


def test_weights_of_layers_past_the_cut_are_not_needed(reference_dir, tmp_path):
  """A file cut at block4 loads into a model cut at block3, not into one cut at block5."""
  ref = get_reference("vgg19", reference_dir)
  path = str(tmp_path / "vgg19_block4.h5")
  kr.save_legacy_h5(kr.sub_model(ref.model, "block4_pool"), path)
  build_model(config_for(ref.case, weights=path, cut_at="block3_pool"), 2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"block5_conv1: kernel \(3, 3, 512, 512\), bias \(512,\)"):
    build_model(config_for(ref.case, weights=path), 2, rngs=nnx.Rngs(0))


def test_jit_compiles_quickly(reference_dir):
  ref = get_reference("mobilenet_v2_0.35", reference_dir)
  model = build_model(config_for(ref.case, weights=ref.notop_file, pooling="avg"), 5, rngs=nnx.Rngs(0))
  model.eval()
  forward = nnx.jit(lambda m, x: m(x))
  start = time.perf_counter()
  logits = forward(model, ref.images).block_until_ready()
  seconds = time.perf_counter() - start
  print(f"mobilenet_v2 0.35 at 63x75: first jitted call {seconds:.2f}s")
  assert logits.shape == (len(PHOTOS), 5)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(model(ref.images)), rtol=1e-4, atol=1e-5)
  assert seconds < 60


def test_wrong_variant_fails_naming_every_mismatch(reference_dir):
  """ResNet50's file into ResNet101 (blocks missing) and into ResNet50V2 (other layers, other shapes)."""
  ref = get_reference("resnet50", reference_dir)
  with pytest.raises(ValueError) as error:
    build_model(config_for(dataclasses.replace(ref.case, name="resnet101"), weights=ref.notop_file), 2, rngs=nnx.Rngs(0))
  message = str(error.value)
  assert all(f"conv4_block{i}_1_conv: kernel" in message for i in range(7, 24))
  assert "0 unexpected" in message
  with pytest.raises(ValueError) as error:
    build_model(config_for(dataclasses.replace(ref.case, name="resnet50_v2"), weights=ref.notop_file), 2, rngs=nnx.Rngs(0))
  message = str(error.value)
  assert "conv2_block1_preact_bn: gamma, beta, moving_mean, moving_variance (64,)" in message  # missing
  assert "conv1_bn: gamma" in message  # unexpected: V2 has no stem BatchNorm
