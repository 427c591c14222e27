"""`python -m imgcls.models`: every model name with its parameter count, input size and ImageNet weight file."""

from __future__ import annotations

import sys

from imgcls.config import default_config
from imgcls.models import KERAS_MODELS, MODELS, default_size, keras_graph
from imgcls.models.keras_net import Layer


def parameter_count(layers: list[Layer]) -> int:
  """Keras's `count_params()` of a graph: kernels, biases, the BatchNorm vectors and Normalization's statistics."""
  shapes = {layer.name: layer.shape for layer in layers}
  total = 0
  for layer in layers[1:]:
    channels = shapes[layer.inputs[0]][-1] if layer.inputs else 0
    if layer.op == "conv":
      total += layer.kernel[0] * layer.kernel[1] * channels // layer.groups * layer.units + (layer.units if layer.use_bias else 0)
    elif layer.op == "depthwise":
      total += layer.kernel[0] * layer.kernel[1] * channels + (channels if layer.use_bias else 0)
    elif layer.op == "separable":
      total += layer.kernel[0] * layer.kernel[1] * channels + channels * layer.units + (layer.units if layer.use_bias else 0)
    elif layer.op == "bn":
      total += (4 if layer.scale else 3) * channels
    elif layer.op == "layer_norm":
      total += 2 * channels
    elif layer.op == "layer_scale":
      total += channels
    elif layer.op == "normalization":
      total += 2 * channels + 1  # mean, variance, count
    elif layer.op == "dense":
      total += channels * layer.units + layer.units
  return total


def rows() -> list[tuple[str, str, str, str]]:
  """(name, parameters, default input size, ImageNet weight file) of every model."""
  out = []
  for name in MODELS:
    if name not in KERAS_MODELS:
      out.append((name, "-", "any", "(trained from scratch)"))
      continue
    module, options = KERAS_MODELS[name]
    c = default_config()
    c.model.name, c.model.include_top = name, True
    size = default_size(name)
    c.data.image_size = (size, size)
    count = parameter_count(keras_graph(c).layers)
    file, _, _ = module.imagenet_file((size, size, 3), include_top=True, **options(c))
    out.append((name, f"{count:,}", f"{size}x{size}", file))
  return out


def main() -> None:
  table = [("model", "parameters", "input", "ImageNet weights (with the top; _notop without)"), *rows()]
  widths = [max(len(row[i]) for row in table) for i in range(3)]
  for row in table:
    print(
      "  ".join(cell.ljust(width) if i != 1 else cell.rjust(width) for i, (cell, width) in enumerate(zip(row, widths))), row[3]
    )
  sys.stdout.flush()


if __name__ == "__main__":
  main()
