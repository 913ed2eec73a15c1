"""Reading and writing one case in the UA-MT h5 layout (keys ``image`` and ``label``).

Layout (upstream ``yulequan/UA-MT: code/dataloaders/la_heart_processing.py``): ``image`` float32 and
``label`` uint8 of the same shape, axis order (x, y, z) as pynrrd reads it, gzip-compressed, no
attributes. We keep that order as (D, H, W) = (x, y, z).
"""

import os
import pathlib
import tempfile

import h5py
import numpy as np

from jaxseg import io_utils
from jaxseg.errors import UserError

PathLike = str | os.PathLike


class DataError(UserError, ValueError):
  """A data file, list or folder is missing or malformed; the message names the file."""


def load_case(path: PathLike, num_classes: int, ndim: int = 3) -> tuple[np.ndarray, np.ndarray]:
  """Reads and validates one case.

  Args:
    path: h5 file with datasets ``image`` and ``label``.
    num_classes: label values must lie in [0, num_classes).
    ndim: expected number of array dimensions (3 for volumes [D, H, W], 2 for slices [H, W]).

  Returns:
    (image float32 [D, H, W], label uint8 [D, H, W]) for ndim=3.

  Raises:
    DataError: naming ``path`` for a missing, truncated or corrupt file, missing key, shape
      mismatch, wrong ndim, non-numeric image or non-integer label dtype, non-finite intensities
      or out-of-range labels.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f"{path}: case file not found")
  try:
    with h5py.File(path, "r") as f:
      missing = [k for k in ("image", "label") if k not in f]
      if missing:
        raise DataError(f"{path}: missing key(s) {missing}; keys found: {sorted(f.keys())}")
      image = f["image"][()]
      label = f["label"][()]
  except DataError:
    raise
  except Exception as e:  # h5py reports truncation and corrupt chunks as OSError, KeyError, ...
    raise DataError(
      f"{path}: cannot read as HDF5, the file is truncated or corrupt ({type(e).__name__}: {e})"
    ) from e

  if image.shape != label.shape:
    raise DataError(f"{path}: image shape {image.shape} != label shape {label.shape}")
  if image.ndim != ndim:
    raise DataError(f"{path}: expected a {ndim}-D image, got shape {image.shape}")
  if not (np.issubdtype(image.dtype, np.floating) or np.issubdtype(image.dtype, np.integer)):
    raise DataError(f"{path}: image dtype {image.dtype} is not a real number type")
  if not np.issubdtype(label.dtype, np.integer):
    raise DataError(f"{path}: label dtype {label.dtype} is not an integer type")
  image = np.asarray(image, np.float32)
  finite = np.isfinite(image)
  if not finite.all():
    n_nan = int(np.isnan(image).sum())
    n_inf = int(np.isinf(image).sum())
    raise DataError(f"{path}: image has non-finite intensities ({n_nan} NaN, {n_inf} inf)")
  values = np.unique(label)
  bad = values[(values < 0) | (values >= num_classes)]
  if bad.size:
    raise DataError(f"{path}: label values {bad.tolist()} outside [0, {num_classes})")
  return image, label.astype(np.uint8)


def write_case(path: PathLike, image: np.ndarray, label: np.ndarray) -> None:
  """Writes ``image`` (float32) and ``label`` (uint8) gzip-compressed, atomically.

  The file is written to a temporary name in the same folder and moved into place with
  ``os.replace``, so a reader never sees a half-written case.
  """
  path = pathlib.Path(path)
  image = np.asarray(image)
  label = np.asarray(label)
  if image.shape != label.shape:
    raise DataError(f"{path}: image shape {image.shape} != label shape {label.shape}")
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  os.close(fd)
  try:
    with h5py.File(tmp, "w") as f:
      # gzip level 4 is what the released LA files use.
      f.create_dataset(
        "image", data=image.astype(np.float32), compression="gzip", compression_opts=4
      )
      f.create_dataset("label", data=label.astype(np.uint8), compression="gzip", compression_opts=4)
    io_utils.publish(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
