"""Augmentation and normalisation of image batches, as Keras's ImageDataGenerator does them.

`config.data.augment` is a list of ops separated by "|", e.g.
    "flip_lr|rotate(20)|shift(0.1, 0.1)|shear(10)|zoom(0.1)|brightness(0.8, 1.2)|channel_shift(20)"

  flip_lr, flip_ud         flip with probability 0.5
  rotate(degrees)          angle uniform in [-degrees, degrees]
  shift(width, height)     fractions of the size (or pixels if >= 1), uniform in [-x, x]
  shear(degrees)           shear angle uniform in [-degrees, degrees]
  zoom(r) / zoom(lo, hi)   independent x/y scale in [1-r, 1+r] (or [lo, hi]); > 1 zooms out
  brightness(lo, hi)       multiply by a factor in [lo, hi], clip to the pixel range
  channel_shift(i)         add a value in [-i, i] (pixel units, 0-255) to every channel
  random_resized_crop(s0, s1, r0, r1)
                           torchvision's RandomResizedCrop: a crop of area fraction in [s0, s1]
                           (default 0.08, 1) and aspect ratio in [r0, r1] (3/4, 4/3), resized
                           back to the image size (of the pipeline's resized image)
  random_erasing(p, s0, s1, r0, r1)
                           torchvision's RandomErasing: with probability p a rectangle of area
                           fraction [s0, s1] (0.02, 1/3) and ratio [r0, r1] (0.3, 3.3) is set to
                           the image's mean colour (0 after normalisation, as torchvision's value=0)
  rand_augment(n, m), trivial_augment, auto_augment(imagenet)
                           torchvision's RandAugment, TrivialAugmentWide and AutoAugment (see
                           imgcls/data/policies.py), after the ops above and before random_erasing,
                           as in timm's and torchvision's ImageNet recipes
  one_of(op, op, ...)      one of the ops per image, uniformly (`none`: unchanged; flips always
                           flip), e.g. the cats-vs-dogs tutorial's "one_of(flip_lr, flip_ud, rotate(30), none, none)";
                           the only op of its spec

The geometric ops make one affine map per image, sampled with bilinear interpolation and
`data.fill_mode` (nearest, constant, reflect, wrap) outside the image. Applied on the device
inside the jitted train step (`jax.scipy.ndimage.map_coordinates`) or on the host in the input
pipeline (`scipy.ndimage.affine_transform`), per `data.augment_on`; randomness comes from the
seed and the step (device) or the seed, epoch and example (host), so runs are reproducible.
"""

from __future__ import annotations

import ast
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from imgcls.data import policies

OPS = (
  "flip_lr",
  "flip_ud",
  "rotate",
  "shift",
  "shear",
  "zoom",
  "brightness",
  "channel_shift",
  "random_resized_crop",
  "random_erasing",
  "rand_augment",
  "trivial_augment",
  "auto_augment",
  "one_of",
)
policies_ops = ("rand_augment", "trivial_augment", "auto_augment")  # imgcls/data/policies.py's.
_ATTEMPTS = 10  # torchvision's tries at a crop or erased box that fits, before its fallback.
_SCIPY_MODES = {"nearest": "nearest", "constant": "grid-constant", "reflect": "reflect", "wrap": "grid-wrap"}


@dataclasses.dataclass(frozen=True)
class Augment:
  """Parsed augmentation ops: ranges per op (absent ops are off)."""

  flip_lr: bool = False
  flip_ud: bool = False
  rotate: float = 0.0
  shift: tuple[float, float] = (0.0, 0.0)
  shear: float = 0.0
  zoom: tuple[float, float] = (1.0, 1.0)
  brightness: tuple[float, float] | None = None
  channel_shift: float = 0.0
  resized_crop: tuple[float, float, float, float] | None = None  # Area fraction and aspect ratio ranges.
  erasing: tuple[float, float, float, float, float] | None = None  # Probability, area and ratio ranges.
  policy: policies.Policy | None = None  # RandAugment, TrivialAugment or AutoAugment.
  fill_mode: str = "nearest"
  fill_value: float = 0.0
  flip_probability: float = 0.5
  one_of: tuple[Augment, ...] = ()  # Alternatives, one drawn per image (then the fields above are off).

  @property
  def enabled(self) -> bool:
    return self != Augment(fill_mode=self.fill_mode, fill_value=self.fill_value)

  @property
  def geometric(self) -> bool:
    own = bool(self.rotate or any(self.shift) or self.shear or self.zoom != (1.0, 1.0) or self.resized_crop)
    return own or any(a.geometric for a in self.one_of)


def _split_top_level(text: str, sep: str) -> list[str]:
  """`text` split at the `sep` characters outside parentheses, each part stripped."""
  parts, depth, start = [], 0, 0
  for i, char in enumerate(text):
    depth += {"(": 1, ")": -1}.get(char, 0)
    if char == sep and depth == 0:
      parts.append(text[start:i].strip())
      start = i + 1
  return [*parts, text[start:].strip()]


def parse(spec: str, fill_mode: str = "nearest", fill_value: float = 0.0) -> Augment:
  """An `Augment` from a spec string; fails naming an unknown op or bad arguments."""
  if fill_mode not in _SCIPY_MODES:
    raise ValueError(f"data.fill_mode={fill_mode!r} is not one of {', '.join(_SCIPY_MODES)}.")
  fields: dict[str, Any] = {"fill_mode": fill_mode, "fill_value": float(fill_value)}
  parts = [p for p in _split_top_level(spec, "|") if p]
  for part in parts:
    name, _, rest = part.partition("(")
    name = name.strip()
    if name not in OPS:
      raise ValueError(f"Unknown augmentation {name!r} in data.augment={spec!r}; known: {', '.join(OPS)}.")
    if name == "one_of":
      if len(parts) > 1 or not rest.endswith(")"):
        raise ValueError(f"one_of(...) must be the only op of data.augment={spec!r} (put the others inside it).")
      choices = _split_top_level(rest[:-1], ",")
      if "" in choices or any(c.startswith(("one_of", *policies_ops)) or "|" in c for c in choices):
        raise ValueError(f"one_of takes ops or `none` separated by commas, not {part!r}.")
      fields[name] = tuple(
        Augment(fill_mode=fill_mode, fill_value=float(fill_value))
        if c == "none"
        else dataclasses.replace(parse(c, fill_mode, fill_value), flip_probability=1.0)
        for c in choices
      )
      continue
    if name in policies_ops:
      if "policy" in fields or not (rest.endswith(")") or not rest):
        raise ValueError(f"One of rand_augment, trivial_augment, auto_augment per data.augment, not {spec!r}.")
      fields["policy"] = policies.parse(name, rest[:-1])
      continue
    try:
      args = ast.literal_eval(f"({rest[:-1]},)") if rest else ()
    except (SyntaxError, ValueError) as e:
      raise ValueError(f"Cannot read the arguments of {part!r} in data.augment.") from e
    args = tuple(float(a) for a in args)
    if name in ("flip_lr", "flip_ud"):
      fields[name] = True
    elif name in ("rotate", "shear", "channel_shift") and len(args) == 1:
      fields[name] = abs(args[0])
    elif name == "shift" and len(args) in (1, 2):
      fields[name] = (abs(args[0]), abs(args[-1]))
    elif name == "zoom" and len(args) in (1, 2):
      fields[name] = (1 - args[0], 1 + args[0]) if len(args) == 1 else args
    elif name == "brightness" and len(args) == 2:
      fields[name] = args
    elif name == "random_resized_crop" and len(args) in (0, 2, 4) and all(a > 0 for a in args):
      fields["resized_crop"] = (*(args[:2] or (0.08, 1.0)), *(args[2:] or (3 / 4, 4 / 3)))
    elif name == "random_erasing" and len(args) in (1, 3, 5) and 0 <= args[0] <= 1:
      fields["erasing"] = (args[0], *(args[1:3] or (0.02, 1 / 3)), *(args[3:] or (0.3, 3.3)))
    else:
      raise ValueError(f"Wrong arguments for {part!r} in data.augment; see imgcls/data/augment.py.")
  return Augment(**fields)


def from_config(data_config) -> Augment:
  return parse(data_config.augment, data_config.fill_mode, data_config.fill_value)


# ---------------------------------------------------------------------------------------------
# Random parameters and the affine map (numpy or jax: `xp`).


def sample(aug: Augment, uniform, height: int, width: int, xp=np, boxes=None, policy_draws=None) -> dict:
  """Transform parameters from `uniform(low, high)` (np or jax, `xp`), one value per image; the
  random crop and erased rectangle from `boxes`, the policy's ops from `policy_draws` (other such
  functions; default `uniform`)."""
  if aug.one_of:
    choice = xp.floor(uniform(0.0, float(len(aug.one_of))))
    drawn = [sample(a, uniform, height, width, xp, boxes) for a in aug.one_of]
    params = drawn[-1]
    for i in reversed(range(len(drawn) - 1)):
      params = {key: xp.where(choice == i, drawn[i][key], value) for key, value in params.items()}
    return params
  params = {
    "theta": uniform(-aug.rotate, aug.rotate),
    # In Keras's matrix (rows and columns swapped at the end) tx moves columns, ty rows.
    "tx": uniform(-aug.shift[0], aug.shift[0]) * (width if aug.shift[0] < 1 else 1),
    "ty": uniform(-aug.shift[1], aug.shift[1]) * (height if aug.shift[1] < 1 else 1),
    "shear": uniform(-aug.shear, aug.shear),
    "zx": uniform(aug.zoom[0], aug.zoom[1]),
    "zy": uniform(aug.zoom[0], aug.zoom[1]),
    "flip_lr": uniform(0.0, 1.0) < (aug.flip_probability if aug.flip_lr else 0.0),
    "flip_ud": uniform(0.0, 1.0) < (aug.flip_probability if aug.flip_ud else 0.0),
    "brightness": uniform(*aug.brightness) if aug.brightness else uniform(1.0, 1.0),
    "channel_shift": uniform(-aug.channel_shift, aug.channel_shift),
  }
  boxes = boxes or uniform
  one = xp.ones_like(params["theta"])
  crop = {"top": 0 * one, "left": 0 * one, "height": one, "width": one}  # Fractions of the image: all of it.
  if aug.resized_crop:
    box = _box(boxes, height, width, *aug.resized_crop, xp, fits=_crop_fits)
    crop = {k: v / (height if k in ("top", "height") else width) for k, v in box.items()}
  erase = {"top": 0 * one, "left": 0 * one, "height": 0 * one, "width": 0 * one}  # Empty: nothing erased.
  if aug.erasing:
    erase_on = boxes(0.0, 1.0) < aug.erasing[0]
    erase = {k: xp.where(erase_on, v, 0.0) for k, v in _box(boxes, height, width, *aug.erasing[1:], xp, fits=_erase_fits).items()}
  params.update({f"crop_{k}": v for k, v in crop.items()})
  params.update({f"erase_{k}": v for k, v in erase.items()})
  if aug.policy:
    params.update(policies.sample(aug.policy, policy_draws or boxes, height, width, xp))
  return params


def _crop_fits(h, w, height, width):
  return (h > 0) & (w > 0) & (h <= height) & (w <= width)


def _erase_fits(h, w, height, width):
  return (h > 0) & (w > 0) & (h < height) & (w < width)


def _box(uniform, height: int, width: int, s0: float, s1: float, r0: float, r1: float, xp, fits) -> dict:
  """torchvision's RandomResizedCrop.get_params / RandomErasing.get_params, batched: up to
  `_ATTEMPTS` boxes of area fraction [s0, s1] and aspect (width / height) ratio [r0, r1] at a random
  place; the first that fits, else the whole image for a crop (clamped to the ratio range, centred)
  and nothing for erasing. {"top", "left", "height", "width"} in pixels."""
  area = height * width
  found = None
  for _ in range(_ATTEMPTS):
    target = area * uniform(s0, s1)
    aspect = xp.exp(uniform(float(np.log(r0)), float(np.log(r1))))
    h, w = xp.round(xp.sqrt(target / aspect)), xp.round(xp.sqrt(target * aspect))
    top = xp.floor(uniform(0.0, 1.0) * (height - h + 1))
    left = xp.floor(uniform(0.0, 1.0) * (width - w + 1))
    ok = fits(h, w, height, width)
    box = {"top": top, "left": left, "height": h, "width": w}
    if found is None:
      found, any_ok = {k: xp.where(ok, v, np.nan) for k, v in box.items()}, ok
    else:
      found = {k: xp.where(~any_ok & ok, box[k], found[k]) for k in found}
      any_ok = any_ok | ok
  if fits is _erase_fits:
    return {k: xp.where(any_ok, v, 0.0) for k, v in found.items()}
  in_ratio = width / height  # torchvision's fallback: a central crop within the ratio range.
  w = float(width) if r0 <= in_ratio <= r1 else (float(width) if in_ratio < r0 else float(round(height * r1)))
  h = float(height) if r0 <= in_ratio <= r1 else (float(round(width / r0)) if in_ratio < r0 else float(height))
  fallback = {"top": (height - h) // 2, "left": (width - w) // 2, "height": h, "width": w}
  return {k: xp.where(any_ok, v, fallback[k]) for k, v in found.items()}


def affine_matrix(p: dict, height: int, width: int, xp=np):
  """Maps output (row, col, 1) to input coordinates, exactly as Keras's apply_affine_transform
  builds it for a channels-last image (its matrix is centred, then rows and columns swapped)."""
  theta, shear = xp.deg2rad(p["theta"]), xp.deg2rad(p["shear"])
  one, zero = xp.ones_like(theta), xp.zeros_like(theta)

  def mat(rows):
    return xp.stack([xp.stack(r, axis=-1) for r in rows], axis=-2)

  rotation = mat([[xp.cos(theta), -xp.sin(theta), zero], [xp.sin(theta), xp.cos(theta), zero], [zero, zero, one]])
  shift = mat([[one, zero, p["tx"] * one], [zero, one, p["ty"] * one], [zero, zero, one]])
  shearing = mat([[one, -xp.sin(shear), zero], [zero, xp.cos(shear), zero], [zero, zero, one]])
  zoom = mat([[p["zx"] * one, zero, zero], [zero, p["zy"] * one, zero], [zero, zero, one]])
  ox, oy = height / 2 - 0.5, width / 2 - 0.5
  to_center = mat([[one, zero, ox * one], [zero, one, oy * one], [zero, zero, one]])
  from_center = mat([[one, zero, -ox * one], [zero, one, -oy * one], [zero, zero, one]])
  matrix = to_center @ rotation @ shift @ shearing @ zoom @ from_center
  swap = xp.asarray([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=matrix.dtype)
  matrix = swap @ matrix @ swap
  if "crop_height" not in p:
    return matrix
  # The random resized crop last: output pixel centres spread over the crop box of the input.
  sy, sx = p["crop_height"], p["crop_width"]  # Fractions of the image's height and width.
  ty, tx = p["crop_top"] * height + 0.5 * sy - 0.5, p["crop_left"] * width + 0.5 * sx - 0.5
  return mat([[sy * one, zero, ty * one], [zero, sx * one, tx * one], [zero, zero, one]]) @ matrix


def _photometric(x, p, pixel_max, xp):
  """Channel shift (clipped to the image's range, as Keras), flips, brightness, on HxWxC."""
  low, high = x.min(), x.max()
  x = xp.clip(x + p["channel_shift"] * (pixel_max / 255.0), low, high)
  x = xp.where(p["flip_lr"], x[:, ::-1], x)
  x = xp.where(p["flip_ud"], x[::-1], x)
  return xp.clip(x * p["brightness"], 0.0, pixel_max)


def _erase(x, p, xp):
  """The random erasing box (if any) set to the image's mean colour."""
  if "erase_height" not in p:
    return x
  rows = xp.arange(x.shape[0])[:, None, None]
  cols = xp.arange(x.shape[1])[None, :, None]
  top, left = p["erase_top"], p["erase_left"]
  box = (rows >= top) & (rows < top + p["erase_height"]) & (cols >= left) & (cols < left + p["erase_width"])
  return xp.where(box, x.mean(axis=(0, 1), keepdims=True), x)  # An empty box (no erasing) changes nothing.


# ---------------------------------------------------------------------------------------------
# On the device.


def apply_device(aug: Augment, images: jax.Array, key: jax.Array, pixel_max: float) -> jax.Array:
  """Augments a batch NHWC inside jit: one random transform per image."""
  if not aug.enabled:
    return images
  n, height, width, _ = images.shape
  params = sample_device(aug, key, n, height, width)
  return jax.vmap(lambda x, p: transform_device(aug, x, p, pixel_max))(images, params)


def sample_device(aug: Augment, key: jax.Array, n: int, height: int, width: int) -> dict:
  """The random parameters `apply_device` draws from `key` for a batch of `n` images."""
  keys = iter(jax.random.split(key, 10 * max(len(aug.one_of), 1) + bool(aug.one_of)))
  # The crops and erased boxes draw from their own keys: the other ops' draws stay as they were.
  box_keys = iter(jax.random.split(jax.random.fold_in(key, 7), (8 * _ATTEMPTS + 1) * max(len(aug.one_of), 1)))

  def uniform(low, high):
    return jax.random.uniform(next(keys), (n,), minval=low, maxval=high)

  def boxes(low, high):
    return jax.random.uniform(next(box_keys), (n,), minval=low, maxval=high)

  policy_keys = iter(jax.random.split(jax.random.fold_in(key, 11), 3 * (aug.policy.slots + 1) if aug.policy else 1))

  def policy_draws(low, high):
    return jax.random.uniform(next(policy_keys), (n,), minval=low, maxval=high)

  return sample(aug, uniform, height, width, jnp, boxes, policy_draws)


def transform_device(aug: Augment, x: jax.Array, p: dict, pixel_max: float) -> jax.Array:
  """One image HxWxC with the given parameters."""
  if aug.geometric:
    x = _resample_device(x, affine_matrix(p, *x.shape[:2], jnp), aug.fill_mode, aug.fill_value)
  x = _photometric(x, p, pixel_max, jnp)
  if aug.policy:
    cval = aug.fill_value * 255.0 / pixel_max  # The policy's ops work on the 0-255 scale.
    x = policies.apply(aug.policy, x, p, pixel_max, lambda y, m: _resample_device(y, m, aug.fill_mode, cval), jnp)
  return _erase(x, p, jnp)


def _resample_device(x: jax.Array, matrix: jax.Array, fill_mode: str, fill_value: float) -> jax.Array:
  """HxWxC sampled bilinearly at `matrix` @ (row, col, 1) of each output pixel."""
  height, width, _ = x.shape
  rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij")
  src = matrix[:2, :2] @ jnp.stack([rows.ravel(), cols.ravel()]) + matrix[:2, 2:]
  coords = [src[0].reshape(height, width), src[1].reshape(height, width)]
  return jnp.stack(
    [jax.scipy.ndimage.map_coordinates(x[:, :, c], coords, order=1, mode=fill_mode, cval=fill_value) for c in range(x.shape[-1])],
    axis=-1,
  )


# ---------------------------------------------------------------------------------------------
# On the host.


def apply_host(aug: Augment, x: np.ndarray, rng: np.random.Generator, pixel_max: float) -> np.ndarray:
  """Augments one HxWxC float32 image with scipy.ndimage."""
  if not aug.enabled:
    return x
  height, width, _ = x.shape
  p = {k: np.asarray(v) for k, v in sample(aug, lambda low, high: rng.uniform(low, high), height, width).items()}
  return transform_host(aug, x, p, pixel_max)


def transform_host(aug: Augment, x: np.ndarray, p: dict, pixel_max: float) -> np.ndarray:
  if aug.geometric:
    x = _resample_host(x, affine_matrix(p, *x.shape[:2]), aug.fill_mode, aug.fill_value)
  x = _photometric(x, p, pixel_max, np)
  if aug.policy:
    cval = aug.fill_value * 255.0 / pixel_max
    x = policies.apply(aug.policy, x, p, pixel_max, lambda y, m: _resample_host(y, m, aug.fill_mode, cval), np)
  return _erase(x, p, np).astype(np.float32)


def _resample_host(x: np.ndarray, matrix: np.ndarray, fill_mode: str, fill_value: float) -> np.ndarray:
  from scipy import ndimage

  return np.stack(
    [
      ndimage.affine_transform(x[:, :, c], matrix[:2, :2], matrix[:2, 2], order=1, mode=_SCIPY_MODES[fill_mode], cval=fill_value)
      for c in range(x.shape[-1])
    ],
    axis=-1,
  )


# ---------------------------------------------------------------------------------------------
# Normalisation.


@dataclasses.dataclass(frozen=True)
class Normalize:
  """Keras's sample-wise and feature-wise centring and std normalisation."""

  samplewise_center: bool = False
  samplewise_std: bool = False
  mean: tuple[float, ...] | None = None  # Feature-wise, per channel, from the training set.
  std: tuple[float, ...] | None = None

  def __call__(self, x: jax.Array) -> jax.Array:
    axes = tuple(range(1, x.ndim))
    if self.samplewise_center:
      x = x - jnp.mean(x, axis=axes, keepdims=True)
    if self.samplewise_std:
      x = x / (jnp.std(x, axis=axes, keepdims=True) + 1e-6)
    if self.mean is not None:
      x = x - jnp.asarray(self.mean, x.dtype)
    if self.std is not None:
      x = x / (jnp.asarray(self.std, x.dtype) + 1e-6)
    return x

  @property
  def enabled(self) -> bool:
    return self != Normalize()


def channel_stats(batches) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean and std over masked batches (one pass, float64 sums)."""
  total = total_sq = count = 0.0
  for batch in batches:
    images = np.asarray(batch["image"], np.float64)[batch["mask"] > 0]
    total = total + images.sum(axis=(0, 1, 2))
    total_sq = total_sq + (images**2).sum(axis=(0, 1, 2))
    count += images.shape[0] * images.shape[1] * images.shape[2]
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
  return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def make_normalize(data_config, train_batches=None, stats: dict | None = None) -> Normalize:
  """The run's normalisation; feature-wise stats come from `stats` (a checkpoint's) or one pass
  over the batches `train_batches()` returns."""
  mean = std = None
  if data_config.featurewise_center or data_config.featurewise_std_normalization:
    if not stats or stats.get("mean") is None:
      m, s = channel_stats(train_batches())
      stats = {"mean": m, "std": s}
    mean = tuple(stats["mean"]) if data_config.featurewise_center else None
    std = tuple(stats["std"]) if data_config.featurewise_std_normalization else None
  return Normalize(data_config.samplewise_center, data_config.samplewise_std_normalization, mean, std)
