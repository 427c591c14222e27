"""Data parallel over 8 (virtual CPU) devices equals one device; two real processes train together."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

ARGS = [
  "--config=configs/digits.py",
  "--config.train.epochs=1",
  "--config.model.name=bn_cnn",
  "--config.model.filters=8",
  "--config.data.image_size=(48, 48)",
  "--config.data.batch_size=32",
  "--config.train.log_every_steps=5",
  "--config.data.validation_split=0.1987",  # 1440 training images: 45 full batches of 32.
]


def train(workdir, devices: int, *extra: str, processes_env: dict | None = None) -> subprocess.CompletedProcess:
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", PYTHONUNBUFFERED="1")
  return subprocess.run(
    [sys.executable, "-m", "imgcls.main", *ARGS, *extra, f"--workdir={workdir}"],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


def final(workdir) -> dict:
  return json.loads((workdir / "summary.json").read_text())["final"]


def test_eight_devices_match_one(tmp_path):
  one, eight = tmp_path / "one", tmp_path / "eight"
  for workdir, devices in ((one, 1), (eight, 8)):
    result = train(workdir, devices, "--config.train.log_every_steps=1")
    assert result.returncode == 0, result.stderr[-3000:]
  a, b = final(one), final(eight)
  assert a["step"] == b["step"] == 45
  losses = [
    [r["loss"] for r in map(json.loads, (w / "metrics.jsonl").read_text().splitlines()) if r["type"] == "batch"]
    for w in (one, eight)
  ]
  # The same global batches give the same losses (BatchNorm statistics over the whole batch);
  # float rounding differs between 1 and 8 devices and grows slowly as training goes on.
  assert losses[1][:10] == pytest.approx(losses[0][:10], rel=1e-4)
  assert losses[1] == pytest.approx(losses[0], rel=0.1)
  assert b["val_accuracy"] == pytest.approx(a["val_accuracy"], abs=0.05)

  # A checkpoint saved over 8 devices resumes on 1.
  result = train(eight, 1, "--config.train.epochs=2")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Resuming from step 45." in result.stdout + result.stderr and final(eight)["step"] == 90


def test_cached_backbone_features_on_eight_devices_match_one(tmp_path):
  frozen = ("--config.model.freeze=all", "--config.data.augment=flip_lr")
  for devices in (1, 8):
    result = train(tmp_path / str(devices), devices, *frozen)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(2 flipped copies each)" in result.stdout + result.stderr
  a, b = final(tmp_path / "1"), final(tmp_path / "8")
  assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
  assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-3)


def test_batch_must_split_over_devices(tmp_path):
  result = train(tmp_path, 3)
  assert result.returncode != 0 and "must be a multiple of the 3 devices" in result.stderr


def test_two_processes_train_checkpoint_and_resume_together(tmp_path):
  workdir = tmp_path / "two"
  env = dict(os.environ, PYTHON=sys.executable, PYTHONUNBUFFERED="1")

  def launch(epochs: int) -> subprocess.CompletedProcess:
    result = subprocess.run(
      [
        "bash",
        "launch/local.sh",
        "--processes=2",
        "--port=12391",
        "--config=configs/digits.py",
        f"--workdir={workdir}",
        "--",
        *ARGS[1:],
        f"--config.train.epochs={epochs}",
      ],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result

  first = launch(1)
  assert first.stdout.count("Epoch 1 step 45") == 1  # Each process reads 720 of 1440 images, 16 a step; process 0 reports.
  second = launch(2)
  assert "Resuming from step 45." in second.stdout and second.stdout.count("Epoch 2 step 90") == 1
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["final"]["step"] == 90 and summary["final"]["val_accuracy"] > 0.3
  assert sorted(os.listdir(workdir / "checkpoints" / "latest")) == ["45", "90"]

  # Each process evaluated only its rows of every val batch; one process evaluating the same
  # checkpoint on whole batches gets the same metrics.
  one = subprocess.run(
    [sys.executable, "-m", "imgcls.main", "--mode=eval", f"--workdir={workdir}", "--step=90"],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert one.returncode == 0, one.stderr[-3000:]
  alone = json.loads((workdir / "eval_val_step90" / "metrics.json").read_text())
  assert alone["step"] == 90 and alone["accuracy"] == pytest.approx(summary["final"]["val_accuracy"], abs=1e-9)
  assert alone["mean_loss"] == pytest.approx(summary["final"]["val_loss"], rel=1e-4)
  several = subprocess.run(
    [
      "bash",
      "launch/local.sh",
      "--processes=2",
      "--port=12391",
      "--config=configs/digits.py",
      f"--workdir={workdir}",
      "--",
      "--mode=eval",
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert several.returncode != 0 and "--mode=eval runs as one process" in several.stderr
