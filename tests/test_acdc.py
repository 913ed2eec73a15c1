"""Tests for jaxseg.data.acdc: layout, splits (patients -> slices), sources, errors, the synthetic
stand-in, the real shared ACDC subset, and a 2D end-to-end run (supervised UNet2d)."""

import ml_collections
import numpy as np
import pytest

from jaxseg import config_lib
from jaxseg.data import DATASETS
from jaxseg.data import DataError
from jaxseg.data import acdc
from jaxseg.data import get_dataset
from jaxseg.data.h5io import write_case
from tests.conftest import check_short_run
from tests.conftest import data_dir
from tests.conftest import require_shared_data

SYNTH = dict(n_cases=2, n_val=1, shape=(3, 40, 36), seed=0)


def _cfg(**kw):
  return ml_collections.ConfigDict(kw)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
  return acdc.synthesize(tmp_path_factory.mktemp("acdc"), _cfg(**SYNTH))


def test_registered_and_paths(tmp_path):
  assert get_dataset("acdc") is DATASETS["acdc"] is acdc.DATASET
  assert (
    acdc.slice_path(tmp_path, "p_frame01_slice_2") == tmp_path / "data/slices/p_frame01_slice_2.h5"
  )
  assert acdc.volume_path(tmp_path, "p_frame01") == tmp_path / "data/p_frame01.h5"


def test_patients_to_slices_is_the_ssl4mis_table_on_its_list():
  full = data_dir() / "ACDC" / "train_slices_full.list"
  require_shared_data(full)
  ids = full.read_text().split()
  for n_patients, n_slices in acdc.PATIENTS_TO_SLICES.items():
    assert acdc.labeled_slice_count(ids, n_patients) == n_slices


def test_labeled_slice_count_errors():
  ids = ["pA_f1_slice_0", "pA_f2_slice_0", "pB_f1_slice_0", "pB_f1_slice_1", "pC_f1_slice_0"]
  assert [acdc.labeled_slice_count(ids, n) for n in (1, 2, 3)] == [2, 4, 5]
  with pytest.raises(DataError, match="only 3 patients"):
    acdc.labeled_slice_count(ids, 4)
  with pytest.raises(DataError, match="SSL4MIS: 21 patients = 396 slices"):
    acdc.labeled_slice_count(ids, 21)
  with pytest.raises(DataError, match=">= 1"):
    acdc.labeled_slice_count(ids, 0)
  with pytest.raises(DataError, match="pA are not contiguous"):
    acdc.labeled_slice_count(ids + ["pA_f1_slice_9"], 1)


def test_synthesize_layout_is_deterministic_and_four_class(synth_root, tmp_path):
  names = {"train_slices.list", "train.list", "val.list", acdc.MANIFEST, "data"}
  assert {p.name for p in synth_root.iterdir()} == names
  slices = (synth_root / "train_slices.list").read_text().split()
  assert len(slices) == 2 * 2 * 3 and slices[0] == "patient001_frame01_slice_0"
  assert (synth_root / "val.list").read_text().split() == [
    "patient003_frame01",
    "patient003_frame02",
  ]
  again = acdc.synthesize(tmp_path, _cfg(**SYNTH))
  for s in slices[:4]:
    a = acdc.train_source(synth_root, [s])[0]
    b = acdc.train_source(again, [s])[0]
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  vol = acdc.val_source(synth_root, ["patient003_frame01"])[0]
  assert vol["image"].shape == (3, 40, 36) and vol["image"].dtype == np.float32
  assert set(np.unique(vol["label"]).tolist()) == {0, 1, 2, 3}
  assert 0.0 <= vol["image"].min() and vol["image"].max() <= 1.0  # min-max normalised
  assert not vol["label"][0].any()  # a background-only basal slice, as some ACDC slices
  # frame02 is the transposed in-plane shape (ACDC mixes e.g. 256x216 and 216x256).
  assert acdc.val_source(synth_root, ["patient003_frame02"])[0]["image"].shape == (3, 36, 40)


def test_make_splits_and_sources(synth_root):
  split = acdc.make_splits(synth_root, _cfg(labeled=1))
  assert len(split["labeled"]) == 6 and len(split["unlabeled"]) == 6  # 1 patient = 2 frames x 3
  assert split["train"] == split["labeled"] + split["unlabeled"]
  assert all(s.startswith("patient001_") for s in split["labeled"])
  src = acdc.train_source(synth_root, split["train"], 4)
  item = src[1]
  assert item["image"].shape == (40, 36) and item["label"].dtype == np.uint8
  assert item["case"] == split["train"][1] and not item["image"].flags.writeable
  assert src[1]["image"] is item["image"]  # cached
  assert "2 volumes" in repr(acdc.val_source(synth_root, split["val"], 4))
  with pytest.raises(DataError, match="only 2 patients"):
    acdc.make_splits(synth_root, _cfg(labeled=3))


def test_bad_inputs_name_the_file(synth_root, tmp_path, monkeypatch):
  monkeypatch.delenv(acdc.ENV_VAR, raising=False)
  with pytest.raises(DataError, match="data.root is empty.*SSL4MIS"):
    acdc.find_root(None)
  with pytest.raises(DataError, match="no train_slices.list"):
    acdc.find_root(tmp_path)
  monkeypatch.setenv(acdc.ENV_VAR, str(synth_root))
  assert acdc.find_root(None) == synth_root

  bad = tmp_path / "bad"
  write_case(
    acdc.slice_path(bad, "s_nan"), np.full((4, 4), np.nan, np.float32), np.zeros((4, 4), np.uint8)
  )
  write_case(
    acdc.slice_path(bad, "s_label"), np.zeros((4, 4), np.float32), np.full((4, 4), 4, np.uint8)
  )
  write_case(
    acdc.slice_path(bad, "s_3d"), np.zeros((2, 4, 4), np.float32), np.zeros((2, 4, 4), np.uint8)
  )
  src = acdc.train_source(bad, ["s_nan", "s_label", "s_3d", "s_missing"], 4)
  for i, pattern in enumerate(
    [
      "s_nan.h5: image has non-finite",
      r"s_label.h5: label values \[4\]",
      "s_3d.h5: expected a 2-D image",
      "s_missing.h5: case file not found",
    ]
  ):
    with pytest.raises(DataError, match=pattern):
      src[i]
  (bad / "train_slices.list").write_text("s_nan\ns_gone\n")
  (bad / "val.list").write_text("v\n")
  with pytest.raises(DataError, match="1 of 2 listed files are missing.*s_gone.h5"):
    acdc.make_splits(bad, _cfg(labeled=1))


def test_real_acdc_subset():
  root = data_dir() / "ACDC"
  require_shared_data(root / "train_slices.list")
  split = acdc.make_splits(acdc.find_root(root), _cfg(labeled=3))
  assert [len(split[k]) for k in ("train", "labeled", "unlabeled", "val")] == [256, 68, 188, 20]
  item = acdc.train_source(root, split["labeled"][:1])[0]
  assert item["image"].ndim == 2 and set(np.unique(item["label"]).tolist()) <= {0, 1, 2, 3}
  vol = acdc.val_source(root, split["val"][:1])[0]
  assert vol["image"].ndim == 3 and set(np.unique(vol["label"]).tolist()) == {0, 1, 2, 3}


def tiny_acdc_config(method: str = "supervised", steps: int = 2) -> ml_collections.ConfigDict:
  """The supervised UNet2d on the synthetic ACDC layout: 32x32 slices, width 4, 2 steps."""
  c = config_lib.run(
    method,
    seed=0,
    total_steps=steps,
    batch_size=2,
    labeled_batch_size=2,
    log_every_steps=1,
    checkpoint_every_steps=2,
  )
  c.model = ml_collections.ConfigDict(
    dict(name="unet2d", kwargs=dict(n_channels=1, n_classes=4, feature_chns=(4, 8, 16, 32, 64)))
  )
  c.data = config_lib.acdc_data(
    2, patch_size=(32, 32), synthetic=ml_collections.ConfigDict(SYNTH), spacing=None
  )  # ACDC h5 files carry no spacing
  c.optimizer = config_lib.sgd()
  c.eval = config_lib.parity_eval(every_steps=0)
  return c


def test_end_to_end_2d_supervised_run(tmp_path):
  summary = check_short_run(tiny_acdc_config(), tmp_path)
  assert summary["n_cases"] == 2 and summary["inference"].startswith("slice-wise")
  assert all(f"dice_class{c}" in summary for c in (1, 2, 3))
