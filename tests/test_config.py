"""Configs: every recipe loads, bad keys and values fail naming what to use."""

from __future__ import annotations

import importlib.util
import runpy
from pathlib import Path

import pytest

from conftest import REPO, run_cli
from imgcls import config as config_lib

CONFIGS = sorted((REPO / "configs").glob("*.py"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_recipe_loads_and_checks(path: Path):
  config = runpy.run_path(str(path))["get_config"]()
  config_lib.check_config(config)


def test_unknown_override_names_nearest_keys():
  config = config_lib.default_config()
  with pytest.raises(ValueError, match=r"Unknown config key 'optimizer.learning_rat'.*optimizer.learning_rate"):
    config_lib.check_overrides(config, ["--config.optimizer.learning_rat=0.1"])
  with pytest.raises(ValueError, match=r"'data.batchsize'.*data.batch_size"):
    config_lib.check_overrides(config, ["--config.data.batchsize", "3"])
  config_lib.check_overrides(config, ["--config.data.batch_size=3", "--workdir=x"])


def test_recipe_with_unknown_key_or_bad_value_fails():
  config = config_lib.default_config()
  config.data.label_mod = "binary"
  with pytest.raises(ValueError, match=r"Unknown config key 'data.label_mod'.*data.label_mode"):
    config_lib.check_config(config)
  config = config_lib.default_config()
  config.optimizer.name = "adagrad"
  with pytest.raises(ValueError, match="optimizer.name='adagrad' is not one of adam, adamw, sgd"):
    config_lib.check_config(config)


def test_cli_rejects_unknown_override_before_doing_anything(tmp_path):
  workdir = tmp_path / "run"
  result = run_cli("--config=configs/digits.py", f"--workdir={workdir}", "--config.optimizer.learning_rat=0.1", timeout=120)
  assert result.returncode == 2
  assert "Unknown config key 'optimizer.learning_rat'" in result.stderr
  assert "optimizer.learning_rate" in result.stderr
  assert not workdir.exists()


def test_tf_backend_is_checked_and_needs_tensorflow(monkeypatch):
  config = config_lib.default_config()
  config.data.backend = "torch"
  with pytest.raises(ValueError, match="data.backend='torch' is not one of grain, tf"):
    config_lib.check_config(config)
  config.data.backend = "tf"
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else find_spec(name, *a))
  with pytest.raises(ValueError, match=r"TensorFlow is not installed.*pip install 'imgcls\[tf\]'"):
    config_lib.check_config(config)
