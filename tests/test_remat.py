"""`model.remat` (jaxseg/models/vnet.py, resvnet.py, unet3d.py): the rematerialised networks have
the same parameter tree, loss, gradients and batch statistics as the plain ones, and a network
without rematerialisation rejects `remat=True` naming itself."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import config_check
from jaxseg import config_lib
from jaxseg import errors
from jaxseg import models
from jaxseg.methods import common
from tests.conftest import tiny_config

# Tiny widths and depths: the check is about the transform, not the size.
_KWARGS = {
  'vnet': dict(n_filters=2, has_dropout=True),
  'vnet_sdf': dict(n_classes=1, n_filters=2, has_dropout=True),
  'bcp_vnet': dict(n_filters=2, has_dropout=True),
  'cml_vnet': dict(n_filters=2, has_dropout=True),
  'resvnet': dict(n_filters=2, depths=(1, 1, 1, 1), has_dropout=True),
  'unet3d_dycon': dict(n_filters=2, proj_hidden=4, proj_features=4),
}


def test_every_3d_network_but_milletari_supports_remat():
  assert sorted(n for n in models.MODELS if models.supports_remat(n)) == sorted(_KWARGS)


# Blocks `remat=True` wraps (encoder and decoder), per network at `_KWARGS`.
_N_BLOCKS = {
  'vnet': 17,
  'vnet_sdf': 17,
  'bcp_vnet': 17,
  'cml_vnet': 34,
  'resvnet': 4 + 8,
  'unet3d_dycon': 5 + 4,
}


def _loss_fn(name: str, remat: bool, x, batch_stats):
  model = models.get(name, remat=remat, **_KWARGS[name])

  def loss_fn(params):
    out, mutated = model.apply(
      {'params': params, 'batch_stats': batch_stats},
      x,
      train=True,
      rngs={'dropout': jax.random.PRNGKey(1)},
      mutable=['batch_stats'],
    )
    outs = jax.tree.leaves(out)
    # A fixed random weighting of every output, so that each voxel's gradient differs.
    weights = [jax.random.normal(jax.random.PRNGKey(i), o.shape) for i, o in enumerate(outs)]
    loss = sum(jnp.sum(w * o) for w, o in zip(weights, outs))
    return loss, mutated['batch_stats']

  return loss_fn


def _loss_grads_and_stats(name: str, remat: bool, x, params, batch_stats):
  loss_fn = _loss_fn(name, remat, x, batch_stats)
  (loss, stats), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
  return loss, grads, stats


def _n_checkpoints(name: str, remat: bool, x, params, batch_stats) -> int:
  """`jax.checkpoint` equations (primitive 'remat2') at the top level of the traced gradient (no
  compile): one per rematerialised block."""
  loss_fn = _loss_fn(name, remat, x, batch_stats)
  jaxpr = jax.make_jaxpr(jax.grad(loss_fn, has_aux=True))(params).jaxpr
  return sum(e.primitive.name == 'remat2' for e in jaxpr.eqns)


def _init(name: str, remat: bool, x):
  model = models.get(name, remat=remat, **_KWARGS[name])
  # Jitted: eager flax init dispatches (and compiles) every small op on its own.
  return jax.jit(lambda x: model.init({'params': jax.random.PRNGKey(2)}, x, train=False))(x)


@pytest.mark.parametrize('name', sorted(_KWARGS))
def test_remat_gives_the_same_train_step(name):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 16, 1))
  variables, remat_variables = (_init(name, remat, x) for remat in (False, True))
  # Same tree and the same init draws: checkpoints and torch imports are shared.
  jax.tree.map(np.testing.assert_array_equal, variables, remat_variables)
  params, batch_stats = variables['params'], variables.get('batch_stats', {})
  assert _n_checkpoints(name, False, x, params, batch_stats) == 0
  assert _n_checkpoints(name, True, x, params, batch_stats) == _N_BLOCKS[name]
  loss0, grads0, stats0 = _loss_grads_and_stats(name, False, x, params, batch_stats)
  loss1, grads1, stats1 = _loss_grads_and_stats(name, True, x, params, batch_stats)
  assert np.isfinite(float(loss0)) and abs(float(loss0)) > 0
  np.testing.assert_allclose(float(loss1), float(loss0), rtol=1e-5)
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads0))
  assert scale > 0
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * scale), grads0, grads1
  )
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6), stats0, stats1)


@pytest.mark.parametrize('name', ['unet2d', 'cml_unet2d', 'vnet_milletari'])
def test_networks_without_remat_reject_it_by_name(name):
  assert not models.supports_remat(name)
  with pytest.raises(errors.ConfigError, match=f"model.remat=True: model '{name}'"):
    models.get(name, remat=True)


def test_config_check_and_build_model_read_model_remat():
  config = tiny_config('supervised')
  assert config.model.remat is False
  config.model.remat = True
  config_check.validate(config)
  assert common.build_model(config).remat is True
  config.model.name = 'vnet_milletari'
  with pytest.raises(errors.ConfigError, match="invalid config: model.remat=True: model 'vnet_mil"):
    config_check.validate(config)
  # A config that writes its own model block (configs/promise12_vnet.py does) has no bool field
  # to type-check the value against.
  config.model = config_lib.ConfigDict({**config.model.to_dict(), 'name': 'vnet', 'remat': 1})
  with pytest.raises(errors.ConfigError, match='model.remat=1 must be True or False'):
    config_check.validate(config)
