"""A tree of the files real folders hold: each is converted, skipped and counted, or named in an error."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import class_pattern, tiny_config, write_image, write_tree
from PIL import Image

from imgcls import train
from imgcls.data import images, pipeline, sources

RED = (220, 30, 30)


def solid(color, size=(16, 24)) -> Image.Image:
  return Image.new("RGB", size, color)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, Path]:
  root = write_tree(tmp_path_factory.mktemp("hostile") / "data", classes=2, per_class=6)
  a, b = root / "class_0", root / "class_1"
  files = {}
  files["cmyk"] = a / "cmyk.jpg"
  solid(RED).convert("CMYK").save(files["cmyk"], quality=95)
  files["palette"] = a / "palette.png"
  pal = Image.new("P", (10, 10), 0)
  pal.putpalette([0, 0, 255] + [255, 0, 0] * 255)
  pal.paste(1, (0, 0, 5, 10))
  pal.info["transparency"] = 0  # Index 0 (blue) is transparent: the left half stays red, the right is white.
  pal.save(files["palette"], transparency=0)
  files["sixteen"] = a / "sixteen.png"
  Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(files["sixteen"])
  files["grey"] = b / "grey.jpg"
  Image.new("L", (12, 12), 100).save(files["grey"], quality=100)
  files["exif"] = b / "rotated.jpg"
  exif = Image.Exif()
  exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise when displayed.
  solid(RED, (40, 20)).save(files["exif"], exif=exif)
  files["unicode"] = b / "żółw éè 名前.png"
  write_image(files["unicode"], class_pattern(1, 77))
  files["spaces"] = a / "a file  with spaces .PNG"
  write_image(files["spaces"], class_pattern(0, 78))
  files["symlink"] = b / "link.png"
  os.symlink(files["unicode"], files["symlink"])
  (root / "class_0" / ".DS_Store").write_bytes(b"\x00\x01junk")
  (root / "class_1" / "._rotated.jpg").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork.
  (root / "class_1" / "readme.txt").write_text("notes")
  # Broken ones.
  files["truncated"] = a / "truncated.jpg"
  write_image(files["truncated"], class_pattern(0, 90, 64))
  files["truncated"].write_bytes(files["truncated"].read_bytes()[:400])
  files["zero"] = b / "zero.jpg"
  files["zero"].write_bytes(b"")
  files["not_image"] = a / "text.png"
  files["not_image"].write_text("<html>not a png</html>")
  files["bomb"] = b / "bomb.png"
  Image.new("1", (20000, 20000)).save(files["bomb"])
  files["root"] = root
  return files


BROKEN = ("truncated", "zero", "not_image", "bomb")


def test_conversions(hostile):
  cmyk = images.decode(str(hostile["cmyk"]))
  assert cmyk.shape == (24, 16, 3) and np.abs(cmyk.astype(int) - RED).max() < 12
  palette = images.decode(str(hostile["palette"]))
  assert tuple(palette[5, 2]) == (255, 0, 0) and tuple(palette[5, 8]) == (255, 255, 255)
  assert images.decode(str(hostile["sixteen"])).max() == 255
  grey = images.decode(str(hostile["grey"]))
  assert grey.shape == (12, 12, 3) and np.all(np.abs(grey.astype(int) - 100) <= 1)
  assert images.decode(str(hostile["exif"])).shape == (40, 20, 3)  # 40 wide, 20 high, turned upright.
  assert images.decode(str(hostile["unicode"])).shape == (24, 24, 3)


@pytest.mark.parametrize("name", BROKEN)
def test_each_broken_file_is_a_bad_image(hostile, name):
  with pytest.raises(images.BadImageError, match=str(hostile[name]).replace("(", r"\(")):
    images.decode(str(hostile[name]))


def test_bomb_is_refused_by_size(hostile):
  with pytest.raises(images.BadImageError, match="pixels|decompression bomb"):
    images.decode(str(hostile["bomb"]))


def test_scan_lists_broken_files_or_skips_them(hostile):
  config = tiny_config(hostile["root"], **{"data.validation_split": 0.0})
  with pytest.raises(sources.DataError) as error:
    sources.find_splits(config.data, 0)
  for name in BROKEN:
    assert str(hostile[name]) in str(error.value)
  assert "4 image file(s) cannot be decoded" in str(error.value)
  config.data.skip_bad_images = True
  split = sources.find_splits(config.data, 0)["train"]
  good = ("cmyk", "palette", "sixteen", "grey", "exif", "unicode", "spaces", "symlink")
  assert len(split) == 12 + len(good)
  for name in good:
    assert str(hostile[name]) in split.paths
  assert not any(Path(p).name.startswith(".") for p in split.paths)


def test_symlinked_folders_follow_config(hostile, tmp_path):
  root = write_tree(tmp_path / "d", classes=2, per_class=3)
  os.symlink(write_tree(tmp_path / "elsewhere", classes=1, per_class=4) / "class_0", root / "class_1" / "linked")
  config = tiny_config(root, **{"data.validation_split": 0.0})
  assert len(sources.find_splits(config.data, 0)["train"]) == 6
  config.data.follow_links = True
  assert len(sources.find_splits(config.data, 0)["train"]) == 10
  # Link loops (a folder linking to its parent or itself) and a second link to a folder add nothing.
  os.symlink("..", root / "class_0" / "up")
  os.symlink(".", root / "class_1" / "self")
  os.symlink(tmp_path / "elsewhere" / "class_0", root / "class_0" / "again")
  paths = sources.find_splits(config.data, 0)["train"].paths
  assert len(paths) == 10 and len({os.path.realpath(p) for p in paths}) == 10


def test_training_runs_through_the_hostile_tree(hostile, tmp_path):
  config = tiny_config(hostile["root"], **{"data.skip_bad_images": True, "train.epochs": 1, "data.validation_split": 0.2})
  summary = train.train_and_evaluate(config, str(tmp_path))
  # The split is Keras's over all 24 files; the broken ones are then left out of their subset.
  split = sources.find_splits(config.data, config.seed)
  assert len(split["train"]) + len(split["val"]) == 20
  assert summary["final"]["step"] == -(-len(split["train"]) // 8)
  batch = next(iter(pipeline.eval_batches(split["train"], config.data)))
  assert batch["image"].shape == (8, 16, 16, 3) and np.isfinite(batch["image"]).all()
