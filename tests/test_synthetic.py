"""Tests for jaxseg.data.synthetic: layout, determinism, difficulty, idempotency."""

import json
import time

import numpy as np
from scipy import ndimage

from jaxseg.data import LASource
from jaxseg.data.la import LIST_FILE
from jaxseg.data.la import case_path
from jaxseg.data.splits import read_list
from jaxseg.data.synthetic import MANIFEST
from jaxseg.data.synthetic import case_ids
from jaxseg.data.synthetic import generate
from jaxseg.data.synthetic import make_case

SHAPE = (32, 32, 24)


def _best_threshold_dice(image, label):
  """Best Dice of ``image > t`` over 100 thresholds (the naive intensity baseline)."""
  best = 0.0
  fg = label > 0
  for t in np.quantile(image, np.linspace(0.5, 0.995, 100)):
    pred = image > t
    best = max(best, 2 * (pred & fg).sum() / (pred.sum() + fg.sum()))
  return best


def test_generate_writes_la_layout_read_by_lasource(tmp_path):
  root = generate(tmp_path / "synth", case_path, LIST_FILE, n_cases=3, shape=SHAPE, seed=5)
  assert read_list(root / "train.list") == ["synth_000", "synth_001", "synth_002"]
  assert json.loads((root / MANIFEST).read_text())["seed"] == 5
  src = LASource(root, case_ids(3), num_classes=2)
  item = src[2]
  image, label = make_case(5, 2, SHAPE)
  np.testing.assert_array_equal(item["image"], image)
  np.testing.assert_array_equal(item["label"], label)
  assert item["image"].shape == SHAPE and item["label"].dtype == np.uint8
  # z-scored over the whole volume, like the LA preprocessing.
  assert abs(float(image.mean())) < 1e-4 and abs(float(image.std()) - 1) < 1e-4


def test_determinism_by_seed():
  a_image, a_label = make_case(0, 3, SHAPE)
  b_image, b_label = make_case(0, 3, SHAPE)
  assert a_image.tobytes() == b_image.tobytes() and a_label.tobytes() == b_label.tobytes()
  c_image, c_label = make_case(1, 3, SHAPE)
  assert a_image.tobytes() != c_image.tobytes() and a_label.tobytes() != c_label.tobytes()
  d_image, _ = make_case(0, 4, SHAPE)
  assert a_image.tobytes() != d_image.tobytes()


def test_foreground_is_one_object_of_5_to_20_percent_and_intensity_is_not_enough():
  dices = []
  for i in range(12):
    image, label = make_case(0, i, SHAPE)
    assert set(np.unique(label).tolist()) == {0, 1}
    assert 0.05 <= label.mean() <= 0.20
    assert ndimage.label(label)[1] == 1
    # Foreground is brighter on average, but distractors and the bias field defeat thresholding.
    assert image[label == 1].mean() > image[label == 0].mean() + 0.8
    dices.append(_best_threshold_dice(image, label))
  assert max(dices) < 0.9
  assert 0.3 < np.mean(dices) < 0.85


def test_distractors_are_bright_and_unlabeled():
  image, label = make_case(0, 0, SHAPE)
  far = ~ndimage.binary_dilation(label > 0, iterations=3)
  fg_level = np.median(image[label == 1])
  # Some voxels far from the object are as bright as the object's median (distractors).
  smooth = ndimage.gaussian_filter(image, 1.0)
  assert (smooth[far] > fg_level).sum() > 20


def test_idempotent_and_regenerates_on_change(tmp_path):
  root = tmp_path / "s"
  generate(root, case_path, LIST_FILE, n_cases=2, shape=SHAPE, seed=0)
  path = case_path(root, "synth_001")
  mtime = path.stat().st_mtime_ns
  time.sleep(0.01)
  generate(root, case_path, LIST_FILE, n_cases=2, shape=SHAPE, seed=0)
  assert path.stat().st_mtime_ns == mtime
  before = path.read_bytes()
  generate(root, case_path, LIST_FILE, n_cases=2, shape=SHAPE, seed=1)
  assert path.stat().st_mtime_ns != mtime
  assert json.loads((root / MANIFEST).read_text())["seed"] == 1
  # A missing case file is regenerated even with a matching manifest.
  path.unlink()
  generate(root, case_path, LIST_FILE, n_cases=2, shape=SHAPE, seed=1)
  assert path.is_file()
  generate(root, case_path, LIST_FILE, n_cases=2, shape=SHAPE, seed=0)
  assert path.read_bytes() == before  # same seed -> same bytes on disk
  assert not [p for p in root.rglob("*.tmp")]


def test_generation_speed(tmp_path):
  start = time.perf_counter()
  generate(tmp_path, case_path, LIST_FILE, n_cases=8, shape=(48, 48, 32), seed=0)
  assert time.perf_counter() - start < 8.0
