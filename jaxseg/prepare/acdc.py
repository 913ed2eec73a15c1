"""ACDC: the challenge release (NIfTI, ``_gt`` labels) -> SSL4MIS's h5 layout.

Raw: ``<raw>/**/patientNNN/patientNNN_frameNN.nii.gz`` (the ED / ES frames) and
``patientNNN_frameNN_gt.nii.gz`` (0 background, 1 RV, 2 myocardium, 3 LV) beside it; the ``_4d``
cine files are not used. Read with nibabel (NIfTI's own library), whose arrays are in voxel index
order (i, j, k); SSL4MIS read them with SimpleITK, whose arrays are (k, j, i), so we transpose
(2, 1, 0) to store exactly SSL4MIS's (slices, H, W).

Out (what jaxseg/data/acdc.py reads):

  <out>/train.list, val.list, test.list     volume ids patientNNN_frameNN
  <out>/train_slices.list                   the slices of the train.list volumes, in that order
  <out>/data/<volume>.h5                    image float32 (slices, H, W) in [0, 1], label uint8
  <out>/data/slices/<volume>_slice_<k>.h5   image float32 (H, W), label uint8

Processing follows ``HiLab-git/SSL4MIS: code/dataloaders/acdc_data_processing.py``: min-max
normalisation of each volume to [0, 1], then one h5 per short-axis slice; no resampling, no crop.
(SSL4MIS also writes the val / test volumes as whole volumes; we write every volume both ways.)
Split: ``--splits DIR`` copies SSL4MIS's ``train.list``, ``val.list`` and ``test.list`` (its
data/ACDC folder); otherwise patients in sorted order, the last 10 % val, the 20 % before them test
(SSL4MIS's 70 / 10 / 20 of 100 patients), both frames of a patient in the same list.
"""

import pathlib
import re

import numpy as np

from jaxseg.prepare import common
from jaxseg.prepare.common import PrepareError

FRAME = re.compile(r"^(patient\d+)_frame\d+$")
LABELS = (0, 1, 2, 3)
LISTS = ("train.list", "val.list", "test.list")


def find_cases(raw: pathlib.Path) -> list[common.RawCase]:
  """Every ``patient*_frame*.nii.gz`` (not ``_gt``) with its ``_gt`` label.

  Raises:
    PrepareError: a frame without its ``_gt`` file.
  """
  cases = []
  for image in sorted(raw.rglob("patient*_frame*.nii.gz")):
    case_id = image.name[: -len(".nii.gz")]
    if case_id.endswith("_gt"):
      continue
    if not FRAME.match(case_id):
      continue
    label = image.with_name(f"{case_id}_gt.nii.gz")
    if not label.is_file():
      raise PrepareError(f"{label}: label missing for {image}")
    cases.append(common.RawCase(case_id, {"image": image, "label": label}))
  return sorted(cases, key=lambda c: c.case_id)


def check(case: common.RawCase) -> None:
  grids = {role: common.nifti_header(path) for role, path in case.files.items()}
  if len(grids["image"][0]) != 3:
    raise PrepareError(
      f"{case.files['image']}: expected a 3-D frame, got shape {grids['image'][0]}"
    )
  common.check_same_grid(case.files, grids, "image")


def process(case: common.RawCase, options: dict) -> common.Processed:
  del options
  image, spacing = common.load_nifti(case.files["image"])
  label, _ = common.load_nifti(case.files["label"])
  common.check_label_values(case.files["label"], label, LABELS)
  image = np.transpose(image, (2, 1, 0))  # SimpleITK's (k, j, i), as SSL4MIS stored it
  label = np.transpose(label, (2, 1, 0)).astype(np.uint8)
  lo, hi = image.min(), image.max()
  if hi == lo:
    raise PrepareError(
      f"{case.files['image']}: constant image ({lo}); min-max normalisation is undefined"
    )
  image = ((image - lo) / (hi - lo)).astype(np.float32)
  outputs = [common.Output(f"data/{case.case_id}.h5", {"image": image, "label": label})]
  outputs += [
    common.Output(
      f"data/slices/{case.case_id}_slice_{k}.h5", {"image": image[k], "label": label[k]}
    )
    for k in range(image.shape[0])
  ]
  return common.Processed(
    outputs,
    {
      "spacing": list(spacing),
      "raw_shape": list(label.shape[::-1]),
      "shape": list(image.shape),
      "n_slices": int(image.shape[0]),
      "intensity": common.array_stats(image),
      "label_values": np.unique(label).tolist(),
    },
  )


def write_lists(
  out: pathlib.Path, ids: list[str], records: dict, options: dict
) -> dict[str, list[str]]:
  lists = common.read_split_lists(options.get("splits"), LISTS)
  if lists is None:
    patients = sorted({FRAME.match(i).group(1) for i in ids})
    train_p, val_p, test_p = common.default_split(patients, 0.1, 0.2)
    by = lambda ps: [i for i in sorted(ids) if FRAME.match(i).group(1) in set(ps)]
    lists = {"train.list": by(train_p), "val.list": by(val_p), "test.list": by(test_p)}
  lists["train_slices.list"] = [
    f"{v}_slice_{k}" for v in lists["train.list"] for k in range(records[v]["n_slices"])
  ]
  for name, names in lists.items():
    common.write_list(out, name, names)
  return lists


PREPARER = common.Preparer(
  name="acdc",
  find_cases=find_cases,
  check=check,
  process=process,
  write_lists=write_lists,
  split_lists=LISTS,
)
