"""DTC (jaxseg.methods.dtc): loss parity with HiLab-git/DTC train_la_dtc.py (dtc.npz), one trace,
the step's numbers, prediction rule, and short runs of configs/la_dtc.py and configs/pancreas_dtc.py."""

import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import config_check
from jaxseg import config_lib
from jaxseg import methods
from jaxseg import schedules
from jaxseg.data import pancreas
from jaxseg.methods import base
from jaxseg.methods import common
from jaxseg.methods import dtc
from jaxseg.methods.dtc.sdf import compute_sdf
from jaxseg.methods.dtc.sdf import compute_sdf_batch
from tests.conftest import MAP_TOL
from tests.conftest import SCALAR_TOL
from tests.conftest import channels_last
from tests.conftest import check_short_run
from tests.conftest import random_batch
from tests.conftest import tiny_config

FIXTURE = 'dtc.npz'
_CONFIGS = pathlib.Path(__file__).resolve().parents[1] / 'configs'


def _loss_cases(pf):
  """Cases of the inline training-loss transcription: those holding the consistency loss."""
  names = [c for c in pf.cases if f'{c}/output/consistency_loss' in pf.npz.files]
  assert names, f'no DTC training-loss case in {pf.path.name}'
  return names


def test_losses_match_upstream(parity):
  pf = parity(FIXTURE)
  for case in _loss_cases(pf):
    a, args = pf.case(case), pf.case_args(case)
    labels = jnp.asarray(a['input/label'])
    lb = int(args['labeled_bs'])
    # Our SDF target from the labels (upstream's compute_sdf on the labeled slice; test_sdf.py
    # checks it against output/gt_dis).
    gt_sdf = compute_sdf_batch(np.asarray(labels[:lb]))
    terms = dtc.dtc_losses(
      channels_last(a['input/outputs_tanh']),
      channels_last(a['input/outputs_logits']),
      labels,
      jnp.asarray(gt_sdf),
      lb,
      beta=float(args['beta']),
    )
    for ours, theirs in (
      ('loss_sdf', 'loss_sdf'),
      ('loss_dice', 'loss_seg_dice'),
      ('loss_bce', 'loss_seg_bce'),
      ('consistency', 'consistency_loss'),
      ('supervised', 'supervised_loss'),
    ):
      np.testing.assert_allclose(
        float(terms[ours]), float(a[f'output/{theirs}']), **SCALAR_TOL, err_msg=f'{case}: {ours}'
      )
    np.testing.assert_allclose(
      terms['dis_to_mask'],
      channels_last(a['output/dis_to_mask']),
      **MAP_TOL,
      err_msg=f'{case}: dis_to_mask',
    )
    for it in args['iters']:
      weight = schedules.consistency_weight(
        jnp.asarray(it), float(args['consistency']), float(args['consistency_rampup'])
      )
      np.testing.assert_allclose(
        float(weight),
        float(a[f'output/iter{it}/consistency_weight']),
        rtol=1e-6,
        err_msg=f'{case}: weight at {it}',
      )
      loss = terms['supervised'] + weight * terms['consistency']
      np.testing.assert_allclose(
        float(loss),
        float(a[f'output/iter{it}/loss']),
        **SCALAR_TOL,
        err_msg=f'{case}: loss at {it}',
      )


def test_sdf_to_mask_matches_upstream(parity):
  pf = parity(FIXTURE)
  for case in pf.cases_of('inline: torch.sigmoid(-1500*outputs_tanh)'):
    a = pf.case(case)
    np.testing.assert_allclose(
      dtc.sdf_to_mask(jnp.asarray(a['input/x'])), a['output/y'], **MAP_TOL, err_msg=case
    )


def _batch_with_sdf(config, seed=0):
  batch = random_batch(config, seed=seed)
  batch['sdf'] = jnp.asarray(compute_sdf_batch(np.asarray(batch['label'])))
  return batch


def test_step_compiles_once_and_matches_hand_computation():
  config = tiny_config('dtc')
  method = methods.build(config)
  batch = _batch_with_sdf(config)
  state = method.init(jax.random.PRNGKey(0), batch)
  chex.clear_trace_counter()
  step = jax.jit(chex.assert_max_traces(method.train_step, n=1))
  new_state, metrics = step(state, batch)

  @jax.jit
  def by_hand(state, batch):
    """The same forward, upstream's formulas written out: (loss, consistency)."""
    rng = jax.random.fold_in(state.rng, state.step)
    (tanh, seg), _ = common.train_forward(
      method.model, state.params, state.batch_stats, batch['image'], rng
    )
    p = jax.nn.sigmoid(seg[..., 0])
    y = batch['label'][:2].astype(jnp.float32)
    dice = 1 - (2 * jnp.sum(p[:2] * y) + 1e-5) / (jnp.sum(p[:2] ** 2) + jnp.sum(y**2) + 1e-5)
    sdf = jnp.mean((tanh[:2, ..., 0] - batch['sdf'][:2]) ** 2)
    cons = jnp.mean((jax.nn.sigmoid(-1500 * tanh[..., 0]) - p) ** 2)
    return dice + 0.3 * sdf + np.exp(-5.0) * cons, cons  # w = 1.0 * sigmoid_rampup(0, 40)

  want, cons = by_hand(state, batch)
  np.testing.assert_allclose(float(metrics['loss']), float(want), rtol=1e-5)
  np.testing.assert_allclose(float(metrics['loss_consistency']), float(cons), rtol=1e-5)

  for seed in (1, 2):  # new batches, new steps: no retrace
    new_state, metrics = step(new_state, _batch_with_sdf(config, seed))
  assert int(new_state.step) == 3 and np.isfinite(float(metrics['loss']))

  # predict: [1 - p, p] of the eval-mode seg head; argmax is DTC's p > 0.5.
  @jax.jit
  def predict_and_seg(state, images):
    _, seg = method.model.apply({'params': state.params, 'batch_stats': state.batch_stats}, images)
    return method.predict(state, images), jax.nn.sigmoid(seg[..., 0])

  probs, p_eval = predict_and_seg(new_state, batch['image'])
  assert probs.shape == batch['image'].shape[:-1] + (2,)
  np.testing.assert_allclose(probs[..., 1], p_eval, rtol=1e-6)
  np.testing.assert_array_equal(jnp.argmax(probs, -1), p_eval > 0.5)


def test_config_is_checked():
  config = tiny_config('dtc')
  config.model.kwargs.n_classes = 2
  with pytest.raises(ValueError, match='n_classes=2'):
    methods.build(config)


def test_sdf_is_a_host_target():
  """The data pipeline and example_batch add batch['sdf'] because DTC declares it."""
  config = tiny_config('dtc')
  targets = methods.METHODS['dtc'].host_targets
  assert dict(targets) == {'sdf': compute_sdf}
  label = np.zeros((6, 7, 8), np.int32)
  label[1:5, 1:5, 2:6] = 1  # thick enough to have voxels inside its inner boundary
  batch = base.example_batch(config, targets, batch_size=1)
  assert batch['sdf'].shape == (1, *config.data.patch_size) and batch['sdf'].dtype == np.float32
  np.testing.assert_array_equal(batch['sdf'], 0.0)  # all-background label: the empty-mask case
  sdf = compute_sdf(label)
  assert sdf.min() == -1.0 and sdf.max() == 1.0 and np.all(sdf[~label.astype(bool)] > 0)


def test_la_recipe():
  c = config_lib.load_config_module(_CONFIGS / 'la_dtc.py').get_config('labeled=8,seed=2')
  config_check.validate(c)
  assert (c.data.labeled, c.seed, c.model.name, c.model.kwargs.n_classes) == (8, 2, 'vnet_sdf', 1)
  assert (c.dtc.beta, c.dtc.consistency, c.dtc.consistency_rampup) == (0.3, 1.0, 40.0)
  assert 'sdf' not in c.data and c.eval.largest_cc and c.data.augment == 'rot_flip_crop'
  assert (c.optimizer.lr, c.optimizer.lr_step_every, c.total_steps) == (0.01, 2500, 6000)
  assert 'mt' not in c


def test_two_step_pancreas_run_is_finite(tmp_path):
  c = config_lib.load_config_module(_CONFIGS / 'pancreas_dtc.py').get_config('labeled=2,seed=0')
  assert (c.data.name, tuple(c.data.patch_size), c.data.augment) == ('pancreas', (96,) * 3, 'crop')
  assert (c.eval.stride_xy, c.eval.stride_z, c.eval.largest_cc) == (16, 16, True)
  root = pancreas.synthesize(
    tmp_path / 'pancreas', {'n_cases': 6, 'n_test': 1, 'shape': (24, 20, 20), 'seed': 0}
  )
  c.data.root = str(root)
  c.data.n_val = 2
  c.data.patch_size = (16, 16, 16)
  c.model.kwargs.n_filters = 4
  c.total_steps = 2
  c.eval.stride_xy = c.eval.stride_z = 8
  c.eval.every_steps = 0
  c.log_every_steps = 1
  c.checkpoint_every_steps = 2
  config_check.validate(c)
  summary = check_short_run(c, tmp_path / 'run')
  assert summary['n_cases'] == 2
