"""imgcls command line: `python -m imgcls.main --config=configs/X.py --workdir=runs/X [--mode=...]`.

Modes: train; eval, predict, features, inspect, export on a trained run (`--workdir=runs/X`, whose saved
config.json is the config unless --config is given; overrides apply on top either way).

Config overrides: `--config.data.dir=PATH --config.optimizer.learning_rate=3e-4`. An override of a
key that does not exist fails at once, naming the nearest valid keys.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from imgcls import config as config_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file with get_config(), e.g. configs/digits.py.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: checkpoints, logs, summary.json.")
_MODE = flags.DEFINE_enum(
  "mode", "train", ["train", "eval", "predict", "features", "inspect", "export", "lr_find"], "What to do."
)
_INPUT = flags.DEFINE_string(
  "input", None, "eval, features: a class-per-folder tree or a CSV/Excel index; predict: an image file, a folder or an index."
)
_OUTPUT = flags.DEFINE_string(
  "output",
  None,
  "predict: CSV file to write; features: .csv or .xlsx (default WORKDIR/features/features.csv); "
  "export: the file (a folder for saved_model; default WORKDIR/export/FORMAT/).",
)
_SPLIT = flags.DEFINE_string("split", "val", "eval: the run's subset to evaluate (train, val, test) when --input is not given.")
_STEP = flags.DEFINE_integer(
  "step",
  None,
  "eval, predict, features, export: the checkpoint of this step (default: the best); inspect: the training step to show (default 0).",
  lower_bound=0,
)
_CHECKPOINT = flags.DEFINE_string(
  "checkpoint",
  None,
  "eval, predict, features, export: take the weights from this workdir or checkpoint folder instead of --workdir's.",
)
_THRESHOLD = flags.DEFINE_float(
  "threshold",
  None,
  "eval, predict: decision threshold on p(second class) of two-class models (default: config.train.threshold for binary ones).",
)
_LAYER = flags.DEFINE_string(
  "layer",
  "",
  "features: 'backbone', a head layer ('head/hidden/0') or a Keras layer name (out_relu); default: the penultimate layer.",
)

_FORMAT = flags.DEFINE_enum(
  "format", None, ["onnx", "litert", "saved_model", "stablehlo", "keras"], "export: the format to write."
)
_BATCH_SIZE = flags.DEFINE_integer(
  "batch_size", None, "export --format=litert: the model's fixed batch size (default 1).", lower_bound=1
)
_TTA = flags.DEFINE_string(
  "tta",
  "",
  "eval, predict: test-time augmentation, probabilities averaged over views: flip, or a list (flip_lr,flip_ud,flip_lr_ud).",
)
_QUANTIZE = flags.DEFINE_enum("quantize", "none", ["none", "float16", "int8"], "export --format=litert: weight quantization.")

MODES_NEEDING_WORKDIR = ("train", "eval", "features", "inspect", "export", "lr_find")
SAVED_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "saved_config.py")


def _flag_value(argv: list[str], name: str) -> str | None:
  """The value of `--name=V` or `--name V` in argv (the last one), else None."""
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      value = arg.split("=", 1)[1]
    elif arg == f"--{name}" and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def with_saved_config(argv: list[str]) -> list[str]:
  """argv with `--config=imgcls/saved_config.py:WORKDIR` added when a mode other than train has
  no --config and the workdir holds a run's config.json, so `--config.KEY=VALUE` overrides it."""
  mode, workdir = _flag_value(argv, "mode") or "train", _flag_value(argv, "workdir")
  has_config = any(a == "--config" or a.startswith("--config=") for a in argv)
  if mode == "train" or has_config or not workdir or not os.path.isfile(os.path.join(workdir, "config.json")):
    return argv
  return [argv[0], f"--config={SAVED_CONFIG}:{workdir}", *argv[1:]]


def _load_config_file(argv: list[str]):
  """The config named by --config (with its ':arg'), loaded as config_flags would."""
  for i, arg in enumerate(argv):
    value = None
    if arg.startswith("--config="):
      value = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      value = argv[i + 1]
    if value:
      return config_lib.load_recipe(value)
  return None


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  mode, workdir = _MODE.value, _WORKDIR.value
  if mode in MODES_NEEDING_WORKDIR and not workdir:
    raise app.UsageError(f"--mode={mode} needs --workdir.")
  from imgcls import parallel

  if mode != "train" and parallel.launched_as_several_processes():
    raise app.UsageError(f"--mode={mode} runs as one process, on this host's devices: run it without launch/.")
  parallel.initialize_distributed()
  if mode == "train" and _CONFIG.value is None:
    raise app.UsageError("--mode=train needs --config=configs/<recipe>.py.")
  from imgcls import train

  try:
    if mode == "train":
      config_lib.check_config(_CONFIG.value)
      train.train_and_evaluate(_CONFIG.value, workdir)
    else:
      _run_mode(mode, workdir)
  # Bad input (our errors are ValueErrors), a missing file, a diverged run: one line, no traceback
  # (IMGCLS_TRACEBACK=1 shows it).
  except (ValueError, FileNotFoundError, train.TrainingDiverged) as e:
    if os.environ.get("IMGCLS_TRACEBACK"):
      raise
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def _run_mode(mode: str, workdir: str | None) -> None:
  """eval, predict, features, inspect, export: on the workdir's saved config with the command line's overrides."""
  from imgcls import restore

  if mode == "predict" and not workdir:  # Keras's ImageNet classifier, from the recipe alone.
    if _CONFIG.value is None:
      raise app.UsageError("--mode=predict needs --workdir=RUN, or --config=configs/imagenet.py.")
    config = _CONFIG.value
  else:
    config = restore.run_config(workdir, _CONFIG.value, sys.argv[1:])
  config_lib.check_config(config)
  if mode == "eval":
    from imgcls import evaluate

    evaluate.evaluate(
      config,
      workdir,
      split=_SPLIT.value,
      inputs=_INPUT.value,
      checkpoint=_CHECKPOINT.value,
      step=_STEP.value,
      threshold=_THRESHOLD.value,
      tta_spec=_TTA.value,
    )
  elif mode == "predict":
    from imgcls import evaluate

    if not _INPUT.value or not _OUTPUT.value:
      raise app.UsageError("--mode=predict needs --input=FILE_DIR_OR_INDEX and --output=FILE.csv.")
    evaluate.predict(
      config,
      inputs=_INPUT.value,
      output=_OUTPUT.value,
      workdir=workdir,
      checkpoint=_CHECKPOINT.value,
      step=_STEP.value,
      threshold=_THRESHOLD.value,
      tta_spec=_TTA.value,
    )
  elif mode == "features":
    from imgcls import features

    features.features(
      config,
      workdir,
      inputs=_INPUT.value,
      layer=_LAYER.value,
      output=_OUTPUT.value,
      checkpoint=_CHECKPOINT.value,
      step=_STEP.value,
    )
  elif mode == "export":
    from imgcls import export

    if not _FORMAT.value:
      raise app.UsageError(f"--mode=export needs --format ({', '.join(export.FORMATS)}).")
    export.export(
      config,
      workdir,
      _FORMAT.value,
      output=_OUTPUT.value,
      checkpoint=_CHECKPOINT.value,
      step=_STEP.value,
      quantize=_QUANTIZE.value,
      batch=_BATCH_SIZE.value or 0,
    )
  elif mode == "lr_find":
    from imgcls import lr_find

    lr_find.lr_find(config, workdir)
  elif mode == "inspect":
    from imgcls import inspection

    os.makedirs(workdir, exist_ok=True)
    inspection.inspect(config, workdir, step=_STEP.value or 0)


def run() -> None:
  """Entry point: checks overrides against the config before absl parses them."""
  sys.argv = with_saved_config(sys.argv)
  try:
    config = _load_config_file(sys.argv[1:])
    if config is not None:
      config_lib.check_overrides(config, sys.argv[1:])
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  logging.set_verbosity(logging.WARNING)
  app.run(_main_with_short_usage)


def _main_with_short_usage(argv: list[str]) -> None:
  """`main`, a usage error reported in one line (absl would print the whole --help first)."""
  try:
    main(argv)
  except app.UsageError as e:
    print(f"error: {e} (python -m imgcls.main --help lists the flags)", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  run()
