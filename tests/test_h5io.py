"""Tests for jaxseg.data.h5io: round trip, atomic write, one clear error per kind of bad file."""

import h5py
import numpy as np
import pytest

from jaxseg.data.h5io import DataError
from jaxseg.data.h5io import load_case
from jaxseg.data.h5io import write_case


def _raw_h5(path, **arrays):
  with h5py.File(path, "w") as f:
    for k, v in arrays.items():
      f.create_dataset(k, data=v)
  return path


def _good(shape=(5, 4, 3), seed=0):
  rng = np.random.default_rng(seed)
  return rng.standard_normal(shape).astype(np.float32), rng.integers(0, 2, shape).astype(np.uint8)


def test_round_trip_is_exact_and_uses_la_layout(tmp_path):
  image, label = _good()
  path = tmp_path / "case" / "mri_norm2.h5"
  write_case(path, image, label)
  got_image, got_label = load_case(path, num_classes=2)
  assert got_image.dtype == np.float32 and got_label.dtype == np.uint8
  np.testing.assert_array_equal(got_image, image)
  np.testing.assert_array_equal(got_label, label)
  with h5py.File(path, "r") as f:
    assert sorted(f.keys()) == ["image", "label"]
    assert f["image"].compression == "gzip" and f["label"].compression == "gzip"
  # Atomic write: only the final file remains, no temporary.
  assert [p.name for p in path.parent.iterdir()] == ["mri_norm2.h5"]


def test_write_replaces_existing_file(tmp_path):
  path = tmp_path / "c.h5"
  write_case(path, *_good(seed=0))
  image, label = _good(seed=1)
  write_case(path, image, label)
  np.testing.assert_array_equal(load_case(path, 2)[0], image)
  assert len(list(tmp_path.iterdir())) == 1


def test_write_shape_mismatch_leaves_nothing(tmp_path):
  path = tmp_path / "c.h5"
  with pytest.raises(DataError, match="shape"):
    write_case(path, np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))
  assert list(tmp_path.iterdir()) == []


def test_integer_labels_of_other_dtype_are_cast(tmp_path):
  image, label = _good()
  path = _raw_h5(tmp_path / "c.h5", image=image.astype(np.float64), label=label.astype(np.int64))
  got_image, got_label = load_case(path, 2)
  assert got_image.dtype == np.float32 and got_label.dtype == np.uint8
  np.testing.assert_array_equal(got_label, label)


def test_2d_with_ndim(tmp_path):
  image, label = _good((6, 7))
  path = _raw_h5(tmp_path / "s.h5", image=image, label=label)
  np.testing.assert_array_equal(load_case(path, 2, ndim=2)[1], label)
  with pytest.raises(DataError, match=r"expected a 3-D image"):
    load_case(path, 2)


def test_missing_file(tmp_path):
  path = tmp_path / "nope.h5"
  with pytest.raises(DataError, match="not found") as e:
    load_case(path, 2)
  assert str(path) in str(e.value)


def test_not_hdf5(tmp_path):
  path = tmp_path / "text.h5"
  path.write_text("hello")
  with pytest.raises(DataError, match="HDF5") as e:
    load_case(path, 2)
  assert str(path) in str(e.value)


@pytest.mark.parametrize(
  "kind, pattern",
  [
    ("missing_label", r"missing key\(s\) \['label'\]; keys found: \['image', 'mask'\]"),
    ("shape_mismatch", r"image shape \(5, 4, 3\) != label shape \(5, 4, 2\)"),
    ("nan", r"non-finite intensities \(2 NaN, 1 inf\)"),
    ("out_of_range", r"label values \[2, 7\] outside \[0, 2\)"),
    ("negative", r"label values \[-1\] outside \[0, 2\)"),
    ("float_label", r"label dtype float32 is not an integer"),
    ("four_d", r"expected a 3-D image, got shape \(5, 4, 3, 1\)"),
  ],
)
def test_bad_files_name_the_file(tmp_path, kind, pattern):
  image, label = _good()
  path = tmp_path / f"{kind}.h5"
  if kind == "missing_label":
    _raw_h5(path, image=image, mask=label)
  elif kind == "shape_mismatch":
    _raw_h5(path, image=image, label=label[..., :2])
  elif kind == "nan":
    image[0, 0, 0] = image[1, 1, 1] = np.nan
    image[2, 2, 2] = np.inf
    _raw_h5(path, image=image, label=label)
  elif kind == "out_of_range":
    label[0, 0, 0], label[1, 0, 0], label[2, 0, 0] = 7, 2, 7
    _raw_h5(path, image=image, label=label)
  elif kind == "negative":
    _raw_h5(path, image=image, label=label.astype(np.int16) - (label == 0))
  elif kind == "float_label":
    _raw_h5(path, image=image, label=label.astype(np.float32))
  elif kind == "four_d":
    _raw_h5(path, image=image[..., None], label=label[..., None])
  with pytest.raises(DataError, match=pattern) as e:
    load_case(path, num_classes=2)
  assert str(path) in str(e.value)
  assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("damage", ["truncate", "overwrite"])
def test_damaged_file_names_the_file(tmp_path, damage):
  """A case cut by a full disk or a kill, or with bytes overwritten inside its compressed data."""
  path = tmp_path / "case.h5"
  write_case(
    path,
    np.random.default_rng(0).normal(size=(40, 40, 40)).astype(np.float32),
    np.zeros((40, 40, 40), np.uint8),
  )
  data = bytearray(path.read_bytes())
  if damage == "truncate":
    data = data[: len(data) // 2]
  else:
    data[len(data) // 2 : len(data) // 2 + 2048] = bytes(2048)
  path.write_bytes(bytes(data))
  with pytest.raises(DataError, match="truncated or corrupt") as e:
    load_case(path, num_classes=2)
  assert str(path) in str(e.value)


def test_non_numeric_image_names_the_file(tmp_path):
  path = tmp_path / "case.h5"
  _, label = _good()
  _raw_h5(path, image=np.full(label.shape, b"x", dtype="S1"), label=label)
  with pytest.raises(DataError, match=r"case.h5: image dtype \|S1 is not a real number type"):
    load_case(path, num_classes=2)
