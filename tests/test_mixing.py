"""Tests for jaxseg/mixing.py: box-mask geometry against the upstream mask generators (bcp.npz
context_mask / generate_mask, cml.npz generate_mask_3D/2D) given their stored numpy draws, the
corner distribution of the in-jit draw, and copy-paste against BCP's inline mixing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import mixing
from tests.conftest import channels_last

# (fixture, function, key of the stored draws, ratio: a meta arg name or a constant)
_GENERATORS = (
  ("bcp.npz", "context_mask", "draws_whz", "mask_ratio"),
  ("bcp.npz", "generate_mask", "draws_wh", 2 / 3),  # ACDC: int(S*2/3) hard-coded
  ("cml.npz", "generate_mask_3D", "draws", "mask_ratio"),
  ("cml.npz", "generate_mask_2D", "draws", "mask_ratio"),
)


@pytest.mark.parametrize("fixture,function,draws_key,ratio", _GENERATORS)
def test_box_geometry_matches_upstream_given_draws(parity, fixture, function, draws_key, ratio):
  pf = parity(fixture)
  for name in pf.cases_of(function):
    case, args = pf.case(name), pf.case_args(name)
    r = args[ratio] if isinstance(ratio, str) else ratio
    want = case["output/mask"]
    shape = want.shape
    size = mixing.box_size(shape, r)
    if "output/patch_size_xyz" in case:
      np.testing.assert_array_equal(size, case["output/patch_size_xyz"], err_msg=name)
    got = np.asarray(
      jax.jit(mixing.box_mask_at, static_argnums=(1, 2))(case["output/" + draws_key], size, shape)
    )
    np.testing.assert_array_equal(got, want, err_msg=name)
    # loss_mask is the same box in every sample.
    loss_mask = case["output/loss_mask"]
    np.testing.assert_array_equal(np.broadcast_to(got, loss_mask.shape), loss_mask, err_msg=name)


def test_out_of_range_corner_gives_no_box(parity):
  """BCP LA's hard-coded 112/80 bounds on a small patch: the stored draw lands outside."""
  pf = parity("bcp.npz")
  for name in pf.cases_of("context_mask"):
    case = pf.case(name)
    shape, draws = case["output/mask"].shape, case["output/draws_whz"]
    if np.any(draws >= np.asarray(shape)):
      got = mixing.box_mask_at(
        draws, mixing.box_size(shape, pf.case_args(name)["mask_ratio"]), shape
      )
      np.testing.assert_array_equal(got, 1.0)
  # A partially clipped box: numpy slicing keeps the in-range part.
  got = np.asarray(mixing.box_mask_at([10, 0], (10, 3), (16, 8)))
  want = np.ones((16, 8), np.float32)
  want[10:20, 0:3] = 0
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
  "shape,ratio,bounds",
  [((16, 16, 16), 2 / 3, None), ((32, 32), 2 / 3, None), ((16, 16, 16), 2 / 3, (112, 112, 80))],
)  # BCP LA
def test_random_corner_covers_numpy_randint_range(shape, ratio, bounds):
  size = mixing.box_size(shape, ratio)
  bounds_ = shape if bounds is None else bounds
  keys = jax.random.split(jax.random.key(0), 4000)
  corners = np.asarray(jax.jit(jax.vmap(lambda k: mixing.draw_corner(k, size, bounds_)))(keys))
  for axis, (b, s) in enumerate(zip(bounds_, size)):
    assert corners[:, axis].min() == 0
    assert corners[:, axis].max() == b - s - 1  # randint(0, b - s) excludes b - s
  # Inside jit the mask is a box of the static size (or clipped / empty with the LA bounds).
  masks = np.asarray(
    jax.jit(jax.vmap(lambda k: mixing.box_mask(k, shape, ratio, bounds)))(keys[:8])
  )
  assert masks.shape == (8,) + tuple(shape) and set(np.unique(masks)) <= {0.0, 1.0}
  if bounds is None:
    np.testing.assert_array_equal((masks == 0).sum(axis=tuple(range(1, masks.ndim))), np.prod(size))


def test_box_mask_rejects_bad_bounds():
  with pytest.raises(ValueError, match="randint"):
    mixing.box_mask(jax.random.key(0), (3, 3), 1.0)
  with pytest.raises(ValueError, match="one entry per axis"):
    mixing.box_mask(jax.random.key(0), (16, 16), 0.5, bounds_shape=(16, 16, 16))


def _mix_check(case, pairs, img_mask):
  for out, (outside, inside) in pairs.items():
    a, b = case["input/" + outside], case["input/" + inside]
    if a.ndim == img_mask.ndim + 2:  # images [B, 1, *spatial] -> channels-last
      a, b, want = channels_last(a), channels_last(b), channels_last(case["output/" + out])
    else:
      want = case["output/" + out]
    got = mixing.copy_paste(jnp.asarray(a), jnp.asarray(b), jnp.asarray(img_mask, jnp.float32))
    np.testing.assert_array_equal(
      np.asarray(got, np.float64), np.asarray(want, np.float64), err_msg=out
    )


def test_copy_paste_matches_bcp_la_mixing(parity):
  pf = parity("bcp.npz")
  for name in pf.cases_of("inline bidirectional copy-paste mixing (self_train)"):
    case = pf.case(name)
    _mix_check(
      case,
      {
        "mixl_img": ("img_a", "unimg_a"),
        "mixu_img": ("unimg_b", "img_b"),
        "mixl_lab": ("lab_a", "plab_a"),
        "mixu_lab": ("plab_b", "lab_b"),
      },
      case["input/img_mask"],
    )


def test_copy_paste_matches_bcp_acdc_mixing(parity):
  pf = parity("bcp.npz")
  for name in pf.cases_of("inline mixing in self_train"):
    case = pf.case(name)
    _mix_check(
      case,
      {
        "net_input_unl": ("uimg_a", "img_a"),
        "net_input_l": ("img_b", "uimg_b"),
        "unl_label": ("ulab_a", "lab_a"),
        "l_label": ("lab_b", "ulab_b"),
      },
      case["input/img_mask"],
    )


def test_copy_paste_keeps_integer_labels_and_checks_shapes():
  mask = mixing.box_mask_at([1, 1], (2, 2), (4, 4))
  a = jnp.zeros((2, 4, 4), jnp.int32)
  b = jnp.ones((2, 4, 4), jnp.int32)
  out = mixing.copy_paste(a, b, mask)
  assert out.dtype == jnp.int32 and int(out.sum()) == 2 * 4
  with pytest.raises(ValueError, match="does not fit"):
    mixing.copy_paste(jnp.zeros((4, 4)), jnp.zeros((4, 4)), mask)
  with pytest.raises(ValueError, match="shapes differ"):
    mixing.copy_paste(a, b[:1], mask)
