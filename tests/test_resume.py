"""A run killed with SIGKILL and resumed ends exactly like one never interrupted (real subprocesses)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

ARGS = [
  "--config=configs/digits.py",
  "--config.train.epochs=3",
  "--config.checkpoint.every_steps=7",  # Mid-epoch checkpoints (an epoch is 45 steps).
  "--config.data.image_size=(24, 24)",
  "--config.model.filters=24",
  "--config.train.log_every_steps=5",
]


def start(workdir: Path) -> subprocess.Popen:
  return subprocess.Popen(
    [sys.executable, "-m", "imgcls.main", *ARGS, f"--workdir={workdir}"],
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    env=dict(os.environ, PYTHONUNBUFFERED="1"),
  )


def committed_steps(workdir: Path) -> list[int]:
  folder = workdir / "checkpoints" / "latest"
  if not folder.exists():
    return []
  return sorted(int(d) for d in os.listdir(folder) if d.isdigit())


def epochs(workdir: Path) -> list[dict]:
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [{k: v for k, v in r.items() if k != "seconds"} for r in map(json.loads, lines) if r["type"] == "epoch"]


def history(workdir: Path) -> list[dict]:
  """history.csv's rows (one per epoch, as Keras's CSVLogger writes), wall times left out."""
  with open(workdir / "history.csv", newline="") as f:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def test_sigkill_and_resume_matches_uninterrupted_run(tmp_path):
  reference = start(tmp_path / "reference")
  out, _ = reference.communicate(timeout=600)
  assert reference.returncode == 0, out

  killed = tmp_path / "killed"
  process = start(killed)
  deadline = time.time() + 300
  while time.time() < deadline and not any(s % 45 and s > 45 for s in committed_steps(killed)):
    time.sleep(0.02)
  process.send_signal(signal.SIGKILL)
  process.communicate(timeout=60)
  assert process.returncode == -signal.SIGKILL
  assert not (killed / "summary.json").exists(), "the run ended before it could be killed"
  kill_step = max(committed_steps(killed))

  resumed = start(killed)
  out, _ = resumed.communicate(timeout=600)
  assert resumed.returncode == 0, out
  assert "Resuming from step" in out and kill_step > 45

  expected = json.loads((tmp_path / "reference" / "summary.json").read_text())
  actual = json.loads((killed / "summary.json").read_text())
  assert actual["final"] == expected["final"]
  assert actual["best"] == expected["best"]
  assert epochs(killed) == epochs(tmp_path / "reference")
  assert len(history(killed)) == 3 and history(killed) == history(tmp_path / "reference")


def test_resume_refuses_other_classes_and_workdir_inside_the_data(tree, tmp_path):
  """Rerunning a run on data whose classes changed fails before training, its checkpoints intact;
  so does a workdir inside data.dir (its outputs would become class folders)."""
  import shutil

  from conftest import tiny_config

  from imgcls import checkpoint as ckpt_lib
  from imgcls import train

  data = tmp_path / "data"
  shutil.copytree(tree, data)
  workdir = tmp_path / "run"
  train.train_and_evaluate(tiny_config(data, **{"train.epochs": 1}), str(workdir))
  saved = committed_steps(workdir)
  (data / "class_2").rename(data / "class_9")
  with pytest.raises(
    ckpt_lib.CheckpointError, match=r"trained on the classes \['class_0', 'class_1', 'class_2'\].*class_9.*init_from"
  ):
    train.train_and_evaluate(tiny_config(data, **{"train.epochs": 2}), str(workdir))
  assert committed_steps(workdir) == saved
  with pytest.raises(ValueError, match="is inside data.dir"):
    train.train_and_evaluate(tiny_config(data), str(data / "runs" / "a"))
  assert not (data / "runs").exists()


def test_a_damaged_checkpoint_is_passed_over_on_resume_and_named_in_eval(tree, tmp_path):
  """Truncated data files (an interrupted copy): resuming restores the checkpoint before it, with
  a warning; reading it for eval fails naming the folder."""
  from conftest import run_cli, tiny_config

  from imgcls import checkpoint as ckpt_lib
  from imgcls import train

  workdir = tmp_path / "run"
  train.train_and_evaluate(tiny_config(tree, **{"train.epochs": 2}), str(workdir))
  older, newest = committed_steps(workdir)
  for path in (workdir / "checkpoints" / "latest" / str(newest) / "state").rglob("d/*"):
    path.write_bytes(path.read_bytes()[:10])
  with pytest.raises(ckpt_lib.CheckpointError, match=f"Cannot read the checkpoint .*latest/{newest}; its files may be damaged"):
    ckpt_lib.read_state(str(workdir / "checkpoints" / "latest" / str(newest)))
  result = run_cli("--mode=eval", f"--workdir={workdir}", f"--step={newest}", timeout=300)
  # TensorStore may print tracebacks of its own (callbacks after its event loop closed) around the message.
  assert result.returncode == 1 and "error: Cannot read the checkpoint" in result.stderr, result.stderr[-2000:]
  assert "its files may be damaged (ValueError: no readable metadata)" in result.stderr
  summary = train.train_and_evaluate(tiny_config(tree, **{"train.epochs": 3}), str(workdir))
  log = (workdir / "metrics.jsonl").read_text()
  assert summary["final"]["step"] == newest // 2 * 3 and f'"step": {older}' in log
  assert (workdir / "checkpoints" / "damaged" / f"latest_{newest}" / "state").is_dir()  # Moved aside, not deleted.
  kept = json.loads((workdir / f"config.until_step{older}.json").read_text())  # The config steps 1..older ran with.
  assert kept["train"]["epochs"] == 2 and json.loads((workdir / "config.json").read_text())["train"]["epochs"] == 3
