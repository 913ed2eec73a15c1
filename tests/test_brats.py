"""jaxseg/data/brats.py: the SSL4MIS / DyCON BraTS 2019 layout, splits, SagittalToAxial, bad input,
the synthetic stand-in, and the crop-then-rot/flip training stream."""

import ml_collections
import numpy as np
import pytest

from jaxseg.data import DATASETS
from jaxseg.data import brats
from jaxseg.data import pipeline
from jaxseg.data.h5io import DataError
from jaxseg.data.h5io import write_case


def _synth(tmp_path, **kw):
  cfg = ml_collections.ConfigDict(dict(n_cases=5, n_val=2, n_test=1, shape=(20, 18, 16), seed=3))
  cfg.update(kw)
  return brats.synthesize(tmp_path / "brats", cfg)


def _data_config(**kw):
  return ml_collections.ConfigDict({**dict(labeled=2, val_list="val.txt"), **kw})


def test_registered_and_list_parsing(tmp_path):
  assert DATASETS["brats"] is brats.DATASET and brats.DATASET.test_list == "test.txt"
  path = tmp_path / "train.txt"
  path.write_text("BraTS19_A,extra,fields\n\n  BraTS19_B  \nBraTS19_C,\n")
  assert brats.read_list(path) == ["BraTS19_A", "BraTS19_B", "BraTS19_C"]
  path.write_text("BraTS19_A\nBraTS19_A,dup\n")
  with pytest.raises(DataError, match="duplicated.*BraTS19_A"):
    brats.read_list(path)
  with pytest.raises(DataError, match="not found"):
    brats.read_list(tmp_path / "missing.txt")


def test_find_root(tmp_path, monkeypatch):
  monkeypatch.delenv(brats.ENV_VAR, raising=False)
  with pytest.raises(DataError, match="data.root is empty"):
    brats.find_root(None)
  with pytest.raises(DataError, match=f"{tmp_path}.*no train.txt"):
    brats.find_root(tmp_path)
  root = _synth(tmp_path)
  assert brats.find_root(root) == root
  monkeypatch.setenv(brats.ENV_VAR, str(root))
  assert brats.find_root(None) == root


def test_splits_labeled_first_and_val_list(tmp_path):
  root = _synth(tmp_path)
  split = brats.make_splits(root, _data_config())
  train = brats.read_list(root / "train.txt")
  assert split["train"] == train and split["labeled"] == train[:2]
  assert split["unlabeled"] == train[2:]
  assert split["val"] == brats.read_list(root / "val.txt")
  with pytest.raises(DataError, match="data.labeled=9"):
    brats.make_splits(root, _data_config(labeled=9))
  (root / "val.txt").write_text(train[0] + "\n")
  with pytest.raises(DataError, match="both the train list and val.txt"):
    brats.make_splits(root, _data_config())


def test_source_sagittal_to_axial_and_bad_input(tmp_path):
  root = _synth(tmp_path)
  ids = brats.read_list(root / "train.txt")
  plain = brats.val_source_untransposed(root, ids, 2)
  axial = brats.train_source(root, ids, 2)
  assert brats.val_source(root, ids, 2).sagittal_to_axial  # evaluation in the training orientation
  a, b = plain[1], axial[1]
  assert a["image"].shape == (20, 18, 16) and b["image"].shape == (16, 18, 20)
  np.testing.assert_array_equal(b["image"], np.transpose(a["image"], (2, 1, 0)))
  np.testing.assert_array_equal(b["label"], np.transpose(a["label"], (2, 1, 0)))
  assert b["label"].dtype == np.uint8 and b["case"] == ids[1] and not b["image"].flags.writeable
  assert len(axial) == 5 and axial[-1]["case"] == ids[-1]
  # Bad inputs name the file.
  write_case(brats.case_path(root, ids[2]), np.zeros((4, 4, 4)), np.full((4, 4, 4), 3))
  with pytest.raises(DataError, match=f"{ids[2]}.h5: label values \\[3\\]"):
    axial[2]
  with pytest.raises(DataError, match="nope.h5: case file not found"):
    brats.train_source(root, ["nope"], 2)[0]


def test_synthesize_is_deterministic_and_idempotent(tmp_path):
  root = _synth(tmp_path)
  first = brats.train_source(root, brats.read_list(root / "train.txt"), 2)[0]["image"].copy()
  mtime = brats.case_path(root, brats.read_list(root / "train.txt")[0]).stat().st_mtime_ns
  _synth(tmp_path)  # same settings: nothing rewritten
  assert brats.case_path(root, brats.read_list(root / "train.txt")[0]).stat().st_mtime_ns == mtime
  other = _synth(tmp_path / "again")
  np.testing.assert_array_equal(
    brats.train_source(other, brats.read_list(other / "train.txt"), 2)[0]["image"], first
  )
  assert len(brats.read_list(root / "test.txt")) == 1
  _synth(tmp_path, n_cases=6)  # different settings: regenerated
  assert len(brats.read_list(root / "train.txt")) == 6


def test_crop_then_rot_flip_stream(tmp_path):
  root = _synth(tmp_path)
  source = brats.train_source(root, brats.read_list(root / "train.txt"), 2)
  it = pipeline.make_train_iterator(
    source, [0, 1], [2, 3, 4], 4, 2, (16, 16, 16), seed=0, augment="crop_rot_flip"
  )
  batch = next(it)
  assert batch["image"].shape == (4, 16, 16, 16, 1) and batch["label"].shape == (4, 16, 16, 16)
  assert set(np.unique(batch["label"])) <= {0, 1}
