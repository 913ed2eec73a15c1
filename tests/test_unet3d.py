"""Tests for jaxseg/models/unet3d.py: parity with KU-CVML/DyCON code/networks/UNet3D_contrastive.py
(fixture DyCON_UNet3D.npz, docs/parity.md), the two upsamplings against numpy
references, and structural checks (init, dropout, input validation, torch import)."""

import functools
import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import models
from jaxseg.models import torch_import
from jaxseg.models import unet3d
from jaxseg.models.resize import resize_linear_align_corners
from tests.conftest import assert_forward_matches
from tests.conftest import assert_grads64_match
from tests.conftest import assert_train_step_matches
from tests.conftest import fixture_outputs
from tests.conftest import lossw_loss
from tests.conftest import network_fixture
from tests.conftest import x64_loss_and_grads

FIXTURE = 'DyCON_UNet3D.npz'
MODEL = 'unet3d_dycon'


def _kwargs(pf):
  """Constructor kwargs of the fixture in jaxseg's names (use_aspp=False is the only upstream mode)."""
  kwargs = dict(pf.meta['constructor_kwargs'])
  assert not kwargs.pop('use_aspp', False), 'the ASPP branch is not ported'
  return kwargs


def _load(parity):
  pf, kwargs, variables, x = network_fixture(parity, FIXTURE, MODEL, _kwargs)
  return pf, kwargs, models.get(MODEL, **kwargs), variables, x


def _train_forward(model, variables, x):
  # The fixture's gradient step runs with every dropout at p=0 (docs/parity.md).
  return model.apply(
    variables, x, train=True, turnoff_drop=True, return_all=True, mutable=['batch_stats']
  )


def _eval_forward(model, variables, x):
  return model.apply(variables, x, train=False, return_all=True)


def test_eval_outputs_match_upstream(parity):
  pf, _, model, variables, x = _load(parity)
  got = assert_forward_matches(pf, 'out', model, _eval_forward, variables, x)
  # The default call returns the segmentation logits only (out_seg, upstream's second output).
  logits = jax.jit(functools.partial(model.apply, train=False))(variables, x)
  np.testing.assert_array_equal(logits, got[1])


def test_train_outputs_and_bn_stats_match_upstream(parity):
  pf, kwargs, model, variables, x = _load(parity)
  assert_train_step_matches(
    pf, model, torch_import.key_map(MODEL, **kwargs), variables, x, _train_forward
  )


def test_gradients_match_upstream_float64(parity):
  pf, kwargs, _, variables, x = _load(parity)
  lossw = fixture_outputs(pf.group('lossw'))
  loss64, grads64 = x64_loss_and_grads(
    MODEL, kwargs, lossw_loss(_train_forward), variables, x, lossw
  )
  # (jax.image.resize computes its weights in float32, which moved this sum by 2e-9; the decoder's
  # matrix upsampling is exact in float64.)
  np.testing.assert_allclose(loss64, float(pf['loss64']), rtol=1e-10)
  # Only the float64 path (docs/parity.md: torch's own float32 gradients sit grad_fp32_noise_rel away
  # from grad64; a float32 comparison would add a compile for a looser check of the same math).
  # Conv biases in front of InstanceNorm / train-mode BN are cancelled by the mean: zero in float64.
  assert_grads64_match(pf, torch_import.key_map(MODEL, **kwargs), grads64, 1e-6)


def _np_linear_axis(x, axis, n_out, align_corners):
  """Reference 1-D linear interpolation along `axis`, written out per output sample.

  align_corners=True: source coordinate o (n_in - 1) / (n_out - 1); False (scale 2): (o + 0.5) / 2
  - 0.5 clamped at 0, the upper neighbour clamped to the last sample (torch's upsample_linear)."""
  x = np.moveaxis(np.asarray(x, np.float64), axis, 0)
  n_in = x.shape[0]
  out = np.empty((n_out,) + x.shape[1:])
  for o in range(n_out):
    if align_corners:
      src = o * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    else:
      src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
    lo = min(int(math.floor(src)), n_in - 1)
    hi = min(lo + 1, n_in - 1)
    w = src - lo
    out[o] = (1 - w) * x[lo] + w * x[hi]
  return np.moveaxis(out, 0, axis)


@pytest.mark.parametrize('align_corners', [True, False])
def test_upsamplings_match_numpy_reference(align_corners):
  """The projection head's x2 align_corners=True resize and the decoder's x2 align_corners=False
  upsampling, against a hand-written numpy reference (the fixture checks them only end to end)."""
  x = np.random.default_rng(0).standard_normal((2, 3, 4, 2, 5)).astype(np.float32)
  want = x
  for axis in (1, 2, 3):
    want = _np_linear_axis(want, axis, 2 * x.shape[axis], align_corners)
  fn = (
    (lambda a: resize_linear_align_corners(a, [2 * s for s in a.shape[1:-1]]))
    if align_corners
    else unet3d.upsample2x_trilinear
  )
  np.testing.assert_allclose(jax.jit(fn)(jnp.asarray(x)), want, rtol=1e-5, atol=1e-5)


def _small(**kw):
  return models.get(MODEL, **{**dict(n_filters=2, proj_hidden=8, proj_features=4), **kw})


@functools.cache
def _small_init():
  """(model, input [2, 16, 32, 16, 1], variables): one init compile shared by the tests below."""
  model = _small()
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 16, 32, 16, 1)), jnp.float32)
  return model, x, jax.jit(model.init)(jax.random.key(0), x)


def test_shapes_init_and_filters():
  model, x, variables = _small_init()
  sdf, logits, feats = jax.jit(functools.partial(model.apply, return_all=True))(variables, x)
  assert sdf.shape == logits.shape == (2, 16, 32, 16, 2)
  assert float(jnp.abs(sdf).max()) <= 1.0  # tanh head
  assert feats.shape == (2, 2, 4, 2, 4)  # scale_factor 2 / 16 of the input, proj_features channels
  p = variables['params']
  assert p['center']['conv1']['kernel'].shape == (3, 3, 3, 16, 32)  # filters 2 * (1, .., 16)
  assert p['up_concat4']['conv']['conv1']['kernel'].shape == (3, 3, 3, 16 + 32, 16)  # [skip, up]
  # Upstream init: kaiming-normal (fan_in, gain sqrt 2) weights, U(+-1/sqrt(fan_in)) biases.
  k = np.asarray(p['center']['conv2']['kernel'])
  fan_in = 27 * 32
  np.testing.assert_allclose(k.std(), math.sqrt(2 / fan_in), rtol=0.1)
  assert float(np.abs(p['center']['conv2']['bias']).max()) <= 1 / math.sqrt(fan_in)
  # feature_scale 4 == n_filters 16 (upstream widths 16..256), counted without computing.
  shapes = lambda m: jax.tree.map(
    lambda a: a.shape,
    jax.eval_shape(
      functools.partial(m.init, jax.random.key(0)),
      jax.ShapeDtypeStruct((1, 16, 16, 16, 1), jnp.float32),
    ),
  )
  assert shapes(models.get(MODEL, feature_scale=4)) == shapes(models.get(MODEL, n_filters=16))


def test_dropout_is_train_only():
  model, x, variables = _small_init()
  run = jax.jit(
    lambda v, x, **kw: model.apply(
      v, x, rngs={'dropout': jax.random.key(3)}, mutable=['batch_stats'], **kw
    )[0],
    static_argnames=('train', 'turnoff_drop'),
  )
  eval_logits = run(variables, x, train=False)
  # The logits path has no BatchNorm, so train mode without dropout equals eval mode.
  np.testing.assert_allclose(
    run(variables, x, train=True, turnoff_drop=True), eval_logits, rtol=1e-6, atol=1e-6
  )
  assert float(jnp.abs(run(variables, x, train=True) - eval_logits).max()) > 1e-3


def test_input_validation_and_import_errors():
  model = _small()
  with pytest.raises(ValueError, match='divisible by 16'):
    model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 24, 1)))
  with pytest.raises(ValueError, match='channels-last'):
    model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 16, 2)))
  shapes = torch_import.expected_torch_shapes(MODEL, feature_scale=16)
  assert shapes['projection.0.weight'] == (512, 64, 1, 1, 1)
  assert shapes['up_concat1.conv.conv1.0.weight'] == (4, 12, 3, 3, 3)
  state_dict = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
  variables = torch_import.import_state_dict(MODEL, state_dict, feature_scale=16)
  assert set(variables['batch_stats']['projection']) == {'bn1', 'bn4'}
  del state_dict['projection.4.running_var']
  state_dict['aspp.conv.weight'] = np.zeros(1)
  with pytest.raises(ValueError, match='projection.4.running_var.*aspp.conv.weight'):
    torch_import.import_state_dict(MODEL, state_dict, feature_scale=16)
  leaves = flax.traverse_util.flatten_dict(variables['params'])
  assert len(leaves) == 2 * 18 + 4 + 8  # 18 convs, final + out_conv2, projection 2 convs + 2 BNs
