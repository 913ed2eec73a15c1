"""ACDC (cardiac cine-MRI, 4 classes) in the SSL4MIS h5 layout: 2D training slices, 3D val volumes.

Layout (``HiLab-git/SSL4MIS: code/dataloaders/dataset.py`` BaseDataSets, also BCP and CML):

  <root>/train_slices.list          slice ids, ordered by patient (labeled = the first ones)
  <root>/val.list                   volume ids (patient<NNN>_frame<NN>)
  <root>/data/slices/<id>.h5        image float32 [H, W] in [0, 1], label uint8 [H, W]
  <root>/data/<id>.h5               image float32 [D, H, W] (D = short-axis slices), label uint8

Labels: 0 background, 1 RV, 2 myocardium, 3 LV.

``data.labeled`` counts PATIENTS, as the upstream ``--labeled_num``: the labeled slices are the
first ones of the slice list, SSL4MIS ``patients_to_slices`` (3 patients -> 68 slices, 7 -> 136,
...). We compute that count as "all slices of the first N patients in list order", which gives
exactly the upstream table on the SSL4MIS list (tests/test_acdc.py checks every entry) and also
works for the synthetic stand-in. The unlabeled slices are the rest of the list.
"""

import json
import os
import pathlib
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from jaxseg import io_utils
from jaxseg.data import registry
from jaxseg.data import splits as splits_lib
from jaxseg.data.h5io import DataError
from jaxseg.data.h5io import write_case
from jaxseg.data.h5source import H5Source
from jaxseg.data.registry import DatasetSpec

ENV_VAR = registry.ENV_VAR
TRAIN_LIST = "train_slices.list"
VAL_LIST = "val.list"
VOLUME_LIST = "train.list"
NUM_CLASSES = 4
CLASS_NAMES = ("background", "RV", "Myo", "LV")

# SSL4MIS / BCP / CML `patients_to_slices(dataset='ACDC', n)`: labeled patients -> labeled slices.
# (SSL4MIS spells the full set "140"; BCP and CML "70": 70 training patients either way.)
PATIENTS_TO_SLICES = {1: 32, 3: 68, 7: 136, 14: 256, 21: 396, 28: 512, 35: 664, 70: 1312}

MANIFEST = "synthetic_acdc_manifest.json"
_SYNTH_VERSION = 1


def slice_path(root: str | os.PathLike, slice_id: str) -> pathlib.Path:
  """``<root>/data/slices/<slice_id>.h5``."""
  return pathlib.Path(root) / "data" / "slices" / f"{slice_id}.h5"


def volume_path(root: str | os.PathLike, volume_id: str) -> pathlib.Path:
  """``<root>/data/<volume_id>.h5``."""
  return pathlib.Path(root) / "data" / f"{volume_id}.h5"


def patient_of(slice_id: str) -> str:
  """'patient099_frame01_slice_15' -> 'patient099' (the text before the first underscore)."""
  return slice_id.split("_", 1)[0]


def find_root(config_root: str | os.PathLike | None) -> pathlib.Path:
  """The ACDC folder (holding ``train_slices.list`` and ``val.list``).

  Looks at ``config_root`` first, then at ``$JAXSEG_DATA_DIR``.

  Raises:
    DataError: saying where it looked and how to obtain the data.
  """
  return registry.locate_root(
    config_root,
    "ACDC",
    [TRAIN_LIST, VAL_LIST],
    f"It holds {TRAIN_LIST}, {VAL_LIST}, data/slices/<slice>.h5 and data/<volume>.h5 (the "
    "SSL4MIS preprocessed ACDC: github.com/HiLab-git/SSL4MIS, data/ACDC). For a run without "
    "real data set data.synthetic.",
  )


def labeled_slice_count(slice_ids: Sequence[str], n_patients: int) -> int:
  """Number of leading slices that belong to the first ``n_patients`` patients of the list.

  Equals SSL4MIS ``patients_to_slices('ACDC', n)`` on its list (slices grouped by patient).

  Raises:
    DataError: n_patients < 1, more patients asked for than the list has, or a patient whose
      slices are not contiguous in the list (the rule would then be ambiguous).
  """
  if n_patients < 1:
    raise DataError(f"data.labeled={n_patients} (labeled ACDC patients) must be >= 1")
  order, seen = [], set()  # order: (patient, index of its first slice), in list order
  for i, s in enumerate(slice_ids):
    p = patient_of(s)
    if p not in seen:
      seen.add(p)
      order.append((p, i))
    elif order[-1][0] != p:
      raise DataError(
        f"slice list: the slices of {p} are not contiguous (again at {s!r}); the "
        "labeled subset (the first N patients) is ambiguous"
      )
  if n_patients > len(order):
    hint = (
      f" (SSL4MIS: {n_patients} patients = {PATIENTS_TO_SLICES[n_patients]} slices)"
      if n_patients in PATIENTS_TO_SLICES
      else ""
    )
    raise DataError(
      f"data.labeled={n_patients} patients{hint}, but the slice list holds only "
      f"{len(order)} patients ({len(slice_ids)} slices)"
    )
  return order[n_patients][1] if n_patients < len(order) else len(slice_ids)


def make_splits(root: pathlib.Path, data_config) -> dict[str, list[str]]:
  """train = every slice of ``<root>/<data.train_list>`` (default train_slices.list), labeled =
  the slices of its first ``data.labeled`` PATIENTS, unlabeled = the rest; val = the volumes of
  ``<root>/<data.val_list>`` (default val.list).

  Raises:
    DataError: a missing list, too few patients, or listed files that are absent (named).
  """
  root = pathlib.Path(root)
  train_list = data_config.get("train_list", TRAIN_LIST) or TRAIN_LIST
  val_list = data_config.get("val_list", VAL_LIST) or VAL_LIST
  train = splits_lib.read_list(root / train_list)
  val = splits_lib.read_list(root / val_list)
  for name, ids, path_of in ((train_list, train, slice_path), (val_list, val, volume_path)):
    absent = [str(path_of(root, i)) for i in ids if not path_of(root, i).is_file()]
    if absent:
      raise DataError(
        f"{root / name}: {len(absent)} of {len(ids)} listed files are missing, e.g. {absent[:3]}"
      )
  n = labeled_slice_count(train, int(data_config.labeled))
  return {"train": train, "val": val, "labeled": train[:n], "unlabeled": train[n:]}


def train_source(root, ids: Sequence[str], num_classes: int = NUM_CLASSES) -> H5Source:
  """2D training slices ``data/slices/<id>.h5``: image [H, W], label [H, W]."""
  return H5Source(root, ids, num_classes, slice_path, ndim=2)


def val_source(root, ids: Sequence[str], num_classes: int = NUM_CLASSES) -> H5Source:
  """3D evaluation volumes ``data/<id>.h5``: image [D, H, W], label [D, H, W]."""
  return H5Source(root, ids, num_classes, volume_path, ndim=3)


# ---------------------------------------------------------------------------------------------------
# Synthetic stand-in in the same layout.
# ---------------------------------------------------------------------------------------------------


def make_synthetic_volume(
  seed: int, index: int, shape: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
  """A cardiac-looking phantom: (image float32 [D, H, W] in [0, 1], label uint8 [D, H, W]).

  Per slice: an LV disc (3) inside a myocardium ring (2), and an RV crescent (1) hugging the ring
  on one side; radii shrink towards the apex (last slices) and the first slice is background only
  (as some ACDC basal slices). Intensities: blood pools bright, myocardium dark, plus a smooth
  bias field and noise; min-max normalised per volume as SSL4MIS does.
  """
  d, h, w = (int(s) for s in shape)
  if d < 2 or min(h, w) < 16:
    raise ValueError(f"synthetic ACDC volume shape must be (D >= 2, H >= 16, W >= 16), got {shape}")
  rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
  yy, xx = np.meshgrid(
    np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij"
  )
  cy, cx = h * rng.uniform(0.42, 0.58), w * rng.uniform(0.42, 0.58)
  r_lv = min(h, w) * rng.uniform(0.10, 0.14)
  thick = min(h, w) * rng.uniform(0.05, 0.07)
  side = rng.choice([-1.0, 1.0])
  label = np.zeros((d, h, w), np.uint8)
  for z in range(1, d):
    shrink = 1.0 - 0.5 * (z - 1) / max(d - 1, 1)
    r1, r2 = r_lv * shrink, (r_lv + thick) * shrink
    dist = np.hypot(yy - cy, xx - cx)
    # RV: an ellipse centred beside the ring, minus the ring and LV.
    ry, rx = cy, cx + side * (r2 + 0.6 * r_lv * shrink)
    rv = ((yy - ry) / (1.4 * r_lv * shrink)) ** 2 + ((xx - rx) / (0.9 * r_lv * shrink)) ** 2 <= 1.0
    label[z][rv & (dist > r2)] = 1
    label[z][(dist > r1) & (dist <= r2)] = 2
    label[z][dist <= r1] = 3
  means = np.array([0.25, 0.8, 0.35, 0.9])
  raw = means[label] + 0.15 * ndimage.gaussian_filter(rng.standard_normal((d, h, w)), (0, 3, 3))
  raw *= np.exp(0.2 * ndimage.gaussian_filter(rng.standard_normal((d, h, w)), (0, w / 4, h / 4)))
  raw += 0.05 * rng.standard_normal((d, h, w))
  image = (raw - raw.min()) / (raw.max() - raw.min())
  return image.astype(np.float32), label


def _synth_manifest(cfg: dict) -> dict:
  return {"generator": "jaxseg.data.acdc", "version": _SYNTH_VERSION, **cfg}


def synthesize(root: str | os.PathLike, synthetic_config=None) -> pathlib.Path:
  """Writes a small deterministic ACDC-layout stand-in under ``root``; returns ``root``.

  ``synthetic_config`` (ConfigDict or dict, all optional): ``n_cases`` training patients (default 4;
  2 frames each, written as slices), ``n_val`` validation patients (default 1; 2 frames each,
  written as volumes), ``shape`` (D, H, W) of a frame (default (4, 40, 36); H != W so the resizing
  paths are exercised; frame02 is transposed in-plane), ``seed`` (default 0). Slice lists are in
  patient order, so ``data.labeled`` patients map to their slices as on the real data.

  Does nothing when ``<root>/synthetic_acdc_manifest.json`` already records the same settings and
  every file exists; the manifest is written last.
  """
  get = (
    (lambda k, v: synthetic_config.get(k, v)) if synthetic_config is not None else (lambda k, v: v)
  )
  cfg = {
    "n_cases": int(get("n_cases", 4)),
    "n_val": int(get("n_val", 1)),
    "shape": [int(s) for s in get("shape", (4, 40, 36))],
    "seed": int(get("seed", 0)),
  }
  if cfg["n_cases"] < 1 or cfg["n_val"] < 1:
    raise ValueError(f"synthetic ACDC needs n_cases >= 1 and n_val >= 1, got {cfg}")
  if len(cfg["shape"]) != 3:
    raise ValueError(f"synthetic ACDC shape must be (D, H, W), got {cfg['shape']}")
  root = pathlib.Path(root)
  manifest = _synth_manifest(cfg)
  manifest_path = root / MANIFEST
  train_vols = [f"patient{i + 1:03d}_frame{f:02d}" for i in range(cfg["n_cases"]) for f in (1, 2)]
  val_vols = [
    f"patient{cfg['n_cases'] + i + 1:03d}_frame{f:02d}" for i in range(cfg["n_val"]) for f in (1, 2)
  ]
  d = cfg["shape"][0]
  slices = [f"{v}_slice_{z}" for v in train_vols for z in range(d)]
  if manifest_path.is_file():
    try:
      existing = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
      existing = None
    if (
      existing == manifest
      and all(slice_path(root, s).is_file() for s in slices)
      and all(volume_path(root, v).is_file() for v in val_vols)
    ):
      return root
  root.mkdir(parents=True, exist_ok=True)
  if manifest_path.exists():
    manifest_path.unlink()
  for k, vol in enumerate(train_vols + val_vols):
    image, label = make_synthetic_volume(cfg["seed"], k, cfg["shape"])
    if vol.endswith("frame02"):  # a second in-plane shape, as ACDC mixes 256x216 and 216x256
      image, label = image.transpose(0, 2, 1), label.transpose(0, 2, 1)
    if vol in val_vols:
      write_case(volume_path(root, vol), image, label)
    else:
      for z in range(d):
        write_case(slice_path(root, f"{vol}_slice_{z}"), image[z], label[z])
  io_utils.write_text(root / TRAIN_LIST, "".join(f"{s}\n" for s in slices))
  io_utils.write_text(root / VOLUME_LIST, "".join(f"{v}\n" for v in train_vols))
  io_utils.write_text(root / VAL_LIST, "".join(f"{v}\n" for v in val_vols))
  io_utils.write_text(manifest_path, json.dumps(manifest, indent=1))
  return root


DATASET = DatasetSpec(
  find_root=find_root,
  make_splits=make_splits,
  train_source=train_source,
  val_source=val_source,
  synthesize=synthesize,
)

__all__ = [
  "DATASET",
  "H5Source",
  "NUM_CLASSES",
  "PATIENTS_TO_SLICES",
  "find_root",
  "labeled_slice_count",
  "make_splits",
  "make_synthetic_volume",
  "slice_path",
  "synthesize",
  "train_source",
  "val_source",
  "volume_path",
]
