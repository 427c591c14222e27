"""Where the shared data and weights are: `<checkout>/../shared`, or $IMGCLS_SHARED."""

from __future__ import annotations

import importlib.util
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


REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def load_recipe(name: str, arg: str | None = None):
  """`configs/<name>.py`'s get_config(arg), loaded by path as `--config=configs/<name>.py[:arg]` does."""
  spec = importlib.util.spec_from_file_location(f"recipe_{name}", CONFIGS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()
