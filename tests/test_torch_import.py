"""Tests for jaxseg/models/torch_import.py: layout conversion, key checks, checkpoint inputs."""

import sys

import flax
import numpy as np
import pytest

from jaxseg.models import torch_import
from tests.conftest import require_import

FIXTURE = 'UA-MT_VNet.npz'


def _flat(variables):
  return flax.traverse_util.flatten_dict(variables)


def _synthetic(model_name, seed=0, **kwargs):
  """Random torch-layout state_dict with the shapes the importer expects."""
  rng = np.random.default_rng(seed)
  shapes = torch_import.expected_torch_shapes(model_name, **kwargs)
  return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def _expected_layout(name, arr, path):
  """Independent statement of the layout rules (docs/parity.md "Layout conventions")."""
  if path[-1] != 'kernel':
    return arr
  if path[-3].endswith('_up'):
    return arr.transpose(2, 3, 4, 0, 1)  # ConvTranspose3d (I, O, k, k, k) -> (k, k, k, I, O)
  return arr.transpose(2, 3, 4, 1, 0)  # Conv3d (O, I, k, k, k) -> (k, k, k, I, O)


def test_fixture_state_dict_maps_every_tensor(parity):
  pf = parity(FIXTURE)
  kwargs = pf.meta['constructor_kwargs']
  sd = pf.group('param')
  flat = _flat(torch_import.import_state_dict('vnet', sd, **kwargs))
  keys = torch_import.key_map('vnet', **kwargs)
  used = [k for k in sd if not k.endswith('num_batches_tracked')]
  assert sorted(used) == sorted(keys)
  assert len(flat) == len(used)
  for name in used:
    e = keys[name]
    leaf = np.asarray(flat[(e.collection,) + e.path])
    np.testing.assert_array_equal(
      leaf, _expected_layout(name, sd[name], (e.collection,) + e.path), err_msg=name
    )
  # Spot checks of the naming convention.
  assert keys['block_one.conv.1.running_var'] == ('batch_stats', ('block_one', 'bn0', 'var'), None)
  assert keys['block_two.conv.3.weight'].path == ('block_two', 'conv1', 'kernel')
  assert keys['block_two.conv.4.weight'].path == ('block_two', 'bn1', 'scale')


def test_errors_list_missing_unexpected_and_misshaped():
  sd = _synthetic('vnet', n_filters=4)
  del sd['block_three.conv.6.bias']
  sd['block_ten.conv.0.weight'] = np.zeros((2, 2), np.float32)
  sd['out_conv.weight'] = np.zeros((3, 4, 1, 1, 1), np.float32)
  with pytest.raises(ValueError) as info:
    torch_import.import_state_dict('vnet', sd, n_filters=4)
  msg = str(info.value)
  assert "'block_three.conv.6.bias'" in msg and 'missing keys (1)' in msg
  assert "'block_ten.conv.0.weight'" in msg and 'unexpected keys (1)' in msg
  assert 'out_conv.weight: got (3, 4, 1, 1, 1), expected (2, 4, 1, 1, 1)' in msg


def test_wrappers_prefix_counters_and_tensor_like_values():
  sd = _synthetic('vnet', seed=1, n_filters=4)
  want = _flat(torch_import.import_state_dict('vnet', sd, n_filters=4))

  class FakeTensor:  # what a torch tensor offers to the importer
    def __init__(self, a):
      self.a = a

    def detach(self):
      return self

    def cpu(self):
      return self

    def numpy(self):
      return self.a

  wrapped = {'state_dict': {f'module.{k}': FakeTensor(v) for k, v in sd.items()}}
  wrapped['state_dict']['module.block_one.conv.1.num_batches_tracked'] = np.array(3.0)
  for obj in (wrapped, {'model': sd, 'epoch': 7}):
    got = _flat(torch_import.import_state_dict('vnet', obj, n_filters=4))
    assert got.keys() == want.keys()
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


@pytest.mark.parametrize(
  'normalization,n_filters', [('none', 4), ('batchnorm', 4), ('groupnorm', 16), ('instancenorm', 4)]
)
def test_normalization_kinds(normalization, n_filters):
  kwargs = dict(normalization=normalization, n_filters=n_filters, n_classes=3, n_channels=2)
  sd = _synthetic('vnet', seed=2, **kwargs)
  # Upstream Sequentials: [conv, norm, ReLU] per stage, or [conv, ReLU] without a norm.
  second_conv = 'block_two.conv.2.weight' if normalization == 'none' else 'block_two.conv.3.weight'
  assert sd[second_conv].shape == (2 * n_filters, 2 * n_filters, 3, 3, 3)
  assert sd['block_one.conv.0.weight'].shape == (n_filters, 2, 3, 3, 3)
  assert sd['out_conv.weight'].shape == (3, n_filters, 1, 1, 1)
  assert sd['block_five_up.conv.0.weight'].shape == (16 * n_filters, 8 * n_filters, 2, 2, 2)
  has_affine = normalization in ('batchnorm', 'groupnorm')
  assert ('block_one.conv.1.weight' in sd) == has_affine
  assert ('block_one.conv.1.running_mean' in sd) == (normalization == 'batchnorm')
  variables = torch_import.import_state_dict('vnet', sd, **kwargs)
  flat = _flat(variables)
  keys = torch_import.key_map('vnet', **kwargs)
  for name, arr in sd.items():
    e = keys[name]
    np.testing.assert_array_equal(
      flat[(e.collection,) + e.path], _expected_layout(name, arr, (e.collection,) + e.path)
    )
  assert set(variables) == {'params', 'batch_stats'}
  assert bool(variables['batch_stats']) == (normalization == 'batchnorm')


def test_unknown_model_and_bad_paths(tmp_path):
  with pytest.raises(KeyError, match="'resnet9'.*known"):
    torch_import.import_state_dict('resnet9', {})
  with pytest.raises(ValueError, match=r'must end in \.pth or \.pt'):
    torch_import.import_state_dict('vnet', str(tmp_path / 'weights.npz'))


def test_pth_without_torch_says_what_to_do(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` raises ImportError, as if absent
  with pytest.raises(ImportError, match='install torch'):
    torch_import.import_state_dict('vnet', tmp_path / 'iter_6000.pth')


def test_pth_roundtrip_with_torch(tmp_path):
  torch = require_import('torch')

  sd = _synthetic('vnet', seed=3, n_filters=4)
  path = tmp_path / 'iter_6000.pth'
  torch.save({'state_dict': {k: torch.from_numpy(v) for k, v in sd.items()}}, path)
  got = _flat(torch_import.import_state_dict('vnet', path, n_filters=4))
  want = _flat(torch_import.import_state_dict('vnet', sd, n_filters=4))
  for k in want:
    np.testing.assert_array_equal(got[k], want[k])
