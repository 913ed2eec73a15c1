"""Tests for jaxseg/models/cml_vnet.py: parity with SongwuJob/CML code/networks/VNet.py (fixture
CML_VNet.npz, docs/parity.md) for every output the fixture holds (eval, train, BN
running stats, float64 and float32 gradients), and the torch importer's key map."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import models
from jaxseg.models import torch_import
from tests.conftest import assert_forward_matches
from tests.conftest import assert_grads64_match
from tests.conftest import assert_key_map_covers
from tests.conftest import assert_train_step_matches
from tests.conftest import channel_dropout_masks
from tests.conftest import fixture_outputs
from tests.conftest import lossw_loss
from tests.conftest import network_fixture
from tests.conftest import x64_loss_and_grads

FIXTURE = 'CML_VNet.npz'


def _load(parity):
  return network_fixture(parity, FIXTURE, 'cml_vnet')


def _train_forward(model, variables, x):
  # The fixture's train pass runs with every dropout p set to 0 (docs/parity.md): here
  # has_dropout=False, i.e. the same forward with batch-statistics BN.
  return model.apply(variables, x, train=True, mutable=['batch_stats'])


def test_eval_outputs_match_upstream(parity):
  pf, kwargs, variables, x = _load(parity)
  eval_forward = lambda m, v, x: m.apply(v, x, train=False)
  got = assert_forward_matches(
    pf, 'out', models.get('cml_vnet', **kwargs), eval_forward, variables, x
  )
  assert len(got) == 4  # seg1, seg2, embedding1, embedding2


def test_train_outputs_and_bn_stats_match_upstream(parity):
  pf, kwargs, variables, x = _load(parity)
  model = models.get('cml_vnet', **{**kwargs, 'has_dropout': False})
  assert_train_step_matches(
    pf, model, torch_import.key_map('cml_vnet', **kwargs), variables, x, _train_forward
  )


def test_gradients_match_upstream_float64(parity):
  pf, kwargs, variables, x = _load(parity)
  kwargs = {**kwargs, 'has_dropout': False}
  lossw = fixture_outputs(pf.group('lossw'))
  loss64, grads64 = x64_loss_and_grads(
    'cml_vnet', kwargs, lossw_loss(_train_forward), variables, x, lossw
  )
  np.testing.assert_allclose(loss64, float(pf['loss64']), rtol=1e-10)
  # float64 only: a float32 gradient can match torch's only to grad_fp32_noise_rel (up to 7e-3 in
  # this fixture, docs/parity.md), and each extra compile of this two-branch network costs CI seconds.
  # A faithful float64 port reaches ~1e-11 relative to max|grad64| (1.5e-13 here).
  assert_grads64_match(pf, torch_import.key_map('cml_vnet', **kwargs), grads64, 1e-9)


def test_key_map_covers_the_fixture_state_dict(parity):
  pf = parity(FIXTURE)
  kwargs = dict(pf.meta['constructor_kwargs'])
  bad = dict(assert_key_map_covers(pf, 'cml_vnet', kwargs))
  bad['decoder2.block_six_up.conv.1.weight'] = bad['decoder2.block_six_up.conv.1.weight'][:1]
  del bad['encoder2.block_one.conv.0.bias']
  with pytest.raises(ValueError, match=r'missing keys \(1\).*mis-shaped keys \(1\)'):
    torch_import.import_state_dict('cml_vnet', bad, **kwargs)


def _random_variables(model, x):
  """Variables in the shapes of `model.init` drawn with numpy (no init compile): conv weights
  U(+-1/sqrt(fan_in)), BN identity."""
  shapes = jax.eval_shape(functools.partial(model.init, jax.random.key(0)), x)
  rng = np.random.default_rng(3)

  def draw(path, leaf):
    kind = path[-1].key
    if kind == 'kernel':
      bound = 1 / math.sqrt(math.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.uniform(-bound, bound, leaf.shape), jnp.float32)
    return jnp.ones(leaf.shape) if kind in ('scale', 'var') else jnp.zeros(leaf.shape)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def test_param_count_and_dropout_sites():
  """Two VNets' worth of parameters (n_filters 16: decoder2's 3x3x3 up-convs hold 27/8 times the
  transposed convs' weights); four independent dropout masks in train mode, none in eval."""
  x = jax.ShapeDtypeStruct((1, 16, 16, 16, 1), jnp.float32)
  model = models.get('cml_vnet', n_filters=16, has_dropout=True)
  shapes = jax.eval_shape(functools.partial(model.init, jax.random.key(0)), x)
  count = lambda t: sum(math.prod(a.shape) for a in jax.tree.leaves(t))
  p = shapes['params']
  vnet = 9_448_866  # UA-MT VNet, tests/test_vnet.py
  up_t = sum(
    count(p['decoder1'][f'block_{b}_up']['conv0']['kernel'])
    for b in ('five', 'six', 'seven', 'eight')
  )
  assert count(p) == 2 * vnet - up_t + up_t * 27 // 8

  small = models.get('cml_vnet', n_filters=4, has_dropout=True)
  xs = jnp.asarray(np.random.default_rng(0).standard_normal((8, 16, 16, 16, 1)), jnp.float32)
  variables = _random_variables(small, xs[:1])
  capture = lambda mdl, _: mdl.name == 'block_five'
  (_, _, *embeddings), state = jax.jit(
    lambda v, k: small.apply(
      v,
      xs,
      train=True,
      rngs={'dropout': k},
      capture_intermediates=capture,
      mutable=['batch_stats', 'intermediates'],
    )
  )(variables, jax.random.key(1))
  masks = []
  for k, e in enumerate(embeddings, start=1):
    # Dropout3d: each (sample, channel) map of x5 is either zeroed or scaled by 1 / (1 - 0.5).
    (before,) = state['intermediates'][f'encoder{k}']['block_five']['__call__']
    _, dropped = channel_dropout_masks(before, e, atol=1e-6)
    live = np.any(np.asarray(before) != 0, axis=(1, 2, 3))
    assert 0.2 < dropped[live].mean() < 0.8
    masks.append(np.where(live, dropped, False))
  assert np.any(masks[0] != masks[1])  # the two encoders draw independent masks
  # (Eval mode has no dropout: the eval parity test runs the fixture's has_dropout=True network.)
  with pytest.raises(ValueError, match='divisible by 16'):
    small.init(jax.random.key(0), jnp.zeros((1, 16, 16, 24, 1)))
