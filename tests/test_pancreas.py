"""Tests for jaxseg.data.pancreas: DTC's Pancreas h5 layout, root discovery, splits, bad-input errors
and the synthetic stand-in (written, then read back through the registry like real data)."""

import h5py
import ml_collections
import numpy as np
import pytest

from jaxseg.data import DATASETS
from jaxseg.data import pancreas
from jaxseg.data.h5io import DataError
from jaxseg.data.h5io import write_case


def _write_root(root, names=('p1', 'p2', 'p3', 'p4'), shape=(6, 5, 4)):
  for i, name in enumerate(names):
    image = np.full(shape, float(i), np.float32)
    label = (np.arange(np.prod(shape)).reshape(shape) % (i + 2) == 0).astype(np.uint8)
    write_case(pancreas.case_path(root, name), image, label)
  (root / 'train.list').write_text(''.join(f'{n}\n' for n in names))
  (root / 'test.list').write_text('p9\n')
  return list(names)


def test_layout_reading_and_cache(tmp_path):
  assert pancreas.case_path(tmp_path, 'PANCREAS_0001') == tmp_path / 'data' / 'PANCREAS_0001.h5'
  names = _write_root(tmp_path)
  assert DATASETS['pancreas'] is pancreas.DATASET
  spec = DATASETS['pancreas']
  src = spec.train_source(tmp_path, names, 2)
  item = src[2]
  assert item['case'] == 'p3'
  assert item['image'].dtype == np.float32 and item['label'].dtype == np.uint8
  assert item['image'].shape == (6, 5, 4)
  np.testing.assert_array_equal(item['image'], 2.0)
  pancreas.case_path(tmp_path, 'p3').unlink()  # served from RAM afterwards
  np.testing.assert_array_equal(src[2]['label'], item['label'])
  # Validation from the end of train.list, labeled = the first of the rest (as LA).
  splits = spec.make_splits(tmp_path, ml_collections.ConfigDict(dict(n_val=1, labeled=2)))
  assert splits == {
    'train': names[:3],
    'val': names[3:],
    'labeled': names[:2],
    'unlabeled': names[2:3],
  }
  assert spec.test_list == 'test.list'


def _write_raw(path, **datasets):
  path.parent.mkdir(parents=True, exist_ok=True)
  with h5py.File(path, 'w') as f:
    for key, value in datasets.items():
      f.create_dataset(key, data=value)


@pytest.mark.parametrize(
  'kind, match',
  [
    ('missing_file', 'case file not found'),
    ('missing_key', r"missing key\(s\) \['label'\]"),
    ('shape', 'image shape'),
    ('nan', 'non-finite'),
    ('labels', r'label values \[2\] outside \[0, 2\)'),
  ],
)
def test_bad_input_errors_name_the_file(tmp_path, kind, match):
  path = pancreas.case_path(tmp_path, 'bad')
  image = np.zeros((4, 4, 4), np.float32)
  label = np.zeros((4, 4, 4), np.uint8)
  if kind == 'missing_key':
    _write_raw(path, image=image)
  elif kind == 'shape':
    _write_raw(path, image=image, label=label[:3])
  elif kind == 'nan':
    image[1, 2, 3] = np.nan
    _write_raw(path, image=image, label=label)
  elif kind == 'labels':
    label[0, 0, 0] = 2
    _write_raw(path, image=image, label=label)
  src = pancreas.source(tmp_path, ['bad'], 2)
  with pytest.raises(DataError, match=match) as err:
    src[0]
  assert 'bad.h5' in str(err.value)


def test_find_root_argument_then_env(tmp_path, monkeypatch):
  monkeypatch.delenv(pancreas.ENV_VAR, raising=False)
  good = tmp_path / 'good'
  _write_root(good)
  assert pancreas.find_root(str(good)) == good
  monkeypatch.setenv(pancreas.ENV_VAR, str(good))
  assert pancreas.find_root(None) == good
  assert pancreas.find_root(str(tmp_path / 'nowhere')) == good  # falls back to the env var
  monkeypatch.delenv(pancreas.ENV_VAR)
  with pytest.raises(DataError, match='Pancreas-CT') as err:
    pancreas.find_root(str(tmp_path / 'nowhere'))
  assert 'nowhere' in str(err.value)
  with pytest.raises(DataError, match='data.root is empty'):
    pancreas.find_root(None)


def test_synthesize_round_trip(tmp_path):
  cfg = ml_collections.ConfigDict(dict(n_cases=3, n_test=1, shape=(16, 12, 10), seed=4))
  root = DATASETS['pancreas'].synthesize(tmp_path, cfg)
  assert pancreas.find_root(str(root)) == root
  names = (root / 'train.list').read_text().split()
  test_names = (root / 'test.list').read_text().split()
  assert len(names) == 3 and len(test_names) == 1 and not set(names) & set(test_names)
  src = pancreas.source(root, names + test_names, 2)
  first = [src[i] for i in range(4)]
  for item in first:
    assert item['image'].shape == item['label'].shape == (16, 12, 10)
    assert set(np.unique(item['label'])) == {0, 1}
    assert abs(float(item['image'].mean())) < 1e-3  # z-scored
  # Deterministic, and a second call with the same settings leaves the files alone.
  mtime = pancreas.case_path(root, names[0]).stat().st_mtime_ns
  assert DATASETS['pancreas'].synthesize(tmp_path, cfg) == root
  assert pancreas.case_path(root, names[0]).stat().st_mtime_ns == mtime
  other = DATASETS['pancreas'].synthesize(tmp_path / 'again', cfg)
  again = pancreas.source(other, names, 2)
  for i in range(3):
    np.testing.assert_array_equal(again[i]['image'], first[i]['image'])
  with pytest.raises(ValueError, match='n_cases'):
    pancreas.synthesize(tmp_path / 'none', {'n_cases': 0})
