"""Ablation sweeps: one base recipe, a grid of config overrides, one results table.

  python -m imgcls.sweep --config=configs/pollen.py --sweep=configs/sweeps/pollen.py \
      --root=runs/sweeps/pollen --parallel=2 [--config.train.epochs=5]

A sweep file has `get_sweep()` returning a list of override dicts, usually built with
`product(...)` (every combination) and `zip_(...)` (lists in lockstep), e.g.

    def get_sweep():
      return product(zip_({"model.cut_at": ["block_3_expand_relu", "out_relu"]}),
                     {"model.freeze": ["all", ""]})

Each run is `python -m imgcls.main` in its own workdir under `--root` (named from its overrides);
finished runs (with a summary.json) are skipped, unfinished ones resume. The results land in
`<root>/results.csv`, `<root>/results.md` and `<root>/results.png` (the `--metric` per run).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import os
import re
import runpy
import subprocess
import sys
from collections.abc import Iterable, Sequence

Override = dict[str, object]


def product(*axes: Iterable[Override] | dict[str, Sequence]) -> list[Override]:
  """Every combination of the axes; an axis is a list of overrides or {key: [values]}."""
  lists = [_as_list(a) for a in axes]
  return [dict(itertools.chain.from_iterable(d.items() for d in combo)) for combo in itertools.product(*lists)]


def zip_(axis: dict[str, Sequence]) -> list[Override]:
  """Keys whose value lists advance together: {"a": [1, 2], "b": [3, 4]} -> a=1,b=3 and a=2,b=4."""
  lengths = {len(v) for v in axis.values()}
  if len(lengths) != 1:
    raise ValueError(f"zip_ needs value lists of one length, got {sorted(lengths)} for {list(axis)}.")
  return [dict(zip(axis, values)) for values in zip(*axis.values())]


def _as_list(axis) -> list[Override]:
  if isinstance(axis, dict):
    return [dict(zip(axis, combo)) for combo in itertools.product(*axis.values())]
  return list(axis)


def run_name(overrides: Override) -> str:
  """A readable, file-safe workdir name from the overrides."""
  parts = []
  for key, value in overrides.items():
    short = key.rsplit(".", 1)[-1]
    parts.append(f"{short}={value if value != '' else 'none'}")
  return re.sub(r"[^A-Za-z0-9_.=,+-]", "_", ",".join(parts)) or "base"


def _flag_value(value) -> str:
  if isinstance(value, (tuple, list)):
    return "(" + ", ".join(repr(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def command(config: str, workdir: str, overrides: Override, extra: Sequence[str] = ()) -> list[str]:
  args = [sys.executable, "-m", "imgcls.main", f"--config={config}", f"--workdir={workdir}"]
  args += [f"--config.{k}={_flag_value(v)}" for k, v in overrides.items()]
  return args + list(extra)


def run_one(cmd: list[str], workdir: str) -> int:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "sweep.log"), "a") as log:
    return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode


def results_table(root: str, runs: list[tuple[str, Override]], metric: str) -> list[dict]:
  rows = []
  for name, overrides in runs:
    path = os.path.join(root, name, "summary.json")
    row = {"run": name, **{k: _flag_value(v) for k, v in overrides.items()}}
    if os.path.exists(path):
      with open(path) as f:
        summary = json.load(f)
      best, final = summary.get("best") or {}, summary.get("final") or {}
      wanted = metric or best.get("monitor", "val_accuracy")
      row.update(
        {
          "status": "done",
          "metric": wanted,
          "best": (best.get("metrics") or {}).get(wanted, best.get("value")),
          "best_epoch": best.get("epoch"),
          "final": final.get(wanted),
          "epochs": summary.get("epochs"),
          "wall_s": round(summary.get("wall_seconds", 0.0), 1),
        }
      )
    else:
      row["status"] = "failed" if os.path.exists(os.path.join(root, name, "sweep.log")) else "not run"
    rows.append(row)
  return rows


def write_results(root: str, rows: list[dict]) -> None:
  import csv

  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  columns = list(dict.fromkeys(k for row in rows for k in row))
  with open(os.path.join(root, "results.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
  fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
  with open(os.path.join(root, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  done = [r for r in rows if r.get("status") == "done" and r.get("best") is not None]
  if done:
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(done) + 3), 4.5))
    ax.barh([r["run"] for r in done], [r["best"] for r in done], color="tab:blue", label="best")
    ax.scatter([r["final"] for r in done], [r["run"] for r in done], color="tab:orange", zorder=3, label="final")
    ax.set_xlabel(done[0]["metric"])
    ax.legend()
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(root, "results.png"), dpi=90)
    plt.close(fig)


def load_grid(config: str, sweep: str, extra: Sequence[str] = ()) -> list[Override]:
  """The sweep file's runs, every override key checked against the base recipe's config."""
  from imgcls import config as config_lib

  for path in (config.partition(":")[0], sweep):
    if not os.path.isfile(path):
      raise ValueError(f"No file {path!r}.")
  get_sweep = runpy.run_path(sweep).get("get_sweep")
  if get_sweep is None:
    raise ValueError(f"The sweep file {sweep} has no get_sweep() function.")
  grid = get_sweep()
  if not isinstance(grid, list) or not all(isinstance(o, dict) for o in grid):
    raise ValueError(f"{sweep}: get_sweep() must return a list of override dicts (use product(...) and zip_(...)).")
  keys = dict.fromkeys(k for overrides in grid for k in overrides)
  config_lib.check_overrides(config_lib.load_recipe(config), [f"--config.{k}=" for k in keys] + list(extra))
  return grid


def run_sweep(
  config: str, sweep: str, root: str, parallel: int = 1, extra: Sequence[str] = (), metric: str = "", dry_run: bool = False
) -> list[dict]:
  """Runs (or resumes) every run of the sweep not finished yet and writes the results table."""
  grid = load_grid(config, sweep, extra)
  runs = [(run_name(o), o) for o in grid]
  names = [n for n, _ in runs]
  if len(set(names)) != len(names):
    raise ValueError(f"The sweep {sweep} has repeated runs: {sorted(n for n in names if names.count(n) > 1)}.")
  todo = [(n, o) for n, o in runs if not os.path.exists(os.path.join(root, n, "summary.json"))]
  commands = {n: command(config, os.path.join(root, n), o, extra) for n, o in todo}
  print(f"{len(runs)} runs, {len(runs) - len(todo)} finished, {len(todo)} to run, {parallel} at a time.", flush=True)
  if dry_run:
    for cmd in commands.values():
      print(" ".join(cmd))
    return []
  with concurrent.futures.ThreadPoolExecutor(max(1, parallel)) as pool:
    futures = {pool.submit(run_one, commands[n], os.path.join(root, n)): n for n, _ in todo}
    for future in concurrent.futures.as_completed(futures):
      name = futures[future]
      code = future.result()
      print(f"{'done' if code == 0 else f'FAILED ({code}), see sweep.log'}: {name}", flush=True)
  rows = results_table(root, runs, metric)
  write_results(root, rows)
  print(f"Results: {os.path.join(root, 'results.md')}", flush=True)
  return rows


def run(argv: Sequence[str] | None = None) -> None:
  """Command line; `--config.KEY=VALUE` overrides pass through to every run."""
  import argparse

  parser = argparse.ArgumentParser(prog="python -m imgcls.sweep", description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True, help="Base recipe, as for imgcls.main.")
  parser.add_argument("--sweep", required=True, help="Sweep file with get_sweep().")
  parser.add_argument("--root", default="", help="Folder of the runs' workdirs (default runs/sweeps/<sweep name>).")
  parser.add_argument("--parallel", type=int, default=1, help="Runs at a time.")
  parser.add_argument("--metric", default="", help="Summary metric to tabulate (default: the best checkpoint's monitor).")
  parser.add_argument("--dry_run", "--dry-run", action="store_true", help="Print the runs' commands and do nothing.")
  argv = list(sys.argv[1:] if argv is None else argv)
  extra = [a for a in argv if a.startswith("--config.")]
  args = parser.parse_args([a for a in argv if not a.startswith("--config.")])
  root = args.root or os.path.join("runs", "sweeps", os.path.splitext(os.path.basename(args.sweep))[0])
  try:
    rows = run_sweep(args.config, args.sweep, root, args.parallel, extra, args.metric, args.dry_run)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  failed = [r["run"] for r in rows if r.get("status") != "done"]
  if failed:
    print(f"error: {len(failed)} of {len(rows)} runs did not finish: {', '.join(failed)}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  run()
