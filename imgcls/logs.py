"""What a run writes besides checkpoints: console lines, a progress bar, metrics.jsonl,
history.csv, TensorBoard events, config.json and summary.json. Only process 0 writes."""

from __future__ import annotations

import csv
import json
import os
import sys
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm


class _NoBar:
  def update(self, n: int = 1) -> None: ...
  def set_postfix(self, **kwargs) -> None: ...
  def close(self) -> None: ...


def _summary_writer() -> type:
  """tensorboardX's SummaryWriter, imported with PyTorch hidden where it is not loaded yet.

  tensorboardX imports torch, where installed, only to accept torch tensors; the run logs floats,
  and the import would add 1.5-2.5 s to every run's start.
  """
  hide = "torch" not in sys.modules
  if hide:
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX expects
  try:
    from tensorboardX import SummaryWriter
  finally:
    if hide:
      del sys.modules["torch"]
  return SummaryWriter


class RunLog:
  """The run's human- and machine-readable record in `workdir`."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict, enabled: bool = True):
    self.workdir = workdir
    self.config = config
    self.enabled = enabled
    self.metrics_path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None

  def message(self, text: str) -> None:
    if self.enabled:
      print(text, flush=True)

  def start(self, step: int, splits: dict, class_names: list[str], model: Any) -> None:
    """Writes config.json, trims records past `step` (a resumed run), prints the data summary."""
    if not self.enabled:
      return
    path, text = os.path.join(self.workdir, "config.json"), self.config.to_json_best_effort(indent=2, sort_keys=True)
    if step and os.path.exists(path):  # Resumed with another config: keep the one steps 1..step ran with.
      with open(path) as f:
        before = f.read()
      if before != text:
        with open(os.path.join(self.workdir, f"config.until_step{step}.json"), "w") as f:
          f.write(before)
        self.message(f"The config differs from the one this run started with: that one is kept as config.until_step{step}.json.")
    with open(path, "w") as f:
      f.write(text)
    if os.path.exists(self.metrics_path):
      with open(self.metrics_path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
      with open(self.metrics_path, "w") as f:
        f.writelines(kept)
    self._tb = _summary_writer()(os.path.join(self.workdir, "tensorboard"), purge_step=step + 1 if step else None)
    sizes = ", ".join(f"{name} {len(s)}" for name, s in splits.items())
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(_params(model)))
    self.message(f"Classes ({len(class_names)}): {', '.join(class_names)}. Images: {sizes}.")
    self.message(f"Model {self.config.model.name}: {params:,} parameters. Workdir: {self.workdir}")
    if step:
      self.message(f"Resuming from step {step}.")

  def progress(self, epoch: int, epochs: int, steps: int, initial: int = 0):
    """A progress bar for one epoch (ETA, running loss/accuracy); silent when not on a terminal."""
    if not self.enabled or not self.config.train.progress:
      return _NoBar()
    return tqdm.tqdm(
      total=steps,
      initial=initial,
      desc=f"Epoch {epoch + 1}/{epochs}",
      unit="step",
      leave=False,
      disable=None,
      file=sys.stderr,
      dynamic_ncols=True,
    )

  def _write(self, record: dict) -> None:
    with open(self.metrics_path, "a") as f:
      f.write(json.dumps(record) + "\n")

  def batch(self, step: int, epoch: int, metrics: dict[str, float], learning_rate: float) -> None:
    """Training metrics of the last few batches (config.train.log_every_steps)."""
    if not self.enabled:
      return
    self._write({"type": "batch", "step": step, "epoch": epoch + 1, "learning_rate": learning_rate, **metrics})
    for name in ("loss", "accuracy"):
      self._tb.add_scalar(f"batch/{name}", metrics[name], step)

  def epoch(self, record: dict, is_best: bool, seconds: float | None = None) -> None:
    """One epoch's metrics; `seconds` (its wall time) goes to metrics.jsonl and the console."""
    if not self.enabled:
      return
    self._write({"type": "epoch", **record, **({"seconds": round(seconds, 3)} if seconds is not None else {})})
    self._write_history()
    for key, value in record.items():
      if key.startswith(("train_", "val_")):
        split, name = key.split("_", 1)
        self._tb.add_scalar(f"{split}/{name}", value, record["step"])
    self._tb.add_scalar("learning_rate", record["learning_rate"], record["step"])
    self._tb.flush()
    shown = " ".join(f"{k}={v:.4f}" for k, v in record.items() if k.endswith(("_loss", "_accuracy", "_f1")))
    took = f" ({seconds:.1f} s)" if seconds is not None else ""
    self.message(f"Epoch {record['epoch']} step {record['step']}: {shown}{' (best)' if is_best else ''}{took}")

  def _write_history(self) -> None:
    """history.csv: one row per epoch so far (as Keras's CSVLogger), from metrics.jsonl."""
    with open(self.metrics_path) as f:
      epochs = [r for r in map(json.loads, filter(str.strip, f)) if r.pop("type") == "epoch"]
    columns = list(dict.fromkeys(k for r in epochs for k in r))
    with open(os.path.join(self.workdir, "history.csv"), "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=columns)
      writer.writeheader()
      writer.writerows(epochs)

  def finish(self, summary: dict) -> None:
    if not self.enabled:
      return
    path = os.path.join(self.workdir, "summary.json")
    with open(path, "w") as f:
      json.dump(summary, f, indent=2)
    if self._tb is not None:
      self._tb.close()
    from imgcls.report import html

    report = html.write_report(self.workdir)
    final, best = summary["final"] or {}, summary["best"]
    if best:
      self.message(f"Best {best['monitor']} {best['value']:.4f} at epoch {best['epoch']} (step {best['step']}).")
    if "val_accuracy" in final:
      self.message(f"Final val_accuracy {final['val_accuracy']:.4f}.")
    self.message(
      f"Results in {os.path.abspath(self.workdir)}: summary.json, report.html, metrics.jsonl, tensorboard/, checkpoints/"
    )
    self.message(f"Report: {os.path.abspath(report)}")


def _params(model: Any):
  from flax import nnx

  return nnx.state(model, nnx.Param)
