"""build_model with the Keras families: poolings, heads, include_top, cuts and config errors."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from imgcls.config import check_config, default_config
from imgcls.models import MODELS, build_model
from imgcls.steps import compute_cast


def config(name="mobilenet_v2", size=(64, 64), **model):
  c = default_config()
  c.model.name = name
  c.data.image_size = size
  for key, value in model.items():
    setattr(c.model, key, value)
  return c


def abstract_logits(c, outputs=4, batch=2):
  model = nnx.eval_shape(lambda: build_model(c, outputs, rngs=nnx.Rngs(0)))
  model.eval()
  x = jnp.zeros((batch, *c.data.image_size, 3))
  return model, nnx.eval_shape(lambda m, x: m(x), model, x), nnx.eval_shape(lambda m, x: m.embed(x), model, x)


POOLING_CASES = [
  *[("mobilenet_v2", 1280, pooling, head) for pooling in ("", "avg", "max") for head in ("", "flatten", "avg", "max")],
  *[
    (name, width, pooling, "flatten")
    for name, width in (("vgg16", 512), ("inception_v3", 2048))
    for pooling in ("", "avg", "max")
  ],
]


@pytest.mark.parametrize("name,width,pooling,head_pooling", POOLING_CASES)
def test_pooling_and_head(name, width, pooling, head_pooling):
  c = config(name, (96, 96) if name == "inception_v3" else (64, 64), pooling=pooling)
  c.model.head.pooling = head_pooling if not pooling else "none"
  c.model.head.hidden = (8,)
  model, logits, embedding = abstract_logits(c)
  assert logits.shape == (2, 4)
  assert embedding.shape == (2, 8)
  if pooling:
    assert model.backbone.output_shape == (width,)
  spatial = 2 * 2 if name != "inception_v3" else 1 * 1
  expected_in = width * spatial if (head_pooling == "flatten" and not pooling) else width
  assert model.head.hidden[0].in_features == expected_in


def test_default_heads():
  vector, _, _ = abstract_logits(config(pooling="avg"))
  assert vector.head.pooling == "none"
  feature_map, _, _ = abstract_logits(config(cut_at="block_13_expand_relu"))
  assert feature_map.head.pooling == "avg" and feature_map.backbone.output_shape == (4, 4, 576)


def test_include_top_random_init_has_keras_classes_outputs():
  model, logits, embedding = abstract_logits(config(size=(32, 32), include_top=True, alpha=0.35), 7)
  assert logits.shape == (2, 7)
  assert embedding.shape == (2, 1280)  # Keras's global_average_pooling2d: what predictions sees.
  assert model.backbone.output_name == "global_average_pooling2d"
  assert "predictions" not in model.backbone.layers and model.keras_top


def test_include_top_vgg_keeps_fc1_fc2_in_the_backbone():
  model, logits, embedding = abstract_logits(config("vgg19", (32, 32), include_top=True), 1000)
  assert logits.shape == (2, 1000) and embedding.shape == (2, 4096)
  assert model.backbone.output_name == "fc2"


def test_unknown_cut_layer_lists_near_names():
  with pytest.raises(ValueError, match="no layer named 'block_6_expand_rel'.*Similar names: block_6_expand_relu"):
    abstract_logits(config(cut_at="block_6_expand_rel"))


def test_bn_overrides():
  model, _, _ = abstract_logits(config("inception_v3", (75, 75), bn_momentum=0.9, bn_epsilon=1e-5))
  norm = model.backbone.layers["batch_normalization"]
  assert (norm.momentum, norm.epsilon, norm.scale) == (0.9, 1e-5, None)
  default, _, _ = abstract_logits(config())
  assert (default.backbone.layers["bn_Conv1"].momentum, default.backbone.layers["bn_Conv1"].epsilon) == (0.999, 1e-3)


@pytest.mark.parametrize(
  "c,outputs,message",
  [
    (config(include_top=True, cut_at="out_relu"), 1000, "leave model.cut_at and model.pooling empty"),
    (config("insects_cnn", weights="imagenet"), 3, "apply to the Keras models"),
    (config(include_top=True, weights="imagenet"), 3, "1000 outputs, not 3"),
    (config(size=(31, 64)), 3, "at least 32x32"),
    (config("inception_v3", (74, 100)), 3, "at least 75x75"),
    (config("insects_cnn", freeze="conv1"), 3, "can only freeze"),
  ],
)
def test_config_errors(c, outputs, message):
  with pytest.raises(ValueError, match=message):
    build_model(c, outputs, rngs=nnx.Rngs(0))


def test_check_config_rejects_include_top_with_pooling():
  with pytest.raises(ValueError, match="include_top"):
    check_config(config(include_top=True, pooling="avg"))
  with pytest.raises(ValueError, match="model.pooling"):
    check_config(config(pooling="mean"))


@pytest.mark.parametrize("name", ["mobilenet_v2", "vgg16", "bn_cnn", "insects_cnn"])
@pytest.mark.parametrize("convs", ["cpu", "xla"])
def test_bfloat16_compute_stays_bfloat16(name, convs):
  """With bfloat16 weights and images (config.dtype), every layer computes in bfloat16: no float32
  promotion by the preprocessing or by BatchNorm's float32 statistics, in training or inference."""
  c = config(name, (96, 96) if name == "bn_cnn" else (32, 32), convs=convs)
  model = build_model(c, 4, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  x = jax.ShapeDtypeStruct((2, *c.data.image_size, 3), jnp.bfloat16)
  for training in (True, False):

    def forward(params, x, training=training):
      m = nnx.merge(graphdef, compute_cast(params, "bfloat16"), rest, copy=True)
      m.train() if training else m.eval()
      return m.features(x), m(x, rngs=nnx.Rngs(dropout=0))

    features, logits = jax.eval_shape(forward, params, x)
    assert (features.dtype, logits.dtype) == (jnp.bfloat16, jnp.bfloat16), (training, features.dtype, logits.dtype)


def test_models_listing_names_every_model():
  """`python -m imgcls.models` lists each model with Keras's parameter count and weight file."""
  out = subprocess.run([sys.executable, "-m", "imgcls.models"], capture_output=True, text=True, check=True).stdout
  lines = {line.split()[0]: line for line in out.splitlines()[1:]}
  assert set(lines) == set(MODELS)
  assert "25,636,712" in lines["resnet50"] and "resnet50_weights_tf_dim_ordering_tf_kernels.h5" in lines["resnet50"]
  assert "299x299" in lines["inception_v3"]


def test_stochastic_depth_drops_whole_images_in_training_only():
  """EfficientNet's block Dropout(noise_shape=(None, 1, 1, 1)): each image's residual branch is
  zeroed or scaled by 1 / (1 - rate) in training, and left alone in inference."""
  from imgcls.models import efficientnet
  from imgcls.models.keras_net import KerasNet

  net = KerasNet(
    efficientnet.graph((32, 32, 3), include_top=False), output="block6d_drop", preprocessing="pixels", rngs=nnx.Rngs(0)
  )
  rate = net.spec[-1].rate
  assert rate == pytest.approx(0.2 * 14 / 16)  # Keras's drop_connect_rate * block / blocks
  x = jax.random.uniform(jax.random.key(1), (24, 32, 32, 3), maxval=255.0)
  net.train()
  branch = net(x, rngs=nnx.Rngs(dropout=3), output="block6d_project_bn")  # Earlier blocks draw the same.
  dropped = net(x, rngs=nnx.Rngs(dropout=3))
  ratio = (dropped / branch).reshape(len(x), -1)
  per_image = ratio[:, 0]
  assert jnp.allclose(ratio, per_image[:, None], atol=1e-5)  # One draw per image.
  kept = jnp.isclose(per_image, 1 / (1 - rate), atol=1e-5)
  assert bool(jnp.all(kept | (per_image == 0)))
  assert 0 < int(jnp.sum(~kept)) < len(x)
  net.eval()
  assert bool(jnp.all(net(x) == net(x, output="block6d_project_bn")))


def test_a_wholly_frozen_backbone_runs_in_inference_mode():
  """freeze="all": EfficientNet's stochastic depth is off in training too (Keras's transfer recipe
  calls the base with training=False), so its features can be cached; unfrozen, it is on."""
  from imgcls import feature_cache

  x = jax.random.uniform(jax.random.key(0), (8, 32, 32, 3))
  for freeze in ("all", ""):
    c = config("efficientnet_b0", (32, 32), freeze=freeze, pooling="avg")
    c.data.augment = "flip_lr"
    model = build_model(c, 3, rngs=nnx.Rngs(0))
    model.eval()
    inference = model.features(x)
    model.train()
    training = model.features(x, rngs=nnx.Rngs(dropout=1))
    cache, why_not = feature_cache.decide(c, model, 1)
    if freeze == "all":
      assert bool(jnp.all(training == inference)) and cache and not why_not
    else:
      assert not bool(jnp.allclose(training, inference)) and not cache and "trained" in why_not
