"""jaxseg.models.resize: align_corners=True linear resizing against torch and a direct formula."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.models import resize
from tests.conftest import require_import


def _direct(x, shape):
  """Per-output-sample evaluation of the align_corners=True formula (slow, obviously correct)."""
  out = np.zeros((x.shape[0], *shape, x.shape[-1]), np.float64)
  axes = []
  for n_in, n_out in zip(x.shape[1:-1], shape):
    scale = 0.0 if n_out == 1 else (n_in - 1) / (n_out - 1)
    axes.append([(o * scale) for o in range(n_out)])
  for idx in itertools.product(*[range(n) for n in shape]):
    src = [axes[a][i] for a, i in enumerate(idx)]
    acc = 0.0
    for corner in itertools.product((0, 1), repeat=len(shape)):
      w, pos = 1.0, []
      for a, (s, c) in enumerate(zip(src, corner)):
        lo = int(np.floor(s))
        frac = s - lo
        p = min(lo + c, x.shape[a + 1] - 1)
        w *= frac if c else 1.0 - frac
        pos.append(p)
      acc = acc + w * x[(slice(None), *pos, slice(None))]
    out[(slice(None), *idx, slice(None))] = acc
  return out


@pytest.mark.parametrize(
  "in_shape,out_shape",
  [((3, 4, 5), (6, 8, 10)), ((2, 3, 4), (5, 3, 7)), ((4, 6), (8, 12)), ((5, 4), (1, 9))],
)
def test_matches_direct_formula(in_shape, out_shape):
  x = np.random.default_rng(0).normal(size=(2, *in_shape, 3))
  got = resize.resize_linear_align_corners(jnp.asarray(x, jnp.float32), out_shape)
  np.testing.assert_allclose(np.asarray(got), _direct(x, out_shape), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  "in_shape,out_shape",
  [((3, 4, 5), (6, 8, 10)), ((2, 5, 3), (4, 7, 6)), ((4, 6), (8, 12)), ((7, 5), (3, 11))],
)
def test_matches_torch_interpolate(in_shape, out_shape):
  torch = require_import("torch")
  x = np.random.default_rng(1).normal(size=(2, 3, *in_shape)).astype(np.float32)
  mode = "trilinear" if len(in_shape) == 3 else "bilinear"
  want = torch.nn.functional.interpolate(
    torch.from_numpy(x), size=out_shape, mode=mode, align_corners=True
  ).numpy()
  got = resize.resize_linear_align_corners(jnp.moveaxis(jnp.asarray(x), 1, -1), out_shape)
  np.testing.assert_allclose(np.moveaxis(np.asarray(got), -1, 1), want, rtol=1e-5, atol=1e-6)


def test_upsample2x_corners_and_gradient():
  x = jnp.arange(2 * 3 * 4 * 2 * 1, dtype=jnp.float32).reshape(2, 3, 4, 2, 1)
  y = resize.upsample2x_linear_align_corners(x)
  assert y.shape == (2, 6, 8, 4, 1)
  # align_corners=True keeps the corner samples.
  np.testing.assert_allclose(y[:, 0, 0, 0], x[:, 0, 0, 0])
  np.testing.assert_allclose(y[:, -1, -1, -1], x[:, -1, -1, -1])
  # Each output is a convex combination: the gradient of the sum is the column sums of the matrices.
  g = jax.grad(lambda v: resize.upsample2x_linear_align_corners(v).sum())(x)
  want = np.einsum("i,j,k->ijk", *[resize.align_corners_matrix(n, 2 * n).sum(0) for n in (3, 4, 2)])
  np.testing.assert_allclose(np.asarray(g)[0, ..., 0], want, rtol=1e-6)


def test_rank_mismatch_is_an_error():
  with pytest.raises(ValueError, match="spatial axes"):
    resize.resize_linear_align_corners(jnp.zeros((1, 4, 4, 1)), (8, 8, 8))
