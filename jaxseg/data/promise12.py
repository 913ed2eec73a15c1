"""PROMISE12 prostate MRI as the original V-Net used it (dataset name 'promise12').

Layout (what ``python -m jaxseg.prepare promise12`` writes from the challenge's 50 training cases):

  <root>/train.list          case ids (``Case00`` .. ``Case49``), one a line
  <root>/val.list            optional: validation ids; without it validation is the last
                             ``data.n_val`` ids of train.list, carved out before labeling
  <root>/test.list           optional, the held-out list of ``evaluate --split test`` (the
                             challenge's 30 test cases have no public labels)
  <root>/data/<id>.h5        ``image`` float32 [D, H, W] = (x, y, z), resampled to 1 x 1 x 1.5 mm,
                             centre-cropped to 128 x 128 x 64 and z-scored over its voxels > 0;
                             ``label`` uint8, 1 = prostate
  <root>/dataset.json        the preparation's fingerprint (spacings, shapes, checksums)

The preparation is the original Caffe release's (``faustomilletari/VNet``: ``DataManager.py`` with
the ``main.py`` parameters dstRes [1, 1, 1.5], VolSize [128, 128, 64]); its z-score over voxels > 0
is the one ``VNet.py`` applies before training and testing. labeled = the first ``data.labeled``
training ids (the supervised V-Net uses all of them).
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
# mm per voxel of the prepared (x, y, z) = (D, H, W) arrays: V-Net's dstRes.
SPACING = (1.0, 1.0, 1.5)
MANIFEST = "synthetic_promise12_manifest.json"


def case_path(root: str | os.PathLike, case_id: str) -> pathlib.Path:
  """``<root>/data/<case_id>.h5``."""
  return h5folder.case_path(root, case_id, CASE_PATTERN)


def find_root(config_root: str | os.PathLike | None) -> pathlib.Path:
  """The PROMISE12 folder (holding train.list and data/): ``config_root``, then
  ``$JAXSEG_DATA_DIR``.

  Raises:
    DataError: saying where it looked and how to obtain the data.
  """
  return registry.locate_root(
    config_root,
    "PROMISE12",
    [TRAIN_LIST, DATA_DIR + "/"],
    f"It holds {TRAIN_LIST} and {DATA_DIR}/<id>.h5 (keys image, label). Download the 50 training "
    "cases of the MICCAI 2012 prostate challenge (promise12.grand-challenge.org, MetaImage "
    "CaseNN.mhd and CaseNN_segmentation.mhd) and run `python -m jaxseg.prepare promise12 --raw "
    "DIR --out DIR`. For a run without real data set data.synthetic.",
  )


def make_splits(root: pathlib.Path, data_config) -> dict[str, list[str]]:
  """val = ``data.val_list`` when that file exists, else the last ``data.n_val`` ids of
  train.list; labeled = the first ``data.labeled`` of the training ids. Every listed case file
  must exist (h5folder.py ``split_lists``, which names the list and the missing files)."""
  return h5folder.split_lists(
    pathlib.Path(root),
    data_config.get("list_file", TRAIN_LIST),
    data_config.get("val_list", VAL_LIST),
    data_config.labeled,
    data_config.get("n_val"),
    CASE_PATTERN,
  )


def source(root: str | os.PathLike, ids: Sequence[str], num_classes: int = NUM_CLASSES) -> H5Source:
  """Volumes ``data/<id>.h5``: ``source[i]`` -> {'image': float32 [D, H, W], 'label': uint8
  [D, H, W], 'case': id}, validated on first read (a missing file or key, mismatched shapes, NaN,
  labels outside [0, num_classes): DataError naming the file) and cached in RAM (h5source.py)."""
  return h5folder.source(root, ids, num_classes, CASE_PATTERN)


def synthesize(root: str | os.PathLike, cfg) -> pathlib.Path:
  """A deterministic stand-in in this layout under ``root``; returns ``root``.

  ``cfg`` (ConfigDict or dict): ``n_cases`` train.list ids ``CaseNN`` (default 8), ``n_test``
  test.list ids (default 0: no test.list, as the challenge release), ``shape`` (D, H, W) (default
  (32, 32, 16)), ``seed`` (default 0). Volumes are the phantoms of jaxseg/data/synthetic.py.
  """
  get = cfg.get
  n_train, n_test = int(get("n_cases", 8)), int(get("n_test", 0))
  if n_train < 1 or n_test < 0:
    raise ValueError(
      f"synthetic PROMISE12 needs n_cases >= 1 and n_test >= 0, got {n_train}, {n_test}"
    )
  ids = [f"Case{i:02d}" for i in range(n_train + n_test)]
  lists = {TRAIN_LIST: ids[:n_train]}
  if n_test:
    lists[TEST_LIST] = ids[n_train:]
  return h5folder.write_stand_in(
    root,
    lists,
    case_path,
    get("shape", (32, 32, 16)),
    get("seed", 0),
    MANIFEST,
    "jaxseg.data.promise12",
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
  "SPACING",
  "case_path",
  "find_root",
  "make_splits",
  "source",
  "synthesize",
]
