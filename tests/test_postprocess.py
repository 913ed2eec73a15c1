"""Tests for jaxseg/postprocess.py: the in-graph largest connected component against
scipy.ndimage.label (full structure) + argmax of bincount (skimage order), on random masks, ties,
snakes and empty samples, and against BCP's get_cut_mask / get_ACDC_masks (bcp.npz, cml.npz); the
host version used by evaluation, and the two versions against each other."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi

from jaxseg import postprocess

_largest = jax.jit(postprocess.largest_component)


def _reference(mask: np.ndarray) -> np.ndarray:
  """Upstream LargestCC: label with full connectivity, keep argmax(bincount[1:]) + 1, empty kept."""
  out = []
  for m in mask:
    labels, n = ndi.label(m, structure=np.ones((3,) * m.ndim))
    out.append(m.astype(bool) if n == 0 else labels == np.argmax(np.bincount(labels.flat)[1:]) + 1)
  return np.stack(out)


@pytest.mark.parametrize("shape", [(3, 12, 10, 8), (4, 24, 20)])
def test_random_masks_match_scipy(shape):
  rng = np.random.default_rng(0)
  for p in (0.0, 0.15, 0.3, 0.55, 1.0):
    mask = rng.random(shape) < p
    np.testing.assert_array_equal(np.asarray(_largest(mask)), _reference(mask), err_msg=str(p))


def test_ties_go_to_first_component_in_raster_order():
  mask = np.zeros((2, 9, 9), bool)
  mask[0, 6:8, 6:8] = True  # 4 voxels, starts later
  mask[0, 0:2, 5:7] = True  # 4 voxels, first in raster order
  mask[0, 4, 0:3] = True  # 3 voxels
  mask[1, 8, 0:4] = True  # 4 voxels, last row
  mask[1, 2:4, 7:9] = True  # 4 voxels, earlier
  got = np.asarray(_largest(mask))
  np.testing.assert_array_equal(got, _reference(mask))
  assert got[0, 0, 5] and not got[0, 6, 6] and got[1, 2, 7] and not got[1, 8, 0]


def test_diagonal_contact_is_connected_in_3d_and_2d():
  mask = np.zeros((1, 4, 4, 4), bool)
  mask[0, 0, 0, 0] = mask[0, 1, 1, 1] = mask[0, 2, 2, 2] = True  # corner-to-corner: 26-connected
  mask[0, 3, 0, 3] = True
  np.testing.assert_array_equal(np.asarray(_largest(mask))[0].sum(), 3)
  mask2 = np.zeros((1, 5, 5), bool)
  mask2[0, [0, 1, 2, 3], [0, 1, 2, 3]] = True  # 8-connected diagonal
  mask2[0, 0, 4] = True
  np.testing.assert_array_equal(np.asarray(_largest(mask2))[0].sum(), 4)


def test_snake_needs_many_rounds():
  """A one-voxel-wide serpentine: the label must travel its whole length (pointer jumping)."""
  n = 33
  mask = np.zeros((2, n, n), bool)
  for i in range(0, n, 2):
    mask[0, i, :] = True
    if i + 1 < n:
      mask[0, i + 1, n - 1 if (i // 2) % 2 == 0 else 0] = True
  mask[1, 0, 0] = True  # a second sample with a single voxel
  got = np.asarray(_largest(mask))
  np.testing.assert_array_equal(got, _reference(mask))
  assert got[0].sum() == mask[0].sum()


def test_empty_and_full_samples():
  mask = np.zeros((3, 6, 6, 6), bool)
  mask[1] = True
  mask[2, 2, 2, 2] = True
  got = np.asarray(_largest(mask))
  np.testing.assert_array_equal(got, mask)


def test_component_labels_are_first_raster_index():
  mask = np.zeros((1, 4, 5), bool)
  mask[0, 1, 1:3] = True
  mask[0, 3, 4] = True
  labels = np.asarray(postprocess.component_labels(mask))[0]
  assert labels[1, 1] == labels[1, 2] == 1 * 5 + 1
  assert labels[3, 4] == 3 * 5 + 4
  assert labels[0, 0] == 20  # background = number of voxels


def test_per_class_variant_random():
  rng = np.random.default_rng(1)
  label_map = rng.integers(0, 4, (3, 20, 20))
  label_map[2] = 0  # a sample with no foreground
  got = np.asarray(jax.jit(postprocess.largest_component_per_class, static_argnums=1)(label_map, 4))
  want = np.zeros_like(label_map)
  for c in range(1, 4):
    want += c * _reference(label_map == c)
  np.testing.assert_array_equal(got, want)


def test_matches_bcp_get_cut_mask(parity):
  pf = parity("bcp.npz")
  for name in pf.cases_of("get_cut_mask / LargestCC_pancreas"):
    case = pf.case(name)
    logits = jnp.moveaxis(jnp.asarray(case["input/logits"]), 1, -1)
    thres = pf.case_args(name).get("thres", 0.5)
    raw = jax.nn.softmax(logits, axis=-1)[..., 1] >= thres
    np.testing.assert_array_equal(np.asarray(raw, np.int64), case["output/nms0"], err_msg=name)
    np.testing.assert_array_equal(
      np.asarray(_largest(raw), np.float32), case["output/nms1"], err_msg=name
    )


@pytest.mark.parametrize(
  "fixture,function",
  [("bcp.npz", "get_ACDC_masks / get_ACDC_2DLargestCC"), ("cml.npz", "get_ACDC_masks")],
)
def test_matches_get_acdc_masks(parity, fixture, function):
  pf = parity(fixture)
  for name in pf.cases_of(function):
    case = pf.case(name)
    logits = jnp.moveaxis(jnp.asarray(case["input/logits"]), 1, -1)
    argmax = jnp.argmax(jax.nn.softmax(logits, axis=-1), axis=-1)
    np.testing.assert_array_equal(np.asarray(argmax), case["output/nms0"], err_msg=name)
    got = postprocess.largest_component_per_class(argmax, logits.shape[-1])
    np.testing.assert_array_equal(np.asarray(got, np.float32), case["output/nms1"], err_msg=name)


def test_host_largest_component():
  mask = np.zeros((10, 10, 10), bool)
  mask[0:2, 0:2, 0:2] = True  # 8 voxels
  mask[5:8, 5:8, 5:8] = True  # 27 voxels
  mask[8, 8, 8] = True  # touches the 27 only diagonally: joined under full connectivity
  kept = postprocess.largest_component_np(mask)
  assert kept.sum() == 28 and not kept[0, 0, 0]
  assert postprocess.largest_component_np(mask, connectivity=1).sum() == 27
  labels = np.zeros((10, 10, 10), np.int64)
  labels[mask] = 1
  labels[0, 5:9, 0] = 2
  labels[0, 0, 9] = 2
  out = postprocess.largest_component_per_class_np(labels, 3)
  assert (out == 1).sum() == 28 and (out == 2).sum() == 4 and out[0, 0, 9] == 0
  assert out.dtype == labels.dtype
  assert not postprocess.largest_component_np(np.zeros((3, 3, 3))).any()


@pytest.mark.parametrize("shape", [(9, 11, 7), (13, 17)])
def test_host_and_in_graph_versions_agree(shape):
  """Same components, same tie rule: one volume through scipy, the same volume as a batch of one
  through the jitted version, on sparse to dense label maps with 2 and 4 classes."""
  rng = np.random.default_rng(2)
  per_class = jax.jit(postprocess.largest_component_per_class, static_argnums=1)
  for num_classes in (2, 4):
    for p_background in (0.3, 0.6, 0.9, 1.0):
      label_map = np.where(rng.random(shape) < p_background, 0, rng.integers(1, num_classes, shape))
      host = postprocess.largest_component_per_class_np(label_map, num_classes)
      graph = np.asarray(per_class(label_map[None], num_classes))[0]
      np.testing.assert_array_equal(host, graph, err_msg=f"{num_classes} classes, {p_background}")
      assert host.any() == (p_background < 1.0)
