"""The pictures of a run, with matplotlib (Agg): each function writes one PNG and returns its path."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def read_history(metrics_jsonl: str) -> tuple[list[dict], list[dict]]:
  """(epoch records, batch records) of a run's metrics.jsonl."""
  epochs, batches = [], []
  if os.path.exists(metrics_jsonl):
    with open(metrics_jsonl) as f:
      for line in f:
        if line.strip():
          record = json.loads(line)
          (epochs if record["type"] == "epoch" else batches).append(record)
  return epochs, batches


def training_curves(epochs: list[dict], path: str) -> str | None:
  """Loss, accuracy, F1 (train vs val) and learning rate per epoch."""
  if not epochs:
    return None
  x = [r["epoch"] for r in epochs]
  fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
  for ax, name in zip(axes[:3], ("loss", "accuracy", "f1")):
    for split in ("train", "val"):
      key = f"{split}_{name}"
      if any(key in r for r in epochs):  # A resumed run may have gained or lost its validation split.
        ax.plot(x, [r.get(key, float("nan")) for r in epochs], marker="o", label=split)
    ax.set_title(name)
    ax.set_xlabel("epoch")
    ax.legend()
  axes[3].plot(x, [r["learning_rate"] for r in epochs], marker="o", color="tab:green")
  axes[3].set_title("learning rate")
  axes[3].set_xlabel("epoch")
  return _save(fig, path)


def batch_curves(batches: list[dict], path: str) -> str | None:
  """Training loss and accuracy per logged step (as the insects tutorial's batch-statistics callback)."""
  if not batches:
    return None
  steps = [r["step"] for r in batches]
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
  axes[0].plot(steps, [r["loss"] for r in batches])
  axes[0].set(title="training loss", xlabel="step")
  axes[1].plot(steps, [r["accuracy"] for r in batches], color="tab:orange")
  axes[1].set(title="training accuracy", xlabel="step", ylim=(0, 1))
  return _save(fig, path)


def lr_find_curve(result: dict, path: str) -> str:
  """The learning-rate finder's smoothed loss against the rate (log scale), its suggestions marked."""
  fig, ax = plt.subplots(figsize=(6, 3.8))
  ax.plot(result["learning_rates"], result["smoothed_losses"], label="smoothed loss")
  ax.plot(result["learning_rates"], result["losses"], alpha=0.3, label="batch loss")
  for (name, lr), color in zip(result["suggestions"].items(), ("tab:red", "tab:green", "tab:purple")):
    ax.axvline(lr, color=color, linestyle="--", label=f"{name.replace('_', ' ')}: {lr:.2g}")
  smooth = [v for v in result["smoothed_losses"] if np.isfinite(v)]
  if smooth:  # The smoothed curve decides the scale; single batches may spike far above it.
    ax.set_ylim(min(smooth) * 0.9, min(max(smooth), 4 * min(smooth)) * 1.1)
  ax.set(xscale="log", xlabel="learning rate", ylabel="loss", title="learning-rate finder")
  ax.legend(fontsize=8)
  return _save(fig, path)


def confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: str, normalized: str = "") -> str:
  """Counts, or fractions `normalized` by "true" class (rows) or of "all" examples."""
  size = max(4.0, 0.45 * len(class_names) + 2)
  fig, ax = plt.subplots(figsize=(size + 1, size))
  from sklearn.metrics import ConfusionMatrixDisplay  # Here: the training report needs no sklearn (1 s to import).

  ConfusionMatrixDisplay(np.asarray(matrix), display_labels=list(class_names)).plot(
    ax=ax,
    cmap="Blues",
    colorbar=True,
    values_format=".2f" if normalized else "d",
    xticks_rotation=45 if len(class_names) > 4 else 0,
  )
  titles = {"": "", "true": " (normalized by true class)", "all": " (fractions of all examples)"}
  ax.set_title("confusion matrix" + titles[normalized])
  return _save(fig, path)


def roc_pr_curves(curves: dict, path: str) -> str | None:
  """ROC and precision-recall curves, one line per class (one for binary)."""
  if not curves.get("roc"):
    return None
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
  for name, c in curves["roc"].items():
    axes[0].plot(c["fpr"], c["tpr"], label=f"{name} (AUC {c['auc']:.3f})")
  axes[0].plot([0, 1], [0, 1], "--", color="grey")
  axes[0].set(title="ROC", xlabel="false positive rate", ylabel="true positive rate")
  for name, c in curves["pr"].items():
    axes[1].plot(c["recall"], c["precision"], label=f"{name} (AP {c['ap']:.3f})")
  axes[1].set(title="precision-recall", xlabel="recall", ylabel="precision")
  for ax in axes:
    ax.legend(fontsize=7, loc="lower right" if ax is axes[0] else "lower left")
  return _save(fig, path)


def reliability_diagram(table: dict, ece: float, path: str) -> str:
  edges = np.asarray(table["edges"])
  centres = (edges[:-1] + edges[1:]) / 2
  counts = np.asarray(table["count"])
  fig, ax = plt.subplots(figsize=(4.6, 4.4))
  used = counts > 0
  ax.bar(
    centres[used], np.asarray(table["accuracy"])[used], width=edges[1] - edges[0], edgecolor="black", alpha=0.7, label="accuracy"
  )
  ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
  ax.set(title=f"reliability (ECE {ece:.3f})", xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
  ax.legend(loc="upper left")
  return _save(fig, path)


def image_grid(
  images: np.ndarray, titles: Sequence[str], path: str, xlabels: Sequence[str] | None = None, columns: int = 8, title: str = ""
) -> str:
  """A grid of images (NHWC, any range: each is scaled to [0, 1] for display) with titles."""
  n = len(images)
  rows = max(1, -(-n // columns))
  fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.5 * rows), squeeze=False)
  for i, ax in enumerate(axes.ravel()):
    ax.set_xticks([])
    ax.set_yticks([])
    if i >= n:
      ax.axis("off")
      continue
    image = np.asarray(images[i], np.float32)
    low, high = float(image.min()), float(image.max())
    image = (image - low) / (high - low) if high > low else np.zeros_like(image)
    ax.imshow(image[:, :, 0] if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None)
    ax.set_title(titles[i], fontsize=8)
    if xlabels is not None:
      ax.set_xlabel(xlabels[i], fontsize=8)
  if title:
    fig.suptitle(title)
  return _save(fig, path)


def scatter_2d(points: np.ndarray, labels: np.ndarray, class_names: Sequence[str], path: str, title: str) -> str:
  """2-D embedding coloured by class (PCA / UMAP of features)."""
  fig, ax = plt.subplots(figsize=(6, 5))
  for c, name in enumerate(class_names):
    inside = labels == c
    if inside.any():
      ax.scatter(points[inside, 0], points[inside, 1], s=10, label=name, alpha=0.8)
  ax.set_title(title)
  ax.legend(fontsize=7, markerscale=2)
  return _save(fig, path)
