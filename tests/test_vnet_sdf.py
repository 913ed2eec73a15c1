"""Tests for jaxseg/models/vnet_sdf.py: parity with HiLab-git/DTC code/networks/vnet_sdf.py
(fixture DTC_VNetSDF.npz, docs/parity.md) and structural checks."""

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
from tests.conftest import assert_train_step_matches
from tests.conftest import fixture_outputs
from tests.conftest import loss_and_grads
from tests.conftest import lossw_loss
from tests.conftest import network_fixture
from tests.conftest import x64_loss_and_grads

FIXTURE = 'DTC_VNetSDF.npz'
MODEL = 'vnet_sdf'


def _load(parity):
  """(fixture, constructor kwargs, model, imported variables, channels-last input)."""
  pf, kwargs, variables, x = network_fixture(parity, FIXTURE, MODEL)
  return pf, kwargs, models.get(MODEL, **kwargs), variables, x


def _train_forward(model, variables, x):
  # Upstream's gradient step sets every dropout p to 0: turnoff_drop is the same thing here.
  return model.apply(variables, x, train=True, turnoff_drop=True, mutable=['batch_stats'])


def _eval_forward(model, variables, x):
  return model.apply(variables, x, train=False)


def test_eval_outputs_match_upstream(parity):
  pf, _, model, variables, x = _load(parity)
  assert_forward_matches(pf, 'out', model, _eval_forward, variables, x)  # out_tanh, out_seg


def test_train_outputs_and_bn_stats_match_upstream(parity):
  pf, kwargs, model, variables, x = _load(parity)
  assert_train_step_matches(
    pf, model, torch_import.key_map(MODEL, **kwargs), variables, x, _train_forward
  )


def test_gradients_match_upstream_float64_and_float32(parity):
  pf, kwargs, model, variables, x = _load(parity)
  lossw = fixture_outputs(pf.group('lossw'))
  loss_fn = lossw_loss(_train_forward)
  loss64, grads64 = x64_loss_and_grads(MODEL, kwargs, loss_fn, variables, x, lossw)
  np.testing.assert_allclose(loss64, float(pf['loss64']), rtol=1e-10)
  _, grads32 = loss_and_grads(model, loss_fn, variables, x, lossw)
  assert {'out_conv.weight', 'out_conv2.weight'} <= set(pf.group('grad64'))  # both heads checked
  assert_grads64_match(pf, torch_import.key_map(MODEL, **kwargs), grads64, 1e-6, grads32=grads32)


def test_param_count_and_tree_full_size():
  """docs/methods/dtc.md §1: n_filters=16, n_classes=1 -> 9,448,866 params (as the 2-class VNet)."""
  model = models.get(MODEL, n_channels=1, n_classes=1, n_filters=16)
  shapes = jax.eval_shape(
    functools.partial(model.init, jax.random.key(0)),
    jax.ShapeDtypeStruct((1, 16, 16, 16, 1), jnp.float32),
  )
  assert sum(math.prod(a.shape) for a in jax.tree.leaves(shapes['params'])) == 9_448_866
  # Upstream names at the top level (no trunk/ prefix): the torch key map covers them all.
  torch_shapes = torch_import.expected_torch_shapes(MODEL, n_filters=16, n_classes=1)
  assert torch_shapes['out_conv.weight'] == torch_shapes['out_conv2.weight'] == (1, 16, 1, 1, 1)


def test_heads_and_dropout():
  model = models.get(MODEL, n_filters=4, has_dropout=True)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 16, 16, 16, 1)), jnp.float32)
  with pytest.raises(ValueError, match='channels-last'):
    model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 16, 2)))
  # Variables of init's shapes drawn with numpy: a real init costs seconds of XLA:CPU compile.
  shapes = jax.eval_shape(functools.partial(model.init, jax.random.key(0)), x)
  rng = np.random.default_rng(1)
  variables = jax.tree.map(
    lambda a: jnp.asarray(
      rng.uniform(0.5, 1.0, a.shape) * (1 if a.ndim == 1 else 0.3), jnp.float32
    ),
    shapes,
  )

  @jax.jit
  def run(key):
    return model.apply(variables, x, train=True, rngs={'dropout': key}, mutable=['batch_stats'])[0]

  (t1, s1), (t2, s2) = run(jax.random.key(1)), run(jax.random.key(2))
  assert t1.shape == s1.shape == (2, 16, 16, 16, 1)
  assert float(jnp.abs(t1).max()) < 1.0  # tanh head
  # Both heads read the dropped-out x9: different dropout draws change both outputs.
  assert not np.allclose(s1, s2) and not np.allclose(t1, t2)
