"""Shared fixtures: small real image trees written by the tests, paths to ../shared data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("KERAS_BACKEND", "jax")
# One pytest process runs hundreds of compilations; with freed memory kept in one malloc arena
# (imgcls/host_memory.py) it compiles slower and holds several GB. Tests use glibc's defaults;
# test_cpu_kernels.py checks the setting itself in subprocesses.
os.environ.setdefault("IMGCLS_KEEP_HOST_MEMORY", "0")

from paths import REPO, SHARED  # noqa: E402  (one place for where shared/ is)

POLLEN = SHARED / "data" / "pollen"
FLOWERS = SHARED / "data" / "flowers17"


def needs(path: Path):
  return pytest.mark.skipif(not path.exists(), reason=f"{path} is not available")


def write_image(path: Path, pixels: np.ndarray, fmt: str | None = None) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(pixels).save(path, format=fmt)
  return path


def class_pattern(label: int, index: int, size: int = 24, seed: int = 0) -> np.ndarray:
  """A learnable image: class k is a bright band in colour channel k (plus noise)."""
  rng = np.random.default_rng(seed * 1000 + label * 100 + index)
  pixels = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
  band = slice(size // 4, 3 * size // 4)
  pixels[band, :, label % 3] = 200 + rng.integers(0, 55)
  if label >= 3:
    pixels[:, band, (label + 1) % 3] = 220
  return pixels


def write_tree(root: Path, classes: int = 3, per_class: int = 12, size: int = 24, ext: str = "png") -> Path:
  for label in range(classes):
    for i in range(per_class):
      write_image(root / f"class_{label}" / f"img_{i:03d}.{ext}", class_pattern(label, i, size))
  return root


@pytest.fixture(scope="session")
def tree(tmp_path_factory) -> Path:
  """3 classes x 12 PNGs of 24x24, learnable."""
  return write_tree(tmp_path_factory.mktemp("tree") / "images")


@pytest.fixture(scope="session")
def binary_tree(tmp_path_factory) -> Path:
  """2 classes x 24 JPEGs of 24x24."""
  return write_tree(tmp_path_factory.mktemp("binary") / "images", classes=2, per_class=24, ext="jpg")


@pytest.fixture(scope="session", autouse=True)
def imgcls_cache(tmp_path_factory):
  """Builtin datasets are written to a temporary cache for the whole session."""
  path = tmp_path_factory.mktemp("cache")
  os.environ["IMGCLS_CACHE"] = str(path)
  return path


def tiny_config(data_dir: Path | str, **overrides):
  """A fast config: 16x16 images, the insects CNN with 4 filters, 2 epochs."""
  from imgcls.config import default_config

  config = default_config()
  config.data.dir = str(data_dir)
  config.data.image_size = (16, 16)
  config.data.rescale = 1 / 255
  config.data.batch_size = 8
  config.data.num_threads = 2
  config.model.name = "insects_cnn"
  config.model.filters = 4
  config.model.head.hidden = (16,)
  config.train.epochs = 2
  config.train.progress = False
  config.train.log_every_steps = 2
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def save_run(config, workdir: Path, model, class_names: list[str], normalization: dict | None = None):
  """A workdir as training writes it (config.json, a best checkpoint at step 0) holding `model`'s
  weights, without training; returns the saved TrainState."""
  import jax.numpy as jnp

  from imgcls import checkpoint as ckpt_lib
  from imgcls import steps

  _, _, params, frozen, stats = steps.split_model(model)
  state = steps.TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    frozen=frozen,
    stats=stats,
    opt_state={},
    epoch_sums=steps.zero_sums(len(class_names)),
    window_sums=steps.zero_sums(len(class_names)),
  )
  checkpoints = ckpt_lib.Checkpoints(str(workdir), async_save=False)
  meta = ckpt_lib.RunMeta(class_names=list(class_names), normalization=normalization or {})
  checkpoints.save(0, state, meta, best=True)
  checkpoints.close()
  (workdir / "config.json").write_text(config.to_json_best_effort())
  return state


def run_cli(*args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
  """Runs `python -m imgcls.main ARGS` in the repo, returning the completed process."""
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  return subprocess.run(
    [sys.executable, "-m", "imgcls.main", *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
    **kwargs,
  )
