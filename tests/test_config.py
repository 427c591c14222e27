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


@pytest.mark.parametrize(
  "key, value, message",
  [
    ("checkpoint.monitor", "val_acc", "checkpoint.monitor='val_acc' is not a logged metric; did you mean val_accuracy"),
    ("early_stopping.monitor", "loss", "early_stopping.monitor='loss' is not a logged metric"),
    ("train.log_every_steps", 0, "train.log_every_steps=0 must be at least 1"),
    ("checkpoint.max_to_keep", 0, "checkpoint.max_to_keep=0 must be at least 1"),
    ("data.num_threads", -1, "data.num_threads=-1 must be at least 0"),
    ("optimizer.learning_rate", -1.0, "learning_rate=-1.0 must be positive"),
    ("loss.label_smoothing", 2.0, r"label_smoothing=2.0 must be in \[0, 1\)"),
    ("data.image_size", (16,), r"image_size=\(16,\) must be \(height, width\)"),
    ("data.interpolation", "pil_bicubic", "data.backend='tf' resizes with tf.image.resize"),
  ],
)
def test_bad_values_fail_before_training(key, value, message):
  config = config_lib.default_config()
  section, name = key.split(".")
  config[section][name] = value
  if name == "interpolation":
    config.data.backend = "tf"
  with pytest.raises(ValueError, match=message):
    config_lib.check_config(config)


def test_cli_training_errors_are_one_line_and_train_nothing(tmp_path):
  workdir = tmp_path / "run"
  result = run_cli("--config=configs/digits.py", f"--workdir={workdir}", "--config.checkpoint.monitor=val_acc", timeout=120)
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert "error: config.checkpoint.monitor='val_acc' is not a logged metric" in result.stderr
  assert not (workdir / "checkpoints").exists()
  not_a_folder = tmp_path / "file.txt"
  not_a_folder.write_text("not images")
  result = run_cli("--config=configs/digits.py", f"--workdir={workdir}", f"--config.data.dir={not_a_folder}", timeout=120)
  assert result.returncode == 1 and "Traceback" not in result.stderr and "error: " in result.stderr


def test_usage_errors_and_broken_recipes_are_one_line(tmp_path):
  result = run_cli("--mode=eval", timeout=120)
  assert (
    result.returncode == 2
    and result.stderr.strip() == "error: --mode=eval needs --workdir. (python -m imgcls.main --help lists the flags)"
  )
  recipe = tmp_path / "recipe.py"
  recipe.write_text("def config():\n  return None\n")
  result = run_cli(f"--config={recipe}", f"--workdir={tmp_path / 'run'}", timeout=120)
  assert result.returncode == 2 and result.stderr.strip() == f"error: The recipe {recipe} has no get_config() function."
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "config.json").write_text("[1, 2]")
  result = run_cli("--mode=eval", f"--workdir={tmp_path / 'run'}", timeout=120)
  assert result.returncode != 0 and "holds a list, not a config" in result.stderr and "Traceback" not in result.stderr


def test_combinations_that_need_no_data_fail_before_the_scan():
  config = config_lib.default_config()
  config.data.update(label_mode="binary", class_names=("a", "b", "c"))
  with pytest.raises(ValueError, match="label_mode='binary' needs exactly 2 classes; data.class_names has 3"):
    config_lib.check_config(config)
  config = config_lib.default_config()
  config.train.cache_features = "always"
  with pytest.raises(ValueError, match="train.cache_features='always' is not one of auto, on, off"):
    config_lib.check_config(config)
  config.train.cache_features = "on"
  config.model.freeze = ""
  with pytest.raises(ValueError, match=r"cache_features='on'.*the backbone is trained"):
    config_lib.check_config(config)
  config.model.freeze = "all"
  config.data.augment = "rotate(10)"
  with pytest.raises(ValueError, match=r"cache_features='on'.*changes images beyond flips"):
    config_lib.check_config(config)
