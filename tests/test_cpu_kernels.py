"""The CPU implementations of convolutions, batch norm and max pooling equal the standard ops."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from imgcls.models import onednn
from imgcls.models.batch_norm import BatchNorm
from imgcls.models.convs import Conv, DepthwiseConv, PointwiseConv
from imgcls.models.pooling import avg_pool, max_pool


def _outputs_and_grads(module: nnx.Module, x: jax.Array, **call) -> tuple:
  """The module's output on x and the gradients of a fixed projection of it w.r.t. x and its state."""
  graphdef, state = nnx.split(module)
  weights = jnp.asarray(np.random.default_rng(1).standard_normal(nnx.merge(graphdef, state)(x, **call).shape, np.float32))

  def loss(x, state):
    out = nnx.merge(graphdef, state)(x, **call)
    return jnp.sum(jnp.clip(out, -1.0, 2.0) * weights), out

  (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(x, state)
  return out, jax.tree.leaves(grads)


def _assert_same(ours: tuple, theirs: tuple, tolerance: float) -> None:
  np.testing.assert_allclose(ours[0], theirs[0], atol=tolerance)
  assert len(ours[1]) == len(theirs[1])
  for a, b in zip(ours[1], theirs[1]):
    np.testing.assert_allclose(a, b, atol=tolerance * max(1.0, float(jnp.max(jnp.abs(b)))))


@pytest.mark.parametrize(
  "shape,kernel,strides,padding",
  [
    ((4, 9, 9, 5), 3, (1, 1), "SAME"),
    ((4, 9, 8, 5), 3, (2, 2), "SAME"),
    ((3, 10, 11, 6), 3, (2, 2), "VALID"),
    ((2, 7, 7, 4), 5, (1, 1), "VALID"),
    ((2, 12, 12, 3), 3, (2, 1), "SAME"),
    ((2, 4, 60, 2), 3, (1, 1), "SAME"),  # rows wider than MAX_UNROLLED_WIDTH: taps reduced one by one
  ],
)
def test_depthwise_matches_lax_conv_forward_and_backward(shape, kernel, strides, padding):
  x = jnp.asarray(np.random.default_rng(0).standard_normal(shape, np.float32))
  results = [
    _outputs_and_grads(
      DepthwiseConv(shape[-1], (kernel, kernel), strides=strides, padding=padding, implementation=impl, rngs=nnx.Rngs(0)), x
    )
    for impl in ("cpu", "xla")
  ]
  _assert_same(*results, tolerance=1e-5)


def test_pointwise_matches_lax_conv_forward_and_backward():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 6, 5, 7), np.float32))
  results = [_outputs_and_grads(PointwiseConv(7, 4, implementation=impl, rngs=nnx.Rngs(0)), x) for impl in ("cpu", "xla")]
  _assert_same(*results, tolerance=1e-5)


@pytest.mark.parametrize(
  "shape,features,kernel,strides,padding",
  [
    ((4, 11, 11, 3), 8, 3, (2, 2), "SAME"),  # a stem layer: built from patches
    ((4, 10, 9, 3), 5, 3, (1, 1), "VALID"),
    ((2, 9, 9, 2), 4, 5, (2, 1), "SAME"),
    ((2, 8, 8, 16), 4, 3, (1, 1), "SAME"),  # 144 inputs per output: XLA's convolution
    ((2, 9, 9, 32), 6, 3, (1, 1), "SAME"),  # 288 inputs per output: the kernel's gradient from patches
    ((2, 10, 9, 32), 5, 3, (2, 2), "VALID"),
  ],
)
def test_conv_matches_lax_conv_forward_and_backward(shape, features, kernel, strides, padding):
  x = jnp.asarray(np.random.default_rng(0).standard_normal(shape, np.float32))
  results = [
    _outputs_and_grads(
      Conv(shape[-1], features, (kernel, kernel), strides=strides, padding=padding, implementation=impl, rngs=nnx.Rngs(0)), x
    )
    for impl in ("cpu", "xla")
  ]
  _assert_same(*results, tolerance=1e-5)


def test_conv_kernel_gradient_from_patches_only_within_the_memory_cap(monkeypatch):
  x = jnp.zeros((2, 9, 9, 32), jnp.float32)
  conv = Conv(32, 6, (3, 3), padding="SAME", implementation="cpu", rngs=nnx.Rngs(0))

  def primitives() -> str:
    return str(jax.make_jaxpr(lambda k: conv.cpu_conv(x, k, (1, 1)))(conv.kernel[...]))

  assert "custom_vjp_call" in primitives()
  monkeypatch.setattr(Conv, "MAX_PATCHES_BYTES", 2 * 9 * 9 * 288 * 4 - 1)
  assert "custom_vjp_call" not in primitives()


@pytest.mark.parametrize("module", ["depthwise", "pointwise", "conv"])
def test_portable_convs_pick_the_cpu_kernels_on_cpu_and_xla_elsewhere(module):
  """ "portable" (exported graphs): a jax.export for the CPU holds imgcls's kernels and no
  convolution op, one for CUDA XLA's convolution; on this CPU it gives "xla"'s numbers."""
  make = {
    "depthwise": lambda impl: DepthwiseConv(4, (3, 3), strides=(2, 2), implementation=impl, rngs=nnx.Rngs(0)),
    "pointwise": lambda impl: PointwiseConv(4, 6, implementation=impl, rngs=nnx.Rngs(0)),
    "conv": lambda impl: Conv(4, 6, (3, 3), implementation=impl, rngs=nnx.Rngs(0)),  # 3*3*4 inputs: patches
  }[module]
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 9, 9, 4), np.float32))
  portable, xla = make("portable"), make("xla")
  np.testing.assert_allclose(jax.jit(lambda x: portable(x))(x), xla(x), atol=1e-5)
  spec = jax.ShapeDtypeStruct(x.shape, x.dtype)
  text = {
    platform: jax.export.export(jax.jit(lambda x: portable(x)), platforms=(platform,))(spec).mlir_module()
    for platform in ("cpu", "cuda")
  }
  assert "stablehlo.convolution" not in text["cpu"]
  assert "stablehlo.convolution" in text["cuda"]


@pytest.mark.parametrize(
  "shape,window,strides,padding",
  [
    ((2, 8, 8, 3), (2, 2), (2, 2), "VALID"),
    ((2, 9, 7, 3), (2, 2), (2, 2), "VALID"),  # odd sizes: the last row and column are left out
    ((1, 9, 9, 2), (3, 3), (3, 3), "VALID"),
    ((2, 8, 8, 3), (3, 3), (2, 2), "VALID"),  # overlapping windows (InceptionV3's stem)
    ((2, 9, 8, 3), (3, 3), (2, 2), "SAME"),  # Xception's, odd and even sizes
    ((2, 7, 7, 3), (2, 2), (2, 2), "SAME"),
    ((1, 6, 5, 2), (3, 3), (1, 1), "SAME"),
    ((1, 6, 7, 2), (3, 2), (2, 1), "VALID"),
    ((1, 2, 2, 2), (3, 3), (2, 2), "SAME"),  # smaller than the window
  ],
)
@pytest.mark.parametrize("kind", ["max", "max_onednn", "avg"])
def test_pooling_matches_nnx_forward_and_backward(kind, shape, window, strides, padding):
  x = jnp.asarray(np.random.default_rng(0).standard_normal(shape, np.float32))  # No ties.
  if kind.startswith("max"):
    implementation = "onednn" if kind == "max_onednn" else "cpu"
    ours = functools.partial(max_pool, implementation=implementation)
    theirs = lambda x, *args: nnx.max_pool(x, *args)  # noqa: E731
  else:  # Keras averages over each window's real pixels
    ours, theirs = avg_pool, lambda x, *args: nnx.avg_pool(x, *args, count_include_pad=False)
  expected = theirs(x, window, strides, padding)
  weights = jnp.asarray(np.random.default_rng(1).standard_normal(expected.shape, np.float32))

  def run(pool):
    return jax.jit(jax.value_and_grad(lambda x: jnp.sum(pool(x, window, strides, padding) * weights)))(x)

  assert ours(x, window, strides, padding).shape == expected.shape
  np.testing.assert_allclose(ours(x, window, strides, padding), expected, rtol=1e-6, atol=1e-6)
  (value, grad), (expected_value, expected_grad) = run(ours), run(theirs)
  np.testing.assert_allclose(value, expected_value, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-6)


def test_max_pool_splits_the_gradient_between_equal_maxima():
  x = jnp.asarray([[1.0, 3.0], [3.0, 0.0]]).reshape(1, 2, 2, 1)
  grad = jax.grad(lambda x: jnp.sum(max_pool(x, (2, 2), (2, 2))))(x)
  np.testing.assert_array_equal(grad.reshape(2, 2), [[0.0, 0.5], [0.5, 0.0]])
  # Overlapping windows: each window splits its own gradient; a pixel gathers from every window it wins.
  x = jnp.asarray([[2.0, 2.0, 0.0], [0.0, 1.0, 0.0]]).reshape(1, 2, 3, 1)
  grad = jax.grad(lambda x: jnp.sum(max_pool(x, (2, 2), (1, 1))))(x)
  np.testing.assert_array_equal(grad.reshape(2, 3), [[0.5, 1.5, 0.0], [0.0, 0.0, 0.0]])


def test_onednn_max_pool_gives_the_gradient_to_the_first_of_equal_maxima_as_xla():
  x = jnp.asarray([[2.0, 2.0, 0.0], [0.0, 2.0, 0.0]]).reshape(1, 2, 3, 1)
  for strides in ((1, 1), (2, 2)):
    grad = jax.grad(lambda x, s=strides: jnp.sum(max_pool(x, (2, 2), s, implementation="onednn")))(x)
    expected = jax.grad(lambda x, s=strides: jnp.sum(nnx.max_pool(x, (2, 2), s)))(x)
    np.testing.assert_array_equal(grad, expected)
    assert float(grad[0, 0, 0, 0]) >= 1.0 and float(grad[0, 1, 1, 0]) == 0.0


def test_onednn_max_pool_of_a_split_batch_equals_the_whole_team():
  x = jnp.asarray(np.random.default_rng(2).standard_normal((5, 13, 12, 24), np.float32))
  dy = jnp.asarray(np.random.default_rng(3).standard_normal((5, 7, 6, 24), np.float32))

  def run(split):
    onednn.set_split(split)
    try:
      y, vjp = jax.vjp(lambda x: max_pool(x, (3, 3), (2, 2), "SAME", implementation="onednn"), x)
      return y, vjp(dy)[0]
    finally:
      onednn.set_split(True)

  (y, dx), (team_y, team_dx) = run(True), run(False)
  np.testing.assert_array_equal(y, team_y)
  np.testing.assert_allclose(dx, team_dx, rtol=1e-6)  # overlapping windows: sums in another order


@pytest.mark.parametrize("use_scale", [True, False])
def test_batch_norm_training_step_matches_nnx(use_scale):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((6, 5, 4, 8), np.float32) * 3 + 1)
  modules = [
    BatchNorm(8, momentum=0.9, epsilon=1e-3, use_scale=use_scale, implementation=impl, rngs=nnx.Rngs(0))
    for impl in ("cpu", "xla")
  ]
  scale = jnp.asarray(rng.standard_normal(8, np.float32))
  for module in modules:  # non-trivial scale and bias, the same in both
    if use_scale:
      module.scale[...] = scale
    module.bias[...] = jnp.linspace(-1.0, 1.0, 8)
  results = [_outputs_and_grads(m, x, use_running_average=False) for m in modules]
  _assert_same(*results, tolerance=1e-5)
  ours, theirs = [nnx.state(m, nnx.BatchStat) for m in modules]
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_batch_norm_running_statistics_move_like_nnx():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((16, 3, 3, 4), np.float32) * 2 + 5)
  ours = BatchNorm(4, momentum=0.5, implementation="cpu", rngs=nnx.Rngs(0))
  theirs = nnx.BatchNorm(4, momentum=0.5, rngs=nnx.Rngs(0))
  for module in (ours, theirs):
    module(x, use_running_average=False)
  np.testing.assert_allclose(ours.mean[...], theirs.mean[...], atol=1e-6)
  np.testing.assert_allclose(ours.var[...], theirs.var[...], atol=1e-5)
  assert float(jnp.min(ours.mean[...])) > 2.0  # moved halfway to the batch mean of ~5
  np.testing.assert_allclose(ours(x, use_running_average=True), theirs(x, use_running_average=True), atol=1e-5)


_FAULTS = """
import resource, numpy as np, imgcls
block = 256 * 2**20
np.ones(block // 8)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
  np.ones(block // 8)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_freed_host_memory_is_kept_for_reuse():
  """Importing imgcls makes a freed 256 MB block come back without page faults; opting out does not."""
  import os
  import subprocess
  import sys

  def faults(keep: str) -> int:
    env = {**os.environ, "IMGCLS_KEEP_HOST_MEMORY": keep}
    return int(subprocess.run([sys.executable, "-c", _FAULTS], env=env, capture_output=True, text=True, check=True).stdout)

  unmapped, kept = faults("0"), faults("1")
  assert unmapped > 300  # glibc unmaps each freed block; the next one faults in again (numpy asks for huge pages)
  assert kept < unmapped / 10
