"""Tests for jaxseg/models/vnet.py: parity with yulequan/UA-MT code/networks/vnet.py (fixture
UA-MT_VNet.npz, docs/parity.md) plus structural checks (param count, dropout, norms)."""

import functools
import math

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import models
from jaxseg.models import layers
from jaxseg.models import torch_import
from jaxseg.models.vnet import ConvBlock
from tests.conftest import all_eqns
from tests.conftest import assert_forward_matches
from tests.conftest import assert_grads64_match
from tests.conftest import assert_train_step_matches
from tests.conftest import channel_dropout_masks
from tests.conftest import fixture_outputs
from tests.conftest import loss_and_grads
from tests.conftest import lossw_loss
from tests.conftest import network_fixture
from tests.conftest import x64_loss_and_grads

FIXTURE = 'UA-MT_VNet.npz'


def _load(parity):
  """(fixture, constructor kwargs, model, imported variables, channels-last input)."""
  pf, kwargs, variables, x = network_fixture(parity, FIXTURE, 'vnet')
  return pf, kwargs, models.get('vnet', **kwargs), variables, x


def _train_forward(model, variables, x):
  return model.apply(variables, x, train=True, turnoff_drop=True, mutable=['batch_stats'])


def _eval_forward(model, variables, x):
  return model.apply(variables, x, train=False)


# XLA's convolution (GPU, TPU and the suite's default) and the CPU default's matmul form.
LOWERINGS = pytest.mark.parametrize('lowering', ['xla', 'matmul'])


def _stride1_convs(jaxpr) -> int:
  """How many XLA convolutions with a kernel larger than 1 and stride 1 (the ones the CPU's matmul
  form replaces) `jaxpr` holds, sub-jaxprs included."""
  return sum(
    math.prod(e.invars[1].aval.shape[:-2]) > 1 and set(e.params['window_strides']) == {1}
    for e in all_eqns(jaxpr)
    if e.primitive.name == 'conv_general_dilated'
  )


def _lowered(forward, lowering, model, variables, x):
  """`forward` as a new function (jit caches traces per function, and the lowering is read at
  trace time), checked to trace its 3^3 convolutions to XLA's convolution or to none."""
  fresh = lambda *a: forward(*a)  # noqa: E731
  jaxpr = jax.make_jaxpr(fresh, static_argnums=0)(model, variables, x).jaxpr
  assert (_stride1_convs(jaxpr) > 0) == (lowering == 'xla')
  return fresh


@LOWERINGS
def test_eval_outputs_match_upstream(parity, lowering, monkeypatch):
  monkeypatch.setattr(layers, 'CONV_LOWERING', lowering)
  pf, _, model, variables, x = _load(parity)
  forward = _lowered(_eval_forward, lowering, model, variables, x)
  assert_forward_matches(pf, 'out', model, forward, variables, x)  # one output: the logits


@LOWERINGS
def test_train_outputs_and_bn_stats_match_upstream(parity, lowering, monkeypatch):
  monkeypatch.setattr(layers, 'CONV_LOWERING', lowering)
  pf, kwargs, model, variables, x = _load(parity)
  forward = _lowered(_train_forward, lowering, model, variables, x)
  assert_train_step_matches(
    pf, model, torch_import.key_map('vnet', **kwargs), variables, x, forward
  )


def test_gradients_match_upstream_float64_and_float32(parity):
  pf, kwargs, model, variables, x = _load(parity)
  lossw = fixture_outputs(pf.group('lossw'))
  loss_fn = lossw_loss(_train_forward)
  loss64, grads64 = x64_loss_and_grads('vnet', kwargs, loss_fn, variables, x, lossw)
  np.testing.assert_allclose(loss64, float(pf['loss64']), rtol=1e-10)
  _, grads32 = loss_and_grads(model, loss_fn, variables, x, lossw)
  assert_grads64_match(pf, torch_import.key_map('vnet', **kwargs), grads64, 1e-6, grads32=grads32)


def test_param_count_full_size():
  """docs/methods/vnet.md §4: n_filters=16, n_classes=2, batchnorm -> 9,448,866 trainable params."""
  x = jax.ShapeDtypeStruct((1, 16, 16, 16, 1), jnp.float32)

  def count(**kw):
    model = models.get('vnet', n_channels=1, n_classes=2, n_filters=16, **kw)
    shapes = jax.eval_shape(functools.partial(model.init, jax.random.key(0)), x)
    return {c: sum(math.prod(a.shape) for a in jax.tree.leaves(t)) for c, t in shapes.items()}

  bn = count(normalization='batchnorm')
  assert bn['params'] == 9_448_866
  assert bn['batch_stats'] == 5_600
  assert count(normalization='none')['params'] == 9_443_266


def _small(**kw):
  defaults = dict(n_channels=1, n_classes=2, n_filters=4)
  defaults.update(kw)
  return models.get('vnet', **defaults)


def _jit_apply(model, **kw):
  """jit of model.apply with fixed keyword arguments (eager flax dispatch is slow on CPU)."""
  return jax.jit(lambda v, x, rngs=None: model.apply(v, x, rngs=rngs, **kw))


def _randn(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def test_input_validation():
  model = _small()
  with pytest.raises(ValueError, match=r'\(16, 16, 24\)'):
    model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 24, 1)))
  with pytest.raises(ValueError, match='channels-last'):
    model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 16, 2)))
  with pytest.raises(ValueError, match="unknown normalization 'layer'"):
    _small(normalization='layer').init(jax.random.key(0), jnp.zeros((1, 16, 16, 16, 1)))
  with pytest.raises(KeyError, match='known models'):
    models.get('vnet3000')


@functools.cache
def _small_vars(normalization='batchnorm', n_filters=4):
  """Random variables for `_small(...)` drawn with numpy into the shapes of `init` (no compile:
  a real init costs seconds of XLA:CPU compile per network variant; init itself is tested in
  test_layers.py and test_init_is_torch_default). BN affine and running stats are non-trivial."""
  model = _small(normalization=normalization, n_filters=n_filters)
  shapes = jax.eval_shape(
    functools.partial(model.init, jax.random.key(0)),
    jax.ShapeDtypeStruct((1, 16, 16, 16, 1), jnp.float32),
  )
  rng = np.random.default_rng(5)
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes))
  out = {}
  for path, leaf in flat.items():
    shape, kind = leaf.shape, path[-1]
    if kind == 'kernel':
      bound = 1 / math.sqrt(math.prod(shape[:-1]))
      value = rng.uniform(-bound, bound, shape)
    elif kind == 'scale':
      value = 1 + 0.1 * rng.standard_normal(shape)
    elif kind == 'var':
      value = rng.uniform(0.5, 1.5, shape)
    else:  # conv/BN bias, running mean
      value = 0.1 * rng.standard_normal(shape)
    out[path] = jnp.asarray(value, jnp.float32)
  return flax.traverse_util.unflatten_dict(out)


def test_init_is_torch_default():
  model = _small()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 16, 1)))
  shapes = jax.eval_shape(
    functools.partial(model.init, jax.random.key(0)),
    jax.ShapeDtypeStruct((1, 16, 16, 16, 1), jnp.float32),
  )
  assert jax.tree.map(lambda a: a.shape, variables) == jax.tree.map(lambda a: a.shape, shapes)
  bn = variables['batch_stats']['block_five']['bn2']
  np.testing.assert_array_equal(bn['mean'], 0)
  np.testing.assert_array_equal(bn['var'], 1)
  np.testing.assert_array_equal(variables['params']['block_five']['bn2']['scale'], 1)
  # block_five conv: fan_in = 64 * 27; block_five_up transposed conv: fan_in = cout * 8 = 32 * 8.
  for block, fan_in in (('block_five', 64 * 27), ('block_five_up', 32 * 8)):
    conv = variables['params'][block]['conv0']
    for leaf in (conv['kernel'], conv['bias']):
      assert 0.9 / math.sqrt(fan_in) < float(np.abs(leaf).max()) <= 1 / math.sqrt(fan_in)


def test_dropout_is_channelwise_and_train_only():
  model = _small(has_dropout=True)
  x = _randn(0, (2, 16, 16, 16, 1))
  variables = _small_vars()
  rngs = {'dropout': jax.random.key(1)}
  capture = lambda mdl, _: isinstance(mdl, (nn.Dropout, ConvBlock))
  run = lambda **kw: _jit_apply(
    model, capture_intermediates=capture, mutable=['batch_stats', 'intermediates'], **kw
  )(variables, x, rngs)
  _, state = run(train=True)
  inter = state['intermediates']
  (x5,), (x9,) = inter['block_five']['__call__'], inter['block_nine']['__call__']
  d5, d9 = inter['dropout']['__call__']  # the one Dropout3d module, applied at x5 then x9
  kept_fracs = []
  for before, after in ((x5, d5), (x9, d9)):
    kept, _ = channel_dropout_masks(before, after)  # [B, C]: whole channel x2 or 0
    live = np.any(np.asarray(before) != 0, axis=(1, 2, 3))
    kept_fracs.append(kept[live].mean())
  assert 0.25 < kept_fracs[0] < 0.75  # x5: 2 x 64 (sample, channel) draws at p = 0.5
  # Off in eval mode and with turnoff_drop: the dropout module is never called.
  for kw in (dict(train=False), dict(train=True, turnoff_drop=True)):
    _, state = run(**kw)
    assert 'dropout' not in state['intermediates'], kw


@pytest.mark.parametrize('normalization', ['none', 'batchnorm', 'groupnorm', 'instancenorm'])
def test_normalizations_run(normalization):
  # groupnorm has 16 groups, so every stage needs a multiple of 16 channels.
  n_filters = 16 if normalization == 'groupnorm' else 4
  # 32^3 so that the 1/16 bottleneck has 2^3 voxels: per-channel statistics over a single voxel
  # are degenerate (torch refuses them in train mode).
  x = _randn(1, (2, 32, 32, 32, 1))
  model = _small(normalization=normalization, n_filters=n_filters)
  variables = _small_vars(normalization, n_filters)
  assert ('batch_stats' in variables) == (normalization == 'batchnorm')
  y_train, _ = _jit_apply(model, train=True, mutable=['batch_stats'])(variables, x)
  y_eval = _jit_apply(model)(variables, x)
  assert y_train.shape == (2, 32, 32, 32, 2) and np.all(np.isfinite(y_train))
  if normalization == 'batchnorm':
    assert not np.allclose(y_train, y_eval)  # batch stats vs running stats
    # The generic lax conv / conv_transpose path gives the same network output.
    generic = _small(normalization=normalization, n_filters=n_filters, fast_updown=False)
    y_gen, _ = _jit_apply(generic, train=True, mutable=['batch_stats'])(variables, x)
    np.testing.assert_allclose(y_train, y_gen, rtol=1e-4, atol=1e-4 * float(np.abs(y_gen).max()))
  else:
    np.testing.assert_array_equal(y_train, y_eval)  # no train/eval difference without BN


def test_bf16_compute_close_to_float32():
  x = _randn(3, (2, 16, 16, 16, 1))
  variables = _small_vars()
  # Eval mode: with a 16^3 input, train-mode BN normalises the bottleneck over 2 values per
  # channel, which turns bf16 rounding into O(1) differences.
  y32 = _jit_apply(_small())(variables, x)
  y16 = _jit_apply(_small(dtype=jnp.bfloat16))(variables, x)
  assert y16.dtype == jnp.float32  # logits come back in float32
  np.testing.assert_allclose(y16, y32, atol=0.02 * float(np.abs(y32).max()))
  _, upd = _jit_apply(_small(dtype=jnp.bfloat16), train=True, mutable=['batch_stats'])(variables, x)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(upd))  # running stats stay float32
