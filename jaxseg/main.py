"""Train and evaluate one config.

  python -m jaxseg.main --config configs/la_mt.py:labeled=8 --config.data.root=PATH --workdir runs/x

Any config field can be overridden on the command line (`--config.total_steps=2`). Without
--workdir the run goes to runs/<config name>[_<arg>]. Re-running resumes from the workdir.

A mistake the user can fix (a bad config file or override, missing or malformed data, a workdir in
use or holding another run: `jaxseg.errors.UserError`) prints one line, `jaxseg: error: ...`, and
exits with status 2, leaving no new files; `--debug` or `JAXSEG_DEBUG=1` shows its traceback.
"""

import os
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from jaxseg import errors

DEBUG_ENV = "JAXSEG_DEBUG"
_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file (configs/*.py[:arg]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, results).")
_DEBUG = flags.DEFINE_bool(
  "debug", False, f"Show tracebacks of user errors too (or {DEBUG_ENV}=1)."
)


def default_workdir(config_arg: str) -> str:
  path, _, arg = config_arg.partition(":")
  name = pathlib.Path(path).stem + (f"_{arg.replace(',', '_')}" if arg else "")
  return str(pathlib.Path("runs") / name)


def _debug(argv) -> bool:
  # Read before absl has parsed the flags: a flag parsing error must honour it too.
  return os.environ.get(DEBUG_ENV, "") not in ("", "0") or "--debug" in argv


def _fail(message: str) -> None:
  print(f"jaxseg: error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad config file or override reported as one line (exit 2).

  config_flags loads the config file and applies every `--config.*` override while parsing; its
  errors (a missing file, an exception in get_config, an unknown field, a value of the wrong type)
  arrive here wrapped in absl's flags.Error, or raw from the config file's own code.
  """
  try:
    rest = flags.FLAGS(argv)
    if flags.FLAGS["config"].value is None:
      _fail("--config is required, e.g. --config configs/demo.py")
    _CONFIG.value.to_dict()  # config_flags defers a file's load error to the first attribute read
  except Exception as e:
    if _debug(argv):
      raise
    _fail(_flag_error_message(e, argv))
  return rest


def _config_arg(argv: list[str]) -> str:
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      return a.partition("=")[2]
    if a == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return "?"


def _flag_error_message(e: Exception, argv: list[str]) -> str:
  cause = e.__cause__ or e.__context__
  text = str(e)
  if isinstance(cause, KeyError) and cause.args:  # an override naming no config field
    text = f"unknown config field in an override: {cause.args[0]}"
  elif "Traceback" in text or "Failed loading config file" in text:
    # The config file failed to load or raised: its last line says what went wrong.
    last = [l.strip() for l in text.splitlines() if l.strip()][-1]
    text = f"--config {_config_arg(argv)}: cannot load the config ({last})"
  return (
    " ".join(text.split()) + " (check --config and the --config.* overrides; --debug shows more)"
  )


def main(argv):
  del argv
  # Orbax reports every checkpoint step at INFO; keep the console to jaxseg's own progress lines.
  logging.set_verbosity(logging.WARNING)
  workdir = _WORKDIR.value or default_workdir(
    config_flags.get_config_filename(flags.FLAGS["config"])
  )
  from jaxseg import train  # after flag parsing: a bad command line fails without importing jax

  try:
    train.train_and_evaluate(_CONFIG.value, workdir)
  except errors.UserError as e:
    if _DEBUG.value or _debug(sys.argv):
      raise
    _fail(" ".join(str(e).split()) or type(e).__name__)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
