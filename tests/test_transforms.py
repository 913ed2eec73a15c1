"""Tests for jaxseg.data.transforms: the upstream RandomRotFlip / RandomCrop quirks, numerically."""

import collections

import numpy as np
import pytest

from jaxseg.data.transforms import crop_padding
from jaxseg.data.transforms import random_crop
from jaxseg.data.transforms import random_rot_flip


def _dihedral(x):
  """The 8 in-plane (axes 0, 1) transforms of x, by name."""
  out = {}
  for k in range(4):
    r = np.rot90(x, k, axes=(0, 1))
    out[f"rot{k}"] = r
    out[f"rot{k}_flip0"] = np.flip(r, 0)
  return out


def _which(y, x):
  names = [n for n, v in _dihedral(x).items() if v.shape == y.shape and np.array_equal(v, y)]
  assert len(names) == 1, names
  return names[0]


def test_rot_flip_matches_upstream_formula():
  x = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)
  lab = (x.astype(np.int64) % 7).astype(np.uint8)
  for seed in range(20):
    image, label = random_rot_flip(x, lab, np.random.default_rng(seed))
    rng = np.random.default_rng(seed)
    k, axis = rng.integers(0, 4), rng.integers(0, 2)
    np.testing.assert_array_equal(image, np.flip(np.rot90(x, k), axis))
    np.testing.assert_array_equal(label, np.flip(np.rot90(lab, k), axis))
    assert image.shape == ((5, 4, 3) if k % 2 else (4, 5, 3))
    assert image.flags.c_contiguous


def test_rot_flip_is_always_a_reflection():
  # A flip after a rotation is one of the 4 reflections; identity and pure rotations never occur.
  x = np.arange(3 * 4 * 2).reshape(3, 4, 2)
  rng = np.random.default_rng(0)
  counts = collections.Counter(_which(random_rot_flip(x, x, rng)[0], x) for _ in range(4000))
  assert set(counts) == {"rot0_flip0", "rot1_flip0", "rot2_flip0", "rot3_flip0"}
  for n in counts.values():  # each reflection: 2 of the 8 (k, axis) draws, probability 1/4
    assert abs(n / 4000 - 0.25) < 0.03


@pytest.mark.parametrize(
  "shape, patch, expected",
  [
    ((10, 20, 30), (12, 16, 8), (4, 1, 0)),  # one axis short: every axis padded, floor division
    ((16, 16, 16), (16, 8, 8), (3, 0, 0)),  # equal counts as short (upstream uses <=)
    ((9, 9, 9), (8, 8, 8), (0, 0, 0)),  # all larger: no padding
    ((5, 9, 8), (8, 8, 8), (4, 2, 3)),  # (8-5)//2+3, (8-9)//2+3 = -1+3, 0//2+3
  ],
)
def test_crop_padding(shape, patch, expected):
  assert crop_padding(shape, patch) == expected


def test_random_crop_pads_with_zero_and_cuts_the_drawn_window():
  rng0 = np.random.default_rng(0)
  image = rng0.uniform(1, 2, (5, 9, 8)).astype(np.float32)
  label = np.ones((5, 9, 8), np.uint8)
  patch = (8, 8, 8)
  padded = np.pad(image, [(4, 4), (2, 2), (3, 3)])
  padded_label = np.pad(label, [(4, 4), (2, 2), (3, 3)])
  assert padded.shape == (13, 13, 14)
  seen_zero = False
  for seed in range(30):
    out_image, out_label = random_crop(image, label, patch, np.random.default_rng(seed))
    rng = np.random.default_rng(seed)
    starts = [rng.integers(0, d - p) for d, p in zip(padded.shape, patch)]
    window = tuple(slice(s, s + p) for s, p in zip(starts, patch))
    assert out_image.shape == patch and out_label.shape == patch
    np.testing.assert_array_equal(out_image, padded[window])
    np.testing.assert_array_equal(out_label, padded_label[window])
    seen_zero |= bool((out_label == 0).any())
  assert seen_zero


def test_random_crop_never_draws_last_start():
  # 12 x 11 x 10 volume, patch 8: starts are uniform on [0, dim - patch - 1].
  image = np.broadcast_to(
    np.arange(12)[:, None, None] * 10000
    + np.arange(11)[None, :, None] * 100
    + np.arange(10)[None, None, :],
    (12, 11, 10),
  ).astype(np.float32)
  rng = np.random.default_rng(1)
  starts = collections.defaultdict(set)
  for _ in range(600):
    out, _ = random_crop(image, image.astype(np.int32), (8, 8, 8), rng)
    v = int(out[0, 0, 0])
    starts[0].add(v // 10000)
    starts[1].add(v // 100 % 100)
    starts[2].add(v % 100)
  assert starts[0] == set(range(4))  # never 12 - 8 = 4
  assert starts[1] == set(range(3))  # never 3
  assert starts[2] == set(range(2))  # never 2


def test_random_crop_one_voxel_margin_always_starts_at_zero():
  image = np.arange(9 * 9 * 9, dtype=np.float32).reshape(9, 9, 9)
  rng = np.random.default_rng(2)
  for _ in range(20):
    out, _ = random_crop(image, image.astype(np.uint8), (8, 8, 8), rng)
    np.testing.assert_array_equal(out, image[:8, :8, :8])


def test_random_crop_equal_size_is_padded_not_a_crash():
  # dim == patch would be randint(0, 0) upstream without the pad; the <= rule pads it by 3 first.
  image = np.ones((8, 8, 8), np.float32)
  rng = np.random.default_rng(3)
  totals = {
    float(random_crop(image, image.astype(np.uint8), (8, 8, 8), rng)[0].sum()) for _ in range(50)
  }
  # Padded to 14^3 with the ones at [3, 11) per axis; starts 0..5 overlap them by 5..8 voxels.
  assert min(totals) >= 5 * 5 * 5 and max(totals) <= 8 * 8 * 8
  assert min(totals) < 512


def test_random_crop_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="label shape"):
    random_crop(np.zeros((9, 9, 9)), np.zeros((9, 9, 8)), (8, 8, 8), np.random.default_rng(0))


# ---------------------------------------------------------------------------------------------------
# 2D: SSL4MIS RandomGenerator.
# ---------------------------------------------------------------------------------------------------


def _upstream_random_generator(image, label, size, rng):
  """SSL4MIS RandomGenerator written out with `rng` in place of `random` / `np.random`."""
  from scipy import ndimage

  branch = "none"
  if rng.random() > 0.5:
    k = rng.integers(0, 4)
    image, label = np.rot90(image, k), np.rot90(label, k)
    axis = rng.integers(0, 2)
    image, label = np.flip(image, axis=axis), np.flip(label, axis=axis)
    branch = "rot_flip"
  elif rng.random() > 0.5:
    angle = rng.integers(-20, 20)
    image = ndimage.rotate(image, angle, order=0, reshape=False)
    label = ndimage.rotate(label, angle, order=0, reshape=False)
    branch = "rotate"
  x, y = image.shape
  image = ndimage.zoom(image, (size[0] / x, size[1] / y), order=0)
  label = ndimage.zoom(label, (size[0] / x, size[1] / y), order=0)
  return image, label, branch


def test_random_generator_2d_is_the_upstream_chain():
  from jaxseg.data.transforms import random_generator_2d

  image = np.random.default_rng(0).random((30, 22)).astype(np.float32)
  label = (np.arange(30 * 22).reshape(30, 22) % 4).astype(np.uint8)
  branches = collections.Counter()
  for seed in range(24):
    got_i, got_l = random_generator_2d(image, label, (32, 32), np.random.default_rng(seed))
    want_i, want_l, branch = _upstream_random_generator(
      image, label, (32, 32), np.random.default_rng(seed)
    )
    branches[branch] += 1
    assert got_i.shape == got_l.shape == (32, 32)
    assert got_i.dtype == np.float32 and got_l.dtype == np.uint8
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_array_equal(got_l, want_l)
    # Nearest everywhere: label values and image intensities are only moved, never blended.
    assert set(np.unique(got_l).tolist()) <= {0, 1, 2, 3}
    assert np.isin(got_i, np.append(image.ravel(), 0.0)).all()
  assert set(branches) == {"rot_flip", "rotate", "none"}  # all three branches exercised


def test_random_generator_2d_deterministic_and_checks():
  from jaxseg.data.transforms import random_generator_2d

  image = np.random.default_rng(1).random((20, 24)).astype(np.float32)
  label = (image > 0.5).astype(np.uint8)
  a = random_generator_2d(image, label, (16, 16), np.random.default_rng(5))
  b = random_generator_2d(image, label, (16, 16), np.random.default_rng(5))
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  with pytest.raises(ValueError, match=r"\[H, W\]"):
    random_generator_2d(image[None], label[None], (16, 16), np.random.default_rng(0))
  with pytest.raises(ValueError, match="2 sizes"):
    random_generator_2d(image, label, (16, 16, 16), np.random.default_rng(0))
