"""The tf.data backend gives grain's batches: same files, order, labels, masks, padding, pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")

from conftest import POLLEN, needs, tiny_config, write_tree  # noqa: E402

from imgcls import train  # noqa: E402
from imgcls.data import grain_pipeline, images, pipeline, sources, tf_pipeline  # noqa: E402

SIZE = (24, 32)  # (height, width): not square, so width and height are not mixed up.


def photo(height: int, width: int, seed: int) -> np.ndarray:
  """Smooth colour gradients plus noise: compresses like a photo, with chroma subsampling."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width] / max(height, width)
  pixels = np.stack([255 * x, 255 * y, 128 + 100 * np.sin(8 * x * y + seed)], -1)
  return np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)


def write_odd_files(folder: Path) -> dict[str, Path]:
  """Images in the formats and modes that need care, by name."""
  folder.mkdir(parents=True, exist_ok=True)
  rgba = np.dstack([photo(30, 40, 1), np.tile(np.linspace(0, 255, 40).astype(np.uint8), (30, 1))])
  palette = Image.fromarray(photo(30, 40, 2)).quantize(32)
  saves = {
    "large.jpg": (Image.fromarray(photo(480, 640, 3)), {"quality": 90}),  # Drafted to 1/8.
    "medium.jpg": (Image.fromarray(photo(75, 100, 4)), {}),  # Drafted to 1/2.
    "small.jpg": (Image.fromarray(photo(20, 20, 5)), {}),  # Smaller than the target.
    "grey.jpg": (Image.fromarray(photo(60, 80, 6)[..., 0]), {}),
    "cmyk.jpg": (Image.fromarray(photo(50, 70, 7)).convert("CMYK"), {}),
    "grey.png": (Image.fromarray(photo(30, 40, 8)[..., 1]), {}),
    "rgba.png": (Image.fromarray(rgba), {}),
    "la.png": (Image.fromarray(np.ascontiguousarray(rgba[..., [0, 3]])), {}),
    "palette.png": (palette, {}),
    "palette_alpha.png": (palette, {"transparency": 5}),
    "deep.png": (Image.fromarray(photo(30, 40, 9)[..., 2].astype(np.uint16) * 257), {}),
    "rgb.bmp": (Image.fromarray(photo(30, 40, 10)), {}),
    "palette.gif": (palette, {}),
    "rgb.tif": (Image.fromarray(photo(30, 40, 11)), {}),
    "rgb.webp": (Image.fromarray(photo(30, 40, 12)), {"lossless": True}),
  }
  for orientation in range(2, 9):  # Camera photos stored sideways with an EXIF orientation.
    exif = Image.Exif()
    exif[0x0112] = orientation
    saves[f"orient{orientation}.jpg"] = (Image.fromarray(photo(90, 120, 20 + orientation)), {"exif": exif})
  paths = {}
  for name, (img, options) in saves.items():
    paths[name] = folder / name
    img.save(paths[name], **options)
  return paths


@pytest.fixture(scope="module")
def odd(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
  """A 3-class tree: PNG patterns plus every odd file (in class_1)."""
  root = write_tree(tmp_path_factory.mktemp("odd") / "images", classes=3, per_class=4)
  return root, write_odd_files(root / "class_1")


def grain_train(split, spec, batch_size, seed, epoch, state=None):
  return list(grain_pipeline.iterate(grain_pipeline.train_dataset(split, spec, batch_size, seed, epoch), 2, 4, state))


def assert_same_batches(grain_batches, tf_batches, grey_levels: float = 1.0) -> float:
  """Equal keys, dtypes, shapes, labels, masks and indices; pixels within `grey_levels`. Returns the max pixel difference."""
  assert len(grain_batches) == len(tf_batches)
  worst = 0.0
  for a, b in zip(grain_batches, tf_batches):
    assert sorted(a) == sorted(b) == ["image", "index", "label", "mask"]
    for key in a:
      assert (a[key].dtype, a[key].shape) == (b[key].dtype, b[key].shape), key
    for key in ("index", "label", "mask"):
      np.testing.assert_array_equal(a[key], b[key])
    worst = max(worst, float(np.abs(a["image"] - b["image"]).max()))
  assert worst <= grey_levels
  return worst


def test_decoders_are_chosen_as_planned(odd):
  _, files = odd
  spec = images.ImageSpec(SIZE)
  code = {name: tf_pipeline.plan(tf_pipeline.header(str(p)), spec)[0] for name, p in files.items()}
  assert [tf_pipeline.RATIOS[code[n]] for n in ("large.jpg", "medium.jpg", "grey.jpg", "small.jpg")] == [8, 2, 2, 1]
  assert code["grey.png"] == code["palette.png"] == code["rgb.bmp"] == tf_pipeline.OPAQUE
  assert code["rgba.png"] == code["la.png"] == code["palette_alpha.png"] == tf_pipeline.ALPHA
  for name in ("cmyk.jpg", "deep.png", "palette.gif", "rgb.tif", "rgb.webp"):
    assert code[name] == tf_pipeline.PILLOW, name
  assert tf_pipeline.plan(tf_pipeline.header(str(files["orient6.jpg"])), spec) == (1, 6)
  # Drafting to greyscale lets libjpeg convert; without draft the JPEG is decoded whole.
  assert tf_pipeline.plan(tf_pipeline.header(str(files["large.jpg"])), images.ImageSpec(SIZE, "grayscale"))[0] == 7
  assert tf_pipeline.plan(tf_pipeline.header(str(files["large.jpg"])), images.ImageSpec(SIZE, jpeg_draft=False))[0] == 0


@pytest.mark.parametrize("color_mode", ["rgb", "grayscale"])
@pytest.mark.parametrize("draft", [True, False], ids=["draft", "no-draft"])
def test_every_file_decodes_to_pillows_pixels(odd, color_mode, draft):
  _, files = odd
  spec = images.ImageSpec(SIZE, color_mode, jpeg_draft=draft)
  for name, path in files.items():
    code, orientation = tf_pipeline.plan(tf_pipeline.header(str(path)), spec)
    ours = tf_pipeline.decode(spec, tf.constant(str(path)), code, orientation).numpy()
    expected = images.decode(str(path), color_mode, draft_size=SIZE if draft else None)
    np.testing.assert_array_equal(ours, expected, err_msg=name)


@pytest.mark.parametrize(
  "spec",
  [images.ImageSpec(SIZE), images.ImageSpec(SIZE, "grayscale", "nearest", 1 / 255), images.ImageSpec(SIZE, jpeg_draft=False)],
  ids=["rgb", "grey-nearest-rescaled", "no-draft"],
)
def test_odd_tree_gives_the_same_batches(odd, spec):
  root, _ = odd
  split = sources.find_splits(tiny_config(root, **{"data.validation_split": 0.0}).data, 0)["train"]
  for epoch in (0, 1):
    expected = grain_train(split, spec, 5, 3, epoch)
    got = list(tf_pipeline.train_batches(split, spec, 5, 3, epoch, num_threads=2, prefetch=2))
    assert_same_batches(expected, got, grey_levels=spec.rescale)


def test_resume_from_state_and_eval_padding(odd):
  root, _ = odd
  config = tiny_config(
    root, **{"data.validation_split": 0.3, "data.batch_size": 4, "data.eval_batch_size": 8, "data.image_size": SIZE}
  )
  splits = sources.find_splits(config.data, 1)
  spec = images.ImageSpec.from_config(config.data)
  full = grain_train(splits["train"], spec, 4, 1, 2)
  grain_iterator = grain_pipeline.iterate(grain_pipeline.train_dataset(splits["train"], spec, 4, 1, 2), 2, 4)
  for _ in range(3):
    next(grain_iterator)
  state = grain_iterator.get_state()
  assert state == {"next_index": 3}
  resumed = tf_pipeline.train_batches(splits["train"], spec, 4, 1, 2, state=state, num_threads=2)
  assert resumed.get_state() == state
  assert_same_batches(full[3:], list(resumed), grey_levels=spec.rescale)
  assert resumed.get_state() == {"next_index": len(full)}
  # Through the backend-agnostic entry points, as the train loop calls them.
  for backend in ("grain", "tf"):
    config.data.backend = backend
    iterator = pipeline.train_batches(splits["train"], config.data, 1, 2, {"next_index": 1})
    assert_same_batches(full[1:], list(iterator), grey_levels=spec.rescale)
    assert iterator.get_state()["next_index"] == len(full)
  config.data.backend = "grain"
  expected = list(pipeline.eval_batches(splits["val"], config.data))
  config.data.backend = "tf"
  got = list(pipeline.eval_batches(splits["val"], config.data))
  assert [int(b["mask"].sum()) for b in got] == [8] * (len(splits["val"]) // 8) + [len(splits["val"]) % 8]
  assert_same_batches(expected, got, grey_levels=spec.rescale)


@needs(POLLEN)
def test_pollen_gives_the_same_batches():
  config = tiny_config(POLLEN, **{"data.image_size": (90, 90), "data.batch_size": 32, "data.label_mode": "binary"})
  splits = sources.find_splits(config.data, 42)
  spec = images.ImageSpec((90, 90))
  expected = grain_train(splits["train"], spec, 32, 42, 1)
  got = list(tf_pipeline.train_batches(splits["train"], spec, 32, 42, 1, num_threads=2))
  assert len(got) == 18 and sorted(np.concatenate([b["index"] for b in got])) == list(range(572))
  assert_same_batches(expected, got)
  expected = list(grain_pipeline.iterate(grain_pipeline.eval_dataset(splits["val"], spec, 32), 2, 4))
  assert_same_batches(expected, list(tf_pipeline.eval_batches(splits["val"], spec, 32, 2)))


def test_training_with_the_tf_backend_matches_grain(tmp_path):
  root = write_tree(tmp_path / "images", classes=3, per_class=8)
  summaries = {}
  for backend in ("grain", "tf"):
    config = tiny_config(root, **{"data.backend": backend, "data.validation_split": 0.25, "checkpoint.async_save": False})
    summaries[backend] = train.train_and_evaluate(config, str(tmp_path / backend))
  grain_final, tf_final = summaries["grain"]["final"], summaries["tf"]["final"]
  assert tf_final["step"] == grain_final["step"] == 2 * 3
  for key, value in grain_final.items():
    assert tf_final[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
