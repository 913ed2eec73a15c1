"""Largest-connected-component post-processing: in the jitted step (pseudo-labels) and on the host
(evaluation).

Upstream keeps, per sample, the largest component of a binary mask with
`skimage.measure.label(mask)` (default connectivity = full: 26-neighbourhood in 3D, 8 in 2D) and
`labels == argmax(bincount(labels.flat)[1:]) + 1`:
  * BCP `LargestCC_pancreas` / `get_cut_mask(nms=1)` (DeepMed-Lab-ECNU/BCP code/LA_BCP_train.py),
    CML's copy (SongwuJob/CML code/CML_LA_train.py);
  * BCP `get_ACDC_2DLargestCC` (code/ACDC_BCP_train.py): the same per class 1..C-1 of a 2D argmax map;
  * the test scripts' `--nms 1` (DTC, BCP, CML, DyCON), on each predicted volume.
An all-background sample is returned unchanged (empty). Ties in size go to the lowest skimage label,
i.e. the component whose first voxel in raster (C) order comes first.

Two implementations with the same result (tests/test_postprocess.py checks they agree):
  * `largest_component`, `largest_component_per_class`: pure JAX on a batch [B, *spatial], for the
    jitted training step (BCP, CML pseudo-labels; `cut_mask_pseudo_labels`). Every foreground voxel
    starts with its own flat raster index as label; each round takes the minimum label over the
    full 3^n neighbourhood (background = +inf; a separable box minimum, since the cube is a product
    of 1-D windows) and then jumps pointers (label <- label of the voxel the label names), in a
    `lax.while_loop` until nothing changes. A voxel's label is always the index of a voxel of its
    own component and only decreases, so at the fixed point every component carries its lowest
    raster index: ordering components by label is skimage's ordering. Sizes are a segment sum.
  * `largest_component_np`, `largest_component_per_class_np`: scipy.ndimage.label on one volume
    [D, H, W], for evaluation. Whole test volumes differ in shape from case to case (one XLA compile
    each for the JAX version) and a long thin component costs the JAX version one loop round per
    few voxels of its length; scipy labels in a single pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from scipy import ndimage

Array = jax.Array


def _neighbourhood_min(labels: Array, sentinel: int) -> Array:
  """Minimum over the 3^n box around every element of labels [B, *spatial] (padding = sentinel)."""
  nd = labels.ndim - 1
  out = labels
  for axis in range(1, nd + 1):
    window = [1] * labels.ndim
    window[axis] = 3
    padding = [(0, 0)] * labels.ndim
    padding[axis] = (1, 1)
    out = lax.reduce_window(
      out, jnp.array(sentinel, out.dtype), lax.min, window, (1,) * labels.ndim, padding
    )
  return out


def component_labels(mask: Array) -> Array:
  """Full-connectivity component labels of mask [B, *spatial] (bool).

  Returns:
    int32 [B, *spatial]: for a foreground voxel, the flat raster index (within its sample) of the
    first voxel of its component; N = prod(spatial) on background.
  """
  mask = jnp.asarray(mask, bool)
  b, spatial = mask.shape[0], mask.shape[1:]
  n = 1
  for s in spatial:
    n *= s
  if n >= 2**31 - 1:
    raise ValueError(f"component_labels: {n} voxels per sample do not fit int32 labels")
  sentinel = n
  index = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32).reshape(spatial), mask.shape)
  init = jnp.where(mask, index, sentinel)

  def jump(labels):
    # labels[v] <- labels[labels[v]]; background (sentinel) maps to itself via the appended slot.
    flat = labels.reshape(b, n)
    padded = jnp.concatenate([flat, jnp.full((b, 1), sentinel, jnp.int32)], axis=1)
    return jnp.take_along_axis(padded, flat, axis=1).reshape(labels.shape)

  def body(carry):
    labels, _ = carry
    new = jnp.where(mask, _neighbourhood_min(labels, sentinel), sentinel)
    new = jump(jump(new))
    return new, jnp.any(new != labels)

  labels, _ = lax.while_loop(lambda c: c[1], body, (init, jnp.array(True)))
  return labels


def largest_component(mask: Array) -> Array:
  """Per sample, the largest full-connectivity component of mask [B, *spatial] (bool).

  Ties go to the component whose first voxel in raster order comes first (skimage label order +
  argmax of bincount). An empty sample stays empty. Pure JAX, usable inside jit.

  Returns:
    bool [B, *spatial].
  """
  mask = jnp.asarray(mask, bool)
  labels = component_labels(mask)
  b = mask.shape[0]
  n = labels[0].size
  flat = labels.reshape(b, n)
  # Voxel counts per label; background goes to the extra slot n, which is then dropped.
  counts = jax.vmap(lambda l: jnp.zeros(n + 1, jnp.int32).at[l].add(1))(flat)[:, :n]
  best = jnp.argmax(counts, axis=1).astype(jnp.int32)  # first maximum = lowest label on ties
  keep = (flat == best[:, None]) & (flat < n)
  return keep.reshape(mask.shape)


def largest_component_per_class(label_map: Array, num_classes: int) -> Array:
  """For each class 1..num_classes-1 keep only its largest component (per sample), else 0.

  BCP `get_ACDC_masks(nms=1)` / `get_ACDC_2DLargestCC`: classes are handled independently
  (full connectivity), background is implicit; a class absent from a sample stays absent.

  Args:
    label_map: int [B, *spatial] (e.g. the argmax of the teacher's softmax).
    num_classes: C, including background.

  Returns:
    int32 [B, *spatial].
  """
  label_map = jnp.asarray(label_map)
  classes = jnp.arange(1, num_classes, dtype=label_map.dtype)
  masks = label_map[None] == classes.reshape((-1,) + (1,) * label_map.ndim)  # [C-1, B, *spatial]
  flat = masks.reshape((-1,) + label_map.shape[1:])
  keep = largest_component(flat).reshape(masks.shape)
  values = classes.astype(jnp.int32).reshape((-1,) + (1,) * label_map.ndim)
  return jnp.sum(jnp.where(keep, values, 0), axis=0).astype(jnp.int32)


def cut_mask_pseudo_labels(logits: Array, threshold: float = 0.5) -> Array:
  """Logits [B, *spatial, C] -> filtered pseudo-labels int32 [B, *spatial], gradient stopped.

  3D (BCP/CML LA `get_cut_mask(out, nms=1)`: DeepMed-Lab-ECNU/BCP code/utils/BCP_utils.py and its
  CML copy): softmax[..., 1] >= threshold, then the largest 26-connected component per sample.
  2D (ACDC `get_ACDC_masks(out, nms=1)`): argmax, then per sample and class 1..C-1 its largest
  8-connected component. Empty samples / classes stay empty.
  """
  probs = jax.nn.softmax(jax.lax.stop_gradient(logits).astype(jnp.float32), axis=-1)
  if logits.ndim == 5:
    foreground = jax.lax.index_in_dim(probs, 1, axis=-1, keepdims=False) >= threshold
    return largest_component(foreground).astype(jnp.int32)
  if logits.ndim == 4:
    return largest_component_per_class(jnp.argmax(probs, axis=-1), logits.shape[-1])
  raise ValueError(
    f"pseudo-labels: expected logits [B, D, H, W, C] or [B, H, W, C], got {logits.shape}"
  )


def largest_component_np(mask: np.ndarray, connectivity: int | None = None) -> np.ndarray:
  """The largest connected component of one binary mask (any rank), on the host.

  Args:
    mask: binary [D, H, W] (any rank).
    connectivity: neighbourhood rank for `scipy.ndimage.generate_binary_structure`; None = full (26
      in 3D, skimage's and MONAI's `KeepLargestConnectedComponent` default).

  Returns:
    bool array of `mask`'s shape; an empty mask stays empty; ties keep the component scipy numbers
    first (the first in raster order), as `largest_component`.
  """
  mask = np.asarray(mask).astype(bool)
  structure = ndimage.generate_binary_structure(mask.ndim, connectivity or mask.ndim)
  labels, n = ndimage.label(mask, structure=structure)
  if n <= 1:
    return mask
  sizes = np.bincount(labels.ravel())[1:]
  return labels == (int(np.argmax(sizes)) + 1)


def largest_component_per_class_np(label_map: np.ndarray, num_classes: int) -> np.ndarray:
  """`largest_component_per_class` of one volume on the host: each class c in 1..num_classes-1
  keeps only its largest full-connectivity component, the rest becomes 0.

  label_map: int [D, H, W]. Returns an array of the same shape and dtype.
  """
  label_map = np.asarray(label_map)
  out = np.zeros_like(label_map)
  for c in range(1, num_classes):
    out[largest_component_np(label_map == c)] = c
  return out
