"""What every dataset preparation shares: errors, atomic h5 writes, resume, lists, fingerprint.

A dataset module (la.py, acdc.py, ...) provides a `Preparer`: how to find the raw cases, how to
check them cheaply (headers only), how to turn one case into output arrays, and how to write the
list files. `run` drives it:

1. find every raw case, check every header and the ``--splits`` lists first, so bad input (a
   missing modality, an image / label shape or spacing mismatch, an unreadable file, a listed case
   that is not in the raw data) stops the run before anything is written; a problem found only
   while processing a case (e.g. unexpected label values) writes nothing of that case;
2. process the cases one by one, printing ``[prepare] <dataset> i/n <case> ...``; each output h5 is
   written to a temporary name and moved into place with ``os.replace``; once all outputs of a case
   exist, a record ``<out>/.prepare/<case>.json`` (its outputs, their sha256, statistics and the
   processing settings) marks the case done, so a re-run skips it (an interrupted preparation is
   finished by running the same command again; ``--overwrite`` redoes every case);
3. write the list files and ``<out>/dataset.json`` (the fingerprint: cases, spacings, shapes,
   intensity statistics, label values, checksums), last, so ``dataset.json`` exists only for a
   complete preparation.
"""

import collections
import dataclasses
import hashlib
import json
import os
import pathlib
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import h5py
import numpy as np

from jaxseg import io_utils

DONE_DIR = ".prepare"
FINGERPRINT = "dataset.json"
FORMAT_VERSION = 1


class PrepareError(ValueError):
  """Raw input that cannot be prepared; the message names the file and the problem."""


@dataclasses.dataclass
class RawCase:
  """One raw case: its output id and its input files by role (e.g. 'image', 'label', 'flair')."""

  case_id: str
  files: dict[str, pathlib.Path]


@dataclasses.dataclass
class Output:
  """One h5 file to write: ``relpath`` under the output folder, its datasets (name -> array)."""

  relpath: str
  arrays: dict[str, np.ndarray]


@dataclasses.dataclass
class Processed:
  """What processing one case gives: its h5 files and facts for the fingerprint (spacing, shapes,
  crop box, ...; JSON-serialisable)."""

  outputs: list[Output]
  info: dict[str, Any]


@dataclasses.dataclass
class Preparer:
  """A dataset's preparation.

  Attributes:
    name: the CLI name ('la', 'acdc', ...).
    find_cases: raw folder -> cases, sorted by id (raises PrepareError for a missing counterpart).
    check: case -> None; reads headers only, raises PrepareError naming the file.
    process: (case, options) -> Processed.
    write_lists: (out, prepared case ids, per-case info, options) -> {list file name: ids}.
    split_lists: the upstream list files ``--splits DIR`` must hold (checked before any case is
      processed: every listed id must be a raw case).
    settings: options -> the settings that change the output (recorded; a change redoes cases).
  """

  name: str
  find_cases: Callable[[pathlib.Path], list[RawCase]]
  check: Callable[[RawCase], None]
  process: Callable[[RawCase, dict], Processed]
  write_lists: Callable[[pathlib.Path, list[str], dict[str, dict], dict], dict[str, list[str]]]
  split_lists: tuple[str, ...]
  settings: Callable[[dict], dict] = lambda options: {}


def progress(dataset: str, i: int, n: int, case_id: str, what: str) -> None:
  print(f"[prepare] {dataset} {i}/{n} {case_id} {what}", file=sys.stdout, flush=True)


def write_h5(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
  """Writes the datasets gzip-compressed (level 4, as the released LA files) atomically: a temporary
  file in the same folder, then ``os.replace``."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  os.close(fd)
  try:
    with h5py.File(tmp, "w") as f:
      for key, value in arrays.items():
        f.create_dataset(key, data=value, compression="gzip", compression_opts=4)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def array_stats(image: np.ndarray) -> dict[str, float]:
  x = np.asarray(image, np.float64)
  return {
    "mean": float(x.mean()),
    "std": float(x.std()),
    "min": float(x.min()),
    "max": float(x.max()),
  }


def write_list(out: pathlib.Path, name: str, ids: Sequence[str]) -> None:
  io_utils.write_text(out / name, "".join(f"{i}\n" for i in ids))


def read_split_lists(
  splits_dir: pathlib.Path | None, names: Sequence[str]
) -> dict[str, list[str]] | None:
  """The list files ``names`` of ``splits_dir`` (e.g. an upstream checkout's data folder), one id a
  line (text after a comma dropped, as the BraTS lists); None when ``splits_dir`` is None.

  Raises:
    PrepareError: a named list is missing.
  """
  if splits_dir is None:
    return None
  lists = {}
  for name in names:
    path = pathlib.Path(splits_dir) / name
    if not path.is_file():
      raise PrepareError(f"{path}: split list not found (--splits must hold {list(names)})")
    lines = [line.split(",", 1)[0].strip() for line in path.read_text().splitlines()]
    lists[name] = [line for line in lines if line]
  return lists


def check_listed(lists: dict[str, list[str]], prepared: Sequence[str], where: str) -> None:
  """Every id of every list must be a prepared case.

  Raises:
    PrepareError: naming the list and the ids that were not prepared.
  """
  have = set(prepared)
  for name, ids in lists.items():
    absent = [i for i in ids if i not in have]
    if absent:
      raise PrepareError(
        f"{where}/{name}: {len(absent)} listed case(s) not in the raw data, e.g. {absent[:3]}"
      )


def default_split(
  ids: Sequence[str], val_fraction: float, test_fraction: float
) -> tuple[list[str], list[str], list[str]]:
  """(train, val, test) of sorted ``ids`` when no upstream list is given: val = the last
  ``round(val_fraction * n)`` (at least 1), test = the ``round(test_fraction * n)`` (at least 1)
  before them, train = the rest; with fewer than 3 cases everything is train."""
  ids = sorted(ids)
  n = len(ids)
  if n < 3:
    return ids, [], []
  n_val = max(1, round(val_fraction * n))
  n_test = max(1, round(test_fraction * n)) if test_fraction > 0 else 0
  cut = n - n_val - n_test
  return ids[:cut], ids[n - n_val :], ids[cut : n - n_val]


def _load_record(path: pathlib.Path) -> dict | None:
  try:
    return json.loads(path.read_text())
  except (OSError, json.JSONDecodeError):
    return None


def run(
  preparer: Preparer, raw: pathlib.Path, out: pathlib.Path, options: dict, overwrite: bool = False
) -> dict:
  """Prepares every case of ``raw`` into ``out``; returns the fingerprint written to
  ``out/dataset.json``.

  Raises:
    PrepareError: bad raw input, naming the file; nothing of a failing case is written.
  """
  raw, out = pathlib.Path(raw), pathlib.Path(out)
  if not raw.is_dir():
    raise PrepareError(f"{raw}: raw folder not found")
  cases = preparer.find_cases(raw)
  if not cases:
    raise PrepareError(
      f"{raw}: no {preparer.name} cases found (see `python -m jaxseg.prepare "
      f"--help` for the expected release layout)"
    )
  dup = sorted(i for i, k in collections.Counter(c.case_id for c in cases).items() if k > 1)
  if dup:
    raise PrepareError(f"{raw}: case id(s) {dup} found more than once")
  for case in cases:
    preparer.check(case)
  splits = read_split_lists(options.get("splits"), preparer.split_lists)
  if splits is not None:
    check_listed(splits, [c.case_id for c in cases], str(options["splits"]))
  settings = {
    "dataset": preparer.name,
    "format_version": FORMAT_VERSION,
    **preparer.settings(options),
  }
  records = {}
  n = len(cases)
  for i, case in enumerate(cases, 1):
    record_path = out / DONE_DIR / f"{case.case_id}.json"
    record = None if overwrite else _load_record(record_path)
    if (
      record is not None
      and record.get("settings") == settings
      and all((out / p).is_file() for p in record["outputs"])
    ):
      records[case.case_id] = record
      progress(preparer.name, i, n, case.case_id, "already prepared, skipped")
      continue
    processed = preparer.process(case, options)
    outputs = {}
    for output in processed.outputs:
      write_h5(out / output.relpath, output.arrays)
      outputs[output.relpath] = {
        "sha256": sha256(out / output.relpath),
        "shapes": {k: list(v.shape) for k, v in output.arrays.items()},
        "dtypes": {k: str(v.dtype) for k, v in output.arrays.items()},
      }
    record = {
      "case": case.case_id,
      "settings": settings,
      "outputs": outputs,
      "inputs": {role: str(path) for role, path in sorted(case.files.items())},
      **processed.info,
    }
    io_utils.write_json(record_path, record)
    records[case.case_id] = record
    progress(preparer.name, i, n, case.case_id, f"-> {len(outputs)} file(s)")
  ids = [c.case_id for c in cases]
  lists = preparer.write_lists(out, ids, records, options)
  fingerprint = {
    **settings,
    "raw": str(raw.resolve()),
    "n_cases": n,
    "lists": {name: len(v) for name, v in lists.items()},
    "list_sha256": {name: sha256(out / name) for name in lists},
    "cases": {
      k: {f: v for f, v in r.items() if f not in ("settings", "case")} for k, r in records.items()
    },
  }
  io_utils.write_json(out / FINGERPRINT, fingerprint)
  print(f"[prepare] {preparer.name} done: {n} case(s) in {out}", flush=True)
  return fingerprint


def nifti_header(path: pathlib.Path) -> tuple[tuple[int, ...], tuple[float, ...]]:
  """(shape, voxel spacing) of a NIfTI file from its header (nibabel).

  Raises:
    PrepareError: the file is missing or not readable as NIfTI.
  """
  import nibabel as nib  # pylint: disable=g-import-not-at-top

  if not path.is_file():
    raise PrepareError(f"{path}: file not found")
  try:
    img = nib.load(str(path))
  except Exception as e:  # nibabel raises several types for a damaged file
    raise PrepareError(f"{path}: cannot read as NIfTI ({e})") from e
  shape = tuple(int(s) for s in img.shape)
  return shape, tuple(float(z) for z in img.header.get_zooms()[: len(shape)])


def load_nifti(path: pathlib.Path) -> tuple[np.ndarray, tuple[float, ...]]:
  """(array in voxel index order (i, j, k) as stored, spacing) of a NIfTI file (nibabel), with the
  stored dtype after scaling (``dataobj``), not nibabel's float64 ``get_fdata``.

  Raises:
    PrepareError: missing, unreadable or truncated file.
  """
  import nibabel as nib  # pylint: disable=g-import-not-at-top

  shape, spacing = nifti_header(path)
  try:
    data = np.asarray(nib.load(str(path)).dataobj)
  except Exception as e:  # truncated gzip, short data block, ...
    raise PrepareError(f"{path}: cannot read the voxel data ({e})") from e
  return data, spacing


def check_same_grid(
  files: dict[str, pathlib.Path],
  grids: dict[str, tuple[tuple, tuple]],
  reference: str,
  rtol: float = 1e-3,
) -> None:
  """Every role's (shape, spacing) must equal the ``reference`` role's.

  Raises:
    PrepareError: naming both files, and the shapes or spacings that differ.
  """
  ref_shape, ref_spacing = grids[reference]
  for role, (shape, spacing) in grids.items():
    if shape != ref_shape:
      raise PrepareError(
        f"{files[role]}: {role} shape {shape} != {reference} shape {ref_shape} ({files[reference]})"
      )
    if not np.allclose(spacing, ref_spacing, rtol=rtol):
      raise PrepareError(
        f"{files[role]}: {role} spacing {spacing} != {reference} spacing "
        f"{ref_spacing} ({files[reference]})"
      )


def check_label_values(path: pathlib.Path, label: np.ndarray, allowed: Sequence[int]) -> None:
  """Raises PrepareError naming ``path`` when ``label`` holds values outside ``allowed``."""
  values = np.unique(label)
  bad = [v.item() for v in values if v not in allowed]
  if bad:
    raise PrepareError(f"{path}: label values {bad[:10]} outside the expected {list(allowed)}")


def bbox(mask: np.ndarray) -> list[tuple[int, int]]:
  """Per axis (min, max) index of the nonzero voxels, max inclusive (``np.nonzero`` min / max)."""
  idx = np.nonzero(mask)
  return [(int(i.min()), int(i.max())) for i in idx]
