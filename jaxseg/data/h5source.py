"""The random-access, RAM-cached source of h5 cases that every dataset reads through.

``source[i]`` -> ``{'image': float32, 'label': uint8, 'case': id}`` of rank ``ndim`` (2: a slice
[H, W], 3: a volume [D, H, W]). Each file is read and validated (jaxseg/data/h5io.py: missing file or
key, shape, NaN, label range) on first access and kept in RAM (these datasets are a few hundred MiB
at most); returned arrays are read-only views of the cache. Grain-compatible (``__len__``,
``__getitem__``).
"""

import os
import pathlib
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from jaxseg.data.h5io import DataError
from jaxseg.data.h5io import load_case


class H5Source:
  """Cases ``path_of(root, id)`` for ``id`` in ``case_ids``.

  Args:
    root: the dataset folder.
    case_ids: ids in source order.
    num_classes: labels must lie in [0, num_classes).
    path_of: ``(root, id) -> h5 path``.
    ndim: 2 or 3, the rank of image and label.
    transpose: optional axis permutation applied to image and label after loading (BraTS's
      SagittalToAxial (2, 1, 0)).
  """

  def __init__(
    self,
    root: str | os.PathLike,
    case_ids: Sequence[str],
    num_classes: int,
    path_of: Callable[[pathlib.Path, str], pathlib.Path],
    ndim: int = 3,
    transpose: Sequence[int] | None = None,
  ):
    self.root = pathlib.Path(root)
    self.case_ids = list(case_ids)
    self.num_classes = num_classes
    self.path_of = path_of
    self.ndim = ndim
    self.transpose = None if transpose is None else tuple(transpose)
    self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

  def __len__(self) -> int:
    return len(self.case_ids)

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if not -len(self) <= index < len(self):
      raise IndexError(f"case index {index} out of range for {len(self)} cases")
    index %= len(self)
    if index not in self._cache:
      image, label = load_case(self.path(index), self.num_classes, ndim=self.ndim)
      if self.transpose is not None:
        image = np.ascontiguousarray(np.transpose(image, self.transpose))
        label = np.ascontiguousarray(np.transpose(label, self.transpose))
      image.flags.writeable = False
      label.flags.writeable = False
      self._cache[index] = (image, label)
    image, label = self._cache[index]
    return {"image": image, "label": label, "case": self.case_ids[index]}

  def path(self, index: int) -> pathlib.Path:
    """The h5 file of case `index`."""
    return self.path_of(self.root, self.case_ids[index])

  def check_all(self, labeled: Iterable[int] = ()) -> None:
    """Reads and validates every case now, so bad data stops a run before its first step rather
    than at whichever step first samples it (the cases stay cached for training).

    Args:
      labeled: indices of cases whose label is used as ground truth (labeled training cases,
        validation cases): a volume among them must hold some foreground, or its Dice and its
        supervised loss mean nothing. 2D slices are exempt (most ACDC slices hold no heart).

    Raises:
      DataError: naming the case file and the problem.
    """
    labeled = set(labeled)
    for index in range(len(self)):
      label = self[index]["label"]
      if index in labeled and self.ndim == 3 and not label.any():
        raise DataError(
          f"{self.path(index)}: the label is empty (no foreground voxel) but the case "
          "is used as labeled ground truth; fix the file or drop the case from the list"
        )

  def __repr__(self) -> str:
    kind = "slices" if self.ndim == 2 else "volumes"
    extra = f", transpose={self.transpose}" if self.transpose is not None else ""
    return (
      f"{type(self).__name__}(root={str(self.root)!r}, {len(self)} {kind}, "
      f"num_classes={self.num_classes}{extra})"
    )
