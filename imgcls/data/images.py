"""Reading one image: decode, orient, convert colour, resize. `load_image` is the one place
every image is read for a model (the grain pipeline, eval's plots, predict, inspect); the tf.data
pipeline reproduces it in TensorFlow's ops.

JPEGs that the pipeline may shrink while decoding go through libjpeg-turbo with simplejpeg, and
bilinear resizing is OpenCV's: both release the GIL, so the pipeline's threads decode in
parallel. Everything else (other formats, CMYK, multi-picture files, damaged files) is Pillow's.
The pixels are the same either way.
"""

from __future__ import annotations

import dataclasses
import io
import os
import warnings

import cv2
import numpy as np
import simplejpeg
from PIL import ExifTags, Image, ImageOps

cv2.setNumThreads(1)  # The pipeline resizes one image per thread; OpenCV's own threads only contend.

# Extensions read as images (those Keras's image_dataset_from_directory lists, plus tiff/webp).
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
# Refuse images above this many pixels (decompression bombs); Pillow's own limit is 89M.
MAX_PIXELS = 178_956_970
_TRANSPOSED = (2, 3, 4, 5, 6, 7, 8)  # EXIF orientations that exif_transpose acts on.


class BadImageError(ValueError):
  """An image file that cannot be decoded."""


@dataclasses.dataclass(frozen=True)
class ImageSpec:
  """How every image is read: size (height, width), colour mode, resize method, pixel scale.

  `jpeg_draft` lets JPEGs decode at a reduced size (a power of two, still at least `image_size`).
  """

  image_size: tuple[int, int]
  color_mode: str = "rgb"
  interpolation: str = "bilinear"
  rescale: float = 1.0  # Applied to each batch by the pipelines, not by `load_image`.
  cache: str = ""  # "", memory or disk: keep decoded, resized pixels.
  cache_dir: str = ""
  jpeg_draft: bool = True

  @classmethod
  def from_config(cls, data_config) -> ImageSpec:
    return cls(
      tuple(data_config.image_size),
      data_config.color_mode,
      data_config.interpolation,
      data_config.rescale,
      data_config.cache,
      data_config.cache_dir,
      data_config.jpeg_draft,
    )

  @property
  def channels(self) -> int:
    return 1 if self.color_mode == "grayscale" else 3


def is_image_file(name: str) -> bool:
  base = os.path.basename(name)
  return base.lower().endswith(IMAGE_EXTENSIONS) and not base.startswith(".")


def decode(path: str, color_mode: str = "rgb", draft_size: tuple[int, int] | None = None) -> np.ndarray:
  """Decoded pixels, HxWxC uint8 (C=3 for rgb, 1 for grayscale), EXIF orientation applied.

  `draft_size` (height, width) lets JPEG decoding scale down by a power of two while staying at
  least that large, which is much faster for big photos (Pillow's `draft`).
  """
  if path.startswith("tfds:"):
    from imgcls.data import tfds_source

    pixels = np.asarray(_convert(Image.fromarray(np.squeeze(tfds_source.read(path))), color_mode))
    return pixels[:, :, None] if pixels.ndim == 2 else pixels
  if draft_size is not None:
    pixels = _decode_jpeg(path, color_mode, draft_size)
    if pixels is not None:
      return pixels
  return decode_with_pillow(path, color_mode, draft_size)


def draft_ratio(size: tuple[int, int], image_size: tuple[int, int]) -> int:
  """The JPEG scale-down Pillow's `draft` picks for a (width, height) image and a target (height, width)."""
  scale = min(size[0] // image_size[1], size[1] // image_size[0])
  return next((r for r in (8, 4, 2) if scale >= r), 1)


def _decode_jpeg(path: str, color_mode: str, draft_size: tuple[int, int]) -> np.ndarray | None:
  """A JPEG decoded by simplejpeg exactly as Pillow's draft decodes it (the same libjpeg-turbo
  scaling, and libjpeg's own greyscale), or None for what Pillow must read: not a baseline
  YCbCr/grey JPEG, a multi-picture file, an EXIF rotation, anything damaged or too large."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError:
    return None
  if data[:3] != b"\xff\xd8\xff":
    return None
  head = data[:65536]
  try:
    height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
  except ValueError:
    return None
  if colorspace not in ("YCbCr", "Gray") or width * height > MAX_PIXELS or b"MPF\x00" in head:
    return None
  if b"Exif" in head and _orientation(data) in _TRANSPOSED:
    return None
  ratio = draft_ratio((width, height), draft_size)
  try:
    pixels = simplejpeg.decode_jpeg(
      data, "GRAY" if color_mode == "grayscale" else "RGB", min_height=-(-height // ratio), min_width=-(-width // ratio)
    )
  except ValueError:
    return None
  return pixels


def _orientation(data: bytes) -> int:
  try:
    with Image.open(io.BytesIO(data)) as img:
      return img.getexif().get(ExifTags.Base.Orientation, 1)
  except Exception:  # Pillow decides what a damaged file is.
    return 0


def decode_with_pillow(path: str, color_mode: str = "rgb", draft_size: tuple[int, int] | None = None) -> np.ndarray:
  """`decode` by Pillow alone."""
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
  ImageDataGenerator.flow_from_directory; "cv2_bicubic" is OpenCV's INTER_CUBIC on 8-bit pixels.
  """
  height, width = pixels.shape[:2]
  out_h, out_w = size
  if (height, width) == (out_h, out_w):
    return pixels.astype(np.float32)
  if interpolation in _PIL_FILTERS:  # As keras.utils.load_img(target_size=..., interpolation=...).
    image = Image.fromarray(np.squeeze(pixels.astype(np.uint8), axis=-1) if pixels.shape[-1] == 1 else pixels.astype(np.uint8))
    out = np.asarray(image.resize((out_w, out_h), _PIL_FILTERS[interpolation]), np.float32)
    return out[:, :, None] if out.ndim == 2 else out
  if interpolation == "cv2_bicubic":  # As cv2.resize(cv2.imread(path), size, interpolation=cv2.INTER_CUBIC).
    out = cv2.resize(pixels.astype(np.uint8), (out_w, out_h), interpolation=cv2.INTER_CUBIC)
    return out.reshape(out_h, out_w, pixels.shape[2]).astype(np.float32)
  if interpolation == "nearest":
    rows = np.minimum(np.floor((np.arange(out_h) + 0.5) * height / out_h).astype(np.int64), height - 1)
    cols = np.minimum(np.floor((np.arange(out_w) + 0.5) * width / out_w).astype(np.int64), width - 1)
    return pixels[rows][:, cols].astype(np.float32)
  if interpolation != "bilinear":
    raise ValueError(f"Unknown interpolation {interpolation!r}: use bilinear, nearest, {', '.join(_PIL_FILTERS)} or cv2_bicubic.")
  # OpenCV's INTER_LINEAR is tf.image.resize's bilinear (half-pixel centres, no antialiasing).
  out = cv2.resize(pixels.astype(np.float32), (out_w, out_h), interpolation=cv2.INTER_LINEAR)
  return out.reshape(out_h, out_w, pixels.shape[2])


def load_image(path: str, spec: ImageSpec) -> np.ndarray:
  """One image as the pipelines feed it before rescaling: decoded (a JPEG at a reduced size where
  `spec.jpeg_draft` allows), resized to `spec.image_size`; HxWxC float32 in [0, 255]."""
  pixels = decode(path, spec.color_mode, draft_size=spec.image_size if spec.jpeg_draft else None)
  return resize(pixels, spec.image_size, spec.interpolation)
