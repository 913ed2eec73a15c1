"""Training batches: two-stream (labeled-first) sampling and augmentation in a grain pipeline.

Sampling follows ``yulequan/UA-MT: code/dataloaders/la_heart.py`` (TwoStreamBatchSampler):
* labeled epoch e: a fresh permutation of the labeled indices, chunked into groups of
  ``labeled_batch_size`` (incomplete tail dropped); an epoch is
  ``len(labeled) // labeled_batch_size`` batches;
* unlabeled: an endless chain of fresh permutations of the unlabeled indices, chunked into groups of
  ``batch_size - labeled_batch_size`` (chunks may straddle two permutations), restarted at every
  labeled epoch (the partly used chain is discarded);
* batch j of an epoch = labeled chunk j followed by unlabeled chunk j.

Unlike upstream (a global numpy RNG shared by sampler and workers), every random draw is a pure
function of (seed, batch number, slot) through ``np.random.SeedSequence``: example n of the
stream is computed from n alone. The stream is therefore identical whatever the worker/thread
count, and the grain iterator state (the next batch number, per worker with ``worker_count > 0``)
restores it exactly.

With several processes (multi-host training) each process reads only the ``rows`` (slots) of every
global batch that its devices hold: the same examples the single-process stream puts in those
slots, so the global batch the processes assemble is the single-process batch, labeled slots first.
"""

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import numpy as np
from absl import flags

from jaxseg.data import transforms

# Domains of the seed tree, so that the three kinds of draws never share a stream.
_LABELED, _UNLABELED, _AUGMENT = 0, 1, 2
# 'rot_flip_crop': UA-MT LA (RandomRotFlip then RandomCrop); 'crop': RandomCrop only (MCF, Pancreas);
# 'crop_rot_flip': RandomCrop then RandomRotFlip (DyCON BraTS19: KU-CVML/DyCON code/dataloaders/brats19.py).
AUGMENTATIONS = ("rot_flip_crop", "crop", "crop_rot_flip")
# Slices [H, W] -> [ph, pw]: SSL4MIS RandomGenerator (rot90+flip or small rotation, nearest zoom).
AUGMENTATIONS_2D = ("acdc_random_generator",)


def _permutation(seed: int, *key: int, n: int) -> np.ndarray:
  return np.random.default_rng(np.random.SeedSequence([seed, *key])).permutation(n)


class TwoStreamSampler:
  """Which source index sits in each slot of each batch (a pure function of the batch number).

  Args:
    labeled_idx: source indices of labeled cases (primary stream).
    unlabeled_idx: source indices of unlabeled cases (secondary stream); may be empty only when
      ``labeled_batch_size == batch_size``.
    batch_size: examples per batch.
    labeled_batch_size: labeled examples per batch (they come first).
    seed: non-negative integer.
  """

  def __init__(
    self,
    labeled_idx: Sequence[int],
    unlabeled_idx: Sequence[int],
    batch_size: int,
    labeled_batch_size: int,
    seed: int,
  ):
    self.labeled = np.asarray(labeled_idx, np.int64)
    self.unlabeled = np.asarray(unlabeled_idx, np.int64)
    self.batch_size = int(batch_size)
    self.labeled_batch_size = int(labeled_batch_size)
    self.unlabeled_batch_size = self.batch_size - self.labeled_batch_size
    self.seed = int(seed)
    if self.seed < 0:
      raise ValueError(f"seed must be >= 0, got {seed}")
    if not 1 <= self.labeled_batch_size <= self.batch_size:
      raise ValueError(
        f"labeled_batch_size={labeled_batch_size} must be in [1, batch_size={batch_size}]"
      )
    if len(self.labeled) < self.labeled_batch_size:
      raise ValueError(
        f"{len(self.labeled)} labeled cases cannot fill labeled_batch_size={labeled_batch_size}"
      )
    if self.unlabeled_batch_size and len(self.unlabeled) == 0:
      raise ValueError(
        f"batch_size={batch_size} > labeled_batch_size={labeled_batch_size} needs "
        "unlabeled cases, but unlabeled_idx is empty"
      )
    self.batches_per_epoch = len(self.labeled) // self.labeled_batch_size

  def index(self, batch: int, slot: int) -> int:
    """Source index for ``slot`` (0..batch_size-1) of batch number ``batch``."""
    epoch, j = divmod(int(batch), self.batches_per_epoch)
    if slot < self.labeled_batch_size:
      perm = _permutation(self.seed, _LABELED, epoch, n=len(self.labeled))
      return int(self.labeled[perm[j * self.labeled_batch_size + slot]])
    position = j * self.unlabeled_batch_size + (slot - self.labeled_batch_size)
    cycle, offset = divmod(position, len(self.unlabeled))
    perm = _permutation(self.seed, _UNLABELED, epoch, cycle, n=len(self.unlabeled))
    return int(self.unlabeled[perm[offset]])

  def batch_indices(self, batch: int) -> list[int]:
    return [self.index(batch, s) for s in range(self.batch_size)]


class _MakeExample:
  """Element number -> augmented patch {'image': float32 [D, H, W, 1], 'label': int32 [D, H, W]}
  (2D: [H, W, 1] and [H, W]), plus float32 `name: fn(label)` per host target.

  Element n is slot `rows[n % len(rows)]` of batch `n // len(rows)`: with every slot as `rows`, n is
  the example number of the whole stream."""

  def __init__(
    self,
    source,
    sampler: TwoStreamSampler,
    patch_size: Sequence[int],
    augment: str,
    host_targets: Mapping[str, Callable[[np.ndarray], np.ndarray]],
    rows: Sequence[int],
  ):
    self.source = source
    self.sampler = sampler
    self.patch_size = tuple(int(p) for p in patch_size)
    self.augment = augment
    self.host_targets = dict(host_targets)
    self.rows = tuple(int(r) for r in rows)

  def __call__(self, n: int) -> dict[str, np.ndarray]:
    batch, j = divmod(int(n), len(self.rows))
    slot = self.rows[j]
    case = self.source[self.sampler.index(batch, slot)]
    rng = np.random.default_rng(np.random.SeedSequence([self.sampler.seed, _AUGMENT, batch, slot]))
    image, label = case["image"], case["label"]
    if self.augment == "acdc_random_generator":  # 2D slice, zoomed whole to the patch size
      image, label = transforms.random_generator_2d(image, label, self.patch_size, rng)
    else:
      if self.augment == "rot_flip_crop":
        image, label = transforms.random_rot_flip(image, label, rng)
      image, label = transforms.random_crop(image, label, self.patch_size, rng)
      if self.augment == "crop_rot_flip":
        image, label = transforms.random_rot_flip(image, label, rng)
    example = {"image": image.astype(np.float32)[..., None], "label": label.astype(np.int32)}
    for name, fn in self.host_targets.items():
      # Targets of the augmented crop that are cheaper on the host than in the jitted step.
      example[name] = np.asarray(fn(example["label"]), np.float32)
    return example


def make_train_dataset(
  source,
  labeled_idx: Sequence[int],
  unlabeled_idx: Sequence[int],
  batch_size: int,
  labeled_batch_size: int,
  patch_size: Sequence[int],
  seed: int,
  augment: str = "rot_flip_crop",
  worker_count: int = 0,
  num_threads: int = 2,
  host_targets: Mapping[str, Callable[[np.ndarray], np.ndarray]] | None = None,
  rows: Sequence[int] | None = None,
) -> grain.IterDataset:
  """The endless batched training stream as a grain IterDataset (see module docstring).

  Args:
    source: random-access source, ``source[i]`` -> {'image' [D, H, W], 'label' [D, H, W], ...}
      (slices [H, W] for the 2D augmentation).
    labeled_idx, unlabeled_idx: source indices of the two streams.
    batch_size, labeled_batch_size: examples per batch, of which the first are labeled.
    patch_size: (pd, ph, pw) crop size; (ph, pw) output size for 2D.
    seed: non-negative integer; fixes sampling and augmentation.
    augment: 'rot_flip_crop' (UA-MT: RandomRotFlip then RandomCrop) or 'crop' (RandomCrop only);
      2D: 'acdc_random_generator' (SSL4MIS RandomGenerator(patch_size): whole slice zoomed).
    worker_count: 0 computes in this process (with ``num_threads`` reader threads); > 0 uses that
      many grain worker processes. The stream is the same either way.
    num_threads: grain reader threads per process.
    host_targets: name -> fn(label crop) -> array of the label's shape, added to every example as
      float32 under that name (a method's `host_targets`, e.g. DTC's signed distance map). The
      functions must be picklable (module-level) for worker processes.
    rows: the slots (0..batch_size-1, ascending) of every batch to produce, e.g. the rows of the
      global batch that this process's devices hold (`jaxseg.parallel.process_rows`); default all.

  Returns:
    IterDataset of {'image': float32 [R, pd, ph, pw, 1], 'label': int32 [R, pd, ph, pw]}
    (2D: [R, ph, pw, 1] and [R, ph, pw]), plus float32 [R, pd, ph, pw] per host target, where
    R = len(rows) (batch_size by default): rows `rows` of the whole stream's batches.
  """
  if augment not in AUGMENTATIONS + AUGMENTATIONS_2D:
    raise ValueError(f"augment={augment!r} is not one of {AUGMENTATIONS + AUGMENTATIONS_2D}")
  rank = 2 if augment in AUGMENTATIONS_2D else 3
  if len(tuple(patch_size)) != rank:
    raise ValueError(f"augment={augment!r} needs patch_size with {rank} sizes, got {patch_size}")
  n_source = len(source)
  for name, idx in (("labeled_idx", labeled_idx), ("unlabeled_idx", unlabeled_idx)):
    bad = [int(i) for i in idx if not 0 <= int(i) < n_source]
    if bad:
      raise ValueError(f"{name} has indices {bad} outside the source's [0, {n_source})")
  sampler = TwoStreamSampler(labeled_idx, unlabeled_idx, batch_size, labeled_batch_size, seed)
  rows = list(range(batch_size)) if rows is None else [int(r) for r in rows]
  if not rows or rows != sorted(set(rows)) or not 0 <= rows[0] <= rows[-1] < batch_size:
    raise ValueError(f"rows={rows}: expected distinct ascending slots in [0, {batch_size})")
  # Element n = slot rows[n % R] of batch n // R; sys.maxsize makes the stream practically endless.
  # Batching happens on the MapDataset, so an element is a whole batch: grain worker processes then
  # deal out whole batches (round-robin, order kept) and the stream cannot depend on worker_count.
  ds = grain.MapDataset.range(sys.maxsize).map(
    _MakeExample(source, sampler, patch_size, augment, host_targets or {}, rows)
  )
  ds = ds.batch(len(rows), drop_remainder=True)
  read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(2, num_threads))
  ids = ds.to_iter_dataset(read)
  if worker_count > 0:
    # grain's worker processes read absl flags; outside an absl app (tests, notebooks) they are
    # unparsed and grain would fail, so accept the defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ids = ids.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return ids


def make_train_iterator(
  source,
  labeled_idx: Sequence[int],
  unlabeled_idx: Sequence[int],
  batch_size: int,
  labeled_batch_size: int,
  patch_size: Sequence[int],
  seed: int,
  augment: str = "rot_flip_crop",
  worker_count: int = 0,
  host_targets: Mapping[str, Callable[[np.ndarray], np.ndarray]] | None = None,
  rows: Sequence[int] | None = None,
) -> grain.DatasetIterator:
  """``iter(make_train_dataset(...))``: a checkpointable iterator (``get_state``/``set_state``)."""
  return iter(
    make_train_dataset(
      source,
      labeled_idx,
      unlabeled_idx,
      batch_size,
      labeled_batch_size,
      patch_size,
      seed,
      augment,
      worker_count,
      host_targets=host_targets,
      rows=rows,
    )
  )


_INT_KEYS = "__int_keys__"


def _encode(obj: Any) -> Any:
  if isinstance(obj, dict):
    if obj and all(isinstance(k, int) for k in obj):
      return {_INT_KEYS: {str(k): _encode(v) for k, v in obj.items()}}
    return {k: _encode(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_encode(v) for v in obj]
  return obj


def _decode(obj: Any) -> Any:
  if isinstance(obj, dict):
    if set(obj) == {_INT_KEYS}:
      return {int(k): _decode(v) for k, v in obj[_INT_KEYS].items()}
    return {k: _decode(v) for k, v in obj.items()}
  if isinstance(obj, list):
    return [_decode(v) for v in obj]
  return obj


def iterator_state_to_json(state: Any) -> str:
  """Grain iterator state -> JSON text.

  Grain states are nested dicts/lists of ints and strings, but some (the interleave under
  ``mp_prefetch``: ``future_states``) use int dict keys, which plain JSON would turn into strings;
  those dicts are tagged so :func:`iterator_state_from_json` gives back the exact state.
  """
  return json.dumps(_encode(state), sort_keys=True)


def iterator_state_from_json(text: str) -> Any:
  """Inverse of :func:`iterator_state_to_json`."""
  return _decode(json.loads(text))
