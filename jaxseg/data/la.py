"""Left atrium (2018 Atrial Segmentation Challenge) in the UA-MT h5 layout.

Upstream reference: ``yulequan/UA-MT: code/dataloaders/la_heart.py`` (LAHeart reads
``<root>/2018LA_Seg_Training Set/<id>/mri_norm2.h5`` for each id of a list file).
"""
import os
import pathlib
from typing import Sequence

import numpy as np

from jaxseg.data.h5io import DataError, load_case

ENV_VAR = "JAXSEG_DATA_DIR"
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
  candidates = []
  if config_root:
    candidates.append(("config data.root", pathlib.Path(config_root)))
  env = os.environ.get(ENV_VAR)
  if env:
    candidates.append((f"${ENV_VAR}", pathlib.Path(env)))
  for _, root in candidates:
    if (root / LIST_FILE).is_file():
      return root
  looked = "; ".join(f"{what} = {root} (no {LIST_FILE})" for what, root in candidates)
  looked = looked or f"data.root is empty and ${ENV_VAR} is not set"
  raise DataError(
      f"LA data not found: {looked}. Point data.root or ${ENV_VAR} at the LA folder holding "
      f"{LIST_FILE} and '{CASES_DIR}/<id>/{CASE_FILE}'. Obtain it from the data/ folder of the "
      "UA-MT repository (github.com/yulequan/UA-MT, preprocessed 2018 Atrial Segmentation "
      "Challenge); developers of this project have it at ../shared/data/LA. For a run without "
      "real data use data.name='synthetic'.")


class LASource:
  """Random-access source of LA cases (grain-compatible: ``__len__`` and ``__getitem__``).

  ``source[i]`` -> ``{'image': float32 [D, H, W], 'label': uint8 [D, H, W], 'case': str}``.
  Each case is read and validated on first access and then kept in RAM (the whole dataset is a
  few hundred MiB at most). Returned arrays are read-only views of the cache.
  """

  def __init__(self, root: str | os.PathLike, case_ids: Sequence[str], num_classes: int = 2):
    self.root = pathlib.Path(root)
    self.case_ids = list(case_ids)
    self.num_classes = num_classes
    self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

  def __len__(self) -> int:
    return len(self.case_ids)

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if not -len(self) <= index < len(self):
      raise IndexError(f"case index {index} out of range for {len(self)} cases")
    index %= len(self)
    if index not in self._cache:
      image, label = load_case(case_path(self.root, self.case_ids[index]), self.num_classes)
      image.flags.writeable = False
      label.flags.writeable = False
      self._cache[index] = (image, label)
    image, label = self._cache[index]
    return {"image": image, "label": label, "case": self.case_ids[index]}

  def __repr__(self) -> str:
    return f"LASource(root={str(self.root)!r}, n_cases={len(self)}, num_classes={self.num_classes})"


__all__ = ["DataError", "LASource", "case_path", "find_root"]
