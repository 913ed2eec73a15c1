"""Tests for jaxseg.data.splits."""

import json

import pytest

from jaxseg.data.h5io import DataError
from jaxseg.data.splits import load_or_make_splits
from jaxseg.data.splits import make_splits
from jaxseg.data.splits import read_list
from jaxseg.data.splits import read_splits
from jaxseg.data.splits import write_splits

IDS = [f"id{i:02d}" for i in range(10)]


def test_read_list_strips_and_skips_blanks(tmp_path):
  path = tmp_path / "train.list"
  path.write_text(" a \n\nb\n  \nc")
  assert read_list(path) == ["a", "b", "c"]


def test_read_list_errors(tmp_path):
  with pytest.raises(DataError, match="not found") as e:
    read_list(tmp_path / "x.list")
  assert str(tmp_path / "x.list") in str(e.value)
  (tmp_path / "e.list").write_text("\n \n")
  with pytest.raises(DataError, match="empty"):
    read_list(tmp_path / "e.list")


def test_make_splits_values():
  s = make_splits(IDS, n_val=3, labeled=2)
  assert s["val"] == ["id07", "id08", "id09"]
  assert s["train"] == IDS[:7]
  assert s["labeled"] == ["id00", "id01"]
  assert s["unlabeled"] == IDS[2:7]
  s0 = make_splits(IDS, n_val=0, labeled=10)
  assert s0["val"] == [] and s0["unlabeled"] == [] and s0["labeled"] == IDS


@pytest.mark.parametrize(
  "ids, n_val, labeled, pattern",
  [
    (IDS, 10, 1, r"n_val=10 must be in \[0, 10\)"),
    (IDS, -1, 1, r"n_val=-1"),
    (IDS, 3, 8, r"labeled=8 must be in \[1, 7\]"),
    (IDS, 3, 0, r"labeled=0"),
    (IDS + ["id03"], 3, 2, r"duplicated: \['id03'\]"),
  ],
)
def test_make_splits_errors(ids, n_val, labeled, pattern):
  with pytest.raises(DataError, match=pattern):
    make_splits(ids, n_val, labeled)


def test_write_read_atomic(tmp_path):
  s = make_splits(IDS, 2, 4)
  write_splits(tmp_path / "splits.json", s)
  assert [p.name for p in tmp_path.iterdir()] == ["splits.json"]
  assert read_splits(tmp_path / "splits.json") == s


def test_load_or_make_reuses_and_rejects_changes(tmp_path):
  s = load_or_make_splits(tmp_path, IDS, n_val=2, labeled=4)
  assert json.loads((tmp_path / "splits.json").read_text())["labeled"] == IDS[:4]
  assert load_or_make_splits(tmp_path, IDS, n_val=2, labeled=4) == s
  with pytest.raises(DataError, match=r"differs from the config.*\['labeled', 'unlabeled'\]") as e:
    load_or_make_splits(tmp_path, IDS, n_val=2, labeled=5)
  assert str(tmp_path / "splits.json") in str(e.value)
  with pytest.raises(DataError, match="differs"):
    load_or_make_splits(tmp_path, IDS[::-1], n_val=2, labeled=4)


def test_corrupt_splits_file(tmp_path):
  (tmp_path / "splits.json").write_text("{not json")
  with pytest.raises(DataError, match="cannot read splits"):
    load_or_make_splits(tmp_path, IDS, 2, 4)
  (tmp_path / "splits.json").write_text('{"train": []}')
  with pytest.raises(DataError, match="lacks key"):
    load_or_make_splits(tmp_path, IDS, 2, 4)
