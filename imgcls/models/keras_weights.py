"""Keras weight files onto `KerasNet` backbones: read, match by Keras layer name, check, assign.

Reads the legacy HDF5 files `keras.applications` downloads (`layer_names` / `weight_names`
attributes; also `model.save()` files, under `model_weights`, and models nested in a model) and
Keras 3 `.weights.h5` files
into one flat `{"<keras layer>/<weight>": array}`; weight names are made canonical (`kernel`,
`bias`, `gamma`, `beta`, `moving_mean`, `moving_variance`). Loading checks the whole file against
the model first and fails with one error listing every missing, unexpected and mis-shaped weight;
weights of layers past the model's cut are not needed and are left alone.
"""

from __future__ import annotations

import collections
import hashlib
import os
import re
import sys
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path

import h5py
import jax.numpy as jnp
import numpy as np
from flax import nnx

from imgcls.models.keras_net import GroupedConv, LayerScale, Normalization, SeparableConv, auto_name_order

# Old Keras weight names -> today's.
_ALIASES = {
  "W": "kernel",
  "b": "bias",
  "depthwise_kernel": "kernel",
  "running_mean": "moving_mean",
  "running_std": "moving_variance",
}
_BN_WEIGHTS = ("gamma", "beta", "moving_mean", "moving_variance")


# Reading.


def read(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A Keras weights file as `{"<layer>/<weight>": array}`, layers in the file's order."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"No Keras weights file at {path}.")
  try:
    with h5py.File(path, "r") as f:
      group = f["model_weights"] if "model_weights" in f else f
      if _attribute_list(group, "layer_names"):
        return _read_legacy(group)
      if "layers" in f:
        return _read_keras3(f["layers"])
  except OSError as e:
    raise ValueError(f"{path} is not a readable HDF5 file: {e}") from e
  raise ValueError(f"{path} is neither a Keras legacy .h5 weights file nor a Keras 3 .weights.h5 file.")


def _attribute_list(group: h5py.Group, name: str) -> list[str]:
  """A list attribute, joined from the chunks (`name0`, `name1`, ...) Keras splits big ones into."""
  if name in group.attrs:
    values = list(group.attrs[name])
  else:
    values, chunk = [], 0
    while f"{name}{chunk}" in group.attrs:
      values.extend(group.attrs[f"{name}{chunk}"])
      chunk += 1
  return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def canonical_weight_name(layer: str, name: str) -> str:
  """'conv/kernel:0', 'conv/depthwise_kernel:0', 'conv_W_1:0' -> 'kernel'; and so on."""
  name = re.sub(r":\d+$", "", name).rsplit("/", 1)[-1]
  if name.startswith(layer + "_"):  # Keras 1 names: <layer>_W_1.
    name = re.sub(r"_\d+$", "", name[len(layer) + 1 :])
  if re.fullmatch(r"[vV]ariable(_\d+)?", name):  # LayerScale's unnamed weight.
    return "gamma"
  return _ALIASES.get(name, name)


def _read_legacy(group: h5py.Group) -> dict[str, np.ndarray]:
  weights = {}
  for layer in _attribute_list(group, "layer_names"):
    layer_group = group[layer]
    names = _attribute_list(layer_group, "weight_names")
    # A nested model is one group holding its layers' weights, named `<inner layer>/<weight>`.
    parents = {name.split("/")[-2] for name in names if "/" in name}
    for name in names:
      owner = name.split("/")[-2] if len(parents) > 1 else layer
      weights[f"{owner}/{canonical_weight_name(owner, name)}"] = np.asarray(layer_group[name])
  return weights


def _read_keras3(group: h5py.Group) -> dict[str, np.ndarray]:
  """Keras 3 stores each layer's variables by position under `<layer path>/vars/<i>`."""
  weights = {}

  def visit(path: str, node) -> None:
    if not (isinstance(node, h5py.Group) and path.endswith("vars") and len(node)):
      return
    key = path[: -len("/vars")].rsplit("/", 1)[-1]
    layer = node.attrs.get("name", key)
    layer = layer.decode("utf8") if isinstance(layer, bytes) else str(layer)
    values = [np.asarray(node[str(i)]) for i in range(len(node))]
    if key.startswith("batch_normalization"):
      names = _BN_WEIGHTS if len(values) == 4 else _BN_WEIGHTS[1:]  # scale=False: no gamma.
    elif key.startswith("normalization"):
      names = ("mean", "variance", "count")
    elif key.startswith("layer_normalization"):
      names = ("gamma", "beta")
    elif key.startswith("layer_scale"):
      names = ("gamma",)
    elif len(values) >= 2 and values[0].ndim == values[1].ndim == 4:  # SeparableConv2D
      names = ("kernel", "pointwise_kernel", "bias")  # kernel: the depthwise one, as for DepthwiseConv2D
    else:
      names = ("kernel", "bias")
    for name, value in zip(names, values):
      weights[f"{layer}/{name}"] = value

  group.visititems(visit)
  return weights


# Matching.


def _param_table(modules: Mapping[str, nnx.Module]) -> dict[str, tuple[nnx.Variable, tuple[int, ...], bool]]:
  """`{"<layer>/<keras weight>": (variable, keras shape, is_depthwise)}` for NNX layers."""
  table = {}
  for layer, module in modules.items():
    if isinstance(module, Normalization):
      for name in ("mean", "variance", "count"):
        variable = getattr(module, name)
        table[f"{layer}/{name}"] = (variable, tuple(variable.shape), False)
    elif isinstance(module, SeparableConv):  # Its depthwise_kernel is `kernel` here, as DepthwiseConv2D's.
      kernel = module.depthwise.kernel
      table[f"{layer}/kernel"] = (kernel, (*kernel.shape[:2], kernel.shape[3], 1), True)
      table[f"{layer}/pointwise_kernel"] = (module.pointwise.kernel, tuple(module.pointwise.kernel.shape), False)
      if module.pointwise.bias is not None:
        table[f"{layer}/bias"] = (module.pointwise.bias, tuple(module.pointwise.bias.shape), False)
    elif isinstance(module, nnx.LayerNorm):
      table[f"{layer}/gamma"] = (module.scale, tuple(module.scale.shape), False)
      table[f"{layer}/beta"] = (module.bias, tuple(module.bias.shape), False)
    elif isinstance(module, LayerScale):
      table[f"{layer}/gamma"] = (module.gamma, tuple(module.gamma.shape), False)
    elif isinstance(module, nnx.BatchNorm):
      pairs = [("gamma", module.scale), ("beta", module.bias), ("moving_mean", module.mean), ("moving_variance", module.var)]
      for name, variable in pairs:
        if variable is not None:
          table[f"{layer}/{name}"] = (variable, tuple(variable.shape), False)
    elif isinstance(module, (nnx.Conv, nnx.Linear)):
      # DepthwiseConv2D's kernel is (h, w, channels, 1); Conv2D(groups=channels)'s as flax's.
      depthwise = isinstance(module, nnx.Conv) and module.feature_group_count > 1 and not isinstance(module, GroupedConv)
      kernel_shape = tuple(module.kernel.shape)
      if depthwise:  # Keras: (h, w, channels, 1); flax: (h, w, 1, channels).
        kernel_shape = (*kernel_shape[:2], kernel_shape[3], 1)
      table[f"{layer}/kernel"] = (module.kernel, kernel_shape, depthwise)
      if module.bias is not None:
        table[f"{layer}/bias"] = (module.bias, tuple(module.bias.shape), False)
    else:
      raise TypeError(f"No Keras weights for {type(module).__name__} (layer {layer}).")
  return table


def keras_arrays(modules: Mapping[str, nnx.Module]) -> dict[str, np.ndarray]:
  """`{"<layer>/<keras weight>": array}` of NNX layers in Keras's layouts: what `assign` reads, written back."""
  arrays = {}
  for key, (variable, _, depthwise) in _param_table(modules).items():
    value = np.asarray(variable.get_value(), np.float32)
    arrays[key] = value.transpose(0, 1, 3, 2) if depthwise else value
  return arrays


def match_auto_names(weights: Mapping[str, np.ndarray], auto_named: Iterable[str]) -> dict[str, np.ndarray]:
  """Renames the file's counter-named layers (`conv2d_7`, ...) to the model's, by creation order.

  Keras numbers unnamed layers per session, so the same network is `conv2d_1...` in a Keras 2
  file and `conv2d...` or `conv2d_95...` in Keras 3; the order of the numbers is Keras's
  creation order either way.
  """
  ours = collections.defaultdict(list)
  for name in auto_named:
    prefix, number = auto_name_order(name)
    ours[prefix].append((number, name))
  theirs = collections.defaultdict(set)
  for key in weights:
    order = auto_name_order(key.split("/", 1)[0])
    if order and order[0] in ours:
      theirs[order[0]].add(order)
  rename = {}
  for prefix, names in theirs.items():
    file_layers = [f"{prefix}_{n}" if n else prefix for _, n in sorted(names)]
    rename.update(zip(file_layers, [name for _, name in sorted(ours[prefix])]))
  out = {}
  for key, value in weights.items():
    layer, weight = key.split("/", 1)
    out[f"{rename.get(layer, layer)}/{weight}"] = value
  return out


def _by_layer(entries: list[tuple[str, str]]) -> list[str]:
  """One line per layer: `layer: weight text, weight text`; weights with the same text share it."""
  grouped: dict[str, dict[str, list[str]]] = collections.defaultdict(dict)
  for key, text in entries:
    layer, weight = key.split("/", 1)
    grouped[layer].setdefault(text, []).append(weight)
  return [
    f"    {layer}: " + ", ".join(f"{', '.join(weights)} {text}" for text, weights in texts.items())
    for layer, texts in grouped.items()
  ]


def _shape(shape) -> str:
  return "(" + ", ".join(str(d) for d in shape) + (",)" if len(shape) == 1 else ")")


def assign(
  modules: Mapping[str, nnx.Module],
  weights: Mapping[str, np.ndarray],
  *,
  known_layers: Iterable[str],
  auto_named: Iterable[str] = (),
  source: str = "the weights",
  model: str = "the model",
) -> None:
  """Copies `weights` into the NNX layers `modules` (Keras layer name -> module), all or nothing.

  `known_layers`: every weighted layer of the full Keras network; file weights of those the model
  does not compute (past its cut) are not needed. Anything else is listed in one ValueError.
  """
  weights = match_auto_names(weights, auto_named)
  table = _param_table(modules)
  # A 1x1 convolution classifier (MobileNet's conv_preds) loads into a Dense layer.
  weights = {
    key: value.reshape(table[key][1]) if key in table and tuple(value.shape) == (1, 1, *table[key][1]) else value
    for key, value in weights.items()
  }
  known = set(known_layers) | set(modules)
  missing = [(key, _shape(shape)) for key, (_, shape, _) in table.items() if key not in weights]
  unexpected = [
    (key, _shape(value.shape))
    for key, value in weights.items()
    if key.split("/", 1)[0] not in known or (key.split("/", 1)[0] in modules and key not in table)
  ]
  mis_shaped = [
    (key, f"{_shape(weights[key].shape)} in the file, {_shape(shape)} in the model")
    for key, (_, shape, _) in table.items()
    if key in weights and tuple(weights[key].shape) != shape
  ]
  if missing or unexpected or mis_shaped:
    raise ValueError(_mismatch_message(source, model, missing, unexpected, mis_shaped, len(table)))
  for key, (variable, _, depthwise) in table.items():
    value = np.asarray(weights[key], np.float32)
    if depthwise:
      value = value.transpose(0, 1, 3, 2)
    variable.set_value(jnp.asarray(value, variable.get_value().dtype))


def _mismatch_message(source, model, missing, unexpected, mis_shaped, needed) -> str:
  lines = [
    f"Keras weights {source} do not fit {model}: {len(missing)} missing, {len(unexpected)} unexpected and "
    f"{len(mis_shaped)} mis-shaped weights (of {needed} the model needs)."
  ]
  if missing:
    lines += ["  Missing from the file (layer: weight shape):", *_by_layer(missing)]
  if unexpected:
    lines += ["  In the file but not in this model:", *_by_layer(unexpected)]
  if mis_shaped:
    lines += ["  Shapes that differ:", *_by_layer(mis_shaped)]
  missing_layers = {key.split("/", 1)[0] for key, _ in missing}
  unexpected_layers = {key.split("/", 1)[0] for key, _ in unexpected}
  if len(missing) > needed // 2:
    lines.append("  Most layers are not in the file: is it the file of another model?")
  elif unexpected_layers == {"predictions"} and not missing:
    lines.append(
      "  The file has Keras's classifier (`predictions`): it is an include_top file. Use "
      "model.include_top=True, or the no-top file (`..._notop.h5` / `..._no_top.h5`)."
    )
  elif "predictions" in missing_layers and not unexpected:
    lines.append(
      "  The file has no classifier (`predictions`): it is a no-top file. Use model.include_top=False, or the file with the top."
    )
  if mis_shaped and len(missing) <= needed // 2:
    lines.append("  Shapes differ: is the file for another width (MobileNetV2 alpha) or input size (VGG's fc1)?")
  return "\n".join(lines)


# ImageNet files.


def cache_dirs() -> list[Path]:
  """Where Keras keeps downloaded weights: $KERAS_HOME/models, then ~/.keras/models."""
  dirs = []
  if os.environ.get("KERAS_HOME"):
    dirs.append(Path(os.environ["KERAS_HOME"]).expanduser() / "models")
  dirs.append(Path("~/.keras").expanduser() / "models")
  return dirs


def file_hash(path: str | os.PathLike, algorithm: str) -> str:
  digest = hashlib.new(algorithm)
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _hash_ok(path: Path, expected: str) -> bool:
  """As Keras's get_file: a 64-digit hash is sha256, a shorter one md5; no hash: any file."""
  if not expected:
    return True
  return file_hash(path, "sha256" if len(expected) == 64 else "md5") == expected


def download(url: str, path: Path) -> None:
  """Downloads `url` to `path` (through a temporary file beside it)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  partial = path.with_name(path.name + ".part")
  print(f"Downloading {url} to {path}", file=sys.stderr)
  try:
    with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as f:
      while chunk := response.read(1 << 20):
        f.write(chunk)
  except BaseException:
    partial.unlink(missing_ok=True)
    raise
  os.replace(partial, path)


def imagenet_path(name: str, url: str, expected_hash: str = "") -> Path:
  """Keras's ImageNet weights file `name`: from the Keras cache, else downloaded into it."""
  dirs = cache_dirs()
  stale = None
  for folder in dirs:
    path = folder / name
    if path.is_file():
      if _hash_ok(path, expected_hash):
        return path
      stale = path
  target = stale or dirs[0] / name
  try:
    download(url, target)
  except OSError as e:  # urllib's URLError is an OSError.
    where = " or ".join(str(d / name) for d in dirs)
    stale_note = f" ({stale} is there but its hash is not {expected_hash})" if stale else ""
    raise FileNotFoundError(
      f"Keras's ImageNet weights {name} are not in the Keras cache{stale_note} and could not be downloaded "
      f"from {url}: {e}. Download that file on a machine with internet and put it at {where}, "
      f"or set config.model.weights to its path."
    ) from e
  if not _hash_ok(target, expected_hash):
    raise ValueError(f"Downloaded {target} from {url} but its hash is not {expected_hash}; delete it and retry.")
  return target
