"""Tests for jaxseg/methods/dtc/sdf.py: parity with HiLab-git/DTC code/utils/util.py::compute_sdf
(fixture dtc.npz, docs/parity.md) and the degenerate-mask convention."""

import numpy as np

from jaxseg.methods.dtc.sdf import compute_sdf
from jaxseg.methods.dtc.sdf import compute_sdf_batch
from jaxseg.methods.dtc.sdf import inner_boundary

FIXTURE = 'dtc.npz'


def test_compute_sdf_matches_upstream(parity):
  pf = parity(FIXTURE)
  n_checked = n_full = 0
  for case in pf.cases_of('compute_sdf'):
    arrays = pf.case(case)
    labels, want = arrays['input/img_gt'], arrays['output/sdf']
    got = compute_sdf_batch(labels)
    assert got.dtype == np.float32 and got.shape == want.shape
    for label, g, w in zip(labels, got, want):
      if np.isnan(w).any():
        # Upstream's 0/0 for an all-foreground volume; we return zeros (sdf.py docstring).
        assert (label != 0).all(), f'{case}: NaN from upstream for a mask that is not full'
        np.testing.assert_array_equal(g, 0.0)
        n_full += 1
      else:
        # float64 upstream vs our float32 result.
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6, err_msg=case)
        n_checked += 1
  assert n_checked > 0


def test_sdf_of_the_loss_fixture_labels(parity):
  """dtc_train_losses computes gt_dis from the labeled slice of its label batch."""
  pf = parity(FIXTURE)
  n_checked = 0
  for case in pf.cases:
    arrays = pf.case(case)
    if 'output/gt_dis' not in arrays:
      continue
    want = arrays['output/gt_dis']
    got = compute_sdf_batch(arrays['input/label'][: len(want)])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=case)
    n_checked += 1
  assert n_checked > 0, 'no case with output/gt_dis in the fixture'


def _brute_inner_boundary(mask):
  """Foreground voxels with a face neighbour inside the array that is background."""
  out = np.zeros_like(mask)
  for axis in range(mask.ndim):
    for shift in (1, -1):
      neighbour = np.roll(mask, shift, axis=axis)
      valid = np.ones_like(mask)
      index = [slice(None)] * mask.ndim
      index[axis] = 0 if shift == 1 else -1  # the rolled-in (wrapped) slice is outside the array
      valid[tuple(index)] = False
      out |= mask & valid & ~neighbour
  return out


def test_inner_boundary_and_signs():
  rng = np.random.default_rng(0)
  mask = rng.random((12, 10, 8)) > 0.6
  np.testing.assert_array_equal(inner_boundary(mask), _brute_inner_boundary(mask))
  # A box touching the border: the border is not background, so no boundary there.
  box = np.zeros((8, 8, 8), np.uint8)
  box[:4, 2:6, 2:6] = 2  # any non-zero value is foreground
  sdf = compute_sdf(box)
  assert sdf[0, 3, 3] < 0  # interior on the array border: not boundary, inside -> negative
  assert sdf[3, 3, 3] == 0 and sdf[0, 2, 3] == 0  # faces touching background
  assert (sdf[box == 0] > 0).all() and sdf.max() == 1.0
  assert sdf.min() >= -1.0 and (sdf[box != 0] <= 0).all()


def test_degenerate_masks_are_zero_not_nan():
  for label in (np.zeros((6, 6, 6), np.uint8), np.ones((6, 6, 6), np.uint8)):
    sdf = compute_sdf(label)
    assert sdf.dtype == np.float32
    np.testing.assert_array_equal(sdf, 0.0)
