"""Tests for jaxseg/models/layers.py: norms vs numpy, fast k2s2 and matmul stride-1 convs vs
generic, the conv lowering switch, torch init."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.errors import ConfigError
from jaxseg.models import layers


def _rand(seed, shape, dtype=np.float32):
  return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------------------------------------
# Normalisation layers.


def _bn_vars(c, seed=0):
  r = np.random.default_rng(seed)
  return {
    'params': {
      'scale': 1 + 0.1 * r.standard_normal(c).astype(np.float32),
      'bias': 0.1 * r.standard_normal(c).astype(np.float32),
    },
    'batch_stats': {
      'mean': r.standard_normal(c).astype(np.float32),
      'var': r.uniform(0.5, 2, c).astype(np.float32),
    },
  }


def test_batchnorm_train_matches_torch_semantics():
  x = _rand(1, (2, 3, 4, 2, 5)) * 3 + 1
  v = _bn_vars(5)
  y, upd = layers.BatchNorm().apply(v, x, train=True, mutable=['batch_stats'])
  xd = x.astype(np.float64)
  mean = xd.mean((0, 1, 2, 3))
  var = xd.var((0, 1, 2, 3))  # biased, used to normalise
  n = x.size // 5
  want = (xd - mean) / np.sqrt(var + 1e-5) * v['params']['scale'] + v['params']['bias']
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    upd['batch_stats']['mean'], 0.9 * v['batch_stats']['mean'] + 0.1 * mean, rtol=1e-6, atol=1e-6
  )
  # torch stores the unbiased variance in running_var.
  np.testing.assert_allclose(
    upd['batch_stats']['var'], 0.9 * v['batch_stats']['var'] + 0.1 * var * n / (n - 1), rtol=1e-6
  )


def test_batchnorm_eval_uses_running_stats():
  x = _rand(2, (2, 4, 4, 4, 3))
  v = _bn_vars(3, seed=3)
  y = layers.BatchNorm().apply(v, x, train=False)
  bs, p = v['batch_stats'], v['params']
  want = (x - bs['mean']) / np.sqrt(bs['var'] + 1e-5) * p['scale'] + p['bias']
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)


def test_batchnorm_init_and_errors():
  x = _rand(3, (2, 4, 4, 4, 3))
  v = layers.BatchNorm().init(jax.random.key(0), x, train=True)
  # No running-stat update while initialising (flax convention); torch's defaults otherwise.
  np.testing.assert_array_equal(v['batch_stats']['mean'], np.zeros(3))
  np.testing.assert_array_equal(v['batch_stats']['var'], np.ones(3))
  np.testing.assert_array_equal(v['params']['scale'], np.ones(3))
  with pytest.raises(ValueError, match='more than one value per channel'):
    layers.BatchNorm().apply(v, x[:1, :1, :1, :1], train=True, mutable=['batch_stats'])


def test_batchnorm_bf16_compute_keeps_float32_stats():
  x = _rand(4, (2, 4, 4, 4, 3))
  v = _bn_vars(3)
  y32, u32 = layers.BatchNorm().apply(v, x, train=True, mutable=['batch_stats'])
  y16, u16 = layers.BatchNorm(dtype=jnp.bfloat16).apply(
    v, x.astype(jnp.bfloat16), train=True, mutable=['batch_stats']
  )
  assert y16.dtype == jnp.bfloat16 and u16['batch_stats']['var'].dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(y16, np.float32), y32, atol=5e-2)
  np.testing.assert_allclose(u16['batch_stats']['mean'], u32['batch_stats']['mean'], atol=1e-2)


def test_batchnorm_block_split():
  assert layers._block_split((2, 32, 32, 32, 4)) == 2  # outer 2 x 32, inner 32 x 32
  assert layers._block_split((8, 64, 64, 16)) == 2
  assert layers._block_split((4, 7)) == 0  # one reduced axis: a plain sum
  x = _rand(7, (3, 5, 4, 6, 2)) + 10
  for split in range(4):
    np.testing.assert_allclose(
      layers._blocked_sum(jnp.asarray(x), split), x.astype(np.float64).sum((0, 1, 2, 3)), rtol=1e-6
    )


def _bn_loss_grads(x, w, dtype):
  bn = layers.BatchNorm(dtype=dtype, param_dtype=dtype)
  v = bn.init(jax.random.key(0), jnp.asarray(x, dtype), train=False)

  def loss(params, x):
    y, _ = bn.apply(
      {'params': params, 'batch_stats': v['batch_stats']}, x, train=True, mutable=['batch_stats']
    )
    return jnp.sum(y * jnp.asarray(w, dtype))

  return jax.jit(jax.grad(loss, argnums=(0, 1)))(v['params'], jnp.asarray(x, dtype))


def test_batchnorm_gradients_float32_close_to_float64():
  # The scale gradient sums dy * xhat over n = 65536 values that cancel, on inputs far from zero.
  # Summed in one pass it was 4e-5 (XLA:CPU -O2) to 2.8e-4 (-O0) of its scale from float64 on an
  # AMD EPYC; in two blocked stages (1088 terms in series) 4e-7 to 6e-6. Likewise dx: 1e-6 to
  # 6.6e-6 in one pass, 1.6e-7 blocked.
  x = _rand(8, (2, 32, 32, 32, 2)) + 50
  w = _rand(9, x.shape)
  (p32, dx32) = _bn_loss_grads(x, w, jnp.float32)
  with jax.enable_x64(True):
    (p64, dx64) = _bn_loss_grads(x, w, jnp.float64)
  for got, want, tol in (
    (p32['scale'], p64['scale'], 2e-5),
    (p32['bias'], p64['bias'], 2e-5),
    (dx32, dx64, 5e-7),
  ):
    want = np.asarray(want)
    err = np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max()
    assert err < tol, (err, tol)


def test_groupnorm_matches_numpy():
  x = _rand(5, (2, 3, 2, 4, 32)) * 2 + 0.5
  r = np.random.default_rng(6)
  p = {
    'scale': r.standard_normal(32).astype(np.float32),
    'bias': r.standard_normal(32).astype(np.float32),
  }
  y = layers.norm('groupnorm').apply({'params': p}, x, True)
  xg = x.astype(np.float64).reshape(2, 3, 2, 4, 16, 2)
  mean = xg.mean((1, 2, 3, 5), keepdims=True)
  var = xg.var((1, 2, 3, 5), keepdims=True)
  want = ((xg - mean) / np.sqrt(var + 1e-5)).reshape(x.shape) * p['scale'] + p['bias']
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='24 channels'):
    layers.norm('groupnorm').init(jax.random.key(0), x[..., :24])


def test_instancenorm_and_none():
  x = _rand(7, (2, 4, 3, 2, 5)) * 3 - 1
  m = layers.norm('instancenorm')
  v = m.init(jax.random.key(0), x)
  assert not jax.tree.leaves(v)  # affine=False, no running stats
  xd = x.astype(np.float64)
  mean = xd.mean((1, 2, 3), keepdims=True)
  want = (xd - mean) / np.sqrt(xd.var((1, 2, 3), keepdims=True) + 1e-5)
  for train in (False, True):
    np.testing.assert_allclose(m.apply(v, x, train), want, rtol=1e-5, atol=1e-5)
  ident = layers.norm('none')
  np.testing.assert_array_equal(ident.apply({}, x, True), x)
  with pytest.raises(ValueError, match="unknown normalization 'layernorm'"):
    layers.norm('layernorm')


# ---------------------------------------------------------------------------------------------
# k=2 s=2 down/up convolutions: fast (space-to-depth + matmul) == generic (lax conv) == numpy.


def _down_ref(x, k, b):
  """Direct loop form of torch Conv k2 s2 (channels-last, kernel (*2, I, O))."""
  nd = x.ndim - 2
  sizes = [s // 2 for s in x.shape[1:-1]]
  out = np.zeros((x.shape[0], *sizes, k.shape[-1]))
  for off in itertools.product(range(2), repeat=nd):
    sl = tuple(slice(o, o + 2 * s, 2) for o, s in zip(off, sizes))
    out += np.einsum('...i,io->...o', x[(slice(None),) + sl].astype(np.float64), k[off])
  return out + b


def _up_ref(x, k, b):
  """out[2d+a, 2h+b, 2w+c, o] = sum_i x[d, h, w, i] * K[a, b, c, i, o] + bias[o]."""
  nd = x.ndim - 2
  out = np.zeros((x.shape[0], *(2 * s for s in x.shape[1:-1]), k.shape[-1]))
  for off in itertools.product(range(2), repeat=nd):
    sl = tuple(slice(o, None, 2) for o in off)
    out[(slice(None),) + sl] = np.einsum('...i,io->...o', x.astype(np.float64), k[off])
  return out + b


@pytest.mark.parametrize(
  'cls,ref,shape,cout',
  [
    (layers.DownConv2x, _down_ref, (2, 6, 4, 8, 3), 5),
    (layers.DownConv2x, _down_ref, (1, 5, 7, 4, 2), 3),  # odd spatial sizes floor as in torch
    (layers.DownConv2x, _down_ref, (2, 6, 4, 7), 5),  # 2D
    (layers.UpConv2x, _up_ref, (2, 3, 2, 4, 5), 3),
    (layers.UpConv2x, _up_ref, (2, 3, 5, 7), 1),  # 2D
  ],
)
def test_fast_updown_equals_generic(cls, ref, shape, cout):
  x = _rand(10, shape)
  fast, generic = cls(cout, fast=True), cls(cout, fast=False)
  v = fast.init(jax.random.key(1), x)
  v = jax.tree.map(lambda a: a + 0.1, v)  # non-trivial bias
  y_fast, y_gen = fast.apply(v, x), generic.apply(v, x)
  want = ref(x, np.asarray(v['params']['kernel']), np.asarray(v['params']['bias']))
  assert y_fast.shape == want.shape
  np.testing.assert_allclose(y_fast, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(y_gen, want, rtol=1e-5, atol=1e-5)

  w = _rand(11, want.shape)

  def loss(module):
    return lambda p, x: jnp.sum(jnp.sin(module.apply({'params': p}, x)) * w)

  g_fast = jax.grad(loss(fast), argnums=(0, 1))(v['params'], x)
  g_gen = jax.grad(loss(generic), argnums=(0, 1))(v['params'], x)
  for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_gen)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))


def test_conv_matches_numpy():
  x = _rand(12, (1, 4, 3, 5, 2))
  m = layers.Conv(3, (3, 3, 3), padding=1)
  v = m.init(jax.random.key(2), x)
  k, b = np.asarray(v['params']['kernel'], np.float64), np.asarray(v['params']['bias'])
  xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (1, 1), (0, 0)))
  want = np.zeros((1, 4, 3, 5, 3)) + b
  for a, bb, c in itertools.product(range(3), repeat=3):
    want += np.einsum('ndhwi,io->ndhwo', xp[:, a : a + 4, bb : bb + 3, c : c + 5], k[a, bb, c])
  np.testing.assert_allclose(m.apply(v, x), want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Stride-1 convolutions as im2col + matmul (layers._conv_matmul, the CPU default) == lax conv.


def _conv_pair(monkeypatch, module, x, seed):
  """(matmul, xla) outputs and gradients (params and input) of `module` on `x`, same variables."""
  v = jax.tree.map(lambda a: a + 0.05, module.init(jax.random.key(seed), x))  # non-zero bias
  shape = jax.eval_shape(module.apply, v, x).shape
  w = jnp.asarray(_rand(seed + 1, shape), x.dtype)

  def run(p, x):
    def loss(p, x):
      return jnp.sum((module.apply({'params': p}, x) * w).astype(jnp.float32))

    return (module.apply({'params': p}, x), *jax.grad(loss, argnums=(0, 1))(p, x))

  out = {}
  for lowering in ('matmul', 'xla'):
    monkeypatch.setattr(layers, 'CONV_LOWERING', lowering)
    # A new jit per lowering: the switch is read at trace time.
    out[lowering] = jax.jit(lambda p, x: run(p, x))(v['params'], x)
  return out['matmul'], out['xla']


@pytest.mark.parametrize(
  'shape,features,kernel,padding,dtype',
  [
    ((2, 4, 5, 3, 1), 4, (3, 3, 3), 1, jnp.float32),  # cin 1 (a network's first conv)
    ((2, 4, 3, 5, 3), 2, (3, 3, 3), 1, jnp.float32),
    ((1, 5, 4, 4, 2), 3, (3, 3, 3), (0, 1, 2), jnp.float32),  # 'valid' to 'full' per axis
    ((1, 5, 4, 4, 2), 3, (5, 5, 5), 2, jnp.float32),
    ((2, 6, 5, 1), 3, (3, 3), 1, jnp.float32),  # 2D, cin 1
    ((2, 6, 5, 4), 3, (3, 3), 1, jnp.float32),
    ((2, 4, 3, 5, 3), 2, (3, 3, 3), 1, jnp.bfloat16),
    ((2, 6, 5, 4), 3, (3, 3), 1, jnp.bfloat16),
  ],
)
def test_conv_matmul_equals_lax_conv(monkeypatch, shape, features, kernel, padding, dtype):
  x = jnp.asarray(_rand(20, shape), dtype)
  m = layers.Conv(features, kernel, padding=padding, dtype=dtype)
  fast, ref = _conv_pair(monkeypatch, m, x, seed=21)
  # bf16 compute: both round their inputs and outputs to bf16 (8 bits of mantissa).
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  for name, fast_tree, ref_tree in zip(('output', 'params', 'input'), fast, ref):
    for a, b in zip(jax.tree.leaves(fast_tree), jax.tree.leaves(ref_tree)):
      assert a.dtype == b.dtype and a.shape == b.shape, name
      a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
      scale = np.abs(b).max()
      assert scale > 0
      np.testing.assert_allclose(a, b, rtol=0, atol=tol * scale, err_msg=name)


def _lowered_to_lax_conv(module, x):
  v = module.init(jax.random.key(0), x)
  return 'conv_general_dilated' in str(jax.make_jaxpr(module.apply)(v, x))


def test_conv_lowering_switch(monkeypatch):
  x = jnp.zeros((1, 4, 4, 4, 2))
  k3, k1 = layers.Conv(3, (3, 3, 3), padding=1), layers.Conv(3, (1, 1, 1))
  strided = layers.Conv(3, (3, 3, 3), padding=1, strides=2)
  monkeypatch.setattr(layers, 'CONV_LOWERING', 'auto')
  assert jax.default_backend() == 'cpu' and layers.conv_lowering() == 'matmul'
  assert not _lowered_to_lax_conv(k3, x)
  # 1x1 kernels, strides and padding beyond k-1 stay with lax.
  assert _lowered_to_lax_conv(k1, x) and _lowered_to_lax_conv(strided, x)
  assert _lowered_to_lax_conv(layers.Conv(3, (3, 3, 3), padding=3), x)
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert layers.conv_lowering() == 'xla' and _lowered_to_lax_conv(k3, x)
  monkeypatch.setattr(layers, 'CONV_LOWERING', 'matmul')
  assert layers.conv_lowering() == 'matmul' and not _lowered_to_lax_conv(k3, x)
  monkeypatch.setattr(layers, 'CONV_LOWERING', 'fast')
  with pytest.raises(ConfigError, match="JAXSEG_CONV_LOWERING.*'fast'"):
    layers.conv_lowering()


# ---------------------------------------------------------------------------------------------
# Initialisation.


@pytest.mark.parametrize(
  'module,cin,fan_in',
  [
    (layers.Conv(32, (3, 3, 3)), 8, 8 * 27),
    (layers.DownConv2x(64), 16, 16 * 8),
    # torch ConvTranspose takes fan_in from dim 1 of its (cin, cout, *k) weight: cout * k^3.
    (layers.UpConv2x(8), 64, 8 * 8),
  ],
)
def test_torch_init_bounds(module, cin, fan_in):
  x = jnp.zeros((1, 4, 4, 4, cin))
  p = module.init(jax.random.key(3), x)['params']
  bound = 1 / math.sqrt(fan_in)
  k = np.asarray(p['kernel'])
  assert np.abs(k).max() <= bound and np.abs(k).max() > 0.97 * bound
  np.testing.assert_allclose(k.std(), bound / math.sqrt(3), rtol=0.05)  # std of U(-b, b)
  np.testing.assert_allclose(k.mean(), 0, atol=0.05 * bound)
  b = np.asarray(p['bias'])
  assert np.abs(b).max() <= bound and np.abs(b).std() > 0


def test_flax_default_init_when_not_torch_init():
  x = jnp.zeros((1, 4, 4, 4, 8))
  p = layers.Conv(32, (3, 3, 3), torch_init=False).init(jax.random.key(4), x)['params']
  np.testing.assert_array_equal(p['bias'], np.zeros(32))
  # lecun_normal: truncated normal with std 1/sqrt(fan_in).
  np.testing.assert_allclose(np.asarray(p['kernel']).std(), 1 / math.sqrt(8 * 27), rtol=0.05)


# ---------------------------------------------------------------------------------------------
# Spatially partitioned steps (jaxseg/parallel.py): no XLA convolution, the same numbers.


def _milletari_conv(features, kernel, stride=1, padding=0):
  from jaxseg.models import vnet_milletari

  return vnet_milletari.Conv3d(features, kernel, stride=stride, padding=padding)


@pytest.mark.parametrize(
  'make,shape',
  [
    (lambda: layers.Conv(3, (3, 3, 3), padding=1), (2, 4, 6, 4, 2)),
    (lambda: layers.Conv(3, (1, 1, 1)), (2, 4, 6, 4, 2)),
    (lambda: layers.Conv(3, (3, 3), padding=1), (2, 6, 4, 2)),  # 2D
    (lambda: layers.DownConv2x(3, fast=False), (2, 4, 6, 4, 2)),
    (lambda: layers.UpConv2x(3, fast=False), (2, 2, 3, 2, 2)),
    (lambda: _milletari_conv(3, 5, padding=2), (1, 6, 5, 4, 2)),
    (lambda: _milletari_conv(3, 2, stride=2), (1, 6, 4, 4, 2)),
    (lambda: _milletari_conv(2, 1), (1, 4, 4, 4, 3)),
  ],
)
def test_spatially_partitioned_lowers_without_xla_convolutions(monkeypatch, make, shape):
  """Inside `spatially_partitioned` every convolution kind of the networks is a matmul form (even
  with the lax lowering asked for), with the values and gradients of the lax convolution."""
  monkeypatch.setattr(layers, 'CONV_LOWERING', 'xla')
  module, x = make(), jnp.asarray(_rand(30, shape))
  v = jax.tree.map(lambda a: a + 0.05, module.init(jax.random.key(3), x))
  w = jnp.asarray(_rand(31, jax.eval_shape(module.apply, v, x).shape))

  def run(p, x):
    def loss(p, x):
      return jnp.sum(jnp.sin(module.apply({'params': p}, x)) * w)

    return (module.apply({'params': p}, x), *jax.grad(loss, argnums=(0, 1))(p, x))

  jaxpr = str(jax.make_jaxpr(layers.partitioned_trace(run))(v['params'], x))
  assert 'conv_general_dilated' not in jaxpr and 'conv_transpose' not in jaxpr
  assert 'conv_general_dilated' in str(jax.make_jaxpr(run)(v['params'], x))
  assert not layers._PARTITIONED  # the trace leaves the switch as it found it
  got = jax.jit(layers.partitioned_trace(run))(v['params'], x)
  want = jax.jit(run)(v['params'], x)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert a.shape == b.shape
    scale = float(np.abs(b).max())
    assert scale > 0
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * scale)


def test_spatially_partitioned_refuses_a_convolution_it_cannot_lower():
  x = jnp.zeros((1, 8, 8, 8, 2))
  strided = layers.Conv(3, (3, 3, 3), padding=1, strides=2)
  v = strided.init(jax.random.key(0), x)
  with pytest.raises(ConfigError, match=r'kernel \(3, 3, 3\), strides \(2, 2, 2\).*"space"'):
    layers.partitioned_trace(strided.apply)(v, x)
  assert not layers._PARTITIONED
