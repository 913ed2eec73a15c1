"""Sliding-window inference over whole volumes: the upstream window grid with count averaging (parity) and
MONAI-style gaussian blending (clean).

`sliding_window_parity` reproduces `yulequan/UA-MT: code/test_util.py::test_single_case` (also used by the
MT baseline): zero-pad only the axes shorter than the patch, visit a strided window grid whose last window is
snapped to the border, average the per-window class probabilities by overlap count, argmax, crop the padding.
Windows are sent to the network in fixed-size batches so a jitted `prob_fn` compiles once per patch shape.

`DeviceWindows` runs the same window grid and the same accumulation, in the same order, as one
jitted program: the windows are cut from the volume on the device, batched through the network
(sharded over every device of a mesh) and accumulated there; evaluation uses it for 3D volumes,
and its label maps equal the host loop's (tests/test_parallel.py).

Axis order is the h5 order (D, H, W) = (x, y, z): `stride_xy` applies to axes 0 and 1, `stride_z` to axis 2,
and `patch_size` reads as upstream (112, 112, 80).

DTC (`HiLab-git/DTC: code/test_util.py`) differs only in the per-window rule (sigmoid of a one-channel seg
head broadcast over both classes, label = score > 0.5); it is not implemented here.
"""

import functools
import itertools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

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


def _blend_windows(
  prob_fn,
  padded: np.ndarray,
  starts,
  patch,
  weight: np.ndarray,
  batch_size: int,
  num_classes: int,
  pad_width,
  spatial,
  who: str,
):
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
    chunk = starts[first : first + batch_size]
    batch[:] = 0.0
    for i, (x, y, z) in enumerate(chunk):
      batch[i] = padded[x : x + patch[0], y : y + patch[1], z : z + patch[2]]
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


def sliding_window_parity(
  prob_fn: ProbFn,
  image: np.ndarray,
  patch_size: Sequence[int],
  stride_xy: int,
  stride_z: int,
  num_classes: int,
  batch_size: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
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
  padded, patch, spatial, pad_width = _pad_to_patch(
    image, patch_size, batch_size, "sliding_window_parity"
  )
  starts, weight = parity_grid(padded.shape[:3], patch, stride_xy, stride_z)
  return _blend_windows(
    prob_fn,
    padded,
    starts,
    patch,
    weight,
    batch_size,
    num_classes,
    pad_width,
    spatial,
    "sliding_window_parity",
  )


def parity_grid(shape: Sequence[int], patch: Sequence[int], stride_xy: int, stride_z: int):
  """(window starts, weights [pd, ph, pw]) of the parity window over a padded volume of `shape`:
  the strided grid, every window weighing 1 (upstream averages plain counts)."""
  strides = (stride_xy, stride_xy, stride_z)
  starts = list(
    itertools.product(*(window_starts(s, p, st) for s, p, st in zip(shape, patch, strides)))
  )
  return starts, np.ones(tuple(patch), np.float32)


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


def gaussian_importance_map(
  patch_size: Sequence[int], sigma_scale: float | Sequence[float] = 0.125
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
    g = np.exp(-(offsets**2) / (2.0 * (s * p) ** 2))
    weights = weights[..., None] * g if axis else g
  weights = weights.astype(np.float32)
  return np.maximum(weights, max(float(weights.min()), 1e-3))


def sliding_window_gaussian(
  prob_fn: ProbFn,
  image: np.ndarray,
  patch_size: Sequence[int],
  num_classes: int,
  overlap: float = 0.5,
  sigma_scale: float = 0.125,
  batch_size: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
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
  padded, patch, spatial, pad_width = _pad_to_patch(
    image, patch_size, batch_size, "sliding_window_gaussian"
  )
  starts, weight = gaussian_grid(padded.shape[:3], patch, overlap, sigma_scale)
  return _blend_windows(
    prob_fn,
    padded,
    starts,
    patch,
    weight,
    batch_size,
    num_classes,
    pad_width,
    spatial,
    "sliding_window_gaussian",
  )


def gaussian_grid(shape: Sequence[int], patch: Sequence[int], overlap: float, sigma_scale: float):
  """(window starts, weights [pd, ph, pw]) of the clean-mode window over a padded volume of
  `shape`: MONAI's scan interval and gaussian importance map."""
  starts = list(
    itertools.product(
      *(window_starts(s, p, scan_interval(s, p, overlap)) for s, p in zip(shape, patch))
    )
  )
  return starts, gaussian_importance_map(patch, sigma_scale)


# ---------------------------------------------------------------------------------------------------------
# On device: the same windows and accumulation as one jitted program.
# ---------------------------------------------------------------------------------------------------------

# Volumes are zero-padded at the far end up to a multiple of this and the window list up to a power of
# two of batches, so that cases of similar size share one compiled program (no window reaches the
# padding; the padded window slots are skipped).
SHAPE_BUCKET = 32


class DeviceWindows:
  """Whole-volume prediction on the device: `predict(state, windows [N, pd, ph, pw, Cin])` ->
  probabilities [N, pd, ph, pw, num_classes] (e.g. `method.predict`) over the windows of a grid.

  The windows are cut from the volume on the device, sent through `predict` in batches of
  `batch_size` (rounded up to a multiple of the mesh's devices, the batch sharded over all of
  them; a window's probabilities do not depend on its batch mates, eval-mode BN) and accumulated as
  `_blend_windows` does: weight * probabilities and the weights, window after window in grid order
  (the float32 sums round as the host loop's), then normalised. Compiled once per bucketed volume
  shape.
  """

  def __init__(self, predict, num_classes: int, batch_size: int, mesh: Mesh | None = None):
    if batch_size <= 0:
      raise ValueError(f"DeviceWindows: batch_size must be > 0, got {batch_size}")
    self.num_classes = num_classes
    self.mesh = mesh
    n = 1 if mesh is None else mesh.devices.size
    self.batch_size = -(-batch_size // n) * n
    windows = None if mesh is None else NamedSharding(mesh, P(mesh.axis_names))
    self._blend = jax.jit(
      functools.partial(_device_blend, predict, windows, num_classes, self.batch_size),
      static_argnames=("patch",),
    )

  def put(self, tree):
    """`tree` on the mesh, replicated (on the first local device without a mesh)."""
    if self.mesh is None:
      return jax.device_put(tree, jax.local_devices()[0])
    return jax.device_put(tree, NamedSharding(self.mesh, P()))

  def __call__(
    self, state, image: np.ndarray, patch_size: Sequence[int], grid
  ) -> tuple[np.ndarray, np.ndarray]:
    """(label int64 [D, H, W], score float32 [D, H, W, num_classes]) of `image` [D, H, W(, Cin)].

    `state` as `put` places it; `grid(padded_shape, patch)` -> (starts, weight), e.g.
    `functools.partial(parity_grid, stride_xy=18, stride_z=4)`.
    """
    padded, patch, spatial, pad_width = _pad_to_patch(
      image, patch_size, self.batch_size, "DeviceWindows"
    )
    starts, weight = grid(padded.shape[:3], patch)
    bucket = tuple(-(-s // SHAPE_BUCKET) * SHAPE_BUCKET for s in padded.shape[:3])
    padded = np.pad(padded, [(0, b - s) for b, s in zip(bucket, padded.shape[:3])] + [(0, 0)])
    n_batches = -(-len(starts) // self.batch_size)
    slots = self.batch_size * (1 << max(n_batches - 1, 0).bit_length())
    table = np.zeros((slots, 3), np.int32)
    table[: len(starts)] = starts
    score = self._blend(
      state, *self.put((padded, table, np.int32(len(starts)), weight)), patch=patch
    )
    score = np.asarray(score)
    label = np.argmax(score, axis=-1).astype(np.int64)
    crop = tuple(slice(lo, lo + s) for (lo, _), s in zip(pad_width[:3], spatial))
    return label[crop], np.ascontiguousarray(score[crop])


def _device_blend(
  predict,
  windows_sharding,
  num_classes: int,
  batch_size: int,
  state,
  padded,
  starts,
  n_windows,
  weight,
  patch: tuple[int, ...],
):
  """`DeviceWindows`'s program: normalised scores [D', H', W', num_classes] of the bucketed volume
  (zero where no window reaches)."""
  cin = padded.shape[-1]
  score = jnp.zeros(padded.shape[:3] + (num_classes,), jnp.float32)
  norm = jnp.zeros(padded.shape[:3], jnp.float32)

  def cut(start):
    return jax.lax.dynamic_slice(padded, (*start, 0), (*patch, cin))

  def one_batch(b, carry):
    index = b * batch_size + jnp.arange(batch_size)
    batch_starts = starts[index]
    windows = jax.vmap(cut)(batch_starts)
    if windows_sharding is not None:
      windows = jax.lax.with_sharding_constraint(windows, windows_sharding)
    probs = predict(state, windows).astype(jnp.float32)

    def add(i, carry):
      score, norm = carry
      start, valid = batch_starts[i], index[i] < n_windows
      region = jax.lax.dynamic_slice(score, (*start, 0), (*patch, num_classes))
      region = jnp.where(valid, region + probs[i] * weight[..., None], region)
      counts = jax.lax.dynamic_slice(norm, tuple(start), patch)
      counts = jnp.where(valid, counts + weight, counts)
      return (
        jax.lax.dynamic_update_slice(score, region, (*start, 0)),
        jax.lax.dynamic_update_slice(norm, counts, tuple(start)),
      )

    return jax.lax.fori_loop(0, batch_size, add, carry)

  n_batches = (n_windows + batch_size - 1) // batch_size
  score, norm = jax.lax.fori_loop(0, n_batches, one_batch, (score, norm))
  return jnp.where(norm[..., None] > 0, score / jnp.where(norm > 0, norm, 1.0)[..., None], 0.0)


# ---------------------------------------------------------------------------------------------------------
# 2D networks on volumes: slice by slice (ACDC).
# ---------------------------------------------------------------------------------------------------------


def predict_volume_slicewise(
  prob_fn: ProbFn,
  image: np.ndarray,
  patch_size: Sequence[int],
  num_classes: int,
  batch_size: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
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
    raise ValueError(
      f"predict_volume_slicewise: image must be [D, H, W] or [D, H, W, Cin], got shape "
      f"{image.shape}"
    )
  patch = tuple(int(p) for p in patch_size)
  if len(patch) != 2:
    raise ValueError(
      f"predict_volume_slicewise: patch_size must have 2 entries, got {patch_size!r}"
    )
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
      raise ValueError(
        f"predict_volume_slicewise: prob_fn returned shape {probs.shape}, expected {expected}"
      )
    for i, z in enumerate(chunk):
      label[z] = ndimage.zoom(np.argmax(probs[i], axis=-1), back, order=0)
      score[z] = ndimage.zoom(probs[i], back + (1.0,), order=0)
  return label, score
