"""oneDNN's convolutions equal XLA's (`lax.conv_general_dilated`) on every convolution of every
shipped model: forward, input gradient and kernel gradient within 1e-5 relative (float32)."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from imgcls import steps, train
from imgcls.config import default_config
from imgcls.models import convs, onednn

pytestmark = pytest.mark.skipif(not onednn.available(), reason=f"oneDNN not loaded: {onednn.unavailable_reason()}")

# Every model imgcls ships, at the image size its recipe uses.
MODELS = {
  "insects_cnn": (180, 180),
  "bn_cnn": (256, 256),
  "dropout_cnn": (150, 150),
  "mobilenet_v2": (224, 224),
  "vgg16": (224, 224),
  "vgg19": (224, 224),
  "inception_v3": (299, 299),
}

# The other Keras families, smallest variant, at small sizes (their own convolution kinds:
# 5x5 and strided depthwise, separable, grouped 7x7, 4x4/4 and 2x2/2 patchify, factorised 1x7).
FAMILIES = {
  "resnet50": (64, 64),
  "resnet50_v2": (64, 64),
  "densenet121": (64, 64),
  "mobilenet": (64, 64),
  "mobilenet_v3_small": (64, 64),
  "efficientnet_b0": (64, 64),
  "efficientnet_v2_b0": (64, 64),
  "convnext_tiny": (64, 64),
  "xception": (71, 71),
  "inception_resnet_v2": (75, 75),
}


def _small(size: int) -> int:
  """A spatial size that keeps the test quick and what matters of `size`: itself up to 17, else
  15 or 16 (its parity, so 'valid' and strided windows leave the same remainder)."""
  return size if size <= 17 else 15 + (size + 1) % 2


def _equations(jaxpr):
  """Every equation of a jaxpr, those of the jaxprs nested in its equations (jit, custom_vjp) too."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _equations(inner)


def model_equations(name: str, image_size: tuple[int, int], implementation: str) -> list:
  """The equations of the model's forward pass on one image, with `model.convs=implementation`."""
  config = default_config()
  config.data.image_size = image_size
  config.model.update(name=name, convs=implementation, weights="")
  model = steps.create_model(config, 3)
  model.eval()  # inference mode: the trace changes no BatchNorm statistics
  images = jax.ShapeDtypeStruct((1, *image_size, 3), jnp.float32)
  return list(_equations(jax.make_jaxpr(lambda x: model(x))(images).jaxpr))


def model_convolutions(name: str, image_size: tuple[int, int]) -> list[dict]:
  """The model's distinct convolutions (input shape, kernel shape, strides, pads, dilation,
  groups) as XLA runs them, read from its jaxpr."""
  found = {}
  for eqn in model_equations(name, image_size, "xla"):
    if eqn.primitive.name != "conv_general_dilated":
      continue
    x, kernel = (v.aval.shape for v in eqn.invars)
    p = eqn.params
    case = dict(
      x=(2, _small(x[1]), _small(x[2]), x[3]),
      kernel=kernel,
      strides=p["window_strides"],
      padding=p["padding"],
      dilation=p["rhs_dilation"],
      groups=p["feature_group_count"],
      size=x[1:3],
    )
    found[repr(sorted(case.items()))] = case
  return list(found.values())


def _pads(case: dict) -> str:
  """ "VALID" where the model pads nothing, else "SAME" (at the small size, as the model's at its own)."""
  return "VALID" if all(p == (0, 0) for p in case["padding"]) else "SAME"


def _value_and_grads(conv_fn, x, kernel, cotangent):
  def loss(x, kernel):
    y = conv_fn(x, kernel)
    return jnp.sum(y * cotangent), y

  (_, y), (dx, dkernel) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(x, kernel)
  return y, dx, dkernel


def _assert_parity(case: dict, dtype=jnp.float32, tolerance: float = 1e-5) -> None:
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(case["x"]), dtype)
  kernel = jnp.asarray(rng.standard_normal(case["kernel"]) / np.sqrt(np.prod(case["kernel"][:3])), dtype)
  padding = case["padding"] if isinstance(case["padding"], str) else _pads(case)
  options = dict(strides=case["strides"], padding=padding, dilation=case["dilation"], groups=case["groups"])

  def xla(x, kernel):
    return lax.conv_general_dilated(
      x,
      kernel,
      case["strides"],
      padding,
      rhs_dilation=case["dilation"],
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=case["groups"],
      precision=lax.Precision.HIGHEST,
    )

  out_shape = jax.eval_shape(xla, x, kernel).shape
  cotangent = jnp.asarray(rng.standard_normal(out_shape), dtype)
  theirs = _value_and_grads(xla, x, kernel, cotangent)
  ours = _value_and_grads(lambda x, k: onednn.conv(x, k, **options), x, kernel, cotangent)
  for what, a, b in zip(("output", "input gradient", "kernel gradient"), ours, theirs):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    scale = float(np.max(np.abs(b)))
    assert scale > 0
    error = float(np.max(np.abs(a - b))) / scale
    assert error <= tolerance, f"{what}: relative error {error:.2e} for {case}"


@pytest.fixture(params=["nhwc", "blocked"])
def layout(request):
  """Each activation layout oneDNN may run in ("auto" picks one per convolution by timing)."""
  onednn.set_layout(request.param)
  yield request.param
  onednn.set_layout("nhwc")


# The blocked layout on every model but InceptionV3 (the largest; test_auto_layout_matches_xla runs
# its first convolutions in whichever layout is faster).
@pytest.mark.parametrize(
  "name,layout",
  [(n, la) for n in MODELS for la in ("nhwc", "blocked") if (n, la) != ("inception_v3", "blocked")],
  indirect=["layout"],
)
def test_every_convolution_of_the_model_matches_xla(name, layout):
  cases = model_convolutions(name, MODELS[name])
  assert cases, f"no convolution found in {name}"
  for case in cases:
    _assert_parity(case)


def test_auto_layout_matches_xla():
  onednn.set_layout("auto")
  try:
    for case in model_convolutions("inception_v3", MODELS["inception_v3"])[:12]:
      _assert_parity(case)
  finally:
    onednn.set_layout("nhwc")


@pytest.mark.parametrize("name", list(MODELS))
def test_no_convolution_is_left_to_xla(name):
  """With oneDNN every convolution (1x1 ones too) is its custom call, whose gradients are those
  again: none of XLA's convolutions, slow on the CPU, is left, forwards or backwards."""
  primitives = [eqn.primitive.name for eqn in model_equations(name, MODELS[name], "onednn")]
  assert "conv_general_dilated" not in primitives
  assert "ffi_call" in primitives


# DenseNet, MobileNetV3 and InceptionResNetV2 have no kind of convolution these lack.
@pytest.mark.parametrize("name", [n for n in FAMILIES if n not in ("densenet121", "mobilenet_v3_small", "inception_resnet_v2")])
def test_no_convolution_of_the_other_families_is_left_to_xla(name):
  primitives = [eqn.primitive.name for eqn in model_equations(name, FAMILIES[name], "onednn")]
  assert "conv_general_dilated" not in primitives
  assert "ffi_call" in primitives


@pytest.mark.parametrize("name", ["efficientnet_b0", "convnext_tiny"])
def test_the_other_families_convolutions_match_xla(name):
  """Their kinds of convolution: 5x5 and strided depthwise, squeeze-excite 1x1s on 1x1 maps,
  ConvNeXt's grouped 7x7 and 4x4/4, 2x2/2 patchify convolutions."""
  cases = model_convolutions(name, FAMILIES[name])
  assert any(c["groups"] > 1 and c["kernel"][0] in (5, 7) for c in cases)
  for case in cases:
    _assert_parity(case)


def test_the_models_convolutions_cover_odd_sizes_strides_and_valid_padding():
  cases = [c for name in ("inception_v3", "bn_cnn", "mobilenet_v2") for c in model_convolutions(name, MODELS[name])]
  assert any(c["size"][0] % 2 for c in cases)
  assert any(c["strides"] == (2, 2) for c in cases)
  assert any(all(p == (0, 0) for p in c["padding"]) and c["kernel"][0] > 1 for c in cases)
  assert any(c["groups"] > 1 for c in cases)  # MobileNetV2's depthwise convolutions
  assert any(c["kernel"][:2] in ((1, 7), (7, 1)) for c in cases)  # InceptionV3's factorised ones


@pytest.mark.parametrize(
  "kwargs",
  [
    dict(x=(2, 9, 11, 3), kernel=(3, 3, 3, 8), strides=(1, 1), padding=((1, 1), (1, 1)), dilation=(1, 1), groups=1),
    dict(x=(2, 10, 10, 4), kernel=(3, 3, 4, 6), strides=(2, 1), padding=((0, 0), (0, 0)), dilation=(1, 1), groups=1),
    dict(x=(2, 12, 13, 6), kernel=(5, 5, 3, 6), strides=(2, 2), padding=((2, 2), (2, 2)), dilation=(1, 1), groups=2),
    dict(x=(2, 11, 11, 4), kernel=(3, 3, 4, 5), strides=(1, 1), padding=((2, 2), (2, 2)), dilation=(2, 2), groups=1),
  ],
)
def test_groups_dilation_and_uneven_strides_match_xla(kwargs, layout):
  _assert_parity(kwargs)


@pytest.mark.skipif(not onednn.supports_bfloat16(), reason="this CPU has no bfloat16 convolutions in oneDNN")
def test_bfloat16_matches_xla_to_bfloat16_rounding():
  case = dict(x=(2, 15, 15, 16), kernel=(3, 3, 16, 32), strides=(2, 2), padding=((0, 0), (0, 0)), dilation=(1, 1), groups=1)
  _assert_parity(case, jnp.bfloat16, tolerance=2e-2)


def test_fused_bias_and_relu_match_their_separate_ops():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 9, 9, 5)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 5, 7)), jnp.float32)
  bias = jnp.asarray(rng.standard_normal(7), jnp.float32)
  cotangent = jnp.asarray(rng.standard_normal((2, 9, 9, 7)), jnp.float32)

  def fused(x, kernel, bias):
    return jnp.sum(onednn.conv(x, kernel, bias, padding="SAME", relu=True) * cotangent)

  def separate(x, kernel, bias):
    y = lax.conv_general_dilated(
      x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=lax.Precision.HIGHEST
    )
    return jnp.sum(jax.nn.relu(y + bias) * cotangent)

  ours = jax.jit(jax.value_and_grad(fused, argnums=(0, 1, 2)))(x, kernel, bias)
  theirs = jax.jit(jax.value_and_grad(separate, argnums=(0, 1, 2)))(x, kernel, bias)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_split_batches_equal_the_whole_team(batch):
  """Halves of the batch on two threads (the default) give the whole-team convolution's output and
  gradients; the kernel's and bias's gradients are the two halves' sums (odd batches too)."""
  rng = np.random.default_rng(batch)
  x = jnp.asarray(rng.standard_normal((batch, 11, 10, 6)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 6, 8)), jnp.float32)
  bias = jnp.asarray(rng.standard_normal(8), jnp.float32)

  def loss(x, kernel, bias):
    y = onednn.conv(x, kernel, bias, strides=(2, 1), padding="SAME", relu=True)
    return jnp.sum(y * jnp.cos(y)), y

  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
  results = {}
  try:
    for split in (True, False):
      onednn.set_split(split)
      results[split] = jax.block_until_ready(step(x, kernel, bias))
  finally:
    onednn.set_split(True)
  for a, b in zip(jax.tree.leaves(results[True]), jax.tree.leaves(results[False])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))


def test_auto_picks_onednn_on_the_cpu():
  assert convs.resolve("auto") == "onednn"
  assert convs.resolve("cpu") == "cpu"


def test_onednn_off_the_cpu_or_unloaded_is_a_clear_error(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  with pytest.raises(ValueError, match="CPU only"):
    convs.resolve("onednn")
  assert convs.resolve("auto") == "xla"


def test_a_library_that_will_not_load_falls_back_with_one_line():
  """In a fresh process whose libdnnl cannot be found, imgcls imports, says why once, and trains on its own kernels."""
  script = (
    "import logging, sys; logging.basicConfig(level=logging.WARNING, stream=sys.stdout)\n"
    "from imgcls.models import onednn, convs\n"
    "onednn._preload_dnnl = lambda: None\n"
    "print('resolved', convs.resolve('auto'), convs.resolve('auto'))\n"
  )
  env = {"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu", "LD_LIBRARY_PATH": ""}
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  assert lines[-1] == "resolved cpu cpu"
  warnings = [line for line in lines if "oneDNN convolutions not used" in line]
  assert len(warnings) == 1 and "did not load" in warnings[0] and "libdnnl" in warnings[0]


def test_training_with_onednn_gives_xla_s_epoch_metrics(tree, tmp_path):
  """Two epochs of the tutorials' BatchNorm CNN (7x7/2 'valid', BatchNorm, head BatchNorm) on real images.

  The head's input dropout is off: its masks are the same on both sides, but on these 36 images they
  turn the rounding of the two convolution implementations into loss differences of 2e-4 by epoch 2.
  """
  from conftest import tiny_config

  metrics = {}
  for implementation in ("onednn", "xla"):
    config = tiny_config(
      tree,
      **{
        "model.name": "bn_cnn",
        "model.convs": implementation,
        "data.image_size": (64, 64),
        "data.validation_split": 0.25,
        "train.epochs": 2,
        "model.head.input_dropout": 0.0,
      },
    )
    workdir = tmp_path / implementation
    train.train_and_evaluate(config, str(workdir))
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    metrics[implementation] = [
      {k: v for k, v in r.items() if k.startswith(("train_", "val_"))} for r in rows if r["type"] == "epoch"
    ]
  assert len(metrics["onednn"]) == 2
  for ours, theirs in zip(metrics["onednn"], metrics["xla"]):
    assert ours.keys() == theirs.keys() and "val_loss" in ours
    for key in ours:
      assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-5), key
