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
    assert error_type in ("RuntimeError", "ValueError") and isinstance(info.value, RuntimeError), msg
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
        _expect(lambda fn=fn, spacing=spacing: fn(pred, gt, voxelspacing=spacing), _scalar(case[key]),
                f"{name}/{tag}/{metric}")
    _expect(lambda: metrics.calculate_metric_percase(pred, gt), _array_or_str(case["output/calc_percase"]),
            f"{name}/calc_percase")
    if "output/test_all_case_convention" in case:
      np.testing.assert_allclose(metrics.parity_case_metrics(pred, gt), case["output/test_all_case_convention"],
                                 **TOL, err_msg=name)
    elif not isinstance(_array_or_str(case["output/calc_percase"]), str):
      np.testing.assert_allclose(metrics.parity_case_metrics(pred, gt), case["output/calc_percase"], **TOL)


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
