"""ISLES 2022: the BIDS release (NIfTI) -> ``<out>/data/<case>.h5`` as DyCON's loader reads it.

Raw (Zenodo record 7960856, 250 training cases):

  <raw>/sub-strokecaseNNNN/ses-0001/dwi/sub-strokecaseNNNN_ses-0001_dwi.nii.gz   DWI (b = 1000)
  <raw>/sub-strokecaseNNNN/ses-0001/dwi/sub-strokecaseNNNN_ses-0001_adc.nii.gz   ADC
  <raw>/sub-strokecaseNNNN/ses-0001/anat/sub-strokecaseNNNN_ses-0001_FLAIR.nii.gz  (not used)
  <raw>/derivatives/sub-strokecaseNNNN/ses-0001/sub-strokecaseNNNN_ses-0001_msk.nii.gz  lesion mask

Read with nibabel (NIfTI's own library); arrays in voxel index order (x, y, z), the order of the
(112, 112, 64)-like shapes DyCON's loader comments give.

Out (the layout jaxseg/data/isles.py reads):

  <out>/train.list, val.list, test.list   DyCON's data/ISLES2022 lists (200 / 25 / 25), restricted
                                          to the prepared cases; ``--splits DIR`` copies others
  <out>/data/<id>.h5                      image float32 (x, y, z): DWI, the one channel DyCON
                                          trains on; adc float32 (x, y, z): ADC on the same grid;
                                          label uint8 (x, y, z) {0, 1}: mask > 0

DyCON (``KU-CVML/DyCON: code/dataloaders/isles22.py``) releases no ISLES preprocessing: its loader
reads ``image`` (DWI) and ``mask`` as stored and normalises nothing. So: no resampling (DWI, ADC and
mask share the DWI grid in the release, which we check), no crop, no intensity normalisation; the
mask key is ``label`` as every jaxseg layout. FLAIR lies on its own grid and no DyCON code reads
it, so it is neither required nor stored.
"""

import pathlib

import numpy as np

from jaxseg.prepare import common
from jaxseg.prepare.common import PrepareError

LISTS = ("train.list", "val.list", "test.list")  # what --splits DIR must hold
# KU-CVML/DyCON data/ISLES2022/val.list and test.list (case numbers); train.list is the other 200,
# sorted.
DYCON_VAL = (
  2,
  6,
  19,
  22,
  38,
  57,
  78,
  81,
  90,
  102,
  134,
  170,
  177,
  183,
  187,
  191,
  194,
  198,
  203,
  205,
  209,
  218,
  230,
  232,
  241,
)
DYCON_TEST = (
  1,
  13,
  17,
  20,
  26,
  64,
  70,
  85,
  95,
  105,
  108,
  115,
  122,
  127,
  131,
  144,
  149,
  189,
  204,
  210,
  214,
  233,
  237,
  243,
  246,
)
ROLES = ("dwi", "adc", "msk")


def _find(folder: pathlib.Path, pattern: str) -> pathlib.Path | None:
  hits = sorted(folder.rglob(pattern)) if folder.is_dir() else []
  return hits[0] if hits else None


def find_cases(raw: pathlib.Path) -> list[common.RawCase]:
  """Every ``sub-*`` folder directly under ``raw`` with its DWI, ADC and derivative mask.

  Raises:
    PrepareError: a subject missing one of them (named with the path searched).
  """
  cases = []
  for subject in sorted(p for p in raw.glob("sub-*") if p.is_dir()):
    sub = subject.name
    files = {
      "dwi": _find(subject, f"{sub}_*dwi.nii*"),
      "adc": _find(subject, f"{sub}_*adc.nii*"),
      "msk": _find(raw / "derivatives" / sub, f"{sub}_*msk.nii*"),
    }
    missing = [role for role, path in files.items() if path is None]
    if missing:
      where = {"dwi": subject, "adc": subject, "msk": raw / "derivatives" / sub}
      raise PrepareError(
        "; ".join(f"{where[r]}: no {sub}_*{r}.nii.gz ({r.upper()} missing)" for r in missing)
      )
    cases.append(common.RawCase(sub, files))
  return cases


def check(case: common.RawCase) -> None:
  grids = {role: common.nifti_header(path) for role, path in case.files.items()}
  if len(grids["dwi"][0]) != 3:
    raise PrepareError(f"{case.files['dwi']}: expected a 3-D volume, got {grids['dwi'][0]}")
  common.check_same_grid(case.files, grids, "dwi")


def process(case: common.RawCase, options: dict) -> common.Processed:
  del options
  dwi, spacing = common.load_nifti(case.files["dwi"])
  adc, _ = common.load_nifti(case.files["adc"])
  msk, _ = common.load_nifti(case.files["msk"])
  common.check_label_values(case.files["msk"], msk, (0, 1))
  for role, array in (("dwi", dwi), ("adc", adc)):
    if not np.isfinite(array).all():
      raise PrepareError(f"{case.files[role]}: non-finite intensities")
  image = dwi.astype(np.float32)
  label = (msk > 0).astype(np.uint8)
  return common.Processed(
    [
      common.Output(
        f"data/{case.case_id}.h5", {"image": image, "adc": adc.astype(np.float32), "label": label}
      )
    ],
    {
      "spacing": list(spacing),
      "shape": list(image.shape),
      "intensity": common.array_stats(image),
      "adc_intensity": common.array_stats(adc),
      "label_values": np.unique(label).tolist(),
      "foreground_voxels": int(label.sum()),
    },
  )


def write_lists(
  out: pathlib.Path, ids: list[str], records: dict, options: dict
) -> dict[str, list[str]]:
  lists = common.read_split_lists(options.get("splits"), LISTS)
  if lists is None:
    val = {f"sub-strokecase{n:04d}" for n in DYCON_VAL}
    test = {f"sub-strokecase{n:04d}" for n in DYCON_TEST}
    ids = sorted(ids)
    lists = {
      "train.list": [i for i in ids if i not in val | test],
      "val.list": [i for i in ids if i in val],
      "test.list": [i for i in ids if i in test],
    }
  for name, names in lists.items():
    common.write_list(out, name, names)
  return lists


PREPARER = common.Preparer(
  name="isles",
  find_cases=find_cases,
  check=check,
  process=process,
  write_lists=write_lists,
  split_lists=LISTS,
)
