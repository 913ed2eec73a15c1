"""Tests of jaxseg.inference against sliding_window.npz (UA-MT code/test_util.py::test_single_case)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import inference


def _conv_softmax_fn(weight: np.ndarray, bias: np.ndarray):
  """softmax(Conv3d(weight [O, I, 3, 3, 3], zero padding 1) + bias) per window, channels-last, jitted."""
  kernel = jnp.asarray(weight)

  @jax.jit
  def prob_fn(windows):
    logits = jax.lax.conv_general_dilated(
        windows, kernel, window_strides=(1, 1, 1), padding=((1, 1),) * 3,
        dimension_numbers=("NDHWC", "OIDHW", "NDHWC"), precision=jax.lax.Precision.HIGHEST)
    return jax.nn.softmax(logits + jnp.asarray(bias), axis=-1)

  return prob_fn


def test_sliding_window_uamt_parity(parity):
  pf = parity("sliding_window.npz")
  names = [n for n in pf.cases if pf.meta["cases"][n]["repo"] == "yulequan/UA-MT"]
  assert names
  for name in names:
    case, args = pf.case(name), pf.case_args(name)
    prob_fn = _conv_softmax_fn(case["input/conv_weight"], case["input/conv_bias"])
    label, score = inference.sliding_window_parity(
        prob_fn, case["input/image"], args["patch_size"], args["stride_xy"], args["stride_z"],
        args["num_classes"])
    want_score = np.moveaxis(case["output/score_map"], 0, -1)
    assert score.dtype == np.float32 and label.dtype == np.int64
    np.testing.assert_allclose(score, want_score, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(label, case["output/label_map"], err_msg=name)


def test_window_starts():
  assert inference.window_starts(40, 16, 6) == [0, 6, 12, 18, 24]
  assert inference.window_starts(41, 16, 6) == [0, 6, 12, 18, 24, 25]
  assert inference.window_starts(16, 16, 6) == [0]
  # UA-MT LA: z = 88 with patch 80 and stride 4 -> starts 0, 4, 8 (n_z = 3).
  assert inference.window_starts(88, 80, 4) == [0, 4, 8]
  for size, patch, stride in [(200, 112, 18), (97, 32, 7)]:
    starts = inference.window_starts(size, patch, stride)
    assert len(starts) == math.ceil((size - patch) / stride) + 1 and starts[-1] == size - patch
  with pytest.raises(ValueError, match="window_starts"):
    inference.window_starts(10, 16, 4)


def test_constant_batch_shape_and_averaging():
  """prob_fn sees one fixed batch shape; the output is the count-weighted mean of the window values."""
  image = np.arange(10 * 9 * 5, dtype=np.float32).reshape(10, 9, 5, 1)
  patch, batch_size = (4, 4, 6), 3
  shapes = []

  def prob_fn(windows):
    shapes.append(windows.shape)
    # Class 1 probability = the window's mean intensity (scaled), so the average is checkable by hand.
    p1 = np.broadcast_to(windows.mean(axis=(1, 2, 3, 4), keepdims=True) / 1000.0, windows.shape[:4] + (1,))
    return np.concatenate([1.0 - p1, p1], axis=-1)

  label, score = inference.sliding_window_parity(prob_fn, image, patch, 3, 2, 2, batch_size=batch_size)
  assert set(shapes) == {(batch_size, 4, 4, 6, 1)}
  assert label.shape == (10, 9, 5) and score.shape == (10, 9, 5, 2)

  # Reference: axis 2 (5 < 6) padded by 1 on the right only (left = 1 // 2 = 0).
  padded = np.pad(image[..., 0], ((0, 0), (0, 0), (0, 1)))
  total = np.zeros(padded.shape)
  count = np.zeros(padded.shape)
  xs, ys = inference.window_starts(10, 4, 3), inference.window_starts(9, 4, 3)
  assert xs == [0, 3, 6] and ys == [0, 3, 5]
  for x in xs:
    for y in ys:
      total[x:x + 4, y:y + 4, :] += padded[x:x + 4, y:y + 4, :].mean() / 1000.0
      count[x:x + 4, y:y + 4, :] += 1
  assert len(shapes) == math.ceil(len(xs) * len(ys) / batch_size)
  np.testing.assert_allclose(score[..., 1], (total / count)[:, :, :5], rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(label, (score[..., 1] > score[..., 0]).astype(np.int64))


def test_ties_go_to_class_zero_and_bad_shapes():
  image = np.zeros((6, 6, 6), np.float32)
  label, score = inference.sliding_window_parity(lambda w: np.full(w.shape[:4] + (3,), 1 / 3, np.float32),
                                                 image, (4, 4, 4), 2, 2, 3, batch_size=2)
  np.testing.assert_array_equal(label, 0)
  np.testing.assert_allclose(score, 1 / 3, rtol=1e-6)
  with pytest.raises(ValueError, match="prob_fn returned shape"):
    inference.sliding_window_parity(lambda w: np.zeros(w.shape[:4] + (2,)), image, (4, 4, 4), 2, 2, 3)
  with pytest.raises(ValueError, match="image must be"):
    inference.sliding_window_parity(lambda w: w, np.zeros((4, 4)), (4, 4, 4), 2, 2, 1)
