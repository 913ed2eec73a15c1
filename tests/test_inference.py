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
      windows,
      kernel,
      window_strides=(1, 1, 1),
      padding=((1, 1),) * 3,
      dimension_numbers=("NDHWC", "OIDHW", "NDHWC"),
      precision=jax.lax.Precision.HIGHEST,
    )
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
      prob_fn,
      case["input/image"],
      args["patch_size"],
      args["stride_xy"],
      args["stride_z"],
      args["num_classes"],
    )
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
    p1 = np.broadcast_to(
      windows.mean(axis=(1, 2, 3, 4), keepdims=True) / 1000.0, windows.shape[:4] + (1,)
    )
    return np.concatenate([1.0 - p1, p1], axis=-1)

  label, score = inference.sliding_window_parity(
    prob_fn, image, patch, 3, 2, 2, batch_size=batch_size
  )
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
      total[x : x + 4, y : y + 4, :] += padded[x : x + 4, y : y + 4, :].mean() / 1000.0
      count[x : x + 4, y : y + 4, :] += 1
  assert len(shapes) == math.ceil(len(xs) * len(ys) / batch_size)
  np.testing.assert_allclose(score[..., 1], (total / count)[:, :, :5], rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(label, (score[..., 1] > score[..., 0]).astype(np.int64))


def test_ties_go_to_class_zero_and_bad_shapes():
  image = np.zeros((6, 6, 6), np.float32)
  label, score = inference.sliding_window_parity(
    lambda w: np.full(w.shape[:4] + (3,), 1 / 3, np.float32),
    image,
    (4, 4, 4),
    2,
    2,
    3,
    batch_size=2,
  )
  np.testing.assert_array_equal(label, 0)
  np.testing.assert_allclose(score, 1 / 3, rtol=1e-6)
  with pytest.raises(ValueError, match="prob_fn returned shape"):
    inference.sliding_window_parity(
      lambda w: np.zeros(w.shape[:4] + (2,)), image, (4, 4, 4), 2, 2, 3
    )
  with pytest.raises(ValueError, match="image must be"):
    inference.sliding_window_parity(lambda w: w, np.zeros((4, 4)), (4, 4, 4), 2, 2, 1)


# ---------------------------------------------------------------------------------------------------------
# Clean mode: MONAI sliding_window_inference(mode='gaussian') semantics.
# ---------------------------------------------------------------------------------------------------------


def test_scan_interval_follows_monai():
  assert inference.scan_interval(24, 16, 0.5) == 8
  assert inference.scan_interval(20, 16, 0.25) == 12
  assert inference.scan_interval(16, 16, 0.5) == 16  # the window spans the axis: one window
  assert inference.scan_interval(40, 3, 0.9) == 1  # int(0.3) = 0 -> at least 1
  assert inference.window_starts(20, 16, inference.scan_interval(20, 16, 0.25)) == [0, 4]
  with pytest.raises(ValueError, match="overlap"):
    inference.scan_interval(20, 16, 1.0)


def test_gaussian_importance_map_formula():
  w = inference.gaussian_importance_map((5, 4, 8), sigma_scale=0.25)
  assert w.shape == (5, 4, 8) and w.dtype == np.float32

  def g(n, i):
    return math.exp(-((i - (n - 1) / 2) ** 2) / (2 * (0.25 * n) ** 2))

  np.testing.assert_allclose(w[1, 0, 6], g(5, 1) * g(4, 0) * g(8, 6), rtol=1e-6)
  np.testing.assert_allclose(w[2, 1, 3], g(5, 2) * g(4, 1) * g(8, 3), rtol=1e-6)
  # A narrow gaussian's tails are clamped at 1e-3 so no voxel loses all its weight.
  narrow = inference.gaussian_importance_map((16, 16, 16), sigma_scale=0.05)
  np.testing.assert_allclose(narrow.min(), 1e-3, rtol=1e-6)
  assert narrow.max() <= 1.0


def test_sliding_window_gaussian_blends_two_windows_by_hand():
  # Axis 0: 24 voxels, patch 16, overlap 0.5 -> windows at 0 and 8; the other axes span one window.
  image = np.zeros((24, 16, 16), np.float32)
  image[12:] = 1.0  # window means: 0.25 (x 0..15) and 0.75 (x 8..23); zero-filled batch slots: 0
  seen = []

  def prob_fn(windows):
    seen.append(windows.shape)
    # Class-1 probability = a constant per window: 0.2 for the first, 0.8 for the second.
    p1 = np.where(windows.mean(axis=(1, 2, 3, 4)) > 0.5, 0.8, 0.2)[:, None, None, None, None]
    p1 = np.broadcast_to(p1, windows.shape[:4] + (1,)).astype(np.float32)
    return np.concatenate([1.0 - p1, p1], axis=-1)

  label, score = inference.sliding_window_gaussian(
    prob_fn, image, (16, 16, 16), 2, overlap=0.5, sigma_scale=0.125, batch_size=3
  )
  assert set(seen) == {(3, 16, 16, 16, 1)}
  np.testing.assert_allclose(score[:8, ..., 1], 0.2, rtol=1e-6)  # first window only
  np.testing.assert_allclose(score[16:, ..., 1], 0.8, rtol=1e-6)  # second window only
  # x = 12: offset 12 in window 0 and 4 in window 1, 4.5 and 3.5 from the centre 7.5; sigma = 2.
  w0, w1 = math.exp(-(4.5**2) / 8), math.exp(-(3.5**2) / 8)
  np.testing.assert_allclose(score[12, 3, 9, 1], (0.2 * w0 + 0.8 * w1) / (w0 + w1), rtol=1e-5)
  np.testing.assert_allclose(score.sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(label, (score[..., 1] > score[..., 0]).astype(np.int64))


def test_sliding_window_gaussian_pads_small_axes_and_keeps_pointwise_outputs():
  rng = np.random.default_rng(0)
  image = rng.uniform(size=(21, 10, 19)).astype(np.float32)  # axis 1 shorter than the patch

  def prob_fn(
    windows,
  ):  # a pointwise rule: blending any number of windows must give it back exactly
    p1 = 1.0 / (1.0 + np.exp(-8.0 * (windows - 0.5)))
    return np.concatenate([1.0 - p1, p1], axis=-1).astype(np.float32)

  label, score = inference.sliding_window_gaussian(
    prob_fn, image, (16, 16, 16), 2, overlap=0.25, sigma_scale=0.125, batch_size=2
  )
  assert label.shape == image.shape and score.shape == image.shape + (2,)
  np.testing.assert_allclose(
    score[..., 1], 1.0 / (1.0 + np.exp(-8.0 * (image - 0.5))), rtol=1e-5, atol=1e-6
  )
  with pytest.raises(ValueError, match="prob_fn returned shape"):
    inference.sliding_window_gaussian(
      lambda w: np.zeros(w.shape[:4] + (3,)), image, (16, 16, 16), 2
    )


# ---------------------------------------------------------------------------------------------------------
# 2D networks: slice-wise prediction (SSL4MIS val_2d.py test_single_volume).
# ---------------------------------------------------------------------------------------------------------


def _class_of_value(windows, num_classes=4):
  """Probabilities peaking at class round(intensity) (clipped): a network whose answer is known."""
  cls = np.clip(np.rint(windows[..., 0]), 0, num_classes - 1).astype(np.int64)
  probs = np.full(windows.shape[:3] + (num_classes,), 0.1, np.float32)
  np.put_along_axis(probs, cls[..., None], 0.7, axis=-1)
  return probs


def test_predict_volume_slicewise_numbers():
  from scipy import ndimage

  rng = np.random.default_rng(0)
  calls = []

  def prob_fn(batch):
    calls.append(batch.shape)
    return _class_of_value(batch)

  # Same size as the patch: the label map is the class image itself.
  image = rng.integers(0, 4, (5, 8, 8)).astype(np.float32)
  label, score = inference.predict_volume_slicewise(prob_fn, image, (8, 8), 4, batch_size=2)
  np.testing.assert_array_equal(label, image.astype(np.int64))
  assert calls == [(2, 8, 8, 1)] * 3  # ceil(5 / 2) calls of one fixed shape (last zero-filled)
  np.testing.assert_allclose(score.sum(-1), 1.0, rtol=1e-6)

  # Exactly half the patch: nearest zoom x2 then /2 returns every pixel to itself.
  image = rng.integers(0, 4, (3, 4, 6)).astype(np.float32)
  label, _ = inference.predict_volume_slicewise(prob_fn, image, (8, 12), 4, batch_size=4)
  np.testing.assert_array_equal(label, image.astype(np.int64))

  # General sizes: the upstream formula, slice by slice.
  image = rng.integers(0, 4, (3, 11, 7)).astype(np.float32)
  label, score = inference.predict_volume_slicewise(prob_fn, image, (16, 16), 4, batch_size=2)
  for z in range(3):
    small = ndimage.zoom(image[z], (16 / 11, 16 / 7), order=0)
    want = ndimage.zoom(
      np.argmax(_class_of_value(small[None, ..., None])[0], -1), (11 / 16, 7 / 16), order=0
    )
    np.testing.assert_array_equal(label[z], want)
  assert label.shape == (3, 11, 7) and score.shape == (3, 11, 7, 4)
  np.testing.assert_array_equal(np.argmax(score, -1), label)


def test_predict_volume_slicewise_ties_and_errors():
  image = np.zeros((2, 8, 8), np.float32)
  label, _ = inference.predict_volume_slicewise(
    lambda b: np.full(b.shape[:3] + (3,), 1 / 3), image, (8, 8), 3
  )
  np.testing.assert_array_equal(label, 0)
  with pytest.raises(ValueError, match="prob_fn returned shape"):
    inference.predict_volume_slicewise(lambda b: np.zeros(b.shape[:3] + (2,)), image, (8, 8), 3)
  with pytest.raises(ValueError, match="2 entries"):
    inference.predict_volume_slicewise(_class_of_value, image, (8, 8, 8), 4)
  with pytest.raises(ValueError, match="image must be"):
    inference.predict_volume_slicewise(_class_of_value, np.zeros((8, 8)), (8, 8), 4)
