"""Reading one image: decode, orient, convert colour, resize. Plain numpy and Pillow."""

from __future__ import annotations

import functools
import os
import warnings

import numpy as np
from PIL import ExifTags, Image, ImageOps

# Extensions read as images (those Keras's image_dataset_from_directory lists, plus tiff/webp).
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
# Refuse images above this many pixels (decompression bombs); Pillow's own limit is 89M.
MAX_PIXELS = 178_956_970
_TRANSPOSED = (2, 3, 4, 5, 6, 7, 8)  # EXIF orientations that exif_transpose acts on.


class BadImageError(ValueError):
  """An image file that cannot be decoded."""


def is_image_file(name: str) -> bool:
  base = os.path.basename(name)
  return base.lower().endswith(IMAGE_EXTENSIONS) and not base.startswith(".")


def decode(path: str, color_mode: str = "rgb", draft_size: tuple[int, int] | None = None) -> np.ndarray:
  """Decoded pixels, HxWxC uint8 (C=3 for rgb, 1 for grayscale), EXIF orientation applied.

  `draft_size` (height, width) lets JPEG decoding scale down by a power of two while staying at
  least that large, which is much faster for big photos.
  """
  if path.startswith("tfds:"):
    from imgcls.data import tfds_source

    pixels = np.asarray(_convert(Image.fromarray(np.squeeze(tfds_source.read(path))), color_mode))
    return pixels[:, :, None] if pixels.ndim == 2 else pixels
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(path) as img:
        if img.width * img.height > MAX_PIXELS:
          raise BadImageError(f"{path}: {img.width}x{img.height} pixels is over the {MAX_PIXELS} limit")
        if draft_size is not None and img.format == "JPEG":
          img.draft("RGB" if color_mode == "rgb" else "L", (draft_size[1], draft_size[0]))
        img.load()
        if img.getexif().get(ExifTags.Base.Orientation, 1) in _TRANSPOSED:  # Else exif_transpose only copies.
          img = ImageOps.exif_transpose(img)
        img = _convert(img, color_mode)
        pixels = np.asarray(img)
  except BadImageError:
    raise
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise BadImageError(f"{path}: {e}") from e
  if pixels.ndim == 2:
    pixels = pixels[:, :, None]
  return pixels


def _convert(img: Image.Image, color_mode: str) -> Image.Image:
  if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit: scale to 8 bits before converting.
    arr = np.asarray(img, dtype=np.float64)
    scale = 255.0 / 65535.0 if arr.max() > 255 else 1.0
    img = Image.fromarray(np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8), mode="L")
  if img.mode in ("P", "PA", "LA", "RGBA") and ("transparency" in img.info or img.mode.endswith("A")):
    img = img.convert("RGBA")
    background = Image.new("RGBA", img.size, (255, 255, 255, 255))
    img = Image.alpha_composite(background, img)
  target = "RGB" if color_mode == "rgb" else "L"
  return img.convert(target) if img.mode != target else img


_PIL_FILTERS = {"pil_bilinear": Image.BILINEAR, "pil_nearest": Image.NEAREST, "pil_bicubic": Image.BICUBIC}


def resize(pixels: np.ndarray, size: tuple[int, int], interpolation: str = "bilinear") -> np.ndarray:
  """Resize HxWxC to `size` (height, width) as float32.

  "bilinear" and "nearest" are `tf.image.resize` (half-pixel centres, no antialiasing), as in
  Keras's `image_dataset_from_directory`; "pil_bilinear", "pil_nearest", "pil_bicubic" are
  Pillow's (which averages when shrinking), as in `keras.utils.load_img` and Keras's
  ImageDataGenerator.flow_from_directory.
  """
  height, width = pixels.shape[:2]
  out_h, out_w = size
  if (height, width) == (out_h, out_w):
    return pixels.astype(np.float32)
  if interpolation in _PIL_FILTERS:  # As keras.utils.load_img(target_size=..., interpolation=...).
    image = Image.fromarray(np.squeeze(pixels.astype(np.uint8), axis=-1) if pixels.shape[-1] == 1 else pixels.astype(np.uint8))
    out = np.asarray(image.resize((out_w, out_h), _PIL_FILTERS[interpolation]), np.float32)
    return out[:, :, None] if out.ndim == 2 else out
  if interpolation == "nearest":
    rows = np.minimum(np.floor((np.arange(out_h) + 0.5) * height / out_h).astype(np.int64), height - 1)
    cols = np.minimum(np.floor((np.arange(out_w) + 0.5) * width / out_w).astype(np.int64), width - 1)
    return pixels[rows][:, cols].astype(np.float32)
  if interpolation != "bilinear":
    raise ValueError(f"Unknown interpolation {interpolation!r}: use bilinear or nearest.")
  # Rows then columns, each a * (1 - w) + b * w in float32, on (rows, width * channels) views so
  # every product runs along a long contiguous axis. Rows are gathered before converting and
  # products are taken in place: the same floats as the plain formula, in fewer, smaller passes.
  channels = pixels.shape[2]
  y0, y1, wy0, wy1 = _linear_taps(height, out_h)
  x0, x1, wx0, wx1 = _column_taps(width, out_w, channels)
  rows = _weighted(pixels[y0].reshape(out_h, -1).astype(np.float32), wy0[:, None])
  rows += _weighted(pixels[y1].reshape(out_h, -1).astype(np.float32), wy1[:, None])
  out = _weighted(np.take(rows, x0, axis=1), wx0)
  out += _weighted(np.take(rows, x1, axis=1), wx1)
  return out.reshape(out_h, out_w, channels)


def _weighted(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
  values *= weights
  return values


def _read_only(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
  for array in arrays:
    array.flags.writeable = False
  return arrays


@functools.lru_cache(maxsize=256)
def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Source indices (lo, hi) and weights (1 - w, w) of each output pixel (cached, read-only)."""
  centre = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
  centre = np.clip(centre, 0, n_in - 1)
  lo = np.floor(centre).astype(np.int64)
  hi = np.minimum(lo + 1, n_in - 1)
  w = (centre - lo).astype(np.float32)
  return _read_only(lo, hi, 1 - w, w)


@functools.lru_cache(maxsize=256)
def _column_taps(n_in: int, n_out: int, channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """`_linear_taps` of columns, per channel of a (rows, n_in * channels) view."""
  lo, hi, w0, w1 = _linear_taps(n_in, n_out)
  channel = np.arange(channels)
  lo, hi = (lo[:, None] * channels + channel).ravel(), (hi[:, None] * channels + channel).ravel()
  return _read_only(lo, hi, np.repeat(w0, channels), np.repeat(w1, channels))


def load_image(
  path: str, image_size: tuple[int, int], color_mode: str = "rgb", interpolation: str = "bilinear"
) -> np.ndarray:
  """One image as the pipeline feeds it before rescaling: HxWxC float32 in [0, 255]."""
  return resize(decode(path, color_mode), tuple(image_size), interpolation)
