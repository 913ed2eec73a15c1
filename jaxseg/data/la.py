"""Left atrium (2018 Atrial Segmentation Challenge) in the UA-MT h5 layout.

Upstream reference: ``yulequan/UA-MT: code/dataloaders/la_heart.py`` (LAHeart reads
``<root>/2018LA_Seg_Training Set/<id>/mri_norm2.h5`` for each id of a list file).
"""

import dataclasses
import functools
import os
import pathlib
from collections.abc import Sequence

import numpy as np
import scipy.ndimage

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


def downsample_case(image: np.ndarray, label: np.ndarray, factor: int):
  """``(image, label)`` [D, H, W] shrunk by an integer ``factor`` per axis: the image by trilinear
  interpolation (``scipy.ndimage.zoom`` order 1), the label by nearest neighbour (order 0) so it
  stays a label map. Each output axis is ``round(n / factor)`` voxels (half to even: 9 -> 4 at
  factor 2)."""
  zoom = 1.0 / factor
  small_image = scipy.ndimage.zoom(image, zoom, order=1).astype(np.float32)
  small_label = scipy.ndimage.zoom(label, zoom, order=0).astype(label.dtype)
  return small_image, small_label


class LASource(H5Source):
  """LA cases ``case_path(root, id)``: ``source[i]`` -> ``{'image': float32 [D, H, W], 'label':
  uint8 [D, H, W], 'case': str}``, validated on first access and cached in RAM (h5source.py).

  ``downsample`` > 1 shrinks every case by that factor per axis once, when it is first read
  (``downsample_case``), and caches the small volumes: training and evaluation then both run at
  the reduced resolution (the reduced-scale protocol of jaxseg/reproduce.py)."""

  def __init__(
    self,
    root: str | os.PathLike,
    case_ids: Sequence[str],
    num_classes: int = 2,
    downsample: int = 1,
  ):
    super().__init__(root, case_ids, num_classes, case_path, ndim=3)
    if int(downsample) != downsample or downsample < 1:
      raise DataError(f"data.downsample={downsample!r}: expected an integer >= 1")
    self.downsample = int(downsample)
    self._small: set[int] = set()

  def __getitem__(self, index: int) -> dict:
    item = super().__getitem__(index)
    key = int(index) % len(self)
    if self.downsample == 1 or key in self._small:
      return item
    image, label = downsample_case(item["image"], item["label"], self.downsample)
    image.flags.writeable = False
    label.flags.writeable = False
    self._cache[key] = (image, label)  # replaces the full-resolution copy
    self._small.add(key)
    return {"image": image, "label": label, "case": item["case"]}


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


def configure(data_config) -> DatasetSpec:
  """``DATASET`` with sources bound to ``data.downsample`` (1, the default, reads the volumes as
  stored)."""
  factor = data_config.get("downsample", 1)
  if factor == 1:
    return DATASET
  source = functools.partial(LASource, downsample=factor)
  return dataclasses.replace(DATASET, train_source=source, val_source=source, configure=None)


DATASET = DatasetSpec(
  find_root=find_root,
  make_splits=make_splits,
  train_source=LASource,
  val_source=LASource,
  synthesize=synthesize,
  configure=configure,
)

__all__ = ["DATASET", "DataError", "LASource", "case_path", "find_root", "make_splits"]
