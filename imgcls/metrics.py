"""Classification metrics from predictions: accuracy, precision, recall, F1, loss.

Epoch metrics are computed from a confusion matrix, which the jitted steps accumulate on
device; they equal scikit-learn's `precision_recall_fscore_support` on the same predictions
(binary: the positive class; multi-class: macro average, 0 where a class has no predictions).
"""

from __future__ import annotations

import numpy as np


def num_outputs(label_mode: str, num_classes: int) -> int:
  """Output units of a model: one sigmoid unit for binary labels, else one logit per class."""
  return 1 if label_mode == "binary" else num_classes


def probabilities(logits: np.ndarray) -> np.ndarray:
  """Class probabilities (N, classes) from logits; one logit means a sigmoid over 2 classes."""
  logits = np.asarray(logits, np.float64)
  if logits.shape[-1] == 1:
    p = 1.0 / (1.0 + np.exp(-logits[:, 0]))
    return np.stack([1.0 - p, p], axis=-1)
  z = logits - logits.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def predicted_labels(probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
  """Argmax; with a `threshold` (binary models), positive when p(class 1) >= threshold."""
  if threshold is not None:
    return (probs[:, 1] >= threshold).astype(np.int64)
  return np.argmax(probs, axis=-1)


def from_confusion(confusion: np.ndarray, loss_sum: float, count: float) -> dict[str, float]:
  """loss, accuracy, precision, recall, f1 from a confusion matrix (rows true, columns predicted)."""
  confusion = np.asarray(confusion, np.float64)
  total = confusion.sum()
  true_pos = np.diag(confusion)
  predicted = confusion.sum(axis=0)
  actual = confusion.sum(axis=1)
  precision = np.divide(true_pos, predicted, out=np.zeros_like(true_pos), where=predicted > 0)
  recall = np.divide(true_pos, actual, out=np.zeros_like(true_pos), where=actual > 0)
  denom = precision + recall
  f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(true_pos), where=denom > 0)
  if len(confusion) == 2:  # Binary: the positive class, as Keras's F1Score(threshold=0.5).
    p, r, f = precision[1], recall[1], f1[1]
  else:
    p, r, f = precision.mean(), recall.mean(), f1.mean()
  return {
    "loss": float(loss_sum / max(count, 1.0)),
    "accuracy": float(true_pos.sum() / max(total, 1.0)),
    "precision": float(p),
    "recall": float(r),
    "f1": float(f),
  }


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  out = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(out, (np.asarray(labels), np.asarray(predictions)), 1)
  return out
