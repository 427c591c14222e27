"""A trained run, back from its workdir: its config, its classes, and its model with the weights
and normalisation of one checkpoint, checked against each other before anything is computed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Callable, Iterable, Sequence

import jax.numpy as jnp
import ml_collections
from flax import nnx

from imgcls import checkpoint as ckpt_lib
from imgcls import config as config_lib
from imgcls import metrics, steps
from imgcls.data import augment


class RunError(ValueError):
  """A workdir that holds no usable run; the message says what is missing."""


def saved_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's `config.json` on top of today's defaults (keys this version lacks are dropped)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise RunError(f"{workdir!r} has no config.json: it is not a training workdir (train with --mode=train first).")
  try:
    with open(path) as f:
      saved = json.load(f)
  except ValueError as e:
    raise RunError(f"{path} is not valid JSON ({e}).") from e
  if not isinstance(saved, dict):
    raise RunError(f"{path} holds a {type(saved).__name__}, not a config (a JSON object).")
  config = config_lib.default_config()
  unknown = _merge(config, saved, "")
  if unknown:
    warnings.warn(f"{path} has keys this version does not know, ignored: {', '.join(unknown)}.", stacklevel=2)
  return config


def _merge(config: ml_collections.ConfigDict, saved: dict, prefix: str) -> list[str]:
  unknown = []
  for key, value in saved.items():
    if key not in config:
      unknown.append(prefix + key)
    elif isinstance(config[key], ml_collections.ConfigDict):
      if not isinstance(value, dict):
        raise RunError(f"config.json: {prefix}{key} is {value!r}, not a section of keys.")
      unknown += _merge(config[key], value, f"{prefix}{key}.")
    else:
      config[key] = tuple(value) if isinstance(config[key], tuple) else value
  return unknown


def overridden_keys(argv: Iterable[str], flag: str = "config") -> list[str]:
  """The dotted keys set on the command line as `--config.KEY=VALUE` (or `--config.KEY VALUE`)."""
  keys = []
  for arg in argv:
    if arg.startswith(f"--{flag}."):
      keys.append(arg[len(flag) + 3 :].split("=", 1)[0])
  return keys


def with_overrides(
  base: ml_collections.ConfigDict, given: ml_collections.ConfigDict | None, keys: Sequence[str]
) -> ml_collections.ConfigDict:
  """`base` with the values of `keys` taken from `given` (the parsed command-line config)."""
  config = ml_collections.ConfigDict(base.to_dict())
  for key in keys:
    value = given
    for part in key.split("."):
      value = value[part]
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value
  config_lib.check_config(config)
  return config


def run_config(workdir: str | None, given: ml_collections.ConfigDict | None, argv: Iterable[str]) -> ml_collections.ConfigDict:
  """The config a mode works with: the workdir's saved config with the command line's overrides
  on top, or the command line's config when the workdir has none."""
  if workdir and os.path.isfile(os.path.join(workdir, "config.json")):
    return with_overrides(saved_config(workdir), given, overridden_keys(argv))
  if given is None:
    if workdir and not os.path.isdir(workdir):
      raise RunError(f"No run at {workdir!r}: the folder does not exist.")
    where = f"{workdir!r} has no config.json" if workdir else "no --workdir was given"
    raise RunError(f"{where}; pass --config=configs/<recipe>.py.")
  return given


def run_class_names(workdir: str) -> list[str] | None:
  """The classes a workdir's run was trained on (summary.json, else its latest checkpoint)."""
  path = os.path.join(workdir, "summary.json")
  if os.path.isfile(path):
    with open(path) as f:
      names = json.load(f).get("class_names")
    if names:
      return list(names)
  try:
    return list(ckpt_lib.read_meta(ckpt_lib.resolve(workdir)).class_names or []) or None
  except (ckpt_lib.CheckpointError, OSError):
    return None


def _difference(theirs: Sequence[str], ours: Sequence[str]) -> str:
  """What `theirs` lacks and has besides, compared with `ours`."""
  missing = [c for c in ours if c not in theirs]
  extra = [c for c in theirs if c not in ours]
  if not missing and not extra:
    return "the same classes in another order"
  return "; ".join(part for part in (f"missing {missing}" if missing else "", f"extra {extra}" if extra else "") if part)


def check_classes(found: Sequence[str], expected: Sequence[str], what: str) -> None:
  """Fails naming the classes that differ between `found` (in `what`) and the run's `expected`."""
  if list(found) != list(expected):
    raise RunError(f"{what} has the classes {list(found)}, the run {list(expected)}: {_difference(found, expected)}.")


@dataclasses.dataclass
class Run:
  """A trained model ready for inference, and what it was trained with."""

  config: ml_collections.ConfigDict
  class_names: list[str]
  model: nnx.Module  # The Classifier, in eval mode, with the checkpoint's weights.
  state: steps.TrainState  # params, frozen and stats of the checkpoint (no optimizer state).
  eval_graphdef: nnx.GraphDef
  prepare: Callable  # prepare(images, None): the run's normalisation.
  checkpoint: str  # The checkpoint folder.
  step: int
  meta: ckpt_lib.RunMeta

  @property
  def binary(self) -> bool:
    return metrics.num_outputs(self.config.data.label_mode, len(self.class_names)) == 1


def load(config: ml_collections.ConfigDict, workdir: str, checkpoint: str | None = None, step: int | None = None) -> Run:
  """The run in `workdir` with the weights of `checkpoint` (a workdir or checkpoint folder;
  default `workdir`'s best, or its `step`), its class names and normalisation from the meta."""
  if not os.path.isdir(workdir):
    raise RunError(f"No run at {workdir!r}: the folder does not exist.")
  source = checkpoint or workdir
  if not os.path.exists(source):
    raise ckpt_lib.CheckpointError(f"No checkpoint at {source!r}: it does not exist.")
  folder = ckpt_lib.resolve(source, step)
  meta = ckpt_lib.read_meta(folder)
  theirs = list(meta.class_names or [])
  ours = list(config.data.class_names) or run_class_names(workdir) or theirs
  if not theirs:
    raise ckpt_lib.CheckpointError(f"The checkpoint {folder} has no class names in its meta; it is not a trained run's.")
  if theirs != ours:
    raise ckpt_lib.CheckpointError(
      f"The checkpoint {folder} was trained on {len(theirs)} classes {theirs}, this run on {len(ours)} {ours}: "
      f"{_difference(theirs, ours)}."
    )
  model = steps.create_model(config, len(ours), load_weights=False)  # The checkpoint holds every weight.
  _, eval_graphdef, params, frozen, stats = steps.split_model(model)
  state = steps.TrainState(
    step=jnp.zeros((), jnp.int32), params=params, frozen=frozen, stats=stats, opt_state=None, epoch_sums={}, window_sums={}
  )
  state = ckpt_lib.load_weights(state, folder)
  model = nnx.merge(eval_graphdef, state.params, state.frozen, state.stats)

  def missing_stats():
    raise ckpt_lib.CheckpointError(f"The checkpoint {folder} has no feature-wise normalisation statistics in its meta.")

  normalize = augment.make_normalize(config.data, missing_stats, meta.normalization)
  prepare = steps.make_prepare(augment.Augment(), normalize, 255.0 * config.data.rescale, on_device=False)
  name = os.path.basename(folder)
  return Run(config, ours, model, state, eval_graphdef, prepare, folder, int(name) if name.isdigit() else -1, meta)
