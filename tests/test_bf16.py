"""`compute_dtype='bfloat16'` end to end (jaxseg/methods/common.py `build_model` gives every network
of jaxseg/models its `dtype`): convolutions and matmuls run in bf16 while parameters, norm
statistics, network outputs, losses and softmax stay float32; a short Mean Teacher run stays finite
and starts where float32 does; the methods with the most delicate losses stay finite."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import methods
from jaxseg import models
from jaxseg.methods import base
from tests.conftest import all_eqns
from tests.conftest import random_batch
from tests.conftest import tiny_config
from tests.test_methods import smoke_config

# Every registered network at a tiny width; (constructor kwargs, input shape).
_NETWORKS = {
  'vnet': (dict(n_filters=2, has_dropout=True), (2, 16, 16, 16, 1)),
  'vnet_sdf': (dict(n_classes=1, n_filters=2, has_dropout=True), (2, 16, 16, 16, 1)),
  'bcp_vnet': (dict(n_filters=2, has_dropout=True), (2, 16, 16, 16, 1)),
  'cml_vnet': (dict(n_filters=2, has_dropout=True), (2, 16, 16, 16, 1)),
  'resvnet': (dict(n_filters=2, depths=(1, 1, 1, 1)), (2, 16, 16, 16, 1)),
  'unet3d_dycon': (dict(n_filters=2, proj_hidden=4, proj_features=4), (2, 16, 16, 16, 1)),
  'vnet_milletari': (dict(n_filters=2), (2, 16, 16, 16, 1)),
  'unet2d': (dict(feature_chns=(2, 4, 8, 16, 32)), (2, 32, 32, 1)),
  'cml_unet2d': (dict(feature_chns=(2, 4, 8, 16, 32)), (2, 32, 32, 1)),
}


def test_every_network_is_covered():
  assert sorted(_NETWORKS) == sorted(models.MODELS)


def _operand_dtypes(jaxpr, primitives) -> list[str]:
  """Input dtypes of every `primitives` equation in `jaxpr` and the jaxprs nested in it."""
  return [
    str(v.aval.dtype) for e in all_eqns(jaxpr) if e.primitive.name in primitives for v in e.invars
  ]


@pytest.mark.parametrize('name', sorted(_NETWORKS))
def test_network_computes_in_bf16_and_keeps_float32_state_and_outputs(name):
  """Traced only (no compile): the train-mode forward of the bf16 network."""
  kwargs, shape = _NETWORKS[name]
  model = models.get(name, dtype=jnp.bfloat16, **kwargs)
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(
    lambda x: model.init({'params': jax.random.PRNGKey(0)}, x, train=False), x
  )
  assert {str(v.dtype) for v in jax.tree.leaves(variables)} == {'float32'}

  def forward(variables, x):
    return model.apply(
      variables, x, train=True, rngs={'dropout': jax.random.PRNGKey(1)}, mutable=['batch_stats']
    )

  closed = jax.make_jaxpr(forward)(variables, x)
  dtypes = _operand_dtypes(closed.jaxpr, ('conv_general_dilated', 'dot_general'))
  assert dtypes and set(dtypes) == {'bfloat16'}, sorted(set(dtypes))
  outputs, updated = jax.eval_shape(forward, variables, x)
  assert {str(v.dtype) for v in jax.tree.leaves(outputs)} == {'float32'}
  # Norm running statistics are accumulated in float32 (jaxseg/models/layers.py `_stat_dtype`).
  assert {str(v.dtype) for v in jax.tree.leaves(updated)} <= {'float32'}


@pytest.fixture(scope='module')
def mean_teacher_runs():
  """Three Mean Teacher steps on one batch from the same float32 init, in float32 and in bf16:
  {dtype: (losses, predicted probabilities)}."""
  config = tiny_config('mean_teacher')
  batch = random_batch(config)
  state = methods.build(config).init(jax.random.PRNGKey(0), batch)
  runs = {}
  for dtype in ('float32', 'bfloat16'):
    config.compute_dtype = dtype
    method = methods.build(config)
    (phase,) = base.phases_of(method)
    step = jax.jit(phase.train_step)
    s, losses = state, []
    for _ in range(3):
      s, metrics = step(s, batch)
      losses.append(float(metrics['loss']))
    runs[dtype] = (losses, np.asarray(jax.jit(method.predict)(s, batch['image'])))
  return runs


def test_bf16_mean_teacher_losses_are_finite_and_start_at_float32s(mean_teacher_runs):
  losses32, _ = mean_teacher_runs['float32']
  losses16, _ = mean_teacher_runs['bfloat16']
  assert np.all(np.isfinite(losses16)) and losses16[-1] < losses16[0]
  np.testing.assert_allclose(losses16[0], losses32[0], rtol=0.05)


def test_bf16_mean_teacher_predicts_float32_probabilities_close_to_float32s(mean_teacher_runs):
  _, probs32 = mean_teacher_runs['float32']
  _, probs16 = mean_teacher_runs['bfloat16']
  assert probs16.dtype == np.float32
  np.testing.assert_allclose(probs16.sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(probs16, probs32, atol=0.1)
  assert np.mean(probs16.argmax(-1) == probs32.argmax(-1)) > 0.95


# The methods whose losses bf16 could break: UA-MT's entropy of MC-averaged softmax, DTC's
# sigmoid(-1500 tanh) level-set transform, DyCON's temperature-scaled contrastive losses on UNet3D
# features. The others combine cross-entropy, Dice and MSE terms on float32 outputs (Mean Teacher
# above; every network's float32 outputs: test_network_computes_in_bf16_...), and their steps cost
# minutes on a loaded 2-core CI machine (CML's two phases, MCF's ResNet-34).
@pytest.mark.parametrize('name', ['uamt', 'dtc', 'dycon'])
def test_bf16_method_steps_stay_finite(name):
  config = smoke_config(name)
  config.compute_dtype = 'bfloat16'
  method = methods.build(config)
  batch = base.example_batch(config, method.host_targets)
  rng = np.random.default_rng(0)
  batch['label'] = (rng.random(batch['label'].shape) > 0.7).astype(np.int32)
  batch['image'] = (rng.normal(size=batch['image'].shape) + 2.0 * batch['label'][..., None]).astype(
    np.float32
  )
  for key, fn in method.host_targets.items():
    batch[key] = np.stack([np.asarray(fn(l), np.float32) for l in batch['label']])
  state = method.init(jax.random.PRNGKey(0), batch)
  for phase in base.phases_of(method):
    start = phase.enter(state) if phase.enter is not None else state
    new_state, metrics = jax.jit(phase.train_step)(start, batch)
    metrics = jax.device_get(metrics)
    bad = {k: v for k, v in metrics.items() if not np.all(np.isfinite(v))}
    assert not bad, f'{name} {phase.name}: non-finite metrics {bad}'
    assert float(metrics['loss']) > 0
    leaves = jax.tree.leaves(new_state.params)
    assert {str(p.dtype) for p in leaves} == {'float32'}
    assert all(np.all(np.isfinite(np.asarray(p))) for p in leaves), f'{name} {phase.name}'
