"""Every Keras application model imgcls has against Keras 3 itself: probabilities, with the top.

  python bench/keras_parity.py [--models=resnet101,convnext_xlarge,...] [--size=32]

For each model (default: all of `imgcls.models.KERAS_MODELS`, every variant), builds
`keras.applications.<Model>(weights=None)` at a small input (its smallest, or --size), gives it
random weights (BatchNorm statistics included; tests/keras_reference.py), writes them with
Keras's legacy h5 writer, loads that file into imgcls's model as a user would
(`config.model.weights`) and compares softmax probabilities on real photos from
`../shared/data/imagenet_samples` (smooth synthetic images without it). The CI tests do the same
for the smallest variant of each family, with features and cut layers too
(tests/test_keras_parity.py). Prints one JSON line per model, then a summary object.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import jax  # noqa: E402
import keras  # noqa: E402
import keras_reference as kr  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from paths import IMAGENET_SAMPLES  # noqa: E402

from imgcls.config import default_config  # noqa: E402
from imgcls.data.images import ImageSpec, load_image  # noqa: E402
from imgcls.models import KERAS_MODELS, build_model  # noqa: E402

PHOTOS = ("bird.png", "hot_dog.jpg", "parrot.jpg", "owl.jpg")
SMALLEST = {"inception_v3": 75, "inception_resnet_v2": 75, "xception": 71}
# At full random BatchNorm scales these three amplify float rounding until Keras on JAX and Keras on
# TensorFlow differ by 0.19 in probability (V2-S, same weights file): their residual branches'
# BatchNorm scales are halved, which brings Keras's two backends within 1.4e-6 of each other.
RESIDUAL_SCALE = {"efficientnet_v2_s": 0.5, "efficientnet_v2_m": 0.5, "efficientnet_v2_l": 0.5}


def photos(size: int) -> np.ndarray:
  found = [IMAGENET_SAMPLES / p for p in PHOTOS if (IMAGENET_SAMPLES / p).is_file()]
  if found:
    return np.stack([load_image(str(p), ImageSpec((size, size), jpeg_draft=False)) for p in found])
  y, x = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
  rings = [np.stack([np.sin((i + 3) * np.pi * np.hypot(x - 0.2 * i, y)), x * (i - 1), y], -1) for i in range(3)]
  return ((np.stack(rings) + 1) * 127.5).astype(np.float32)


def compare(name: str, size: int, folder: str) -> dict:
  module, options = KERAS_MODELS[name]
  config = default_config()
  config.model.name, config.model.include_top = name, True
  config.data.image_size, config.data.rescale = (size, size), 1 / 255
  constructor, arguments = module.keras_application(**options(config))
  keras.backend.clear_session()  # Counter names as a fresh session, as imgcls's.
  start = time.perf_counter()
  reference = getattr(keras.applications, constructor)(weights=None, input_shape=(size, size, 3), **arguments)
  preprocess = importlib.import_module(getattr(keras.applications, constructor).__module__).preprocess_input
  pixels = photos(size)
  keras_inputs = preprocess(pixels.copy())
  kr.randomize(reference, images=keras_inputs, residual_scale=RESIDUAL_SCALE.get(name, 1.0))
  path = os.path.join(folder, f"{name}.h5")
  kr.save_legacy_h5(reference, path)
  expected = kr.run(reference, keras_inputs)
  config.model.weights = path
  model = build_model(config, 1000, rngs=nnx.Rngs(0))
  model.eval()
  probs = np.asarray(jax.nn.softmax(model(pixels / 255), axis=-1))
  os.remove(path)
  return {
    "model": name,
    "keras": constructor,
    "input": size,
    "parameters": int(reference.count_params()),
    "max_abs_prob_diff": float(np.abs(probs - expected).max()),
    "top1_agreement": float(np.mean(probs.argmax(-1) == expected.argmax(-1))),
    "max_keras_prob": float(expected.max()),
    "residual_bn_scale": RESIDUAL_SCALE.get(name, 1.0),
    "seconds": round(time.perf_counter() - start, 1),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default=",".join(KERAS_MODELS))
  parser.add_argument("--size", type=int, default=32, help="input size (at least each model's smallest)")
  args = parser.parse_args()
  results = []
  with tempfile.TemporaryDirectory() as folder:
    for name in args.models.split(","):
      result = compare(name, max(args.size, SMALLEST.get(name, 32)), folder)
      results.append(result)
      print(json.dumps(result), flush=True)
  worst = max(results, key=lambda r: r["max_abs_prob_diff"])
  print(
    json.dumps(
      {
        "models": len(results),
        "worst_max_abs_prob_diff": worst["max_abs_prob_diff"],
        "worst_model": worst["model"],
        "all_top1_agree": all(r["top1_agreement"] == 1.0 for r in results),
        "keras": keras.__version__,
      },
      indent=2,
    )
  )


if __name__ == "__main__":
  main()
