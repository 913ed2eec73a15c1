"""Tests for jaxseg/models/bcp_vnet.py: parity with DeepMed-Lab-ECNU/BCP code/networks/VNet.py
(fixture BCP_VNet.npz, docs/parity.md) for every output the fixture holds (eval logits
and pooled bottleneck, train outputs, BN running stats, float64 and float32 gradients), the torch
importer with and without the unused heads, and the two dropout sites."""

import functools

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
from tests.conftest import leaf
from tests.conftest import loss_and_grads
from tests.conftest import lossw_loss
from tests.conftest import network_fixture
from tests.conftest import x64_loss_and_grads

FIXTURE = 'BCP_VNet.npz'


def _kwargs(pf, **extra):
  return {**pf.meta['constructor_kwargs'], 'with_heads': True, **extra}


def _load(parity):
  return network_fixture(parity, FIXTURE, 'bcp_vnet', _kwargs)


def _train_forward(model, variables, x):
  # The fixture's train pass runs with every dropout p = 0 (docs/parity.md).
  return model.apply(
    variables, x, train=True, turnoff_drop=True, return_pooled=True, mutable=['batch_stats']
  )


def test_eval_outputs_match_upstream(parity):
  pf, kwargs, variables, x = _load(parity)
  model = models.get('bcp_vnet', **kwargs)
  eval_forward = lambda m, v, x: m.apply(v, x, train=False, return_pooled=True)
  got = assert_forward_matches(pf, 'out', model, eval_forward, variables, x)
  assert len(got) == 2  # logits, pooled x5
  # Without return_pooled the call returns the logits alone (what the methods use).
  logits = jax.jit(functools.partial(model.apply, train=False))(variables, x)
  np.testing.assert_array_equal(logits, got[0])


def test_train_outputs_and_bn_stats_match_upstream(parity):
  pf, kwargs, variables, x = _load(parity)
  model = models.get('bcp_vnet', **kwargs)
  keys = torch_import.key_map('bcp_vnet', **kwargs)
  updated, checked = assert_train_step_matches(
    pf, model, keys, variables, x, _train_forward, all_bn=False
  )
  # The heads' BatchNorm1d never runs: its running stats are untouched by the train forward.
  for name, entry in keys.items():
    if entry.collection == 'batch_stats' and name not in checked:
      np.testing.assert_array_equal(
        leaf(updated, entry), leaf(variables['batch_stats'], entry), err_msg=name
      )


def test_gradients_match_upstream_float64_and_float32(parity):
  pf, kwargs, variables, x = _load(parity)
  lossw = fixture_outputs(pf.group('lossw'))
  loss_fn = lossw_loss(_train_forward)
  loss64, grads64 = x64_loss_and_grads('bcp_vnet', kwargs, loss_fn, variables, x, lossw)
  np.testing.assert_allclose(loss64, float(pf['loss64']), rtol=1e-10)
  _, grads32 = loss_and_grads(models.get('bcp_vnet', **kwargs), loss_fn, variables, x, lossw)
  # torch's own float32 gradient is grad_fp32_noise_rel (up to 3e-2 here) from grad64. The unused
  # heads (params_without_grad) get exactly zero gradient (upstream: no .grad at all).
  assert pf.meta['params_without_grad']
  assert_grads64_match(
    pf, torch_import.key_map('bcp_vnet', **kwargs), grads64, 1e-6, grads32=grads32
  )


def test_key_map_and_heads(parity):
  pf = parity(FIXTURE)
  kwargs = _kwargs(pf)
  params = assert_key_map_covers(pf, 'bcp_vnet', kwargs)
  # Heads imported as stored (Linear weight transposed).
  variables = torch_import.import_state_dict('bcp_vnet', pf.group('param'), **kwargs)
  np.testing.assert_array_equal(
    variables['params']['projection_head']['fc0']['kernel'], params['projection_head.0.weight'].T
  )
  # Without heads the same state_dict imports, the head keys dropped; forwards are identical.
  no_heads = {**kwargs, 'with_heads': False}
  slim = torch_import.import_state_dict('bcp_vnet', pf.group('param'), **no_heads)
  assert 'projection_head' not in slim['params']
  assert set(slim['params']) == {'encoder', 'decoder'}
  bad = dict(params)
  del bad['encoder.block_one.conv.0.bias']
  bad['decoder.out_conv.weight'] = bad['decoder.out_conv.weight'][:1]
  with pytest.raises(ValueError, match=r'missing keys \(1\).*mis-shaped keys \(1\)'):
    torch_import.import_state_dict('bcp_vnet', bad, **kwargs)


def test_dropout_sites_and_input_checks():
  """Encoder x5 and decoder x9 each get a channel-wise Dropout3d in train mode only."""
  model = models.get('bcp_vnet', n_filters=4, has_dropout=True)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 16, 16, 16, 1)), jnp.float32)
  variables = jax.jit(model.init)(jax.random.key(0), x[:1])
  assert set(variables['params']) == {'encoder', 'decoder'}  # with_heads=False by default
  capture = lambda mdl, _: mdl.name in ('dropout', 'block_five', 'block_nine')
  run = jax.jit(
    lambda v, k, train: model.apply(
      v,
      x,
      train=train,
      rngs={'dropout': k},
      capture_intermediates=capture,
      mutable=['batch_stats', 'intermediates'],
    ),
    static_argnums=2,
  )
  _, state = run(variables, jax.random.key(1), True)
  inter = state['intermediates']
  for part, block in (('encoder', 'block_five'), ('decoder', 'block_nine')):
    (before,), (after,) = inter[part][block]['__call__'], inter[part]['dropout']['__call__']
    channel_dropout_masks(before, after, atol=1e-6)
  _, state = run(variables, jax.random.key(1), False)
  assert 'dropout' not in state['intermediates']['encoder']
  with pytest.raises(ValueError, match='divisible by 16'):
    model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 24, 1)))
  with pytest.raises(ValueError, match='input sides >= 48'):
    model.apply(variables, x[:1], return_pooled=True)
