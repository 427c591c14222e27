"""imgcls command line: `python -m imgcls.main --config=configs/X.py --workdir=runs/X [--mode=...]`.

Config overrides: `--config.data.dir=PATH --config.optimizer.learning_rate=3e-4`. An override of a
key that does not exist fails at once, naming the nearest valid keys.
"""

from __future__ import annotations

import runpy
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from imgcls import config as config_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file with get_config(), e.g. configs/digits.py.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: checkpoints, logs, summary.json.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "predict"], "What to do.")
_INPUT = flags.DEFINE_string("input", None, "predict: an image file or a folder of images.")
_OUTPUT = flags.DEFINE_string("output", None, "predict: CSV file to write.")

MODES_NEEDING_WORKDIR = ("train",)


def _load_config_file(argv: list[str]):
  """The config named by --config (with its ':arg'), loaded as config_flags would."""
  for i, arg in enumerate(argv):
    value = None
    if arg.startswith("--config="):
      value = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      value = argv[i + 1]
    if value:
      path, _, config_arg = value.partition(":")
      get_config = runpy.run_path(path)["get_config"]
      return get_config(config_arg) if config_arg else get_config()
  return None


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  config = _CONFIG.value
  config_lib.check_config(config)
  mode = _MODE.value
  if mode in MODES_NEEDING_WORKDIR and not _WORKDIR.value:
    raise app.UsageError(f"--mode={mode} needs --workdir.")
  from imgcls import parallel

  parallel.initialize_distributed()
  if mode == "train":
    from imgcls import train

    train.train_and_evaluate(config, _WORKDIR.value)
  elif mode == "predict":
    from imgcls import evaluate

    if not _INPUT.value or not _OUTPUT.value:
      raise app.UsageError("--mode=predict needs --input=FILE_OR_DIR and --output=FILE.csv.")
    evaluate.predict(config, inputs=_INPUT.value, output=_OUTPUT.value, workdir=_WORKDIR.value)


def run() -> None:
  """Entry point: checks overrides against the config before absl parses them."""
  try:
    config = _load_config_file(sys.argv[1:])
    if config is not None:
      config_lib.check_overrides(config, sys.argv[1:])
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  logging.set_verbosity(logging.WARNING)
  app.run(main)


if __name__ == "__main__":
  run()
