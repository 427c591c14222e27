"""RandAugment, TrivialAugment and AutoAugment, as torchvision defines them, on float images.

Each policy applies a few of the ops below per image, drawn at random with their magnitudes:

  rand_augment(n, m[, bins])   torchvision's RandAugment: n ops (default 2) drawn uniformly from the
                               14 below (not invert), each at magnitude bin m of `bins` (9 of 31),
                               a random sign for the signed ones
  trivial_augment              TrivialAugmentWide: one op at a uniformly drawn bin of 31, wider ranges
  auto_augment(imagenet)       AutoAugment's ImageNet policy: one of its 25 sub-policies, two ops each
                               with its own probability and magnitude

The ops are PIL's (`ImageOps`, `ImageEnhance`, `Image.transform`), which torchvision and timm build
theirs on, in PIL's pixel geometry and on the 0-255 scale: shear_x/y, translate_x/y, rotate,
brightness, color, contrast, sharpness (factor 1 + magnitude), posterize (bits), solarize
(threshold), autocontrast, equalize, invert. Geometric ops resample bilinearly with the run's
`data.fill_mode` outside the image (torchvision fills black: set `data.fill_mode="constant"`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

OPS = (
  "identity",
  "shear_x",
  "shear_y",
  "translate_x",
  "translate_y",
  "rotate",
  "brightness",
  "color",
  "contrast",
  "sharpness",
  "posterize",
  "solarize",
  "autocontrast",
  "equalize",
  "invert",
)
GEOMETRIC = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")
SIGNED = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color", "contrast", "sharpness")
_INDEX = {name: i for i, name in enumerate(OPS)}

# AutoAugment's ImageNet policy (Cubuk et al. 2019, as torchvision lists it): (op, probability, bin of 10).
IMAGENET_POLICY = (
  (("posterize", 0.4, 8), ("rotate", 0.6, 9)),
  (("solarize", 0.6, 5), ("autocontrast", 0.6, None)),
  (("equalize", 0.8, None), ("equalize", 0.6, None)),
  (("posterize", 0.6, 7), ("posterize", 0.6, 6)),
  (("equalize", 0.4, None), ("solarize", 0.2, 4)),
  (("equalize", 0.4, None), ("rotate", 0.8, 8)),
  (("solarize", 0.6, 3), ("equalize", 0.6, None)),
  (("posterize", 0.8, 5), ("equalize", 1.0, None)),
  (("rotate", 0.2, 3), ("solarize", 0.6, 8)),
  (("equalize", 0.6, None), ("posterize", 0.4, 6)),
  (("rotate", 0.8, 8), ("color", 0.4, 0)),
  (("rotate", 0.4, 9), ("equalize", 0.6, None)),
  (("equalize", 0.0, None), ("equalize", 0.8, None)),
  (("invert", 0.6, None), ("equalize", 1.0, None)),
  (("color", 0.6, 4), ("contrast", 1.0, 8)),
  (("rotate", 0.8, 8), ("color", 1.0, 2)),
  (("color", 0.8, 8), ("solarize", 0.8, 7)),
  (("sharpness", 0.4, 7), ("invert", 0.6, None)),
  (("shear_x", 0.6, 5), ("equalize", 1.0, None)),
  (("color", 0.4, 0), ("equalize", 0.6, None)),
  (("equalize", 0.4, None), ("solarize", 0.2, 4)),
  (("solarize", 0.6, 5), ("autocontrast", 0.6, None)),
  (("invert", 0.6, None), ("equalize", 1.0, None)),
  (("color", 0.6, 4), ("contrast", 1.0, 8)),
  (("equalize", 0.8, None), ("equalize", 0.6, None)),
)
POLICIES = {"imagenet": IMAGENET_POLICY}


@dataclasses.dataclass(frozen=True)
class Policy:
  """One of the three policies: `kind` is "rand", "trivial" or "auto"."""

  kind: str
  num_ops: int = 2
  magnitude: int = 9
  bins: int = 31
  name: str = "imagenet"

  @property
  def slots(self) -> int:
    return {"rand": self.num_ops, "trivial": 1, "auto": 2}[self.kind]


def parse(name: str, args: str) -> Policy:
  """A `Policy` from an op of `data.augment` (its name and the text inside its parentheses)."""
  if name == "auto_augment":
    which = args.strip().strip("'\"") or "imagenet"
    if which not in POLICIES:
      raise ValueError(f"auto_augment({which}): the policies are {', '.join(POLICIES)}.")
    return Policy("auto", bins=10, name=which)
  if name == "trivial_augment":
    if args.strip():
      raise ValueError("trivial_augment takes no arguments.")
    return Policy("trivial")
  values = [float(v) for v in args.split(",") if v.strip()] or [2, 9]
  n, m, bins = (*values, 31)[:3] if len(values) >= 2 else (values[0], 9, 31)
  if len(values) > 3 or n < 1 or n != int(n) or not 0 <= m < bins or m != int(m) or bins != int(bins):
    raise ValueError(f"rand_augment(n, m[, bins]) takes whole numbers n >= 1 and 0 <= m < bins (31), not ({args}).")
  return Policy("rand", int(n), int(m), int(bins))


def magnitudes(kind: str, bins: int, height: int, width: int) -> np.ndarray:
  """torchvision's magnitude bins per op, [len(OPS), bins] (0 for the ops without one)."""
  wide = kind == "trivial"
  line = lambda top: np.linspace(0.0, top, bins)  # noqa: E731
  table = np.zeros((len(OPS), bins))
  table[_INDEX["shear_x"]] = table[_INDEX["shear_y"]] = line(0.99 if wide else 0.3)
  table[_INDEX["translate_x"]] = line(32.0 if wide else 150.0 / 331.0 * width)
  table[_INDEX["translate_y"]] = line(32.0 if wide else 150.0 / 331.0 * height)
  table[_INDEX["rotate"]] = line(135.0 if wide else 30.0)
  for op in ("brightness", "color", "contrast", "sharpness"):
    table[_INDEX[op]] = line(0.99 if wide else 0.9)
  table[_INDEX["posterize"]] = 8 - np.round(np.arange(bins) / ((bins - 1) / (6 if wide else 4)))
  table[_INDEX["solarize"]] = np.linspace(255.0, 0.0, bins)
  return table


def sample(policy: Policy, uniform, height: int, width: int, xp=np) -> dict:
  """Per slot, the op's index in OPS and its signed magnitude, from `uniform(low, high)` (one
  value per image, numpy or jax: `xp`): {"policy_op_0": ..., "policy_magnitude_0": ..., ...}."""
  table = xp.asarray(magnitudes(policy.kind, policy.bins, height, width))
  signed = xp.asarray([op in SIGNED for op in OPS])
  pick = lambda count: xp.minimum(xp.floor(uniform(0.0, float(count))), count - 1).astype(int)  # noqa: E731
  params = {}
  if policy.kind == "auto":
    subs = POLICIES[policy.name]
    sub = pick(len(subs))
  for slot in range(policy.slots):
    if policy.kind == "auto":
      op = xp.asarray([_INDEX[s[slot][0]] for s in subs])[sub]
      probability = xp.asarray([s[slot][1] for s in subs])[sub]
      level = xp.asarray([s[slot][2] or 0 for s in subs])[sub]
      op = xp.where(uniform(0.0, 1.0) <= probability, op, 0)  # Not applied: the identity.
    else:
      op = pick(len(OPS) - 1)  # RandAugment and TrivialAugment leave out invert, the last op.
      level = policy.magnitude if policy.kind == "rand" else pick(policy.bins)
    sign = xp.where(signed[op] & (uniform(0.0, 1.0) < 0.5), -1.0, 1.0)
    params[f"policy_op_{slot}"] = op
    params[f"policy_magnitude_{slot}"] = table[op, level] * sign
  return params


# ---------------------------------------------------------------------------------------------
# The ops, on HxWxC images of 0-255 floats (numpy or jax: `xp`).


def pil_affine(op, magnitude, height: int, width: int, xp=np):
  """PIL's affine data (a, b, c, d, e, f) for a geometric op: output point (x, y) samples the input
  at (a x + b y + c, d x + e y + f), continuous coordinates (pixel centres at +0.5); timm's ops."""
  is_ = lambda name: op == _INDEX[name]  # noqa: E731
  zero, one = 0.0 * magnitude, 1.0 + 0.0 * magnitude
  theta = xp.deg2rad(-magnitude)  # Image.rotate(degrees): counter-clockwise about the centre.
  cos, sin = xp.where(is_("rotate"), xp.cos(theta), one), xp.where(is_("rotate"), xp.sin(theta), zero)
  a, b, d, e = cos, sin, -sin, cos
  b = xp.where(is_("shear_x"), magnitude, b)
  d = xp.where(is_("shear_y"), magnitude, d)
  cx, cy = width / 2.0, height / 2.0
  c = xp.where(is_("rotate"), cx - (a * cx + b * cy), xp.where(is_("translate_x"), magnitude, zero))
  f = xp.where(is_("rotate"), cy - (d * cx + e * cy), xp.where(is_("translate_y"), magnitude, zero))
  return a, b, c, d, e, f


def index_matrix(affine, xp=np):
  """PIL's affine data as a 3x3 map from output (row, col, 1) to input indices (pixel centres at
  integers), the form `scipy.ndimage.affine_transform` and `map_coordinates` take."""
  a, b, c, d, e, f = affine
  zero, one = 0.0 * a, 1.0 + 0.0 * a
  rows = [[e, d, 0.5 * (d + e) + f - 0.5], [b, a, 0.5 * (a + b) + c - 0.5], [zero, zero, one]]
  return xp.stack([xp.stack(r) for r in rows])


def _gray(y, xp):
  """PIL's "L" conversion (ITU-R 601-2 luma)."""
  return (y[..., 0] * 0.299 + y[..., 1] * 0.587 + y[..., 2] * 0.114)[..., None] if y.shape[-1] == 3 else y


def _blend(degenerate, y, factor, xp):
  """ImageEnhance's blend: the degenerate image moved towards (or past) the image by `factor`."""
  return xp.clip(degenerate + factor * (y - degenerate), 0.0, 255.0)


def _smooth(y, xp):
  """PIL's ImageFilter.SMOOTH (3x3, centre weight 5 of 13), the border pixels left as they are."""
  h, w = y.shape[:2]
  total = sum(y[1 + i : h - 1 + i, 1 + j : w - 1 + j] for i in (-1, 0, 1) for j in (-1, 0, 1)) + 4 * y[1:-1, 1:-1]
  inner = xp.round(total / 13.0)
  if xp is np:
    out = y.copy()
    out[1:-1, 1:-1] = inner
    return out
  return y.at[1:-1, 1:-1].set(inner)


def _bincount(values, xp):
  return np.bincount(values, minlength=256) if xp is np else xp.bincount(values, length=256)


def _equalize_channel(v, xp):
  """ImageOps.equalize for one channel of whole numbers 0-255 (PIL's integer arithmetic)."""
  levels = v.astype(int)
  histogram = _bincount(levels.ravel(), xp)
  last = histogram[xp.max(levels)]  # The count of the highest level present.
  step = (histogram.sum() - last) // 255
  before = xp.cumsum(histogram) - histogram
  lut = xp.clip((step // 2 + before) // xp.maximum(step, 1), 0, 255)
  return xp.where(step > 0, lut[levels], v)


def colour_ops(y, magnitude, xp=np) -> dict:
  """Each colour op on `y` at `magnitude`, by name, as a function of nothing (the host calls one,
  the device all of them); the geometric ops are resampled apart."""
  factor = 1.0 + magnitude

  def autocontrast():
    low, high = y.min(axis=(0, 1)), y.max(axis=(0, 1))
    return xp.where(high > low, xp.clip((y - low) * 255.0 / xp.where(high > low, high - low, 1.0), 0.0, 255.0), y)

  def posterize():
    shift = 2.0 ** xp.clip(8.0 - magnitude, 0.0, 8.0)
    return xp.floor(xp.round(y) / shift) * shift

  def equalize():
    return xp.stack([_equalize_channel(xp.round(y[..., c]), xp) for c in range(y.shape[-1])], axis=-1).astype(y.dtype)

  return {
    "brightness": lambda: _blend(0.0, y, factor, xp),
    "color": lambda: _blend(_gray(y, xp), y, factor, xp),
    "contrast": lambda: _blend(xp.round(_gray(y, xp).mean()), y, factor, xp),
    "sharpness": lambda: _blend(_smooth(y, xp), y, factor, xp),
    "posterize": posterize,
    "solarize": lambda: xp.where(y < magnitude, y, 255.0 - y),
    "autocontrast": autocontrast,
    "equalize": equalize,
    "invert": lambda: 255.0 - y,
  }


def apply(policy: Policy, x, p: dict, pixel_max: float, resample, xp=np):
  """The policy's ops on one HxWxC image in [0, pixel_max] with parameters `p` from `sample`;
  `resample(image, matrix)` does the geometric ops (`index_matrix`'s form)."""
  height, width = x.shape[:2]
  y = x * (255.0 / pixel_max)
  for slot in range(policy.slots):
    op, magnitude = p[f"policy_op_{slot}"], p[f"policy_magnitude_{slot}"]
    if xp is np:  # One image on the host: only the op drawn.
      name = OPS[int(op)]
      if name in GEOMETRIC:
        y = resample(y, index_matrix(pil_affine(op, magnitude, height, width)))
      elif name != "identity":
        y = colour_ops(y, magnitude)[name]().astype(y.dtype)
      continue
    moved = resample(y, index_matrix(pil_affine(op, magnitude, height, width, xp), xp))
    geometric = sum(op == _INDEX[name] for name in GEOMETRIC) > 0
    results = colour_ops(y, magnitude, xp)
    conditions = [op == _INDEX[name] for name in results] + [geometric]
    y = xp.select(conditions, [*(result() for result in results.values()), moved], y)
  return y * (pixel_max / 255.0)
