"""Every recipe in configs/ loads, passes check_config and builds its model (abstractly: no weights)."""

from __future__ import annotations

import jax.numpy as jnp
import pytest
from flax import nnx
from paths import CONFIGS, load_recipe

from imgcls.config import check_config
from imgcls.models import build_model

RECIPES = sorted(p.stem for p in CONFIGS.glob("*.py"))
IMAGENET_MODELS = ["mobilenet_v2", "vgg16", "vgg19", "inception_v3", "resnet50", "efficientnet_b3", "mobilenet_v3_small"]
TRANSFER_MODELS = ["efficientnet_b0", "resnet50", "convnext_tiny"]
# Outputs of each recipe's task (the data decides them in a run).
OUTPUTS = {
  "pollen": 1,
  "pollen_tuned": 1,
  "flowers": 17,
  "flowers_mobilenet": 17,
  "flowers_mobilenet_tuned": 17,
  "flowers_transfer": 17,
  "covid": 2,
  "imagenet": 1000,
}


def recipes():
  for name in RECIPES:
    if name == "imagenet":
      yield from ((name, arg) for arg in IMAGENET_MODELS)
    elif name == "flowers_transfer":
      yield from ((name, arg) for arg in TRANSFER_MODELS)
    else:
      yield name, None


@pytest.mark.parametrize("name,arg", list(recipes()))
def test_recipe_loads_checks_and_builds(name, arg):
  config = load_recipe(name, arg)
  check_config(config)
  config.model.weights = ""  # The model and head shapes only; no file, no download.
  outputs = OUTPUTS.get(name, 5)
  height, width = config.data.image_size
  model = nnx.eval_shape(lambda: build_model(config, outputs, rngs=nnx.Rngs(0)))
  model.eval()
  channels = 1 if config.data.color_mode == "grayscale" else 3
  logits = nnx.eval_shape(lambda m, x: m(x), model, jnp.zeros((2, height, width, channels)))
  assert logits.shape == (2, outputs)


def test_tuned_pollen_is_the_seed_recipe_plus_the_changes_its_docstring_lists():
  def flat(config, prefix=""):
    out = {}
    for key, value in config.items():
      out.update(flat(value, f"{prefix}{key}.") if hasattr(value, "items") else {prefix + key: value})
    return out

  seed, tuned = flat(load_recipe("pollen")), flat(load_recipe("pollen_tuned"))
  changed = {k: tuned[k] for k in seed if seed[k] != tuned[k]}
  assert changed == {
    "data.augment": "flip_lr|flip_ud|rand_augment(2, 9)",
    "model.bn_momentum": 0.99,
    "model.cut_at": "block_13_expand_relu",
    "optimizer.schedule": "cosine",
    "train.ema_decay": 0.99,
  }


def test_every_config_file_is_tested():
  assert {"imagenet", "pollen", "insects", "insects_transfer", "flowers", "flowers_mobilenet", "cats_dogs", "covid"} <= set(
    RECIPES
  )


def test_recipes_use_what_the_seeds_use():
  pollen = load_recipe("pollen")
  assert (pollen.model.name, pollen.model.cut_at, tuple(pollen.data.image_size)) == (
    "mobilenet_v2",
    "block_6_expand_relu",
    (90, 90),
  )
  assert (pollen.seed, pollen.data.label_mode, tuple(pollen.model.head.hidden)) == (42, "binary", (64,))
  flowers = load_recipe("flowers")
  assert (flowers.model.name, flowers.model.pooling, flowers.model.freeze) == ("vgg19", "max", "all")
  assert tuple(load_recipe("imagenet", "inception_v3").data.image_size) == (299, 299)
  assert tuple(load_recipe("imagenet", "efficientnet_b3").data.image_size) == (300, 300)  # The variant's size.
