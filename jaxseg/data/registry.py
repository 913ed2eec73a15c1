"""What a dataset provides to the builder (`jaxseg/data/builder.py`): `DatasetSpec`.

Each dataset module (la.py, pancreas.py, brats.py, acdc.py) defines one `DATASET = DatasetSpec(...)`;
`jaxseg.data.DATASETS` maps `config.data.name` to it.
"""

import dataclasses
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from jaxseg.data import splits as splits_lib
from jaxseg.data.h5io import DataError

Splits = dict[str, list[str]]
ENV_VAR = "JAXSEG_DATA_DIR"


def locate_root(
  config_root: str | os.PathLike | None, dataset: str, required: Sequence[str], how_to_obtain: str
) -> pathlib.Path:
  """The first of `config_root`, `$JAXSEG_DATA_DIR` that holds every `required` entry (relative
  paths; a trailing '/' means a folder).

  Raises:
    DataError: naming where it looked, what was missing, and `how_to_obtain` the data.
  """
  candidates = []
  if config_root:
    candidates.append(("config data.root", pathlib.Path(config_root)))
  env = os.environ.get(ENV_VAR)
  if env:
    candidates.append((f"${ENV_VAR}", pathlib.Path(env)))

  def present(root, entry):
    path = root / entry.rstrip("/")
    return path.is_dir() if entry.endswith("/") else path.is_file()

  for _, root in candidates:
    if all(present(root, entry) for entry in required):
      return root
  wanted = " + ".join(required)
  looked = "; ".join(f"{what} = {root} (no {wanted})" for what, root in candidates)
  looked = looked or f"data.root is empty and ${ENV_VAR} is not set"
  raise DataError(
    f"{dataset} data not found: {looked}. Point data.root or ${ENV_VAR} at the "
    f"{dataset} folder. {how_to_obtain}"
  )


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """The on-disk layout of one dataset, as functions.

  Attributes:
    find_root: `(config_root or None) -> root`: the configured folder, else $JAXSEG_DATA_DIR; raises
      DataError saying where it looked and how to obtain the data.
    make_splits: `(root, config.data) -> {'train', 'val', 'labeled', 'unlabeled'}` id lists;
      labeled = the first `data.labeled` train ids as upstream. The builder saves it in the workdir.
    train_source / val_source: `(root, ids, num_classes) -> source`, random access:
      `source[i] -> {'image': float32 [D, H, W] (or [H, W]), 'label': uint8, 'case': id}`.
      Training may read slices where validation reads volumes (ACDC).
    synthesize: `(root, config.data.synthetic) -> root`: writes a small deterministic stand-in in
      the same layout (tests, runs without a download); None where there is none.
    test_list: the list file of the held-out test split under the root (`evaluate --split test`).
    read_list: `(path) -> ids` for this dataset's list files (BraTS lines carry a ',...' suffix).
    configure: `(config.data) -> DatasetSpec` bound to data-config settings the sources need
      (h5folder's `data.case_pattern`); None where the layout is fixed. `get_dataset(name,
      config.data)` applies it.
  """

  find_root: Callable[[str | None], pathlib.Path]
  make_splits: Callable[[pathlib.Path, ml_collections.ConfigDict], Splits]
  train_source: Callable[[pathlib.Path, Sequence[str], int], Any]
  val_source: Callable[[pathlib.Path, Sequence[str], int], Any]
  synthesize: Callable[[pathlib.Path, ml_collections.ConfigDict], pathlib.Path] | None = None
  test_list: str = "test.list"
  read_list: Callable[[pathlib.Path], list[str]] = splits_lib.read_list
  configure: Callable[[ml_collections.ConfigDict], "DatasetSpec"] | None = None
