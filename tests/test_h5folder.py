"""jaxseg/data/h5folder.py: a folder of h5 cases with list files, a configurable case pattern,
val.list or a carved-out validation, the stand-in writer, bad input, and a short training run."""

import ml_collections
import numpy as np
import pytest

from jaxseg.data import DATASETS
from jaxseg.data import get_dataset
from jaxseg.data import h5folder
from jaxseg.data.h5io import DataError
from jaxseg.data.h5io import load_case
from jaxseg.data.h5io import write_case
from tests.conftest import check_short_run
from tests.conftest import tiny_config


def _synth(tmp_path, pattern=h5folder.CASE_PATTERN, **kw):
  cfg = ml_collections.ConfigDict(dict(n_cases=6, n_val=2, n_test=1, shape=(12, 10, 8), seed=5))
  cfg.update(kw)
  return h5folder.synthesize(tmp_path / "mine", cfg, pattern=pattern)


def _data(**kw):
  return ml_collections.ConfigDict({**dict(labeled=2, n_val=2, name="h5folder"), **kw})


def test_registered_and_find_root(tmp_path, monkeypatch):
  assert DATASETS["h5folder"] is h5folder.DATASET and h5folder.DATASET.test_list == "test.list"
  monkeypatch.delenv("JAXSEG_DATA_DIR", raising=False)
  with pytest.raises(DataError, match="h5folder data not found.*data.root is empty"):
    h5folder.find_root(None)
  with pytest.raises(DataError, match=f"{tmp_path}.*no train.list.*Bring your own data"):
    h5folder.find_root(tmp_path)
  root = _synth(tmp_path)
  assert h5folder.find_root(root) == root


def test_val_list_and_labeled_first(tmp_path):
  root = _synth(tmp_path)
  train = (root / "train.list").read_text().split()
  val = (root / "val.list").read_text().split()
  assert len(train) == 6 and len(val) == 2 and (root / "test.list").read_text().split()
  split = get_dataset("h5folder", _data(labeled=3)).make_splits(root, _data(labeled=3))
  assert split == {"train": train, "val": val, "labeled": train[:3], "unlabeled": train[3:]}


def test_val_carved_from_train_without_val_list(tmp_path):
  root = _synth(tmp_path, n_val=0)
  assert not (root / "val.list").exists()
  ids = (root / "train.list").read_text().split()
  split = h5folder.make_splits(root, _data(labeled=2, n_val=2))
  assert split == {"train": ids[:4], "val": ids[4:], "labeled": ids[:2], "unlabeled": ids[2:4]}
  with pytest.raises(DataError, match="val.list not found and data.n_val is not set"):
    h5folder.make_splits(root, ml_collections.ConfigDict(dict(labeled=2)))


def test_case_pattern_binds_sources(tmp_path):
  pattern = "cases/{case}/volume.h5"
  root = _synth(tmp_path, pattern=pattern)
  ids = (root / "train.list").read_text().split()
  assert (root / "cases" / ids[0] / "volume.h5").is_file() and not (root / "data").exists()
  spec = get_dataset("h5folder", _data(case_pattern=pattern))
  split = spec.make_splits(root, _data(case_pattern=pattern))
  src = spec.train_source(root, split["labeled"] + split["unlabeled"], 2)
  image, label = load_case(root / "cases" / ids[1] / "volume.h5", 2)
  item = src[1]
  assert item["case"] == ids[1] and item["image"].dtype == np.float32
  np.testing.assert_array_equal(item["image"], image)
  np.testing.assert_array_equal(item["label"], label)
  assert 0 < item["label"].sum() < item["label"].size
  # The unbound spec looks for the default pattern and says which listed file is missing.
  with pytest.raises(DataError, match=f"6 of 6 listed cases have no file.*data/{ids[0]}.h5"):
    h5folder.make_splits(root, _data())


@pytest.mark.parametrize(
  "pattern",
  ["data/case.h5", "{case}/{case}.h5", "/abs/{case}.h5", "../{case}.h5", "data/{case}_{x}.h5"],
)
def test_bad_pattern(pattern):
  with pytest.raises(DataError, match="data.case_pattern"):
    get_dataset("h5folder", _data(case_pattern=pattern))


def test_bad_lists_and_cases(tmp_path):
  root = _synth(tmp_path)
  train = (root / "train.list").read_text().split()
  (root / "val.list").write_text(f"{train[0]}\ncase100\n")
  with pytest.raises(DataError, match="1 case ids are in both train.list and val.list"):
    h5folder.make_splits(root, _data())
  (root / "val.list").write_text("case100\ncase100\n")
  with pytest.raises(DataError, match="val.list: duplicated case ids \\['case100'\\]"):
    h5folder.make_splits(root, _data())
  (root / "val.list").write_text("case100\n")
  with pytest.raises(DataError, match="val.list: 1 of 1 listed cases have no file"):
    h5folder.make_splits(root, _data())
  (root / "val.list").unlink()
  with pytest.raises(DataError, match="labeled=5 must be in \\[1, 4\\]"):
    h5folder.make_splits(root, _data(labeled=5))
  write_case(h5folder.case_path(root, train[0]), np.zeros((4, 4, 4)), np.full((4, 4, 4), 2))
  with pytest.raises(DataError, match=f"{train[0]}.h5: label values \\[2\\]"):
    h5folder.source(root, train, 2)[0]


def test_normalize():
  x = np.arange(24, dtype=np.float64).reshape(2, 3, 4) * 3.0 + 7.0
  z = h5folder.normalize(x)
  want = (x - x.mean()) / x.std()
  assert z.dtype == np.float32
  np.testing.assert_allclose(z, want, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(h5folder.normalize(np.full((2, 2, 2), 5.0)), np.zeros((2, 2, 2)))


@pytest.mark.slow
def test_trains_two_steps(tmp_path):
  """A short run reads the folder through the builder (case pattern from the config)."""
  pattern = "vols/{case}.h5"
  root = _synth(tmp_path, pattern=pattern, n_cases=6, n_val=2, shape=(24, 24, 16))
  config = tiny_config("mean_teacher", steps=2)
  with config.unlocked():
    config.data.name = "h5folder"
    config.data.root = str(root)
    config.data.synthetic = None
    config.data.case_pattern = pattern
  summary = check_short_run(config, tmp_path / "run")
  assert summary["n_cases"] == 2
