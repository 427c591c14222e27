"""Memory and speed of a whole training run with and without keeping freed host memory.

  python bench/host_memory.py                                   # pollen recipe, 20 epochs
  python bench/host_memory.py --epochs=150 --repeats=2 -- --config.model.freeze=all

`import imgcls` keeps freed host memory for reuse (imgcls/host_memory.py); this runs the recipe
as a subprocess with `IMGCLS_KEEP_HOST_MEMORY=1`, then `=0` (in turns, `--repeats` times), samples
the process's resident memory every half second, and prints one JSON object: peak RSS, median RSS
over the run's last three quarters, RSS at each quarter of those, and the median epoch time (epoch 1,
which compiles, left out). Arguments after `--` are passed to imgcls.main.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_CONFIG = flags.DEFINE_string("config", "configs/pollen.py", "Recipe to train.")
_EPOCHS = flags.DEFINE_integer("epochs", 20, "Epochs per run.")
_REPEATS = flags.DEFINE_integer("repeats", 1, "Runs of each setting, in turns.")


def rss_mb(pid: int) -> int | None:
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith("VmRSS:"):
          return int(line.split()[1]) // 1024
  except (FileNotFoundError, ProcessLookupError):
    return None
  return None


def measure(keep: str, extra: list[str]) -> dict:
  with tempfile.TemporaryDirectory() as workdir:
    cmd = [
      sys.executable,
      "-m",
      "imgcls.main",
      f"--config={_CONFIG.value}",
      f"--workdir={workdir}/run",
      f"--config.train.epochs={_EPOCHS.value}",
      *extra,
    ]
    env = dict(os.environ, IMGCLS_KEEP_HOST_MEMORY=keep)
    with open(os.path.join(workdir, "log"), "w") as log:
      process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
      start, trace = time.perf_counter(), []
      while process.poll() is None:
        if (mb := rss_mb(process.pid)) is not None:
          trace.append((time.perf_counter() - start, mb))
        time.sleep(0.5)
    if process.returncode != 0:
      raise SystemExit(f"{' '.join(cmd)} failed:\n{open(os.path.join(workdir, 'log')).read()[-3000:]}")
    with open(os.path.join(workdir, "run", "metrics.jsonl")) as f:
      epochs = [r for r in map(json.loads, f) if r["type"] == "epoch"]
  steady = [mb for _, mb in trace[len(trace) // 4 :]]  # Past start-up and compiling.
  return {
    "keep_host_memory": keep == "1",
    "wall_s": round(trace[-1][0], 1),
    "peak_rss_mb": max(mb for _, mb in trace),
    "median_rss_mb": statistics.median(steady),
    "rss_at_quarters_mb": [steady[min(len(steady) - 1, int(len(steady) * q))] for q in (0.25, 0.5, 0.75, 1.0)],
    "median_epoch_s": round(statistics.median(r["seconds"] for r in epochs[1:]), 3) if len(epochs) > 1 else None,
  }


def main(argv: list[str]) -> None:
  extra = argv[1:]
  runs = [measure(keep, extra) for _ in range(_REPEATS.value) for keep in ("1", "0")]
  kept, default = ([r for r in runs if r["keep_host_memory"] is k] for k in (True, False))
  summary = {
    "config": _CONFIG.value,
    "epochs": _EPOCHS.value,
    "extra": extra,
    "runs": runs,
    "epoch_speedup": round(
      statistics.median(r["median_epoch_s"] for r in default) / statistics.median(r["median_epoch_s"] for r in kept), 3
    )
    if _EPOCHS.value > 1
    else None,
    "peak_rss_ratio": round(max(r["peak_rss_mb"] for r in kept) / max(r["peak_rss_mb"] for r in default), 2),
  }
  print(json.dumps(summary, indent=1))


if __name__ == "__main__":
  app.run(main)
