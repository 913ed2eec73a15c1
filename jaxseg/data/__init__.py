"""Data sources, splits, augmentation and the grain training pipeline.

``SOURCES`` maps ``config.data.name`` to a source class. ``synthetic`` phantoms are generated into
the LA layout (``jaxseg.data.synthetic.generate``) and then read by the same ``LASource``.
"""
import os
from typing import Sequence

from jaxseg.data.h5io import DataError, load_case, write_case
from jaxseg.data.la import LASource, case_path, find_root

SOURCES = {
    "la": LASource,
    "synthetic": LASource,
}


def build_source(name: str, root: str | os.PathLike, ids: Sequence[str], num_classes: int):
  """``SOURCES[name](root, ids, num_classes)``, with a clear error for an unknown name."""
  if name not in SOURCES:
    raise DataError(f"unknown data source {name!r}; known: {sorted(SOURCES)}")
  return SOURCES[name](root, ids, num_classes)


__all__ = ["DataError", "LASource", "SOURCES", "build_source", "case_path", "find_root",
           "load_case", "write_case"]
