"""Tests for jaxseg/models/unet2d.py: parity with BCP `UNet_2d` (BCP_UNet2d.npz) and CML `UNet`
(CML_UNet2d.npz) (docs/parity.md), the torch importer, and structural checks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import models
from jaxseg.models import torch_import
from jaxseg.models import unet2d
from tests.conftest import assert_forward_matches
from tests.conftest import assert_grads64_match
from tests.conftest import assert_train_step_matches
from tests.conftest import fixture_outputs
from tests.conftest import lossw_loss
from tests.conftest import network_fixture
from tests.conftest import x64_loss_and_grads

# (fixture, jaxseg model name) pairs; every test loops over what each file holds.
FIXTURES = (('BCP_UNet2d.npz', 'unet2d'), ('CML_UNet2d.npz', 'cml_unet2d'))


def _kwargs(pf):
  """Upstream constructor kwargs (+ the fixture's width override) -> jaxseg model kwargs."""
  ck = pf.meta['constructor_kwargs']
  kw = dict(n_channels=ck['in_chns'], n_classes=ck['class_num'])
  if 'feature_chns_override' in ck:
    kw['feature_chns'] = tuple(ck['feature_chns_override'])
  return kw


def _load(parity, fixture, name):
  return network_fixture(parity, fixture, name, _kwargs)


def _eval_forward(model, variables, x):
  return model.apply(variables, x, train=False)


def _train_forward(model, variables, x):
  return model.apply(variables, x, train=True, turnoff_drop=True, mutable=['batch_stats'])


def _bcp_head(key):
  """BCP's unused heads: not built here (upstream never runs them either)."""
  return bool(unet2d.TORCH_IGNORED_KEYS.fullmatch(key))


@pytest.mark.parametrize('fixture,name', FIXTURES)
def test_eval_outputs_match_upstream(parity, fixture, name):
  pf, kw, variables, x = _load(parity, fixture, name)
  assert_forward_matches(pf, 'out', models.get(name, **kw), _eval_forward, variables, x)


@pytest.mark.parametrize('fixture,name', FIXTURES)
def test_train_outputs_and_bn_stats_match_upstream(parity, fixture, name):
  """Train mode with dropout off; BN running stats after the step, including CML's double update
  (the shared encoder and decoder1 run twice per forward) and the untouched decoder2 / BCP heads."""
  pf, kw, variables, x = _load(parity, fixture, name)
  assert_train_step_matches(
    pf,
    models.get(name, **kw),
    torch_import.key_map(name, **kw),
    variables,
    x,
    _train_forward,
    unmapped=_bcp_head,
  )
  # Two momentum steps per forward show as a counter step of 2 (CML) instead of 1 (BCP).
  if name == 'cml_unet2d':
    enc = 'encoder.in_conv.conv_conv.1.num_batches_tracked'
    assert pf['bn_after_train/' + enc] - pf['param/' + enc] == 2


@pytest.mark.parametrize('fixture,name', FIXTURES)
def test_gradients_match_upstream_float64(parity, fixture, name):
  pf, kw, variables, x = _load(parity, fixture, name)
  lossw = fixture_outputs(pf.group('lossw'))
  loss64, grads64 = x64_loss_and_grads(name, kw, lossw_loss(_train_forward), variables, x, lossw)
  np.testing.assert_allclose(loss64, float(pf['loss64']), rtol=1e-10)
  # Only the float64 comparison: it is the tight one (torch's own float32 gradients sit up to
  # grad_fp32_noise_rel = 4e-3 away from grad64 here), and a float32 compile would double the cost;
  # the float32 forward and BN updates are checked above. Parameters the forward never touches
  # (CML's decoder2) get an exactly zero gradient; BCP's heads are not built.
  assert_grads64_match(pf, torch_import.key_map(name, **kw), grads64, 1e-8, unmapped=_bcp_head)


def test_importer_ignores_only_the_listed_bcp_heads(parity):
  pf = parity('BCP_UNet2d.npz')
  kw = _kwargs(pf)
  sd = dict(pf.group('param'))
  heads = [k for k in sd if unet2d.TORCH_IGNORED_KEYS.fullmatch(k)]
  assert heads, 'the fixture should hold the unused heads'
  without = {k: v for k, v in sd.items() if k not in heads}
  a = torch_import.import_state_dict('unet2d', sd, **kw)
  b = torch_import.import_state_dict('unet2d', without, **kw)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  with pytest.raises(ValueError, match='unexpected keys.*extra_head.0.weight'):
    torch_import.import_state_dict('unet2d', {**sd, 'extra_head.0.weight': np.zeros(3)}, **kw)
  with pytest.raises(ValueError, match='missing keys.*decoder.out_conv.bias'):
    torch_import.import_state_dict(
      'unet2d', {k: v for k, v in sd.items() if k != 'decoder.out_conv.bias'}, **kw
    )


def test_cml_shared_branches_dropout_masks_differ_and_heterogeneous_variant():
  model = models.get('cml_unet2d', feature_chns=(4, 8, 16, 32, 64))
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 1)), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  assert set(shapes['params']) == {'encoder', 'decoder1', 'decoder2'}

  @jax.jit  # init and the train forward in one compile
  def init_and_train(key, x):
    variables = model.init(key, x)
    out, _ = model.apply(variables, x, train=True, rngs={'dropout': key}, mutable=['batch_stats'])
    return out

  s1, s2, e1, e2 = init_and_train(jax.random.key(0), x)
  assert s1.shape == s2.shape == (2, 32, 32, 4) and e1.shape == e2.shape == (2, 2, 2, 64)
  # Two passes of one encoder draw two dropout masks (eval equality: the fixture's out/0 == out/1).
  assert not np.allclose(e1, e2) and not np.allclose(s1, s2)

  hetero = models.get('cml_unet2d', feature_chns=(4, 8, 16, 32, 64), shared_branches=False)
  shapes = jax.eval_shape(hetero.init, jax.random.key(0), x)
  assert set(shapes['params']) == {'encoder', 'encoder2', 'decoder1', 'decoder2'}
  outs = jax.eval_shape(hetero.apply, shapes, x)
  assert [o.shape for o in outs] == [(2, 32, 32, 4)] * 2 + [(2, 2, 2, 64)] * 2


def test_unet2d_transposed_up_type_features_and_input_checks():
  model = models.get('unet2d', feature_chns=(4, 8, 16, 32, 64), up_type=0)
  x = jnp.zeros((2, 32, 32, 1))
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  assert 'up' in shapes['params']['decoder']['up1']
  logits, feats = jax.eval_shape(functools.partial(model.apply, return_features=True), shapes, x)
  assert logits.shape == (2, 32, 32, 4) and feats['x4'].shape == (2, 2, 2, 64)
  assert feats['last'].shape == (2, 32, 32, 4)
  with pytest.raises(ValueError, match='divisible by 16'):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 24, 32, 1)))
  with pytest.raises(ValueError, match=r'\[B, H, W, 1\]'):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 32, 1)))
  with pytest.raises(ValueError, match='up_type must be 0'):
    jax.eval_shape(models.get('unet2d', up_type=2).init, jax.random.key(0), x)


def test_param_count_full_size():
  """BCP UNet_2d without its heads at upstream width, 4 classes: 1,813,764 trainable parameters
  (sum over the blocks of the module docstring: convs with bias, BN scale and bias)."""
  import math

  shapes = jax.eval_shape(
    functools.partial(models.get('unet2d').init, jax.random.key(0)),
    jax.ShapeDtypeStruct((1, 16, 16, 1), jnp.float32),
  )
  assert sum(math.prod(a.shape) for a in jax.tree.leaves(shapes['params'])) == 1_813_764
