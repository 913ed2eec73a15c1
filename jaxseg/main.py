"""Train and evaluate one config.

  python -m jaxseg.main --config configs/la_mt.py:labeled=8 --config.data.root=PATH --workdir runs/x

Any config field can be overridden on the command line (`--config.total_steps=2`). Without
--workdir the run goes to runs/<config name>[_<arg>]. Re-running resumes from the workdir.
"""
import pathlib

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from jaxseg import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, results).")
flags.mark_flags_as_required(["config"])


def default_workdir(config_arg: str) -> str:
  path, _, arg = config_arg.partition(":")
  name = pathlib.Path(path).stem + (f"_{arg.replace(',', '_')}" if arg else "")
  return str(pathlib.Path("runs") / name)


def main(argv):
  del argv
  # Orbax reports every checkpoint step at INFO; keep the console to jaxseg's own progress lines.
  logging.set_verbosity(logging.WARNING)
  workdir = _WORKDIR.value or default_workdir(config_flags.get_config_filename(flags.FLAGS["config"]))
  train.train_and_evaluate(_CONFIG.value, workdir)


if __name__ == "__main__":
  app.run(main)
