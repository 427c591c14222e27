"""`report.html`: one self-contained page per run (plots embedded), built from the workdir's files.

It reads `config.json`, `summary.json`, `metrics.jsonl`, `checkpoints/` and every `eval_*/`
folder (their `metrics.json` and PNGs), so training and eval can each rewrite it.
"""

from __future__ import annotations

import base64
import glob
import html
import json
import os

from imgcls.report import plots

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; } td, th { border: 1px solid #ccc; padding: 3px 9px; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.4em 0; display: block; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 12px; }
.muted { color: #777; }
"""


def _img(path: str | None, alt: str) -> str:
  if not path or not os.path.exists(path):
    return ""
  with open(path, "rb") as f:
    data = base64.b64encode(f.read()).decode()
  return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(rows: list[list], header: list[str]) -> str:
  def cell(v):
    return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))

  head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
  body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
  return f"<table><tr>{head}</tr>{body}</table>"


def _read_json(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _eval_section(folder: str) -> str:
  metrics = _read_json(os.path.join(folder, "metrics.json"))
  if metrics is None:
    return ""
  name = os.path.basename(folder)
  keys = (
    "count",
    "accuracy",
    "macro_f1",
    "weighted_f1",
    "precision",
    "recall",
    "f1",
    "roc_auc",
    "average_precision",
    "log_loss",
    "ece",
  )
  rows = [[k, metrics[k]] for k in keys if metrics.get(k) is not None]
  header = ["metric", "value"]
  if metrics.get("tta"):  # Test-time augmentation's figures beside the plain ones.
    header.append(f"with TTA ({', '.join(metrics['tta']['views'])})")
    rows = [[k, v, metrics["tta"].get(k, "")] for k, v in rows]
  report = metrics["classification_report"]
  per_class = [
    [c, v["precision"], v["recall"], v["f1-score"], int(v["support"])] for c, v in report.items() if isinstance(v, dict)
  ]
  parts = [
    f"<h2>Evaluation: {html.escape(name)}</h2>",
    f'<p class="muted">{html.escape(metrics.get("source", ""))} &middot; checkpoint {html.escape(str(metrics.get("checkpoint", "")))}'
    f" &middot; {metrics.get('images_per_s', 0):.1f} images/s</p>",
    _table(rows, header),
    _table(per_class, ["class", "precision", "recall", "f1", "support"]),
  ]
  for png in (
    "confusion_matrix.png",
    "confusion_matrix_normalized.png",
    "confusion_matrix_normalized_all.png",
    "roc_pr.png",
    "reliability.png",
    "random_predictions.png",
    "hard_cases.png",
  ):
    parts.append(_img(os.path.join(folder, png), png))
  parts.append(f'<p><a href="{html.escape(name)}/predictions.csv">predictions.csv</a></p>')
  return "\n".join(parts)


def write_report(workdir: str) -> str:
  """Writes `workdir/report.html` from what the workdir holds; returns its path."""
  config = _read_json(os.path.join(workdir, "config.json")) or {}
  summary = _read_json(os.path.join(workdir, "summary.json")) or {}
  epochs, batches = plots.read_history(os.path.join(workdir, "metrics.jsonl"))
  plot_dir = os.path.join(workdir, "plots")
  curves = plots.training_curves(epochs, os.path.join(plot_dir, "training_curves.png"))
  batch = plots.batch_curves(batches, os.path.join(plot_dir, "batch_curves.png"))
  title = f"imgcls run: {os.path.basename(os.path.abspath(workdir))}"
  parts = [
    f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
    f"<style>{_STYLE}</style></head><body>",
    f"<h1>{html.escape(title)}</h1>",
  ]
  model = config.get("model", {}).get("name", "?")
  data = summary.get("data", {})
  parts.append(
    f'<p class="muted">model {html.escape(model)} &middot; data {html.escape(str(config.get("data", {}).get("dir", "")))}</p>'
  )
  if data:
    rows = [[name, n] for name, n in data.get("sizes", {}).items()]
    parts.append("<h2>Data</h2>" + _table(rows, ["subset", "images"]))
    names = summary.get("class_names") or []
    counts = data.get("class_counts", {})
    if names and counts:
      parts.append(_table([[c] + [counts[s][i] for s in counts] for i, c in enumerate(names)], ["class"] + list(counts)))
  if summary.get("final"):
    final, best = summary["final"], summary.get("best") or {}
    keys = [k for k in final if k.startswith(("train_", "val_"))]
    rows = [[k, final[k], (best.get("metrics") or {}).get(k, "")] for k in keys]
    parts.append("<h2>Training</h2>")
    parts.append(
      f"<p>{summary.get('epochs')} epochs, {final.get('step')} steps, {summary.get('wall_seconds', 0):.0f} s."
      + (f" Best {html.escape(best['monitor'])} = {best['value']:.4f} at epoch {best['epoch']}." if best else "")
      + "</p>"
    )
    parts.append(_table(rows, ["metric", "final", "best epoch"]))
  parts.append(_img(curves, "training curves"))
  parts.append(_img(batch, "per-batch curves"))
  for png in sorted(glob.glob(os.path.join(workdir, "inspect", "*.png"))):
    parts.append("<h2>Input samples</h2>" + _img(png, "input samples"))
  found = _read_json(os.path.join(workdir, "lr_find.json"))
  if found and found.get("suggestions"):
    shown = ", ".join(f"{k.replace('_', ' ')} {v:.3g}" for k, v in found["suggestions"].items())
    parts.append(f"<h2>Learning-rate finder</h2><p>Suggested: {html.escape(shown)}.</p>")
    parts.append(_img(os.path.join(workdir, "lr_find.png"), "learning-rate finder"))
  for folder in sorted(glob.glob(os.path.join(workdir, "eval_*"))):
    parts.append(_eval_section(folder))
  links = []
  for kind in ("best", "latest"):
    for step in sorted(glob.glob(os.path.join(workdir, "checkpoints", kind, "[0-9]*")), key=lambda p: int(os.path.basename(p))):
      rel = os.path.relpath(step, workdir)
      links.append(f'<li><a href="{html.escape(rel)}">{html.escape(rel)}</a></li>')
  if links:
    parts.append("<h2>Checkpoints</h2><ul>" + "".join(links) + "</ul>")
  parts.append("<h2>Config</h2><pre>" + html.escape(json.dumps(config, indent=2, sort_keys=True)) + "</pre>")
  parts.append("</body></html>")
  path = os.path.join(workdir, "report.html")
  with open(path, "w") as f:
    f.write("\n".join(p for p in parts if p))
  return path
