"""LA: the 2018 Atrial Segmentation Challenge release (NRRD) -> UA-MT's h5 layout.

Raw (the challenge's training set): ``<raw>/**/<id>/lgemri.nrrd`` (LGE-MRI) and ``laendo.nrrd``
(left-atrium cavity, 0 / 255) in the same folder; read with pynrrd, the library UA-MT used, which
gives the arrays in NRRD index order (x, y, z).

Out (what jaxseg/data/la.py reads):

  <out>/train.list                                   ids (all, sorted; or --splits' train.list)
  <out>/test.list                                    only with --splits (UA-MT's held-out ids)
  <out>/2018LA_Seg_Training Set/<id>/mri_norm2.h5    image float32 (x, y, z), label uint8 {0, 1}

Processing follows ``yulequan/UA-MT: code/dataloaders/la_heart_processing.py``: label = (laendo ==
255); image z-scored over the WHOLE volume (population std) before cropping; x and y cropped to the
label's bounding box widened by a random margin in [10, 20) voxels per side plus half the shortfall
to 112 (``max(112 - (max - min), 0) // 2``), clipped to the volume, end exclusive; z kept whole. No
resampling. Upstream draws the margins unseeded; here they come from ``--seed`` and the case id, so
a preparation is reproducible, and each case's crop box is recorded in ``dataset.json``.
"""

import pathlib
import zlib

import numpy as np

from jaxseg.prepare import common
from jaxseg.prepare.common import PrepareError

LISTS = ("train.list", "test.list")  # what --splits DIR must hold
CASES_DIR = "2018LA_Seg_Training Set"
CASE_FILE = "mri_norm2.h5"
IMAGE_FILE = "lgemri.nrrd"
LABEL_FILE = "laendo.nrrd"
OUTPUT_SIZE = (112, 112)  # UA-MT output_size[:2]: the minimum x / y extent the margins aim at
MARGIN = (10, 20)  # np.random.randint(10, 20): 10..19 voxels


def find_cases(raw: pathlib.Path) -> list[common.RawCase]:
  """Every folder holding ``lgemri.nrrd``; its name is the case id.

  Raises:
    PrepareError: a folder with an image but no ``laendo.nrrd``.
  """
  cases = []
  for image in sorted(raw.rglob(IMAGE_FILE)):
    label = image.with_name(LABEL_FILE)
    if not label.is_file():
      raise PrepareError(f"{label}: label missing for {image}")
    cases.append(common.RawCase(image.parent.name, {"image": image, "label": label}))
  return sorted(cases, key=lambda c: c.case_id)


def _header(path: pathlib.Path) -> tuple[tuple[int, ...], tuple[float, ...]]:
  import nrrd  # pylint: disable=g-import-not-at-top

  try:
    h = nrrd.read_header(str(path))
  except Exception as e:  # pynrrd raises NRRDError, OSError, UnicodeDecodeError, ...
    raise PrepareError(f"{path}: cannot read as NRRD ({e})") from e
  shape = tuple(int(s) for s in h["sizes"])
  if "space directions" in h and h["space directions"] is not None:
    spacing = tuple(float(np.linalg.norm(d)) for d in np.asarray(h["space directions"], float))
  else:
    spacing = tuple(float(s) for s in h.get("spacings", [1.0] * len(shape)))
  return shape, spacing


def check(case: common.RawCase) -> None:
  grids = {role: _header(path) for role, path in case.files.items()}
  if len(grids["image"][0]) != 3:
    raise PrepareError(
      f"{case.files['image']}: expected a 3-D volume, got shape {grids['image'][0]}"
    )
  common.check_same_grid(case.files, grids, "image")


def _read(path: pathlib.Path) -> np.ndarray:
  import nrrd  # pylint: disable=g-import-not-at-top

  try:
    data, _ = nrrd.read(str(path))
  except Exception as e:
    raise PrepareError(f"{path}: cannot read the NRRD data ({e})") from e
  return data


def crop_box(label: np.ndarray, rng: np.random.Generator) -> list[tuple[int, int]]:
  """[(x0, x1), (y0, y1), (0, d)] as UA-MT's la_heart_processing.py: per side a margin drawn from
  [10, 20), plus half the shortfall to 112, clipped to the volume; end exclusive."""
  (minx, maxx), (miny, maxy), _ = common.bbox(label)
  w, h, d = label.shape
  px = max(OUTPUT_SIZE[0] - (maxx - minx), 0) // 2
  py = max(OUTPUT_SIZE[1] - (maxy - miny), 0) // 2
  # Draw order as upstream: x low, x high, y low, y high.
  x0 = max(minx - int(rng.integers(*MARGIN)) - px, 0)
  x1 = min(maxx + int(rng.integers(*MARGIN)) + px, w)
  y0 = max(miny - int(rng.integers(*MARGIN)) - py, 0)
  y1 = min(maxy + int(rng.integers(*MARGIN)) + py, h)
  return [(x0, x1), (y0, y1), (0, d)]


def process(case: common.RawCase, options: dict) -> common.Processed:
  image = _read(case.files["image"])
  raw_label = _read(case.files["label"])
  common.check_label_values(case.files["label"], raw_label, (0, 255))
  label = (raw_label == 255).astype(np.uint8)
  if not label.any():
    raise PrepareError(
      f"{case.files['label']}: no voxel is 255 (empty left-atrium label); the crop box is undefined"
    )
  rng = np.random.default_rng([int(options.get("seed", 0)), zlib.crc32(case.case_id.encode())])
  box = crop_box(label, rng)
  image = ((image - np.mean(image)) / np.std(image)).astype(np.float32)
  sl = tuple(slice(a, b) for a, b in box)
  image, label = image[sl], label[sl]
  _, spacing = _header(case.files["image"])
  return common.Processed(
    [common.Output(f"{CASES_DIR}/{case.case_id}/{CASE_FILE}", {"image": image, "label": label})],
    {
      "spacing": list(spacing),
      "raw_shape": list(raw_label.shape),
      "shape": list(image.shape),
      "crop": [list(b) for b in box],
      "intensity": common.array_stats(image),
      "label_values": np.unique(label).tolist(),
    },
  )


def write_lists(
  out: pathlib.Path, ids: list[str], records: dict, options: dict
) -> dict[str, list[str]]:
  """``train.list`` = every case sorted; with ``--splits DIR``: DIR's ``train.list`` and
  ``test.list`` (UA-MT's data/ lists), each id checked to be prepared."""
  lists = common.read_split_lists(options.get("splits"), LISTS)
  if lists is None:
    lists = {"train.list": sorted(ids)}
  for name, names in lists.items():
    common.write_list(out, name, names)
  return lists


PREPARER = common.Preparer(
  name="la",
  find_cases=find_cases,
  check=check,
  process=process,
  write_lists=write_lists,
  split_lists=LISTS,
  settings=lambda o: {"seed": int(o.get("seed", 0))},
)
