"""Tests for jaxseg.prepare: for each release format, small raw cases written with the format's own
library (pynrrd, nibabel, pydicom, SimpleITK), prepared through the CLI, and the h5 content checked
against values computed here by hand; bad raw input; resuming; two training steps on the result."""

import json
import pathlib
import subprocess
import sys

import h5py
import nibabel as nib
import numpy as np
import pytest

from jaxseg import config_lib
from jaxseg.prepare import common
from jaxseg.prepare.__main__ import main
from tests.conftest import check_short_run

REPO = pathlib.Path(__file__).resolve().parents[1]


def _h5(path):
  with h5py.File(path, "r") as f:
    return {k: f[k][()] for k in f}


def _prepare(dataset, raw, out, *extra):
  assert main([dataset, "--raw", str(raw), "--out", str(out), *extra]) == 0
  return json.loads((out / "dataset.json").read_text())


def _assert_refused(capsys, dataset, raw, out, *needles):
  """The CLI exits 2 with a message naming ``needles`` (file and problem) and writes nothing."""
  assert main([dataset, "--raw", str(raw), "--out", str(out)]) == 2
  err = capsys.readouterr().err
  for needle in needles:
    assert str(needle) in err, err
  written = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
  assert written == []


def _zscore(x):
  x = np.asarray(x, np.float64)
  return (x - x.mean()) / x.std()


def _shrunk(config_file, arg, root, patch_size=(16, 16, 16)):
  """`config_file`'s recipe at test size, reading the prepared `root`, for 2 steps."""
  c = config_lib.load_config_module(REPO / "configs" / config_file).get_config(arg)
  c.model.kwargs.n_filters = 4
  c.data.patch_size = patch_size
  c.data.root = str(root)
  c.data.synthetic = None
  if "list_file" in c.data:  # validation carved from the train list
    c.data.n_val = 1
  c.total_steps = 2
  c.log_every_steps = 1
  c.checkpoint_every_steps = 2
  c.eval.every_steps = 0
  c.eval.max_cases = 1
  c.eval.stride_xy = c.eval.stride_z = 16
  return c


# ------------------------------------------------------------------------------------------------
# LA: NRRD (pynrrd)
# ------------------------------------------------------------------------------------------------

LA_SHAPE = (160, 150, 16)  # (x, y, z): large enough that the 112-wide crop is a real crop
LA_BOX = ((70, 80), (60, 75), (2, 12))  # label voxels, inclusive (x, y, z)


def _write_la(raw, case_id, seed, shape=LA_SHAPE, label_shape=None):
  import nrrd

  rng = np.random.default_rng(seed)
  image = rng.integers(0, 200, size=shape).astype(np.int16)
  label = np.zeros(label_shape or shape, np.uint8)
  small = ((10, 20), (8, 18), (2, 5))  # for the volumes smaller than 112 in-plane
  (x0, x1), (y0, y1), (z0, z1) = LA_BOX if shape[0] > LA_BOX[0][1] else small
  label[x0 : x1 + 1, y0 : y1 + 1, z0 : z1 + 1] = 255
  folder = raw / "Training Set" / case_id
  folder.mkdir(parents=True, exist_ok=True)
  header = {"space directions": np.diag([0.625] * 3), "space": "left-posterior-superior"}
  nrrd.write(str(folder / "lgemri.nrrd"), image, header)
  nrrd.write(str(folder / "laendo.nrrd"), label, header)
  return image, label


def test_la_crop_zscore_orientation_and_label(tmp_path):
  raws = {f"CASE{i}": _write_la(tmp_path / "raw", f"CASE{i}", i) for i in range(3)}
  fp = _prepare("la", tmp_path / "raw", tmp_path / "out")
  assert (tmp_path / "out" / "train.list").read_text() == "CASE0\nCASE1\nCASE2\n"
  # UA-MT: margin 10..19 per side plus half the shortfall to 112 of the label extent.
  px, py = (112 - 10) // 2, (112 - 15) // 2
  for case_id, (image, label) in raws.items():
    info = fp["cases"][case_id]
    (x0, x1), (y0, y1), (z0, z1) = info["crop"]
    assert 70 - px - 19 <= x0 <= 70 - px - 10 and 80 + px + 10 <= x1 <= 80 + px + 19
    assert max(60 - py - 19, 0) <= y0 <= 60 - py - 10 and 75 + py + 10 <= y1 <= 75 + py + 19
    assert (z0, z1) == (0, 16)
    h5 = _h5(tmp_path / "out" / "2018LA_Seg_Training Set" / case_id / "mri_norm2.h5")
    assert h5["image"].dtype == np.float32 and h5["label"].dtype == np.uint8
    assert h5["image"].shape == (x1 - x0, y1 - y0, 16)  # (x, y, z) as pynrrd reads
    # z-scored over the whole volume, then cropped: the crop's mean is not 0.
    np.testing.assert_allclose(h5["image"], _zscore(image)[x0:x1, y0:y1], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(h5["label"], (label == 255)[x0:x1, y0:y1])
    assert info["label_values"] == [0, 1] and info["spacing"] == [0.625] * 3
    assert info["outputs"][f"2018LA_Seg_Training Set/{case_id}/mri_norm2.h5"]["sha256"] == (
      common.sha256(tmp_path / "out" / "2018LA_Seg_Training Set" / case_id / "mri_norm2.h5")
    )
  # The margins depend on the seed and the case: not all three boxes are the same.
  assert len({json.dumps(fp["cases"][c]["crop"]) for c in raws}) > 1


def test_la_resume_after_interruption_gives_the_same_files(tmp_path, monkeypatch, capsys):
  from jaxseg.prepare import la

  for i in range(3):
    _write_la(tmp_path / "raw", f"CASE{i}", i, shape=(40, 36, 8))
  straight = _prepare("la", tmp_path / "raw", tmp_path / "straight")
  calls = []
  real = la.PREPARER.process

  def crash_on_second(case, options):
    calls.append(case.case_id)
    if len(calls) == 2:
      raise KeyboardInterrupt
    return real(case, options)

  monkeypatch.setattr(la.PREPARER, "process", crash_on_second)
  with pytest.raises(KeyboardInterrupt):
    main(["la", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "out")])
  assert calls == ["CASE0", "CASE1"]
  assert not (tmp_path / "out" / "dataset.json").exists()
  assert not list((tmp_path / "out").rglob("*.tmp"))
  capsys.readouterr()
  resumed = _prepare("la", tmp_path / "raw", tmp_path / "out")
  out = capsys.readouterr().out
  assert "[prepare] la 1/3 CASE0 already prepared, skipped" in out
  assert "[prepare] la 2/3 CASE1 -> 1 file(s)" in out and "[prepare] la 3/3 CASE2" in out
  assert calls == ["CASE0", "CASE1", "CASE1", "CASE2"]  # CASE0 was not processed again
  for c in straight["cases"]:
    assert resumed["cases"][c]["crop"] == straight["cases"][c]["crop"]
    for relpath in straight["cases"][c]["outputs"]:
      expected, got = _h5(tmp_path / "straight" / relpath), _h5(tmp_path / "out" / relpath)
      for key in ("image", "label"):
        np.testing.assert_array_equal(got[key], expected[key])
  # --overwrite redoes every case.
  _prepare("la", tmp_path / "raw", tmp_path / "out", "--overwrite")
  assert "already prepared" not in capsys.readouterr().out


def test_la_bad_input_is_refused_with_nothing_written(tmp_path, capsys):
  _write_la(tmp_path / "a", "CASE0", 0, shape=(40, 36, 8))
  _write_la(tmp_path / "a", "CASE1", 1, shape=(40, 36, 8), label_shape=(40, 36, 9))
  _assert_refused(
    capsys,
    "la",
    tmp_path / "a",
    tmp_path / "out_a",
    tmp_path / "a" / "Training Set" / "CASE1" / "laendo.nrrd",
    "shape (40, 36, 9)",
  )
  _write_la(tmp_path / "b", "CASE0", 0, shape=(40, 36, 8))
  _write_la(tmp_path / "b", "CASE1", 1, shape=(40, 36, 8))
  bad = tmp_path / "b" / "Training Set" / "CASE1" / "lgemri.nrrd"
  bad.write_bytes(b"\x00garbage")
  _assert_refused(capsys, "la", tmp_path / "b", tmp_path / "out_b", bad, "cannot read as NRRD")
  (tmp_path / "b" / "Training Set" / "CASE1" / "laendo.nrrd").unlink()
  _assert_refused(capsys, "la", tmp_path / "b", tmp_path / "out_c", "laendo.nrrd", "label missing")


def test_la_upstream_split_lists_are_copied_and_checked(tmp_path, capsys):
  for i in range(3):
    _write_la(tmp_path / "raw", f"CASE{i}", i, shape=(40, 36, 8))
  splits = tmp_path / "uamt_data"
  splits.mkdir()
  (splits / "train.list").write_text("CASE2\nCASE0\n")
  (splits / "test.list").write_text("CASE1\n")
  fp = _prepare("la", tmp_path / "raw", tmp_path / "out", "--splits", str(splits))
  assert (tmp_path / "out" / "train.list").read_text() == "CASE2\nCASE0\n"  # upstream order kept
  assert (tmp_path / "out" / "test.list").read_text() == "CASE1\n"
  assert fp["lists"] == {"train.list": 2, "test.list": 1}
  (splits / "test.list").write_text("CASE1\nCASE9\n")
  assert (
    main(
      [
        "la",
        "--raw",
        str(tmp_path / "raw"),
        "--out",
        str(tmp_path / "out2"),
        "--splits",
        str(splits),
      ]
    )
    == 2
  )
  err = capsys.readouterr().err
  assert str(splits / "test.list") in err and "CASE9" in err
  assert not (tmp_path / "out2").exists()  # checked before any case is processed


def test_la_case_failing_in_processing_writes_nothing_of_its_own(tmp_path, capsys):
  import nrrd

  for i in range(2):
    _write_la(tmp_path / "raw", f"CASE{i}", i, shape=(40, 36, 8))
  label_path = tmp_path / "raw" / "Training Set" / "CASE1" / "laendo.nrrd"
  label, header = nrrd.read(str(label_path))
  label[0, 0, 0] = 128
  nrrd.write(str(label_path), label, header)
  assert main(["la", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err
  assert str(label_path) in err and "label values [128]" in err
  out = tmp_path / "out"
  assert not (out / "2018LA_Seg_Training Set" / "CASE1").exists()
  assert not (out / "dataset.json").exists() and not (out / "train.list").exists()
  assert not list(out.rglob("*.tmp"))
  # The case before it is complete and recorded: a re-run after the fix skips it.
  assert (out / ".prepare" / "CASE0.json").is_file()


@pytest.mark.slow
def test_la_subprocess_cli_and_two_training_steps(tmp_path):
  for i in range(5):
    _write_la(tmp_path / "raw", f"CASE{i}", i, shape=(40, 36, 16))
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "jaxseg.prepare",
      "la",
      "--raw",
      str(tmp_path / "raw"),
      "--out",
      str(tmp_path / "out"),
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr
  assert "[prepare] la 5/5 CASE4 -> 1 file(s)" in proc.stdout
  c = _shrunk("la_vnet.py", "labeled=4,seed=0", tmp_path / "out")
  summary = check_short_run(c, tmp_path / "run")
  assert summary["n_cases"] == 1


# ------------------------------------------------------------------------------------------------
# ACDC: NIfTI with _gt (nibabel)
# ------------------------------------------------------------------------------------------------

ACDC_SHAPE = (20, 18, 4)  # (x, y, slices) as stored in the NIfTI


def _write_acdc(raw, patient, seed, gt_zooms=(1.5, 1.5, 10.0)):
  rng = np.random.default_rng(seed)
  frames = {}
  for frame in (1, 12):
    image = rng.integers(0, 700, size=ACDC_SHAPE).astype(np.int16)
    label = rng.integers(0, 4, size=ACDC_SHAPE).astype(np.uint8)
    folder = raw / "training" / f"patient{patient:03d}"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"patient{patient:03d}_frame{frame:02d}"
    nib.save(nib.Nifti1Image(image, np.diag([1.5, 1.5, 10.0, 1.0])), folder / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(label, np.diag([*gt_zooms, 1.0])), folder / f"{name}_gt.nii.gz")
    frames[name] = (image, label)
  return frames


def test_acdc_minmax_slices_and_lists(tmp_path):
  frames = {}
  for p in range(1, 6):
    frames |= _write_acdc(tmp_path / "raw", p, p)
  fp = _prepare("acdc", tmp_path / "raw", tmp_path / "out")
  out = tmp_path / "out"
  for name, (image, label) in frames.items():
    vol = _h5(out / "data" / f"{name}.h5")
    # SSL4MIS stores SimpleITK's (slices, H, W) = the NIfTI (x, y, z) transposed.
    expected = image.transpose(2, 1, 0).astype(np.float64)
    expected = (expected - image.min()) / (image.max() - image.min())
    assert vol["image"].shape == (4, 18, 20) and vol["image"].dtype == np.float32
    np.testing.assert_allclose(vol["image"], expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(vol["label"], label.transpose(2, 1, 0))
    for k in range(4):
      sl = _h5(out / "data" / "slices" / f"{name}_slice_{k}.h5")
      np.testing.assert_array_equal(sl["image"], vol["image"][k])
      np.testing.assert_array_equal(sl["label"], vol["label"][k])
    assert fp["cases"][name]["label_values"] == sorted(np.unique(label).tolist())
  # 5 patients: the last 1 val, the 1 before it test, 3 train (both frames of each).
  read = lambda n: (out / n).read_text().split()
  assert read("val.list") == ["patient005_frame01", "patient005_frame12"]
  assert read("test.list") == ["patient004_frame01", "patient004_frame12"]
  assert read("train.list") == [f"patient00{p}_frame{f}" for p in (1, 2, 3) for f in ("01", "12")]
  assert read("train_slices.list")[:5] == [f"patient001_frame01_slice_{k}" for k in range(4)] + [
    "patient001_frame12_slice_0"
  ]
  assert len(read("train_slices.list")) == 24


@pytest.mark.slow
def test_acdc_prepared_set_trains_two_steps(tmp_path):
  for p in range(1, 6):
    _write_acdc(tmp_path / "raw", p, p)
  out = tmp_path / "out"
  _prepare("acdc", tmp_path / "raw", out)
  c = config_lib.load_config_module(REPO / "configs" / "acdc_bcp.py").get_config("labeled=1,seed=0")
  c.total_steps, c.bcp.pretrain_steps = 2, 1
  c.batch_size, c.labeled_batch_size = 4, 2
  c.data.patch_size = (32, 32)  # the 2D UNet halves it four times
  c.model.kwargs.feature_chns = (4, 8, 16, 32, 64)
  c.data.root = str(out)
  c.data.synthetic = None
  c.eval.every_steps = 0
  c.eval.max_cases = 1
  c.log_every_steps = 1
  check_short_run(c, tmp_path / "run")


def test_acdc_bad_input(tmp_path, capsys):
  _write_acdc(tmp_path / "a", 1, 1, gt_zooms=(1.5, 1.5, 5.0))
  _assert_refused(
    capsys, "acdc", tmp_path / "a", tmp_path / "out", "patient001_frame01_gt.nii.gz", "spacing"
  )
  _write_acdc(tmp_path / "b", 1, 1)
  (tmp_path / "b" / "training" / "patient001" / "patient001_frame12_gt.nii.gz").unlink()
  _assert_refused(
    capsys,
    "acdc",
    tmp_path / "b",
    tmp_path / "out",
    "patient001_frame12_gt.nii.gz",
    "label missing",
  )


# ------------------------------------------------------------------------------------------------
# BraTS 2019: NIfTI per modality (nibabel)
# ------------------------------------------------------------------------------------------------

BRATS_SHAPE = (24, 22, 20)
BRAIN = ((3, 20), (2, 19), (4, 18))  # nonzero FLAIR voxels, inclusive


def _write_brats(raw, case_id, seed, seg_zooms=(1.0, 1.0, 1.0), modalities=("flair", "t1")):
  rng = np.random.default_rng(seed)
  flair = np.zeros(BRATS_SHAPE, np.int16)
  (x0, x1), (y0, y1), (z0, z1) = BRAIN
  flair[x0 : x1 + 1, y0 : y1 + 1, z0 : z1 + 1] = rng.integers(1, 101, size=(18, 18, 15))
  flair[10, 10, 10] = 5000  # one outlier above the 99.9 % point
  seg = np.zeros(BRATS_SHAPE, np.uint8)
  seg[8:14, 8:12, 8:12] = rng.choice([1, 2, 4], size=(6, 4, 4))
  folder = raw / "HGG" / case_id
  folder.mkdir(parents=True, exist_ok=True)
  for m in modalities:
    nib.save(nib.Nifti1Image(flair, np.eye(4)), folder / f"{case_id}_{m}.nii.gz")
  nib.save(nib.Nifti1Image(seg, np.diag([*seg_zooms, 1.0])), folder / f"{case_id}_seg.nii.gz")
  return flair, seg


def test_brats_brain_box_clip_zscore(tmp_path):
  raws = {f"BraTS19_X_{i}": _write_brats(tmp_path / "raw", f"BraTS19_X_{i}", i) for i in range(6)}
  fp = _prepare("brats", tmp_path / "raw", tmp_path / "out")
  for case_id, (flair, seg) in raws.items():
    h5 = _h5(tmp_path / "out" / "data" / f"{case_id}.h5")
    # Box end exclusive of the last brain voxel (SSL4MIS brain_bbox slices [min:max]).
    box = tuple(slice(lo, hi) for lo, hi in BRAIN)
    crop = flair[box].astype(np.float64)
    assert h5["image"].shape == (17, 17, 14) and fp["cases"][case_id]["crop"] == [
      list(b) for b in BRAIN
    ]
    # 4046 voxels: (n - 1) / n >= 0.999, so the 99.9 % point is the largest ordinary value.
    w = np.sort(crop.ravel())[-2]
    crop = np.clip(crop, crop.min(), w)
    pos = crop[crop > 0]
    np.testing.assert_allclose(h5["image"], (crop - pos.mean()) / pos.std(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(h5["label"], (seg[box] > 0).astype(np.uint8))
    assert h5["label"].dtype == np.uint8 and fp["cases"][case_id]["label_values"] == [0, 1]
  read = lambda n: (tmp_path / "out" / n).read_text().split()
  assert (read("train.txt"), read("test.txt"), read("val.txt")) == (
    [f"BraTS19_X_{i}" for i in range(4)],
    ["BraTS19_X_4"],
    ["BraTS19_X_5"],
  )


@pytest.mark.slow
def test_brats_prepared_set_trains_two_steps(tmp_path):
  for i in range(6):
    _write_brats(tmp_path / "raw", f"BraTS19_X_{i}", i)
  _prepare("brats", tmp_path / "raw", tmp_path / "out")
  c = _shrunk("brats_dycon.py", "labeled=2", tmp_path / "out")
  c.batch_size, c.labeled_batch_size = 4, 2
  c.model.kwargs.proj_hidden, c.model.kwargs.proj_features = 32, 16
  check_short_run(c, tmp_path / "run")


def test_brats_bad_input(tmp_path, capsys):
  _write_brats(tmp_path / "a", "B1", 0, modalities=("t1", "t2"))
  _assert_refused(capsys, "brats", tmp_path / "a", tmp_path / "out", "B1_flair.nii.gz", "missing")
  _write_brats(tmp_path / "b", "B1", 0, seg_zooms=(1.0, 1.0, 2.0))
  _assert_refused(
    capsys, "brats", tmp_path / "b", tmp_path / "out", "B1_seg.nii.gz", "spacing (1.0, 1.0, 2.0)"
  )
  _write_brats(tmp_path / "c", "B1", 0)
  bad = tmp_path / "c" / "HGG" / "B1" / "B1_seg.nii.gz"
  bad.write_bytes(bad.read_bytes()[:60])
  _assert_refused(capsys, "brats", tmp_path / "c", tmp_path / "out", bad, "cannot read")


# ------------------------------------------------------------------------------------------------
# Pancreas-CT: DICOM series (pydicom) + NIfTI label (nibabel)
# ------------------------------------------------------------------------------------------------

PANC_XYZ = (170, 160, 4)  # columns, rows, slices
PANC_BOX = ((80, 84), (70, 75))  # label x / y, inclusive


def _write_dicom_series(folder, pixels_zyx, spacing=(1.0, 1.0, 1.0), intercept=-1024):
  import pydicom
  from pydicom.dataset import FileMetaDataset
  from pydicom.uid import CTImageStorage
  from pydicom.uid import ExplicitVRLittleEndian
  from pydicom.uid import generate_uid

  folder.mkdir(parents=True, exist_ok=True)
  series = generate_uid()
  for k, plane in enumerate(pixels_zyx):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.Modality = series, "CT"
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [0.0, 0.0, float(k * spacing[2])]
    ds.PixelSpacing = [spacing[1], spacing[0]]
    ds.Rows, ds.Columns = plane.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, intercept
    ds.PixelData = plane.astype(np.uint16).tobytes()
    # Files named against their InstanceNumber order, so sorting must come from the tag.
    ds.save_as(str(folder / f"{len(pixels_zyx) - k:03d}.dcm"), enforce_file_format=True)


def _write_pancreas(raw, number, seed, label_zooms=(1.0, 1.0, 1.0)):
  rng = np.random.default_rng(seed)
  pixels = rng.integers(700, 1500, size=PANC_XYZ[::-1]).astype(np.uint16)  # (z, y, x)
  _write_dicom_series(raw / "Pancreas-CT" / f"PANCREAS_{number:04d}" / "1.2.3" / "4.5.6", pixels)
  label = np.zeros(PANC_XYZ, np.uint8)
  (x0, x1), (y0, y1) = PANC_BOX
  label[x0 : x1 + 1, y0 : y1 + 1, 1:3] = 1
  (raw / "labels").mkdir(parents=True, exist_ok=True)
  nib.save(
    nib.Nifti1Image(label, np.diag([*label_zooms, 1.0])),
    raw / "labels" / f"label{number:04d}.nii.gz",
  )
  return pixels, label


def test_pancreas_hu_window_crop_zscore(tmp_path):
  raws = {f"image{n:04d}": _write_pancreas(tmp_path / "raw", n, n) for n in (1, 2, 3, 7, 10, 11)}
  fp = _prepare("pancreas", tmp_path / "raw", tmp_path / "out")
  # MC-Net crop_roi: label box + half the shortfall to 96 + 25 per side, clipped.
  px, py = (96 - 4) // 2, (96 - 5) // 2
  x0, x1 = 80 - px - 25, 84 + px + 25
  y0, y1 = max(70 - py - 25, 0), 75 + py + 25
  for case_id, (pixels, label) in raws.items():
    h5 = _h5(tmp_path / "out" / "data" / f"{case_id}.h5")
    assert fp["cases"][case_id]["crop"] == [[x0, x1], [y0, y1], [0, 4]]
    hu = pixels.transpose(2, 1, 0).astype(np.float64) - 1024  # (x, y, z)
    windowed = (np.clip(hu, -125, 275) + 125) / 400
    # 1 mm input: the B-spline resampling to 1 mm reproduces the grid (to float32 rounding).
    np.testing.assert_allclose(h5["image"], _zscore(windowed[x0:x1, y0:y1]), atol=2e-3)
    np.testing.assert_array_equal(h5["label"], label[x0:x1, y0:y1])
    assert h5["label"].dtype == np.uint8 and h5["image"].shape == (x1 - x0, y1 - y0, 4)
  read = lambda n: (tmp_path / "out" / n).read_text().split()
  # image0001 is in MC-Net's test list.
  assert (read("train.list"), read("test.list")) == (
    ["image0002", "image0003", "image0007", "image0010", "image0011"],
    ["image0001"],
  )


@pytest.mark.slow
def test_pancreas_prepared_set_trains_two_steps(tmp_path):
  for n in (1, 2, 3, 7, 10, 11):
    _write_pancreas(tmp_path / "raw", n, n)
  _prepare("pancreas", tmp_path / "raw", tmp_path / "out")
  c = _shrunk("pancreas_dtc.py", "labeled=2,seed=0", tmp_path / "out")
  check_short_run(c, tmp_path / "run")


def test_pancreas_bad_input(tmp_path, capsys):
  _write_pancreas(tmp_path / "a", 1, 1, label_zooms=(1.0, 1.0, 2.5))
  _assert_refused(
    capsys, "pancreas", tmp_path / "a", tmp_path / "out", "label0001.nii.gz", "spacing"
  )
  _write_pancreas(tmp_path / "b", 1, 1)
  (tmp_path / "b" / "labels" / "label0001.nii.gz").unlink()
  _assert_refused(
    capsys, "pancreas", tmp_path / "b", tmp_path / "out", "PANCREAS_0001", "no label0001"
  )
  _write_pancreas(tmp_path / "c", 1, 1)
  bad = next((tmp_path / "c").rglob("002.dcm"))
  bad.write_bytes(b"not a dicom file")
  _assert_refused(capsys, "pancreas", tmp_path / "c", tmp_path / "out", bad, "cannot read as DICOM")


# ------------------------------------------------------------------------------------------------
# PROMISE12: MetaImage .mhd/.raw (SimpleITK)
# ------------------------------------------------------------------------------------------------


def _write_promise(raw, case_id, seed, size_xyz, label_spacing=(1.0, 1.0, 1.5)):
  import SimpleITK as sitk

  rng = np.random.default_rng(seed)
  image = rng.integers(0, 900, size=size_xyz[::-1]).astype(np.int16)  # SimpleITK (z, y, x)
  label = np.zeros(size_xyz[::-1], np.uint8)
  label[3:7, 5:10, 4:9] = 1
  raw.mkdir(parents=True, exist_ok=True)
  for array, name, spacing in (
    (image, f"{case_id}.mhd", (1.0, 1.0, 1.5)),
    (label, f"{case_id}_segmentation.mhd", label_spacing),
  ):
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(raw / name))
  return image.transpose(2, 1, 0), label.transpose(2, 1, 0)  # (x, y, z)


def test_promise12_rescale_resample_centre_crop_zscore(tmp_path):
  raws = {
    "Case00": _write_promise(tmp_path / "raw", "Case00", 0, (20, 18, 10)),
    "Case01": _write_promise(tmp_path / "raw", "Case01", 1, (12, 18, 10)),
  }
  fp = _prepare("promise12", tmp_path / "raw", tmp_path / "out", "--vol_size", "16,16,8")
  assert (tmp_path / "out" / "train.list").read_text() == "Case00\nCase01\n"
  for case_id, (image, label) in raws.items():
    h5 = _h5(tmp_path / "out" / "data" / f"{case_id}.h5")
    # Spacing already 1 x 1 x 1.5: the linear resampling keeps the grid, and pads with 0 to the
    # crop size; centre crop start int(size / 2 - 16 / 2) per axis.
    nx = image.shape[0]
    size = (max(nx, 16), 18, 10)
    start = [int(s / 2 - v / 2) for s, v in zip(size, (16, 16, 8))]
    assert fp["cases"][case_id]["crop_start"] == start
    scaled = np.zeros(size)
    scaled[:nx] = (image - image.min()) / (image.max() - image.min())
    lab = np.zeros(size, np.uint8)
    lab[:nx] = label
    sl = tuple(slice(s, s + v) for s, v in zip(start, (16, 16, 8)))
    crop = scaled[sl]
    pos = crop[crop > 0]
    assert h5["image"].shape == (16, 16, 8)
    np.testing.assert_allclose(h5["image"], (crop - pos.mean()) / pos.std(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(h5["label"], lab[sl])
    assert fp["cases"][case_id]["label_values"] == [0, 1]


@pytest.mark.slow
def test_promise12_prepared_set_trains_two_steps(tmp_path):
  for i in range(4):
    _write_promise(tmp_path / "raw", f"Case{i:02d}", i, (20, 18, 12))
  _prepare("promise12", tmp_path / "raw", tmp_path / "out", "--vol_size", "16,16,16")
  c = config_lib.load_config_module(REPO / "configs" / "promise12_vnet.py").get_config(
    "smoke=1,labeled=2"
  )
  c.data.name, c.data.root, c.data.synthetic, c.data.n_val = (
    "promise12",
    str(tmp_path / "out"),
    None,
    1,
  )
  c.total_steps = 2
  summary = check_short_run(c, tmp_path / "run")
  assert summary["n_cases"] == 1


def test_promise12_bad_input(tmp_path, capsys):
  _write_promise(tmp_path / "a", "Case00", 0, (12, 10, 6), label_spacing=(1.0, 1.0, 3.0))
  _assert_refused(
    capsys, "promise12", tmp_path / "a", tmp_path / "out", "Case00_segmentation.mhd", "spacing"
  )
  _write_promise(tmp_path / "b", "Case00", 0, (12, 10, 6))
  (tmp_path / "b" / "Case00.raw").unlink()
  _assert_refused(
    capsys, "promise12", tmp_path / "b", tmp_path / "out", "Case00.mhd", "cannot read"
  )


# ------------------------------------------------------------------------------------------------
# ISLES 2022: BIDS NIfTI (nibabel)
# ------------------------------------------------------------------------------------------------

ISLES_SHAPE = (16, 14, 6)


def _write_isles(raw, number, seed, msk_shape=ISLES_SHAPE, roles=("dwi", "adc", "FLAIR")):
  rng = np.random.default_rng(seed)
  sub = f"sub-strokecase{number:04d}"
  arrays = {
    "dwi": rng.normal(300, 50, ISLES_SHAPE).astype(np.float32),
    "adc": rng.normal(800, 90, ISLES_SHAPE).astype(np.float32),
    "FLAIR": rng.normal(100, 9, (20, 20, 8)).astype(np.float32),
  }
  affine = np.diag([2.0, 2.0, 2.0, 1.0])
  for role in roles:
    folder = raw / sub / "ses-0001" / ("anat" if role == "FLAIR" else "dwi")
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arrays[role], affine), folder / f"{sub}_ses-0001_{role}.nii.gz")
  msk = (rng.random(msk_shape) > 0.9).astype(np.uint8)
  folder = raw / "derivatives" / sub / "ses-0001"
  folder.mkdir(parents=True, exist_ok=True)
  nib.save(nib.Nifti1Image(msk, affine), folder / f"{sub}_ses-0001_msk.nii.gz")
  return arrays, msk


def test_isles_dwi_adc_mask_and_dycon_lists(tmp_path):
  raws = {n: _write_isles(tmp_path / "raw", n, n) for n in (1, 2, 3, 4)}
  fp = _prepare("isles", tmp_path / "raw", tmp_path / "out")
  for n, (arrays, msk) in raws.items():
    case_id = f"sub-strokecase{n:04d}"
    h5 = _h5(tmp_path / "out" / "data" / f"{case_id}.h5")
    assert sorted(h5) == ["adc", "image", "label"]
    np.testing.assert_array_equal(h5["image"], arrays["dwi"])  # (x, y, z), no normalisation
    np.testing.assert_array_equal(h5["adc"], arrays["adc"])
    np.testing.assert_array_equal(h5["label"], msk)
    assert h5["image"].dtype == np.float32 and h5["label"].dtype == np.uint8
    assert fp["cases"][case_id]["spacing"] == [2.0, 2.0, 2.0]
    assert fp["cases"][case_id]["shape"] == list(ISLES_SHAPE)
    np.testing.assert_allclose(
      fp["cases"][case_id]["intensity"]["mean"], arrays["dwi"].astype(np.float64).mean(), rtol=1e-12
    )
    np.testing.assert_allclose(
      fp["cases"][case_id]["adc_intensity"]["std"],
      arrays["adc"].astype(np.float64).std(),
      rtol=1e-12,
    )
    assert fp["cases"][case_id]["label_values"] == sorted(np.unique(msk).tolist())
  read = lambda n: (tmp_path / "out" / n).read_text().split()
  # DyCON: 0001 is in test.list, 0002 in val.list.
  assert read("train.list") == ["sub-strokecase0003", "sub-strokecase0004"]
  assert (read("val.list"), read("test.list")) == (["sub-strokecase0002"], ["sub-strokecase0001"])
  assert fp["lists"] == {"train.list": 2, "val.list": 1, "test.list": 1}
  assert fp["list_sha256"]["val.list"] == common.sha256(tmp_path / "out" / "val.list")


@pytest.mark.slow
def test_isles_prepared_set_trains_two_steps(tmp_path):
  for n in range(2, 8):  # DyCON's split puts some of these on val.list, the rest on train.list
    _write_isles(tmp_path / "raw", n, n)
  _prepare("isles", tmp_path / "raw", tmp_path / "out")
  c = config_lib.load_config_module(REPO / "configs" / "isles_dycon.py").get_config(
    "smoke=1,labeled=2"
  )
  c.data.root, c.data.synthetic = str(tmp_path / "out"), None
  c.batch_size, c.labeled_batch_size, c.total_steps = 4, 2, 2
  summary = check_short_run(c, tmp_path / "run")
  assert summary["n_cases"] == len((tmp_path / "out" / "val.list").read_text().split())


def test_isles_bad_input(tmp_path, capsys):
  _write_isles(tmp_path / "a", 1, 1, roles=("dwi", "FLAIR"))
  _assert_refused(
    capsys, "isles", tmp_path / "a", tmp_path / "out", "sub-strokecase0001", "ADC missing"
  )
  _write_isles(tmp_path / "b", 1, 1, msk_shape=(16, 14, 7))
  _assert_refused(
    capsys,
    "isles",
    tmp_path / "b",
    tmp_path / "out",
    "sub-strokecase0001_ses-0001_msk.nii.gz",
    "shape (16, 14, 7)",
  )
