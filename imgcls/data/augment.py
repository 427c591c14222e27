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

OPS = ("flip_lr", "flip_ud", "rotate", "shift", "shear", "zoom", "brightness", "channel_shift", "one_of")
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
  fill_mode: str = "nearest"
  fill_value: float = 0.0
  flip_probability: float = 0.5
  one_of: tuple[Augment, ...] = ()  # Alternatives, one drawn per image (then the fields above are off).

  @property
  def enabled(self) -> bool:
    return self != Augment(fill_mode=self.fill_mode, fill_value=self.fill_value)

  @property
  def geometric(self) -> bool:
    own = bool(self.rotate or any(self.shift) or self.shear or self.zoom != (1.0, 1.0))
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
      if "" in choices or any(c.startswith("one_of") or "|" in c for c in choices):
        raise ValueError(f"one_of takes ops or `none` separated by commas, not {part!r}.")
      fields[name] = tuple(
        Augment(fill_mode=fill_mode, fill_value=float(fill_value))
        if c == "none"
        else dataclasses.replace(parse(c, fill_mode, fill_value), flip_probability=1.0)
        for c in choices
      )
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
    else:
      raise ValueError(f"Wrong arguments for {part!r} in data.augment; see imgcls/data/augment.py.")
  return Augment(**fields)


def from_config(data_config) -> Augment:
  return parse(data_config.augment, data_config.fill_mode, data_config.fill_value)


# ---------------------------------------------------------------------------------------------
# Random parameters and the affine map (numpy or jax: `xp`).


def sample(aug: Augment, uniform, height: int, width: int, xp=np) -> dict:
  """Transform parameters from `uniform(low, high)` (np or jax, `xp`), one value per image."""
  if aug.one_of:
    choice = xp.floor(uniform(0.0, float(len(aug.one_of))))
    drawn = [sample(a, uniform, height, width, xp) for a in aug.one_of]
    params = drawn[-1]
    for i in reversed(range(len(drawn) - 1)):
      params = {key: xp.where(choice == i, drawn[i][key], value) for key, value in params.items()}
    return params
  return {
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
  return swap @ matrix @ swap


def _photometric(x, p, pixel_max, xp):
  """Channel shift (clipped to the image's range, as Keras), flips, brightness, on HxWxC."""
  low, high = x.min(), x.max()
  x = xp.clip(x + p["channel_shift"] * (pixel_max / 255.0), low, high)
  x = xp.where(p["flip_lr"], x[:, ::-1], x)
  x = xp.where(p["flip_ud"], x[::-1], x)
  return xp.clip(x * p["brightness"], 0.0, pixel_max)


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

  def uniform(low, high):
    return jax.random.uniform(next(keys), (n,), minval=low, maxval=high)

  return sample(aug, uniform, height, width, jnp)


def transform_device(aug: Augment, x: jax.Array, p: dict, pixel_max: float) -> jax.Array:
  """One image HxWxC with the given parameters."""
  height, width, _ = x.shape
  if aug.geometric:
    matrix = affine_matrix(p, height, width, jnp)
    rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij")
    src = matrix[:2, :2] @ jnp.stack([rows.ravel(), cols.ravel()]) + matrix[:2, 2:]
    coords = [src[0].reshape(height, width), src[1].reshape(height, width)]
    mode = "wrap" if aug.fill_mode == "wrap" else aug.fill_mode
    x = jnp.stack(
      [
        jax.scipy.ndimage.map_coordinates(x[:, :, c], coords, order=1, mode=mode, cval=aug.fill_value) for c in range(x.shape[-1])
      ],
      axis=-1,
    )
  return _photometric(x, p, pixel_max, jnp)


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
  from scipy import ndimage

  if aug.geometric:
    matrix = affine_matrix(p, *x.shape[:2])
    x = np.stack(
      [
        ndimage.affine_transform(
          x[:, :, c], matrix[:2, :2], matrix[:2, 2], order=1, mode=_SCIPY_MODES[aug.fill_mode], cval=aug.fill_value
        )
        for c in range(x.shape[-1])
      ],
      axis=-1,
    )
  return _photometric(x, p, pixel_max, np).astype(np.float32)


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
