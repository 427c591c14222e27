"""Augmentation and normalisation: Keras's geometry, host = device, deterministic, identity when off."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SHARED, needs, tiny_config
from keras.src.legacy.preprocessing import image as keras_image
from PIL import Image, ImageEnhance, ImageOps

from imgcls import train
from imgcls.data import augment, grain_pipeline, images, pipeline, policies, sources

ALL = "flip_lr|flip_ud|rotate(30)|shift(0.1, 0.2)|shear(10)|zoom(0.2)|brightness(0.8, 1.2)|channel_shift(20)"


def image(seed=0, shape=(20, 24, 3)) -> np.ndarray:
  return np.random.default_rng(seed).random(shape).astype(np.float32)


def fixed(aug, **values) -> dict:
  params = augment.sample(aug, lambda low, high: np.float32(1.0 if low == high == 1.0 else 0.0), 20, 24)
  params.update({"zx": np.float32(1), "zy": np.float32(1), "brightness": np.float32(1), "flip_lr": False, "flip_ud": False})
  params.update({k: np.asarray(v) for k, v in values.items()})
  return {k: np.asarray(v) for k, v in params.items()}


@pytest.mark.parametrize("mode", ["nearest", "reflect", "wrap", "constant"])
def test_geometry_matches_keras_apply_affine_transform(mode):
  aug = augment.parse("rotate(1)|shift(1)|shear(1)|zoom(0.1)", mode, fill_value=0.25)
  x = image()
  p = fixed(aug, theta=23.0, tx=2.5, ty=-3.0, shear=7.0, zx=1.1, zy=0.9)
  ours = augment.transform_host(aug, x, p, 1.0)
  # Keras hands fill_mode to scipy; ours are scipy's grid modes for constant and wrap (they
  # interpolate towards the fill value / wrap periodically, as Keras 3's preprocessing layers do).
  keras_mode = {"constant": "grid-constant", "wrap": "grid-wrap"}.get(mode, mode)
  theirs = keras_image.apply_affine_transform(
    x,
    theta=23.0,
    tx=2.5,
    ty=-3.0,
    shear=7.0,
    zx=1.1,
    zy=0.9,
    row_axis=0,
    col_axis=1,
    channel_axis=2,
    fill_mode=keras_mode,
    cval=0.25,
  )
  np.testing.assert_allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("mode", ["nearest", "constant", "reflect", "wrap"])
def test_device_equals_host_with_the_same_parameters(mode):
  aug = augment.parse(ALL, mode, 0.3)
  x = image(1)
  rng = np.random.default_rng(2)
  for _ in range(3):
    p = {k: np.asarray(v) for k, v in augment.sample(aug, lambda low, high: rng.uniform(low, high), 20, 24).items()}
    host = augment.transform_host(aug, x, p, 1.0)
    device = np.asarray(augment.transform_device(aug, jnp.asarray(x), {k: jnp.asarray(v) for k, v in p.items()}, 1.0))
    np.testing.assert_allclose(host, device, atol=1e-4)


def test_simple_ops_do_what_they_say():
  aug = augment.parse(ALL)
  x = image(3, (16, 16, 3))
  run = lambda **v: augment.transform_host(aug, x, fixed(aug, **v), 1.0)
  np.testing.assert_allclose(run(), x, atol=1e-6)  # Neutral parameters: identity.
  np.testing.assert_allclose(run(flip_lr=True), x[:, ::-1], atol=1e-6)
  np.testing.assert_allclose(run(flip_ud=True), x[::-1], atol=1e-6)
  np.testing.assert_allclose(run(theta=90.0), np.rot90(x, k=1, axes=(0, 1)), atol=1e-4)
  np.testing.assert_allclose(run(tx=2.0)[:, :-2], x[:, 2:], atol=1e-5)  # Width shift: 2 columns left.
  np.testing.assert_allclose(run(ty=-3.0)[3:], x[:-3], atol=1e-5)  # Height shift: 3 rows down.
  np.testing.assert_allclose(run(brightness=0.5), x * 0.5, atol=1e-6)
  shifted = run(channel_shift=255.0 * 0.1)
  np.testing.assert_allclose(shifted, np.clip(x + 0.1, x.min(), x.max()), atol=1e-6)


def test_parse_errors_and_identity():
  assert not augment.parse("").enabled
  with pytest.raises(ValueError, match="Unknown augmentation 'rotat'"):
    augment.parse("flip_lr|rotat(10)")
  with pytest.raises(ValueError, match="Wrong arguments for 'brightness\\(0.5\\)'"):
    augment.parse("brightness(0.5)")
  x = jnp.asarray(image(4, (2, 8, 8, 3)))
  assert augment.apply_device(augment.parse(""), x, jax.random.key(0), 1.0) is x


@pytest.mark.parametrize("where", ["device", "host"])
def test_one_of_applies_exactly_one_op_per_image(where):
  """The cats-vs-dogs tutorial's augmentation: per image a left-right flip, an up-down flip, a rotation within 30
  degrees (black corners) or nothing twice over, each drawn with probability 1/5."""
  aug = augment.parse("one_of(flip_lr, flip_ud, rotate(30), none, none)", "constant")
  x = image(6, (1000, 12, 12, 1)) + 0.5  # No pixel is 0: a rotation's corners are.
  if where == "device":
    out = np.asarray(augment.apply_device(aug, jnp.asarray(x), jax.random.key(0), 2.0))
  else:
    rng = np.random.default_rng(0)
    out = np.stack([augment.apply_host(aug, im, rng, 2.0) for im in x])
  same = lambda y: np.all(np.abs(out - y) < 1e-6, axis=(1, 2, 3))  # noqa: E731
  kinds = np.stack([same(x), same(x[:, :, ::-1]), same(x[:, ::-1])])
  assert np.all(kinds.sum(axis=0) <= 1)
  rotated = ~kinds.any(axis=0)
  np.testing.assert_allclose([*kinds.mean(axis=1), rotated.mean()], [0.4, 0.2, 0.2, 0.2], atol=0.04)
  assert np.mean(out[rotated, 0, 0, 0] == 0.0) > 0.5  # Black corners, beyond the smallest angles.
  with pytest.raises(ValueError, match="one_of\\(...\\) must be the only op"):
    augment.parse("flip_lr|one_of(flip_ud, none)")
  with pytest.raises(ValueError, match="Unknown augmentation 'flip'"):
    augment.parse("one_of(flip, none)")


def test_device_augmentation_is_deterministic_per_key():
  aug = augment.parse(ALL)
  x = jnp.asarray(image(5, (4, 20, 24, 3)))
  a = augment.apply_device(aug, x, jax.random.key(1), 1.0)
  b = augment.apply_device(aug, x, jax.random.key(1), 1.0)
  c = augment.apply_device(aug, x, jax.random.key(2), 1.0)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0


def test_normalisation_matches_keras_image_data_generator(tree):
  config = tiny_config(
    tree, **{"data.validation_split": 0.0, "data.featurewise_center": True, "data.featurewise_std_normalization": True}
  )
  split = sources.find_splits(config.data, 0)["train"]
  normalize = augment.make_normalize(config.data, lambda: pipeline.eval_batches(split, config.data))
  x = np.concatenate([b["image"][b["mask"] > 0] for b in pipeline.eval_batches(split, config.data)])
  generator = keras_image.ImageDataGenerator(featurewise_center=True, featurewise_std_normalization=True)
  generator.fit(x)
  np.testing.assert_allclose(normalize.mean, generator.mean.ravel(), rtol=1e-4)  # Keras sums in float32.
  np.testing.assert_allclose(normalize.std, generator.std.ravel(), rtol=1e-4)
  np.testing.assert_allclose(np.asarray(normalize(jnp.asarray(x[:4]))), generator.standardize(x[:4].copy()), atol=1e-4)
  samplewise = augment.Normalize(samplewise_center=True, samplewise_std=True)
  keras_sample = keras_image.ImageDataGenerator(samplewise_center=True, samplewise_std_normalization=True)
  ours = np.asarray(samplewise(jnp.asarray(x[:4])))
  np.testing.assert_allclose(ours, np.stack([keras_sample.standardize(im.copy()) for im in x[:4]]), atol=1e-4)


@pytest.mark.parametrize("where", ["device", "host"])
def test_training_with_augmentation_is_reproducible(tree, tmp_path, where):
  config = tiny_config(
    tree,
    **{"data.augment": f"{ALL}|rand_augment(2, 9)", "data.augment_on": where, "train.epochs": 1, "data.featurewise_center": True},
  )
  first = train.train_and_evaluate(config, str(tmp_path / "a"))
  second = train.train_and_evaluate(config, str(tmp_path / "b"))
  assert first["final"] == second["final"]
  plain = train.train_and_evaluate(tiny_config(tree, **{"train.epochs": 1, "data.featurewise_center": True}), str(tmp_path / "c"))
  assert plain["final"]["train_loss"] != first["final"]["train_loss"]


def test_host_augmentation_differs_per_epoch_and_repeats_per_seed(tree):
  split = sources.find_splits(tiny_config(tree, **{"data.validation_split": 0.0}).data, 0)["train"]
  aug = augment.parse("rotate(40)|flip_lr")
  spec = images.ImageSpec((16, 16), rescale=1 / 255)
  first = lambda epoch: grain_pipeline.train_dataset(split, spec, 4, 7, epoch, shuffle=False, host_augment=aug)[0]["image"]
  np.testing.assert_array_equal(first(0), first(0))
  assert not np.allclose(first(0), first(1))


def test_random_resized_crop_is_pil_resize_of_the_box():
  """A crop smaller than the output is upsampled as PIL's bilinear `resize(box=...)` does it."""
  from PIL import Image

  aug = augment.parse("random_resized_crop(0.2, 0.5)")
  x = image(4, (20, 24, 3))
  rng = np.random.default_rng(0)
  for _ in range(5):
    p = {k: np.asarray(v) for k, v in augment.sample(aug, lambda low, high: rng.uniform(low, high), 20, 24).items()}
    top, left, h, w = (float(p[k]) * s for k, s in zip(("crop_top", "crop_left", "crop_height", "crop_width"), (20, 24, 20, 24)))
    assert 0.2 * 480 - 30 <= h * w <= 0.5 * 480 + 30 and 3 / 4 - 0.2 <= w / h <= 4 / 3 + 0.2  # Rounded to pixels.
    ours = augment.transform_host(aug, x, p, 1.0)
    box = (left, top, left + w, top + h)
    theirs = np.stack(
      [np.asarray(Image.fromarray(x[:, :, c], mode="F").resize((24, 20), Image.BILINEAR, box=box)) for c in range(3)], -1
    )
    inner = (slice(1, -1), slice(1, -1))  # PIL's border pixels clamp their taps differently.
    np.testing.assert_allclose(ours[inner], theirs[inner], atol=1e-4)


def test_random_resized_crop_samples_as_torchvision():
  """torchvision's get_params: area fraction and log-ratio uniform, first of 10 tries that fits."""
  aug = augment.parse("random_resized_crop")
  assert aug.resized_crop == pytest.approx((0.08, 1.0, 3 / 4, 4 / 3))
  p = augment.sample_device(aug, jax.random.key(0), 4000, 64, 64)
  area = np.asarray(p["crop_height"] * p["crop_width"])
  ratio = np.asarray(p["crop_width"] / p["crop_height"])
  top, left = np.asarray(p["crop_top"]), np.asarray(p["crop_left"])
  assert np.all(area <= 1.0) and np.all(top >= 0) and np.all(top + np.asarray(p["crop_height"]) <= 1 + 1e-6)
  assert np.all(left + np.asarray(p["crop_width"]) <= 1 + 1e-6)
  assert 0.45 < np.median(area) < 0.6 and np.all((ratio > 0.7) & (ratio < 1.45))
  assert len(np.unique(np.round(area * 4096))) > 100


@pytest.mark.parametrize("where", ["device", "host"])
def test_random_erasing_sets_one_rectangle_to_the_mean_colour(where):
  aug = augment.parse("random_erasing(1.0)")
  assert aug.erasing == pytest.approx((1.0, 0.02, 1 / 3, 0.3, 3.3))
  x = image(5, (32, 32, 3))
  if where == "device":
    out = np.asarray(augment.apply_device(aug, jnp.asarray(x[None].repeat(8, 0)), jax.random.key(2), 1.0))
  else:
    out = np.stack([augment.apply_host(aug, x, np.random.default_rng(s), 1.0) for s in range(8)])
  for y in out:
    changed = np.any(y != x, axis=-1)
    rows, cols = np.nonzero(changed)
    assert changed.any() and changed[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
    assert 0.02 * 1024 - 70 <= changed.sum() <= 1024 / 3 + 70
    np.testing.assert_allclose(y[changed], np.broadcast_to(x.mean(axis=(0, 1)), y[changed].shape), atol=1e-6)
  kept = augment.apply_device(augment.parse("random_erasing(0.0)"), jnp.asarray(x[None]), jax.random.key(2), 1.0)
  np.testing.assert_array_equal(np.asarray(kept)[0], x)


# ---------------------------------------------------------------------------------------------
# RandAugment, TrivialAugment, AutoAugment: each op against PIL, the draws against torchvision's.

PHOTO = SHARED / "data" / "imagenet_samples" / "parrot.jpg"
PIL_OPS = {
  "brightness": lambda im, m: ImageEnhance.Brightness(im).enhance(1 + m),
  "color": lambda im, m: ImageEnhance.Color(im).enhance(1 + m),
  "contrast": lambda im, m: ImageEnhance.Contrast(im).enhance(1 + m),
  "sharpness": lambda im, m: ImageEnhance.Sharpness(im).enhance(1 + m),
  "posterize": lambda im, m: ImageOps.posterize(im, int(m)),
  "solarize": lambda im, m: ImageOps.solarize(im, m),
  "autocontrast": lambda im, m: ImageOps.autocontrast(im),
  "equalize": lambda im, m: ImageOps.equalize(im),
  "invert": lambda im, m: ImageOps.invert(im),
  # timm's geometric ops, bilinear here (PIL's edge pixels differ: compared inside the image).
  "shear_x": lambda im, m: im.transform(im.size, Image.AFFINE, (1, m, 0, 0, 1, 0), Image.BILINEAR),
  "shear_y": lambda im, m: im.transform(im.size, Image.AFFINE, (1, 0, 0, m, 1, 0), Image.BILINEAR),
  "translate_x": lambda im, m: im.transform(im.size, Image.AFFINE, (1, 0, m, 0, 1, 0), Image.BILINEAR),
  "translate_y": lambda im, m: im.transform(im.size, Image.AFFINE, (1, 0, 0, 0, 1, m), Image.BILINEAR),
  "rotate": lambda im, m: im.rotate(m, Image.BILINEAR),
}
PIL_CASES = [
  *[(op, m) for op in ("brightness", "color", "contrast", "sharpness") for m in (-0.7, 0.9)],
  ("posterize", 4),
  ("posterize", 7),
  ("solarize", 100),
  ("autocontrast", 0),
  ("equalize", 0),
  ("invert", 0),
  ("shear_x", 0.3),
  ("shear_y", -0.25),
  ("translate_x", 5.5),
  ("translate_y", -7),
  ("rotate", 25),
  ("rotate", -130),
]


def policy_params(aug, op: str, magnitude: float, height: int, width: int) -> dict:
  params = fixed(aug)
  params.update({"policy_op_0": np.asarray(policies.OPS.index(op)), "policy_magnitude_0": np.asarray(float(magnitude))})
  return params


@needs(PHOTO)
@pytest.mark.parametrize("op, magnitude", PIL_CASES)
def test_policy_op_matches_pil(op, magnitude):
  photo = Image.open(PHOTO).convert("RGB").resize((40, 30))
  aug = augment.parse("rand_augment(1, 9)", "constant")
  x = np.asarray(photo, np.float32) / 255.0  # A run rescaled to [0, 1]: the ops work on 0-255 levels.
  ours = augment.transform_host(aug, x, policy_params(aug, op, magnitude, 30, 40), 1.0) * 255.0
  theirs = np.asarray(PIL_OPS[op](photo, magnitude), np.float32)
  inside = np.ones(theirs.shape[:2], bool)
  if op in policies.GEOMETRIC:
    matrix = policies.index_matrix(policies.pil_affine(policies.OPS.index(op), float(magnitude), 30, 40))
    rows, cols = np.meshgrid(np.arange(30), np.arange(40), indexing="ij")
    src = matrix[:2, :2] @ np.stack([rows.ravel(), cols.ravel()]) + matrix[:2, 2:]
    inside = ((src[0] >= 0) & (src[0] <= 29) & (src[1] >= 0) & (src[1] <= 39)).reshape(30, 40)
    assert inside.mean() > 0.25 and not np.allclose(ours, x * 255.0, atol=1)
    assert np.abs(ours - theirs)[~inside].mean() < 80  # Filled with black (0) as PIL's, up to its edge handling.
  difference = np.abs(ours - theirs)[inside]
  # PIL rounds its grey image and bilinear samples to 8 bits and truncates its blends; ours stay float.
  assert difference.max() <= 2.0 and difference.mean() < 0.6, (difference.max(), difference.mean())


def test_policy_ops_on_the_device_equal_the_host():
  aug = augment.parse("flip_lr|rand_augment(3, 20)|random_erasing(0.5)", "reflect")
  x = np.random.default_rng(0).random((24, 20, 24, 3)).astype(np.float32)
  x[:, :4] = 0.2  # Repeated levels, so equalize and autocontrast have something to do.
  key = jax.random.key(3)
  device = np.asarray(jax.jit(lambda x: augment.apply_device(aug, x, key, 1.0))(jnp.asarray(x)))
  params = {k: np.asarray(v) for k, v in augment.sample_device(aug, key, 24, 20, 24).items()}
  host = np.stack([augment.transform_host(aug, x[i], {k: v[i] for k, v in params.items()}, 1.0) for i in range(24)])
  np.testing.assert_allclose(device, host, atol=2e-4)
  assert len({int(params[f"policy_op_{s}"][i]) for s in range(3) for i in range(24)}) >= 10


def test_policy_draws_follow_torchvision():
  n = 14000
  rand = augment.sample_device(augment.parse("rand_augment(2, 9)"), jax.random.key(0), n, 32, 64)
  table = policies.magnitudes("rand", 31, 32, 64)
  for slot in (0, 1):
    op, magnitude = np.asarray(rand[f"policy_op_{slot}"]), np.asarray(rand[f"policy_magnitude_{slot}"])
    counts = np.bincount(op, minlength=len(policies.OPS))
    assert counts[-1] == 0 and np.all(np.abs(counts[:-1] / n - 1 / 14) < 0.012)  # Uniform over all but invert.
    np.testing.assert_allclose(np.abs(magnitude), table[op, 9], rtol=1e-6)
    signed = np.isin(op, [policies.OPS.index(o) for o in policies.SIGNED])
    assert abs((magnitude[signed] < 0).mean() - 0.5) < 0.03 and (magnitude[~signed] >= 0).all()
  assert table[policies.OPS.index("translate_x"), 30] == pytest.approx(150 / 331 * 64)
  assert table[policies.OPS.index("posterize"), 9] == 7 and table[policies.OPS.index("solarize"), 0] == 255

  trivial = augment.sample_device(augment.parse("trivial_augment"), jax.random.key(1), n, 32, 32)
  op, magnitude = np.asarray(trivial["policy_op_0"]), np.abs(np.asarray(trivial["policy_magnitude_0"]))
  rotate = magnitude[op == policies.OPS.index("rotate")]
  assert rotate.max() == pytest.approx(135.0) and len(np.unique(rotate.round(3))) == 31  # Every bin of 31 drawn.

  auto = augment.sample_device(augment.parse("auto_augment(imagenet)"), jax.random.key(2), n, 32, 32)
  names = lambda slot: [policies.OPS[i] for i in np.asarray(auto[f"policy_op_{slot}"])]  # noqa: E731
  allowed = {(a[0], b[0]) for a, b in policies.IMAGENET_POLICY}
  pairs = list(zip(names(0), names(1), strict=True))
  assert all((a, b) in allowed or "identity" in (a, b) for a, b in pairs)
  first_applied = np.mean([a != "identity" for a, _ in pairs])
  expected = np.mean([a[1] for a, _ in policies.IMAGENET_POLICY])
  assert abs(first_applied - expected) < 0.02


def test_policy_specs_are_checked():
  assert augment.parse("rand_augment").policy == policies.Policy("rand", 2, 9, 31)
  assert augment.parse("flip_lr|rand_augment(1, 5)|random_erasing(0.25)").policy.num_ops == 1
  assert augment.parse("auto_augment(imagenet)").policy.kind == "auto"
  for bad, message in [
    ("rand_augment(2, 40)", "0 <= m < bins"),
    ("rand_augment(1.5, 3)", "whole numbers"),
    ("auto_augment(cifar)", "policies are imagenet"),
    ("trivial_augment(3)", "no arguments"),
    ("trivial_augment|rand_augment", "One of rand_augment"),
    ("one_of(rand_augment, none)", "one_of takes ops"),
  ]:
    with pytest.raises(ValueError, match=message):
      augment.parse(bad)
