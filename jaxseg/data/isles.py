"""ISLES-2022 (ischemic stroke lesions on DWI) with DyCON's published split (dataset name 'isles').

Layout (what ``python -m jaxseg.prepare isles`` writes; the lists are DyCON's own, copied from
``KU-CVML/DyCON: data/ISLES2022/{train,val,test}.list``, 200 / 25 / 25 ids ``sub-strokecaseNNNN``):

  <root>/train.list, val.list, test.list   one id a line
  <root>/data/<id>.h5                      image float32 [D, H, W] = (x, y, z), the DWI (b=1000)
                                           volume alone; label uint8 [D, H, W], 1 = infarct

DyCON's loader (``code/dataloaders/isles22.py``, class ``ISLESDataset``) reads one single-channel
DWI volume per case (ADC and FLAIR are not used) from ``<h5_dir>/<id>.h5`` under the keys
``image`` / ``mask``; jaxseg's h5 files use ``label`` like every other dataset here, under
``data/``. Where upstream silently skips listed ids without a file, jaxseg stops with the missing
files named.

Splits: labeled = the first ``data.labeled`` ids of train.list (DyCON's BraTS / Pancreas rule,
applied to ISLES: 10 = 5 % of 200, 20 = 10 %), unlabeled = the other 190; validation = val.list;
test.list is the held-out list (``evaluate --split test``). Three cases have an empty lesion mask
(sub-strokecase0150 and 0151 in train.list, 0170 in val.list).
"""

import os
import pathlib
from collections.abc import Sequence

from jaxseg.data import h5folder
from jaxseg.data import registry
from jaxseg.data.h5io import DataError
from jaxseg.data.h5source import H5Source
from jaxseg.data.registry import DatasetSpec

TRAIN_LIST = "train.list"
VAL_LIST = "val.list"
TEST_LIST = "test.list"
DATA_DIR = "data"
CASE_PATTERN = DATA_DIR + "/{case}.h5"
NUM_CLASSES = 2
MANIFEST = "synthetic_isles_manifest.json"


def case_path(root: str | os.PathLike, case_id: str) -> pathlib.Path:
  """``<root>/data/<case_id>.h5``."""
  return h5folder.case_path(root, case_id, CASE_PATTERN)


def find_root(config_root: str | os.PathLike | None) -> pathlib.Path:
  """The ISLES folder (holding train.list, val.list and data/): ``config_root``, then
  ``$JAXSEG_DATA_DIR``.

  Raises:
    DataError: saying where it looked and how to obtain the data.
  """
  return registry.locate_root(
    config_root,
    "ISLES-2022",
    [TRAIN_LIST, VAL_LIST, DATA_DIR + "/"],
    f"It holds DyCON's {TRAIN_LIST}, {VAL_LIST}, {TEST_LIST} and {DATA_DIR}/<id>.h5 (keys image = "
    "DWI, label). Download the 250 public training cases of ISLES'22 (BIDS NIfTI, Zenodo record "
    "7960856) and run `python -m jaxseg.prepare isles --raw DIR --out DIR`. For a run without "
    "real data set data.synthetic.",
  )


def make_splits(root: pathlib.Path, data_config) -> dict[str, list[str]]:
  """train = train.list (labeled = its first ``data.labeled`` ids), val = ``data.val_list``
  (val.list); every listed case file must exist (h5folder.py ``split_lists``)."""
  root = pathlib.Path(root)
  val_list = data_config.get("val_list", VAL_LIST)
  if not (root / val_list).is_file():
    raise DataError(
      f"{root / val_list}: list file not found (ISLES validates on DyCON's {VAL_LIST})"
    )
  return h5folder.split_lists(
    root,
    data_config.get("list_file", TRAIN_LIST),
    val_list,
    data_config.labeled,
    None,
    CASE_PATTERN,
  )


def source(root: str | os.PathLike, ids: Sequence[str], num_classes: int = NUM_CLASSES) -> H5Source:
  """Volumes ``data/<id>.h5``: ``source[i]`` -> {'image': float32 [D, H, W], 'label': uint8
  [D, H, W], 'case': id}, validated on first read and cached in RAM (h5source.py)."""
  return h5folder.source(root, ids, num_classes, CASE_PATTERN)


def synthetic_case_ids(n: int, first: int = 1) -> list[str]:
  """``sub-strokecaseNNNN`` ids (the ISLES'22 BIDS subject labels) numbered from ``first``."""
  return [f"sub-strokecase{first + i:04d}" for i in range(n)]


def synthesize(root: str | os.PathLike, cfg) -> pathlib.Path:
  """A deterministic stand-in in this layout under ``root``; returns ``root``.

  ``cfg``: ``n_cases`` (train.list), ``n_val`` (val.list, default 2), ``n_test`` (test.list,
  default 1), ``shape`` (D, H, W) of every volume, ``seed``. Volumes are the phantoms of
  jaxseg/data/synthetic.py (one labeled blob, distractors, bias field, z-scored).
  """
  n_train, n_val, n_test = int(cfg["n_cases"]), int(cfg.get("n_val", 2)), int(cfg.get("n_test", 1))
  if n_train < 1 or n_val < 1 or n_test < 0:
    raise ValueError(
      f"synthetic ISLES needs n_cases >= 1, n_val >= 1 and n_test >= 0, got "
      f"{n_train}, {n_val}, {n_test}"
    )
  ids = synthetic_case_ids(n_train + n_val + n_test)
  lists = {TRAIN_LIST: ids[:n_train], VAL_LIST: ids[n_train : n_train + n_val]}
  if n_test:
    lists[TEST_LIST] = ids[n_train + n_val :]
  return h5folder.write_stand_in(
    root, lists, case_path, cfg["shape"], cfg["seed"], MANIFEST, "jaxseg.data.isles"
  )


DATASET = DatasetSpec(
  find_root=find_root,
  make_splits=make_splits,
  train_source=source,
  val_source=source,
  synthesize=synthesize,
  test_list=TEST_LIST,
  read_list=h5folder.read_unique_list,
)

__all__ = [
  "DATASET",
  "DataError",
  "case_path",
  "find_root",
  "make_splits",
  "source",
  "synthesize",
  "synthetic_case_ids",
]
