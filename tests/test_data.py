"""Finding, splitting, decoding and batching images: Keras semantics and bad input."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FLOWERS, POLLEN, REPO, class_pattern, needs, tiny_config, write_image, write_tree
from keras.src.utils import dataset_utils
from PIL import Image

from imgcls.data import grain_pipeline, images, pipeline, sources

KERAS_FORMATS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")


def keras_subsets(root: Path, split: float, seed: int) -> tuple[list[str], list[str]]:
  paths, labels, _ = dataset_utils.index_directory(str(root), "inferred", formats=KERAS_FORMATS, shuffle=True, seed=seed)
  train, _ = dataset_utils.get_training_or_validation_split(paths, labels, split, "training")
  val, _ = dataset_utils.get_training_or_validation_split(paths, labels, split, "validation")
  return train, val


@needs(POLLEN)
@pytest.mark.parametrize("seed", [42, 7])
def test_split_matches_keras_on_pollen(seed):
  config = tiny_config(POLLEN, **{"data.validation_split": 0.2, "data.label_mode": "binary"})
  splits = sources.find_splits(config.data, seed)
  keras_train, keras_val = keras_subsets(POLLEN, 0.2, seed)
  assert splits["train"].paths == keras_train
  assert splits["val"].paths == keras_val
  assert (len(splits["train"]), len(splits["val"])) == (572, 142)
  assert splits["train"].class_names == ["NP", "P"]
  # Labels follow the folder each file is in.
  for path, label in zip(splits["val"].paths, splits["val"].labels):
    assert Path(path).parent.name == ["NP", "P"][label]


def test_split_matches_keras_on_nested_tree(tmp_path):
  root = write_tree(tmp_path / "t", classes=3, per_class=7)
  write_image(root / "class_1" / "sub" / "deep.png", class_pattern(1, 99))
  for seed in (0, 1, 123):
    splits = sources.find_splits(tiny_config(root, **{"data.validation_split": 0.3}).data, seed)
    keras_train, keras_val = keras_subsets(root, 0.3, seed)
    assert splits["train"].paths == keras_train and splits["val"].paths == keras_val


def test_per_class_split_matches_keras_image_data_generator(tmp_path):
  """split_order="per_class": the files flow_from_directory(subset=...) gives with
  ImageDataGenerator(validation_split=...), for classes of different sizes and a nested folder."""
  from keras.src.legacy.preprocessing.image import ImageDataGenerator

  root = tmp_path / "t"
  for label, n in enumerate((7, 11, 4)):
    for i in range(n):
      write_image(root / f"class_{label}" / f"img_{i:03d}.png", class_pattern(label, i))
  write_image(root / "class_1" / "sub" / "deep.png", class_pattern(1, 99))
  for fraction in (0.2, 0.5):
    config = tiny_config(root, **{"data.validation_split": fraction, "data.split_order": "per_class"})
    splits = sources.find_splits(config.data, 0)
    generator = ImageDataGenerator(validation_split=fraction)
    for subset, split in (("training", "train"), ("validation", "val")):
      flow = generator.flow_from_directory(str(root), target_size=(8, 8), shuffle=False, subset=subset)
      assert [os.path.relpath(p, root) for p in splits[split].paths] == flow.filenames
      assert list(splits[split].labels) == list(flow.classes)


@needs(FLOWERS)
def test_train_test_folders_on_flowers17():
  config = tiny_config(FLOWERS, **{"data.validation_split": 0.0})
  splits = sources.find_splits(config.data, 0)
  assert len(splits["train"]) == 17 * 64 and len(splits["test"]) == 17 * 16
  assert splits["val"].paths == splits["test"].paths  # No val/ folder: validate on test/.
  assert splits["train"].class_names[:3] == ["bluebell", "buttercup", "colts_foot"]
  assert all(np.bincount(splits["test"].labels) == 16)


def test_train_val_test_folders_and_class_names(tmp_path):
  for split, n in (("train", 6), ("val", 2), ("test", 3)):
    write_tree(tmp_path / split, classes=3, per_class=n)
  splits = sources.find_splits(tiny_config(tmp_path).data, 0)
  assert [len(splits[s]) for s in ("train", "val", "test")] == [18, 6, 9]
  # Choosing classes keeps their given order as label order.
  config = tiny_config(tmp_path, **{"data.class_names": ("class_2", "class_0")})
  splits = sources.find_splits(config.data, 0)
  assert splits["train"].class_names == ["class_2", "class_0"] and len(splits["train"]) == 12
  assert all(Path(p).parent.name == ["class_2", "class_0"][l] for p, l in zip(splits["train"].paths, splits["train"].labels))


def test_train_and_val_with_different_classes_fail(tmp_path):
  write_tree(tmp_path / "train", classes=3, per_class=2)
  write_tree(tmp_path / "val", classes=2, per_class=2)
  with pytest.raises(sources.DataError, match="val subset's classes"):
    sources.find_splits(tiny_config(tmp_path).data, 0)


@pytest.mark.parametrize(
  "make, message",
  [
    (lambda root: None, "does not exist"),
    (lambda root: root.mkdir(), "no class subfolders"),
    (lambda root: write_image(root / "loose.png", class_pattern(0, 0)), "loose images"),
    (
      lambda root: (write_tree(root, classes=2, per_class=2), (root / "empty_class").mkdir()),
      r"\['empty_class'\].*hold no images",
    ),
    (lambda root: write_tree(root, classes=1, per_class=3), "single class"),
  ],
  ids=["missing", "empty", "loose-files", "empty-class", "single-class"],
)
def test_bad_folders_fail_clearly(tmp_path, make, message):
  root = tmp_path / "data"
  make(root)
  with pytest.raises(sources.DataError, match=message):
    sources.find_splits(tiny_config(root).data, 0)


def test_binary_needs_two_classes(tree, tmp_path):
  with pytest.raises(sources.DataError, match="exactly 2 classes"):
    sources.find_splits(tiny_config(tree, **{"data.label_mode": "binary"}).data, 0)
  # Said before any image is decoded: a damaged file does not get reported first.
  copy = tmp_path / "three"
  shutil.copytree(tree, copy)
  (copy / sorted(os.listdir(copy))[0] / "damaged.jpg").write_bytes(b"not a jpeg")
  with pytest.raises(sources.DataError, match="exactly 2 classes"):
    sources.find_splits(tiny_config(copy, **{"data.label_mode": "binary"}).data, 0)


def test_non_images_skipped_and_reported_once(tmp_path, caplog):
  root = write_tree(tmp_path / "d", classes=2, per_class=4)
  (root / "class_0" / "notes.txt").write_text("not an image")
  (root / "class_1" / "labels.csv").write_text("a,b")
  (root / "class_1" / ".DS_Store").write_bytes(b"\0\1")
  (root / "class_1" / "._img_000.png").write_bytes(b"\0\1")
  with caplog.at_level(logging.WARNING):
    splits = sources.find_splits(tiny_config(root, **{"data.validation_split": 0.0}).data, 0)
  assert len(splits["train"]) == 8
  warnings = [r.getMessage() for r in caplog.records if "non-image" in r.getMessage()]
  assert len(warnings) == 1 and "Skipped 2 non-image file(s)" in warnings[0]
  assert "notes.txt" in warnings[0] and ".DS_Store" not in warnings[0]


def _add_bad_images(root: Path) -> list[Path]:
  good = root / "class_0" / "img_000.png"
  truncated = root / "class_0" / "truncated.jpg"
  write_image(truncated, class_pattern(0, 50, 64))
  truncated.write_bytes(truncated.read_bytes()[:300])
  fake = root / "class_1" / "fake.png"
  fake.write_text("this is not a png")
  empty = root / "class_2" / "empty.jpg"
  empty.write_bytes(b"")
  assert good.exists()
  return [truncated, fake, empty]


def test_corrupt_images_fail_listing_them_or_are_skipped(tmp_path):
  root = write_tree(tmp_path / "d", classes=3, per_class=4)
  bad = _add_bad_images(root)
  config = tiny_config(root, **{"data.validation_split": 0.25})
  with pytest.raises(sources.DataError) as error:
    sources.find_splits(config.data, 0)
  assert "3 image file(s) cannot be decoded" in str(error.value)
  for path in bad:
    assert str(path) in str(error.value)
  config.data.skip_bad_images = True
  splits = sources.find_splits(config.data, 0)
  kept = splits["train"].paths + splits["val"].paths
  assert len(kept) == 12 and not any(str(p) in kept for p in bad)
  # And the pipeline then reads every remaining image.
  batches = list(grain_pipeline.iterate(grain_pipeline.train_dataset(splits["train"], images.ImageSpec((8, 8)), 4, 0, 0), 2, 2))
  assert sum(len(b["label"]) for b in batches) == len(splits["train"])


def test_resize_matches_keras_bilinear():
  import keras

  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (37, 53, 3)).astype(np.uint8)
  for size in ((90, 90), (16, 64), (37, 53), (100, 20)):
    ours = images.resize(pixels, size)
    ref = np.asarray(keras.ops.image.resize(pixels.astype(np.float32)[None], size, interpolation="bilinear", antialias=False))[0]
    np.testing.assert_allclose(ours, ref, atol=2e-3)


def test_decode_modes(tmp_path):
  rgb = class_pattern(1, 0, 20)
  path = write_image(tmp_path / "x.png", rgb)
  assert images.decode(str(path)).shape == (20, 20, 3)
  grey = images.decode(str(path), "grayscale")
  assert grey.shape == (20, 20, 1) and grey.dtype == np.uint8
  np.testing.assert_array_equal(images.decode(str(path)), rgb)


def test_batches_have_the_configured_shape_dtype_and_scale(binary_tree):
  config = tiny_config(binary_tree, **{"data.image_size": (12, 20), "data.label_mode": "binary", "data.color_mode": "grayscale"})
  splits = sources.find_splits(config.data, 3)
  batch = next(
    grain_pipeline.iterate(
      grain_pipeline.train_dataset(splits["train"], images.ImageSpec.from_config(config.data), 8, 3, 0), 2, 2
    )
  )
  assert batch["image"].shape == (8, 12, 20, 1) and batch["image"].dtype == np.float32
  assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0 and batch["image"].max() > 0.5
  assert batch["label"].dtype == np.int32 and set(batch["label"]) <= {0, 1}
  assert np.all(batch["mask"] == 1)


def _epoch_indices(split, epoch, seed=5, state=None):
  ds = grain_pipeline.train_dataset(split, images.ImageSpec((8, 8)), 5, seed, epoch)
  return [b["index"].tolist() for b in grain_pipeline.iterate(ds, 2, 4, state)]


def test_shuffle_is_deterministic_per_seed_and_epoch_and_resumable(tree):
  split = sources.find_splits(tiny_config(tree, **{"data.validation_split": 0.0}).data, 0)["train"]
  epoch0, epoch1 = _epoch_indices(split, 0), _epoch_indices(split, 1)
  assert epoch0 == _epoch_indices(split, 0)
  assert epoch0 != epoch1
  assert sorted(sum(epoch0, [])) == list(range(len(split)))  # Every example once per epoch.
  assert [len(b) for b in epoch0] == [5] * 7 + [1]  # The last partial batch is kept.
  assert _epoch_indices(split, 0, seed=6) != epoch0
  # Resuming from an iterator state yields exactly the remaining batches.
  ds = grain_pipeline.train_dataset(split, images.ImageSpec((8, 8)), 5, 5, 1)
  iterator = grain_pipeline.iterate(ds, 2, 4)
  for _ in range(3):
    next(iterator)
  assert _epoch_indices(split, 1, state=iterator.get_state()) == epoch1[3:]


def test_eval_batches_are_padded_and_masked(tree):
  config = tiny_config(tree, **{"data.validation_split": 0.0, "data.eval_batch_size": 10})
  split = sources.find_splits(config.data, 0)["train"]
  batches = list(pipeline.eval_batches(split, config.data))
  assert [b["image"].shape[0] for b in batches] == [10, 10, 10, 10]
  assert [int(b["mask"].sum()) for b in batches] == [10, 10, 10, 6]
  order = np.concatenate([b["index"][b["mask"] > 0] for b in batches])
  np.testing.assert_array_equal(order, np.arange(36))


def test_digits_builtin_is_a_folder_tree(imgcls_cache):
  config = tiny_config("builtin:digits", **{"data.color_mode": "grayscale"})
  splits = sources.find_splits(config.data, 0)
  assert splits["train"].class_names == [str(d) for d in range(10)]
  assert len(splits["train"]) + len(splits["val"]) == 1797
  root = Path(imgcls_cache) / "digits"
  assert len(list(root.glob("*/*.png"))) == 1797
  assert images.decode(splits["train"].paths[0], "grayscale").shape == (8, 8, 1)


def test_host_shards_are_disjoint_even_and_cover_the_epoch(tree):
  split = sources.find_splits(tiny_config(tree, **{"data.validation_split": 0.0}).data, 0)["train"]
  spec = images.ImageSpec((8, 8))
  shards = []
  for index in range(3):
    ds = grain_pipeline.train_dataset(split, spec, 4, 9, 2, shard=(index, 3))
    shards.append([i for b in (ds[k] for k in range(len(ds))) for i in b["index"].tolist()])
  assert [len(s) for s in shards] == [12, 12, 12]
  assert sorted(sum(shards, [])) == list(range(36))
  whole = _epoch_indices(split, 2, seed=9)
  assert sum(whole, []) != shards[0]


@pytest.mark.parametrize("processes", [2, 4])
def test_host_eval_shards_stack_into_the_whole_batches(tree, processes):
  split = sources.find_splits(tiny_config(tree, **{"data.validation_split": 0.0}).data, 0)["train"]  # 36 images
  spec = images.ImageSpec((8, 8))
  whole = grain_pipeline.eval_dataset(split, spec, 16)
  shards = [grain_pipeline.eval_dataset(split, spec, 16, shard=(index, processes)) for index in range(processes)]
  assert len(whole) == 3 and all(len(s) == 3 for s in shards)
  for number in range(3):
    parts = [s[number] for s in shards]
    assert all(len(p["mask"]) == 16 // processes for p in parts)
    for key in ("image", "label", "mask", "index"):
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[number][key])
  with pytest.raises(ValueError, match="does not split over 3"):
    grain_pipeline.eval_dataset(split, spec, 16, shard=(0, 3))


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_pixel_cache_gives_the_same_batches(tree, tmp_path, mode):
  config = tiny_config(tree, **{"data.validation_split": 0.0, "data.cache": mode, "data.cache_dir": str(tmp_path)})
  split = sources.find_splits(config.data, 0)["train"]
  plain = list(pipeline.eval_batches(split, tiny_config(tree, **{"data.validation_split": 0.0}).data))
  first = list(pipeline.eval_batches(split, config.data))
  again = list(pipeline.eval_batches(split, config.data))
  for a, b, c in zip(plain, first, again):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["image"], c["image"])
  if mode == "disk":
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 2 and files[0].endswith(".npy")
    from imgcls.data import pixel_cache

    cached = pixel_cache.PixelCache(len(split), (16, 16, 3), str(tmp_path / files[0]))  # As a later run opens it.
    assert cached.fraction_filled() == 1.0
    np.testing.assert_array_equal(cached.get(0) * np.float32(1 / 255), plain[0]["image"][0])


def test_pil_resize_matches_keras_load_img(tmp_path):
  import keras

  path = write_image(tmp_path / "x.png", np.random.default_rng(0).integers(0, 256, (61, 47, 3)).astype(np.uint8))
  for interpolation in ("bilinear", "nearest", "bicubic"):
    ours = images.load_image(str(path), images.ImageSpec((20, 30), interpolation=f"pil_{interpolation}", jpeg_draft=False))
    theirs = keras.utils.img_to_array(keras.utils.load_img(str(path), target_size=(20, 30), interpolation=interpolation))
    np.testing.assert_array_equal(ours, theirs)


def test_grain_backend_runs_without_tensorflow(tree, monkeypatch):
  import imgcls.data

  code = (
    "import sys; from imgcls import train; from imgcls.data import pipeline, sources; from conftest import tiny_config; "
    f"c = tiny_config({str(tree)!r}); s = sources.find_splits(c.data, 0)['train']; "
    "assert sum(len(b['label']) for b in pipeline.train_batches(s, c.data, 0, 0)) == len(s); "
    "assert 'tensorflow' not in sys.modules, 'grain imported tensorflow'"
  )
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
  result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  # Asking for the tf backend without TensorFlow says how to install it.
  monkeypatch.setitem(sys.modules, "tensorflow", None)
  monkeypatch.delitem(sys.modules, "imgcls.data.tf_pipeline", raising=False)
  monkeypatch.delattr(imgcls.data, "tf_pipeline", raising=False)
  config = tiny_config(tree, **{"data.backend": "tf"})
  split = sources.find_splits(config.data, 0)["train"]
  with pytest.raises(ModuleNotFoundError, match=r"pip install 'imgcls\[tf\]'"):
    pipeline.eval_batches(split, config.data)


@needs(FLOWERS)
@pytest.mark.parametrize("color_mode", ["rgb", "grayscale"])
def test_fast_jpeg_decoding_gives_pillows_pixels(color_mode):
  """simplejpeg (GIL released) decodes JPEGs bit for bit as Pillow's draft does, at every scale."""
  paths = sorted(POLLEN.glob("*/*.jp*g"))[:10] + sorted(FLOWERS.glob("train/*/*.jp*g"))[::60]
  for path in paths:
    for size in ((224, 224), (90, 90), (40, 40), (16, 16)):
      fast = images._decode_jpeg(str(path), color_mode, size)
      assert fast is not None, path
      np.testing.assert_array_equal(fast, images.decode_with_pillow(str(path), color_mode, size), err_msg=f"{path} {size}")


def test_jpegs_pillow_must_read_are_left_to_it(tmp_path):
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 255, (64, 48, 3), np.uint8)
  Image.fromarray(pixels).convert("CMYK").save(tmp_path / "cmyk.jpg")
  rotated = Image.fromarray(pixels)
  exif = rotated.getexif()
  exif[0x0112] = 6
  rotated.save(tmp_path / "rotated.jpg", exif=exif)
  (tmp_path / "truncated.jpg").write_bytes((tmp_path / "rotated.jpg").read_bytes()[:300])
  for name in ("cmyk.jpg", "rotated.jpg", "truncated.jpg"):
    assert images._decode_jpeg(str(tmp_path / name), "rgb", (16, 16)) is None, name
  assert images.decode(str(tmp_path / "rotated.jpg"), draft_size=(16, 16)).shape == (24, 32, 3)  # Halved and turned upright.


def test_cv2_bicubic_and_full_size_jpeg_decoding(tmp_path):
  """interpolation="cv2_bicubic" is cv2.resize(cv2.imread(path), INTER_CUBIC) in RGB, and
  data.jpeg_draft=False decodes JPEGs at full size before resizing."""
  import cv2

  rng = np.random.default_rng(0)
  smooth = cv2.resize(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), (320, 240), interpolation=cv2.INTER_CUBIC)
  for label in range(2):
    write_image(tmp_path / "t" / f"c{label}" / "big.jpg", np.roll(smooth, 40 * label, axis=1))
  paths = sorted(str(p) for p in (tmp_path / "t").glob("*/big.jpg"))
  for path in paths:
    expected = cv2.resize(cv2.imread(path), (40, 30), interpolation=cv2.INTER_CUBIC)[..., ::-1]
    np.testing.assert_array_equal(
      images.load_image(path, images.ImageSpec((30, 40), "rgb", "cv2_bicubic", jpeg_draft=False)), expected
    )
  split = sources.Split(paths, np.array([0, 1]), ["c0", "c1"], "test")
  for draft in (True, False):
    config = tiny_config(tmp_path / "t", **{"data.image_size": (30, 40), "data.rescale": 1.0, "data.jpeg_draft": draft})
    batch = next(iter(pipeline.eval_batches(split, config.data)))["image"][:2]
    full = np.stack([images.resize(images.decode(p), (30, 40)) for p in paths])
    assert np.array_equal(batch, full) != draft  # The draft decodes at 1/4 size (80x60): other pixels.
