"""The ImageNet class names shipped with the package, and decode_predictions."""

from __future__ import annotations

import numpy as np
from paths import shared

from imgcls.models import imagenet


def test_class_names_are_the_shared_labels_without_background():
  lines = shared("data", "imagenet_samples", "imagenet_labels_1001.txt").read_text().splitlines()
  assert lines[0] == "background"
  assert imagenet.class_names() == tuple(lines[1:1001])


def test_class_names_are_shipped():
  names = imagenet.class_names()
  assert len(names) == 1000
  assert names[0].startswith("tench") and names[19] == "chickadee" and names[999].startswith("toilet tissue")


def test_decode_predictions():
  probs = np.zeros((2, 1000), np.float32)
  probs[0, [19, 88, 5]] = [0.7, 0.2, 0.1]
  probs[1, 985] = 1.0
  decoded = imagenet.decode_predictions(probs, top=2)
  assert decoded[0] == [(19, "chickadee", np.float32(0.7)), (88, "macaw", np.float32(0.2))]
  assert decoded[1][0][:2] == (985, "daisy")
