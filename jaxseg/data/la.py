"""Left atrium (2018 Atrial Segmentation Challenge) in the UA-MT h5 layout.

Upstream reference: ``yulequan/UA-MT: code/dataloaders/la_heart.py`` (LAHeart reads
``<root>/2018LA_Seg_Training Set/<id>/mri_norm2.h5`` for each id of a list file).
"""

import os
import pathlib
from collections.abc import Sequence

from jaxseg.data import registry
from jaxseg.data import splits as splits_lib
from jaxseg.data import synthetic
from jaxseg.data.h5io import DataError
from jaxseg.data.h5source import H5Source
from jaxseg.data.registry import DatasetSpec

ENV_VAR = registry.ENV_VAR
CASES_DIR = "2018LA_Seg_Training Set"
CASE_FILE = "mri_norm2.h5"
LIST_FILE = "train.list"


def case_path(root: str | os.PathLike, case_id: str) -> pathlib.Path:
  """``<root>/2018LA_Seg_Training Set/<case_id>/mri_norm2.h5``."""
  return pathlib.Path(root) / CASES_DIR / case_id / CASE_FILE


def find_root(config_root: str | os.PathLike | None) -> pathlib.Path:
  """The LA folder (the one holding ``train.list``).

  Looks at ``config_root`` first, then at ``$JAXSEG_DATA_DIR``; returns the first that holds
  ``train.list``.

  Raises:
    DataError: saying where it looked and how to obtain the data.
  """
  return registry.locate_root(
    config_root,
    "LA",
    [LIST_FILE],
    f"It holds {LIST_FILE} and '{CASES_DIR}/<id>/{CASE_FILE}'. Obtain it from the data/ folder of "
    "the UA-MT repository (github.com/yulequan/UA-MT, preprocessed 2018 Atrial Segmentation "
    "Challenge). For a run without real data use data.name='synthetic'.",
  )


class LASource(H5Source):
  """LA cases ``case_path(root, id)``: ``source[i]`` -> ``{'image': float32 [D, H, W], 'label':
  uint8 [D, H, W], 'case': str}``, validated on first access and cached in RAM (h5source.py)."""

  def __init__(self, root: str | os.PathLike, case_ids: Sequence[str], num_classes: int = 2):
    super().__init__(root, case_ids, num_classes, case_path, ndim=3)


def make_splits(root: pathlib.Path, data_config) -> dict[str, list[str]]:
  """val = the last ``n_val`` ids of ``<root>/<list_file>``, labeled = the first ``labeled`` of
  the rest (jaxseg/data/splits.py)."""
  ids = splits_lib.read_list(pathlib.Path(root) / data_config.get("list_file", LIST_FILE))
  return splits_lib.make_splits(ids, data_config.n_val, data_config.labeled)


def synthesize(root: pathlib.Path, cfg) -> pathlib.Path:
  """Synthetic phantoms in this layout (jaxseg/data/synthetic.py)."""
  return synthetic.generate(
    root, case_path, LIST_FILE, n_cases=cfg.n_cases, shape=tuple(cfg.shape), seed=cfg.seed
  )


DATASET = DatasetSpec(
  find_root=find_root,
  make_splits=make_splits,
  train_source=LASource,
  val_source=LASource,
  synthesize=synthesize,
)

__all__ = ["DATASET", "DataError", "LASource", "case_path", "find_root", "make_splits"]
