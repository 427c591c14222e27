"""A frozen backbone's features computed once give the same run as computing them every step."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from conftest import tiny_config

from imgcls import checkpoint as ckpt_lib
from imgcls import train


def frozen_config(tree, **overrides):
  """MobileNetV2 (random weights) frozen, a dropout head, flips on both axes: 4 cached copies."""
  return tiny_config(
    tree,
    **{
      "data.image_size": (32, 32),
      "data.validation_split": 0.25,
      "data.augment": "flip_lr|flip_ud",
      "model.name": "mobilenet_v2",
      "model.alpha": 0.35,
      "model.cut_at": "block_4_add",
      "model.freeze": "all",
      "model.head.pooling": "avg",
      "model.head.dropout": 0.3,
      "optimizer.learning_rate": 1e-2,
      **overrides,
    },
  )


@pytest.fixture(scope="module")
def cached_and_uncached(tree, tmp_path_factory):
  runs = {}
  for setting in ("on", "off"):
    workdir = tmp_path_factory.mktemp(f"cache_{setting}")
    summary = train.train_and_evaluate(frozen_config(tree, **{"train.cache_features": setting}), str(workdir))
    runs[setting] = (workdir, summary)
  return runs


def flat(tree) -> np.ndarray:
  return np.concatenate([np.ravel(v) for v in jax.tree.leaves(tree)])


def epochs(workdir) -> list[dict]:
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [r for r in map(json.loads, lines) if r["type"] == "epoch"]


def test_cached_features_train_the_same_head(cached_and_uncached):
  on_dir, off_dir = cached_and_uncached["on"][0], cached_and_uncached["off"][0]
  assert len(epochs(on_dir)) == len(epochs(off_dir)) == 2
  for a, b in zip(epochs(on_dir), epochs(off_dir)):
    for key in a:
      if key.endswith(("loss", "accuracy", "f1")):
        assert a[key] == pytest.approx(b[key], abs=1e-4), key
  head = {}
  for name, (workdir, _) in cached_and_uncached.items():
    state = ckpt_lib.read_state(ckpt_lib.resolve(str(workdir / "checkpoints" / "latest" / "8")))
    head[name] = state["params"]["head"]
    backbone = state["frozen"]["backbone"]
  assert "head" not in (state["frozen"] or {}) and backbone  # The backbone stays frozen, in the checkpoint.
  np.testing.assert_allclose(flat(head["on"]), flat(head["off"]), atol=1e-4)
  assert not np.allclose(flat(head["on"]), 0)


def test_cached_run_says_so_and_uncached_says_why(tree, tmp_path, capsys):
  config = frozen_config(tree, **{"data.augment": "flip_lr|rotate(10)", "train.epochs": 1})
  train.train_and_evaluate(config, str(tmp_path / "rotate"))
  assert "features are not cached: data.augment='flip_lr|rotate(10)' changes images beyond flips" in capsys.readouterr().out
  config.data.augment = "flip_lr"
  train.train_and_evaluate(config, str(tmp_path / "flips"))
  assert "(2 flipped copies each)" in capsys.readouterr().out


@pytest.mark.parametrize(
  "overrides, reason",
  [
    ({"model.freeze": ""}, "the backbone is trained"),
    ({"data.augment": "zoom(0.1)"}, "changes images beyond flips"),
    ({"data.augment_on": "host"}, "flips are drawn on the host"),
    ({"train.cache_features": "sometimes"}, "is not one of auto, on, off"),
  ],
)
def test_impossible_cache_fails_saying_why(tree, tmp_path, overrides, reason):
  config = frozen_config(tree, **{"train.cache_features": "on", **overrides})
  with pytest.raises(ValueError, match=reason):
    train.train_and_evaluate(config, str(tmp_path))
