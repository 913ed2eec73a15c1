"""Sliding-window inference over whole volumes: the upstream window grid with count averaging (parity) and
MONAI-style gaussian blending (clean).

`sliding_window_parity` reproduces `yulequan/UA-MT: code/test_util.py::test_single_case` (also used by the
MT baseline): zero-pad only the axes shorter than the patch, visit a strided window grid whose last window is
snapped to the border, average the per-window class probabilities by overlap count, argmax, crop the padding.
Windows are sent to the network in fixed-size batches so a jitted `prob_fn` compiles once per patch shape.

Axis order is the h5 order (D, H, W) = (x, y, z): `stride_xy` applies to axes 0 and 1, `stride_z` to axis 2,
and `patch_size` reads as upstream (112, 112, 80).

DTC (`HiLab-git/DTC: code/test_util.py`) differs only in the per-window rule (sigmoid of a one-channel seg
head broadcast over both classes, label = score > 0.5); it is not implemented here.
"""
import itertools
import math
from typing import Callable, Sequence

import numpy as np

ProbFn = Callable[[np.ndarray], np.ndarray]


def window_starts(size: int, patch: int, stride: int) -> list[int]:
  """Window start offsets along one axis (UA-MT `test_single_case`).

  n = ceil((size - patch) / stride) + 1 windows, start_i = min(stride * i, size - patch): the last window
  is snapped to the border.

  Args:
    size: axis length, >= patch (pad first otherwise).
    patch: window length.
    stride: step between windows, > 0.
  """
  if stride <= 0:
    raise ValueError(f"window_starts: stride must be > 0, got {stride}")
  if patch <= 0 or size < patch:
    raise ValueError(f"window_starts: need 0 < patch <= size, got size {size}, patch {patch}")
  n = math.ceil((size - patch) / stride) + 1
  return [min(stride * i, size - patch) for i in range(n)]


def _pad_to_patch(image, patch_size, batch_size: int, who: str):
  """Validate the arguments; zero-pad (floor half on the left, as upstream) only where the volume is
  smaller than the patch. Returns (padded [D', H', W', Cin] float32, patch, spatial, pad_width)."""
  image = np.asarray(image)
  if image.ndim == 3:
    image = image[..., None]
  if image.ndim != 4:
    raise ValueError(f"{who}: image must be [D, H, W] or [D, H, W, Cin], got shape {image.shape}")
  patch = tuple(int(p) for p in patch_size)
  if len(patch) != 3:
    raise ValueError(f"{who}: patch_size must have 3 entries, got {patch_size!r}")
  if batch_size <= 0:
    raise ValueError(f"{who}: batch_size must be > 0, got {batch_size}")
  spatial = image.shape[:3]
  pads = [max(p - s, 0) for s, p in zip(spatial, patch)]
  pad_width = [(pd // 2, pd - pd // 2) for pd in pads] + [(0, 0)]
  padded = np.pad(image.astype(np.float32), pad_width, mode="constant", constant_values=0)
  return padded, patch, spatial, pad_width


def _blend_windows(prob_fn, padded: np.ndarray, starts, patch, weight: np.ndarray, batch_size: int,
                   num_classes: int, pad_width, spatial, who: str):
  """Run `prob_fn` on fixed-size batches of windows (the last one zero-filled, so a jitted prob_fn
  compiles once), accumulate weight * probabilities and the weights in window order (upstream's,
  so float32 sums round the same way), normalise, argmax (ties -> lowest class), crop the padding.

  Returns (label int64 [D, H, W], score float32 [D, H, W, num_classes]).
  """
  score = np.zeros(padded.shape[:3] + (num_classes,), dtype=np.float32)
  norm = np.zeros(padded.shape[:3], dtype=np.float32)
  batch = np.zeros((batch_size,) + patch + (padded.shape[3],), dtype=np.float32)
  expected = (batch_size,) + patch + (num_classes,)
  for first in range(0, len(starts), batch_size):
    chunk = starts[first:first + batch_size]
    batch[:] = 0.0
    for i, (x, y, z) in enumerate(chunk):
      batch[i] = padded[x:x + patch[0], y:y + patch[1], z:z + patch[2]]
    probs = np.asarray(prob_fn(batch), dtype=np.float32)
    if probs.shape != expected:
      raise ValueError(f"{who}: prob_fn returned shape {probs.shape}, expected {expected}")
    for i, (x, y, z) in enumerate(chunk):
      region = (slice(x, x + patch[0]), slice(y, y + patch[1]), slice(z, z + patch[2]))
      score[region] += probs[i] * weight[..., None]
      norm[region] += weight
  score /= norm[..., None]
  label = np.argmax(score, axis=-1).astype(np.int64)
  crop = tuple(slice(lo, lo + s) for (lo, _), s in zip(pad_width[:3], spatial))
  return label[crop], np.ascontiguousarray(score[crop])


def sliding_window_parity(prob_fn: ProbFn, image: np.ndarray, patch_size: Sequence[int],
                          stride_xy: int, stride_z: int, num_classes: int,
                          batch_size: int = 4) -> tuple[np.ndarray, np.ndarray]:
  """Whole-volume prediction by averaged overlapping windows (UA-MT `test_util.test_single_case`).

  Args:
    prob_fn: maps windows [N, pd, ph, pw, Cin] float32 to class probabilities [N, pd, ph, pw, num_classes]
      (e.g. a jitted softmax of the network in eval mode). Always called with N == batch_size; the last
      batch is zero-filled and the extra outputs are dropped.
    image: [D, H, W] or [D, H, W, Cin].
    patch_size: (pd, ph, pw).
    stride_xy: stride along axes 0 and 1.
    stride_z: stride along axis 2.
    num_classes: number of probability channels prob_fn returns.
    batch_size: windows per prob_fn call.

  Returns:
    label_map: int64 [D, H, W], argmax of the averaged probabilities (ties -> lowest class).
    score_map: float32 [D, H, W, num_classes], probabilities averaged over the windows covering a voxel.
  """
  padded, patch, spatial, pad_width = _pad_to_patch(image, patch_size, batch_size,
                                                    "sliding_window_parity")
  strides = (stride_xy, stride_xy, stride_z)
  starts = list(itertools.product(*(window_starts(s, p, st)
                                    for s, p, st in zip(padded.shape[:3], patch, strides))))

  # Upstream averages plain counts: every window weighs 1.
  return _blend_windows(prob_fn, padded, starts, patch, np.ones(patch, np.float32), batch_size,
                        num_classes, pad_width, spatial, "sliding_window_parity")


# ---------------------------------------------------------------------------------------------------------
# Clean mode: MONAI `monai.inferers.sliding_window_inference(..., mode='gaussian')` semantics.
# ---------------------------------------------------------------------------------------------------------


def scan_interval(size: int, patch: int, overlap: float) -> int:
  """Window step along one axis (MONAI `_get_scan_interval`).

  int(patch * (1 - overlap)), at least 1; a patch that spans the whole axis gets one window.
  """
  if not 0.0 <= overlap < 1.0:
    raise ValueError(f"overlap must be in [0, 1), got {overlap}")
  if patch == size:
    return patch
  return max(int(patch * (1.0 - overlap)), 1)


def gaussian_importance_map(patch_size: Sequence[int], sigma_scale: float | Sequence[float] = 0.125
                            ) -> np.ndarray:
  """Window blending weights (MONAI `compute_importance_map(mode='gaussian')`).

  A separable, unnormalised gaussian over voxel offsets from the window centre ((p - 1) / 2 along an axis
  of length p) with sigma = sigma_scale * p per axis, peak 1; weights are clamped from below at
  max(min weight, 1e-3) so no voxel's weight vanishes.

  Returns:
    float32 [pd, ph, pw].
  """
  patch = tuple(int(p) for p in patch_size)
  scales = np.broadcast_to(np.asarray(sigma_scale, np.float64), (len(patch),))
  if np.any(scales <= 0):
    raise ValueError(f"sigma_scale must be > 0, got {sigma_scale!r}")
  weights = np.ones((), np.float64)
  for axis, (p, s) in enumerate(zip(patch, scales)):
    offsets = np.arange(p, dtype=np.float64) - (p - 1) / 2.0
    g = np.exp(-offsets ** 2 / (2.0 * (s * p) ** 2))
    weights = weights[..., None] * g if axis else g
  weights = weights.astype(np.float32)
  return np.maximum(weights, max(float(weights.min()), 1e-3))


def sliding_window_gaussian(prob_fn: ProbFn, image: np.ndarray, patch_size: Sequence[int],
                            num_classes: int, overlap: float = 0.5, sigma_scale: float = 0.125,
                            batch_size: int = 4) -> tuple[np.ndarray, np.ndarray]:
  """Whole-volume prediction by gaussian-weighted overlapping windows (MONAI sliding_window_inference).

  Axes shorter than the patch are zero-padded (floor half before, as MONAI); along each axis windows start
  every `scan_interval(size, patch, overlap)` voxels and the last window is flush with the border
  (`window_starts`, which places windows as MONAI `dense_patch_slices`); per-voxel probabilities are the
  importance-weighted average of the windows covering it.

  Args:
    prob_fn: windows [N, pd, ph, pw, Cin] -> probabilities [N, pd, ph, pw, num_classes]; always called
      with N == batch_size (the last batch is zero-filled, extra outputs dropped).
    image: [D, H, W] or [D, H, W, Cin].
    patch_size: (pd, ph, pw).
    num_classes: number of probability channels prob_fn returns.
    overlap: fraction of a window shared with the next one, in [0, 1) (MONAI `overlap`).
    sigma_scale: gaussian sigma as a fraction of the window size (MONAI `sigma_scale`).
    batch_size: windows per prob_fn call.

  Returns:
    label_map: int64 [D, H, W], argmax of the blended probabilities (ties -> lowest class).
    score_map: float32 [D, H, W, num_classes], the blended probabilities.
  """
  padded, patch, spatial, pad_width = _pad_to_patch(image, patch_size, batch_size,
                                                    "sliding_window_gaussian")
  starts = list(itertools.product(*(
      window_starts(s, p, scan_interval(s, p, overlap)) for s, p in zip(padded.shape[:3], patch))))
  weight = gaussian_importance_map(patch, sigma_scale)

  return _blend_windows(prob_fn, padded, starts, patch, weight, batch_size, num_classes,
                        pad_width, spatial, "sliding_window_gaussian")


# ---------------------------------------------------------------------------------------------------------
# 2D networks on volumes: slice by slice (ACDC).
# ---------------------------------------------------------------------------------------------------------


def predict_volume_slicewise(prob_fn: ProbFn, image: np.ndarray, patch_size: Sequence[int],
                             num_classes: int, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
  """Whole-volume prediction of a 2D network, one short-axis slice at a time.

  SSL4MIS `code/val_2d.py::test_single_volume` (also BCP/CML `test_ACDC.py`): every slice [H, W] is
  zoomed to `patch_size` with order 0 (nearest, `scipy.ndimage.zoom(x, (ph / H, pw / W), order=0)`),
  the network's class probabilities are argmax-ed at that size (ties -> lowest class), and the label
  map is zoomed back to [H, W] with order 0 (zoom factors (H / ph, W / pw)). Slices go to the
  network in fixed-size batches, the last one zero-filled, so a jitted prob_fn compiles once.

  Args:
    prob_fn: slices [N, ph, pw, Cin] float32 -> probabilities [N, ph, pw, num_classes]; always
      called with N == batch_size.
    image: [D, H, W] or [D, H, W, Cin] (D = slices).
    patch_size: (ph, pw), the training slice size (256, 256 upstream).
    num_classes: probability channels prob_fn returns.
    batch_size: slices per prob_fn call.

  Returns:
    label_map: int64 [D, H, W].
    score_map: float32 [D, H, W, num_classes], each slice's probabilities zoomed back with order 0
      (so argmax(score_map) == label_map up to ties).
  """
  from scipy import ndimage  # only this function needs scipy

  image = np.asarray(image, np.float32)
  if image.ndim == 3:
    image = image[..., None]
  if image.ndim != 4:
    raise ValueError(f"predict_volume_slicewise: image must be [D, H, W] or [D, H, W, Cin], got shape "
                     f"{image.shape}")
  patch = tuple(int(p) for p in patch_size)
  if len(patch) != 2:
    raise ValueError(f"predict_volume_slicewise: patch_size must have 2 entries, got {patch_size!r}")
  if batch_size <= 0:
    raise ValueError(f"predict_volume_slicewise: batch_size must be > 0, got {batch_size}")
  depth, h, w, cin = image.shape
  to_patch = (patch[0] / h, patch[1] / w, 1.0)
  back = (h / patch[0], w / patch[1])
  label = np.zeros((depth, h, w), np.int64)
  score = np.zeros((depth, h, w, num_classes), np.float32)
  batch = np.zeros((batch_size,) + patch + (cin,), np.float32)
  expected = (batch_size,) + patch + (num_classes,)
  for first in range(0, depth, batch_size):
    chunk = range(first, min(first + batch_size, depth))
    batch[:] = 0.0
    for i, z in enumerate(chunk):
      batch[i] = ndimage.zoom(image[z], to_patch, order=0)
    probs = np.asarray(prob_fn(batch), dtype=np.float32)
    if probs.shape != expected:
      raise ValueError(f"predict_volume_slicewise: prob_fn returned shape {probs.shape}, expected "
                       f"{expected}")
    for i, z in enumerate(chunk):
      label[z] = ndimage.zoom(np.argmax(probs[i], axis=-1), back, order=0)
      score[z] = ndimage.zoom(probs[i], back + (1.0,), order=0)
  return label, score
