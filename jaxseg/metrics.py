"""Binary overlap and surface-distance metrics with medpy 0.5.2 semantics (`medpy.metric.binary`).

Host-side numpy/scipy code (evaluation runs on whole volumes after inference). Surfaces are the object
minus its erosion with the connectivity-1 structuring element (6-neighbourhood in 3D), eroded with a zero
border, and distances are Euclidean distance transforms in the given voxel spacing. Volumes are in the
(D, H, W) = (x, y, z) order of the h5 files, so a per-axis spacing is given in that order.

The UA-MT evaluation (`yulequan/UA-MT: code/test_util.py::calculate_metric_percase`) reports
[dc, jc, hd95, asd] in voxel units (no spacing); `asd` is medpy's *directed* distance result -> reference.
"""

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

Spacing = float | Sequence[float] | None


class EmptyMaskError(ValueError, RuntimeError):
  """A surface metric got a mask without foreground.

  medpy raises RuntimeError with the same message; subclassing both keeps `except RuntimeError` code
  written against medpy working.
  """


def _as_bool(name: str, x: np.ndarray) -> np.ndarray:
  x = np.atleast_1d(np.asarray(x))
  if x.dtype != bool and not (np.issubdtype(x.dtype, np.number)):
    raise TypeError(f"{name}: expected a numeric or boolean mask, got dtype {x.dtype}")
  return x.astype(bool)


def _check_pair(result: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  result = _as_bool("result", result)
  reference = _as_bool("reference", reference)
  if result.shape != reference.shape:
    raise ValueError(
      f"result and reference must have the same shape, got {result.shape} and {reference.shape}"
    )
  return result, reference


def dc(result: np.ndarray, reference: np.ndarray) -> float:
  """Dice 2 |A n B| / (|A| + |B|).

  Both empty: NaN (0/0). This is the value medpy 0.5.2 gave with numpy 2.4 when the parity fixture was
  made; the fixture notes it is version-dependent (other medpy/numpy combinations give 0). Callers that
  average over cases decide explicitly; the UA-MT evaluation never reaches it (`parity_case_metrics`).
  """
  result, reference = _check_pair(result, reference)
  intersection = np.count_nonzero(result & reference)
  total = np.count_nonzero(result) + np.count_nonzero(reference)
  if total == 0:
    return float("nan")
  return 2.0 * intersection / float(total)


def jc(result: np.ndarray, reference: np.ndarray) -> float:
  """Jaccard |A n B| / |A u B|; 1.0 when both are empty (medpy 0.5.2)."""
  result, reference = _check_pair(result, reference)
  intersection = np.count_nonzero(result & reference)
  union = np.count_nonzero(result | reference)
  if union == 0:
    return 1.0
  return float(intersection) / float(union)


def _spacing(voxelspacing: Spacing, ndim: int) -> np.ndarray | None:
  if voxelspacing is None:
    return None
  spacing = np.asarray(voxelspacing, dtype=np.float64)
  if spacing.ndim == 0:
    spacing = np.full(ndim, float(spacing))
  if spacing.shape != (ndim,):
    raise ValueError(
      f"voxelspacing must be None, a scalar or one value per axis ({ndim}), got {voxelspacing!r}"
    )
  if np.any(spacing <= 0):
    raise ValueError(f"voxelspacing must be positive, got {voxelspacing!r}")
  return spacing


def surface_distances(
  result: np.ndarray, reference: np.ndarray, voxelspacing: Spacing = None, connectivity: int = 1
) -> np.ndarray:
  """Distances from every surface voxel of `result` to the nearest surface voxel of `reference`.

  medpy `binary.__surface_distances`. Returns a 1-D float64 array (one entry per result surface voxel).

  Raises:
    EmptyMaskError: "The first supplied array ..." when `result` is empty, "The second ..." when
      `reference` is (checked in that order, as medpy).
  """
  result, reference = _check_pair(result, reference)
  spacing = _spacing(voxelspacing, result.ndim)
  if not result.any():
    raise EmptyMaskError("The first supplied array does not contain any binary object.")
  if not reference.any():
    raise EmptyMaskError("The second supplied array does not contain any binary object.")
  footprint = ndimage.generate_binary_structure(result.ndim, connectivity)
  result_border = result ^ ndimage.binary_erosion(result, structure=footprint, iterations=1)
  reference_border = reference ^ ndimage.binary_erosion(
    reference, structure=footprint, iterations=1
  )
  dt = ndimage.distance_transform_edt(~reference_border, sampling=spacing)
  return dt[result_border]


def hd(
  result: np.ndarray, reference: np.ndarray, voxelspacing: Spacing = None, connectivity: int = 1
) -> float:
  """Symmetric Hausdorff distance (max of both directed maxima)."""
  d1 = surface_distances(result, reference, voxelspacing, connectivity)
  d2 = surface_distances(reference, result, voxelspacing, connectivity)
  return float(max(d1.max(), d2.max()))


def hd95(
  result: np.ndarray, reference: np.ndarray, voxelspacing: Spacing = None, connectivity: int = 1
) -> float:
  """95th percentile of the pooled directed surface distances of both directions (medpy `hd95`)."""
  d1 = surface_distances(result, reference, voxelspacing, connectivity)
  d2 = surface_distances(reference, result, voxelspacing, connectivity)
  return float(np.percentile(np.hstack((d1, d2)), 95))


def asd(
  result: np.ndarray, reference: np.ndarray, voxelspacing: Spacing = None, connectivity: int = 1
) -> float:
  """Directed average surface distance, result surface -> reference surface (medpy `asd`)."""
  return float(surface_distances(result, reference, voxelspacing, connectivity).mean())


def assd(
  result: np.ndarray, reference: np.ndarray, voxelspacing: Spacing = None, connectivity: int = 1
) -> float:
  """Average symmetric surface distance: mean of the POOLED distances of both directions (medpy 0.5.2).

  Older medpy averaged the two directed `asd` values instead; the two differ when the surfaces have
  different voxel counts.
  """
  d1 = surface_distances(result, reference, voxelspacing, connectivity)
  d2 = surface_distances(reference, result, voxelspacing, connectivity)
  return float(np.concatenate((d1, d2)).mean())


def calculate_metric_percase(
  pred: np.ndarray, gt: np.ndarray, voxelspacing: Spacing = None
) -> np.ndarray:
  """[dc, jc, hd95, asd] as float64, `yulequan/UA-MT: code/test_util.py::calculate_metric_percase`.

  Upstream passes no spacing (voxel units). Raises EmptyMaskError when either mask is empty.

  Args:
    pred: binary prediction [D, H, W].
    gt: binary ground truth [D, H, W].
    voxelspacing: None, a scalar, or one value per axis in (D, H, W) order.
  """
  return np.array(
    [dc(pred, gt), jc(pred, gt), hd95(pred, gt, voxelspacing), asd(pred, gt, voxelspacing)],
    dtype=np.float64,
  )


def parity_case_metrics(
  pred: np.ndarray, gt: np.ndarray, voxelspacing: Spacing = None
) -> np.ndarray:
  """The UA-MT `test_all_case` convention: (0, 0, 0, 0) for an empty prediction, else per-case metrics.

  An empty ground truth with a non-empty prediction still raises EmptyMaskError, as upstream.
  """
  if not np.any(pred):
    return np.zeros(4, dtype=np.float64)
  return calculate_metric_percase(pred, gt, voxelspacing)


# ---------------------------------------------------------------------------------------------------------
# Clean mode (docs/design.md "Evaluation modes"): distances in mm, NaN instead of a made-up score for
# empty masks.
#
# Conventions follow MONAI's metrics (`monai.metrics.compute_hausdorff_distance(percentile=95)`,
# `compute_average_surface_distance(symmetric=True)`, `DiceMetric(ignore_empty=True)`): surfaces are the
# mask minus its 6-connected erosion (as above), hd95 is the MAXIMUM of the two directed 95th percentiles
# (not the percentile of the pooled distances, as medpy), ASSD is the mean of the pooled distances of both
# directions, and a metric whose value is undefined is NaN:
#   * dice / jaccard: NaN when the reference is empty (nothing to find); otherwise the usual ratio, so an
#     empty prediction of a non-empty reference scores 0;
#   * hd95 / assd: NaN when either mask is empty (no surface to measure from).
# ---------------------------------------------------------------------------------------------------------


def directed_hd95(result: np.ndarray, reference: np.ndarray, voxelspacing: Spacing = None) -> float:
  """95th percentile (linear interpolation) of the distances result surface -> reference surface."""
  return float(np.percentile(surface_distances(result, reference, voxelspacing), 95))


def clean_case_metrics(
  pred: np.ndarray, gt: np.ndarray, voxelspacing: Spacing = None
) -> np.ndarray:
  """[dice, jaccard, hd95, assd] (float64) under the clean-mode conventions above.

  Args:
    pred: binary prediction [D, H, W].
    gt: binary reference [D, H, W].
    voxelspacing: mm per voxel, a scalar or one value per axis in (D, H, W) order; None = 1.

  Returns:
    dice and jaccard in [0, 1] (NaN for an empty reference); hd95 = max(directed 95th percentile of
    pred -> gt, of gt -> pred) and assd = mean of the pooled distances of both directions, in the units of
    `voxelspacing` (NaN when either mask is empty).
  """
  pred, gt = _check_pair(pred, gt)
  nan = float("nan")
  if not gt.any():
    return np.full(4, nan)
  intersection = np.count_nonzero(pred & gt)
  dice = 2.0 * intersection / float(np.count_nonzero(pred) + np.count_nonzero(gt))
  jaccard = float(intersection) / float(np.count_nonzero(pred | gt))
  if not pred.any():
    return np.array([dice, jaccard, nan, nan])
  d_pg = surface_distances(pred, gt, voxelspacing)
  d_gp = surface_distances(gt, pred, voxelspacing)
  hd95_value = max(np.percentile(d_pg, 95), np.percentile(d_gp, 95))
  assd_value = np.concatenate((d_pg, d_gp)).mean()
  return np.array([dice, jaccard, hd95_value, assd_value], dtype=np.float64)
