"""Evaluating and using a trained run: `evaluate` (metrics, tables and plots of a labelled
subset or folder), `predict` (class probabilities of image files; also Keras's ImageNet classifier).
"""

from __future__ import annotations

import csv
import functools
import json
import os
import re
import sys
import warnings
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from flax import nnx

from imgcls import metrics, restore, steps, tta
from imgcls.data import images, sources
from imgcls.data.images import is_image_file
from imgcls.models import Classifier, build_model, imagenet
from imgcls.predict import predict_split, timed_predict

INDEX_EXTENSIONS = (".csv", ".xlsx", ".xls")
GRID_SIZE = 32  # Images in the random-predictions and hard-cases grids (4 rows of 8, as the pollen tutorial).


def image_files(inputs: str) -> list[str]:
  """`inputs` if it is an image file, else the image files under the folder `inputs`, sorted."""
  if os.path.isfile(inputs):
    if not is_image_file(inputs):
      raise sources.DataError(f"{inputs} is not an image file (by its extension).")
    return [inputs]
  if not os.path.isdir(inputs):
    raise FileNotFoundError(f"No image file or folder at {inputs}.")
  found = []
  for root, dirs, names in os.walk(inputs):
    dirs.sort()
    found += [
      os.path.join(root, name) for name in sorted(names) if is_image_file(name) and os.path.isfile(os.path.join(root, name))
    ]
  if not found:
    raise sources.DataError(f"No image files under {inputs}.")
  return found


# ---------------------------------------------------------------------------------------------
# The images to evaluate.


def is_index(path: str) -> bool:
  return os.path.isfile(path) and path.lower().endswith(INDEX_EXTENSIONS)


def _index_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The data config that reads an index given on the command line: relative paths resolve as
  in training for a run trained from an index, else against the index's own folder."""
  data = ml_collections.ConfigDict(config.data.to_dict())
  if not config.data.index:
    data.dir = ""
  return data


def without_bad_images(split: sources.Split, data_config) -> sources.Split:
  """`split` less missing or undecodable files: fails listing them unless data.skip_bad_images."""
  bad = {p: "file not found" for p in split.paths if not p.startswith("tfds:") and not os.path.isfile(p)}
  bad.update(sources.find_bad_images([p for p in split.paths if p not in bad], data_config.color_mode, data_config.num_threads))
  if not bad:
    return split
  listing = "\n".join(f"  {p}: {r}" for p, r in sorted(bad.items()))
  if not data_config.skip_bad_images:
    raise sources.DataError(
      f"{len(bad)} image file(s) cannot be read:\n{listing}\nFix or remove them, or pass --config.data.skip_bad_images=True."
    )
  warnings.warn(f"Skipping {len(bad)} image file(s) that cannot be read:\n{listing}", stacklevel=2)
  return sources.without(split, bad)


def labelled_data(run: restore.Run, split: str = "val", inputs: str | None = None) -> tuple[sources.Split, str, str]:
  """(images with labels, where they come from, a short name) for eval and features: the run's
  `split` subset, or `inputs`, a class-per-folder tree or a CSV/Excel index with the run's classes."""
  config = run.config
  if inputs is None:
    splits = sources.find_splits(config.data, config.seed)
    if split not in splits:
      raise restore.RunError(f"The run's data has no {split!r} subset; it has {', '.join(splits)}. Use --split or --input.")
    where = config.data.index or config.data.dir
    restore.check_classes(splits[split].class_names, run.class_names, f"The run's data {where!r}")
    return splits[split], f"{split} subset of {where}", split
  if is_index(inputs):
    scan = sources.scan_index(inputs, _index_config(config), run.class_names)
    restore.check_classes(scan.class_names, run.class_names, f"The index {inputs!r}")
  elif os.path.isdir(inputs):
    # Some of the run's classes may be absent or empty here: labels follow the run's class names.
    scan = sources.scan_folder(inputs, follow_links=config.data.follow_links, for_training=False)
    if set(scan.class_names) <= set(run.class_names):
      scan.labels = np.asarray([run.class_names.index(scan.class_names[i]) for i in scan.labels], np.int32)
      scan.class_names = list(run.class_names)
    restore.check_classes(scan.class_names, run.class_names, f"The folder {inputs!r}")
  else:
    raise sources.DataError(
      f"--input={inputs} is neither a folder of class subfolders nor a CSV/Excel index ({', '.join(INDEX_EXTENSIONS)})."
    )
  name = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.splitext(os.path.basename(os.path.normpath(inputs)))[0]) or "input"
  found = sources.Split(scan.paths, scan.labels, list(run.class_names), name)
  return without_bad_images(found, config.data), os.path.abspath(inputs), name


def input_paths(inputs: str, config: ml_collections.ConfigDict) -> list[str]:
  """The images `inputs` names: an image file, the images under a folder, or an index's paths."""
  if is_index(inputs):
    import pandas as pd

    try:
      table = pd.read_excel(inputs) if inputs.lower().endswith((".xlsx", ".xls")) else pd.read_csv(inputs)
    except Exception as e:  # pandas raises many types for unreadable files.
      raise sources.DataError(f"Cannot read index {inputs!r}: {e}") from e
    column = config.data.path_column
    if column not in table.columns:
      raise sources.DataError(
        f"Index {inputs!r} has no column {column!r}; its columns are {list(table.columns)}. Set data.path_column."
      )
    root = _index_config(config).dir or os.path.dirname(os.path.abspath(inputs))
    paths = [p if os.path.isabs(p) else os.path.join(root, p) for p in table[column].astype(str)]
    if not paths:
      raise sources.DataError(f"Index {inputs!r} lists no images.")
    return paths
  return image_files(inputs)


# ---------------------------------------------------------------------------------------------
# Running the model.


def run_logits(run: restore.Run, split: sources.Split, tta_views: tuple[str, ...] = ()) -> tuple[np.ndarray, dict]:
  """Logits of every image of `split` (in order), float64, and the timing of `predict.timed_predict`;
  with `tta_views` (`tta.parse`), logits of the probabilities averaged over those views."""
  eval_step = steps.make_eval_step(run.eval_graphdef, run.prepare)
  fn = functools.partial(eval_step, run.state)
  if tta_views:
    fn = tta.averaged_logits(fn, tta_views)
  logits, timing = timed_predict(fn, split, run.config.data)
  return logits.astype(np.float64), timing


def decision_threshold(run: restore.Run, threshold: float | None) -> float | None:
  """The threshold on p(second class): the given one, else the config's for a binary (one-unit) model."""
  if threshold is None:
    return float(run.config.train.threshold) if run.binary else None
  if len(run.class_names) != 2:
    raise restore.RunError(f"--threshold applies to two-class models; this run has {len(run.class_names)} classes.")
  if not 0.0 <= threshold <= 1.0:
    raise restore.RunError(f"--threshold={threshold} must be between 0 and 1.")
  return float(threshold)


def probability_columns(class_names: Sequence[str]) -> list[str]:
  return [f"prob_{name}" for name in class_names]


def load_pixels(paths: Sequence[str], data_config) -> np.ndarray:
  """Images as the eval pipeline reads them (decoded, resized; before rescaling), NHWC float32."""
  spec = images.ImageSpec.from_config(data_config)
  return np.stack([images.load_image(p, spec) for p in paths])


# ---------------------------------------------------------------------------------------------
# Eval.


def evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  split: str = "val",
  inputs: str | None = None,
  checkpoint: str | None = None,
  step: int | None = None,
  threshold: float | None = None,
  tta_spec: str = "",
) -> dict:
  """Evaluates a trained run on its `split` subset or on `inputs` (a class-per-folder tree or a
  CSV/Excel index) and writes `workdir/eval_<name>/` (`eval_<name>_step<N>/` for the weights of a
  given `step` or `checkpoint`): metrics.json, classification_report.txt,
  predictions.csv and the plots; then rewrites report.html. Returns metrics.json's content.
  `tta_spec` (`--tta`, e.g. "flip"): metrics of the test-time-augmented probabilities too, under
  "tta" in metrics.json, and their columns in predictions.csv."""
  import pandas as pd

  from imgcls.report import html, plots

  views = tta.parse(tta_spec)
  run = restore.load(config, workdir, checkpoint, step)
  data, source, name = labelled_data(run, split, inputs)
  threshold = decision_threshold(run, threshold)
  logits, timing = run_logits(run, data)
  probs = metrics.probabilities(logits)
  losses = metrics.example_losses(logits, data.labels)
  predicted = metrics.predicted_labels(probs, threshold)
  names = np.asarray(run.class_names, dtype=object)
  report = metrics.evaluation_report(data.labels, probs, run.class_names, threshold)
  report.update(
    {
      "source": source,
      "name": name,
      "checkpoint": run.checkpoint,
      "step": run.step,
      "class_names": run.class_names,
      "mean_loss": float(losses.mean()),
      **timing,
    }
  )
  tta_probs = None
  if views:
    tta_logits, tta_timing = run_logits(run, data, views)
    tta_probs = metrics.probabilities(tta_logits)
    tta_report = metrics.evaluation_report(data.labels, tta_probs, run.class_names, threshold)
    report["tta"] = {
      "views": list(views),
      **{k: v for k, v in tta_report.items() if isinstance(v, float)},
      "mean_loss": float(metrics.example_losses(tta_logits, data.labels).mean()),
      "images_per_s": tta_timing["images_per_s"],
    }

  chosen = step is not None or checkpoint is not None  # Not the default (best) weights: keep both.
  out = os.path.join(workdir, f"eval_{name}" + (f"_step{run.step}" if chosen else ""))
  os.makedirs(out, exist_ok=True)
  table = pd.DataFrame({"path": data.paths, "label": names[data.labels]})
  for column, values in zip(probability_columns(run.class_names), probs.T):
    table[column] = values
  table["predicted"] = names[predicted]
  table["loss"] = losses
  if tta_probs is not None:
    for column, values in zip(probability_columns(run.class_names), tta_probs.T):
      table[column.replace("prob_", "tta_prob_", 1)] = values
    table["tta_predicted"] = names[metrics.predicted_labels(tta_probs, threshold)]
  table.to_csv(os.path.join(out, "predictions.csv"), index=False)
  with open(os.path.join(out, "classification_report.txt"), "w") as f:
    f.write(report["classification_report_text"])
  with open(os.path.join(out, "metrics.json"), "w") as f:
    json.dump(report, f, indent=1)

  plots.confusion_matrix(np.asarray(report["confusion_matrix"]), run.class_names, os.path.join(out, "confusion_matrix.png"))
  plots.confusion_matrix(
    np.asarray(report["confusion_matrix_normalized"]),
    run.class_names,
    os.path.join(out, "confusion_matrix_normalized.png"),
    normalized="true",
  )
  plots.confusion_matrix(
    np.asarray(report["confusion_matrix_normalized_all"]),
    run.class_names,
    os.path.join(out, "confusion_matrix_normalized_all.png"),
    normalized="all",
  )
  plots.roc_pr_curves(report["curves"], os.path.join(out, "roc_pr.png"))
  plots.reliability_diagram(report["reliability"], report["ece"], os.path.join(out, "reliability.png"))
  confidence = probs[np.arange(len(probs)), predicted]
  shown = {
    "random_predictions.png": (np.random.default_rng(config.seed).permutation(len(data))[:GRID_SIZE], "random predictions"),
    "hard_cases.png": (np.argsort(-losses, kind="stable")[:GRID_SIZE], "hard cases: highest loss first"),
  }
  for png, (index, title) in shown.items():
    plots.image_grid(
      load_pixels([data.paths[i] for i in index], config.data),
      [f"True: {names[data.labels[i]]}" for i in index],
      os.path.join(out, png),
      xlabels=[f"Pred: {names[predicted[i]]} ({confidence[i]:.2f})" for i in index],
      title=title,
    )
  html.write_report(workdir)
  shown_metrics = " ".join(f"{k}={report[k]:.4f}" for k in ("accuracy", "macro_f1", "f1", "roc_auc", "log_loss") if k in report)
  if views:
    shown_metrics += f"; with TTA ({', '.join(views)}): accuracy={report['tta']['accuracy']:.4f}"
  print(
    f"Evaluated {len(data)} images ({source}) with {run.checkpoint}: {shown_metrics}; "
    f"{timing['images_per_s']:.1f} images/s. Results in {os.path.abspath(out)}"
  )
  return report


# ---------------------------------------------------------------------------------------------
# Predict.


def _predict_run(config, inputs, output, workdir, checkpoint, step, threshold, views) -> list[dict]:
  import pandas as pd

  run = restore.load(config, workdir, checkpoint, step)
  threshold = decision_threshold(run, threshold)
  paths = input_paths(inputs, run.config)
  found = without_bad_images(sources.Split(paths, np.zeros(len(paths), np.int32), run.class_names, "predict"), run.config.data)
  if not len(found):
    raise sources.DataError(f"No readable images in {inputs!r}.")
  logits, _ = run_logits(run, found, views)
  probs = metrics.probabilities(logits)
  predicted = metrics.predicted_labels(probs, threshold)
  table = pd.DataFrame({"path": found.paths})
  for column, values in zip(probability_columns(run.class_names), probs.T):
    table[column] = values
  table["predicted"] = [run.class_names[i] for i in predicted]
  if os.path.dirname(output):
    os.makedirs(os.path.dirname(output), exist_ok=True)
  table.to_csv(output, index=False)
  confidence = probs[np.arange(len(probs)), predicted]
  titles = [f"{run.class_names[i]} ({p:.2f})" for i, p in zip(predicted, confidence)]
  prediction_grid(found.paths, titles, output, run.config.data, "model predictions")
  if len(found) == 1:  # As the X-ray tutorial: "Covid % is: ..." for every class.
    for name, p in zip(run.class_names, probs[0]):
      print(f"{name} % is: {100 * p:.2f}")
  print(f"Predicted {len(found)} image(s) with {run.checkpoint}: {output}", file=sys.stderr)
  return table.to_dict("records")


# ---------------------------------------------------------------------------------------------
# Keras's ImageNet classifier.


def _imagenet_model(config: ml_collections.ConfigDict) -> tuple[Classifier, Sequence[str]]:
  if not config.model.include_top:
    raise ValueError(
      "predict without a workdir needs Keras's ImageNet classifier (config.model.include_top=True, "
      "e.g. configs/imagenet.py); pass the workdir of a trained run otherwise."
    )
  if not config.model.weights:
    warnings.warn("Predicting with a randomly initialised model: config.model.weights is empty.", stacklevel=3)
  return build_model(config, 1000, rngs=nnx.Rngs(config.seed)), imagenet.class_names()


def predict(
  config: ml_collections.ConfigDict,
  *,
  inputs: str,
  output: str,
  workdir: str | None = None,
  top_k: int = 5,
  checkpoint: str | None = None,
  step: int | None = None,
  threshold: float | None = None,
  tta_spec: str = "",
) -> list[dict]:
  """Class probabilities of every image in `inputs` (a file, a folder searched recursively, or a
  CSV/Excel index), written as a CSV to `output`; returns its rows. `tta_spec` (`--tta`, e.g.
  "flip"): the probabilities averaged over those views of each image.

  With `workdir` (a trained run): path, prob_<class> for every class, predicted; for a single
  image the probabilities are also printed, one line per class. Without `workdir` the model is
  the config's ImageNet classifier (configs/imagenet.py): path, class_1, prob_1, ... class_k, prob_k.
  """
  if os.path.isdir(output) or not output.lower().endswith(".csv"):
    raise sources.DataError(f"--output={output} must name a .csv file: predict writes a CSV table.")
  views = tta.parse(tta_spec)
  if workdir is not None:
    return _predict_run(config, inputs, output, workdir, checkpoint, step, threshold, views)
  paths = image_files(inputs)
  model, class_names = _imagenet_model(config)
  model.eval()
  top_k = max(1, min(top_k, len(class_names)))
  found = without_bad_images(sources.Split(paths, np.zeros(len(paths), np.int32), list(class_names), "predict"), config.data)
  graphdef, variables = nnx.split(model)
  # The weights are an argument, not constants folded into the compiled function.
  forward = jax.jit(lambda variables, images: nnx.merge(graphdef, variables)(images))
  fn = functools.partial(forward, variables)
  probs = metrics.probabilities(predict_split(tta.averaged_logits(fn, views) if views else fn, found, config.data))
  rows = []
  for path, row in zip(found.paths, probs):
    best = np.argsort(-row, kind="stable")[:top_k]
    record = {"path": path}
    for rank, index in enumerate(best, start=1):
      record[f"class_{rank}"] = class_names[index]
      record[f"prob_{rank}"] = float(row[index])
    rows.append(record)
  _write_csv(output, rows, top_k)
  prediction_grid(
    [r["path"] for r in rows], [f"{r['class_1']} ({r['prob_1']:.2f})" for r in rows], output, config.data, "ImageNet predictions"
  )
  return rows


def prediction_grid(paths: Sequence[str], titles: Sequence[str], output: str, data_config, title: str) -> str:
  """The first images of a prediction table, titled with their prediction, beside it as a PNG."""
  from imgcls.report import plots

  path = os.path.splitext(output)[0] + ".png"
  if not paths:
    return ""
  plots.image_grid(load_pixels(paths[:GRID_SIZE], data_config), titles[:GRID_SIZE], path, title=title)
  return path


def _write_csv(output: str, rows: list[dict], top_k: int) -> None:
  if os.path.dirname(output):
    os.makedirs(os.path.dirname(output), exist_ok=True)
  fields = ["path"] + [f"{kind}_{rank}" for rank in range(1, top_k + 1) for kind in ("class", "prob")]
  with open(output, "w", newline="", encoding="utf8") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
