"""Evaluation metrics against hand counts and scikit-learn; report.html in a real headless browser."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from sklearn import metrics as skm

from imgcls import metrics

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_evaluation_report_hand_case():
  labels = np.array([0, 0, 1, 1, 1])
  probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.8, 0.2], [0.1, 0.9]])
  report = metrics.evaluation_report(labels, probs, ["neg", "pos"], threshold=0.5)
  assert report["accuracy"] == pytest.approx(3 / 5)
  assert report["confusion_matrix"] == [[1, 1], [1, 2]]
  assert report["precision"] == pytest.approx(2 / 3) and report["recall"] == pytest.approx(2 / 3)
  # ROC AUC by counting: positive/negative pairs ranked right (0.7>0.1, 0.7>0.6, 0.2>0.1, 0.9>both).
  assert report["roc_auc"] == pytest.approx(5 / 6)
  assert report["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.7, 0.2, 0.9])))
  assert report["confusion_matrix_normalized"][1] == pytest.approx([1 / 3, 2 / 3])
  assert np.sum(report["confusion_matrix_normalized_all"]) == pytest.approx(1.0)
  np.testing.assert_allclose(report["confusion_matrix_normalized_all"], np.asarray(report["confusion_matrix"]) / report["count"])
  assert report["threshold"] == 0.5 and metrics.evaluation_report(labels, probs, ["neg", "pos"], 0.65)[
    "accuracy"
  ] == pytest.approx(4 / 5)


def test_evaluation_report_agrees_with_sklearn_multiclass():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, 300)
  logits = rng.normal(size=(300, 4)) + 2.0 * np.eye(4)[labels]
  probs = metrics.probabilities(logits)
  report = metrics.evaluation_report(labels, probs, list("abcd"))
  predictions = probs.argmax(1)
  assert report["macro_f1"] == pytest.approx(skm.f1_score(labels, predictions, average="macro"))
  assert report["weighted_f1"] == pytest.approx(skm.f1_score(labels, predictions, average="weighted"))
  assert report["roc_auc"] == pytest.approx(skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
  assert report["log_loss"] == pytest.approx(skm.log_loss(labels, probs))
  assert report["classification_report"]["b"]["support"] == int((labels == 1).sum())
  assert set(report["curves"]["roc"]) == set("abcd")


def test_expected_calibration_error_by_hand():
  probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.6, 0.4], [0.3, 0.7]])
  labels = np.array([0, 1, 0, 1])
  ece, table = metrics.expected_calibration_error(probs, labels, bins=10)
  # Bins: 0.95 (2 images, accuracy 0.5), 0.6 (1, accuracy 1), 0.7 (1, accuracy 1).
  assert ece == pytest.approx((2 * abs(0.5 - 0.95) + abs(1 - 0.6) + abs(1 - 0.7)) / 4)
  assert sum(table["count"]) == 4


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_report_loads_in_headless_chromium_with_images(tmp_path, tree):
  from conftest import tiny_config
  from playwright.sync_api import sync_playwright

  from imgcls import evaluate, inspection, train

  config = tiny_config(tree, **{"train.epochs": 2})
  train.train_and_evaluate(config, str(tmp_path))
  inspection.inspect(config, str(tmp_path))
  evaluate.evaluate(config, str(tmp_path))  # Rewrites report.html with its section.
  path = str(tmp_path / "report.html")

  with sync_playwright() as p:
    browser = p.chromium.launch(
      executable_path=CHROMIUM,
      args=[
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
      ],
    )
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(f"file://{path}")
    sizes = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
    text = page.inner_text("body")
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    browser.close()
  assert problems == []
  # Curves x2, the inspected batch, eval's confusion x3, ROC/PR, reliability, random and hard-case grids.
  assert len(sizes) == 10 and all(done and w > 100 and h > 100 for done, w, h in sizes)
  assert "Evaluation: eval_val" in text and "Input samples" in text and "Checkpoints" in text and "train_loss" in text
  assert "images/s" in text and "macro avg" in text
  from PIL import Image

  shot = np.asarray(Image.open(tmp_path / "report.png").convert("RGB"))
  colourful = np.abs(shot.astype(int) - shot.mean(axis=2, keepdims=True)).max(axis=2) > 40
  assert colourful.sum() > 5000  # The plots' coloured lines and cells are on screen, not just text.
