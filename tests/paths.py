"""Where the shared data and weights are: `<checkout>/../shared`, or $IMGCLS_SHARED."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("IMGCLS_SHARED", Path(__file__).resolve().parents[2] / "shared"))
IMAGENET_SAMPLES = SHARED / "data" / "imagenet_samples"
WEIGHTS = SHARED / "weights"


def shared(*parts: str) -> Path:
  """A path under shared/; skips the calling test when it is not there."""
  path = SHARED.joinpath(*parts)
  if not path.exists():
    pytest.skip(f"{path} is not there (shared/ beside the checkout, or set IMGCLS_SHARED).")
  return path
