"""Frozen backbones behave like Keras's trainable=False: no updates, BatchNorm in inference mode."""

from __future__ import annotations

import numpy as np
import optax
import pytest
from flax import nnx

from imgcls.config import default_config
from imgcls.models import build_model


def make_model(freeze: str):
  c = default_config()
  c.model.name = "mobilenet_v2"
  c.model.alpha = 0.35
  c.model.cut_at = "block_4_add"  # Short, still with BatchNorm, residuals and a stride-2 pad.
  c.model.head.pooling = "avg"
  c.model.freeze = freeze
  c.data.image_size = (32, 32)
  c.data.rescale = 1 / 255
  return build_model(c, 3, rngs=nnx.Rngs(0))


def snapshot(model, kind) -> dict[tuple, np.ndarray]:
  return {tuple(path): np.array(v[...]) for path, v in nnx.to_flat_state(nnx.state(model, kind))}


def train_step(model) -> None:
  """One jitted Adam step on the trainable parameters, as a train loop does it."""
  trainable = nnx.All(nnx.Param, nnx.Not(model.frozen))
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=trainable)
  rng = np.random.default_rng(0)
  images = rng.uniform(0, 1, (4, 32, 32, 3)).astype(np.float32)
  labels = np.array([0, 1, 2, 1])
  model.train()

  @nnx.jit
  def step(model, optimizer, images, labels):
    def loss_fn(model):
      return optax.softmax_cross_entropy_with_integer_labels(model(images), labels).mean()

    _, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, trainable))(model)
    optimizer.update(model, grads)

  step(model, optimizer, images, labels)


def changed(before, after, prefix) -> dict[tuple, bool]:
  return {path: not np.array_equal(before[path], after[path]) for path in before if path[: len(prefix)] == prefix}


@pytest.fixture(scope="module")
def frozen_all():
  model = make_model("all")
  before = snapshot(model, nnx.Param), snapshot(model, nnx.BatchStat)
  train_step(model)
  return model, before, (snapshot(model, nnx.Param), snapshot(model, nnx.BatchStat))


def test_frozen_backbone_is_unchanged_by_a_step(frozen_all):
  model, (params, stats), (new_params, new_stats) = frozen_all
  assert not any(changed(params, new_params, ("backbone",)).values())
  assert not any(changed(stats, new_stats, ("backbone",)).values())
  assert all(changed(params, new_params, ("head",)).values())  # The head did train.


def test_frozen_batchnorm_stays_in_inference_mode(frozen_all):
  model = frozen_all[0]
  model.eval()
  model.train()
  norms = [m for _, m in nnx.iter_modules(model.backbone) if isinstance(m, nnx.BatchNorm)]
  assert norms and all(m.use_running_average for m in norms)


def test_freeze_up_to_a_layer():
  model = make_model("block_2_add")
  params, stats = snapshot(model, nnx.Param), snapshot(model, nnx.BatchStat)
  train_step(model)
  new_params, new_stats = snapshot(model, nnx.Param), snapshot(model, nnx.BatchStat)
  names = model.backbone.layer_names
  cut = names.index("block_2_add")
  for name in names:
    prefix = ("backbone", "layers", name)
    param_changes = changed(params, new_params, prefix)
    stat_changes = changed(stats, new_stats, prefix)
    if names.index(name) <= cut:
      assert not any(param_changes.values()) and not any(stat_changes.values()), name
    elif name in model.backbone.layers:  # Later layers train, and their BatchNorm statistics move.
      assert any(param_changes.values()), name
      assert all(stat_changes.values()), name
  assert model.backbone.layers["block_2_project_BN"].use_running_average
  assert not model.backbone.layers["block_3_expand_BN"].use_running_average


def test_unfrozen_batchnorm_statistics_do_move():
  model = make_model("")
  stats = snapshot(model, nnx.BatchStat)
  train_step(model)
  assert all(changed(stats, snapshot(model, nnx.BatchStat), ("backbone",)).values())


def test_freeze_names_a_layer_of_the_model():
  with pytest.raises(ValueError, match="no such layer"):
    make_model("block_2_addd")
