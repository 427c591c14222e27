"""tf.data pipelines giving the same batches as the grain ones in `grain_pipeline` (`data.backend="tf"`).

The record order comes from `order.epoch_records`, so batch k of an epoch holds the
same examples in both backends. Pixels match Pillow's: every file's header is read once with
Pillow for what TensorFlow's decoders do not know (EXIF orientation, the reduced JPEG size that
Pillow's `draft` picks, transparency), JPEGs decode with libjpeg's accurate integer DCT, alpha is
blended over white and greyscale taken with Pillow's integer arithmetic. Files TensorFlow cannot
decode the same way (GIF, TIFF, WebP, CMYK JPEG, 16-bit PNG, PNG with EXIF) are decoded by
`images.decode` inside the graph.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import tensorflow as tf
from PIL import ExifTags, Image

from imgcls.data import images
from imgcls.data.images import ImageSpec
from imgcls.data.order import epoch_records, records
from imgcls.data.sources import Split

try:  # JAX owns the accelerators; tf.data runs on the CPU.
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TensorFlow was initialised before: leave it as it is.
  pass

RATIOS = (1, 2, 4, 8)  # libjpeg's reduced sizes, as Pillow's JPEG draft picks them.
# How a file is decoded: JPEG at RATIOS[i] (+4: straight to greyscale), or one of these.
OPAQUE, ALPHA, PILLOW = 8, 9, 10


@dataclasses.dataclass(frozen=True)
class Header:
  """What the pipeline needs to know of a file before decoding it."""

  format: str | None
  mode: str
  size: tuple[int, int]  # (width, height) as stored, before EXIF orientation.
  rawmode: str
  transparency: bool
  orientation: int
  exif_elsewhere: bool  # Non-JPEG metadata that may hold an orientation.


@functools.lru_cache(maxsize=1 << 20)
def _header(path: str, mtime_ns: int) -> Header:
  del mtime_ns  # Part of the cache key only.
  try:
    return _read_header(path)
  except (OSError, ValueError, SyntaxError):  # Left to `images.decode` to report.
    return Header(None, "", (0, 0), "", False, 1, False)


def _read_header(path: str) -> Header:
  with Image.open(path) as img:
    tile = img.tile[0] if img.tile else None
    args = tile[3] if tile else None
    rawmode = args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args else "")
    orientation, elsewhere = 1, False
    if img.format in ("JPEG", "MPO"):  # Their EXIF and XMP are read with the header.
      value = img.getexif().get(ExifTags.Base.Orientation, 1)
      orientation = value if isinstance(value, int) and 1 <= value <= 8 else 1  # Pillow ignores others.
    elif img.format == "PNG":  # Chunks after the pixels are only read by decoding.
      with open(path, "rb") as f:
        data = f.read()
      elsewhere = any(m in data for m in (b"eXIf", b"exif", b"Orientation"))
    return Header(img.format, img.mode, tuple(img.size), str(rawmode), "transparency" in img.info, orientation, elsewhere)


def header(path: str) -> Header:
  return _header(path, os.stat(path).st_mtime_ns)


def plan(h: Header, spec: ImageSpec) -> tuple[int, int]:
  """(decoder code, EXIF orientation to apply) of a file, so it decodes as `images.decode` does."""
  grey = spec.color_mode == "grayscale"
  if h.format in ("JPEG", "MPO") and h.mode in ("RGB", "L"):
    drafted = h.format == "JPEG" and spec.jpeg_draft  # Pillow drafts JPEGs only, not MPOs.
    ratio = images.draft_ratio(h.size, spec.image_size) if drafted else 1
    # Drafting to "L" makes libjpeg output greyscale itself (its luma, not Pillow's).
    native_grey = grey and (drafted or h.mode == "L")
    return RATIOS.index(ratio) + (4 if native_grey else 0), h.orientation
  if h.format == "PNG" and not h.exif_elsewhere and ";16" not in h.rawmode:
    if h.mode in ("RGBA", "LA") or (h.mode == "P" and h.transparency):
      return ALPHA, 1
    if h.mode in ("RGB", "L", "P", "1") and not h.transparency:
      return OPAQUE, 1
  if h.format == "BMP" and (h.mode, h.rawmode) in (("RGB", "BGR"), ("L", "L")):
    return OPAQUE, 1
  return PILLOW, 1  # Pillow applies the orientation itself.


def plans(paths: list[str], spec: ImageSpec, num_threads: int = 8) -> tuple[np.ndarray, np.ndarray]:
  """Decoder codes and orientations of `paths` (headers read in parallel, cached per file)."""
  with ThreadPoolExecutor(max(1, num_threads)) as pool:
    headers = list(pool.map(header, paths))
  pairs = [plan(h, spec) for h in headers]
  codes = np.asarray([c for c, _ in pairs], np.int32).reshape(-1)
  orientations = np.asarray([o for _, o in pairs], np.int32).reshape(-1)
  return codes, orientations


# ---------------------------------------------------------------------------------------------
# Decoding in the graph.


def _shift(x: tf.Tensor, bits: int) -> tf.Tensor:
  return tf.bitwise.right_shift(x, bits)


def over_white(rgba: tf.Tensor) -> tf.Tensor:
  """RGBA uint8 blended over opaque white, as Pillow's `alpha_composite` rounds it."""
  x = tf.cast(rgba, tf.int32)
  rgb, alpha = x[..., :3], x[..., 3:]
  t = 128 * (rgb * alpha + 255 * (255 - alpha)) + (128 << 7)
  return tf.cast(_shift(_shift(_shift(t, 8) + t, 8), 7), tf.uint8)


def luma(rgb: tf.Tensor) -> tf.Tensor:
  """RGB uint8 to one channel with Pillow's integer ITU-R 601 weights."""
  x = tf.cast(rgb, tf.int32)
  y = x[..., 0:1] * 19595 + x[..., 1:2] * 38470 + x[..., 2:3] * 7471 + 0x8000
  return tf.cast(_shift(y, 16), tf.uint8)


def orient(pixels: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
  """Applies an EXIF orientation (1-8) as Pillow's `exif_transpose` does.

  Orientation 5-8 transpose first; then 2, 3, 6, 7 flip left-right and 3, 4, 7, 8 upside down.
  """
  transpose = orientation >= 5
  perm = tf.where(transpose, tf.constant([1, 0, 2]), tf.constant([0, 1, 2]))
  flip_lr = tf.reduce_any(tf.equal(orientation, [2, 3, 6, 7]))
  flip_ud = tf.reduce_any(tf.equal(orientation, [3, 4, 7, 8]))
  axes = tf.boolean_mask(tf.constant([0, 1]), tf.stack([flip_ud, flip_lr]))
  return tf.reverse(tf.transpose(pixels, perm), axes)


def _decoders(spec: ImageSpec, path: tf.Tensor) -> list[Any]:
  grey = spec.color_mode == "grayscale"
  to_mode = luma if grey else (lambda x: x)
  draft_size = spec.image_size if spec.jpeg_draft else None

  def jpeg(ratio: int, channels: int):
    def decode():
      pixels = tf.io.decode_jpeg(tf.io.read_file(path), channels=channels, ratio=ratio, dct_method="INTEGER_ACCURATE")
      return pixels if channels == 1 else to_mode(pixels)

    return decode

  def with_pillow():
    decode = lambda p: images.decode(np.asarray(p).item().decode(), spec.color_mode, draft_size)  # noqa: E731
    return tf.numpy_function(decode, [path], tf.uint8, stateful=False)

  def image(channels: int):
    return tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)

  return [
    *(jpeg(r, 3) for r in RATIOS),
    *(jpeg(r, 1 if grey else 3) for r in RATIOS),  # Codes 4-7 only occur for greyscale.
    lambda: to_mode(image(3)),  # OPAQUE
    lambda: to_mode(over_white(image(4))),  # ALPHA
    with_pillow,  # PILLOW
  ]


def decode(
  spec: ImageSpec, path: tf.Tensor | str, code: tf.Tensor | int, orientation: tf.Tensor | int, codes: tuple[int, ...] = ()
) -> tf.Tensor:
  """Pixels of one file as `images.decode` gives them (HxWxC uint8), following its `plan`.

  `codes` are the decoder codes that occur, in order (empty: all); `code` indexes them.
  """
  decoders = _decoders(spec, tf.convert_to_tensor(path))
  if codes:
    decoders = [decoders[c] for c in codes]
  if len(decoders) == 1:  # Most folders need one decoder: no branching in the graph.
    pixels = decoders[0]()
  else:
    pixels = tf.switch_case(tf.convert_to_tensor(code, tf.int32), decoders)
  return orient(pixels, tf.convert_to_tensor(orientation, tf.int32))


def load(spec: ImageSpec, codes: tuple[int, ...], record: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """One record {path, label, index, code, orientation} to an example like grain's."""
  pixels = decode(spec, record["path"], record["code"], record["orientation"], codes)
  pixels = tf.ensure_shape(tf.cast(pixels, tf.float32), [None, None, spec.channels])
  method = "nearest" if spec.interpolation == "nearest" else "bilinear"
  image = tf.image.resize(pixels, spec.image_size, method=method, antialias=False)
  if spec.rescale != 1.0:
    image = image * tf.constant(spec.rescale, tf.float32)
  return {"image": image, "label": record["label"], "mask": tf.constant(1.0, tf.float32), "index": record["index"]}


# ---------------------------------------------------------------------------------------------
# Datasets and iterators.


class BatchIterator:
  """Batches as dicts of numpy arrays; `get_state()` is `{"next_index": batches read}`, like grain's."""

  def __init__(self, dataset: tf.data.Dataset, next_index: int = 0):
    self._batches = dataset.as_numpy_iterator()
    self._next_index = next_index

  def __iter__(self) -> BatchIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._batches)
    self._next_index += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    return {"next_index": self._next_index}


def dataset(
  examples: list[tuple[str, int, int]], spec: ImageSpec, batch_size: int, num_threads: int, prefetch: int, pad: bool = False
) -> tf.data.Dataset:
  """Batches of `examples` (path, label, index) in their order; `pad` fills the last one with mask 0."""
  paths = [e[0] for e in examples]
  codes, orientations = plans(paths, spec, num_threads)
  used, compact = np.unique(codes, return_inverse=True)
  ds = tf.data.Dataset.from_tensor_slices(
    {
      "path": tf.constant(paths, tf.string, shape=[len(paths)]),
      "label": np.asarray([e[1] for e in examples], np.int32).reshape(-1),
      "index": np.asarray([e[2] for e in examples], np.int32).reshape(-1),
      "code": compact.astype(np.int32).reshape(-1),
      "orientation": orientations,
    }
  )
  parallel = num_threads if num_threads > 0 else tf.data.AUTOTUNE
  load_fn = functools.partial(load, spec, tuple(int(c) for c in used) or (0,))
  ds = ds.map(load_fn, num_parallel_calls=parallel, deterministic=True)
  ds = ds.batch(batch_size, drop_remainder=False)
  if pad:
    ds = ds.map(functools.partial(_pad, batch_size))
  if prefetch > 0:
    ds = ds.prefetch(prefetch)
  options = tf.data.Options()
  options.deterministic = True
  if num_threads > 0:
    options.threading.private_threadpool_size = num_threads
  return ds.with_options(options)


def _pad(batch_size: int, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  missing = batch_size - tf.shape(batch["mask"])[0]
  padded = {}
  for key, value in batch.items():
    widths = [[0, missing]] + [[0, 0]] * (len(value.shape) - 1)
    padded[key] = tf.pad(value, widths)
  return padded


def train_batches(
  split: Split,
  spec: ImageSpec,
  batch_size: int,
  seed: int,
  epoch: int,
  shuffle: bool = True,
  num_threads: int = 4,
  prefetch: int = 8,
  state: dict[str, Any] | None = None,
) -> BatchIterator:
  """Epoch `epoch` of training batches in grain's order, from batch `state["next_index"]` on."""
  ordered = epoch_records(split, seed, epoch, shuffle)
  start = int((state or {}).get("next_index", 0))
  return BatchIterator(dataset(ordered[start * batch_size :], spec, batch_size, num_threads, prefetch), start)


def eval_batches(
  split: Split, spec: ImageSpec, batch_size: int, num_threads: int = 4, prefetch: int = 8
) -> Iterator[dict[str, np.ndarray]]:
  """All of `split` in file order as batches padded to `batch_size` (mask 0 on padding)."""
  return BatchIterator(dataset(records(split), spec, batch_size, num_threads, prefetch, pad=True))
