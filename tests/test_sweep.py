"""Sweeps: grids of overrides, runs in their own workdirs (real subprocesses), one results table."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO

from imgcls import sweep


def test_product_and_zip():
  grid = sweep.product({"a": [1, 2]}, sweep.zip_({"b": [3, 4], "c": ["x", "y"]}))
  assert grid == [{"a": 1, "b": 3, "c": "x"}, {"a": 1, "b": 4, "c": "y"}, {"a": 2, "b": 3, "c": "x"}, {"a": 2, "b": 4, "c": "y"}]
  assert sweep.run_name({"model.cut_at": "block_6_expand_relu", "model.freeze": ""}) == "cut_at=block_6_expand_relu,freeze=none"
  assert sweep.command("c.py", "w", {"data.image_size": (8, 8), "x.y": 1})[-2:] == [
    "--config.data.image_size=(8, 8)",
    "--config.x.y=1",
  ]


def test_sweep_runs_skips_and_resumes(tmp_path):
  sweep_file = tmp_path / "grid.py"
  sweep_file.write_text("from imgcls.sweep import product\ndef get_sweep():\n  return product({'model.filters': [4, 8]})\n")
  root = tmp_path / "runs"
  args = [
    sys.executable,
    "-m",
    "imgcls.sweep",
    "--config=configs/digits.py",
    f"--sweep={sweep_file}",
    f"--root={root}",
    "--parallel=2",
    "--config.train.epochs=2",
    "--config.data.image_size=(8, 8)",
  ]
  first = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert first.returncode == 0, first.stderr[-2000:]
  assert "2 runs, 0 finished, 2 to run, 2 at a time." in first.stdout
  with open(root / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["run"] for r in rows] == ["filters=4", "filters=8"]
  # 2 epochs of 8x8 digits: well above chance (0.1), not yet accurate (filters=4 reaches about 0.5).
  assert all(r["status"] == "done" and float(r["best"]) > 0.3 and r["metric"] == "val_accuracy" for r in rows)
  assert (root / "results.md").read_text().startswith("| run | model.filters | status")
  assert (root / "results.png").exists()

  # An interrupted run (no summary yet) resumes; the finished one is skipped.
  os.remove(root / "filters=8" / "summary.json")
  shutil.rmtree(root / "filters=8" / "checkpoints" / "best")
  second = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert second.returncode == 0, second.stderr[-2000:]
  assert "2 runs, 1 finished, 1 to run" in second.stdout
  assert "Resuming from step" in (root / "filters=8" / "sweep.log").read_text()
  assert (root / "filters=8" / "summary.json").exists()


def test_bad_sweeps_fail_before_running_anything(tmp_path):
  grid = tmp_path / "grid.py"
  grid.write_text("from imgcls.sweep import product\ndef get_sweep():\n  return product({'optimizer.learning_rat': [1e-3]})\n")
  with pytest.raises(ValueError, match="'optimizer.learning_rat'.*optimizer.learning_rate"):
    sweep.run_sweep("configs/digits.py", str(grid), str(tmp_path / "runs"))
  grid.write_text("def get_sweep():\n  return {'model.filters': [4]}\n")
  with pytest.raises(ValueError, match="must return a list of override dicts"):
    sweep.run_sweep("configs/digits.py", str(grid), str(tmp_path / "runs"))
  assert not (tmp_path / "runs").exists()
  args = [
    sys.executable,
    "-m",
    "imgcls.sweep",
    "--config=configs/digits.py",
    f"--sweep={tmp_path / 'none.py'}",
    f"--root={tmp_path / 'runs'}",
  ]
  result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2 and result.stderr.startswith("error: No file") and "Traceback" not in result.stderr
  grid.write_text("def get_sweep():\n  return [{'model.filters': -4}]\n")  # A valid key whose run fails.
  args[4] = f"--sweep={grid}"
  result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1 and "error: 1 of 1 runs did not finish: filters=-4" in result.stderr
  assert "model.filters=-4 must be at least 0" in (tmp_path / "runs" / "filters=-4" / "sweep.log").read_text()
