"""Epoch metrics from confusion matrices agree with hand counts and with scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from imgcls import metrics


def test_hand_computed_binary_case():
  # 3 true positives, 1 false positive, 2 false negatives, 4 true negatives.
  labels = np.array([1, 1, 1, 0, 1, 1, 0, 0, 0, 0])
  preds = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
  m = metrics.from_confusion(metrics.confusion_matrix(labels, preds, 2), loss_sum=5.0, count=10)
  assert m["accuracy"] == pytest.approx(0.7)
  assert m["precision"] == pytest.approx(3 / 4)
  assert m["recall"] == pytest.approx(3 / 5)
  assert m["f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)
  assert m["loss"] == pytest.approx(0.5)


@pytest.mark.parametrize("num_classes", [2, 3, 7])
def test_agrees_with_sklearn(num_classes):
  rng = np.random.default_rng(num_classes)
  labels = rng.integers(0, num_classes, 500)
  preds = np.where(rng.random(500) < 0.6, labels, rng.integers(0, num_classes, 500))
  preds[preds == num_classes - 1] = 0  # A class that is never predicted: precision 0 by convention.
  m = metrics.from_confusion(metrics.confusion_matrix(labels, preds, num_classes), 0.0, 500)
  average = "binary" if num_classes == 2 else "macro"
  p, r, f, _ = precision_recall_fscore_support(labels, preds, average=average, zero_division=0)
  assert m["accuracy"] == pytest.approx(accuracy_score(labels, preds))
  assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((p, r, f))


def test_probabilities_and_threshold():
  probs = metrics.probabilities(np.array([[0.0], [2.0], [-1.0]]))
  np.testing.assert_allclose(probs[:, 1], 1 / (1 + np.exp(-np.array([0.0, 2.0, -1.0]))))
  np.testing.assert_allclose(probs.sum(1), 1.0)
  assert metrics.predicted_labels(probs).tolist() == [0, 1, 0]  # argmax: a tie goes to class 0
  assert metrics.predicted_labels(probs, threshold=0.5).tolist() == [1, 1, 0]  # p >= threshold
  assert metrics.predicted_labels(probs, threshold=0.9).tolist() == [0, 0, 0]
  softmax = metrics.probabilities(np.array([[1.0, 2.0, 3.0]]))
  np.testing.assert_allclose(softmax[0], np.exp([1, 2, 3]) / np.exp([1, 2, 3]).sum())
