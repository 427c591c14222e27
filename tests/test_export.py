"""--mode=export: every format's file, run in its own runtime (onnxruntime, the LiteRT interpreter,
TensorFlow, jax.export, Keras 3), gives `--mode=predict`'s probabilities on real images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from conftest import POLLEN, run_cli, save_run, tiny_config
from flax import nnx

from imgcls import evaluate, export, steps, train
from imgcls.data import sources
from imgcls.export import keras as keras_export
from imgcls.export import litert, onnx, saved_model, stablehlo
from imgcls.models import keras_graph

FLOAT_FORMATS = ("onnx", "saved_model", "litert", "stablehlo", "keras")
PARITY = 1e-4


def _needs(path: Path) -> None:
  if not path.exists():
    pytest.skip(f"{path} is not available")


def randomize(model: nnx.Module, seed: int) -> None:
  """BatchNorm statistics and scales away from their initial values, so that inference BatchNorm
  matters; the output layer scaled so that probabilities are far from uniform."""
  rng = np.random.default_rng(seed)
  for _, module in nnx.iter_modules(model):
    if isinstance(module, nnx.BatchNorm):
      n = module.mean.shape
      module.mean.set_value(jnp.asarray(rng.normal(0.0, 0.3, n), jnp.float32))
      module.var.set_value(jnp.asarray(rng.uniform(0.5, 2.0, n), jnp.float32))
      if module.scale is not None:
        module.scale.set_value(jnp.asarray(rng.uniform(0.6, 1.4, n), jnp.float32))
      module.bias.set_value(jnp.asarray(rng.normal(0.0, 0.2, n), jnp.float32))
  model.head.output.kernel.set_value(model.head.output.kernel.get_value() * 8.0)


def save_random_run(config, workdir: Path, class_names: list[str], normalization: dict) -> Path:
  """A workdir as training writes it (config.json, a best checkpoint), with random weights."""
  model = steps.create_model(config, len(class_names))
  randomize(model, config.seed)
  save_run(config, workdir, model, class_names, normalization)
  return workdir


@pytest.fixture(scope="session")
def runs(tree, tmp_path_factory) -> dict:
  """name -> (config, workdir): a trained binary tutorial CNN (the cats-vs-dogs tutorial's
  BatchNorm CNN on pollen), and two random multi-class Keras backbones on `tree`: MobileNetV2
  cut with a hidden layer and feature-wise normalisation; VGG16 (cut at block3_pool) on
  greyscale images with an averaged, dropout head."""
  _needs(POLLEN)
  found = {}
  workdir = tmp_path_factory.mktemp("export_bn_cnn")
  config = tiny_config(
    POLLEN,
    **{
      "model.name": "bn_cnn",
      "model.filters": 8,
      "model.head.hidden": (-1,),
      "data.image_size": (64, 64),
      "data.label_mode": "binary",
      "data.batch_size": 32,
      "train.epochs": 1,
      "train.threshold": 0.4,
    },
  )
  train.train_and_evaluate(config, str(workdir))
  found["bn_cnn"] = (config, workdir)

  classes = ["class_0", "class_1", "class_2"]
  config = tiny_config(
    tree,
    **{
      "model.name": "mobilenet_v2",
      "model.alpha": 0.35,
      "model.cut_at": "block_3_expand_relu",
      "model.head.hidden": (16,),
      "data.image_size": (32, 32),
      "data.featurewise_center": True,
      "data.featurewise_std_normalization": True,
    },
  )
  stats = {"mean": [0.31, 0.29, 0.33], "std": [0.21, 0.24, 0.2]}
  found["mobilenet_v2"] = (config, save_random_run(config, tmp_path_factory.mktemp("export_mobilenet"), classes, stats))
  config = tiny_config(
    tree,
    **{
      "model.name": "vgg16",
      "model.cut_at": "block3_pool",
      "model.head.pooling": "avg",
      "model.head.hidden": (16,),
      "model.head.dropout": 0.5,
      "data.image_size": (32, 32),
      "data.color_mode": "grayscale",
      "data.rescale": 1.0,
      "seed": 3,
    },
  )
  found["vgg16"] = (config, save_random_run(config, tmp_path_factory.mktemp("export_vgg16"), classes, {}))
  return found


def _images(config) -> list[str]:
  """Real images of the run's data: 5 of each class."""
  root = Path(config.data.dir)
  return [str(p) for folder in sorted(root.iterdir()) if folder.is_dir() for p in sorted(folder.iterdir())[:5]]


@pytest.fixture(scope="session")
def predicted(runs, tmp_path_factory) -> dict:
  """name -> (paths, probabilities) of `--mode=predict` (the CLI for the binary run, the same
  function in-process for the others)."""
  out = {}
  for name, (config, workdir) in runs.items():
    paths = _images(config)
    csv = tmp_path_factory.mktemp(f"predict_{name}") / "predictions.csv"
    if name == "bn_cnn":
      folder = tmp_path_factory.mktemp("bn_cnn_images")
      for path in paths:
        os.symlink(path, folder / f"{Path(path).parent.name}_{Path(path).name}")
      result = run_cli("--mode=predict", f"--workdir={workdir}", f"--input={folder}", f"--output={csv}")
      assert result.returncode == 0, result.stderr[-3000:]
      paths = sorted(str(p) for p in folder.iterdir())
    else:
      evaluate.predict(config, inputs=str(Path(config.data.dir)), output=str(csv), workdir=str(workdir))
    table = pd.read_csv(csv).set_index("path")
    probs = table[[c for c in table.columns if c.startswith("prob_")]].loc[paths].to_numpy()
    out[name] = (paths, probs)
  return out


@pytest.fixture(scope="session")
def exported(runs, tmp_path_factory) -> dict:
  """(run name, format) -> export.json's content; the bn_cnn's ONNX through the CLI."""
  found = {}
  for name, (config, workdir) in runs.items():
    for fmt in FLOAT_FORMATS:
      if (name, fmt) == ("bn_cnn", "onnx"):
        result = run_cli("--mode=export", f"--workdir={workdir}", "--format=onnx")
        assert result.returncode == 0, result.stderr[-3000:]
        assert "probabilities differ from imgcls's by at most" in result.stderr
        found[name, fmt] = json.loads((workdir / "export" / "onnx" / "export.json").read_text())
      else:
        found[name, fmt] = export.export(config, str(workdir), fmt)
  return found


RUNNERS = {
  "onnx": onnx.runner,
  "saved_model": saved_model.runner,
  "litert": litert.runner,
  "stablehlo": stablehlo.runner,
}


@pytest.mark.parametrize("name", ["bn_cnn", "mobilenet_v2", "vgg16"])
@pytest.mark.parametrize("fmt", ["onnx", "saved_model", "litert", "stablehlo"])
def test_each_format_in_its_runtime_gives_predicts_probabilities(runs, predicted, exported, name, fmt):
  config, workdir = runs[name]
  paths, expected = predicted[name]
  pixels = evaluate.load_pixels(paths, config.data)  # 0-255, as a user's images come.
  path = workdir / "export" / fmt / export.FILE_NAMES[fmt]
  got = RUNNERS[fmt](str(path))(pixels)
  assert got.shape == expected.shape
  assert np.abs(got - expected).max() < PARITY
  assert expected.max(axis=1).mean() > 0.6  # Probabilities far from uniform: the comparison means something.
  info = exported[name, fmt]
  assert info["parity_with_predict"]["max_abs_difference"] < PARITY
  assert info["parity_with_predict"]["top1_agreement"] == 1.0
  assert info["file_bytes"] == export._size(str(path)) > 0


def test_stablehlo_takes_any_batch_size_with_the_documented_loader(runs, predicted, exported):
  from jax import export as jax_export

  config, workdir = runs["mobilenet_v2"]
  paths, expected = predicted["mobilenet_v2"]
  pixels = evaluate.load_pixels(paths, config.data)
  restored = jax_export.deserialize(bytearray((workdir / "export" / "stablehlo" / "model.stablehlo").read_bytes()))
  for count in (1, 4, len(paths)):
    assert np.abs(np.asarray(restored.call(pixels[:count])) - expected[:count]).max() < PARITY


def test_saved_model_serving_signature(runs, predicted, exported):
  import tensorflow as tf

  config, workdir = runs["vgg16"]
  paths, expected = predicted["vgg16"]
  loaded = tf.saved_model.load(str(workdir / "export" / "saved_model" / "saved_model"))
  serve = loaded.signatures["serving_default"]
  assert list(serve.structured_outputs) == ["probabilities"]
  pixels = evaluate.load_pixels(paths, config.data)
  assert pixels.shape[-1] == 1  # Greyscale images in; the backbone's three channels are inside.
  out = serve(pixels=tf.constant(pixels[:3]))["probabilities"].numpy()
  assert np.abs(out - expected[:3]).max() < PARITY


@pytest.mark.parametrize("name", ["bn_cnn", "mobilenet_v2", "vgg16"])
def test_keras_round_trip_in_keras_itself(runs, predicted, exported, name):
  """model.py beside the weights builds the network in Keras 3; Keras's load_weights reproduces
  imgcls's probabilities."""
  import keras

  config, workdir = runs[name]
  paths, expected = predicted[name]
  folder = workdir / "export" / "keras"
  code = keras_export.load_code(str(folder / "model.py"))
  assert code.CLASS_NAMES == list(exported[name, "keras"]["class_names"])
  net = code.build_model()
  net.load_weights(str(folder / "model.weights.h5"))
  got = np.asarray(net.predict(evaluate.load_pixels(paths, config.data), verbose=0))
  assert np.abs(got - expected).max() < PARITY
  assert keras.backend.backend() == "jax"  # Keras on JAX here; the exporter wrote it with the same code.
  text = (folder / "model.py").read_text()
  if name == "mobilenet_v2":
    assert "keras.applications.MobileNetV2(" in text and "get_layer('block_3_expand_relu')" in text
  if name == "vgg16":
    assert "keras.applications.VGG16(" in text and "grey_to_rgb" in text


def test_export_json_says_what_is_inside(runs, exported):
  info = exported["bn_cnn", "onnx"]
  assert info["class_names"] == ["NP", "P"] and info["binary_threshold"] == 0.4
  assert info["input"]["shape"] == [None, 64, 64, 3] and info["input"]["dtype"] == "float32"
  assert info["outputs"]["probabilities"] == [None, 2]
  assert info["baked_in"]["rescale"] == pytest.approx(1 / 255)
  assert info["versions"]["jax2onnx"] == "0.12.5" and info["versions"]["opset"] == onnx.OPSET
  info = exported["mobilenet_v2", "litert"]
  assert info["input"]["shape"] == [1, 32, 32, 3]  # LiteRT models have a fixed batch.
  assert info["baked_in"]["normalization"]["featurewise_mean"] == [0.31, 0.29, 0.33]
  assert info["baked_in"]["preprocess_input"].startswith("x / 127.5 - 1")
  assert info["binary_threshold"] is None
  assert exported["vgg16", "keras"]["baked_in"]["preprocess_input"].startswith("RGB to BGR")


def test_litert_float16_and_int8(runs, predicted, exported):
  """Smaller files (on this tiny network the flatbuffer's own size dominates; bench/export.py
  measures the pollen recipe's), both close to the float model."""
  config, workdir = runs["mobilenet_v2"]
  paths, expected = predicted["mobilenet_v2"]
  pixels = evaluate.load_pixels(paths, config.data)
  smaller_than = exported["mobilenet_v2", "litert"]["file_bytes"]
  for quantize, tolerance in (("float16", 0.02), ("int8", 0.25)):
    info = export.export(config, str(workdir), "litert", quantize=quantize)
    assert info["quantize"] == quantize and info["file_bytes"] < smaller_than
    smaller_than = info["file_bytes"]
    got = litert.runner(str(workdir / "export" / f"litert_{quantize}" / "model.tflite"))(pixels)
    assert np.abs(got - expected).max() < tolerance
    assert np.mean(got.argmax(1) == expected.argmax(1)) >= 0.8
  train_images = len(sources.find_splits(config.data, config.seed)["train"])
  assert info["calibration_images"] == train_images < export.REPRESENTATIVE_IMAGES  # All of them, here.


def test_litert_batch_size(runs, predicted, tmp_path):
  config, workdir = runs["bn_cnn"]
  paths, expected = predicted["bn_cnn"]
  output = tmp_path / "batch4.tflite"
  info = export.export(config, str(workdir), "litert", output=str(output), batch=4)
  assert info["input"]["shape"] == [4, 64, 64, 3] and (tmp_path / "export.json").exists()
  got = litert.runner(str(output))(evaluate.load_pixels(paths, config.data))  # 10 images: 3 calls, the last padded.
  assert np.abs(got - expected).max() < PARITY


def test_bad_requests_are_one_line_errors(runs):
  config, workdir = runs["bn_cnn"]
  result = run_cli("--mode=export", f"--workdir={workdir}")
  assert result.returncode == 2 and "--mode=export needs --format" in result.stderr
  result = run_cli("--mode=export", f"--workdir={workdir}", "--format=onnx", "--quantize=int8")
  assert result.returncode == 1 and "--quantize=int8 applies to litert only" in result.stderr
  assert "Traceback" not in result.stderr
  with pytest.raises(export.ExportError, match=r"must end in .weights.h5"):
    export.export(config, str(workdir), "keras", output=str(workdir / "model.h5"))
  with pytest.raises(export.ExportError, match=r"pip install -e '.\[export\]'"):
    export.require("imgcls_no_such_runtime", "--format=onnx")


def test_an_op_a_format_lacks_is_named_with_its_layer_and_line(runs, tmp_path, monkeypatch):
  """A Cholesky factorisation (a LAPACK call in XLA) inside MobileNetV2's block_1_project layer:
  ONNX and LiteRT fail naming the op, the Keras layer and the line that computes it."""
  from jax import lax

  from imgcls.models import keras_net

  apply = keras_net._apply

  def apply_with_cholesky(layer, module, inputs, convs):
    out = apply(layer, module, inputs, convs)
    if layer.name != "block_1_project":
      return out
    gram = jnp.eye(2)[None] * (1.0 + jnp.mean(out, (1, 2, 3)) ** 2)[:, None, None]
    return out * lax.linalg.cholesky(gram)[:, None, None, :1, 0]

  monkeypatch.setattr(keras_net, "_apply", apply_with_cholesky)
  config, workdir = runs["mobilenet_v2"]
  config = config.copy_and_resolve_references()
  config.model.convs = "xla"
  unusual = export.servable(export.restore.load(config, str(workdir)))
  assert export.library_calls(unusual)  # and the exports below fail on it
  for module, name in ((onnx, "model.onnx"), (litert, "model.tflite")):
    with pytest.raises(
      export.ExportError,
      match=r"cannot express an op of mobilenet_v2: .*cholesky in layer backbone/block_1_project at .*test_export.py:\d+",
    ):
      module.write(unusual, str(tmp_path / name))


def _keras_round_trip(config, workdir: Path, tree, tmp_path) -> tuple[str, dict]:
  """Exports the run to Keras; Keras's load_weights of it reproduces --mode=predict's probabilities.
  Returns model.py's text and export.json's content."""
  info = export.export(config, str(workdir), "keras")
  assert info["parity_with_predict"]["max_abs_difference"] < PARITY
  csv = tmp_path / "predictions.csv"
  evaluate.predict(config, inputs=str(tree), output=str(csv), workdir=str(workdir))
  table = pd.read_csv(csv).set_index("path")
  paths = list(table.index)
  expected = table[[c for c in table.columns if c.startswith("prob_")]].to_numpy()
  folder = workdir / "export" / "keras"
  net = keras_export.load_code(str(folder / "model.py")).build_model()
  net.load_weights(str(folder / "model.weights.h5"))
  got = np.asarray(net.predict(evaluate.load_pixels(paths, config.data), verbose=0))
  assert np.abs(got - expected).max() < PARITY
  assert expected.max(axis=1).mean() > 0.5  # Far from uniform: the comparison means something.
  return (folder / "model.py").read_text(), info


def test_keras_round_trip_of_efficientnet_with_keras_imagenet_rescaling(tree, tmp_path):
  """EfficientNet from a file named as Keras's ImageNet one has Keras's extra Rescaling after its
  Normalization; the Keras export (weights=None, no such layer) folds it into the variance."""
  os.environ.setdefault("KERAS_BACKEND", "jax")
  import keras
  import keras_reference as kr

  keras.backend.clear_session()
  reference = keras.applications.EfficientNetB0(weights=None, include_top=False, input_shape=(32, 32, 3))
  kr.randomize(reference, seed=5)
  weights = tmp_path / "efficientnetb0_notop.h5"
  kr.save_legacy_h5(reference, weights)
  config = tiny_config(
    tree, **{"model.name": "efficientnet_b0", "model.weights": str(weights), "model.pooling": "avg", "data.image_size": (32, 32)}
  )
  assert "rescaling_1" in [layer.name for layer in keras_graph(config).layers]  # Keras's ImageNet rescaling.
  workdir = save_random_run(config, tmp_path / "run", ["class_0", "class_1", "class_2"], {})
  text, info = _keras_round_trip(config, workdir, tree, tmp_path)
  assert info["baked_in"]["preprocess_input"].startswith("none: the network normalises")
  assert "keras.applications.EfficientNetB0(" in text


@pytest.mark.parametrize(
  "name,model",
  [
    ("convnext_tiny", {"model.cut_at": "convnext_tiny_downsampling_block_1"}),  # Nested Sequentials, LayerScale.
    ("mobilenet", {"model.include_top": True, "model.alpha": 0.25}),  # Its classifier is a 1x1 convolution.
  ],
)
def test_keras_round_trip_of_newer_families(tree, tmp_path, name, model):
  config = tiny_config(tree, **{"model.name": name, "data.image_size": (32, 32), **model})
  workdir = save_random_run(config, tmp_path / "run", ["class_0", "class_1", "class_2"], {})
  _keras_round_trip(config, workdir, tree, tmp_path)
