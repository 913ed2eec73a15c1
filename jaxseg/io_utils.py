"""Atomic file writes: a reader never sees a half-written result or record."""
import contextlib
import csv
import json
import os
import pathlib
import tempfile


@contextlib.contextmanager
def atomic_open(path, mode: str = "w"):
  """Write to a temporary file in the same folder, then os.replace it onto `path`."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


def write_text(path, text: str) -> None:
  with atomic_open(path) as f:
    f.write(text)


def write_json(path, obj) -> None:
  with atomic_open(path) as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=_jsonable)
    f.write("\n")


def write_csv(path, rows: list[dict], fieldnames: list[str]) -> None:
  with atomic_open(path) as f:
    writer = csv.DictWriter(f, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(rows)


def _jsonable(x):
  if hasattr(x, "tolist"):
    return x.tolist()
  if isinstance(x, pathlib.Path):
    return str(x)
  raise TypeError(f"not JSON serialisable: {type(x)}")
