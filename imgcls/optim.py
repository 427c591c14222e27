"""The optimizer and its learning-rate schedule, from `config.optimizer`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx


def learning_rate_schedule(opt_config: ml_collections.ConfigDict, steps_per_epoch: int, epochs: int) -> optax.Schedule:
  """The base learning rate per step (reduce-on-plateau scales it further, on the host)."""
  lr = opt_config.learning_rate
  total = max(1, steps_per_epoch * epochs)
  warmup = int(round(opt_config.warmup_epochs * steps_per_epoch))
  name = opt_config.schedule
  if name == "constant":
    return optax.constant_schedule(lr)
  if name == "warmup_constant":
    return optax.join_schedules([optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.constant_schedule(lr)], [warmup])
  if name == "cosine":
    return optax.cosine_decay_schedule(lr, total, alpha=opt_config.min_learning_rate / lr if lr else 0.0)
  if name == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 1), total, end_value=opt_config.min_learning_rate)
  if name == "one_cycle":
    pct_start = min(warmup / total, 0.99) if warmup else 0.25
    return optax.cosine_onecycle_schedule(total, lr, pct_start=pct_start, div_factor=25.0, final_div_factor=1e5)
  raise ValueError(f"Unknown schedule {name!r}.")


def make_optimizer(opt_config: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
  """adam | adamw | sgd with the schedule, optional gradient clipping."""
  if opt_config.name == "adam":
    tx = optax.adam(schedule, b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.eps)
  elif opt_config.name == "adamw":
    tx = optax.adamw(schedule, b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.eps, weight_decay=opt_config.weight_decay)
  elif opt_config.name == "sgd":
    tx = optax.sgd(schedule, momentum=opt_config.momentum or None, nesterov=opt_config.nesterov)
  else:
    raise ValueError(f"Unknown optimizer {opt_config.name!r}.")
  if opt_config.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(opt_config.grad_clip_norm), tx)
  return tx


def update_scales(params: nnx.State, config: ml_collections.ConfigDict, blocks: dict[str, int] | None = None) -> nnx.State:
  """Per-parameter multipliers of the update: backbone_learning_rate / learning_rate on the
  backbone; with `model.layer_decay` (and the backbone's `blocks`, `KerasNet.blocks`), further
  layer_decay ** (blocks after this one + 1), as BEiT's and timm's layer-wise decay: the top
  block learns at layer_decay times the head's rate, the stem slowest."""
  ratio = 1.0
  backbone_lr = config.model.get("backbone_learning_rate", 0.0)
  if backbone_lr:
    ratio = backbone_lr / config.optimizer.learning_rate
  decay = config.model.get("layer_decay", 0.0)
  if decay and not blocks:
    raise ValueError(f"config.model.layer_decay applies to the Keras application backbones, not {config.model.name}.")
  depth = max(blocks.values()) + 1 if decay else 0

  def scale(path, _):
    keys = [getattr(p, "key", None) for p in path]
    if keys[0] != "backbone":
      return jnp.float32(1.0)
    if decay and len(keys) > 2 and keys[1] == "layers" and keys[2] in blocks:
      return jnp.float32(ratio * decay ** (depth - blocks[keys[2]]))
    return jnp.float32(ratio)

  return jax.tree_util.tree_map_with_path(scale, params)
