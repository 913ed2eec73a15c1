"""Box (cube / square) masks and copy-paste mixing for BCP and CML, drawn inside `jit`.

Upstream:
  * BCP LA `context_mask` (DeepMed-Lab-ECNU/BCP code/utils/BCP_utils.py): box side int(S * ratio)
    per axis from the image shape, but the corner drawn as `np.random.randint(0, B - side)` with
    HARD-CODED bounds B = (112, 112, 80), whatever the image shape.
  * BCP ACDC `generate_mask` (code/ACDC_BCP_train.py) and CML `generate_mask_3D/2D`
    (SongwuJob/CML code/utils/CML_utils.py): the same with B = the real image shape.
Both return a mask that is 1 OUTSIDE the box and 0 inside, shared by every sample of the batch.

numpy semantics kept: `randint(0, n)` excludes n, so the corner is uniform in {0 .. B - side - 1};
the box is written by slicing, `mask[w:w+side] = 0`, which clips at the array end and is empty when
w >= S (what happens with the hard-coded LA bounds on a smaller patch: the mask stays all ones).
Only the RNG differs from upstream (jax.random instead of numpy's global RandomState).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def box_size(spatial_shape: Sequence[int], ratio: float) -> tuple[int, ...]:
  """Box side per axis: int(S * ratio), Python float arithmetic as upstream (static ints)."""
  return tuple(int(s * ratio) for s in spatial_shape)


def box_mask_at(
  corner: Array | Sequence[int], size: Sequence[int], spatial_shape: Sequence[int]
) -> Array:
  """float32 [*spatial_shape]: 0 on the box [corner, corner + size) (clipped as numpy slicing
  clips), 1 elsewhere.

  Args:
    corner: int per axis, host or traced (e.g. drawn inside jit); a corner >= S gives no box on
      that axis (numpy's empty slice), hence an all-ones mask.
    size: static box side per axis.
    spatial_shape: the mask shape.
  """
  corner = jnp.asarray(corner, jnp.int32)
  nd = len(spatial_shape)
  if corner.shape != (nd,) or len(size) != nd:
    raise ValueError(
      f"box_mask_at: corner {corner.shape} and size {tuple(size)} must have one "
      f"entry per axis of spatial_shape {tuple(spatial_shape)}"
    )
  inside = jnp.ones(tuple(spatial_shape), bool)
  for axis, (s, side) in enumerate(zip(spatial_shape, size)):
    idx = jnp.arange(s)
    in_axis = (idx >= corner[axis]) & (idx < corner[axis] + side)
    shape = [1] * nd
    shape[axis] = s
    inside = inside & in_axis.reshape(shape)
  return jnp.where(inside, 0.0, 1.0).astype(jnp.float32)


def draw_corner(rng: Array, size: Sequence[int], bounds_shape: Sequence[int]) -> Array:
  """int32 [nd]: corner_i uniform in {0 .. bounds_i - size_i - 1} (numpy `randint(0, b - s)`).

  Raises ValueError where bounds_i - size_i < 1 (numpy's randint raises there too).
  """
  highs = [b - s for b, s in zip(bounds_shape, size)]
  if any(h < 1 for h in highs):
    raise ValueError(
      f"box corner: bounds {tuple(bounds_shape)} minus box size {tuple(size)} must "
      "be >= 1 on every axis (numpy randint(0, 0) raises)"
    )
  keys = jax.random.split(rng, len(highs))
  return jnp.stack([jax.random.randint(k, (), 0, h, jnp.int32) for k, h in zip(keys, highs)])


def box_mask(
  rng: Array, spatial_shape: Sequence[int], ratio: float, bounds_shape: Sequence[int] | None = None
) -> Array:
  """float32 [*spatial_shape]: 1 outside a random box of side int(S * ratio), 0 inside.

  Args:
    rng: jax PRNG key (works inside jit; the box geometry is static, the corner traced).
    spatial_shape: the image's spatial shape (D, H, W) or (H, W).
    ratio: box side / image side (2/3 in BCP and CML LA).
    bounds_shape: the corner's upper bounds; None = `spatial_shape` (BCP ACDC, CML). BCP LA's
      `context_mask` hard-codes the LA patch size; on a patch smaller than the bounds the box may
      land partly or wholly outside and is clipped as upstream's slicing does.
  """
  size = box_size(spatial_shape, ratio)
  bounds = tuple(spatial_shape) if bounds_shape is None else tuple(bounds_shape)
  if len(bounds) != len(spatial_shape):
    raise ValueError(
      f"box_mask: bounds_shape {bounds} must have one entry per axis of "
      f"spatial_shape {tuple(spatial_shape)}"
    )
  return box_mask_at(draw_corner(rng, size, bounds), size, spatial_shape)


def _expand(mask: Array, x: Array) -> Array:
  """Broadcast a [*spatial] mask against x = [B, *spatial] (labels) or [B, *spatial, C] (images)."""
  if x.ndim == mask.ndim + 1:
    return mask[None]
  if x.ndim == mask.ndim + 2:
    return mask[None, ..., None]
  raise ValueError(
    f"mask {mask.shape} does not fit array {x.shape}: expected [B, *spatial] or "
    "[B, *spatial, C] with the mask's spatial shape"
  )


def copy_paste(outside: Array, inside: Array, mask: Array) -> Array:
  """`outside * mask + inside * (1 - mask)`: `inside`'s box pasted onto `outside`.

  Upstream writes the blend (BCP `img_a * img_mask + img_b * (1 - img_mask)`); with a 0/1 mask that
  is a selection, done here with `where` so integer labels stay integer and no 0 * inf appears.

  Args:
    outside: [B, *spatial] or [B, *spatial, C], kept where mask == 1.
    inside: same shape, kept where mask == 0 (the box).
    mask: [*spatial] from `box_mask` (1 outside the box).
  """
  if outside.shape != inside.shape:
    raise ValueError(f"copy_paste: shapes differ: {outside.shape} vs {inside.shape}")
  return jnp.where(_expand(mask, outside) > 0, outside, inside)
