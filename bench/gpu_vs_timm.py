"""MobileNetV2 training throughput on one GPU: imgcls (JAX/Flax) vs timm's mobilenetv2_100 (PyTorch).

  python bench/gpu_vs_timm.py [--size=224] [--batch=128] [--steps=50] [--dtype=bfloat16]
      [--convs=auto] [--batch_norm=auto]

Full fine-tuning (every layer trains), 1000 classes, Adam, synthetic batches already on the GPU,
bfloat16 compute (JAX: bf16 weights/activations with float32 master weights; PyTorch: autocast
bf16, channels_last, eager and torch.compile). --dtype, --convs and --batch_norm take
comma-separated lists: imgcls runs each combination. Prints one JSON object with images/s and
each imgcls variant's ratio to timm.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time


def bench_imgcls(size: int, batch: int, steps: int, dtype: str, convs: str = "auto", batch_norm: str = "auto") -> dict:
  """imgcls's train step; `batch_norm="closed_form"` uses the written-out BatchNorm gradient
  (imgcls/models/batch_norm.py) whatever `convs` is."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from imgcls import optim, steps
  from imgcls.config import default_config
  from imgcls.models.batch_norm import BatchNorm

  config = default_config()
  config.data.image_size = (size, size)
  config.model.update(name="mobilenet_v2", pooling="avg", convs=convs)
  config.model.head.update(pooling="none", hidden=(), dropout=0.0)
  config.dtype = dtype
  model = steps.create_model(config, 1000)
  if batch_norm == "closed_form":
    for _, module in nnx.iter_modules(model):
      if isinstance(module, BatchNorm):
        module.implementation = "cpu"
  graphdef, _, params, frozen, stats = steps.split_model(model)
  tx = optim.make_optimizer(config.optimizer, optim.learning_rate_schedule(config.optimizer, 100, 1))
  state = steps.initial_state(params, frozen, stats, tx, 1000)
  step = steps.make_train_step(graphdef, tx, optim.update_scales(params, config), steps.StepConfig(1000, 0.5, 0.0, (), dtype))
  rng = np.random.default_rng(0)
  data = {
    "image": jax.device_put(rng.random((batch, size, size, 3), np.float32) * 255),
    "label": jax.device_put(rng.integers(0, 1000, batch).astype(np.int32)),
    "mask": jax.device_put(np.ones(batch, np.float32)),
    "index": jax.device_put(np.arange(batch, dtype=np.int32)),
  }
  key, scale = jax.random.key(0), jnp.float32(1.0)
  start = time.perf_counter()
  state = step(state, data, key, scale)
  jax.block_until_ready(state.params)
  compile_s = time.perf_counter() - start
  for _ in range(5):
    state = step(state, data, key, scale)
  jax.block_until_ready(state.params)
  start = time.perf_counter()
  for _ in range(steps):
    state = step(state, data, key, scale)
  jax.block_until_ready(state.params)
  seconds = (time.perf_counter() - start) / steps
  return {
    "dtype": dtype,
    "convs": convs,
    "batch_norm": batch_norm,
    "images_per_s": round(batch / seconds, 1),
    "step_ms": round(seconds * 1000, 2),
    "compile_s": round(compile_s, 1),
    "device": str(jax.devices()[0]),
    "jax": jax.__version__,
  }


def bench_timm(size: int, batch: int, steps: int, compiled: bool) -> dict:
  import timm
  import torch

  model = timm.create_model("mobilenetv2_100", num_classes=1000).cuda().to(memory_format=torch.channels_last)
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  loss_fn = torch.nn.CrossEntropyLoss()
  x = (torch.rand(batch, 3, size, size, device="cuda") * 255).to(memory_format=torch.channels_last)
  y = torch.randint(0, 1000, (batch,), device="cuda")

  def train_step():
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
      loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()

  fn = torch.compile(train_step) if compiled else train_step
  start = time.perf_counter()
  fn()
  torch.cuda.synchronize()
  compile_s = time.perf_counter() - start
  for _ in range(5):
    fn()
  torch.cuda.synchronize()
  start = time.perf_counter()
  for _ in range(steps):
    fn()
  torch.cuda.synchronize()
  seconds = (time.perf_counter() - start) / steps
  return {
    "images_per_s": round(batch / seconds, 1),
    "step_ms": round(seconds * 1000, 2),
    "compile_s": round(compile_s, 1),
    "torch": torch.__version__,
    "timm": timm.__version__,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--dtype", default="bfloat16", help="imgcls compute dtypes: float32, bfloat16")
  parser.add_argument("--only", default="", help="imgcls or timm")
  parser.add_argument("--convs", default="auto", help="imgcls's depthwise/1x1 implementations: auto, xla, cpu")
  parser.add_argument("--batch_norm", default="auto", help="imgcls's BatchNorm gradients: auto, closed_form")
  args = parser.parse_args()
  out = {"size": args.size, "batch": args.batch}
  if args.only != "timm":
    out["imgcls"] = []
    for variant in itertools.product(args.dtype.split(","), args.convs.split(","), args.batch_norm.split(",")):
      out["imgcls"].append(bench_imgcls(args.size, args.batch, args.steps, *variant))
      print(json.dumps(out["imgcls"][-1]), flush=True)
  if args.only != "imgcls":
    out["timm_eager"] = bench_timm(args.size, args.batch, args.steps, compiled=False)
    print(json.dumps(out["timm_eager"]), flush=True)
    try:
      out["timm_compiled"] = bench_timm(args.size, args.batch, args.steps, compiled=True)
    except Exception as e:  # torch.compile needs a working compiler toolchain.
      out["timm_compiled"] = {"error": str(e)[:300]}
  for run in out.get("imgcls", []):
    for name in ("timm_eager", "timm_compiled"):
      if "images_per_s" in out.get(name, {}):
        run[f"ratio_vs_{name}"] = round(run["images_per_s"] / out[name]["images_per_s"], 2)
  print(json.dumps(out, indent=2))


if __name__ == "__main__":
  main()
