"""Forward + backward time of each CPU convolution implementation against XLA's, layer by layer.

  python bench/conv_ops.py [--repeats=20] [--impls=xla,cpu,onednn] [--cases=...]

For each layer shape: a training step's worth of work (output, gradients w.r.t. input and
weights) with each `implementation`, each one's speedup over `"xla"` and the largest difference
of its outputs and gradients from XLA's, relative to the largest value of each. MobileNetV2's
layers at the pollen recipe's 90x90 input, the tutorials' CNN layers, VGG's and InceptionV3's;
batch 32 (8 for VGG and InceptionV3's convolutions, 16 for its pools: `cpu` is imgcls's pooling,
`onednn` oneDNN's max pooling, `xla` nnx's). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import imgcls  # noqa: F401  (keeps freed host memory, as in training)
from imgcls.models.batch_norm import BatchNorm
from imgcls.models.convs import Conv, DepthwiseConv, PointwiseConv
from imgcls.models.pooling import avg_pool, max_pool


class Pool(nnx.Module):
  """imgcls's max or average pooling ("xla": nnx.max_pool / nnx.avg_pool, XLA's reduce_window;
  "onednn": oneDNN's max pooling, imgcls's own average)."""

  def __init__(self, kind: str, window, strides, padding: str, implementation: str):
    self.kind, self.window, self.strides, self.padding, self.implementation = kind, window, strides, padding, implementation

  def __call__(self, x):
    if self.implementation != "xla" and self.kind == "max":
      return max_pool(x, self.window, self.strides, self.padding, implementation=self.implementation)
    if self.implementation != "xla":
      return avg_pool(x, self.window, self.strides, self.padding)
    if self.kind == "max":
      return nnx.max_pool(x, self.window, strides=self.strides, padding=self.padding)
    return nnx.avg_pool(x, self.window, strides=self.strides, padding=self.padding, count_include_pad=False)


CASES = {
  "stem_conv_3x3_s2_3to32": (
    (32, 90, 90, 3),
    lambda impl: Conv(3, 32, (3, 3), strides=2, padding="SAME", implementation=impl, rngs=nnx.Rngs(0)),
  ),
  "depthwise_3x3_45x45x32": (
    (32, 45, 45, 32),
    lambda impl: DepthwiseConv(32, (3, 3), padding="SAME", implementation=impl, rngs=nnx.Rngs(0)),
  ),
  "depthwise_3x3_s2_47x47x96": (
    (32, 47, 47, 96),
    lambda impl: DepthwiseConv(96, (3, 3), strides=2, padding="VALID", implementation=impl, rngs=nnx.Rngs(0)),
  ),
  "depthwise_3x3_23x23x144": (
    (32, 23, 23, 144),
    lambda impl: DepthwiseConv(144, (3, 3), padding="SAME", implementation=impl, rngs=nnx.Rngs(0)),
  ),
  "pointwise_45x45_16to96": ((32, 45, 45, 16), lambda impl: PointwiseConv(16, 96, implementation=impl, rngs=nnx.Rngs(0))),
  "batch_norm_45x45x96": ((32, 45, 45, 96), lambda impl: BatchNorm(96, implementation=impl, rngs=nnx.Rngs(0))),
  "batch_norm_23x23x144": ((32, 23, 23, 144), lambda impl: BatchNorm(144, implementation=impl, rngs=nnx.Rngs(0))),
  "insects_conv_3x3_180x180_3to16": ((32, 180, 180, 3), lambda impl: Conv(3, 16, (3, 3), implementation=impl, rngs=nnx.Rngs(0))),
  "insects_conv_3x3_90x90_16to32": ((32, 90, 90, 16), lambda impl: Conv(16, 32, (3, 3), implementation=impl, rngs=nnx.Rngs(0))),
  "insects_conv_3x3_45x45_32to64": ((32, 45, 45, 32), lambda impl: Conv(32, 64, (3, 3), implementation=impl, rngs=nnx.Rngs(0))),
  "bn_cnn_conv_7x7_s2_256_3to32": (
    (16, 256, 256, 3),
    lambda impl: Conv(3, 32, (7, 7), strides=2, padding="VALID", implementation=impl, rngs=nnx.Rngs(0)),
  ),
  "vgg_conv_3x3_56x56_128to256": ((8, 56, 56, 128), lambda impl: Conv(128, 256, (3, 3), implementation=impl, rngs=nnx.Rngs(0))),
  "vgg_conv_3x3_14x14_512to512": ((8, 14, 14, 512), lambda impl: Conv(512, 512, (3, 3), implementation=impl, rngs=nnx.Rngs(0))),
  "inception_conv_1x7_17x17_128to128": (
    (8, 17, 17, 128),
    lambda impl: Conv(128, 128, (1, 7), use_bias=False, implementation=impl, rngs=nnx.Rngs(0)),
  ),
  "inception_conv_3x3_s2_35x35_288to384": (
    (8, 35, 35, 288),
    lambda impl: Conv(288, 384, (3, 3), strides=2, padding="VALID", use_bias=False, implementation=impl, rngs=nnx.Rngs(0)),
  ),
  "insects_max_pool_2x2_180x180x16": ((32, 180, 180, 16), lambda impl: Pool("max", (2, 2), (2, 2), "VALID", impl)),
  "insects_max_pool_2x2_90x90x32": ((32, 90, 90, 32), lambda impl: Pool("max", (2, 2), (2, 2), "VALID", impl)),
  "inception_max_pool_3x3_s2_147x147x64": ((16, 147, 147, 64), lambda impl: Pool("max", (3, 3), (2, 2), "VALID", impl)),
  "inception_max_pool_3x3_s2_35x35x288": ((16, 35, 35, 288), lambda impl: Pool("max", (3, 3), (2, 2), "VALID", impl)),
  "inception_avg_pool_3x3_same_35x35x256": ((16, 35, 35, 256), lambda impl: Pool("avg", (3, 3), (1, 1), "SAME", impl)),
  "inception_avg_pool_3x3_same_17x17x768": ((16, 17, 17, 768), lambda impl: Pool("avg", (3, 3), (1, 1), "SAME", impl)),
}


def step_fn(module: nnx.Module):
  graphdef, state = nnx.split(module)
  call = {"use_running_average": False} if isinstance(module, BatchNorm) else {}

  @jax.jit
  def step(x, state):
    def loss(x, state):
      return jnp.sum(jnp.clip(nnx.merge(graphdef, state)(x, **call), 0.0, 6.0))

    return jax.value_and_grad(loss, argnums=(0, 1))(x, state)

  return step, state


def time_case(shape, make, repeats: int, impls: list[str]) -> dict:
  x = jnp.asarray(np.random.default_rng(0).standard_normal(shape, np.float32))
  out, results = {}, {}
  for impl in impls:
    step, state = step_fn(make(impl))
    results[impl] = jax.block_until_ready(step(x, state))
    start = time.perf_counter()
    for _ in range(repeats):
      result = step(x, state)
    jax.block_until_ready(result)
    out[f"{impl}_ms"] = round((time.perf_counter() - start) / repeats * 1000, 2)
  for impl in impls:
    if impl != "xla" and "xla" in impls:
      out[f"{impl}_speedup"] = round(out["xla_ms"] / out[f"{impl}_ms"], 2)
      out[f"{impl}_max_rel_diff"] = float(
        max(
          jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a))
          for a, b in zip(jax.tree.leaves(results["xla"]), jax.tree.leaves(results[impl]))
        )
      )
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--cases", default=",".join(CASES))
  parser.add_argument("--impls", default="xla,cpu,onednn", help="implementations to time (imgcls.models.convs)")
  args = parser.parse_args()
  results = {}
  for name in args.cases.split(","):
    results[name] = time_case(*CASES[name], args.repeats, args.impls.split(","))
    print(json.dumps({name: results[name]}), flush=True)
  print(json.dumps({"device": str(jax.devices()[0]), **results}, indent=2))


if __name__ == "__main__":
  main()
