"""BraTS 2019 (whole-tumour, single modality) in the SSL4MIS h5 layout, as DyCON trains on it.

Layout (docs/methods/dycon.md §5; `KU-CVML/DyCON: code/dataloaders/brats19.py`, HiLab-git/SSL4MIS's
preprocessed BraTS2019):

  <root>/train.txt, val.txt, test.txt   one case id per line; a line may carry a ",..." suffix,
                                        only the part before the first comma is the id
  <root>/data/<id>.h5                   image float32 [x, y, z], label uint8 (0/1 whole tumour)

Splits: labeled = the first `data.labeled` ids of train.txt (upstream labelnum 25 = 10 %),
unlabeled = the rest; validation = val.txt (`data.val_list`). Upstream validates during training
AND reports its test numbers on val.txt (`test_BraTS19.py` reads val.txt, not test.txt), so its
published numbers are best-on-val checkpoints scored on the same val cases. test.txt is the
held-out list (`evaluate --split test`).

Orientation: upstream's training transform `SagittalToAxial` transposes every volume (2, 1, 0)
before cropping, and its training-time validation (`var_all_case_BraTS19`) does the same;
`test_BraTS19.py` does NOT, so the published test protocol feeds the network volumes in the other
orientation. `BraTSSource(sagittal_to_axial=...)` implements the transpose. `DATASET` (registered
as 'brats') transposes for training AND evaluation (consistent orientation, = upstream's
training-time validation); `UPSTREAM_TEST_DATASET` evaluates untransposed volumes, reproducing the
test-time mismatch.
"""

import collections
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
TRAIN_LIST = "train.txt"
VAL_LIST = "val.txt"
TEST_LIST = "test.txt"
NUM_CLASSES = 2
MANIFEST = "synthetic_brats_manifest.json"
_SYNTH_VERSION = 1
# SagittalToAxial (KU-CVML/DyCON code/dataloaders/brats19.py): np.transpose(volume, (2, 1, 0)).
SAGITTAL_TO_AXIAL = (2, 1, 0)


def case_path(root: str | os.PathLike, case_id: str) -> pathlib.Path:
  """``<root>/data/<case_id>.h5``."""
  return pathlib.Path(root) / "data" / f"{case_id}.h5"


def read_list(path: str | os.PathLike) -> list[str]:
  """Case ids of a BraTS list file: one a line, the text before the first comma, stripped; blank
  lines skipped (upstream `item.replace('\\n', '').split(',')[0]`). Duplicates are an error."""
  ids = [line.split(",", 1)[0].strip() for line in splits_lib.read_list(path)]
  ids = [i for i in ids if i]
  if not ids:
    raise DataError(f"{path}: list file holds no case ids")
  dup = sorted(i for i, n in collections.Counter(ids).items() if n > 1)
  if dup:
    raise DataError(f"{path}: duplicated case ids {dup}")
  return ids


def find_root(config_root: str | os.PathLike | None) -> pathlib.Path:
  """The BraTS folder (holding ``train.txt`` and ``val.txt``): ``config_root``, then
  ``$JAXSEG_DATA_DIR``.

  Raises:
    DataError: saying where it looked and how to obtain the data.
  """
  return registry.locate_root(
    config_root,
    "BraTS 2019",
    [TRAIN_LIST, VAL_LIST],
    f"It holds {TRAIN_LIST}, {VAL_LIST}, {TEST_LIST} and data/<id>.h5 (keys image, label): the "
    "SSL4MIS preprocessed BraTS2019 (github.com/HiLab-git/SSL4MIS, data/BraTS2019; split lists as "
    "in KU-CVML/DyCON data/BraTS2019). It is not shipped with this project. For a run without "
    "real data set data.synthetic (a generated stand-in in this layout).",
  )


def make_splits(root: pathlib.Path, data_config) -> dict[str, list[str]]:
  """train = train.txt (labeled = its first ``data.labeled`` ids), val = ``data.val_list``
  (val.txt)."""
  root = pathlib.Path(root)
  train = read_list(root / data_config.get("list_file", TRAIN_LIST))
  val_name = data_config.get("val_list", VAL_LIST)
  val = read_list(root / val_name)
  overlap = sorted(set(train) & set(val))
  if overlap:
    raise DataError(
      f"{root}: {len(overlap)} case ids are in both the train list and {val_name}: {overlap[:5]}"
    )
  labeled = data_config.labeled
  if not 1 <= labeled <= len(train):
    raise DataError(
      f"data.labeled={labeled} must be in [1, {len(train)}] (the ids of "
      f"{root / data_config.get('list_file', TRAIN_LIST)})"
    )
  return {"train": train, "val": val, "labeled": train[:labeled], "unlabeled": train[labeled:]}


class BraTSSource(H5Source):
  """BraTS cases ``case_path(root, id)`` (h5source.py): ``source[i]`` -> ``{'image': float32
  [D, H, W], 'label': uint8 [D, H, W], 'case': id}``; with ``sagittal_to_axial`` both are transposed
  (2, 1, 0) as upstream's SagittalToAxial."""

  def __init__(
    self,
    root: str | os.PathLike,
    case_ids: Sequence[str],
    num_classes: int = NUM_CLASSES,
    sagittal_to_axial: bool = True,
  ):
    self.sagittal_to_axial = bool(sagittal_to_axial)
    super().__init__(
      root,
      case_ids,
      num_classes,
      case_path,
      ndim=3,
      transpose=SAGITTAL_TO_AXIAL if sagittal_to_axial else None,
    )


def train_source(root, ids: Sequence[str], num_classes: int = NUM_CLASSES) -> BraTSSource:
  """Training cases, transposed (2, 1, 0) as upstream's training transform."""
  return BraTSSource(root, ids, num_classes, sagittal_to_axial=True)


def val_source(root, ids: Sequence[str], num_classes: int = NUM_CLASSES) -> BraTSSource:
  """Evaluation cases in the training orientation (upstream's training-time validation)."""
  return BraTSSource(root, ids, num_classes, sagittal_to_axial=True)


def val_source_untransposed(
  root, ids: Sequence[str], num_classes: int = NUM_CLASSES
) -> BraTSSource:
  """Evaluation cases as stored, as upstream test_BraTS19.py reads them (orientation mismatch)."""
  return BraTSSource(root, ids, num_classes, sagittal_to_axial=False)


def synthetic_case_ids(n: int, prefix: str = "train") -> list[str]:
  return [f"BraTS19_synth_{prefix}_{i:03d}" for i in range(n)]


def synthesize(root: str | os.PathLike, cfg) -> pathlib.Path:
  """Writes a deterministic stand-in in this layout under ``root``; returns ``root``.

  ``cfg``: n_cases (train.txt), n_val (val.txt, default 2), n_test (test.txt, default 1), shape
  (x, y, z) of every volume, seed. Volumes are the phantoms of jaxseg/data/synthetic.py (one
  labeled blob, distractors, bias field, z-scored). Does nothing when the manifest matches and every
  file exists; the manifest is written last, so an interrupted generation is redone.
  """
  from jaxseg.data import synthetic  # pylint: disable=g-import-not-at-top

  root = pathlib.Path(root)
  n_train, n_val, n_test = int(cfg.n_cases), int(cfg.get("n_val", 2)), int(cfg.get("n_test", 1))
  if n_train < 1 or n_val < 1 or n_test < 0:
    raise ValueError(f"synthetic BraTS needs n_cases >= 1 and n_val >= 1, got {n_train}, {n_val}")
  shape, seed = tuple(int(s) for s in cfg.shape), int(cfg.seed)
  lists = {
    TRAIN_LIST: synthetic_case_ids(n_train, "train"),
    VAL_LIST: synthetic_case_ids(n_val, "val"),
    TEST_LIST: synthetic_case_ids(n_test, "test"),
  }
  manifest = {
    "generator": "jaxseg.data.brats",
    "version": _SYNTH_VERSION,
    "seed": seed,
    "shape": list(shape),
    "lists": {k: len(v) for k, v in lists.items()},
  }
  all_ids = [i for ids in lists.values() for i in ids]
  manifest_path = root / MANIFEST
  if manifest_path.is_file():
    try:
      existing = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
      existing = None
    if existing == manifest and all(case_path(root, i).is_file() for i in all_ids):
      return root
  root.mkdir(parents=True, exist_ok=True)
  if manifest_path.exists():
    manifest_path.unlink()
  for index, case_id in enumerate(all_ids):
    image, label = synthetic.make_case(seed, index, shape)
    write_case(case_path(root, case_id), image, label)
  for name, ids in lists.items():
    with io_utils.atomic_open(root / name) as f:
      f.write("".join(f"{i}\n" for i in ids))
  io_utils.write_json(manifest_path, manifest)
  return root


DATASET = DatasetSpec(
  find_root=find_root,
  make_splits=make_splits,
  train_source=train_source,
  val_source=val_source,
  synthesize=synthesize,
  test_list=TEST_LIST,
  read_list=read_list,
)

# Upstream test_BraTS19.py's protocol: trained on transposed volumes, evaluated on untransposed ones.
UPSTREAM_TEST_DATASET = DatasetSpec(
  find_root=find_root,
  make_splits=make_splits,
  train_source=train_source,
  val_source=val_source_untransposed,
  synthesize=synthesize,
  test_list=TEST_LIST,
  read_list=read_list,
)

__all__ = [
  "DATASET",
  "UPSTREAM_TEST_DATASET",
  "BraTSSource",
  "DataError",
  "case_path",
  "find_root",
  "make_splits",
  "read_list",
  "synthesize",
]
