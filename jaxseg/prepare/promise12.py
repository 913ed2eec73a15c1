"""PROMISE12: the challenge release (MetaImage .mhd/.raw) -> ``<out>/data/<case>.h5``.

Raw (the 50 training cases): ``<raw>/**/CaseNN.mhd`` and ``CaseNN_segmentation.mhd`` (prostate
0 / 1), each with its .raw data file. Read with SimpleITK, which reads MetaImage natively and
whose resampler is the one the V-Net release used.

Out (what jaxseg/data/promise12.py reads):

  <out>/train.list            every case, sorted (the challenge's test labels are not public)
  <out>/data/<case>.h5        image float32 (x, y, z), label uint8 {0, 1}

Processing follows the original V-Net release, ``faustomilletari/VNet: DataManager.py`` with the
``main.py`` parameters (dstRes 1 x 1 x 1.5 mm, VolSize 128 x 128 x 64, normDir False):

1. image cast to float32 and min-max rescaled to [0, 1] (``RescaleIntensityImageFilter``); label
   binarised ``> 0.5``;
2. both resampled with LINEAR interpolation onto the 1 x 1 x 1.5 mm grid with the image's origin and
   direction, size ``max(int(size * spacing / dstRes), VolSize)`` per axis (outside the volume: 0);
   the label is binarised again ``> 0.5``;
3. centre crop ``VolSize`` from ``int(size / 2 - VolSize / 2)``; array transposed to (x, y, z);
4. z-score with the mean and std of the voxels > 0 (V-Net's training-time normalisation, applied
   here once so the h5 is what the network is fed).

``--vol_size X,Y,Z`` changes VolSize (the tests use a small one).
"""

import pathlib

import numpy as np

from jaxseg.prepare import common
from jaxseg.prepare.common import PrepareError

LISTS = ("train.list",)  # what --splits DIR must hold
DST_RES = (1.0, 1.0, 1.5)
VOL_SIZE = (128, 128, 64)


def find_cases(raw: pathlib.Path) -> list[common.RawCase]:
  """Every ``Case*.mhd`` that is not a ``_segmentation``, with its segmentation.

  Raises:
    PrepareError: a case without its ``_segmentation.mhd``.
  """
  cases = []
  for image in sorted(raw.rglob("Case*.mhd")):
    if image.stem.endswith("_segmentation"):
      continue
    label = image.with_name(f"{image.stem}_segmentation.mhd")
    if not label.is_file():
      raise PrepareError(f"{label}: segmentation missing for {image}")
    cases.append(common.RawCase(image.stem, {"image": image, "label": label}))
  return sorted(cases, key=lambda c: c.case_id)


def _header(path: pathlib.Path) -> tuple[tuple[int, ...], tuple[float, ...]]:
  import SimpleITK as sitk  # pylint: disable=g-import-not-at-top

  reader = sitk.ImageFileReader()
  reader.SetFileName(str(path))
  try:
    reader.ReadImageInformation()
  except RuntimeError as e:
    raise PrepareError(
      f"{path}: cannot read as MetaImage ({str(e).strip().splitlines()[-1]})"
    ) from e
  return tuple(reader.GetSize()), tuple(reader.GetSpacing())


def check(case: common.RawCase) -> None:
  grids = {role: _header(path) for role, path in case.files.items()}
  if len(grids["image"][0]) != 3:
    raise PrepareError(f"{case.files['image']}: expected a 3-D volume, got {grids['image'][0]}")
  common.check_same_grid(case.files, grids, "image")


def _read(path: pathlib.Path):
  import SimpleITK as sitk  # pylint: disable=g-import-not-at-top

  try:
    return sitk.ReadImage(str(path))
  except RuntimeError as e:
    raise PrepareError(
      f"{path}: cannot read the MetaImage data ({str(e).strip().splitlines()[-1]})"
    ) from e


def _resample_crop(img, vol_size) -> tuple[np.ndarray, list[int], list[int]]:
  """DataManager.getNumpyData: linear resampling to DST_RES, centre crop; (x, y, z) array."""
  import SimpleITK as sitk  # pylint: disable=g-import-not-at-top

  factor = np.asarray(img.GetSpacing()) / np.asarray(DST_RES)
  new_size = np.max([np.asarray(img.GetSize()) * factor, vol_size], axis=0).astype(int)
  f = sitk.ResampleImageFilter()
  f.SetReferenceImage(img)
  f.SetOutputSpacing(DST_RES)
  f.SetSize([int(s) for s in new_size])
  f.SetInterpolator(sitk.sitkLinear)
  resampled = f.Execute(img)
  start = (new_size / 2.0 - np.asarray(vol_size) / 2.0).astype(int)
  roi = sitk.RegionOfInterestImageFilter()
  roi.SetSize([int(s) for s in vol_size])
  roi.SetIndex([int(s) for s in start])
  array = np.transpose(sitk.GetArrayFromImage(roi.Execute(resampled)), (2, 1, 0))
  return array, new_size.tolist(), start.tolist()


def process(case: common.RawCase, options: dict) -> common.Processed:
  import SimpleITK as sitk  # pylint: disable=g-import-not-at-top

  vol_size = tuple(int(s) for s in options.get("vol_size") or VOL_SIZE)
  raw_image = _read(case.files["image"])
  raw_label = _read(case.files["label"])
  label_values = np.unique(sitk.GetArrayViewFromImage(raw_label))
  common.check_label_values(case.files["label"], label_values, (0, 1))
  rescale = sitk.RescaleIntensityImageFilter()
  rescale.SetOutputMinimum(0)
  rescale.SetOutputMaximum(1)
  image = rescale.Execute(sitk.Cast(raw_image, sitk.sitkFloat32))
  label = sitk.Cast(raw_label > 0.5, sitk.sitkFloat32)
  image, new_size, start = _resample_crop(image, vol_size)
  label, _, _ = _resample_crop(label, vol_size)
  label = (label > 0.5).astype(np.uint8)
  pixels = image[image > 0]
  if pixels.size == 0:
    raise PrepareError(f"{case.files['image']}: no voxel > 0 inside the centre crop")
  image = ((image - pixels.mean()) / pixels.std()).astype(np.float32)
  return common.Processed(
    [common.Output(f"data/{case.case_id}.h5", {"image": image, "label": label})],
    {
      "spacing": list(raw_image.GetSpacing()),
      "raw_shape": list(raw_image.GetSize()),
      "resampled_shape": new_size,
      "crop_start": start,
      "shape": list(image.shape),
      "intensity": common.array_stats(image),
      "label_values": np.unique(label).tolist(),
    },
  )


def write_lists(
  out: pathlib.Path, ids: list[str], records: dict, options: dict
) -> dict[str, list[str]]:
  lists = common.read_split_lists(options.get("splits"), LISTS)
  if lists is None:
    lists = {"train.list": sorted(ids)}
  for name, names in lists.items():
    common.write_list(out, name, names)
  return lists


PREPARER = common.Preparer(
  name="promise12",
  find_cases=find_cases,
  check=check,
  process=process,
  write_lists=write_lists,
  split_lists=LISTS,
  settings=lambda o: {"vol_size": list(o.get("vol_size") or VOL_SIZE)},
)
