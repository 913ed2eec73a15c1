"""Errors a user can fix: the command line prints their message as one line and exits with status 2.

Every other exception is a bug and keeps its traceback. `python -m jaxseg.main --debug` (or
`JAXSEG_DEBUG=1`) shows the traceback of these too. Messages name the file or setting at fault and
what to do, and never a path that exists only on the developers' machines.
"""


class UserError(Exception):
  """Base of the errors the command line reports as one line (exit status 2)."""


class ConfigError(UserError, ValueError):
  """A config file, `:arg` or `--config.*` override that cannot run; names the field."""


class RunStateError(UserError):
  """The workdir cannot take this run: held by another process, finished with fewer steps, or
  holding another config."""


class StorageError(UserError, OSError):
  """A result, log or checkpoint could not be written (e.g. no space left); the previous file is
  intact."""
