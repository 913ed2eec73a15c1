"""Tests for jaxseg.data.pipeline: two-stream sampling semantics, augmentation, reproducibility."""

import numpy as np
import pytest

from jaxseg.data import pipeline
from jaxseg.data import transforms
from jaxseg.data.pipeline import TwoStreamSampler
from jaxseg.data.pipeline import iterator_state_from_json
from jaxseg.data.pipeline import iterator_state_to_json
from jaxseg.data.pipeline import make_train_iterator

PATCH = (8, 8, 6)


class ConstSource:
  """Case i is a constant volume of value i + 1 (so a patch tells which case it came from)."""

  def __init__(self, n, shape=(12, 11, 9)):
    self.n, self.shape = n, shape

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {
      "image": np.full(self.shape, i + 1.0, np.float32),
      "label": np.full(self.shape, i % 2, np.uint8),
      "case": f"c{i}",
    }


class RampSource:
  """Non-symmetric volumes, so rot/flip/crop are visible."""

  def __init__(self, n, shape=(12, 11, 9)):
    self.n, self.shape = n, shape

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    image = np.arange(np.prod(self.shape), dtype=np.float32).reshape(self.shape) + 1000 * i
    return {
      "image": image,
      "label": (image.astype(np.int64) % 3 == 0).astype(np.uint8),
      "case": f"r{i}",
    }


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_sampler_labeled_epochs_are_permutations_with_tail_dropped():
  labeled = [10, 11, 12, 13, 14]
  s = TwoStreamSampler(labeled, [20, 21, 22], batch_size=4, labeled_batch_size=2, seed=0)
  assert s.batches_per_epoch == 2
  dropped = []
  for epoch in range(40):
    used = [s.index(b, slot) for b in (2 * epoch, 2 * epoch + 1) for slot in (0, 1)]
    assert len(set(used)) == 4 and set(used) <= set(labeled)
    dropped += sorted(set(labeled) - set(used))
  # The dropped tail is random (a fresh permutation each epoch), not always the same case.
  assert len(set(dropped)) == 5


def test_sampler_unlabeled_chain_restarts_every_labeled_epoch():
  unlabeled = [20, 21, 22]
  s = TwoStreamSampler([0, 1, 2, 3], unlabeled, batch_size=4, labeled_batch_size=2, seed=1)
  for epoch in range(30):
    chain = [s.index(b, slot) for b in (2 * epoch, 2 * epoch + 1) for slot in (2, 3)]
    # Positions 0-2 of each epoch's chain are one full permutation (chain restarted), position 3
    # starts the next permutation (chunks straddle permutations, as itertools-grouper upstream).
    assert sorted(chain[:3]) == unlabeled
    assert chain[3] in unlabeled


def test_sampler_is_a_function_of_seed():
  a = TwoStreamSampler(range(8), range(8, 16), 4, 2, seed=3)
  b = TwoStreamSampler(range(8), range(8, 16), 4, 2, seed=3)
  c = TwoStreamSampler(range(8), range(8, 16), 4, 2, seed=4)
  seq = lambda s: [s.batch_indices(i) for i in range(12)]
  assert seq(a) == seq(b) and seq(a) != seq(c)
  counts = np.bincount([i for b in range(4000) for i in a.batch_indices(b)[:2]], minlength=8)
  np.testing.assert_allclose(counts / counts.sum(), 1 / 8, atol=0.01)


@pytest.mark.parametrize(
  "kwargs, pattern",
  [
    (dict(unlabeled_idx=[]), "unlabeled_idx is empty"),
    (dict(labeled_batch_size=5), r"labeled_batch_size=5 must be in \[1, batch_size=4\]"),
    (dict(labeled_batch_size=0), r"labeled_batch_size=0"),
    (dict(labeled_idx=[0]), "1 labeled cases cannot fill labeled_batch_size=2"),
    (dict(seed=-1), "seed must be >= 0"),
    (dict(unlabeled_idx=[4, 9]), r"unlabeled_idx has indices \[9\] outside"),
    (dict(augment="noise"), "augment='noise'"),
  ],
)
def test_bad_arguments(kwargs, pattern):
  args = dict(
    source=ConstSource(6),
    labeled_idx=[0, 1, 2],
    unlabeled_idx=[3, 4, 5],
    batch_size=4,
    labeled_batch_size=2,
    patch_size=PATCH,
    seed=0,
  )
  args.update(kwargs)
  with pytest.raises(ValueError, match=pattern):
    make_train_iterator(**args)


def test_batches_are_labeled_first_with_the_sampled_cases():
  src = ConstSource(7)
  it = make_train_iterator(
    src, [0, 1, 2, 3], [4, 5, 6], batch_size=4, labeled_batch_size=2, patch_size=PATCH, seed=7
  )
  sampler = TwoStreamSampler([0, 1, 2, 3], [4, 5, 6], 4, 2, seed=7)
  for b, batch in enumerate(_take(it, 6)):
    assert batch["image"].shape == (4, *PATCH, 1) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (4, *PATCH) and batch["label"].dtype == np.int32
    cases = [int(batch["image"][i, 0, 0, 0, 0]) - 1 for i in range(4)]
    assert cases == sampler.batch_indices(b)
    assert all(c < 4 for c in cases[:2]) and all(c >= 4 for c in cases[2:])
    for i, c in enumerate(cases):  # constant volumes stay constant through rot/flip/crop
      np.testing.assert_array_equal(batch["image"][i], c + 1.0)
      np.testing.assert_array_equal(batch["label"][i], c % 2)


@pytest.mark.parametrize("augment", ["rot_flip_crop", "crop"])
def test_augmentation_is_the_upstream_chain_with_per_example_seeds(augment):
  src = RampSource(4)
  it = make_train_iterator(
    src,
    [0, 1],
    [2, 3],
    batch_size=3,
    labeled_batch_size=1,
    patch_size=PATCH,
    seed=11,
    augment=augment,
  )
  sampler = TwoStreamSampler([0, 1], [2, 3], 3, 1, seed=11)
  for b, batch in enumerate(_take(it, 4)):
    for slot in range(3):
      case = src[sampler.index(b, slot)]
      rng = np.random.default_rng(np.random.SeedSequence([11, pipeline._AUGMENT, b, slot]))
      image, label = case["image"], case["label"]
      if augment == "rot_flip_crop":
        image, label = transforms.random_rot_flip(image, label, rng)
      image, label = transforms.random_crop(image, label, PATCH, rng)
      np.testing.assert_array_equal(batch["image"][slot, ..., 0], image)
      np.testing.assert_array_equal(batch["label"][slot], label)


def test_supervised_only_needs_no_unlabeled():
  src = ConstSource(4)
  it = make_train_iterator(
    src,
    [0, 1, 2, 3],
    [],
    batch_size=2,
    labeled_batch_size=2,
    patch_size=PATCH,
    seed=0,
    augment="crop",
  )
  cases = [int(v) - 1 for batch in _take(it, 6) for v in batch["image"][:, 0, 0, 0, 0]]
  for epoch in range(3):  # 2 batches of 2 per epoch: each epoch sees every case once
    assert sorted(cases[4 * epoch : 4 * epoch + 4]) == [0, 1, 2, 3]


def _label_parity(label):
  """A host target: an affine map of the label crop."""
  return 2.0 * label - 0.5


def test_host_targets_are_computed_from_the_augmented_label_crop():
  src = RampSource(4)
  plain = make_train_iterator(
    src, [0, 1], [2, 3], batch_size=4, labeled_batch_size=2, patch_size=PATCH, seed=3
  )
  with_target = make_train_iterator(
    src,
    [0, 1],
    [2, 3],
    batch_size=4,
    labeled_batch_size=2,
    patch_size=PATCH,
    seed=3,
    host_targets={"t": _label_parity},
  )
  for a, b in zip(_take(plain, 3), _take(with_target, 3)):
    assert set(b) == set(a) | {"t"} and b["t"].dtype == np.float32
    np.testing.assert_array_equal(b["label"], a["label"])  # the targets change nothing else
    np.testing.assert_array_equal(b["t"], 2.0 * a["label"] - 0.5)


def test_same_seed_same_stream_other_seed_differs():
  src = RampSource(5)
  make = lambda seed: make_train_iterator(src, [0, 1, 2], [3, 4], 3, 2, PATCH, seed=seed)
  a, b, c = _take(make(5), 4), _take(make(5), 4), _take(make(6), 4)
  _assert_same(a, b)
  assert not all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, c))


def test_state_restore_is_exact_through_json():
  src = RampSource(5)
  make = lambda: make_train_iterator(src, [0, 1, 2], [3, 4], 3, 2, PATCH, seed=2)
  it = make()
  _take(it, 5)
  text = iterator_state_to_json(it.get_state())
  expected = _take(it, 3)
  fresh = make()
  fresh.set_state(iterator_state_from_json(text))
  _assert_same(_take(fresh, 3), expected)


def test_state_json_keeps_int_keys():
  state = {"a": 1, "future_states": {2: {"next_index": 0}, 5: {"x": [1, {3: "y"}]}}, "e": {}}
  text = iterator_state_to_json(state)
  assert iterator_state_from_json(text) == state


def test_stream_does_not_depend_on_worker_count():
  src = RampSource(5)
  reference = _take(make_train_iterator(src, [0, 1, 2], [3, 4], 3, 2, PATCH, seed=9), 6)
  it = make_train_iterator(src, [0, 1, 2], [3, 4], 3, 2, PATCH, seed=9, worker_count=2)
  first = _take(it, 4)
  text = iterator_state_to_json(it.get_state())
  rest = _take(it, 2)
  _assert_same(first + rest, reference)
  # A multi-worker state restores into a multi-worker iterator.
  fresh = make_train_iterator(src, [0, 1, 2], [3, 4], 3, 2, PATCH, seed=9, worker_count=2)
  fresh.set_state(iterator_state_from_json(text))
  _assert_same(_take(fresh, 2), rest)
  del it, fresh


def test_lasource_on_synthetic_phantoms(tmp_path):
  from jaxseg.data import build_source
  from jaxseg.data.la import LIST_FILE
  from jaxseg.data.la import case_path
  from jaxseg.data.synthetic import case_ids
  from jaxseg.data.synthetic import generate

  root = generate(tmp_path, case_path, LIST_FILE, n_cases=4, shape=(20, 18, 14), seed=0)
  src = build_source("synthetic", root, case_ids(4), num_classes=2)
  it = make_train_iterator(
    src, [0, 1], [2, 3], batch_size=4, labeled_batch_size=2, patch_size=(16, 16, 12), seed=0
  )
  for batch in _take(it, 3):
    assert batch["image"].shape == (4, 16, 16, 12, 1)
    assert set(np.unique(batch["label"]).tolist()) <= {0, 1}
    assert batch["label"].sum() > 0
    # Patches are crops of z-scored volumes: finite, and not all padding.
    assert np.isfinite(batch["image"]).all() and (batch["image"] != 0).mean() > 0.5


class SliceSource:
  """2D slices [H, W] of varying shapes (as ACDC), labels in 0..3."""

  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    shape = (20 + 2 * i, 18 + i)
    image = np.arange(np.prod(shape), dtype=np.float32).reshape(shape) / 100.0 + 1000 * i
    return {
      "image": image,
      "label": (np.arange(np.prod(shape)).reshape(shape) % 4).astype(np.uint8),
      "case": f"s{i}",
    }


def test_2d_random_generator_batches():
  src = SliceSource(5)
  it = make_train_iterator(
    src,
    [0, 1, 2],
    [3, 4],
    batch_size=3,
    labeled_batch_size=2,
    patch_size=(16, 16),
    seed=4,
    augment="acdc_random_generator",
  )
  sampler = TwoStreamSampler([0, 1, 2], [3, 4], 3, 2, seed=4)
  for b, batch in enumerate(_take(it, 3)):
    assert batch["image"].shape == (3, 16, 16, 1) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (3, 16, 16) and batch["label"].dtype == np.int32
    for slot in range(3):
      case = src[sampler.index(b, slot)]
      rng = np.random.default_rng(np.random.SeedSequence([4, pipeline._AUGMENT, b, slot]))
      image, label = transforms.random_generator_2d(case["image"], case["label"], (16, 16), rng)
      np.testing.assert_array_equal(batch["image"][slot, ..., 0], image)
      np.testing.assert_array_equal(batch["label"][slot], label)
  with pytest.raises(ValueError, match="needs patch_size with 2 sizes"):
    make_train_iterator(
      src, [0, 1], [2], 3, 2, (16, 16, 16), seed=0, augment="acdc_random_generator"
    )
  with pytest.raises(ValueError, match="needs patch_size with 3 sizes"):
    make_train_iterator(src, [0, 1], [2], 3, 2, (16, 16), seed=0, augment="crop")
