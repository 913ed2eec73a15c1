"""Linear resizing with torch's `align_corners=True` semantics (channels-last).

`jax.image.resize(..., 'linear')` samples at half-pixel centres, which is torch's
`align_corners=False`. Upstream networks that upsample with `nn.Upsample(mode='trilinear' |
'bilinear', align_corners=True)` (CML's trilinear decoder: SongwuJob/CML code/networks/VNet.py; the
SSL4MIS 2D UNet's UpBlock: HiLab-git/SSL4MIS code/networks/unet.py) map output index o to input
coordinate o * (n_in - 1) / (n_out - 1), so the corner samples coincide. This module gives that.

Each axis is resized by a small dense interpolation matrix (at most two non-zeros per row), so the
forward is a matmul and its gradient a transposed matmul: no gather/scatter.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
  """float64 [n_out, n_in]: row o holds the linear weights of output sample o (align_corners=True).

  float64 so that an x64 forward (the parity gradient checks) is exact; callers cast to x's dtype."""
  if n_in < 1 or n_out < 1:
    raise ValueError(f"sizes must be >= 1, got n_in={n_in}, n_out={n_out}")
  m = np.zeros((n_out, n_in), np.float64)
  if n_out == 1 or n_in == 1:
    m[:, 0] = 1.0
    return m
  src = np.arange(n_out, dtype=np.float64) * (n_in - 1) / (n_out - 1)
  lo = np.clip(np.floor(src).astype(np.int64), 0, n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  w = src - lo
  rows = np.arange(n_out)
  np.add.at(m, (rows, lo), 1.0 - w)
  np.add.at(m, (rows, hi), w)
  return m


def resize_linear_align_corners(x: jax.Array, spatial_shape: Sequence[int]) -> jax.Array:
  """x [B, *spatial, C] -> [B, *spatial_shape, C], (bi/tri)linear with align_corners=True.

  Equals torch `F.interpolate(x_ncdhw, size=spatial_shape, mode='trilinear' (3D) / 'bilinear' (2D),
  align_corners=True)` moved to channels-last, up to float32 rounding.
  """
  spatial_shape = tuple(int(s) for s in spatial_shape)
  n_spatial = x.ndim - 2
  if len(spatial_shape) != n_spatial:
    raise ValueError(
      f"x has {n_spatial} spatial axes (shape {x.shape}, channels-last) but "
      f"spatial_shape={spatial_shape}"
    )
  for axis, n_out in enumerate(spatial_shape, start=1):
    n_in = x.shape[axis]
    if n_in == n_out:
      continue
    m = jnp.asarray(align_corners_matrix(n_in, n_out), x.dtype)
    # HIGHEST: accelerators would otherwise run this matmul in bf16 passes.
    y = jnp.tensordot(m, x, axes=([1], [axis]), precision=jax.lax.Precision.HIGHEST)
    x = jnp.moveaxis(y, 0, axis)
  return x


def upsample2x_linear_align_corners(x: jax.Array) -> jax.Array:
  """x [B, *spatial, C] -> every spatial side doubled (nn.Upsample(scale_factor=2, align_corners=True))."""
  return resize_linear_align_corners(x, [2 * s for s in x.shape[1:-1]])
