"""Back to Keras: a Keras 3 `.weights.h5` and, beside it, `model.py`, the Keras code of the same
network (`keras.applications` backbone, cut, head; the run's rescale, preprocessing and
normalisation as layers), so that

    import model                                    # the model.py beside the weights
    net = model.build_model()
    net.load_weights("model.weights.h5")
    probabilities = net.predict(pixels)             # float32 (N, height, width, channels), 0-255

gives imgcls's probabilities, in any Keras 3 backend. The weights are written by Keras's own
`save_weights`, from the network `model.py` builds.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from imgcls.export import ExportError, Servable, normalization, require
from imgcls.models import KERAS_MODELS, cnn, keras_weights
from imgcls.models.keras_net import CAFFE_MEAN, TORCH_MEAN, TORCH_STD, KerasNet

CODE_FILE = "model.py"


def check_available() -> None:
  require("keras", "--format=keras")


def _source_lines(servable: Servable) -> tuple[list[str], dict]:
  """The body of `build_model()` and the NNX modules of each weighted Keras layer it names."""
  run = servable.run
  config, model = run.config, run.model
  data = config.data
  height, width, channels = servable.input_shape
  lines = [f"pixels = keras.Input(({height}, {width}, {channels}), name='pixels')  # 0-255", "x = pixels"]
  modules = {}
  if data.rescale != 1.0:
    lines.append(f"x = layers.Rescaling({float(data.rescale)!r}, name='rescale')(x)")
  normalize = normalization(run)
  if normalize.enabled:
    if normalize.samplewise_center:
      lines.append("x = layers.Lambda(lambda t: t - ops.mean(t, axis=(1, 2, 3), keepdims=True), name='samplewise_center')(x)")
    if normalize.samplewise_std:
      lines.append(
        "x = layers.Lambda(lambda t: t / (ops.std(t, axis=(1, 2, 3), keepdims=True) + 1e-6), name='samplewise_std')(x)"
      )
    if normalize.mean is not None:
      lines.append(f"x = layers.Lambda(lambda t: t - ops.array({list(normalize.mean)!r}), name='featurewise_center')(x)")
    if normalize.std is not None:
      lines.append(f"x = layers.Lambda(lambda t: t / (ops.array({list(normalize.std)!r}) + 1e-6), name='featurewise_std')(x)")
  backbone = model.backbone
  if isinstance(backbone, KerasNet):
    lines += _keras_backbone_lines(config, backbone, servable.input_shape, model.head.output.out_features)
    modules.update({name: backbone.layers[name] for name in backbone.layer_names if name in backbone.layers})
    if model.keras_top:
      modules[model.keras_top] = model.head.output
  else:
    backbone_lines, backbone_modules = _cnn_lines(backbone)
    lines += backbone_lines
    modules.update(backbone_modules)
  if not model.keras_top:
    head_lines, head_modules = _head_lines(servable)
    lines += head_lines
    modules.update(head_modules)
  if run.binary:
    lines.append("x = layers.Activation('sigmoid', name='sigmoid')(x)")
    lines.append("x = layers.Lambda(lambda p: ops.concatenate([1.0 - p, p], axis=-1), name='probabilities')(x)")
  else:
    lines.append("x = layers.Softmax(name='probabilities')(x)")
  lines.append(f"return keras.Model(pixels, x, name={config.model.name!r})")
  return lines, modules


def _keras_backbone_lines(config, backbone: KerasNet, input_shape, outputs: int) -> list[str]:
  m = config.model
  module, options = KERAS_MODELS[m.name]
  constructor, arguments = module.keras_application(**options(config))
  height, width, channels = input_shape
  lines = []
  if channels == 1:
    lines.append("x = layers.Lambda(lambda t: ops.repeat(t, 3, axis=-1), name='grey_to_rgb')(x)")
  if backbone.preprocessing != "none":
    if config.data.rescale != 1.0:  # Keras's preprocess_input takes 0-255 pixels.
      lines.append(f"x = layers.Rescaling({1.0 / float(config.data.rescale)!r}, name='undo_rescale')(x)")
    if backbone.preprocessing == "pixels":
      pass  # The network normalises 0-255 pixels itself (EfficientNet's Rescaling and Normalization).
    elif backbone.preprocessing == "tf":
      lines.append("x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name='preprocess_input')(x)  # x / 127.5 - 1")
    elif backbone.preprocessing == "torch":
      mean, std = [float(v) for v in TORCH_MEAN], [float(v) for v in TORCH_STD]
      lines.append(
        f"x = layers.Lambda(lambda t: (t / 255.0 - ops.array({mean!r})) / ops.array({std!r}), name='preprocess_input')(x)"
      )
    else:
      mean = [float(v) for v in CAFFE_MEAN]
      lines.append(f"x = layers.Lambda(lambda t: ops.flip(t, axis=-1) - ops.array({mean!r}), name='preprocess_input')(x)  # BGR")
  args = ", ".join(f"{k}={v!r}" for k, v in arguments.items())
  if m.include_top:  # Keras's `predictions` gives the logits.
    lines.append(
      f"net = keras.applications.{constructor}(input_shape=({height}, {width}, 3), {args + ', ' if args else ''}"
      f"include_top=True, weights=None, classes={outputs}, classifier_activation=None)"
    )
  else:
    pooling = f", pooling={m.pooling!r}" if m.pooling else ""
    lines.append(
      f"net = keras.applications.{constructor}(input_shape=({height}, {width}, 3), {args + ', ' if args else ''}"
      f"include_top=False, weights=None{pooling})"
    )
  if m.cut_at:
    lines.append(f"net = keras.Model(net.input, net.get_layer({m.cut_at!r}).output, name='backbone')  # cut")
  if m.bn_epsilon:
    lines.append("for layer in net.layers:")
    lines.append("  if isinstance(layer, layers.BatchNormalization):")
    lines.append(f"    layer.epsilon = {float(m.bn_epsilon)!r}")
  lines.append("x = net(x)")
  return lines


def _conv_line(name: str, conv, relu: bool) -> str:
  kernel = tuple(conv.kernel_size)
  strides = conv.strides if isinstance(conv.strides, int) else tuple(conv.strides)[0]
  padding = conv.padding.lower() if isinstance(conv.padding, str) else "valid"
  activation = ", activation='relu'" if relu else ""
  return f"x = layers.Conv2D({conv.out_features}, {kernel}, strides={strides}, padding={padding!r}{activation}, name={name!r})(x)"


def _bn_line(name: str, norm) -> str:
  return f"x = layers.BatchNormalization(momentum={float(norm.momentum)!r}, epsilon={float(norm.epsilon)!r}, name={name!r})(x)"


def _cnn_lines(backbone) -> tuple[list[str], dict]:
  """The tutorial CNNs in Keras's layers, as their tutorials write them."""
  lines, modules = [], {}
  pool = "x = layers.MaxPooling2D(2, name='{}')(x)"
  if isinstance(backbone, cnn.InsectsCNN):
    for i, conv in enumerate((backbone.conv1, backbone.conv2, backbone.conv3), start=1):
      lines += [_conv_line(f"conv{i}", conv, True), pool.format(f"pool{i}")]
      modules[f"conv{i}"] = conv
  elif isinstance(backbone, cnn.BatchNormCNN):
    for i, (conv, norm) in enumerate(zip((backbone.conv1, backbone.conv2, backbone.conv3), backbone.norms), start=1):
      lines += [_conv_line(f"conv{i}", conv, True), _bn_line(f"norm{i}", norm), pool.format(f"pool{i}")]
      modules[f"conv{i}"], modules[f"norm{i}"] = conv, norm
  elif isinstance(backbone, cnn.DropoutCNN):
    b = backbone
    lines += [_conv_line("conv1", b.conv1, True), _conv_line("conv2", b.conv2, True), pool.format("pool1")]
    lines += [f"x = layers.Dropout({b.drop1.rate!r}, name='drop1')(x)", _conv_line("conv3", b.conv3, True), pool.format("pool2")]
    lines += [f"x = layers.Dropout({b.drop2.rate!r}, name='drop2')(x)"]
    modules.update(conv1=b.conv1, conv2=b.conv2, conv3=b.conv3)
  else:
    raise ExportError(f"The Keras export has no Keras code for the backbone {type(backbone).__name__}.")
  return lines, modules


def _head_lines(servable: Servable) -> tuple[list[str], dict]:
  model = servable.run.model
  head = model.head
  lines, modules = [], {}
  features = jax.eval_shape(model.features, jnp.zeros((1, *servable.input_shape), jnp.float32))
  if head.input_dropout is not None:
    lines.append(f"x = layers.Dropout({head.input_dropout.rate!r}, name='head_input_dropout')(x)")
  if len(features.shape) > 2:
    pooling = {
      "avg": "layers.GlobalAveragePooling2D(name='head_pool')",
      "max": "layers.GlobalMaxPooling2D(name='head_pool')",
    }.get(head.pooling, "layers.Flatten(name='head_flatten')")
    lines.append(f"x = {pooling}(x)")
  for i, (dense, norm) in enumerate(zip(head.hidden, head.norms)):
    lines.append(f"x = layers.Dense({dense.out_features}, activation='relu', name='head_dense_{i}')(x)")
    modules[f"head_dense_{i}"] = dense
    if norm is not None:
      lines.append(_bn_line(f"head_norm_{i}", norm))
      modules[f"head_norm_{i}"] = norm
  if head.dropout is not None:
    lines.append(f"x = layers.Dropout({head.dropout.rate!r}, name='head_dropout')(x)")
  lines.append(f"x = layers.Dense({head.output.out_features}, name='head_output')(x)  # logits")
  modules["head_output"] = head.output
  return lines, modules


def source(servable: Servable) -> tuple[str, dict]:
  """`model.py`'s text and the NNX module behind each weighted Keras layer."""
  run = servable.run
  body, modules = _source_lines(servable)
  header = f'''"""{run.config.model.name} trained with imgcls ({os.path.basename(os.path.dirname(run.checkpoint))}/{os.path.basename(run.checkpoint)}), in Keras 3.

    import model
    net = model.build_model()
    net.load_weights("model.weights.h5")
    probabilities = net.predict(pixels)  # float32 (N, {servable.input_shape[0]}, {servable.input_shape[1]}, {servable.input_shape[2]}), 0-255 pixels

The columns of `probabilities` are CLASS_NAMES, in order.
"""

import keras
from keras import layers, ops

CLASS_NAMES = {list(run.class_names)!r}


def build_model() -> keras.Model:
'''
  text = header + "".join(f"  {line}\n" for line in body)
  return text, modules


def load_code(path: str):
  """The module `path` (a model.py), imported."""
  spec = importlib.util.spec_from_file_location(f"imgcls_exported_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _keras_layers(net) -> list:
  """Every layer of `net`, nested models' included."""
  found = []
  for layer in net.layers:
    found += _keras_layers(layer) if hasattr(layer, "layers") else [layer]
  return found


def _fold_rescaling_into_normalization(backbone, arrays: dict) -> None:
  """EfficientNet with Keras's ImageNet file rescales its Normalization's output by 1 / sqrt(std); the
  Keras network `model.py` builds (weights=None) has no such layer: the factor goes into the variance."""
  if not isinstance(backbone, KerasNet):
    return
  by_name = {layer.name: layer for layer in backbone.spec}
  for layer in backbone.spec:
    if layer.op == "rescaling" and layer.inputs and by_name[layer.inputs[0]].op == "normalization":
      key = f"{layer.inputs[0]}/variance"
      arrays[key] = (arrays[key] / np.square(np.asarray(layer.factor, np.float32))).astype(np.float32)


def write(servable: Servable, output: str, *, quantize: str = "none") -> dict:
  """Writes `model.py` and the weights `output` (a `.weights.h5`, as Keras 3 requires)."""
  del quantize
  if not output.endswith(".weights.h5"):
    raise ExportError(f"--output={output} must end in .weights.h5 (Keras 3's weights files do).")
  text, modules = source(servable)
  code_path = os.path.join(os.path.dirname(os.path.abspath(output)), CODE_FILE)
  with open(code_path, "w") as f:
    f.write(text)
  import keras

  keras.backend.clear_session()  # Keras's counter names (conv2d, normalization, ...) as imgcls's.
  net = load_code(code_path).build_model()
  arrays = keras_weights.keras_arrays(modules)
  _fold_rescaling_into_normalization(servable.run.model.backbone, arrays)
  used, missing = set(), []
  for layer in _keras_layers(net):
    for variable in layer.weights:
      key = f"{layer.name}/{keras_weights.canonical_weight_name(layer.name, variable.path)}"
      if key not in arrays:
        missing.append(key)
        continue
      if tuple(variable.shape) == (1, 1, *arrays[key].shape):  # A Dense head as Keras's 1x1 convolution classifier.
        arrays[key] = arrays[key].reshape(tuple(variable.shape))
      if tuple(variable.shape) != arrays[key].shape:
        raise ExportError(f"Keras's {key} has shape {tuple(variable.shape)}, imgcls's {arrays[key].shape}.")
      variable.assign(arrays[key])
      used.add(key)
  unused = sorted(set(arrays) - used)
  if missing or unused:
    raise ExportError(
      f"The Keras network of {CODE_FILE} and the run's weights do not match: Keras weights imgcls lacks {missing}; "
      f"imgcls weights with no Keras layer {unused}."
    )
  net.save_weights(output)
  return {
    "code": CODE_FILE,
    "loader": "import model; net = model.build_model(); net.load_weights('model.weights.h5'); net.predict(pixels)",
    "keras_weights": len(used),
    "versions": {"keras": keras.__version__, "keras_backend": keras.backend.backend()},
  }


def runner(path: str) -> Callable[[np.ndarray], np.ndarray]:
  """`pixels -> probabilities` in Keras: model.py's network with the weights `path`."""
  net = load_code(os.path.join(os.path.dirname(os.path.abspath(path)), CODE_FILE)).build_model()
  net.load_weights(path)
  return lambda pixels: np.asarray(net.predict_on_batch(np.asarray(pixels, np.float32)))
