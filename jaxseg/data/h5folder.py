"""Bring your own data: any folder of h5 cases with list files (dataset name 'h5folder').

Layout:

  <root>/train.list          case ids, one a line (``data.list_file``); labeled = the first
                             ``data.labeled`` of them, as every upstream loader does
  <root>/val.list            optional (``data.val_list``); without it validation is the last
                             ``data.n_val`` ids of train.list, carved out before labeling
  <root>/test.list           optional, the held-out list of ``evaluate --split test``
  <root>/<case_pattern>      one h5 file per id; ``data.case_pattern`` (default ``data/{case}.h5``)
                             is a path relative to the root with ``{case}`` where the id goes

Each h5 file holds ``image`` (float, [D, H, W]) and ``label`` (integer, same shape, values in
[0, data.num_classes)): the UA-MT layout (jaxseg/data/h5io.py). Intensities are used as stored:
``normalize`` (z-score over the volume, the LA preparation of ``yulequan/UA-MT:
code/dataloaders/la_heart_processing.py``) is what ``python -m jaxseg.predict`` applies to a new scan
for this dataset, so write the h5 images through it (README "Bring your own data").

``data.case_pattern`` is a data-config setting the sources need, so the spec is bound to the config
(``DatasetSpec.configure``); ``DATASET`` alone reads the default pattern.
"""

import collections
import dataclasses
import functools
import json
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from jaxseg import io_utils
from jaxseg.data import registry
from jaxseg.data import splits as splits_lib
from jaxseg.data.h5io import DataError
from jaxseg.data.h5io import write_case
from jaxseg.data.h5source import H5Source
from jaxseg.data.registry import DatasetSpec

LIST_FILE = "train.list"
VAL_LIST = "val.list"
TEST_LIST = "test.list"
CASE_PATTERN = "data/{case}.h5"
MANIFEST = "synthetic_h5folder_manifest.json"
_SYNTH_VERSION = 1  # bump when the stand-in changes, so stale folders are regenerated


def check_pattern(pattern: str) -> str:
  """``pattern`` if it is a relative path with exactly one ``{case}`` and no other braces.

  Raises:
    DataError: naming the problem.
  """
  bad = (
    pattern.count("{case}") != 1
    or pattern.replace("{case}", "").count("{")
    or pattern.replace("{case}", "").count("}")
  )
  if bad:
    raise DataError(
      f"data.case_pattern={pattern!r}: must hold '{{case}}' exactly once and no other "
      "braces, e.g. 'data/{case}.h5' or 'cases/{case}/volume.h5'"
    )
  path = pathlib.PurePath(pattern)
  if path.is_absolute() or ".." in path.parts:
    raise DataError(
      f"data.case_pattern={pattern!r}: must be a path inside data.root (relative, no '..')"
    )
  return pattern


def case_path(root: str | os.PathLike, case_id: str, pattern: str = CASE_PATTERN) -> pathlib.Path:
  """``<root>/<pattern with {case} = case_id>``."""
  return pathlib.Path(root) / pattern.replace("{case}", case_id)


def find_root(config_root: str | os.PathLike | None) -> pathlib.Path:
  """The data folder (holding ``train.list``): ``config_root``, then ``$JAXSEG_DATA_DIR``.

  Raises:
    DataError: saying where it looked and what the folder must hold.
  """
  return registry.locate_root(
    config_root,
    "h5folder",
    [LIST_FILE],
    f"It holds {LIST_FILE} (case ids, one a line), optionally {VAL_LIST} and {TEST_LIST}, and "
    "one h5 file per case at data.case_pattern (default data/{case}.h5) with datasets image and "
    "label. The README section 'Bring your own data' shows how to write it from NIfTI files.",
  )


def read_unique_list(path: pathlib.Path) -> list[str]:
  """Ids of a list file (jaxseg/data/splits.py ``read_list``); a repeated id is an error."""
  ids = splits_lib.read_list(path)
  dup = sorted(i for i, n in collections.Counter(ids).items() if n > 1)
  if dup:
    raise DataError(f"{path}: duplicated case ids {dup[:5]}")
  return ids


def check_cases_exist(root: pathlib.Path, ids: Sequence[str], pattern: str, list_name: str) -> None:
  """Raises DataError listing the ids of ``list_name`` whose case file is missing (up front, not at
  the first read of a case deep into training)."""
  missing = [i for i in ids if not case_path(root, i, pattern).is_file()]
  if missing:
    raise DataError(
      f"{root / list_name}: {len(missing)} of {len(ids)} listed cases have no file, "
      f"e.g. {case_path(root, missing[0], pattern)} (ids {missing[:5]})"
    )


def split_lists(
  root: pathlib.Path, train_list: str, val_list: str, labeled: int, n_val: int | None, pattern: str
) -> dict[str, list[str]]:
  """train / val / labeled / unlabeled from the list files.

  val = ``val_list`` when that file exists (train = all of ``train_list``), else the last ``n_val``
  ids of ``train_list``; labeled = the first ``labeled`` train ids. Every listed case must exist.

  Raises:
    DataError: a missing or empty list, duplicated ids, ids in both lists, a bad ``labeled``, a
      missing val.list without ``n_val``, or listed cases without a file.
  """
  root = pathlib.Path(root)
  ids = read_unique_list(root / train_list)
  if (root / val_list).is_file():
    val = read_unique_list(root / val_list)
    overlap = sorted(set(ids) & set(val))
    if overlap:
      raise DataError(
        f"{root}: {len(overlap)} case ids are in both {train_list} and {val_list}: {overlap[:5]}"
      )
    if not 1 <= labeled <= len(ids):
      raise DataError(
        f"data.labeled={labeled} must be in [1, {len(ids)}] (the ids of {root / train_list})"
      )
    split = {"train": ids, "val": val, "labeled": ids[:labeled], "unlabeled": ids[labeled:]}
  else:
    if n_val is None:
      raise DataError(
        f"{root / val_list} not found and data.n_val is not set: give a validation "
        "list or the number of train ids to hold out for validation"
      )
    split = splits_lib.make_splits(ids, n_val, labeled)
  check_cases_exist(root, split["train"], pattern, train_list)
  check_cases_exist(
    root, split["val"], pattern, val_list if (root / val_list).is_file() else train_list
  )
  return split


def make_splits(
  root: pathlib.Path, data_config, pattern: str = CASE_PATTERN
) -> dict[str, list[str]]:
  """``split_lists`` with the file names and counts of ``data_config`` (list_file, val_list,
  labeled, n_val)."""
  return split_lists(
    root,
    data_config.get("list_file", LIST_FILE),
    data_config.get("val_list", VAL_LIST),
    data_config.labeled,
    data_config.get("n_val"),
    pattern,
  )


def source(
  root: str | os.PathLike, ids: Sequence[str], num_classes: int, pattern: str = CASE_PATTERN
) -> H5Source:
  """Volumes at ``case_path(root, id, pattern)``: ``source[i]`` -> {'image': float32 [D, H, W],
  'label': uint8 [D, H, W], 'case': id}, validated on first read (h5source.py) and cached in RAM."""
  return H5Source(root, ids, num_classes, functools.partial(case_path, pattern=pattern), ndim=3)


def normalize(image: np.ndarray) -> np.ndarray:
  """float32 z-score of a volume over all its voxels (``la_heart_processing.py``'s
  ``(image - mean) / std``); a constant volume maps to zeros.

  Args:
    image: [D, H, W], any real dtype.
  """
  image = np.asarray(image, np.float64)
  std = image.std()
  return ((image - image.mean()) / (std if std > 0 else 1.0)).astype(np.float32)


def write_stand_in(
  root: str | os.PathLike,
  lists: dict[str, list[str]],
  path_of,
  shape,
  seed: int,
  manifest_name: str,
  generator: str,
) -> pathlib.Path:
  """Writes phantom cases (jaxseg/data/synthetic.py ``make_case``) for every id of ``lists``
  (list file name -> ids) at ``path_of(root, id)``, then the list files, then a manifest.

  Does nothing when the manifest records the same settings and every case file exists; the
  manifest is written last, so an interrupted write is redone. Returns ``root``.
  """
  from jaxseg.data import synthetic  # synthetic.py imports the LA module, which imports registry

  root = pathlib.Path(root)
  shape, seed = [int(s) for s in shape], int(seed)
  manifest = {
    "generator": generator,
    "version": _SYNTH_VERSION,
    "seed": seed,
    "shape": shape,
    "lists": {name: len(ids) for name, ids in lists.items()},
  }
  all_ids = [i for ids in lists.values() for i in ids]
  manifest_path = root / manifest_name
  if manifest_path.is_file():
    try:
      existing = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
      existing = None
    if existing == manifest and all(path_of(root, i).is_file() for i in all_ids):
      return root
  root.mkdir(parents=True, exist_ok=True)
  if manifest_path.exists():
    manifest_path.unlink()  # the folder is being rewritten; it is not valid until we finish
  for index, case_id in enumerate(all_ids):
    image, label = synthetic.make_case(seed, index, tuple(shape))
    write_case(path_of(root, case_id), image, label)
  for name, ids in lists.items():
    io_utils.write_text(root / name, "".join(f"{i}\n" for i in ids))
  io_utils.write_json(manifest_path, manifest)
  return root


def synthesize(root: str | os.PathLike, cfg, pattern: str = CASE_PATTERN) -> pathlib.Path:
  """A deterministic stand-in in this layout under ``root``; returns ``root``.

  ``cfg`` (ConfigDict or dict): ``n_cases`` train.list ids, ``n_val`` val.list ids (0: no
  val.list, validation is carved from train.list), ``n_test`` test.list ids (0: none), ``shape``
  (D, H, W), ``seed``.
  """
  n_train, n_val, n_test = int(cfg["n_cases"]), int(cfg.get("n_val", 0)), int(cfg.get("n_test", 0))
  if n_train < 1 or n_val < 0 or n_test < 0:
    raise ValueError(
      f"synthetic h5folder needs n_cases >= 1, n_val >= 0, n_test >= 0, got "
      f"{n_train}, {n_val}, {n_test}"
    )
  names = [f"case{i:03d}" for i in range(n_train + n_val + n_test)]
  lists = {LIST_FILE: names[:n_train]}
  if n_val:
    lists[VAL_LIST] = names[n_train : n_train + n_val]
  if n_test:
    lists[TEST_LIST] = names[n_train + n_val :]
  return write_stand_in(
    root,
    lists,
    functools.partial(case_path, pattern=check_pattern(pattern)),
    cfg["shape"],
    cfg["seed"],
    MANIFEST,
    "jaxseg.data.h5folder",
  )


def configure(data_config) -> DatasetSpec:
  """``DATASET`` reading ``data_config.case_pattern`` (default ``data/{case}.h5``)."""
  pattern = check_pattern(data_config.get("case_pattern", CASE_PATTERN))
  return dataclasses.replace(
    DATASET,
    make_splits=functools.partial(make_splits, pattern=pattern),
    train_source=functools.partial(source, pattern=pattern),
    val_source=functools.partial(source, pattern=pattern),
    synthesize=functools.partial(synthesize, pattern=pattern),
    configure=None,
  )


DATASET = DatasetSpec(
  find_root=find_root,
  make_splits=make_splits,
  train_source=source,
  val_source=source,
  synthesize=synthesize,
  test_list=TEST_LIST,
  read_list=read_unique_list,
  configure=configure,
)

__all__ = [
  "DATASET",
  "DataError",
  "case_path",
  "check_pattern",
  "configure",
  "find_root",
  "make_splits",
  "normalize",
  "source",
  "split_lists",
  "synthesize",
  "write_stand_in",
]
