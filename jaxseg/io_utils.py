"""Atomic file writes: a reader never sees a half-written result or record.

Files are written to a temporary name in the destination folder and moved into place with
os.replace, with the mode a plain `open` would give (0666 less the umask, 0644 by default) rather
than mkstemp's 0600, so the rest of a lab group can read results. A failed write (e.g. ENOSPC)
removes the temporary file, leaves the previous file intact and raises `errors.StorageError`.
"""

import contextlib
import csv
import errno
import fcntl
import json
import os
import pathlib
import shutil
import tempfile

from jaxseg.errors import RunStateError
from jaxseg.errors import StorageError

LOCK_FILE = ".lock"


def file_mode() -> int:
  """0o666 less the process umask: the mode `open(path, 'w')` would create."""
  umask = os.umask(0)
  os.umask(umask)
  return 0o666 & ~umask


def publish(tmp, path) -> None:
  """Gives the finished temporary file `tmp` the umask's mode and moves it onto `path`."""
  os.chmod(tmp, file_mode())
  os.replace(tmp, path)


def storage_error(path, e: OSError) -> StorageError:
  """The user-facing error for a failed write of `path`: what happened and what to do."""
  hint = (
    "no space left on the device: free some space, then rerun the same command (a run "
    "resumes from its last checkpoint)"
    if e.errno == errno.ENOSPC
    else e.strerror or str(e)
  )
  return StorageError(e.errno, f"{path}: cannot write ({hint}); the previous file is intact")


@contextlib.contextmanager
def atomic_open(path, mode: str = "w"):
  """Write to a temporary file in the same folder, then os.replace it onto `path`.

  Raises:
    StorageError: the write failed (ENOSPC, EIO, ...); nothing was replaced.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    try:
      with os.fdopen(fd, mode) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())
      publish(tmp, path)
    except OSError as e:
      if isinstance(e, StorageError):
        raise
      raise storage_error(path, e) from e
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


def write_text(path, text: str) -> None:
  with atomic_open(path) as f:
    f.write(text)


def write_json(path, obj) -> None:
  with atomic_open(path) as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=jsonable)
    f.write("\n")


def write_csv(path, rows: list[dict], fieldnames: list[str]) -> None:
  with atomic_open(path) as f:
    writer = csv.DictWriter(f, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(rows)


def jsonable(x):
  """`json.dump`'s `default`: numpy values as lists / numbers, paths as strings."""
  if hasattr(x, "tolist"):
    return x.tolist()
  if isinstance(x, pathlib.Path):
    return str(x)
  raise TypeError(f"not JSON serialisable: {type(x)}")


class RunDir:
  """A workdir held by one run: a context that takes `<workdir>/.lock` and, when the run fails
  before `started()`, removes what it created.

  The lock is an fcntl.flock on `.lock` (holding the holder's pid), so the kernel releases it when
  the process dies, even by SIGKILL; a second run on the same workdir gets a RunStateError instead
  of interleaving its checkpoints with the first. A run that fails before its first step (bad data,
  a workdir holding another config, ...) leaves the workdir as it found it: a folder it created is
  removed, and so are the entries it added to an existing one.

  In a multi-process run every process opens the workdir with its `process_index`: process 0 takes
  `.lock` and alone cleans up after an early failure; process k > 0 takes `.lock.k`, so that the
  processes of one run do not lock each other out while a second run is still refused.
  """

  def __init__(self, workdir, process_index: int = 0):
    self.path = pathlib.Path(workdir)
    self.process_index = int(process_index)
    self._started = False
    self._fd = None

  def __enter__(self) -> "RunDir":
    existed = self.path.is_dir()
    before = set(os.listdir(self.path)) if existed else set()
    # The outermost folder this run creates (parents included), removed whole on an early failure.
    created = self.path.absolute()
    while not created.parent.exists():
      created = created.parent
    lock = self.path / (LOCK_FILE + (f".{self.process_index}" if self.process_index else ""))
    try:
      self.path.mkdir(parents=True, exist_ok=True)
      fd = os.open(lock, os.O_RDWR | os.O_CREAT, file_mode())
    except OSError as e:
      raise storage_error(lock, e) from e
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
      os.close(fd)
      raise RunStateError(
        f"{self.path}: another jaxseg run (pid {holder}) is using this workdir; wait for it to "
        "finish, or choose another --workdir"
      ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    self._fd, self._created, self._before = fd, None if existed else created, before
    return self

  def started(self) -> None:
    """The first training step is about to run: from here on a failure keeps the workdir."""
    self._started = True

  def __exit__(self, exc_type, exc, tb) -> None:
    try:
      if exc_type is not None and not self._started and self.process_index == 0:
        self._remove_new()
    finally:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)

  def _remove_new(self) -> None:
    if self._created is not None:
      shutil.rmtree(self._created, ignore_errors=True)
      return
    for name in set(os.listdir(self.path)) - self._before:
      entry = self.path / name
      if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
      else:
        with contextlib.suppress(FileNotFoundError):
          entry.unlink()
