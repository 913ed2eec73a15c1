"""BraTS 2019: the challenge release (NIfTI per modality) -> SSL4MIS's h5 layout, as DyCON reads it.

Raw (MICCAI_BraTS_2019_Data_Training): ``<raw>/**/<id>/<id>_flair.nii.gz`` and ``<id>_seg.nii.gz``
(0, 1 necrotic core, 2 oedema, 4 enhancing tumour) per case folder (HGG/ and LGG/); t1, t1ce and
t2 are not used (SSL4MIS and DyCON train on FLAIR alone). Read with nibabel (NIfTI's own library),
arrays in voxel index order (x, y, z), the order the released h5 files hold and DyCON's
``SagittalToAxial`` transposes.

Out (what jaxseg/data/brats.py reads):

  <out>/train.txt, val.txt, test.txt    ids (--splits copies DyCON's data/BraTS2019 lists)
  <out>/data/<id>.h5                    image float32 (x, y, z), label uint8 {0, 1} whole tumour

Processing follows ``HiLab-git/SSL4MIS: code/dataloaders/brats_proprecessing.py``:

1. ``brain_bbox``: crop image and label to the bounding box of the nonzero FLAIR voxels, with the
   END INDEX EXCLUSIVE of the box's last voxel (upstream slices ``[min:max]``, so the last brain
   voxel of every axis is dropped; kept for parity);
2. ``MedicalImageDeal(percent=0.999).valid_img``: clip to [min, w], w = the first histogram bin
   centre whose cumulative fraction reaches 0.999 (skimage ``exposure.cumulative_distribution``:
   one bin per integer value for integer images, 256 bins over [min, max] for float images);
3. ``itensity_normalize_one_volume``: z-score with the mean and (population) std of the voxels > 0;
4. label: every value > 0 becomes 1.

Split without ``--splits``: sorted ids, the last 10 % val, the 20 % before them test.
"""

import pathlib

import numpy as np

from jaxseg.prepare import common
from jaxseg.prepare.common import PrepareError

MODALITIES = ("flair", "t1", "t1ce", "t2")
USED = ("flair", "seg")
LABELS = (0, 1, 2, 4)
LISTS = ("train.txt", "val.txt", "test.txt")


def find_cases(raw: pathlib.Path) -> list[common.RawCase]:
  """Every folder holding a ``<folder>_<modality or seg>.nii.gz``.

  Raises:
    PrepareError: a case folder without its FLAIR or its seg file.
  """
  folders = sorted(
    {
      p.parent
      for suffix in (*MODALITIES, "seg")
      for p in raw.rglob(f"*_{suffix}.nii.gz")
      if p.name.startswith(p.parent.name)
    }
  )
  cases = []
  for folder in folders:
    files = {role: folder / f"{folder.name}_{role}.nii.gz" for role in USED}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
      raise PrepareError(f"{folder}: missing {missing} (FLAIR and seg are required)")
    cases.append(common.RawCase(folder.name, files))
  return sorted(cases, key=lambda c: c.case_id)


def check(case: common.RawCase) -> None:
  grids = {role: common.nifti_header(path) for role, path in case.files.items()}
  if len(grids["flair"][0]) != 3:
    raise PrepareError(f"{case.files['flair']}: expected a 3-D volume, got {grids['flair'][0]}")
  common.check_same_grid(case.files, grids, "flair")


def clip_percentile(image: np.ndarray, percent: float) -> np.ndarray:
  """``np.clip(image, image.min(), w)``, w = the first bin centre with cumulative fraction >=
  ``percent`` (skimage ``exposure.cumulative_distribution`` with its default 256 bins)."""
  if np.issubdtype(image.dtype, np.integer):
    values, counts = np.unique(image, return_counts=True)
    centres = values  # one bin per integer; bins with no voxel never reach the threshold first
  else:
    counts, edges = np.histogram(image, bins=256, range=(image.min(), image.max()))
    centres = (edges[:-1] + edges[1:]) / 2
  cdf = np.cumsum(counts) / counts.sum()
  w = centres[cdf >= percent][0]
  return np.clip(image, image.min(), w)


def process(case: common.RawCase, options: dict) -> common.Processed:
  del options
  image, spacing = common.load_nifti(case.files["flair"])
  label, _ = common.load_nifti(case.files["seg"])
  common.check_label_values(case.files["seg"], label, LABELS)
  if not image.any():
    raise PrepareError(f"{case.files['flair']}: all voxels are 0 (no brain to crop to)")
  box = [(lo, hi) for lo, hi in common.bbox(image != 0)]
  sl = tuple(slice(lo, hi) for lo, hi in box)  # end exclusive of the last voxel, as upstream
  image, label = image[sl], label[sl]
  image = clip_percentile(image, 0.999)
  pixels = image[image > 0]
  if pixels.size == 0:
    raise PrepareError(f"{case.files['flair']}: no positive voxel inside the brain box")
  image = ((image - pixels.mean()) / pixels.std()).astype(np.float32)
  label = (label > 0).astype(np.uint8)
  return common.Processed(
    [common.Output(f"data/{case.case_id}.h5", {"image": image, "label": label})],
    {
      "spacing": list(spacing),
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
    train, val, test = common.default_split(ids, 0.1, 0.2)
    lists = {"train.txt": train, "val.txt": val, "test.txt": test}
  for name, names in lists.items():
    common.write_list(out, name, names)
  return lists


PREPARER = common.Preparer(
  name="brats",
  find_cases=find_cases,
  check=check,
  process=process,
  write_lists=write_lists,
  split_lists=LISTS,
)
