"""Predicting classes for image files with a model: `predict` writes a CSV of the top classes."""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from imgcls.data.images import BadImageError, is_image_file, load_image
from imgcls.models import Classifier, build_model, imagenet


def image_files(inputs: str) -> list[str]:
  """`inputs` if it is an image file, else the image files under the folder `inputs`, sorted."""
  if os.path.isfile(inputs):
    if not is_image_file(inputs):
      raise ValueError(f"{inputs} is not an image file (by its extension).")
    return [inputs]
  if not os.path.isdir(inputs):
    raise FileNotFoundError(f"No image file or folder at {inputs}.")
  found = []
  for root, dirs, names in os.walk(inputs):
    dirs.sort()
    found += [os.path.join(root, name) for name in sorted(names) if is_image_file(name)]
  if not found:
    raise ValueError(f"No image files under {inputs}.")
  return found


def probabilities(logits: jax.Array) -> jax.Array:
  """Class probabilities: softmax, or for one sigmoid unit, (1 - p, p)."""
  if logits.shape[-1] == 1:
    p = jax.nn.sigmoid(logits)
    return jnp.concatenate([1.0 - p, p], axis=-1)
  return jax.nn.softmax(logits, axis=-1)


def _model_and_classes(config: ml_collections.ConfigDict, workdir: str | None) -> tuple[Classifier, Sequence[str]]:
  if workdir is None:
    if not config.model.include_top:
      raise ValueError(
        "predict without a workdir needs Keras's ImageNet classifier (config.model.include_top=True, "
        "e.g. configs/imagenet.py); pass the workdir of a trained run otherwise."
      )
    if not config.model.weights:
      warnings.warn("Predicting with a randomly initialised model: config.model.weights is empty.", stacklevel=3)
    return build_model(config, 1000, rngs=nnx.Rngs(config.seed)), imagenet.class_names()
  raise NotImplementedError(f"Loading a trained run from {workdir} for predict is not available yet.")


def predict(
  config: ml_collections.ConfigDict, *, inputs: str, output: str, workdir: str | None = None, top_k: int = 5
) -> list[dict]:
  """Top-`top_k` classes of every image in `inputs` (a file or a folder, searched recursively).

  Writes a CSV to `output` (path, class_1, prob_1, ..., class_k, prob_k) and returns its rows.
  Without `workdir` the model is the config's ImageNet classifier (configs/imagenet.py).
  """
  paths = image_files(inputs)
  model, class_names = _model_and_classes(config, workdir)
  model.eval()
  top_k = max(1, min(top_k, len(class_names)))
  batch_size = config.data.eval_batch_size or config.data.batch_size

  @nnx.jit
  def predict_batch(model, images):
    return probabilities(model(images))

  rows = []
  for start in range(0, len(paths), batch_size):
    batch_paths, images = [], []
    for path in paths[start : start + batch_size]:
      try:
        image = load_image(path, config.data.image_size, config.data.color_mode, config.data.interpolation)
      except BadImageError as e:
        if not config.data.skip_bad_images:
          raise
        warnings.warn(f"Skipping {e}", stacklevel=2)
        continue
      batch_paths.append(path)
      images.append(image * config.data.rescale)
    if not images:
      continue
    batch = np.zeros((batch_size, *images[0].shape), np.float32)  # Padded: one compiled shape.
    batch[: len(images)] = np.stack(images)
    probs = np.asarray(predict_batch(model, jnp.asarray(batch)))[: len(images)]
    for path, row in zip(batch_paths, probs):
      best = np.argsort(-row, kind="stable")[:top_k]
      record = {"path": path}
      for rank, index in enumerate(best, start=1):
        record[f"class_{rank}"] = class_names[index]
        record[f"prob_{rank}"] = float(row[index])
      rows.append(record)
  _write_csv(output, rows, top_k)
  return rows


def _write_csv(output: str, rows: list[dict], top_k: int) -> None:
  if os.path.dirname(output):
    os.makedirs(os.path.dirname(output), exist_ok=True)
  fields = ["path"] + [f"{kind}_{rank}" for rank in range(1, top_k + 1) for kind in ("class", "prob")]
  with open(output, "w", newline="", encoding="utf8") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
