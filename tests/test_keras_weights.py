"""Reading Keras weight files and finding Keras's ImageNet files, without network or Keras."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request

import h5py
import numpy as np
import pytest
from flax import nnx
from paths import shared

from imgcls.config import default_config
from imgcls.models import build_model, keras_weights, mobilenet_v2, nasnet, vgg


def write_legacy(path, layers: dict[str, dict[str, np.ndarray]], *, wrap: bool = False) -> None:
  """A legacy Keras h5 weights file: {layer: {stored weight name: array}} (wrap: as model.save())."""
  with h5py.File(path, "w") as f:
    root = f.create_group("model_weights") if wrap else f
    root.attrs["layer_names"] = [name.encode() for name in layers]
    for name, weights in layers.items():
      group = root.create_group(name)
      group.attrs["weight_names"] = [w.encode() for w in weights]
      for weight, value in weights.items():
        group.create_dataset(weight, data=value)


def test_weight_names_of_every_keras_generation():
  assert keras_weights.canonical_weight_name("Conv1", "Conv1/kernel:0") == "kernel"
  assert keras_weights.canonical_weight_name("dw", "dw/depthwise_kernel:0") == "kernel"
  assert keras_weights.canonical_weight_name("block1_conv1", "block1_conv1_W_1:0") == "kernel"
  assert keras_weights.canonical_weight_name("block1_conv1", "block1_conv1_b_1:0") == "bias"
  assert keras_weights.canonical_weight_name("bn", "bn/moving_variance") == "moving_variance"
  assert keras_weights.canonical_weight_name("bn", "bn_running_std_2:0") == "moving_variance"


def test_reads_keras_1_names_and_model_save_files(tmp_path):
  kernel = np.random.default_rng(0).normal(size=(3, 3, 3, 64)).astype(np.float32)
  layers = {
    "input_1": {},
    "block1_conv1": {"block1_conv1_W_1:0": kernel, "block1_conv1_b_1:0": np.ones(64, np.float32)},
  }
  write_legacy(tmp_path / "old.h5", layers, wrap=True)
  weights = keras_weights.read(tmp_path / "old.h5")
  assert list(weights) == ["block1_conv1/kernel", "block1_conv1/bias"]
  np.testing.assert_array_equal(weights["block1_conv1/kernel"], kernel)
  net = nnx.eval_shape(lambda: vgg.vgg((32, 32, 3), depth=16, include_top=False, cut_at="block1_conv1", rngs=nnx.Rngs(0)))
  keras_weights.assign(dict(net.layers.items()), weights, known_layers=net.all_weighted)
  np.testing.assert_array_equal(np.asarray(net.layers["block1_conv1"].kernel[...]), kernel)


def test_depthwise_kernels_are_transposed(tmp_path):
  kernel = np.arange(3 * 3 * 16, dtype=np.float32).reshape(3, 3, 16, 1)
  net = nnx.eval_shape(
    lambda: mobilenet_v2.mobilenet_v2(
      (32, 32, 3), alpha=0.35, include_top=False, cut_at="expanded_conv_depthwise", rngs=nnx.Rngs(0)
    )
  )
  conv = np.ones((3, 3, 3, 16), np.float32)
  bn = {f"bn_Conv1/{w}": np.ones(16, np.float32) for w in ("gamma", "beta", "moving_mean", "moving_variance")}
  weights = {"Conv1/kernel": conv, "expanded_conv_depthwise/kernel": kernel, **bn}
  keras_weights.assign(dict(net.layers.items()), weights, known_layers=net.all_weighted)
  assert net.layers["expanded_conv_depthwise"].kernel.shape == (3, 3, 1, 16)
  np.testing.assert_array_equal(np.asarray(net.layers["expanded_conv_depthwise"].kernel[...])[:, :, 0, :], kernel[:, :, :, 0])


def test_not_a_weights_file(tmp_path):
  (tmp_path / "x.h5").write_bytes(b"not hdf5")
  with pytest.raises(ValueError, match="not a readable HDF5 file"):
    keras_weights.read(tmp_path / "x.h5")
  with pytest.raises(FileNotFoundError, match="No Keras weights file"):
    keras_weights.read(tmp_path / "missing.h5")


def imagenet_config(name="vgg16", include_top=False):
  c = default_config()
  c.model.name = name
  c.model.weights = "imagenet"
  c.model.include_top = include_top
  c.data.image_size = (224, 224)
  return c


@pytest.fixture
def empty_keras_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  return tmp_path


def test_offline_imagenet_error_names_the_file_and_where_to_put_it(empty_keras_cache, monkeypatch):
  def offline(url, timeout=None):
    raise urllib.error.URLError("no network")

  monkeypatch.setattr(urllib.request, "urlopen", offline)
  with pytest.raises(FileNotFoundError) as error:
    build_model(imagenet_config("vgg19"), 17, rngs=nnx.Rngs(0))
  message = str(error.value)
  assert "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
  assert "https://storage.googleapis.com/tensorflow/keras-applications/vgg19/" in message
  assert str(empty_keras_cache / "keras_home" / "models" / "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5") in message
  assert str(empty_keras_cache / "home" / ".keras" / "models") in message
  assert not list((empty_keras_cache / "keras_home" / "models").glob("*"))  # No partial file left.


def test_unreachable_url_fails_the_same_way(empty_keras_cache, monkeypatch):
  monkeypatch.setattr("imgcls.models.inception_v3._BASE", "http://127.0.0.1:9/keras-applications/inception_v3/")
  with pytest.raises(FileNotFoundError, match="inception_v3_weights_tf_dim_ordering_tf_kernels.h5"):
    build_model(imagenet_config("inception_v3", include_top=True), 1000, rngs=nnx.Rngs(0))


def test_download_is_hash_checked(empty_keras_cache, monkeypatch):
  def fake_download(url, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not the weights")

  monkeypatch.setattr(keras_weights, "download", fake_download)
  with pytest.raises(ValueError, match="hash is not 6d6bbae143d832006294945121d1f1fc"):
    build_model(imagenet_config("vgg16"), 2, rngs=nnx.Rngs(0))


def test_cached_file_with_right_hash_is_used(tmp_path, monkeypatch):
  (tmp_path / "models").mkdir()
  data = b"weights"
  (tmp_path / "models" / "w.h5").write_bytes(data)
  monkeypatch.setenv("KERAS_HOME", str(tmp_path))
  monkeypatch.setattr(keras_weights, "download", lambda url, path: pytest.fail("downloaded"))
  md5 = hashlib.md5(data).hexdigest()
  assert keras_weights.imagenet_path("w.h5", "http://x/w.h5", md5) == tmp_path / "models" / "w.h5"
  sha256 = hashlib.sha256(data).hexdigest()
  assert keras_weights.imagenet_path("w.h5", "http://x/w.h5", sha256) == tmp_path / "models" / "w.h5"


def test_imagenet_file_names_follow_keras():
  assert mobilenet_v2.imagenet_file((90, 90, 3), include_top=False)[0] == (
    "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
  )
  assert mobilenet_v2.imagenet_file((128, 128, 3), alpha=0.35, include_top=True)[0] == (
    "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_128.h5"
  )
  with pytest.raises(ValueError, match="alpha"):
    mobilenet_v2.imagenet_file((224, 224, 3), alpha=0.6, include_top=True)
  base = "https://storage.googleapis.com/tensorflow/keras-applications/nasnet/"
  assert nasnet.imagenet_file((224, 224, 3), include_top=True) == (
    "nasnet_mobile.h5",
    base + "NASNet-mobile.h5",
    "020fb642bf7360b370c678b08e0adf61",
  )
  assert nasnet.imagenet_file((150, 170, 3), include_top=False, variant="large")[:2] == (
    "nasnet_large_no_top.h5",
    base + "NASNet-large-no-top.h5",
  )
  with pytest.raises(ValueError, match="331x331"):  # Keras's top takes its own size only.
    nasnet.imagenet_file((224, 224, 3), include_top=True, variant="large")


def test_keras_legacy_file_of_the_real_weights_reads_flat():
  weights = keras_weights.read(shared("weights", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"))
  assert len(weights) == 262
  assert weights["expanded_conv_depthwise/kernel"].shape == (3, 3, 32, 1)
  assert weights["bn_Conv1/moving_variance"].shape == (32,)
  assert weights["predictions/kernel"].shape == (1280, 1000)


def test_reads_models_nested_in_a_model_and_uniquified_variable_names(tmp_path):
  ones = np.ones((3, 3, 3, 16), np.float32)
  layers = {
    "input_1": {},
    # A model used as a layer: one group, its layers' weights named <inner layer>/<weight>.
    "mobilenetv2_0.35_96": {"Conv1/kernel:0": ones, "bn_Conv1/gamma:0": np.ones(16, np.float32)},
    # TensorFlow sessions made variable names unique (Conv1_1/...): the layer's own name counts.
    "block_1_expand": {"block_1_expand_1/kernel:0": ones},
  }
  write_legacy(tmp_path / "nested.h5", layers)
  assert list(keras_weights.read(tmp_path / "nested.h5")) == ["Conv1/kernel", "bn_Conv1/gamma", "block_1_expand/kernel"]
