"""Losses, probabilities, predicted labels and classification metrics: the one place for each,
used by the jitted steps (with `xp=jax.numpy`) and on the host (numpy).

Epoch metrics are computed from a confusion matrix, which the jitted steps accumulate on
device; they equal scikit-learn's `precision_recall_fscore_support` on the same predictions
(binary: the positive class; multi-class: macro average, 0 where a class has no predictions).
"""

from __future__ import annotations

import numpy as np


def num_outputs(label_mode: str, num_classes: int) -> int:
  """Output units of a model: one sigmoid unit for binary labels, else one logit per class."""
  return 1 if label_mode == "binary" else num_classes


def probabilities(logits, xp=np):
  """Class probabilities (N, classes) from logits; one logit means a sigmoid over 2 classes.

  `xp` is the array module: numpy (float64, on the host) or jax.numpy (in jitted steps and
  exports, where jax.nn's sigmoid and softmax become the converters' logistic and softmax ops)."""
  binary = logits.shape[-1] == 1
  if xp is not np:
    import jax

    if binary:
      p = jax.nn.sigmoid(xp.squeeze(logits, -1))  # squeeze, not [:, 0]: a gather for a symbolic (exported) batch
      return xp.stack([1.0 - p, p], axis=-1)
    return jax.nn.softmax(logits, axis=-1)
  logits = np.asarray(logits, np.float64)
  if binary:
    p = 1.0 / (1.0 + np.exp(-logits[:, 0]))
    return np.stack([1.0 - p, p], axis=-1)
  e = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def predicted_labels(probs, threshold: float | None = None, xp=np):
  """Argmax; with a `threshold` (binary models), positive when p(class 1) >= threshold."""
  if threshold is not None:
    return (probs[:, 1] >= threshold).astype(xp.int32)
  return xp.argmax(probs, axis=-1).astype(xp.int32)


def targets(labels, outputs: int, label_smoothing: float = 0.0, xp=np):
  """Training targets of integer labels: (N,) probabilities of class 1 for one sigmoid unit, else
  (N, outputs) one-hot rows; label smoothing as Keras's and optax's (towards 0.5, or 1/classes)."""
  labels, dtype = xp.asarray(labels), np.float64 if xp is np else np.float32
  if outputs == 1:
    t = labels.astype(dtype)
    return t * (1 - label_smoothing) + 0.5 * label_smoothing if label_smoothing else t
  t = (labels[:, None] == xp.arange(outputs)[None, :]).astype(dtype)
  return t * (1 - label_smoothing) + label_smoothing / outputs if label_smoothing else t


def cross_entropy(logits, soft_targets, xp=np):
  """Cross-entropy of every example against (possibly soft, e.g. mixed) `targets`: sigmoid for one
  unit, else softmax. float64 with numpy."""
  if xp is np:
    logits, soft_targets = np.asarray(logits, np.float64), np.asarray(soft_targets, np.float64)
  if logits.shape[-1] == 1:
    z = logits[:, 0]
    return xp.logaddexp(0.0, z) - soft_targets * z  # -t log(sigmoid(z)) - (1 - t) log(1 - sigmoid(z))
  top = logits.max(axis=-1, keepdims=True)
  log_sum = xp.log(xp.exp(logits - top).sum(axis=-1)) + top[:, 0]
  return log_sum - (soft_targets * logits).sum(axis=-1)


def example_losses(logits, labels, label_smoothing: float = 0.0, xp=np):
  """Cross-entropy of every example from its logits and integer labels (see `targets`)."""
  return cross_entropy(logits, targets(labels, logits.shape[-1], label_smoothing, xp=xp), xp=xp)


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


def from_logits(logits: np.ndarray, labels: np.ndarray, num_classes: int, threshold: float) -> dict[str, float]:
  """loss, accuracy, precision, recall, f1 of a split's logits against its labels (`threshold`:
  for one sigmoid unit), as the train step sums them."""
  losses = example_losses(logits, labels)
  binary_threshold = threshold if np.shape(logits)[-1] == 1 else None
  predictions = predicted_labels(probabilities(logits), binary_threshold)
  return from_confusion(confusion_matrix(labels, predictions, num_classes), float(losses.sum()), len(losses))


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  out = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(out, (np.asarray(labels), np.asarray(predictions)), 1)
  return out


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> tuple[float, dict]:
  """ECE of the top-class confidence, and the reliability table (per-bin confidence, accuracy, count)."""
  confidence = probs.max(axis=1)
  correct = (probs.argmax(axis=1) == labels).astype(np.float64)
  edges = np.linspace(0.0, 1.0, bins + 1)
  which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
  table = {"confidence": [], "accuracy": [], "count": [], "edges": edges.tolist()}
  ece = 0.0
  for b in range(bins):
    inside = which == b
    n = int(inside.sum())
    conf = float(confidence[inside].mean()) if n else 0.0
    acc = float(correct[inside].mean()) if n else 0.0
    ece += n / max(len(labels), 1) * abs(acc - conf)
    table["confidence"].append(conf)
    table["accuracy"].append(acc)
    table["count"].append(n)
  return float(ece), table


def evaluation_report(labels: np.ndarray, probs: np.ndarray, class_names: list[str], threshold: float | None = None) -> dict:
  """Everything eval reports, computed with scikit-learn from labels and class probabilities.

  `threshold` applies to binary (one sigmoid unit) models. Returns plain JSON-able data:
  accuracy, the classification report (per class and macro/weighted averages), confusion matrix
  (counts and row-normalised), ROC AUC (binary; one-vs-rest macro), average precision, log loss,
  expected calibration error, and the curves for plotting.
  """
  from sklearn import metrics as skm

  labels = np.asarray(labels)
  probs = np.asarray(probs, np.float64)
  k = len(class_names)
  predictions = predicted_labels(probs, threshold)
  present = np.unique(labels)
  report = skm.classification_report(
    labels, predictions, labels=list(range(k)), target_names=class_names, output_dict=True, zero_division=0
  )
  text = skm.classification_report(
    labels, predictions, labels=list(range(k)), target_names=class_names, digits=4, zero_division=0
  )
  confusion = skm.confusion_matrix(labels, predictions, labels=list(range(k)))
  rows = confusion.sum(axis=1, keepdims=True)
  out = {
    "count": int(len(labels)),
    "accuracy": float(skm.accuracy_score(labels, predictions)),
    "macro_precision": report["macro avg"]["precision"],
    "macro_recall": report["macro avg"]["recall"],
    "macro_f1": report["macro avg"]["f1-score"],
    "weighted_f1": report["weighted avg"]["f1-score"],
    "log_loss": float(skm.log_loss(labels, np.clip(probs, 1e-15, 1.0), labels=list(range(k)))),
    "classification_report": report,
    "classification_report_text": text,
    "confusion_matrix": confusion.tolist(),
    "confusion_matrix_normalized": np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0).tolist(),
    # Fractions of all examples, as confusion_matrix(normalize="all") in the pollen tutorial.
    "confusion_matrix_normalized_all": skm.confusion_matrix(labels, predictions, labels=list(range(k)), normalize="all").tolist(),
    "threshold": threshold,
    "curves": {"roc": {}, "pr": {}},
  }
  if k == 2:
    positive = probs[:, 1]
    out["precision"] = report[class_names[1]]["precision"]
    out["recall"] = report[class_names[1]]["recall"]
    out["f1"] = report[class_names[1]]["f1-score"]
  if len(present) > 1:
    if k == 2:
      out["roc_auc"] = float(skm.roc_auc_score(labels, positive))
      out["average_precision"] = float(skm.average_precision_score(labels, positive))
      curves = {class_names[1]: (labels == 1, positive)}
    else:
      onehot = np.eye(k)[labels]
      out["roc_auc"] = float(skm.roc_auc_score(onehot[:, present], probs[:, present], average="macro"))
      out["average_precision"] = float(skm.average_precision_score(onehot[:, present], probs[:, present], average="macro"))
      curves = {class_names[c]: (labels == c, probs[:, c]) for c in present}
    for name, (truth, score) in curves.items():
      fpr, tpr, _ = skm.roc_curve(truth, score)
      precision, recall, _ = skm.precision_recall_curve(truth, score)
      out["curves"]["roc"][name] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": float(skm.auc(fpr, tpr))}
      out["curves"]["pr"][name] = {
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "ap": float(skm.average_precision_score(truth, score)),
      }
  out["ece"], out["reliability"] = expected_calibration_error(probs, labels)
  return out
