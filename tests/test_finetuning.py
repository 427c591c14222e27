"""The fine-tuning toolbox: mixup/CutMix, gradient accumulation, EMA of the weights, one-cycle."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config
from flax import nnx

from imgcls import checkpoint as ckpt_lib
from imgcls import feature_cache, metrics, mix, optim, restore, steps, train


def batch_of(n: int, rows: int | None = None, size: int = 16, seed: int = 0) -> dict:
  """n images (the last n - rows padding when `rows` is given), labels of 3 classes."""
  rng = np.random.default_rng(seed)
  rows = n if rows is None else rows
  return {
    "image": jnp.asarray(rng.uniform(0, 1, (n, size, size, 3)), jnp.float32),
    "label": jnp.asarray(rng.integers(0, 3, n), jnp.int32),
    "mask": jnp.asarray(np.arange(n) < rows, jnp.float32),
  }


def test_partners_reverse_the_real_rows_and_leave_padding_alone():
  assert np.asarray(mix.partners(jnp.asarray([1, 1, 1, 1, 1, 0, 0], jnp.float32))).tolist() == [4, 3, 2, 1, 0, 5, 6]


def test_mixup_blends_each_image_with_its_partner_by_one_lambda():
  b = batch_of(6, rows=5)
  mixed, lam, partner = mix.mix_batch(mix.Mix(mixup_alpha=0.4), b["image"], b["mask"], jax.random.key(3))
  lam, partner, x = float(lam), np.asarray(partner), np.asarray(b["image"])
  assert 0.0 < lam < 1.0 and partner.tolist() == [4, 3, 2, 1, 0, 5]
  np.testing.assert_allclose(np.asarray(mixed), lam * x + (1 - lam) * x[partner], atol=1e-6)
  # Beta(0.4, 0.4) over many batches: mean 0.5, mostly near 0 or 1.
  lams = [float(mix.mix_batch(mix.Mix(mixup_alpha=0.4), b["image"], b["mask"], jax.random.key(s))[1]) for s in range(200)]
  assert abs(np.mean(lams) - 0.5) < 0.06 and np.mean((np.array(lams) < 0.2) | (np.array(lams) > 0.8)) > 0.5


def test_cutmix_pastes_one_box_and_lambda_is_its_area():
  b = batch_of(4)
  x = np.asarray(b["image"])
  for seed in range(20):
    mixed, lam, partner = mix.mix_batch(mix.Mix(cutmix_alpha=1.0), b["image"], b["mask"], jax.random.key(seed))
    mixed, partner = np.asarray(mixed), np.asarray(partner)
    pasted = np.all(np.isclose(mixed, x[partner]), axis=(0, 3)) & ~np.all(np.isclose(mixed, x), axis=(0, 3))
    kept = np.all(np.isclose(mixed, x), axis=(0, 3))
    assert np.all(pasted | kept)  # Every pixel is either the image's or its partner's.
    ys, xs = np.nonzero(pasted)
    if len(ys):  # The pasted pixels form one rectangle.
      assert pasted[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].all()
    np.testing.assert_allclose(float(lam), 1 - pasted.mean(), atol=1e-6)


def test_mix_prob_zero_batches_are_left_alone_and_switch_picks_cutmix():
  b = batch_of(4)
  mixed, lam, _ = mix.mix_batch(mix.Mix(mixup_alpha=1.0, prob=0.0), b["image"], b["mask"], jax.random.key(0))
  assert float(lam) == 1.0 and np.array_equal(np.asarray(mixed), np.asarray(b["image"]))
  # switch_prob=1 with both on: always CutMix, so every pixel is one image's or the other's.
  mixed, _, partner = mix.mix_batch(mix.Mix(1.0, 1.0, switch_prob=1.0), b["image"], b["mask"], jax.random.key(1))
  x, mixed = np.asarray(b["image"]), np.asarray(mixed)
  assert np.all(np.isclose(mixed, x) | np.isclose(mixed, x[np.asarray(partner)]))


@pytest.mark.parametrize("outputs", [1, 3])
def test_soft_target_loss_is_the_mix_of_the_two_losses(outputs):
  rng = np.random.default_rng(0)
  logits, a, b = rng.normal(size=(5, outputs)), rng.integers(0, max(outputs, 2), 5), rng.integers(0, max(outputs, 2), 5)
  lam, smoothing = 0.3, 0.1
  soft = lam * metrics.targets(a, outputs, smoothing) + (1 - lam) * metrics.targets(b, outputs, smoothing)
  np.testing.assert_allclose(
    metrics.cross_entropy(logits, soft),
    lam * metrics.example_losses(logits, a, smoothing) + (1 - lam) * metrics.example_losses(logits, b, smoothing),
    rtol=1e-12,
  )


def one_step(config, batch: dict, cfg: steps.StepConfig, steps_taken: int = 1):
  """The state after `steps_taken` train steps on `batch` (the tiny insects CNN, no dropout)."""
  model = steps.create_model(config, cfg.num_classes)
  graphdef, _, params, frozen, stats = steps.split_model(model)
  tx = optim.make_optimizer(config.optimizer, optim.learning_rate_schedule(config.optimizer, 1, 1))
  state = steps.initial_state(params, frozen, stats, tx, cfg.num_classes, ema=cfg.ema_decay > 0)
  step = steps.make_train_step(graphdef, tx, optim.update_scales(params, config), cfg)
  history = []
  for i in range(steps_taken):
    state = step(state, batch, jax.random.key(i), jnp.float32(1.0))
    history.append(jax.tree.map(np.asarray, (state.params, state.stats)))
  return state, history


@pytest.mark.parametrize("rows", [8, 7])
def test_accumulated_micro_batches_give_the_large_batch_update(tmp_path, rows):
  config = tiny_config(tmp_path, **{"model.head.dropout": 0.0, "optimizer.name": "sgd", "optimizer.learning_rate": 0.5})
  batch = batch_of(rows)
  cfg = steps.StepConfig(3, 0.5, 0.1, (), mix=mix.Mix(mixup_alpha=0.5))  # Mixing happens before the split.
  whole, _ = one_step(config, batch, cfg)
  for k in (2, 4):
    accumulated, _ = one_step(config, batch, steps.StepConfig(3, 0.5, 0.1, (), mix=mix.Mix(mixup_alpha=0.5), accumulate_steps=k))
    moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(), whole.params, accumulated.params)
    assert max(jax.tree.leaves(moved)) < 2e-6, k
    np.testing.assert_allclose(accumulated.epoch_sums["loss"], whole.epoch_sums["loss"], rtol=1e-5)
    np.testing.assert_array_equal(accumulated.epoch_sums["confusion"], whole.epoch_sums["confusion"])


def test_binary_model_trains_on_mixed_soft_targets(tmp_path):
  config = tiny_config(tmp_path, **{"data.label_mode": "binary", "model.head.dropout": 0.0})
  batch = {**batch_of(8), "label": jnp.asarray([0, 1] * 4, jnp.int32)}
  cfg = steps.StepConfig(2, 0.5, 0.1, (), mix=mix.Mix(mixup_alpha=0.4, cutmix_alpha=1.0))
  state, _ = one_step(config, batch, cfg, steps_taken=2)
  start = steps.split_model(steps.create_model(config, 2))[2]
  assert np.isfinite(float(state.epoch_sums["loss"])) and state.epoch_sums["confusion"].shape == (2, 2)
  assert max(jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(), state.params, start))) > 0


def test_ema_follows_the_weights_with_warmup(tmp_path):
  config = tiny_config(tmp_path, **{"model.head.dropout": 0.0})
  assert [round(float(steps.ema_decay(0.999, True, jnp.asarray(s))), 6) for s in (0, 10, 10_000)] == [0.1, 0.55, 0.999]
  assert float(steps.ema_decay(0.9, False, jnp.asarray(0))) == pytest.approx(0.9)
  cfg = steps.StepConfig(3, 0.5, 0.0, (), ema_decay=0.9)
  state, history = one_step(config, batch_of(8), cfg, steps_taken=3)
  expected = jax.tree.map(np.asarray, steps.split_model(steps.create_model(config, 3))[2])  # The weights at step 0.
  for s, (params, _) in enumerate(history):
    d = min(0.9, (1 + s) / (10 + s))
    expected = jax.tree.map(lambda e, p, d=d: d * e + (1 - d) * p, expected, params)
  gap = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - b).max(), state.ema["params"], expected)
  assert max(jax.tree.leaves(gap)) < 1e-6
  assert (
    max(
      jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(), state.ema["params"], state.params))
    )
    > 1e-4
  )


@pytest.fixture(scope="module")
def toolbox_run(tree, tmp_path_factory):
  """A 2-epoch run with mixup, CutMix, EMA and accumulation all on."""
  workdir = tmp_path_factory.mktemp("toolbox")
  config = tiny_config(
    tree,
    **{
      "data.validation_split": 0.25,
      "train.mixup_alpha": 0.4,
      "train.cutmix_alpha": 1.0,
      "train.ema_decay": 0.9,
      "train.accumulate_steps": 2,
      "optimizer.learning_rate": 3e-3,
    },
  )
  return config, workdir, train.train_and_evaluate(config, str(workdir))


def test_ema_run_validates_saves_and_restores_the_averages(toolbox_run):
  config, workdir, summary = toolbox_run
  saved = ckpt_lib.read_state(ckpt_lib.resolve(str(workdir)))
  assert saved["ema"]["params"] and saved["ema"]["stats"] is not None
  run = restore.load(config, str(workdir))
  ema = jax.tree.leaves(saved["ema"]["params"])
  raw = jax.tree.leaves(saved["params"])
  loaded = jax.tree.leaves(jax.tree.map(np.asarray, run.state.params))
  assert all(np.array_equal(a, b) for a, b in zip(loaded, ema)) and not all(np.array_equal(a, b) for a, b in zip(ema, raw))
  assert summary["final"]["train_loss"] > 0 and 0 <= summary["final"]["val_accuracy"] <= 1


def test_resume_with_mixing_ema_and_accumulation_is_exact(toolbox_run, tmp_path):
  config, _, summary = toolbox_run
  first = config.copy_and_resolve_references()
  first.train.epochs = 1
  train.train_and_evaluate(first, str(tmp_path))
  resumed = train.train_and_evaluate(config, str(tmp_path))
  assert resumed["final"] == pytest.approx(summary["final"], rel=1e-6)
  assert json.loads((tmp_path / "summary.json").read_text())["epochs"] == 2


def test_bad_toolbox_settings_are_named(tmp_path):
  from imgcls.config import check_config

  for key, value, words in (
    ("train.accumulate_steps", 3, "equal micro-batches"),
    ("train.ema_decay", 1.0, "ema_decay"),
    ("train.mix_prob", 1.5, "mix_prob"),
    ("train.mixup_alpha", -1.0, "mixup_alpha"),
  ):
    with pytest.raises(ValueError, match=words):
      check_config(tiny_config(tmp_path, **{key: value}))


def test_tta_views_parse_and_average_probabilities():
  from imgcls import tta

  assert tta.parse("flip") == ("original", "flip_lr") and tta.parse("") == () and tta.parse("none") == ()
  assert tta.parse("flip_ud, flip,flip_lr") == ("original", "flip_ud", "flip_lr")
  with pytest.raises(ValueError, match="unknown view.*rotate"):
    tta.parse("flip,rotate")
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 6, 5, 3)), jnp.float32)
  w = jnp.asarray(np.random.default_rng(1).normal(size=(6 * 5 * 3, 3)), jnp.float32)
  logits_fn = lambda images: images.reshape(len(images), -1) @ w  # noqa: E731  An orientation-sensitive model.
  views = tta.parse("flip_lr,flip_ud,flip_lr_ud")
  expected = np.mean([jax.nn.softmax(logits_fn(v)) for v in (x, x[:, :, ::-1], x[:, ::-1], x[:, ::-1, ::-1])], axis=0)
  np.testing.assert_allclose(jax.nn.softmax(tta.averaged_logits(logits_fn, views)(x)), expected, rtol=1e-5)
  binary = lambda images: images.reshape(len(images), -1) @ w[:, :1]  # noqa: E731
  expected = np.mean([jax.nn.sigmoid(binary(v)) for v in (x, x[:, :, ::-1])], axis=0)
  np.testing.assert_allclose(jax.nn.sigmoid(tta.averaged_logits(binary, tta.parse("flip"))(x)), expected, rtol=1e-5)


def test_eval_and_predict_with_tta(toolbox_run, tmp_path, tree):
  import pandas as pd

  from imgcls import evaluate

  config, workdir, _ = toolbox_run
  report = evaluate.evaluate(config, str(workdir), tta_spec="flip")
  assert report["tta"]["views"] == ["original", "flip_lr"] and 0 <= report["tta"]["accuracy"] <= 1
  out = workdir / "eval_val"
  table = pd.read_csv(out / "predictions.csv")
  tta_columns = [c for c in table.columns if c.startswith("tta_prob_")]
  assert len(tta_columns) == 3
  np.testing.assert_allclose(table[tta_columns].sum(axis=1), 1.0, atol=1e-6)
  assert (table["tta_predicted"] == table["label"]).mean() == pytest.approx(report["tta"]["accuracy"])
  assert not np.allclose(table[tta_columns].to_numpy(), table[[c[4:] for c in tta_columns]].to_numpy())
  assert "with TTA (original, flip_lr)" in (workdir / "report.html").read_text()
  rows = evaluate.predict(config, inputs=str(tree), output=str(tmp_path / "p.csv"), workdir=str(workdir), tta_spec="flip")
  probs = np.asarray([[r[f"prob_{c}"] for c in report["class_names"]] for r in rows])
  by_path = table.set_index("path")
  shared = [i for i, r in enumerate(rows) if r["path"] in by_path.index]
  np.testing.assert_allclose(probs[shared], by_path.loc[[rows[i]["path"] for i in shared], tta_columns].to_numpy(), atol=1e-5)


def backbone_leaves(params) -> list[np.ndarray]:
  return [np.asarray(v) for v in jax.tree.leaves(params["backbone"])]


@pytest.fixture(scope="module")
def staged_run(tree, tmp_path_factory):
  """3 epochs: 1 with the backbone frozen (at its own learning rate), then 2 of the whole network."""
  workdir = tmp_path_factory.mktemp("staged")
  config = tiny_config(
    tree,
    **{
      "train.epochs": 3,
      "train.frozen_epochs": 1,
      "train.frozen_learning_rate": 1e-2,
      "optimizer.learning_rate": 1e-3,
      "data.validation_split": 0.25,
      "checkpoint.max_to_keep": 3,  # Stage 1's checkpoint stays, to look at.
    },
  )
  return config, workdir, train.train_and_evaluate(config, str(workdir))


def test_stages_train_the_head_then_the_network(staged_run):
  config, workdir, summary = staged_run
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  epochs = [r for r in records if r["type"] == "epoch"]
  assert [r["epoch"] for r in epochs] == [1, 2, 3] and summary["epochs"] == 3
  assert [r["learning_rate"] for r in epochs] == pytest.approx([1e-2, 1e-3, 1e-3])
  start = backbone_leaves(steps.split_model(steps.create_model(config, 3))[2])
  first = ckpt_lib.read_state(str(workdir / "checkpoints" / "latest" / str(epochs[0]["step"])))
  assert all(np.array_equal(a, b) for a, b in zip(backbone_leaves(first["frozen"]), start))  # Stage 1: frozen.
  last = str(workdir / "checkpoints" / "latest" / str(epochs[-1]["step"]))
  assert not all(np.array_equal(a, b) for a, b in zip(backbone_leaves(ckpt_lib.read_state(last)["params"]), start))
  assert ckpt_lib.read_meta(last).stage == 1  # Stage 2 trained the backbone.
  again = train.train_and_evaluate(config, str(workdir))  # A finished staged run: nothing more.
  assert again["final"] == summary["final"]


def test_staged_run_resumes_at_the_boundary_and_inside_a_stage(staged_run, tmp_path):
  config, _, summary = staged_run
  stage_one = train.stage_configs(config)[0]
  assert train.train_stage(stage_one, str(tmp_path), stage=0, stages=2, run_config=config)["epochs"] == 1
  shorter = config.copy_and_resolve_references()
  shorter.train.epochs = 2  # Stops inside stage 2 (the schedule is constant, so epochs do not change it).
  train.train_and_evaluate(shorter, str(tmp_path))
  resumed = train.train_and_evaluate(config, str(tmp_path))
  assert resumed["final"] == pytest.approx(summary["final"], rel=1e-6)


def test_valley_is_fastais():
  from imgcls import lr_find

  # Flat, a descent over indices 10..69, then a climb. The longest decreasing run is 9..69 (61
  # points, so fastai's start is 69 - 61 = 8): the valley is 8 + int(61 / 3) + int(61 / 6).
  losses = np.concatenate([np.full(10, 3.0), np.linspace(3.0, 1.0, 61)[1:], np.linspace(1.0, 5.0, 30)])
  assert lr_find.valley(losses) == 8 + 20 + 10
  lrs = np.geomspace(1e-7, 10, len(losses))
  found = lr_find.suggestions(lrs, losses)
  assert found["valley"] == lrs[38] and found["minimum_over_10"] == pytest.approx(lrs[69] / 10)
  assert 9 <= list(lrs).index(found["steepest"]) <= 69  # In the descent.


def test_lr_find_mode_writes_curve_and_suggestion(tree, tmp_path):
  from conftest import run_cli

  workdir = tmp_path / "finder"
  result = run_cli(
    "--config=configs/digits.py",
    f"--workdir={workdir}",
    "--mode=lr_find",
    f"--config.data.dir={tree}",
    "--config.data.image_size=(16, 16)",
    "--config.model.filters=4",
    "--config.data.batch_size=4",
    "--config.lr_find.steps=15",
    "--config.lr_find.end=1.0",
  )
  assert result.returncode == 0, result.stderr
  found = json.loads((workdir / "lr_find.json").read_text())
  lrs = found["learning_rates"]
  assert lrs[0] == pytest.approx(1e-7) and np.all(np.diff(lrs) > 0) and len(lrs) <= 15
  if len(lrs) == 15:
    assert lrs[-1] == pytest.approx(1.0, rel=1e-4)
  assert lrs[0] <= found["suggestions"]["valley"] <= lrs[-1] and "suggested learning rate" in result.stdout
  assert (workdir / "lr_find.png").stat().st_size > 10_000 and not (workdir / "checkpoints").exists()
  assert "Learning-rate finder" in (workdir / "report.html").read_text()


def test_layer_decay_slows_each_block_below_the_top(tmp_path):
  from imgcls import models

  config = tiny_config(
    tmp_path,
    **{
      "model.name": "mobilenet_v2",
      "model.alpha": 0.35,
      "data.image_size": (32, 32),
      "model.pooling": "avg",
      "model.layer_decay": 0.5,
      "model.backbone_learning_rate": 1e-4,
      "optimizer.learning_rate": 1e-3,
    },
  )
  model = steps.create_model(config, 3)
  params = steps.split_model(model)[2]
  blocks = models.backbone_blocks(model)
  scales = optim.update_scales(params, config, blocks)
  layer = {
    name: float(scales["backbone"]["layers"][name]["kernel"][...])
    for name in ("Conv1", "block_1_expand", "block_16_project", "Conv_1")
  }
  # Blocks as Keras numbers them: the stem joins block_1, Conv_1 is the top after block_16.
  assert blocks["Conv1"] == blocks["block_1_expand"] == 0 and blocks["block_16_project"] == 15 and blocks["Conv_1"] == 16
  assert layer["Conv_1"] == pytest.approx(0.1 * 0.5) and layer["block_16_project"] == pytest.approx(0.1 * 0.5**2)
  assert layer["Conv1"] == pytest.approx(0.1 * 0.5**17) == layer["block_1_expand"]
  assert float(scales["head"]["output"]["kernel"][...]) == 1.0
  with pytest.raises(ValueError, match="layer_decay applies to the Keras"):
    optim.update_scales(params, tiny_config(tmp_path, **{"model.layer_decay": 0.5}), None)


def test_bn_inference_trains_the_backbone_with_its_moving_statistics_kept(tmp_path):
  config = tiny_config(
    tmp_path,
    **{"model.name": "bn_cnn", "data.image_size": (48, 48), "model.bn_inference": True}
    | {"model.head.dropout": 0.0, "model.head.input_dropout": 0.0},  # At 48x48 dropout can zero every feature.
  )
  model = steps.create_model(config, 3)
  assert model.head.input_dropout is None
  batch_norms = [m for _, m in nnx.iter_modules(model.backbone) if isinstance(m, nnx.BatchNorm)]
  assert batch_norms and all(m.use_running_average for m in batch_norms)
  start_params, start_stats = jax.tree.map(np.asarray, steps.split_model(model)[2:5:2])
  state, _ = one_step(config, batch_of(8, size=48), steps.StepConfig(3, 0.5, 0.0, ()))
  same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), b), state.stats["backbone"], start_stats["backbone"])
  assert all(jax.tree.leaves(same))  # The backbone's moving statistics untouched (the head's BatchNorm learns)...
  moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - b).max(), state.params["backbone"], start_params["backbone"])
  assert max(jax.tree.leaves(moved)) > 0  # ...while the backbone's weights train.


def test_progressive_resizing_trains_each_epoch_at_its_size_and_validates_at_the_last(tree, tmp_path, capsys, monkeypatch):
  sizes = ((1, (12, 12)), (2, (20, 20)))
  config = tiny_config(
    tree,
    **{
      "data.progressive_sizes": sizes,
      "data.validation_split": 0.25,
      "model.head.pooling": "avg",
      "model.head.dropout": 0.2,
      "train.epochs": 3,
    },
  )
  shapes = []
  make_step = steps.make_train_step

  def recording(*args, **kwargs):  # The real step, its image shapes noted per call.
    step = make_step(*args, **kwargs)
    return lambda state, batch, *rest: (shapes.append(batch["image"].shape[1:3]), step(state, batch, *rest))[1]

  monkeypatch.setattr(steps, "make_train_step", recording)
  summary = train.train_and_evaluate(config, str(tmp_path))
  monkeypatch.undo()
  assert sorted(set(shapes)) == [(12, 12), (20, 20)] and shapes[0] == (12, 12) and shapes[-1] == (20, 20)
  printed = capsys.readouterr().out
  assert "Epoch 1: training on 12x12 images (progressive resizing; validation at 16x16)." in printed
  assert "Epoch 2: training on 20x20 images" in printed and "Epoch 3: training" not in printed
  assert summary["epochs"] == 3 and np.isfinite(summary["final"]["val_loss"])

  flatten = tiny_config(tree, **{"data.progressive_sizes": sizes})  # The insects CNN's Flatten head.
  with pytest.raises(ValueError, match="cannot take 12x12 images.*model.head.pooling"):
    train.train_and_evaluate(flatten, str(tmp_path / "flatten"))
  from imgcls.config import check_config

  with pytest.raises(ValueError, match="first epochs must rise"):
    check_config(tiny_config(tree, **{"data.progressive_sizes": ((3, (12, 12)), (2, (20, 20)))}))
  with pytest.raises(ValueError, match=r"\(first_epoch, \(height, width\)\)"):
    check_config(tiny_config(tree, **{"data.progressive_sizes": ((0, 12),)}))
  # A frozen stage all at data.image_size still trains on cached features.
  frozen = tiny_config(tree, **{"model.freeze": "all", "data.progressive_sizes": sizes})
  assert any("progressive resizing" in r for r in feature_cache.config_reasons_not_to_cache(frozen))
  frozen.data.progressive_sizes = ((3, (20, 20)),)
  assert feature_cache.config_reasons_not_to_cache(frozen) == []
