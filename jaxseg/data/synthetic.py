"""Synthetic phantom volumes in the LA h5 layout, so every pipeline runs without a download.

Each case has one labeled smooth blob (a deformed ellipsoid, 5-20 % of the volume) that is brighter
than the background, plus unlabeled distractors of similar brightness (tubes and small blobs), a
smooth multiplicative bias field and gaussian noise; the image is then z-scored over the whole
volume as the LA preprocessing does (``yulequan/UA-MT: code/dataloaders/la_heart_processing.py``).
Intensity alone therefore does not segment it: a model has to use shape and context.

Everything is a deterministic function of (seed, case index, shape).
"""

import json
import os
import pathlib
from collections.abc import Callable

import numpy as np
from scipy import ndimage

from jaxseg import io_utils
from jaxseg.data.h5io import write_case

MANIFEST = "synthetic_manifest.json"
_VERSION = 1  # bump when the generator changes, so stale folders are regenerated


def case_ids(n_cases: int) -> list[str]:
  return [f"synth_{i:03d}" for i in range(n_cases)]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
  """Gaussian-smoothed white noise rescaled to unit std."""
  field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
  return (field - field.mean()) / (field.std() + 1e-12)


def _grid(shape: tuple[int, ...]) -> list[np.ndarray]:
  return [g.astype(np.float64) for g in np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")]


def _segment_distance(grid: list[np.ndarray], a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Distance of every voxel to the segment from ``a`` to ``b``."""
  ab = b - a
  rel = [g - c for g, c in zip(grid, a)]
  t = sum(r * d for r, d in zip(rel, ab)) / max(float(ab @ ab), 1e-12)
  t = np.clip(t, 0.0, 1.0)
  return np.sqrt(sum((r - t * d) ** 2 for r, d in zip(rel, ab)))


def _largest_component(mask: np.ndarray) -> np.ndarray:
  labels, n = ndimage.label(mask)
  if n <= 1:
    return mask
  sizes = np.bincount(labels.ravel())[1:]
  return labels == (np.argmax(sizes) + 1)


def _foreground(
  rng: np.random.Generator, shape: tuple[int, ...], grid: list[np.ndarray]
) -> np.ndarray:
  """One connected deformed ellipsoid covering a random 7-15 % of the volume."""
  shape_arr = np.asarray(shape, np.float64)
  centre = shape_arr * rng.uniform(0.38, 0.62, size=3)
  axes = rng.uniform(0.7, 1.3, size=3) * shape_arr / shape_arr.mean()
  # Normalised squared radius, deformed by low-frequency noise so the outline is irregular.
  radius2 = sum(((g - c) / a) ** 2 for g, c, a in zip(grid, centre, axes))
  field = np.sqrt(radius2) * (1.0 + 0.18 * _smooth_noise(rng, shape, min(shape) / 6))
  target = rng.uniform(0.07, 0.15)
  mask = field <= np.quantile(field, target)
  return _largest_component(mask)


def _distractors(
  rng: np.random.Generator, shape: tuple[int, ...], grid: list[np.ndarray], fg: np.ndarray
) -> np.ndarray:
  """Two tubes and two small blobs, kept at least 2 voxels away from the foreground."""
  shape_arr = np.asarray(shape, np.float64)
  out = np.zeros(shape, bool)
  for _ in range(2):  # vessel-like tubes crossing the volume
    a, b = rng.uniform(0.05, 0.95, size=(2, 3)) * shape_arr
    radius = rng.uniform(0.05, 0.08) * shape_arr.min()
    out |= _segment_distance(grid, a, b) <= radius
  for _ in range(2):  # small round blobs
    c = rng.uniform(0.1, 0.9, size=3) * shape_arr
    radius = rng.uniform(0.08, 0.13) * shape_arr.min()
    out |= sum((g - ci) ** 2 for g, ci in zip(grid, c)) <= radius**2
  near_fg = ndimage.binary_dilation(fg, iterations=2)
  return out & ~near_fg


def make_case(seed: int, index: int, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
  """One phantom case: (image float32 [D, H, W] z-scored, label uint8 [D, H, W] in {0, 1})."""
  shape = tuple(int(s) for s in shape)
  if len(shape) != 3 or min(shape) < 8:
    raise ValueError(f"synthetic shape must be 3 sizes >= 8, got {shape}")
  rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
  grid = _grid(shape)
  fg = _foreground(rng, shape, grid)
  distract = _distractors(rng, shape, grid, fg)
  # Raw intensities positive (as in MRI) so the bias field acts multiplicatively on contrast.
  texture = 0.15 * _smooth_noise(rng, shape, 1.5)
  raw = 1.0 + texture
  raw = raw + 1.0 * ndimage.gaussian_filter(fg.astype(np.float64), 0.7)
  raw = raw + rng.uniform(0.8, 1.1) * ndimage.gaussian_filter(distract.astype(np.float64), 0.7)
  bias = np.exp(0.2 * _smooth_noise(rng, shape, max(shape) / 3))
  image = raw * bias + 0.2 * rng.standard_normal(shape)
  image = (image - image.mean()) / image.std()
  return image.astype(np.float32), fg.astype(np.uint8)


def _manifest(n_cases: int, shape: tuple[int, ...], seed: int) -> dict:
  return {
    "generator": "jaxseg.data.synthetic",
    "version": _VERSION,
    "seed": int(seed),
    "n_cases": int(n_cases),
    "shape": [int(s) for s in shape],
  }


def generate(
  root: str | os.PathLike,
  case_path: Callable[[str | os.PathLike, str], pathlib.Path],
  list_file: str,
  n_cases: int = 24,
  shape: tuple[int, int, int] = (48, 48, 32),
  seed: int = 0,
) -> pathlib.Path:
  """Writes ``n_cases`` phantom cases in a one-list layout under ``root``; returns ``root``.

  Files: ``case_path(root, 'synth_NNN')`` for each case (the LA layout passes
  ``jaxseg.data.la.case_path``), ``<root>/<list_file>`` listing them and
  ``<root>/synthetic_manifest.json`` (seed, n_cases, shape). Does nothing when the manifest already
  matches and every case file exists. Each file is written atomically; the manifest is written
  last, so an interrupted generation is redone on the next call.
  """
  if n_cases < 1:
    raise ValueError(f"n_cases must be >= 1, got {n_cases}")
  if seed < 0:
    raise ValueError(f"seed must be >= 0, got {seed}")
  root = pathlib.Path(root)
  ids = case_ids(n_cases)
  manifest = _manifest(n_cases, shape, seed)
  manifest_path = root / MANIFEST
  if manifest_path.is_file():
    try:
      existing = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
      existing = None
    if existing == manifest and all(case_path(root, i).is_file() for i in ids):
      return root
  root.mkdir(parents=True, exist_ok=True)
  if manifest_path.exists():
    manifest_path.unlink()  # the folder is being rewritten; it is not valid until we finish
  for index, case_id in enumerate(ids):
    image, label = make_case(seed, index, shape)
    write_case(case_path(root, case_id), image, label)
  io_utils.write_text(root / list_file, "".join(f"{i}\n" for i in ids))
  io_utils.write_text(manifest_path, json.dumps(manifest, indent=1))
  return root


__all__ = ["MANIFEST", "case_ids", "generate", "make_case"]
