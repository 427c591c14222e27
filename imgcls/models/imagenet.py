"""The 1000 ImageNet classes of Keras's `predictions` layer, and reading predictions as names."""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np


@functools.cache
def class_names() -> tuple[str, ...]:
  """ImageNet class names, index 0-999 as Keras's classifiers number them."""
  text = resources.files("imgcls.models").joinpath("imagenet_classes.txt").read_text(encoding="utf8")
  names = tuple(line.strip() for line in text.splitlines() if line.strip())
  if len(names) != 1000:
    raise RuntimeError(f"imagenet_classes.txt has {len(names)} classes, not 1000.")
  return names


def decode_predictions(probs, top: int = 5) -> list[list[tuple[int, str, float]]]:
  """Like keras.applications.imagenet_utils.decode_predictions: for each row of a (batch, 1000)
  array of probabilities, the `top` (class index, class name, probability), most likely first."""
  probs = np.asarray(probs)
  if probs.ndim != 2 or probs.shape[1] != 1000:
    raise ValueError(f"decode_predictions expects probabilities of shape (batch, 1000), not {probs.shape}.")
  names = class_names()
  out = []
  for row in probs:
    best = np.argsort(-row, kind="stable")[:top]
    out.append([(int(i), names[i], float(row[i])) for i in best])
  return out
