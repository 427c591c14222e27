"""Eval, predict, features and inspect on short real runs (pollen, flowers17), through the CLI and
in-process; every number in the written files is recomputed here with scikit-learn."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from conftest import FLOWERS, POLLEN, run_cli, save_run, tiny_config
from flax import nnx
from paths import shared
from PIL import Image
from sklearn import metrics as skm
from sklearn.decomposition import PCA

from imgcls import checkpoint as ckpt_lib
from imgcls import evaluate, features, inspection, restore, steps, train
from imgcls.data import sources

GRID_FILES = (
  "confusion_matrix.png",
  "confusion_matrix_normalized.png",
  "confusion_matrix_normalized_all.png",
  "roc_pr.png",
  "reliability.png",
  "random_predictions.png",
  "hard_cases.png",
)


def _needs(path: Path) -> None:
  if not path.exists():
    pytest.skip(f"{path} is not available")


@pytest.fixture(scope="session")
def pollen_run(tmp_path_factory):
  """A 2-epoch binary (one sigmoid unit) run on pollen at 32x32: (config, workdir, summary)."""
  _needs(POLLEN)
  workdir = tmp_path_factory.mktemp("pollen_run")
  config = tiny_config(
    POLLEN,
    **{
      "data.image_size": (32, 32),
      "data.label_mode": "binary",
      "data.batch_size": 32,
      "train.log_every_steps": 9,
    },
  )
  return config, workdir, train.train_and_evaluate(config, str(workdir))


@pytest.fixture(scope="session")
def pollen_eval(pollen_run):
  """`--mode=eval` through the CLI on the run's validation subset, eval batches of 50 (142 images:
  two full batches and a partial one); returns (completed process, eval folder)."""
  _, workdir, _ = pollen_run
  result = run_cli("--mode=eval", f"--workdir={workdir}", "--config.data.eval_batch_size=50")
  assert result.returncode == 0, result.stderr[-3000:]
  return result, workdir / "eval_val"


@pytest.fixture(scope="session")
def flowers_run(tmp_path_factory):
  """A 1-epoch 17-class run on flowers17 train/ at 16x16: (config, workdir)."""
  _needs(FLOWERS)
  workdir = tmp_path_factory.mktemp("flowers_run")
  config = tiny_config(FLOWERS, **{"train.epochs": 1, "data.batch_size": 32, "train.log_every_steps": 20})
  train.train_and_evaluate(config, str(workdir))
  return config, workdir


def recomputed(eval_dir: Path) -> tuple[dict, pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
  """(metrics.json, predictions.csv, labels, probabilities, predictions) of an eval folder."""
  report = json.loads((eval_dir / "metrics.json").read_text())
  table = pd.read_csv(eval_dir / "predictions.csv")
  names = report["class_names"]
  labels = table["label"].map(names.index).to_numpy()
  probs = table[[f"prob_{c}" for c in names]].to_numpy()
  predicted = table["predicted"].map(names.index).to_numpy()
  return report, table, labels, probs, predicted


def test_cli_eval_writes_metrics_tables_and_plots(pollen_run, pollen_eval):
  config, workdir, summary = pollen_run
  result, out = pollen_eval
  report = json.loads((out / "metrics.json").read_text())
  assert report["count"] == 142 == summary["data"]["sizes"]["val"]  # int(0.2 * 714), Keras's split.
  assert report["batch_size"] == 50 and report["batches"] == 3  # The override applied on the saved config.
  assert report["checkpoint"] == ckpt_lib.resolve(str(workdir)) and report["step"] == summary["best"]["step"]
  assert report["source"] == f"val subset of {POLLEN}" and report["threshold"] == 0.5
  assert report["images_per_s"] > 0 and report["seconds"] > 0
  assert set(report["class_names"]) == {"NP", "P"}
  for png in GRID_FILES:
    with Image.open(out / png) as image:
      assert image.width > 200 and image.height > 200, png
  with Image.open(out / "hard_cases.png") as image:
    assert image.size == (1584, 900)  # 32 images: 4 rows of 8 panels.
  text = (out / "classification_report.txt").read_text()
  assert "NP" in text and "macro avg" in text
  assert "Evaluated 142 images" in result.stdout
  page = (workdir / "report.html").read_text()
  assert "Evaluation: eval_val" in page and page.count("data:image/png;base64") >= 2 + len(GRID_FILES)


def test_metrics_json_equals_metrics_recomputed_from_predictions_csv(pollen_eval):
  report, table, labels, probs, predicted = recomputed(pollen_eval[1])
  assert len(table) == report["count"] and np.allclose(probs.sum(axis=1), 1.0)
  assert (predicted == (probs[:, 1] >= report["threshold"])).all()
  assert report["accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted))
  assert report["confusion_matrix"] == skm.confusion_matrix(labels, predicted, labels=[0, 1]).tolist()
  assert report["log_loss"] == pytest.approx(skm.log_loss(labels, probs, labels=[0, 1]), rel=1e-9)
  assert report["roc_auc"] == pytest.approx(skm.roc_auc_score(labels, probs[:, 1]))
  assert report["average_precision"] == pytest.approx(skm.average_precision_score(labels, probs[:, 1]))
  assert report["f1"] == pytest.approx(skm.f1_score(labels, predicted, zero_division=0))
  # The per-example loss column is the cross-entropy from the logits: its mean is the log loss.
  assert table["loss"].mean() == pytest.approx(report["log_loss"], rel=1e-6)
  hardest = table["loss"].idxmax()
  assert table.loc[hardest, "loss"] == pytest.approx(-np.log(probs[hardest, labels[hardest]]), rel=1e-6)


@pytest.fixture(scope="session")
def pollen_folder_eval(pollen_run):
  """Eval of the whole pollen folder (--input), keeping the jitted eval function it used."""
  config, workdir, _ = pollen_run
  made, compiled = [], []
  make = steps.make_eval_step
  steps.make_eval_step = lambda *a, **k: made.append(make(*a, **k)) or made[-1]
  handler = logging.Handler()
  handler.emit = lambda record: compiled.append(record.getMessage())
  logging.getLogger("jax").addHandler(handler)
  try:
    with jax.log_compiles():
      report = evaluate.evaluate(config, str(workdir), inputs=str(POLLEN))
  finally:
    steps.make_eval_step = make
    logging.getLogger("jax").removeHandler(handler)
  return report, made, [m for m in compiled if m.startswith("Compiling jit(eval_step)")]


def test_eval_of_a_folder_gives_its_images_the_same_probabilities(pollen_run, pollen_folder_eval, pollen_eval):
  report, *_ = pollen_folder_eval
  assert report["count"] == 714 and report["source"] == str(POLLEN) and report["name"] == "pollen"
  _, whole, *_ = recomputed(pollen_run[1] / "eval_pollen")
  _, val, *_ = recomputed(pollen_eval[1])
  both = val.merge(whole, on="path", suffixes=("_val", "_all"))
  assert len(both) == 142  # Every validation image is in the folder, in other batches.
  assert (both["label_val"] == both["label_all"]).all()
  np.testing.assert_allclose(both["prob_P_val"], both["prob_P_all"], rtol=1e-5, atol=1e-6)


def test_eval_compiles_once_for_all_batches(pollen_folder_eval):
  report, made, compiles = pollen_folder_eval
  assert report["batches"] == 23 and 714 % report["batch_size"]  # 22 full batches of 32 and one of 10.
  assert len(compiles) == 1, compiles  # Before timing; then 23 batches, the partial last one included.
  assert len(made) == 1 and made[0]._cache_size() == 1


def test_eval_at_a_step_or_checkpoint_with_a_threshold(pollen_run):
  config, workdir, summary = pollen_run
  latest = summary["final"]["step"]
  evaluate.evaluate(config, str(workdir), step=latest, threshold=0.9)
  report, table, labels, probs, predicted = recomputed(workdir / f"eval_val_step{latest}")
  assert report["step"] == latest and report["checkpoint"] == str(workdir / "checkpoints" / "latest" / str(latest))
  assert report["threshold"] == 0.9 and (predicted == (probs[:, 1] >= 0.9)).all()
  assert report["confusion_matrix"] == skm.confusion_matrix(labels, predicted, labels=[0, 1]).tolist()
  # The same weights named by their folder (--checkpoint) give the same predictions, in the same folder.
  again = evaluate.evaluate(config, str(workdir), checkpoint=report["checkpoint"])
  assert again["step"] == latest and again["threshold"] == 0.5
  np.testing.assert_allclose(
    pd.read_csv(workdir / f"eval_val_step{latest}" / "predictions.csv")["prob_P"], table["prob_P"], rtol=1e-6
  )


def test_flowers_run_on_its_test_folder(flowers_run):
  config, workdir = flowers_run
  report = evaluate.evaluate(config, str(workdir), inputs=str(FLOWERS / "test"))
  report, table, labels, probs, predicted = recomputed(workdir / "eval_test")
  test_size = json.loads((workdir / "summary.json").read_text())["data"]["sizes"]["test"]
  assert (
    report["count"] == test_size == 272
    and len(report["class_names"]) == 17
    and np.asarray(report["confusion_matrix"]).shape == (17, 17)
  )
  assert report["threshold"] is None and (predicted == probs.argmax(axis=1)).all()
  assert report["accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted))
  assert report["confusion_matrix"] == skm.confusion_matrix(labels, predicted, labels=list(range(17))).tolist()
  assert report["log_loss"] == pytest.approx(skm.log_loss(labels, probs, labels=list(range(17))), rel=1e-9)
  assert report["roc_auc"] == pytest.approx(skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
  assert len(report["curves"]["roc"]) == 17 and report["images_per_s"] > 0
  by_split = evaluate.evaluate(config, str(workdir), split="test")  # The run's own test subset: the same images.
  assert by_split["count"] == 272 and by_split["accuracy"] == report["accuracy"]


def test_predict_one_image_prints_probabilities_as_eval_has_them(pollen_run, pollen_eval, tmp_path):
  _, workdir, _ = pollen_run
  val = pd.read_csv(pollen_eval[1] / "predictions.csv")
  image = val["path"][0]
  out = tmp_path / "one.csv"
  result = run_cli("--mode=predict", f"--workdir={workdir}", f"--input={image}", f"--output={out}")
  assert result.returncode == 0, result.stderr[-3000:]
  lines = dict(line.split(" % is: ") for line in result.stdout.splitlines() if " % is: " in line)
  assert list(lines) == ["NP", "P"]
  assert sum(float(v) for v in lines.values()) == pytest.approx(100.0, abs=0.02)
  assert float(lines["P"]) == pytest.approx(100 * val["prob_P"][0], abs=0.006)
  table = pd.read_csv(out)
  assert list(table.columns) == ["path", "prob_NP", "prob_P", "predicted"] and len(table) == 1
  assert table["prob_P"][0] == pytest.approx(val["prob_P"][0], rel=1e-5)


def test_predict_a_folder_and_an_index(pollen_run, tmp_path):
  config, workdir, _ = pollen_run
  folder = tmp_path / "photos"
  (folder / "nested").mkdir(parents=True)
  picked = sorted((POLLEN / "P").iterdir())[:3] + sorted((POLLEN / "NP").iterdir())[:2]
  for i, path in enumerate(picked):
    shutil.copy(path, folder / ("nested" if i % 2 else "") / path.name)
  os.mkfifo(folder / "pipe.png")  # Not a file: never opened (reading it would wait forever).
  rows = evaluate.predict(config, inputs=str(folder), output=str(tmp_path / "folder.csv"), workdir=str(workdir))
  table = pd.read_csv(tmp_path / "folder.csv")
  assert len(rows) == len(table) == 5 and np.allclose(table["prob_NP"] + table["prob_P"], 1.0)
  assert Image.open(tmp_path / "folder.png").size[0] > 400  # The images titled with their predictions.
  assert (table["predicted"] == np.where(table["prob_P"] >= 0.5, "P", "NP")).all()
  pd.DataFrame({"path": [p.name for p in picked[:2]]}).to_csv(tmp_path / "photos" / "index.csv", index=False)
  shutil.copy(picked[0], folder / picked[0].name)
  shutil.copy(picked[1], folder / picked[1].name)
  indexed = evaluate.predict(config, inputs=str(folder / "index.csv"), output=str(tmp_path / "index.csv"), workdir=str(workdir))
  assert [Path(r["path"]).name for r in indexed] == [p.name for p in picked[:2]]
  by_name = {Path(p).name: q for p, q in zip(table["path"], table["prob_P"])}
  assert [r["prob_P"] for r in indexed] == pytest.approx([by_name[p.name] for p in picked[:2]], rel=1e-5)
  for output in (tmp_path, tmp_path / "preds.xlsx"):
    with pytest.raises(sources.DataError, match="must name a .csv file"):
      evaluate.predict(config, inputs=str(folder), output=str(output), workdir=str(workdir))


def test_features_table_pca_and_umap(pollen_run, tmp_path):
  config, workdir, summary = pollen_run
  out = tmp_path / "feats.csv"
  features.features(config, str(workdir), output=str(out))
  table = pd.read_csv(out)
  assert table["split"].value_counts().to_dict() == summary["data"]["sizes"]  # {train: 572, val: 142}
  columns = [c for c in table.columns if c.startswith("f") and c[1:].isdigit()]
  assert len(columns) == 16  # The head's Dense(16): the penultimate layer.
  assert list(table.columns) == ["path", "label", "split", *columns, "pca_x", "pca_y", "umap_x", "umap_y"]
  values = table[columns].to_numpy()
  expected = PCA(n_components=2, random_state=config.seed).fit_transform(values)
  np.testing.assert_allclose(np.abs(table[["pca_x", "pca_y"]].to_numpy()), np.abs(expected), atol=1e-6)
  assert np.isfinite(table[["umap_x", "umap_y"]].to_numpy()).all() and table["umap_x"].std() > 0
  for png in ("feats_pca.png", "feats_umap.png"):
    assert (tmp_path / png).stat().st_size > 10_000
  # The features are the restored model's penultimate vector for these images.
  run = restore.load(config, str(workdir))
  images = evaluate.load_pixels(table["path"][:4], config.data) * config.data.rescale
  np.testing.assert_allclose(values[:4], np.asarray(run.model.embed(jnp.asarray(images))), rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="session")
def keras_run(tree, tmp_path_factory):
  """A MobileNetV2 (alpha 0.35, 32x32) run's workdir: config.json and a best checkpoint as
  training writes them (weights as initialised, to spare compiling a train step)."""
  workdir = tmp_path_factory.mktemp("keras_run")
  config = tiny_config(
    tree, **{"model.name": "mobilenet_v2", "model.alpha": 0.35, "data.image_size": (32, 32), "model.head.hidden": (-1,)}
  )
  save_untrained_run(config, workdir)
  return config, workdir


def save_untrained_run(config, workdir: Path) -> steps.TrainState:
  """A workdir as training writes it (config.json, a best checkpoint at step 0) with the model as
  initialised, for the 3 classes of `tree`; returns the saved state."""
  return save_run(config, workdir, steps.create_model(config, 3), ["class_0", "class_1", "class_2"])


def test_features_of_a_head_layer_before_its_batch_norm(tree, tmp_path):
  """The cats-vs-dogs tutorial's `model.layers[-3]`: the BN CNN's Dense(image width) after its ReLU, before the
  BatchNorm that the default (penultimate) features include."""
  workdir = tmp_path / "run"
  config = tiny_config(tree, **{"model.name": "bn_cnn", "data.image_size": (48, 48), "model.head.hidden": (-1,)})
  save_untrained_run(config, workdir)
  run = restore.load(config, str(workdir))
  hidden = features.features(config, str(workdir), inputs=str(tree), layer="head/hidden/0", output=str(tmp_path / "h.csv"))
  columns = [c for c in hidden.columns if c.startswith("f") and c[1:].isdigit()]
  assert len(columns) == 48 and (hidden[columns].to_numpy() >= 0).all()
  images = jnp.asarray(evaluate.load_pixels(hidden["path"][:3], config.data) * config.data.rescale)
  head = run.model.head
  expected = jax.nn.relu(head.hidden[0](head.pool(run.model.features(images))))
  np.testing.assert_allclose(hidden[columns].to_numpy()[:3], np.asarray(expected), rtol=1e-4, atol=1e-5)
  with pytest.raises(restore.RunError, match="no layer 'head/hidden/1'.*head/hidden/0"):
    features.make_extract(run, "head/hidden/1")


def test_a_pretrained_run_is_used_without_its_weights_file(tree, tmp_path):
  """The checkpoint holds every weight: eval and predict of an ImageNet-initialised run work
  offline, after the Keras weights file is gone."""
  weights = shared("weights", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5")
  copy = tmp_path / "weights.h5"
  shutil.copy(weights, copy)
  workdir = tmp_path / "run"
  config = tiny_config(
    tree, **{"model.name": "mobilenet_v2", "model.weights": str(copy), "data.image_size": (32, 32), "model.head.hidden": (-1,)}
  )
  saved = save_untrained_run(config, workdir)
  copy.unlink()
  run = restore.load(config, str(workdir))
  for group in ("params", "frozen", "stats"):
    jax.tree.map(
      np.testing.assert_array_equal, nnx.to_pure_dict(getattr(run.state, group)), nnx.to_pure_dict(getattr(saved, group))
    )
  result = run_cli("--mode=predict", f"--workdir={workdir}", f"--input={tree}", f"--output={tmp_path / 'preds.csv'}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert len(pd.read_csv(tmp_path / "preds.csv")) == 36


def test_features_of_a_named_keras_layer_to_excel(keras_run, tree, tmp_path):
  config, workdir = keras_run
  out = tmp_path / "feats.xlsx"
  table = features.features(config, str(workdir), inputs=str(tree), layer="block_6_expand_relu", output=str(out))
  read = pd.read_excel(out)
  columns = [c for c in read.columns if c.startswith("f") and c[1:].isdigit()]
  assert len(read) == 36 and len(columns) == 96  # block_6_expand_relu of alpha 0.35: 96 channels, average-pooled.
  assert set(read["split"]) == {"images"} and set(read["label"]) == {"class_0", "class_1", "class_2"}
  np.testing.assert_allclose(read[columns].to_numpy(), table[columns].to_numpy(), rtol=1e-6)
  run = restore.load(config, str(workdir))
  images = jnp.asarray(evaluate.load_pixels(read["path"][:2], config.data) * config.data.rescale)
  backbone = run.model.backbone
  expected = backbone(backbone.preprocess(images, run.model.pixel_scale), output="block_6_expand_relu").mean(axis=(1, 2))
  np.testing.assert_allclose(read[columns].to_numpy()[:2], np.asarray(expected), rtol=1e-4, atol=1e-5)
  pooled = features.features(config, str(workdir), inputs=str(tree), layer="out_relu", output=str(tmp_path / "out.csv"))
  assert len([c for c in pooled.columns if c.startswith("f") and c[1:].isdigit()]) == 1280
  with pytest.raises(restore.RunError, match="no layer 'block_99'.*out_relu"):
    features.make_extract(run, "block_99")


def test_inspect_grid_of_one_augmented_training_batch(pollen_run):
  config, workdir, _ = pollen_run
  augmented = restore.with_overrides(config, tiny_config(POLLEN, **{"data.augment": "flip_lr|rotate(30)"}), ["data.augment"])
  info = inspection.inspect(augmented, str(workdir))
  images, labels, names = inspection.training_batch(augmented)
  plain, plain_labels, _ = inspection.training_batch(config)
  assert len(info["titles"]) == 32 and info["titles"] == [names[i] for i in labels]
  assert (labels == plain_labels).all() and not np.allclose(images, plain)  # The same examples, augmented.
  np.testing.assert_array_equal(images, inspection.training_batch(augmented)[0])  # The train step's key: reproducible.
  assert not np.allclose(images, inspection.training_batch(augmented, step=1)[0])
  with Image.open(info["path"]) as image:
    assert image.size == (1584, 900)  # 32 panels: 4 rows of 8.
  assert Path(info["path"]).parent == workdir / "inspect"
  assert "Input samples" in (workdir / "report.html").read_text()


# ---------------------------------------------------------------------------------------------
# Bad input: each error names what differs.


def test_checkpoint_with_other_classes(pollen_run, flowers_run):
  config, workdir, _ = pollen_run
  with pytest.raises(
    ckpt_lib.CheckpointError,
    match=r"trained on 17 classes \['bluebell'.*this run on 2 \['NP', 'P'\]: missing \['NP', 'P'\]; extra \['bluebell'",
  ):
    evaluate.evaluate(config, str(workdir), checkpoint=str(flowers_run[1]))


def test_checkpoint_with_other_shapes(pollen_run):
  config, workdir, _ = pollen_run
  wider = restore.with_overrides(config, tiny_config(POLLEN, **{"model.filters": 8}), ["model.filters"])
  with pytest.raises(ckpt_lib.CheckpointError) as error:
    restore.load(wider, str(workdir))
  assert "shape of backbone/conv1/kernel: checkpoint (3, 3, 3, 4), model (3, 3, 3, 8)" in str(error.value)
  assert "shape of backbone/conv3/kernel" in str(error.value)


def test_folder_with_some_of_the_classes(pollen_run, tmp_path):
  """A test folder may lack images of some classes (absent or empty class folders)."""
  config, workdir, _ = pollen_run
  for name in ("NP", "P"):
    (tmp_path / "some" / name).mkdir(parents=True)
  for path in sorted((POLLEN / "P").iterdir())[:5]:
    shutil.copy(path, tmp_path / "some" / "P" / path.name)
  report = evaluate.evaluate(config, str(workdir), inputs=str(tmp_path / "some"))
  assert report["count"] == 5 and np.asarray(report["confusion_matrix"])[0].sum() == 0  # No NP images.
  shutil.rmtree(tmp_path / "some" / "NP")
  assert evaluate.evaluate(config, str(workdir), inputs=str(tmp_path / "some"))["count"] == 5


def test_folder_with_other_class_names(pollen_run, tree):
  config, workdir, _ = pollen_run
  with pytest.raises(
    restore.RunError,
    match=r"has the classes \['class_0', 'class_1', 'class_2'\], the run \['NP', 'P'\]: missing \['NP', 'P'\]; extra \['class_0'",
  ):
    evaluate.evaluate(config, str(workdir), inputs=str(tree))


def test_empty_folder_missing_workdir_and_checkpoint(pollen_run, tmp_path):
  config, workdir, _ = pollen_run
  (tmp_path / "empty").mkdir()
  with pytest.raises(sources.DataError, match="has no class subfolders"):
    evaluate.evaluate(config, str(workdir), inputs=str(tmp_path / "empty"))
  with pytest.raises(sources.DataError, match="No image files under"):
    evaluate.predict(config, inputs=str(tmp_path / "empty"), output=str(tmp_path / "p.csv"), workdir=str(workdir))
  (tmp_path / "notes.txt").write_text("not images")
  with pytest.raises(sources.DataError, match="is neither a folder of class subfolders nor a CSV/Excel index"):
    evaluate.evaluate(config, str(workdir), inputs=str(tmp_path / "notes.txt"))
  with pytest.raises(restore.RunError, match="No run at"):
    evaluate.evaluate(config, str(tmp_path / "nowhere"))
  with pytest.raises(ckpt_lib.CheckpointError, match="Found no step 999"):
    evaluate.evaluate(config, str(workdir), step=999)
  untrained = tmp_path / "untrained"
  untrained.mkdir()
  shutil.copy(workdir / "config.json", untrained / "config.json")
  with pytest.raises(ckpt_lib.CheckpointError, match="Found no checkpoint under"):
    evaluate.evaluate(config, str(untrained))


def test_cli_errors_are_one_line(tmp_path):
  result = run_cli("--mode=eval", f"--workdir={tmp_path / 'nowhere'}", timeout=120)
  assert result.returncode == 1 and "error: No run at" in result.stderr and "Traceback" not in result.stderr
