"""`--config=imgcls/saved_config.py:WORKDIR`: a trained run's config.json on today's defaults.

The CLI passes it for eval, predict, features and inspect when `--config` is not given, so
`--config.KEY=VALUE` overrides work on a run's own config.
"""

from imgcls import restore


def get_config(workdir: str):
  return restore.saved_config(workdir)
