"""Orbax checkpoints of a run: the latest N and the best by a validation metric.

`<workdir>/checkpoints/latest/<step>` and `<workdir>/checkpoints/best/<step>` each hold `state`
(the train state pytree) and `meta` (a `RunMeta` as JSON: epoch, data-iterator position,
schedules, metrics, class names, normalisation), written and read only here.
Saving is asynchronous; an interrupted save leaves no committed checkpoint, so the previous one
is what a resumed run restores.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from imgcls import parallel


class CheckpointError(ValueError):
  """A checkpoint that cannot be used for this run; the message names what differs."""


@dataclasses.dataclass
class RunMeta:
  """What a checkpoint holds besides the state: where training stands, and what inference needs."""

  epoch: int = 0  # Epochs finished: the one to run next.
  data_state: dict | None = None  # The data iterator's position inside `epoch` (a save mid-epoch).
  best: dict | None = None  # The best epoch so far: monitor, value, step, epoch, metrics.
  history: list[dict] = dataclasses.field(default_factory=list)  # One record per finished epoch.
  plateau: dict = dataclasses.field(default_factory=dict)  # Reduce-on-plateau's counters.
  early_stopping: dict = dataclasses.field(default_factory=dict)  # Early stopping's counters.
  class_names: list[str] = dataclasses.field(default_factory=list)
  normalization: dict | None = None  # Feature-wise mean and std of the training images.
  stage: int = 0  # The training stage (train.frozen_epochs: 0 the head alone, 1 the network).
  stage_start_step: int = 0  # The step this stage began at (its schedule counts from it).

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, data: dict) -> RunMeta:
    known = {field.name for field in dataclasses.fields(cls)}
    return cls(**{key: value for key, value in data.items() if key in known})


def _abstract(tree: Any) -> Any:
  """Shapes, dtypes and (for jax arrays) shardings: what a restore fills in."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None)), tree)


class Checkpoints:
  """The latest and best checkpoints of one workdir."""

  def __init__(self, workdir: str, max_to_keep: int = 2, async_save: bool = True):
    root = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.latest_dir = os.path.join(root, "latest")
    self.best_dir = os.path.join(root, "best")
    self._latest = ocp.CheckpointManager(
      self.latest_dir,
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True),
    )
    self._best = ocp.CheckpointManager(
      self.best_dir,
      options=ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=async_save, create=True),
    )

  def save(self, step: int, state: Any, meta: RunMeta, *, best: bool = False) -> None:
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta.to_json()))
    self._latest.save(step, args=args, force=True)
    if best:
      # One save of a step at a time: with several processes, both managers would use the same
      # commit barrier for this step.
      self._latest.wait_until_finished()
      self._best.save(step, args=args, force=True)

  def latest_step(self) -> int | None:
    return self._latest.latest_step()

  def restore(self, state_like: Any, step: int | None = None, *, best: bool = False) -> tuple[Any, RunMeta]:
    """The state (shaped like `state_like`) and meta of `step` (default: the latest that can be
    read: a damaged newer one is moved aside to `checkpoints/damaged/`, with a warning)."""
    manager = self._best if best else self._latest
    steps = sorted(manager.all_steps(), reverse=True) if step is None else [step]
    if not steps:
      raise CheckpointError(f"No checkpoint in {self.best_dir if best else self.latest_dir}.")
    errors = []
    for candidate in steps:
      try:
        restored = manager.restore(
          candidate, args=ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(state_like)), meta=ocp.args.JsonRestore())
        )
      except Exception as e:  # Orbax and TensorStore raise many types for unfitting or damaged files.
        errors.append((os.path.join(str(manager.directory), str(candidate)), e))
        continue
      for folder, error in errors:
        aside = _unused(os.path.join(os.path.dirname(self.latest_dir), "damaged", "_".join(folder.split(os.sep)[-2:])))
        if jax.process_index() == 0:
          os.makedirs(os.path.dirname(aside), exist_ok=True)
          os.rename(folder, aside)
        logging.warning(
          "Could not read the checkpoint %s (%s): moved it to %s and restored step %d.",
          folder,
          _first_line(error),
          aside,
          candidate,
        )
      if errors:
        parallel.sync_processes("imgcls_checkpoint_moved_aside")
        manager.reload()
      return restored.state, RunMeta.from_json(restored.meta)
    folder, error = errors[0]
    raise CheckpointError(
      f"The checkpoint {folder} cannot be restored into this run: its model or optimizer differ from this config's, "
      f"or its files are damaged ({_first_line(error)}). Use another workdir, with "
      f"--config.init_from={os.path.dirname(os.path.dirname(os.path.dirname(folder)))} to start from its best weights."
    ) from error

  def wait(self) -> None:
    self._latest.wait_until_finished()
    self._best.wait_until_finished()

  def close(self) -> None:
    self._latest.close()
    self._best.close()


def resolve(path: str, step: int | None = None) -> str:
  """A checkpoint folder (one holding `state/`) from a workdir, a checkpoints folder or itself.

  A workdir resolves to its best checkpoint (or its latest when it has no best), or to `step`.
  """
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(os.path.join(path, "state")):
    return path
  for candidates in (["best", "latest"], ["checkpoints/best", "checkpoints/latest"]):
    if step is not None:
      candidates = [c for c in candidates if c.endswith("latest")] + [c for c in candidates if c.endswith("best")]
    for sub in candidates:
      folder = os.path.join(path, sub)
      steps = _committed_steps(folder)
      if step is not None:
        if step in steps:
          return os.path.join(folder, str(step))
      elif steps:
        return os.path.join(folder, str(max(steps)))
  what = f"step {step}" if step is not None else "checkpoint"
  raise CheckpointError(f"Found no {what} under {path!r} (expected a workdir, or a folder holding state/).")


def _committed_steps(folder: str) -> list[int]:
  if not os.path.isdir(folder):
    return []
  return [int(d) for d in os.listdir(folder) if d.isdigit() and os.path.isdir(os.path.join(folder, d, "state"))]


def _unused(path: str) -> str:
  """`path`, or `path.1`, `path.2`, ... the first that does not exist."""
  candidate, number = path, 0
  while os.path.exists(candidate):
    number += 1
    candidate = f"{path}.{number}"
  return candidate


def _first_line(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  return f"{type(error).__name__}: {lines[0][:300] if lines else ''}"


def read_state(checkpoint_dir: str) -> dict:
  """The raw state pytree of a checkpoint folder, as nested dicts of arrays on this process's
  first device, whatever devices and processes saved it."""
  state_dir = os.path.join(checkpoint_dir, "state")
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)  # Orbax warns that the state folder has no metadata file of its own.
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      metadata = checkpointer.metadata(state_dir)
      item = getattr(metadata, "item_metadata", metadata)
      tree = getattr(item, "tree", item)
      if tree is None:
        raise ValueError("no readable metadata")
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
      return checkpointer.restore(state_dir, target)
  except Exception as e:  # Orbax and TensorStore raise many types for damaged files.
    raise CheckpointError(
      f"Cannot read the checkpoint {checkpoint_dir}; its files may be damaged ({_first_line(e)}). "
      "Pick another one with --step or --checkpoint."
    ) from e
  finally:
    logging.set_verbosity(verbosity)


def read_meta(checkpoint_dir: str) -> RunMeta:
  path = os.path.join(checkpoint_dir, "meta", "metadata")
  try:
    with open(path) as f:
      return RunMeta.from_json(json.load(f))
  except (OSError, ValueError) as e:
    raise CheckpointError(
      f"The checkpoint {checkpoint_dir} has no readable meta ({_first_line(e)}): it is not a complete imgcls checkpoint."
    ) from e


def load_weights(state, path: str, prefer_ema: bool = True):
  """`state` (a `steps.TrainState`) with the model variables of another run's checkpoint, matched
  by name and shape; fails listing every missing, unexpected or mis-shaped one. A checkpoint of a
  run with EMA (`train.ema_decay`) gives its moving averages, the weights its validation judged
  (`prefer_ema=False`: its trained weights)."""
  source = read_state(resolve(path))
  if prefer_ema and source.get("ema"):
    source = {**source, "params": source["ema"]["params"], "stats": source["ema"]["stats"]}
  theirs: dict[str, np.ndarray] = {}
  for group in ("params", "frozen", "stats"):
    for keys, value in flax.traverse_util.flatten_dict(source.get(group, {}), sep="/").items():
      theirs[keys.removesuffix("/value")] = value
  problems = []
  wanted = set()

  def take(path_, variable):
    key = "/".join(str(p) for p in path_)
    wanted.add(key)
    if key not in theirs:
      problems.append(f"missing {key} {tuple(variable.shape)}")
      return variable
    if tuple(theirs[key].shape) != tuple(variable.shape):
      problems.append(f"shape of {key}: checkpoint {tuple(theirs[key].shape)}, model {tuple(variable.shape)}")
      return variable
    return jnp.asarray(theirs[key], variable.dtype)

  def load(group: nnx.State) -> nnx.State:
    flat = flax.traverse_util.flatten_dict(nnx.to_pure_dict(group))
    flat = {k: take(k, v) for k, v in flat.items()}
    nnx.replace_by_pure_dict(group, flax.traverse_util.unflatten_dict(flat))
    return group

  params, frozen, stats = load(state.params), load(state.frozen), load(state.stats)
  problems += [f"unexpected {k} {tuple(v.shape)}" for k, v in theirs.items() if k not in wanted]
  if problems:
    raise CheckpointError(f"The checkpoint at {path!r} does not fit this model:\n  " + "\n  ".join(problems))
  return state.replace(params=params, frozen=frozen, stats=stats)
