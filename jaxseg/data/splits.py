"""Case lists and the train / val / labeled / unlabeled split.

Upstream (``yulequan/UA-MT: code/train_LA_meanteacher_certainty_unlabel.py``) takes the first
N ids of ``train.list`` as labeled and the rest as unlabeled, and evaluates on the held-out
``test.list``. That test split is held out from this project, so validation is OUR carve-out:
the LAST ``n_val`` ids of the list (in file order). The labeled ids are then the first
``labeled`` ids of what remains, so for LA the standard labeled cases stay labeled.
"""

import collections
import json
import os
import pathlib
from collections.abc import Sequence

from jaxseg import io_utils
from jaxseg.data.h5io import DataError

SPLITS_FILE = "splits.json"
KEYS = ("train", "val", "labeled", "unlabeled")


def read_list(path: str | os.PathLike) -> list[str]:
  """Ids of a list file, one per line, stripped, blank lines skipped."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f"{path}: list file not found")
  ids = [line.strip() for line in path.read_text().splitlines()]
  ids = [i for i in ids if i]
  if not ids:
    raise DataError(f"{path}: list file is empty")
  return ids


def make_splits(ids: Sequence[str], n_val: int, labeled: int) -> dict[str, list[str]]:
  """Splits ``ids`` (list order kept) into train/val and train into labeled/unlabeled.

  val = the last ``n_val`` ids; train = the others; labeled = the first ``labeled`` train ids;
  unlabeled = the remaining train ids.
  """
  ids = list(ids)
  dup = sorted(i for i, n in collections.Counter(ids).items() if n > 1)
  if dup:
    raise DataError(f"case ids are duplicated: {dup}")
  if not 0 <= n_val < len(ids):
    raise DataError(f"n_val={n_val} must be in [0, {len(ids)}) for {len(ids)} case ids")
  train = ids[: len(ids) - n_val]
  val = ids[len(ids) - n_val :]
  if not 1 <= labeled <= len(train):
    raise DataError(
      f"labeled={labeled} must be in [1, {len(train)}] (the {len(train)} train ids "
      f"left after holding out n_val={n_val} of {len(ids)})"
    )
  return {"train": train, "val": val, "labeled": train[:labeled], "unlabeled": train[labeled:]}


def write_splits(path: str | os.PathLike, splits: dict[str, list[str]]) -> None:
  """Writes ``splits`` as JSON atomically (temp file in the same folder + ``os.replace``)."""
  io_utils.write_text(path, json.dumps({k: list(splits[k]) for k in KEYS}, indent=1))


def read_splits(path: str | os.PathLike) -> dict[str, list[str]]:
  path = pathlib.Path(path)
  try:
    splits = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise DataError(f"{path}: cannot read splits ({e})") from e
  missing = [k for k in KEYS if k not in splits]
  if missing:
    raise DataError(f"{path}: splits file lacks key(s) {missing}")
  return {k: list(splits[k]) for k in KEYS}


def load_or_make_splits(
  workdir: str | os.PathLike, ids: Sequence[str], n_val: int, labeled: int
) -> dict[str, list[str]]:
  """The run's split: ``<workdir>/splits.json`` if present, else made and written there.

  A resumed run thus keeps its split. An existing file that differs from what the current
  ``ids``/``n_val``/``labeled`` give is an error (a changed config on an old workdir).
  """
  return load_or_save_splits(
    workdir, make_splits(ids, n_val, labeled), f"n_val={n_val}, labeled={labeled}, {len(ids)} ids"
  )


def load_or_save_splits(
  workdir: str | os.PathLike, wanted: dict[str, list[str]], what: str = ""
) -> dict[str, list[str]]:
  """``wanted`` (a split made from the config) after checking it against ``<workdir>/splits.json``,
  which is written when absent. A stored split that differs is an error (a changed config on an old
  workdir); ``what`` describes the config's split settings in that message."""
  path = pathlib.Path(workdir) / SPLITS_FILE
  missing = [k for k in KEYS if k not in wanted]
  if missing:
    raise DataError(f"split lacks key(s) {missing}")
  wanted = {k: list(wanted[k]) for k in KEYS}
  if path.exists():
    stored = read_splits(path)
    if stored != wanted:
      diff = [k for k in KEYS if stored[k] != wanted[k]]
      raise DataError(
        f"{path}: stored split differs from the config ({what or 'data settings'}) in {diff}: "
        f"stored sizes { {k: len(stored[k]) for k in KEYS} }, config sizes "
        f"{ {k: len(wanted[k]) for k in KEYS} }. Use a fresh workdir or restore the config."
      )
    return stored
  write_splits(path, wanted)
  return wanted
