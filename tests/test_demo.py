"""`make demo`'s command: the embedded digits recipe through the CLI reaches 0.95 validation accuracy."""

from __future__ import annotations

import json

from conftest import run_cli


def test_digits_demo_reaches_target(tmp_path):
  result = run_cli("--config=configs/digits.py", f"--workdir={tmp_path}")
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["final"]["val_accuracy"] >= 0.95
  assert summary["epochs"] == 10
  assert f"Results in {tmp_path}" in result.stdout and (tmp_path / "report.html").exists()
