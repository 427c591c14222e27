"""Training end to end on small real image trees: logs, checkpoints, resume, init_from, NaN."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import keras
import numpy as np
import pytest
from conftest import POLLEN, needs, tiny_config, write_tree

from imgcls import checkpoint as ckpt_lib
from imgcls import optim, steps, train


@pytest.fixture(scope="session")
def run(tree, tmp_path_factory):
  """A 3-epoch run on the 3-class tree; returns (config, workdir, summary)."""
  workdir = tmp_path_factory.mktemp("run")
  config = tiny_config(tree, **{"train.epochs": 3, "data.validation_split": 0.25, "optimizer.learning_rate": 3e-3})
  summary = train.train_and_evaluate(config, str(workdir))
  return config, workdir, summary


def read_jsonl(path: Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_writes_summary_metrics_tensorboard_and_checkpoints(run):
  config, workdir, summary = run
  on_disk = json.loads((workdir / "summary.json").read_text())
  assert on_disk["final"] == summary["final"] and on_disk["epochs"] == 3
  assert summary["final"]["step"] == 3 * 4  # 27 train images, batch 8.
  for key in (
    "train_loss",
    "train_accuracy",
    "train_precision",
    "train_recall",
    "train_f1",
    "val_loss",
    "val_accuracy",
    "val_f1",
  ):
    assert 0 <= summary["final"][key] < 10
  assert summary["best"]["monitor"] == "val_accuracy"
  history = [r for r in read_jsonl(workdir / "metrics.jsonl") if r["type"] == "epoch"]
  assert [r["epoch"] for r in history] == [1, 2, 3]
  assert summary["best"]["value"] == max(r["val_accuracy"] for r in history)
  batches = [r for r in read_jsonl(workdir / "metrics.jsonl") if r["type"] == "batch"]
  assert [r["step"] for r in batches] == [2, 4, 6, 8, 10, 12]
  assert json.loads((workdir / "config.json").read_text())["model"]["name"] == "insects_cnn"
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  assert ckpt_lib.resolve(str(workdir)).endswith(f"best/{summary['best']['step']}")
  assert sorted(os.listdir(workdir / "checkpoints" / "latest")) == ["12", "8"]  # max_to_keep=2


def test_the_tensorboard_writer_leaves_torch_unimported(tmp_path):
  """tensorboardX would import PyTorch where installed (seconds at each start); a stand-in torch
  package records whether it was imported, and stays importable afterwards."""
  (tmp_path / "torch").mkdir()
  (tmp_path / "torch" / "__init__.py").write_text("import os\nopen(os.environ['MARKER'], 'w').close()\n")
  script = (
    "import os, sys\n"
    "from imgcls import logs\n"
    "writer = logs._summary_writer()(os.environ['EVENTS'])\n"
    "writer.add_scalar('loss', 1.0, 1)\n"
    "writer.close()\n"
    "assert not os.path.exists(os.environ['MARKER']), 'torch imported'\n"
    "import torch\n"
    "assert os.path.exists(os.environ['MARKER'])\n"
  )
  env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
  env.update(MARKER=str(tmp_path / "imported"), EVENTS=str(tmp_path / "events"))
  result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  assert list((tmp_path / "events").glob("events.out.tfevents.*"))


def test_training_learns(run):
  _, _, summary = run
  history = summary["final"]
  assert history["train_loss"] < 1.0986  # Below chance-level cross-entropy for 3 classes (ln 3).


def test_run_without_validation_monitors_training_metrics(tree, tmp_path, capsys):
  config = tiny_config(tree, **{"data.validation_split": 0.0, "train.epochs": 1})
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary["best"]["monitor"] == "train_accuracy" and "val_loss" not in summary["final"]
  assert "checkpoint.monitor watches train_accuracy instead of val_accuracy" in capsys.readouterr().out
  assert config.checkpoint.monitor == "val_accuracy"  # The caller's config is left as it was.


def test_rerun_of_finished_run_changes_nothing(run):
  config, workdir, summary = run
  again = train.train_and_evaluate(config, str(workdir))
  assert again["final"] == summary["final"] and again["best"] == summary["best"]
  assert len([r for r in read_jsonl(workdir / "metrics.jsonl") if r["type"] == "epoch"]) == 3


def test_resume_continues_from_latest_checkpoint(run, tmp_path):
  config, workdir, summary = run
  # A run of 2 epochs, then the same run asked for 3: it resumes at epoch 3 from step 8.
  short = config.copy_and_resolve_references()
  short.train.epochs = 2
  train.train_and_evaluate(short, str(tmp_path))
  resumed = train.train_and_evaluate(config, str(tmp_path))
  assert resumed["final"]["step"] == 12
  # The schedule is constant, so two epochs then one equals three epochs.
  np.testing.assert_allclose(resumed["final"]["val_loss"], summary["final"]["val_loss"], rtol=1e-6)
  assert [r["epoch"] for r in read_jsonl(tmp_path / "metrics.jsonl") if r["type"] == "epoch"] == [1, 2, 3]


def test_init_from_loads_weights_and_rejects_other_shapes(run, tmp_path, tree):
  config, workdir, summary = run
  fresh = config.copy_and_resolve_references()
  fresh.init_from = str(workdir)
  fresh.train.epochs = 1
  fresh.optimizer.learning_rate = 1e-9  # Barely moves: the metrics are those of the loaded weights.
  result = train.train_and_evaluate(fresh, str(tmp_path / "a"))
  assert result["final"]["val_accuracy"] == pytest.approx(summary["best"]["metrics"]["val_accuracy"])
  other = tiny_config(write_tree(tmp_path / "five", classes=5, per_class=4), **{"init_from": str(workdir), "train.epochs": 1})
  with pytest.raises(ckpt_lib.CheckpointError, match=r"head/output/kernel: checkpoint \(16, 3\), model \(16, 5\)"):
    train.train_and_evaluate(other, str(tmp_path / "b"))


def test_nan_loss_stops_with_message_and_keeps_checkpoints(tree, tmp_path):
  config = tiny_config(tree, **{"train.epochs": 1})
  train.train_and_evaluate(config, str(tmp_path))
  latest = sorted(os.listdir(tmp_path / "checkpoints" / "latest"))
  config.train.epochs = 3
  config.optimizer.learning_rate = 1e38
  with pytest.raises(train.TrainingDiverged, match="loss became (nan|inf)"):
    train.train_and_evaluate(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints" / "latest")) == latest
  state = ckpt_lib.read_state(ckpt_lib.resolve(str(tmp_path)))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))
  # A checkpoint that does not fit the config (another optimizer) is a clear error, not a crash.
  config.optimizer.name = "sgd"
  with pytest.raises(ckpt_lib.CheckpointError, match="model or optimizer differ"):
    train.train_and_evaluate(config, str(tmp_path))


def test_class_weights_balanced_and_checked(tree):
  config = tiny_config(tree)
  split = train.sources.find_splits(config.data, 0)["train"]
  config.loss.balanced = True
  weights = steps.class_weights(config, split)
  counts = split.class_counts()
  np.testing.assert_allclose(np.array(weights) * counts, len(split) / 3)
  config.loss.balanced = False
  config.loss.class_weights = (1.0, 2.0)
  with pytest.raises(ValueError, match="2 values for 3 classes"):
    steps.class_weights(config, split)


class _Model:
  """Enough of a Keras model for Keras's callbacks."""

  def __init__(self):
    self.optimizer = keras.optimizers.SGD(learning_rate=1.0)
    self.stop_training = False


@pytest.mark.parametrize("patience,cooldown", [(2, 0), (1, 2), (3, 1)])
def test_plateau_and_early_stopping_match_keras(patience, cooldown):
  values = [1.0, 0.9, 0.95, 0.92, 0.91, 0.95, 0.7, 0.8, 0.8, 0.8, 0.69, 0.9, 0.9, 0.9, 0.9]
  config = tiny_config("unused")
  config.reduce_on_plateau.update(patience=patience, cooldown=cooldown, factor=0.5, min_delta=1e-4, min_learning_rate=0.01)
  config.early_stopping.update(patience=patience, min_delta=0.0)
  plateau, early = train.Plateau(config.reduce_on_plateau), train.EarlyStopping(config.early_stopping)
  reference = keras.callbacks.ReduceLROnPlateau(
    monitor="val_loss", factor=0.5, patience=patience, cooldown=cooldown, min_delta=1e-4, min_lr=0.01
  )
  stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience)
  model = _Model()
  for callback in (reference, stopper):
    callback.set_model(model)
    callback.on_train_begin()
  for epoch, value in enumerate(values):
    plateau.update(value, 1.0)
    stop = early.update(value)
    reference.on_epoch_end(epoch, {"val_loss": value})
    stopper.on_epoch_end(epoch, {"val_loss": value})
    assert plateau.scale == pytest.approx(float(model.optimizer.learning_rate)), epoch
    assert stop == model.stop_training, epoch
    if stop:
      break


@needs(POLLEN)
def test_trains_on_real_pollen_images(tmp_path):
  config = tiny_config(
    POLLEN, **{"data.label_mode": "binary", "data.image_size": (24, 24), "train.epochs": 1, "data.batch_size": 64}
  )
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary["final"]["step"] == 9  # 572 training images of 714, batch 64.
  assert summary["class_names"] == ["NP", "P"]
  assert 0.0 <= summary["final"]["val_f1"] <= 1.0


def test_plateau_lowers_learning_rate_and_early_stopping_ends_run(tree, tmp_path):
  config = tiny_config(tree, **{"train.epochs": 6, "optimizer.learning_rate": 1e-3})
  config.reduce_on_plateau.update(enabled=True, monitor="train_accuracy", mode="max", patience=1, factor=0.5, min_delta=1.0)
  config.early_stopping.update(enabled=True, monitor="val_loss", patience=3, min_delta=10.0)
  summary = train.train_and_evaluate(config, str(tmp_path))
  # min_delta is so large that nothing counts as improving after the first epoch.
  assert summary["stopped_early"] and summary["epochs"] == 4
  rates = [r["learning_rate"] for r in read_jsonl(tmp_path / "metrics.jsonl") if r["type"] == "epoch"]
  # Each epoch's rate is the one it trained with: the first epoch sets the best value, the
  # second does not improve (patience 1), so the third trains at half the rate, and so on.
  np.testing.assert_allclose(rates, [1e-3, 1e-3, 5e-4, 2.5e-4])


@pytest.mark.parametrize(
  "schedule, expected",
  [
    ("constant", [1.0, 1.0, 1.0]),
    ("cosine", [1.0, 0.5, 0.0]),
    ("warmup_constant", [0.0, 1.0, 1.0]),
    ("warmup_cosine", [0.0, 1.0, 0.0]),
    ("one_cycle", [1.0 / 25, 1.0, 1.0 / 25 / 1e5]),  # fastai's div=25, div_final=1e5
  ],
)
def test_schedules(schedule, expected):
  config = tiny_config(
    "unused", **{"optimizer.schedule": schedule, "optimizer.learning_rate": 1.0, "optimizer.warmup_epochs": 1.0}
  )
  lr = optim.learning_rate_schedule(config.optimizer, steps_per_epoch=10, epochs=2)
  np.testing.assert_allclose([float(lr(s)) for s in (0, 10, 20)], expected, atol=1e-6)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_optimizers_take_a_step(name):
  import jax.numpy as jnp

  config = tiny_config("unused", **{"optimizer.name": name, "optimizer.grad_clip_norm": 1.0})
  tx = optim.make_optimizer(config.optimizer, optim.learning_rate_schedule(config.optimizer, 1, 1))
  params = {"w": jnp.ones(3)}
  updates, _ = tx.update({"w": jnp.full(3, 10.0)}, tx.init(params), params)
  assert np.all(np.asarray(updates["w"]) < 0)


def test_no_recompilation_after_the_first_epoch(tree, tmp_path, caplog):
  import logging

  config = tiny_config(tree, **{"train.epochs": 3, "data.validation_split": 0.25, "compile_cache": "off"})
  jax.config.update("jax_log_compiles", True)
  try:
    with caplog.at_level(logging.WARNING):
      summary = train.train_and_evaluate(config, str(tmp_path))
  finally:
    jax.config.update("jax_log_compiles", False)
  compiled = [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]
  # One program for full batches, one for the last partial batch (27 = 3*8 + 3), one for eval.
  assert len([m for m in compiled if "train_step" in m]) == 2
  assert len([m for m in compiled if "eval_step" in m]) == 1
  assert summary["first_step_seconds"] > 0


def test_bfloat16_trains_like_float32(tree, tmp_path):
  runs = {}
  for dtype in ("float32", "bfloat16"):
    config = tiny_config(tree, **{"train.epochs": 3, "dtype": dtype, "optimizer.learning_rate": 3e-3})
    runs[dtype] = train.train_and_evaluate(config, str(tmp_path / dtype))
  state = ckpt_lib.read_state(ckpt_lib.resolve(str(tmp_path / "bfloat16")))
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(state["params"]))  # float32 master weights.
  assert runs["bfloat16"]["final"]["train_loss"] == pytest.approx(runs["float32"]["final"]["train_loss"], rel=0.05)
  assert runs["bfloat16"]["final"]["val_accuracy"] == pytest.approx(runs["float32"]["final"]["val_accuracy"], abs=0.15)
