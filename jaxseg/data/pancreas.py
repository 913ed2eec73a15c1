"""NIH Pancreas-CT in DTC's h5 layout (dataset name 'pancreas').

Layout (upstream ``HiLab-git/DTC: code/dataloaders/pancreas.py`` class ``Pancreas``):

  <root>/train.list          case names, one a line (labeled = the first N, as upstream)
  <root>/test.list           the held-out test names (``evaluate --split test``)
  <root>/data/<name>.h5      keys ``image`` (float, [D, H, W]) and ``label`` (cast to uint8), 0/1

DTC ships no Pancreas preprocessing; the maintainer describes it as "center crop and zero mean unit
variance normalization" (HiLab-git/DTC issue #3). The paper setting is 82 volumes, 62 train / 20 test,
12 labeled (docs/methods/dtc.md §5, unverified). As for LA, validation is OUR carve-out: the last
``data.n_val`` names of train.list; the labeled names are the first ``data.labeled`` of the rest.
"""

import json
import os
import pathlib
from collections.abc import Sequence

from jaxseg import io_utils
from jaxseg.data import registry
from jaxseg.data import splits as splits_lib
from jaxseg.data.h5io import DataError
from jaxseg.data.h5io import write_case
from jaxseg.data.h5source import H5Source
from jaxseg.data.registry import DatasetSpec

ENV_VAR = registry.ENV_VAR
LIST_FILE = "train.list"
TEST_LIST = "test.list"
DATA_DIR = "data"
NUM_CLASSES = 2
MANIFEST = "synthetic_pancreas_manifest.json"
_SYNTH_VERSION = 1  # bump when the stand-in changes, so stale folders are regenerated


def case_path(root: str | os.PathLike, name: str) -> pathlib.Path:
  """``<root>/data/<name>.h5``."""
  return pathlib.Path(root) / DATA_DIR / f"{name}.h5"


def find_root(config_root: str | os.PathLike | None) -> pathlib.Path:
  """The Pancreas folder (holding ``train.list`` and ``data/``).

  Looks at ``config_root`` first, then at ``$JAXSEG_DATA_DIR``.

  Raises:
    DataError: saying where it looked and how to obtain the data.
  """
  return registry.locate_root(
    config_root,
    "Pancreas",
    [LIST_FILE, DATA_DIR + "/"],
    f"It holds {LIST_FILE}, {TEST_LIST} and {DATA_DIR}/<name>.h5 (keys image, label), DTC's "
    "layout. The volumes are NIH Pancreas-CT (The Cancer Imaging Archive, collection "
    "'Pancreas-CT'), which DTC does not redistribute or preprocess in its repository: its "
    "maintainer describes the preprocessing as a crop around the pancreas and zero-mean "
    "unit-variance normalisation (HiLab-git/DTC issue #3); ycwu1997/MC-Net ships a notebook that "
    "writes this layout (data/Pancreas/Pre-processing.ipynb). For a run without real data set "
    "data.synthetic.",
  )


def make_splits(root: pathlib.Path, data_config) -> dict[str, list[str]]:
  """val = the last ``n_val`` names of ``<root>/train.list``, labeled = the first ``labeled`` of
  the rest (jaxseg/data/splits.py)."""
  ids = splits_lib.read_list(pathlib.Path(root) / data_config.get("list_file", LIST_FILE))
  return splits_lib.make_splits(ids, data_config.n_val, data_config.labeled)


def source(root: str | os.PathLike, ids: Sequence[str], num_classes: int = NUM_CLASSES) -> H5Source:
  """Volumes ``data/<name>.h5``: ``source[i]`` -> {'image': float32 [D, H, W], 'label': uint8
  [D, H, W], 'case': name}, validated on first read (missing file or key, shape mismatch, NaN,
  labels outside [0, num_classes): DataError naming the file) and cached in RAM."""
  return H5Source(root, ids, num_classes, case_path, ndim=3)


def synthesize(root: str | os.PathLike, synthetic_config=None) -> pathlib.Path:
  """Writes a small deterministic stand-in in this layout under ``root``; returns ``root``.

  ``synthetic_config`` (ConfigDict or dict, all optional): ``n_cases`` train.list volumes (default
  8), ``n_test`` test.list volumes (default 2), ``shape`` (D, H, W) (default (40, 40, 36)), ``seed``
  (default 0). Volumes are the phantoms of jaxseg/data/synthetic.py (one labeled blob among
  distractors, z-scored). Does nothing when the manifest records the same settings and every file
  exists; the manifest is written last, so an interrupted write is redone.
  """
  from jaxseg.data import synthetic  # pylint: disable=g-import-not-at-top

  get = (
    (lambda k, v: synthetic_config.get(k, v)) if synthetic_config is not None else (lambda k, v: v)
  )
  cfg = {
    "n_cases": int(get("n_cases", 8)),
    "n_test": int(get("n_test", 2)),
    "shape": [int(s) for s in get("shape", (40, 40, 36))],
    "seed": int(get("seed", 0)),
  }
  if cfg["n_cases"] < 1 or cfg["n_test"] < 1:
    raise ValueError(f"synthetic Pancreas needs n_cases >= 1 and n_test >= 1, got {cfg}")
  root = pathlib.Path(root)
  manifest = {"generator": "jaxseg.data.pancreas", "version": _SYNTH_VERSION, **cfg}
  manifest_path = root / MANIFEST
  train = [f"synth_pancreas_{i:03d}" for i in range(cfg["n_cases"])]
  test = [f"synth_pancreas_{cfg['n_cases'] + i:03d}" for i in range(cfg["n_test"])]
  if manifest_path.is_file():
    try:
      existing = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
      existing = None
    if existing == manifest and all(case_path(root, n).is_file() for n in train + test):
      return root
  root.mkdir(parents=True, exist_ok=True)
  if manifest_path.exists():
    manifest_path.unlink()  # the folder is being rewritten; it is not valid until we finish
  for index, name in enumerate(train + test):
    image, label = synthetic.make_case(cfg["seed"], index, tuple(cfg["shape"]))
    write_case(case_path(root, name), image, label)
  for path, names in ((root / LIST_FILE, train), (root / TEST_LIST, test)):
    with io_utils.atomic_open(path) as f:
      f.write("".join(f"{n}\n" for n in names))
  io_utils.write_json(manifest_path, manifest)
  return root


DATASET = DatasetSpec(
  find_root=find_root,
  make_splits=make_splits,
  train_source=source,
  val_source=source,
  synthesize=synthesize,
  test_list=TEST_LIST,
)

__all__ = ["DATASET", "DataError", "case_path", "find_root", "make_splits", "source", "synthesize"]
