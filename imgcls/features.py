"""Features of a trained run: embeddings of labelled images from the penultimate layer or any
named backbone layer, as a table (CSV or Excel) with their PCA and UMAP 2-D projections, and
scatter plots of both coloured by class (as the cats-vs-dogs tutorial's features mode).
"""

from __future__ import annotations

import functools
import os
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from imgcls import evaluate, restore
from imgcls.data import sources
from imgcls.models import as_floating
from imgcls.models.keras_net import KerasNet
from imgcls.predict import predict_split

PENULTIMATE = ""  # --layer default: what the output layer sees (model.embed).
BACKBONE = "backbone"  # The backbone's output (its cut layer), pooled.
HIDDEN = "head/hidden/"  # + N: the head's Nth Dense layer after its ReLU, before its BatchNorm.
EXCEL_MAX_COLUMNS = 16384


def layer_names(model: nnx.Module) -> list[str]:
  """The layers `--layer` can name for this model."""
  names = [BACKBONE] + [f"{HIDDEN}{number}" for number in range(len(model.head.hidden))]
  if isinstance(model.backbone, KerasNet):
    names += list(model.backbone.layer_names)
  return names


def make_extract(run: restore.Run, layer: str = PENULTIMATE):
  """A jitted `extract(images) -> (batch, features)`: `layer`'s activations, spatial maps averaged."""
  if layer not in (PENULTIMATE, *layer_names(run.model)):
    known = ", ".join(layer_names(run.model))
    raise restore.RunError(
      f"The model {run.config.model.name} has no layer {layer!r}; --layer can be empty (the penultimate layer) or one of: {known}."
    )

  @jax.jit
  def extract(state, images: jax.Array) -> jax.Array:  # The weights as an argument, not folded constants.
    model = nnx.merge(run.eval_graphdef, state.params, state.frozen, state.stats)
    x = run.prepare(images, None)
    if layer == PENULTIMATE:
      out = model.embed(x)
    elif layer == BACKBONE:
      out = model.features(x)
    elif layer.startswith(HIDDEN):
      out = model.head.embed(model.features(x), hidden_layer=int(layer.removeprefix(HIDDEN)))
    else:
      backbone = model.backbone
      out = backbone(backbone.preprocess(as_floating(x), model.pixel_scale), output=layer)
    if out.ndim > 2:  # A feature map: global average pooling.
      out = jnp.mean(out, axis=tuple(range(1, out.ndim - 1)))
    return out

  return functools.partial(extract, run.state)


def extract_features(run: restore.Run, split: sources.Split, layer: str = PENULTIMATE) -> np.ndarray:
  """(len(split), features) for the images of `split`, in order, in padded batches."""
  return predict_split(make_extract(run, layer), split, run.config.data)


def project(features: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(PCA 2-D, UMAP 2-D) of the rows of `features`; UMAP's neighbourhood fits small sets."""
  from sklearn.decomposition import PCA

  n, d = features.shape
  pca = np.zeros((n, 2))
  if n >= 2:
    k = min(2, n, d)
    pca[:, :k] = PCA(n_components=k, random_state=seed).fit_transform(features)
  umap_xy = np.full((n, 2), np.nan)
  if n >= 4:
    import umap

    # UMAP needs n_neighbors < n; spectral initialisation needs more points than a tiny set has.
    neighbours = max(2, min(15, n - 1))
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", UserWarning)  # "n_jobs overridden by random_state".
      reducer = umap.UMAP(n_neighbors=neighbours, n_components=2, random_state=seed, init="spectral" if n > 20 else "random")
      umap_xy = reducer.fit_transform(features)
  else:
    warnings.warn(f"UMAP needs at least 4 images; {n} given: its columns are empty.", stacklevel=2)
  return pca, umap_xy


def features(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  inputs: str | None = None,
  layer: str = PENULTIMATE,
  output: str | None = None,
  checkpoint: str | None = None,
  step: int | None = None,
):
  """Features of `inputs` (a class-per-folder tree or CSV/Excel index; default every subset of
  the run) written to `output` (.csv, or .xlsx; default workdir/features/features.csv) with
  path, label, split, the feature columns, pca_x/y and umap_x/y; PCA and UMAP scatter plots
  beside it (<name>_pca.png, <name>_umap.png). Returns the table (a pandas DataFrame)."""
  import pandas as pd

  from imgcls.report import plots

  run = restore.load(config, workdir, checkpoint, step)
  output = output or os.path.join(workdir, "features", "features.csv")
  if not output.lower().endswith((".csv", ".xlsx")):
    raise restore.RunError(f"--output={output!r}: features are written as .csv or .xlsx.")
  if inputs is not None:
    data, _, name = evaluate.labelled_data(run, inputs=inputs)
    parts = [(data, name)]
  else:
    parts, seen = [], set()
    for name, split in sources.find_splits(config.data, config.seed).items():
      keep = np.asarray([p not in seen for p in split.paths], bool)  # val may be test itself.
      seen.update(split.paths)
      if keep.any():
        parts.append(
          (sources.Split([p for p, k in zip(split.paths, keep) if k], split.labels[keep], run.class_names, name), name)
        )
  values = np.concatenate([extract_features(run, data, layer) for data, _ in parts]).astype(np.float64)
  if output.lower().endswith(".xlsx") and values.shape[1] + 7 > EXCEL_MAX_COLUMNS:
    raise restore.RunError(f"{values.shape[1]} features do not fit an Excel sheet ({EXCEL_MAX_COLUMNS} columns): write a .csv.")
  labels = np.concatenate([data.labels for data, _ in parts])
  table = pd.DataFrame(
    {
      "path": [p for data, _ in parts for p in data.paths],
      "label": [run.class_names[i] for i in labels],
      "split": [name for data, name in parts for _ in data.paths],
    }
  )
  columns = pd.DataFrame(values, columns=[f"f{i}" for i in range(values.shape[1])])
  pca, umap_xy = project(values, config.seed)
  projections = pd.DataFrame({"pca_x": pca[:, 0], "pca_y": pca[:, 1], "umap_x": umap_xy[:, 0], "umap_y": umap_xy[:, 1]})
  table = pd.concat([table, columns, projections], axis=1)
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  if output.lower().endswith(".xlsx"):
    table.to_excel(output, index=False)
  else:
    table.to_csv(output, index=False)
  stem = os.path.splitext(output)[0]
  what = f"{layer or 'penultimate layer'} of {run.config.model.name}"
  plots.scatter_2d(pca, labels, run.class_names, f"{stem}_pca.png", f"PCA: {what}")
  if not np.isnan(umap_xy).all():
    plots.scatter_2d(umap_xy, labels, run.class_names, f"{stem}_umap.png", f"UMAP: {what}")
  print(f"{len(table)} images, {values.shape[1]} features ({what}): {os.path.abspath(output)}")
  return table
