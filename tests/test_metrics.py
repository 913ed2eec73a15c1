"""Tests of jaxseg.metrics against metrics_medpy.npz (medpy 0.5.2 as called by UA-MT code/test_util.py)."""

import math

import numpy as np
import pytest

from jaxseg import metrics

_SURFACE = {"hd95": metrics.hd95, "asd": metrics.asd, "assd": metrics.assd, "hd": metrics.hd}
# Float64 host code against float64 medpy: only summation-order rounding separates them.
TOL = dict(rtol=1e-10, atol=1e-12)


def _scalar(x):
  x = np.asarray(x)
  return str(x) if x.dtype.kind == "U" else float(x)


def _expect(fn, want, msg):
  """Compare fn() to a stored float, or to a stored "error: RuntimeError: <medpy message>" string."""
  if isinstance(want, str):
    assert want.startswith("error: "), msg
    _, error_type, message = (s.strip() for s in want.split(":", 2))
    with pytest.raises(metrics.EmptyMaskError) as info:
      fn()
    # medpy raises RuntimeError; EmptyMaskError is both a ValueError and a RuntimeError.
    assert error_type in ("RuntimeError", "ValueError") and isinstance(info.value, RuntimeError), (
      msg
    )
    assert str(info.value) == message, msg
  else:
    # NaN matches NaN (assert_allclose's equal_nan), e.g. dc of two empty masks.
    np.testing.assert_allclose(fn(), want, **TOL, equal_nan=True, err_msg=msg)


def test_medpy_parity(parity):
  pf = parity("metrics_medpy.npz")
  assert pf.cases
  for name in pf.cases:
    case, args = pf.case(name), pf.case_args(name)
    pred, gt = case["input/pred"], case["input/gt"]
    _expect(lambda: metrics.dc(pred, gt), _scalar(case["output/dc"]), f"{name}/dc")
    _expect(lambda: metrics.jc(pred, gt), _scalar(case["output/jc"]), f"{name}/jc")
    spacings = args["spacings"]
    assert spacings
    for tag, spacing in spacings.items():
      for metric, fn in _SURFACE.items():
        key = f"output/{tag}/{metric}"
        assert key in case, f"{name}: missing {key}"
        _expect(
          lambda fn=fn, spacing=spacing: fn(pred, gt, voxelspacing=spacing),
          _scalar(case[key]),
          f"{name}/{tag}/{metric}",
        )
    _expect(
      lambda: metrics.calculate_metric_percase(pred, gt),
      _array_or_str(case["output/calc_percase"]),
      f"{name}/calc_percase",
    )
    if "output/test_all_case_convention" in case:
      np.testing.assert_allclose(
        metrics.parity_case_metrics(pred, gt),
        case["output/test_all_case_convention"],
        **TOL,
        err_msg=name,
      )
    elif not isinstance(_array_or_str(case["output/calc_percase"]), str):
      np.testing.assert_allclose(
        metrics.parity_case_metrics(pred, gt), case["output/calc_percase"], **TOL
      )


def _array_or_str(x):
  x = np.asarray(x)
  return str(x) if x.dtype.kind == "U" else x


def test_hand_computed_values():
  gt = np.zeros((9, 9, 9), bool)
  gt[2:7, 2:7, 2:7] = True
  pred = np.roll(gt, 1, axis=0)
  # 5x5x5 cube shifted by one voxel along x: overlap 4x5x5.
  assert metrics.dc(pred, gt) == pytest.approx(2 * 100 / 250)
  assert metrics.jc(pred, gt) == pytest.approx(100 / 150)
  assert metrics.hd(pred, gt) == pytest.approx(1.0)
  assert metrics.hd(pred, gt, voxelspacing=(2.0, 1.0, 1.0)) == pytest.approx(2.0)
  assert metrics.hd(pred, gt, voxelspacing=0.5) == pytest.approx(0.5)
  single = np.zeros_like(gt)
  single[0, 0, 0] = True
  # Directed asd from one voxel at the corner to the cube's nearest surface voxel (2, 2, 2).
  assert metrics.asd(single, gt) == pytest.approx(math.sqrt(12))
  np.testing.assert_array_equal(metrics.parity_case_metrics(np.zeros_like(gt), gt), np.zeros(4))


def test_bad_inputs():
  a = np.ones((4, 4, 4), bool)
  with pytest.raises(ValueError, match="same shape"):
    metrics.dc(a, np.ones((4, 4, 5), bool))
  with pytest.raises(ValueError, match="voxelspacing"):
    metrics.hd95(a, a, voxelspacing=(1.0, 1.0))
  with pytest.raises(metrics.EmptyMaskError, match="second"):
    metrics.asd(a, np.zeros_like(a))
  assert issubclass(metrics.EmptyMaskError, ValueError)
  assert math.isnan(metrics.dc(np.zeros_like(a), np.zeros_like(a)))


# ---------------------------------------------------------------------------------------------------------
# Clean mode: known mm distances by hand, and an independent brute-force implementation.
# ---------------------------------------------------------------------------------------------------------


def test_clean_thin_slabs_offset_by_k_voxels_anisotropic():
  # One-voxel-thick slabs: every voxel is surface, and each one's nearest partner is k voxels along x.
  spacing, k = (2.0, 0.5, 0.7), 3
  pred = np.zeros((12, 9, 8), bool)
  gt = np.zeros_like(pred)
  pred[2, 1:7, 2:6] = True
  gt[2 + k, 1:7, 2:6] = True
  dice, jaccard, hd95, assd = metrics.clean_case_metrics(pred, gt, spacing)
  assert dice == 0.0 and jaccard == 0.0
  np.testing.assert_allclose([hd95, assd], [k * 2.0, k * 2.0], rtol=1e-12)


def test_clean_boxes_offset_by_k_voxels_hand_derived_distances():
  # Box (Lx, Ly, Lz) and the same box shifted k voxels along x, with sy, sz >= k * sx so that the nearest
  # surface is always found along x. Directed distances (both directions alike, by symmetry):
  #   k*sx for the whole back face (Ly*Lz) and the front face's interior ((Ly-2)*(Lz-2));
  #   j*sx (j = 1..k-1) for the P = Ly*Lz - (Ly-2)*(Lz-2) side voxels of each of the k-1 slices not
  #   covered by the other box; 0 for the remaining (Lx-k) * P side/front-rim voxels.
  sx, sy, sz = 0.5, 2.0, 1.5
  lx, ly, lz, k = 8, 6, 5, 2
  pred = np.zeros((16, 10, 9), bool)
  pred[3 : 3 + lx, 2 : 2 + ly, 2 : 2 + lz] = True
  gt = np.roll(pred, k, axis=0)
  perim = ly * lz - (ly - 2) * (lz - 2)
  directed = np.concatenate(
    [
      np.full(ly * lz + (ly - 2) * (lz - 2), k * sx),
      *[np.full(perim, j * sx) for j in range(1, k)],
      np.zeros((lx - k) * perim),
    ]
  )
  assert directed.size == 2 * ly * lz + perim * (lx - 2)  # = the box's surface voxel count
  dice, jaccard, hd95, assd = metrics.clean_case_metrics(pred, gt, (sx, sy, sz))
  overlap = (lx - k) / lx
  np.testing.assert_allclose([dice, jaccard], [overlap, (lx - k) / (lx + k)], rtol=1e-12)
  np.testing.assert_allclose(hd95, np.percentile(directed, 95), rtol=1e-12)
  np.testing.assert_allclose(assd, directed.mean(), rtol=1e-12)
  # With these numbers the largest distance, 1.0 mm (k*sx), is 42 of the 168: the 95th percentile.
  np.testing.assert_allclose(hd95, 1.0, rtol=1e-12)


def _brute_force(pred, gt, spacing):
  """Independent reference: 6-neighbour surfaces by shifting, all-pairs distances in mm."""

  def surface(m):
    p = np.pad(m, 1)
    interior = np.ones_like(m)
    for axis in range(3):
      for shift in (-1, 1):
        interior &= np.roll(p, shift, axis=axis)[1:-1, 1:-1, 1:-1]
    return np.argwhere(m & ~interior) * np.asarray(spacing)

  a, b = surface(pred), surface(gt)
  d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
  d_ab, d_ba = d.min(axis=1), d.min(axis=0)
  return max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)), np.concatenate([d_ab, d_ba]).mean()


def test_clean_sphere_vs_shifted_sphere_matches_brute_force():
  spacing = (0.625, 0.8, 1.25)
  grid = np.stack(np.meshgrid(*(np.arange(n) for n in (20, 18, 14)), indexing="ij"), -1) * spacing

  def ball(centre_mm, radius_mm):
    return ((grid - np.asarray(centre_mm)) ** 2).sum(-1) <= radius_mm**2

  pred = ball((6.0, 7.0, 8.0), 3.6)
  gt = ball((7.5, 7.0, 8.0), 3.6) | ball(
    (9.0, 11.0, 9.0), 1.5
  )  # a bump makes the two directions differ
  want_hd95, want_assd = _brute_force(pred, gt, spacing)
  _, _, hd95, assd = metrics.clean_case_metrics(pred, gt, spacing)
  np.testing.assert_allclose([hd95, assd], [want_hd95, want_assd], rtol=1e-12)
  d_pg = metrics.directed_hd95(pred, gt, spacing)
  d_gp = metrics.directed_hd95(gt, pred, spacing)
  assert d_pg != d_gp and hd95 == max(d_pg, d_gp)


def test_clean_single_voxels_and_empty_masks():
  pred = np.zeros((6, 6, 6), bool)
  gt = np.zeros_like(pred)
  pred[1, 1, 1] = gt[3, 2, 1] = True
  want = math.hypot(2 * 0.5, 1 * 2.0)
  np.testing.assert_allclose(
    metrics.clean_case_metrics(pred, gt, (0.5, 2.0, 1.0))[2:], [want, want]
  )
  empty = np.zeros_like(pred)
  assert np.isnan(metrics.clean_case_metrics(pred, empty)).all()  # nothing to find: all NaN
  assert np.isnan(metrics.clean_case_metrics(empty, empty)).all()
  missed = metrics.clean_case_metrics(empty, gt)
  assert missed[0] == 0.0 and missed[1] == 0.0 and np.isnan(missed[2:]).all()
