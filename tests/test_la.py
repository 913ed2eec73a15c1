"""Tests for jaxseg.data.la: paths, root discovery, lazy RAM cache, and two real LA cases."""

import csv

import ml_collections
import numpy as np
import pytest

from jaxseg.data import DATASETS
from jaxseg.data import build_source
from jaxseg.data.h5io import DataError
from jaxseg.data.h5io import write_case
from jaxseg.data.la import ENV_VAR
from jaxseg.data.la import LASource
from jaxseg.data.la import case_path
from jaxseg.data.la import find_root
from tests.conftest import data_dir
from tests.conftest import require_shared_data


def _write_root(root, n=3, shape=(6, 5, 4)):
  ids = [f"case{i}" for i in range(n)]
  for i, case_id in enumerate(ids):
    image = np.full(shape, float(i), np.float32)
    label = (np.arange(np.prod(shape)).reshape(shape) % (i + 2) == 0).astype(np.uint8)
    write_case(case_path(root, case_id), image, label)
  (root / "train.list").write_text("\n".join(ids) + "\n")
  return ids


def test_case_path(tmp_path):
  assert case_path(tmp_path, "ABC") == tmp_path / "2018LA_Seg_Training Set" / "ABC" / "mri_norm2.h5"


def test_source_reads_caches_lazily_and_returns_readonly(tmp_path, monkeypatch):
  ids = _write_root(tmp_path)
  src = LASource(tmp_path, ids, num_classes=2)
  assert len(src) == 3
  assert src._cache == {}
  item = src[1]
  assert sorted(src._cache) == [1]
  assert item["case"] == "case1"
  assert item["image"].dtype == np.float32 and item["label"].dtype == np.uint8
  np.testing.assert_array_equal(item["image"], np.ones((6, 5, 4), np.float32))
  assert int(item["label"].sum()) == int((np.arange(120) % 3 == 0).sum())
  assert not item["image"].flags.writeable
  # Served from RAM afterwards: even with the file gone.
  case_path(tmp_path, "case1").unlink()
  np.testing.assert_array_equal(src[1]["label"], item["label"])
  assert src[-1]["case"] == "case2"
  with pytest.raises(IndexError):
    src[3]


def test_source_error_names_missing_case(tmp_path):
  src = LASource(tmp_path, ["ghost"], num_classes=2)
  with pytest.raises(DataError, match="ghost"):
    src[0]


def test_find_root_argument_then_env(tmp_path, monkeypatch):
  good = tmp_path / "good"
  good.mkdir()
  (good / "train.list").write_text("a\n")
  empty = tmp_path / "empty"
  empty.mkdir()
  monkeypatch.delenv(ENV_VAR, raising=False)
  assert find_root(good) == good
  monkeypatch.setenv(ENV_VAR, str(good))
  assert find_root(None) == good
  assert find_root(empty) == good
  monkeypatch.setenv(ENV_VAR, str(empty))
  with pytest.raises(DataError) as e:
    find_root(tmp_path / "missing")
  msg = str(e.value)
  assert str(tmp_path / "missing") in msg and str(empty) in msg
  assert "UA-MT" in msg and "shared/" not in msg  # no developer-machine path in a user message
  monkeypatch.delenv(ENV_VAR)
  with pytest.raises(DataError, match="not set"):
    find_root("")


def test_registry(tmp_path):
  ids = _write_root(tmp_path, n=2)
  for name in ("la", "synthetic"):
    assert DATASETS[name].train_source is LASource and DATASETS[name].val_source is LASource
  src = build_source("synthetic", tmp_path, ids, 2)
  assert src[0]["case"] == "case0"
  with pytest.raises(DataError, match="unknown dataset data.name='nope'"):
    build_source("nope", tmp_path, ids, 2)


def test_make_splits_reads_the_list(tmp_path):
  ids = _write_root(tmp_path, n=6)
  cfg = ml_collections.ConfigDict(dict(list_file="train.list", n_val=2, labeled=3))
  split = DATASETS["la"].make_splits(tmp_path, cfg)
  assert split == {"train": ids[:4], "val": ids[4:], "labeled": ids[:3], "unlabeled": ids[3:4]}


def test_real_la_cases():
  root = data_dir() / "LA"
  require_shared_data(root / "train.list")
  ids = [line.strip() for line in (root / "train.list").read_text().splitlines() if line.strip()]
  assert len(ids) == 32 and ids[0] == "06SR5RBREL16DQ6M8LWS"
  with open(data_dir() / "files.csv") as f:
    table = {row["file"]: row for row in csv.DictReader(f)}
  src = LASource(find_root(root), ids[:2], num_classes=2)
  for i in range(2):
    item = src[i]
    image, label = item["image"], item["label"]
    row = table[f"LA/2018LA_Seg_Training Set/{ids[i]}/mri_norm2.h5"]
    assert image.dtype == np.float32 and label.dtype == np.uint8
    # (x, y, z) kept as (D, H, W): z = 88 is the last axis.
    assert image.shape == label.shape and image.shape[2] == 88
    assert "x".join(map(str, image.shape)) == row["shape"]
    np.testing.assert_array_equal(np.unique(label), [0, 1])
    assert int(label.sum()) == int(row["foreground_voxels"])
    assert -1.5 < image.min() < 0 < image.max() < 20


def test_downsample_shrinks_once_and_caches(tmp_path):
  shape = (10, 9, 6)
  ids = _write_root(tmp_path, n=2, shape=shape)
  rng = np.random.default_rng(0)
  image = rng.normal(size=shape).astype(np.float32)
  label = (rng.uniform(size=shape) > 0.7).astype(np.uint8)
  write_case(case_path(tmp_path, ids[1]), image, label)
  src = LASource(tmp_path, ids, num_classes=2, downsample=2)
  item = src[1]
  # zoom 0.5 rounds each axis: 10 -> 5, 9 -> 4 (4.5 rounds half to even), 6 -> 3.
  assert item["image"].shape == item["label"].shape == (5, 4, 3)
  assert item["image"].dtype == np.float32 and item["label"].dtype == np.uint8
  # Order 1 corners keep the source's corner voxels; order 0 labels stay in {0, 1}.
  assert item["image"][0, 0, 0] == pytest.approx(image[0, 0, 0])
  assert item["image"][-1, -1, -1] == pytest.approx(image[-1, -1, -1])
  assert set(np.unique(item["label"])) <= {0, 1}
  assert item["label"][0, 0, 0] == label[0, 0, 0] and item["label"][-1, -1, -1] == label[-1, -1, -1]
  # The small copy replaces the full-resolution one in the cache, and is served again unchanged.
  assert src._cache[1][0].shape == (5, 4, 3)
  assert src[1]["image"] is item["image"] and not item["image"].flags.writeable
  assert src[-2]["image"].shape == (5, 4, 3)
  with pytest.raises(DataError, match="data.downsample=0"):
    LASource(tmp_path, ids, downsample=0)


def test_downsample_from_the_data_config(tmp_path):
  ids = _write_root(tmp_path, n=2, shape=(8, 8, 4))
  for factor, shape in ((1, (8, 8, 4)), (2, (4, 4, 2))):
    d = ml_collections.ConfigDict(dict(downsample=factor))
    for split in ("train", "val"):
      src = build_source("la", tmp_path, ids, 2, split=split, data_config=d)
      assert src[0]["image"].shape == shape
