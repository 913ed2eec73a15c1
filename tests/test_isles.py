"""jaxseg/data/isles.py: DyCON's ISLES-2022 lists, labeled-first split, the synthetic stand-in in
the prepared layout, and bad input."""

import json
import pathlib
import shutil

import ml_collections
import numpy as np
import pytest

from jaxseg.data import DATASETS
from jaxseg.data import isles
from jaxseg.data.h5io import DataError
from jaxseg.data.h5io import load_case
from jaxseg.data.h5io import write_case
from tests.conftest import data_dir
from tests.conftest import require_shared_data


def _synth(tmp_path, **kw):
  cfg = ml_collections.ConfigDict(dict(n_cases=5, n_val=2, n_test=2, shape=(16, 12, 8), seed=1))
  cfg.update(kw)
  return isles.synthesize(tmp_path / "isles", cfg)


def _data(**kw):
  return ml_collections.ConfigDict({**dict(labeled=2), **kw})


def _ids(path):
  return path.read_text().split()


def test_registered_and_find_root(tmp_path, monkeypatch):
  assert DATASETS["isles"] is isles.DATASET and isles.DATASET.test_list == "test.list"
  monkeypatch.delenv("JAXSEG_DATA_DIR", raising=False)
  with pytest.raises(DataError, match="ISLES-2022 data not found.*jaxseg.prepare isles"):
    isles.find_root(None)
  root = _synth(tmp_path)
  assert isles.find_root(root) == root
  monkeypatch.setenv("JAXSEG_DATA_DIR", str(root))
  assert isles.find_root(None) == root
  (root / "val.list").unlink()
  with pytest.raises(DataError, match="no train.list \\+ val.list \\+ data/"):
    isles.find_root(root)


def test_stand_in_layout_and_source(tmp_path):
  root = _synth(tmp_path)
  train, val, test = (_ids(root / f"{n}.list") for n in ("train", "val", "test"))
  assert train == [f"sub-strokecase{i:04d}" for i in range(1, 6)]
  assert val == ["sub-strokecase0006", "sub-strokecase0007"]
  assert test == ["sub-strokecase0008", "sub-strokecase0009"]
  src = isles.source(root, val)
  image, label = load_case(root / "data" / "sub-strokecase0007.h5", 2)
  item = src[1]
  assert item["case"] == "sub-strokecase0007" and item["image"].shape == (16, 12, 8)
  np.testing.assert_array_equal(item["image"], image)
  np.testing.assert_array_equal(item["label"], label)
  # The phantoms are z-scored volumes with a lesion of a few voxels up to a blob.
  assert abs(float(image.mean())) < 1e-4 and abs(float(image.std()) - 1.0) < 1e-3
  assert 0 < int(label.sum()) < label.size
  # Same settings: nothing rewritten; other settings: a different stand-in.
  mtime = (root / "data" / "sub-strokecase0001.h5").stat().st_mtime_ns
  assert _synth(tmp_path) == root
  assert (root / "data" / "sub-strokecase0001.h5").stat().st_mtime_ns == mtime
  _synth(tmp_path, seed=2)
  assert not np.array_equal(load_case(root / "data" / "sub-strokecase0007.h5", 2)[0], image)


def test_splits_labeled_first(tmp_path):
  root = _synth(tmp_path)
  train, val = _ids(root / "train.list"), _ids(root / "val.list")
  split = isles.make_splits(root, _data(labeled=2))
  assert split == {"train": train, "val": val, "labeled": train[:2], "unlabeled": train[2:]}


def test_dycon_split_files(tmp_path):
  """DyCON's published lists: 200 / 25 / 25 disjoint ids; 5 % labeled = the first 10 of
  train.list."""
  shared = data_dir() / "ISLES2022"
  require_shared_data(shared / "train.list")
  root = tmp_path / "isles"
  for name in ("train.list", "val.list", "test.list"):
    (root / "data").mkdir(parents=True, exist_ok=True)
    shutil.copy(shared / name, root / name)
  train, val, test = (_ids(root / f"{n}.list") for n in ("train", "val", "test"))
  for case in train + val:
    write_case(isles.case_path(root, case), np.zeros((2, 2, 2)), np.zeros((2, 2, 2)))
  split = isles.make_splits(root, _data(labeled=len(train) // 20))
  assert (len(split["train"]), len(split["val"]), len(test)) == (200, 25, 25)
  assert split["labeled"] == [f"sub-strokecase{n:04d}" for n in (3, 4, 5, 7, 8, 9, 10, 11, 12, 14)]
  assert len(split["unlabeled"]) == 190 and split["val"] == val
  assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
  assert len(set(train) | set(val) | set(test)) == 250


def test_bad_input(tmp_path):
  root = _synth(tmp_path)
  train = _ids(root / "train.list")
  (root / "data" / f"{train[3]}.h5").unlink()
  with pytest.raises(DataError, match=f"train.list: 1 of 5 listed cases have no file.*{train[3]}"):
    isles.make_splits(root, _data())
  _synth(tmp_path)
  with pytest.raises(DataError, match="data.labeled=6 must be in \\[1, 5\\]"):
    isles.make_splits(root, _data(labeled=6))
  (root / "val.list").write_text(train[0] + "\n")
  with pytest.raises(DataError, match="in both train.list and val.list"):
    isles.make_splits(root, _data())
  (root / "val.list").unlink()
  with pytest.raises(DataError, match="val.list: list file not found"):
    isles.make_splits(root, _data())
  write_case(isles.case_path(root, train[1]), np.full((4, 4, 4), np.nan), np.zeros((4, 4, 4)))
  with pytest.raises(DataError, match=f"{train[1]}.h5: image has non-finite intensities"):
    isles.source(root, train)[1]


@pytest.mark.slow
def test_config_smoke_run(tmp_path):
  """configs/isles_dycon.py at smoke size trains on the stand-in through the builder and
  evaluates the val.list cases."""
  from jaxseg import config_check
  from jaxseg import config_lib
  from tests.conftest import check_short_run

  module = config_lib.load_config_module(
    pathlib.Path(__file__).resolve().parents[1] / "configs" / "isles_dycon.py"
  )
  full = module.get_config()
  config_check.validate(full)
  assert (full.data.name, full.data.labeled, tuple(full.data.patch_size)) == (
    "isles",
    10,
    (96, 96, 64),
  )
  assert (full.eval.stride_xy, full.eval.stride_z, full.eval.largest_cc) == (16, 4, False)
  config = module.get_config("smoke=1")
  config.total_steps = 2
  summary = check_short_run(config, tmp_path / "run")
  assert summary["n_cases"] == 2
  split = json.loads((tmp_path / "run" / "splits.json").read_text())
  assert split["labeled"] == isles.synthetic_case_ids(10)
  assert split["val"] == isles.synthetic_case_ids(2, first=len(split["train"]) + 1)
