"""Launch scripts: shellcheck-clean, and --dry-run prints every command they would run."""

from __future__ import annotations

import shlex
import shutil
import subprocess

import pytest
from conftest import REPO

SCRIPTS = sorted((REPO / "launch").glob("*.sh"))


def dry_run(script: str, *args: str) -> list[str]:
  result = subprocess.run(["bash", str(REPO / "launch" / script), "--dry-run", *args], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  # Each printed command is shell-quoted: unquote it to read it.
  return [" ".join(shlex.split(line[2:])) for line in result.stdout.splitlines() if line.startswith("+ ")]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_scripts_are_shellcheck_clean():
  result = subprocess.run(["shellcheck", "-x", *map(str, SCRIPTS)], cwd=REPO / "launch", capture_output=True, text=True)
  assert result.returncode == 0, result.stdout


def test_tpu_vm_lifecycle():
  commands = dry_run(
    "tpu_vm.sh",
    "--name=imgcls-v4",
    "--zone=us-central2-b",
    "--type=v4-16",
    "--project=lab",
    "--config=configs/pollen.py",
    "--workdir=runs/pollen",
    "--",
    "--config.train.epochs=5",
  )
  steps = [c.split(" ")[4] if c.startswith("gcloud") else c.split(" ")[0] for c in commands]
  assert steps == ["create", "git", "scp", "ssh", "ssh", "ssh", "mkdir", "scp", "delete"]
  assert "--accelerator-type=v4-16" in commands[0] and "--project=lab" in commands[0]
  run = commands[5]
  assert "--worker=all" in run and "IMGCLS_DISTRIBUTED=1" in run and "--config.train.epochs=5" in run
  assert "--worker=0" in commands[7] and commands[-1].endswith("--quiet")
  kept = dry_run("tpu_vm.sh", "--name=a", "--zone=z", "--type=v5litepod-8", "--config=c.py", "--workdir=w", "--keep")
  assert not any(" delete " in c for c in kept)
  only = dry_run("tpu_vm.sh", "--name=a", "--zone=z", "--type=v4-8", "--config=c.py", "--workdir=w", "--only=run")
  assert len(only) == 1 and " ssh " in only[0]


def test_missing_arguments_fail_clearly():
  result = subprocess.run(["bash", str(REPO / "launch" / "tpu_vm.sh"), "--name=a", "--dry-run"], capture_output=True, text=True)
  assert result.returncode == 2 and "--zone is required" in result.stderr


def test_gpu_node_local_and_remote():
  local = dry_run("gpu_node.sh", "--config=configs/pollen.py", "--workdir=runs/p")
  assert "jax[cuda12]==0.10.2" in local[0] and "imgcls.main --config=configs/pollen.py --workdir=runs/p" in local[1]
  remote = dry_run("gpu_node.sh", "--config=c.py", "--workdir=runs/x", "--host=me@gpu", "--", "--config.seed=3")
  assert remote[0].startswith("rsync") and remote[1].startswith("ssh me@gpu") and "--config.seed=3" in remote[1]


def test_local_processes():
  commands = dry_run("local.sh", "--processes=3", "--config=configs/digits.py", "--workdir=runs/d")
  assert len(commands) == 3
  for i, command in enumerate(commands):
    assert (
      f"IMGCLS_PROCESS_ID={i}" in command
      and "IMGCLS_NUM_PROCESSES=3" in command
      and "IMGCLS_COORDINATOR=127.0.0.1:12355" in command
    )
