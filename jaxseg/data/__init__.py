"""Data sources, splits, augmentation and the grain training pipeline.

``DATASETS`` maps ``config.data.name`` to a ``DatasetSpec`` (jaxseg/data/registry.py): how to find
the data, split it, read it, and write a synthetic stand-in in its layout. ``synthetic`` is the LA
layout filled with generated phantoms (jaxseg/data/synthetic.py).
"""

import os
from collections.abc import Sequence

from jaxseg.data import acdc
from jaxseg.data import brats
from jaxseg.data import h5folder
from jaxseg.data import isles
from jaxseg.data import la
from jaxseg.data import pancreas
from jaxseg.data import promise12
from jaxseg.data.h5io import DataError
from jaxseg.data.h5io import load_case
from jaxseg.data.h5io import write_case
from jaxseg.data.la import LASource
from jaxseg.data.la import case_path
from jaxseg.data.la import find_root
from jaxseg.data.registry import DatasetSpec

DATASETS: dict[str, DatasetSpec] = {
  "la": la.DATASET,
  "synthetic": la.DATASET,
  "acdc": acdc.DATASET,
  "pancreas": pancreas.DATASET,
  "brats": brats.DATASET,
  # test_BraTS19.py evaluates untransposed volumes of a model trained on transposed ones.
  "brats_upstream_test": brats.UPSTREAM_TEST_DATASET,
  "isles": isles.DATASET,
  "h5folder": h5folder.DATASET,
  "promise12": promise12.DATASET,
}


def get_dataset(name: str, data_config=None) -> DatasetSpec:
  """``DATASETS[name]``, bound to ``data_config`` (``config.data``) where the dataset reads
  settings from it (``DatasetSpec.configure``), with a clear error for an unknown name."""
  if name not in DATASETS:
    raise DataError(f"unknown dataset data.name={name!r}; known: {sorted(DATASETS)}")
  spec = DATASETS[name]
  if spec.configure is not None and data_config is not None:
    spec = spec.configure(data_config)
  return spec


def build_source(
  name: str,
  root: str | os.PathLike,
  ids: Sequence[str],
  num_classes: int,
  split: str = "val",
  data_config=None,
):
  """The source of dataset ``name`` (bound to ``data_config``, see ``get_dataset``) over ``ids``:
  training items for split 'train' (ACDC: 2D slices), evaluation volumes otherwise."""
  spec = get_dataset(name, data_config)
  make = spec.train_source if split == "train" else spec.val_source
  return make(root, ids, num_classes)


__all__ = [
  "DATASETS",
  "DataError",
  "DatasetSpec",
  "LASource",
  "build_source",
  "case_path",
  "find_root",
  "get_dataset",
  "load_case",
  "write_case",
]
