"""NIH Pancreas-CT: TCIA DICOM series + NIfTI labels -> DTC's h5 layout.

Raw (TCIA collection "Pancreas-CT"): ``<raw>/**/PANCREAS_NNNN/**/*.dcm`` (one CT series per
patient) and ``<raw>/**/labelNNNN.nii.gz`` (TCIA_pancreas_labels-02-05-2017). DICOM is read with
pydicom (the library the upstream notebook used; it exposes InstanceNumber, the rescale slope /
intercept and the positions the stacking needs), NIfTI with nibabel, and the resampling is
SimpleITK's (the upstream interpolators, exactly).

Out (what jaxseg/data/pancreas.py reads; ids ``imageNNNN`` as MC-Net's lists):

  <out>/train.list, test.list     ids (default test: MC-Net's data/Pancreas/test.list)
  <out>/data/<id>.h5              image float32 (x, y, z), label uint8 {0, 1}

DTC ships no Pancreas preprocessing (its maintainer: "center crop and zero mean unit variance
normalization", HiLab-git/DTC issue #3); the layout's published preprocessing is
``ycwu1997/MC-Net: data/Pancreas/Pre-processing.ipynb``, followed here:

1. ``load_scan`` / ``get_pixels_hu``: the CT slices (Modality CT) sorted by InstanceNumber, stacked
   (slice, row, column) and converted to HU with the first slice's RescaleSlope / Intercept
   (float32); the image takes the label's spacing;
2. ``ImageResample``: both resampled to 1 mm (size ``int(size * spacing)``, spacing refined to
   ``size * spacing / new_size``), B-spline for the image, nearest neighbour for the label, then
   transposed to (x, y, z);
3. ``set_window_wl_ww``: window level 75, width 400, i.e. clip to [-125, 275], scale to [0, 1];
4. ``crop_roi``: x and y cropped to the label's bounding box widened by 25 voxels plus half the
   shortfall to 96 (``max(96 - (max - min), 0) // 2``) per side, clipped, end exclusive; z whole;
5. z-score over the cropped volume (float32).

The notebook stores the label as float32; the readers cast it to uint8, so we store uint8.
"""

import pathlib
import re

import numpy as np

from jaxseg.prepare import common
from jaxseg.prepare.common import PrepareError

LISTS = ("train.list", "test.list")  # what --splits DIR must hold
WINDOW = (75, 400)  # (level, width)
OUTPUT_SIZE = (96, 96)
MARGIN = 25
# ycwu1997/MC-Net data/Pancreas/test.list: the 20 held-out cases of the DTC / MC-Net protocol.
MCNET_TEST = (50, 59, 37, 60, 40, 74, 4, 46, 8, 54, 5, 73, 1, 39, 6, 67, 25, 51, 21, 9)
PATIENT = re.compile(r"PANCREAS_(\d{4})$")
LABEL = re.compile(r"^label(\d{4})\.nii(\.gz)?$")


def _case_id(number: str) -> str:
  return f"image{number}"


def find_cases(raw: pathlib.Path) -> list[common.RawCase]:
  """Patients ``PANCREAS_NNNN`` (their .dcm files anywhere below) paired with ``labelNNNN``.

  Raises:
    PrepareError: a patient without a label file, a label without a patient, or a patient folder
      holding no .dcm file.
  """
  patients = {
    m.group(1): p for p in raw.rglob("PANCREAS_*") if p.is_dir() and (m := PATIENT.search(p.name))
  }
  labels = {m.group(1): p for p in raw.rglob("label*") if (m := LABEL.match(p.name))}
  for number, folder in sorted(patients.items()):
    if number not in labels:
      raise PrepareError(f"{folder}: no label{number}.nii.gz found under {raw}")
  for number, path in sorted(labels.items()):
    if number not in patients:
      raise PrepareError(f"{path}: no DICOM folder PANCREAS_{number} found under {raw}")
  cases = []
  for number, folder in sorted(patients.items()):
    if not any(folder.rglob("*.dcm")):
      raise PrepareError(f"{folder}: no .dcm file")
    cases.append(common.RawCase(_case_id(number), {"dicom": folder, "label": labels[number]}))
  return cases


def _read_series(folder: pathlib.Path, headers_only: bool):
  import pydicom  # pylint: disable=g-import-not-at-top

  slices = []
  for path in sorted(folder.rglob("*.dcm")):
    try:
      ds = pydicom.dcmread(str(path), stop_before_pixels=headers_only)
    except Exception as e:  # InvalidDicomError, truncated files, ...
      raise PrepareError(f"{path}: cannot read as DICOM ({e})") from e
    if getattr(ds, "Modality", None) == "CT":
      slices.append((path, ds))
  if len(slices) < 2:
    raise PrepareError(f"{folder}: {len(slices)} CT slice(s); a volume needs at least 2")
  for path, ds in slices:
    for key in ("InstanceNumber", "Rows", "Columns", "PixelSpacing", "ImagePositionPatient"):
      if key not in ds:
        raise PrepareError(f"{path}: DICOM tag {key} missing")
  slices.sort(key=lambda s: int(s[1].InstanceNumber))
  return slices


def _series_grid(folder: pathlib.Path, slices) -> tuple[tuple[int, ...], tuple[float, ...]]:
  """(shape (x, y, z), spacing (x, y, z)) of a sorted series; the slice spacing is the distance of
  the first two positions' z, as ``load_scan``."""
  first = slices[0][1]
  shape = (int(first.Columns), int(first.Rows), len(slices))
  for path, ds in slices:
    if (int(ds.Columns), int(ds.Rows)) != shape[:2]:
      raise PrepareError(
        f"{path}: slice size {int(ds.Columns)}x{int(ds.Rows)} != "
        f"{shape[0]}x{shape[1]} of the series in {folder}"
      )
  z0, z1 = (float(ds.ImagePositionPatient[2]) for _, ds in slices[:2])
  dz = abs(z0 - z1)
  row, col = (float(v) for v in first.PixelSpacing)  # DICOM: (between rows, between columns)
  return shape, (col, row, dz)


def check(case: common.RawCase) -> None:
  slices = _read_series(case.files["dicom"], headers_only=True)
  grids = {
    "dicom": _series_grid(case.files["dicom"], slices),
    "label": common.nifti_header(case.files["label"]),
  }
  common.check_same_grid(case.files, grids, "dicom")


def _resample(array_zyx: np.ndarray, spacing_xyz, is_label: bool) -> np.ndarray:
  """MC-Net ``ImageResample`` to 1 mm; array in SimpleITK order (z, y, x) in and out."""
  import SimpleITK as sitk  # pylint: disable=g-import-not-at-top

  img = sitk.GetImageFromArray(array_zyx)
  img.SetSpacing([float(s) for s in spacing_xyz])
  size = np.array(img.GetSize())
  spacing = np.array(img.GetSpacing())
  new_size = size * spacing / 1.0
  refined = [float(s) for s in size * spacing / new_size]
  f = sitk.ResampleImageFilter()
  f.SetOutputDirection(img.GetDirection())
  f.SetOutputOrigin(img.GetOrigin())
  f.SetSize([int(s) for s in new_size])
  f.SetOutputSpacing(refined)
  f.SetInterpolator(sitk.sitkNearestNeighbor if is_label else sitk.sitkBSpline)
  return sitk.GetArrayFromImage(f.Execute(img))


def window(image: np.ndarray) -> np.ndarray:
  level, width = WINDOW
  lo, hi = level - width // 2, level + width // 2
  return (np.clip(image, lo, hi) - lo) / (hi - lo)


def crop_box(label: np.ndarray) -> list[tuple[int, int]]:
  """[(x0, x1), (y0, y1), (0, d)] as MC-Net ``crop_roi``: the label box widened by 25 + half the
  shortfall to 96 per side, clipped; end exclusive."""
  (minx, maxx), (miny, maxy), _ = common.bbox(label)
  w, h, d = label.shape
  px = max(OUTPUT_SIZE[0] - (maxx - minx), 0) // 2
  py = max(OUTPUT_SIZE[1] - (maxy - miny), 0) // 2
  return [
    (max(minx - px - MARGIN, 0), min(maxx + px + MARGIN, w)),
    (max(miny - py - MARGIN, 0), min(maxy + py + MARGIN, h)),
    (0, d),
  ]


def process(case: common.RawCase, options: dict) -> common.Processed:
  del options
  slices = _read_series(case.files["dicom"], headers_only=False)
  try:
    pixels = np.stack([ds.pixel_array for _, ds in slices]).astype(np.float32)
  except Exception as e:  # missing / short PixelData
    raise PrepareError(f"{case.files['dicom']}: cannot decode the pixel data ({e})") from e
  first = slices[0][1]
  slope, intercept = (
    float(getattr(first, "RescaleSlope", 1)),
    float(getattr(first, "RescaleIntercept", 0)),
  )
  hu = pixels * np.float32(slope) if slope != 1 else pixels
  hu = (hu + np.float32(intercept)).astype(np.float32)  # (z, y, x)
  label_xyz, spacing = common.load_nifti(case.files["label"])
  common.check_label_values(case.files["label"], label_xyz, (0, 1))
  if not label_xyz.any():
    raise PrepareError(f"{case.files['label']}: empty pancreas label; the crop box is undefined")
  label_zyx = np.ascontiguousarray(np.transpose(label_xyz, (2, 1, 0)).astype(np.uint8))
  if label_zyx.shape != hu.shape:
    raise PrepareError(
      f"{case.files['label']}: label shape {label_xyz.shape} != DICOM series "
      f"shape {hu.shape[::-1]} ({case.files['dicom']})"
    )
  image = np.transpose(_resample(hu, spacing, False), (2, 1, 0))
  label = np.transpose(_resample(label_zyx, spacing, True), (2, 1, 0))
  image = window(image)
  box = crop_box(label)
  sl = tuple(slice(a, b) for a, b in box)
  image, label = image[sl].astype(np.float32), label[sl].astype(np.uint8)
  image = (image - np.mean(image)) / np.std(image)
  return common.Processed(
    [common.Output(f"data/{case.case_id}.h5", {"image": image, "label": label})],
    {
      "spacing": list(spacing),
      "raw_shape": list(label_xyz.shape),
      "shape": list(image.shape),
      "crop": [list(b) for b in box],
      "intensity": common.array_stats(image),
      "label_values": np.unique(label).tolist(),
    },
  )


def write_lists(
  out: pathlib.Path, ids: list[str], records: dict, options: dict
) -> dict[str, list[str]]:
  lists = common.read_split_lists(options.get("splits"), LISTS)
  if lists is None:
    test = {_case_id(f"{n:04d}") for n in MCNET_TEST}
    lists = {
      "train.list": [i for i in sorted(ids) if i not in test],
      "test.list": [i for i in sorted(ids) if i in test],
    }
  for name, names in lists.items():
    common.write_list(out, name, names)
  return lists


PREPARER = common.Preparer(
  name="pancreas",
  find_cases=find_cases,
  check=check,
  process=process,
  write_lists=write_lists,
  split_lists=LISTS,
)
