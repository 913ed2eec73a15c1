"""Data sources, splits, augmentation and the grain training pipeline.

``DATASETS`` maps ``config.data.name`` to a ``DatasetSpec`` (jaxseg/data/registry.py): how to find
the data, split it, read it, and write a synthetic stand-in in its layout. ``synthetic`` is the LA
layout filled with generated phantoms (jaxseg/data/synthetic.py).
"""
import os
from typing import Sequence

from jaxseg.data import acdc
from jaxseg.data import brats
from jaxseg.data import la
from jaxseg.data import pancreas
from jaxseg.data.h5io import DataError, load_case, write_case
from jaxseg.data.la import LASource, case_path, find_root
from jaxseg.data.registry import DatasetSpec

DATASETS: dict[str, DatasetSpec] = {
    "la": la.DATASET,
    "synthetic": la.DATASET,
    "acdc": acdc.DATASET,
    "pancreas": pancreas.DATASET,
    "brats": brats.DATASET,
    # test_BraTS19.py evaluates untransposed volumes of a model trained on transposed ones.
    "brats_upstream_test": brats.UPSTREAM_TEST_DATASET,
}


def get_dataset(name: str) -> DatasetSpec:
  """``DATASETS[name]``, with a clear error for an unknown name."""
  if name not in DATASETS:
    raise DataError(f"unknown dataset data.name={name!r}; known: {sorted(DATASETS)}")
  return DATASETS[name]


def build_source(name: str, root: str | os.PathLike, ids: Sequence[str], num_classes: int,
                 split: str = "val"):
  """The source of dataset ``name`` over ``ids``: training items for split 'train' (ACDC: 2D
  slices), evaluation volumes otherwise."""
  spec = get_dataset(name)
  make = spec.train_source if split == "train" else spec.val_source
  return make(root, ids, num_classes)


__all__ = ["DATASETS", "DataError", "DatasetSpec", "LASource", "build_source", "case_path",
           "find_root", "get_dataset", "load_case", "write_case"]
