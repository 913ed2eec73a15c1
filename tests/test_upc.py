"""UPC (jaxseg.methods.upc): upc.npz parity for every case, the step's numbers, one trace, a run."""

import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import config_check
from jaxseg import config_lib
from jaxseg import losses
from jaxseg import methods
from jaxseg import schedules
from jaxseg.methods import common
from jaxseg.methods import upc
from tests.conftest import MAP_TOL
from tests.conftest import SCALAR_TOL
from tests.conftest import channels_last
from tests.conftest import random_batch
from tests.conftest import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_every_case_is_checked(parity):
  pf = parity("upc.npz")
  known = {"update_variance", "update_consistency_loss", "get_current_consistency_weight"}
  assert {pf.meta["cases"][n]["function"] for n in pf.cases} <= known


def test_update_variance_parity(parity):
  pf = parity("upc.npz")
  fn = jax.jit(upc.update_variance)
  for name in pf.cases_of("update_variance"):
    case = pf.case(name)
    loss, kl_map = fn(
      channels_last(case["input/pred1"]),
      channels_last(case["input/pred2"]),
      case["input/loss_origin"],
    )
    np.testing.assert_allclose(kl_map, case["output/kl_map"], **MAP_TOL, err_msg=name)
    np.testing.assert_allclose(loss, case["output/loss"], **SCALAR_TOL, err_msg=name)


def test_update_consistency_loss_parity(parity):
  pf = parity("upc.npz")
  names = pf.cases_of("update_consistency_loss")
  settings = set()
  for name in names:
    case, args = pf.case(name), pf.case_args(name)
    kw = dict(
      pseudo=bool(args["pseudo"]),
      pseudo_rect=bool(args["pseudo_rect"]),
      threshold=float(args["threshold"]),
      temperature=float(args["T"]),
    )
    settings.add((kw["pseudo"], kw["pseudo_rect"]))
    fn = jax.jit(lambda s, t, kw=kw: upc.consistency_loss(s, t, **kw))
    loss, aux = fn(channels_last(case["input/pred1"]), channels_last(case["input/pred2"]))
    np.testing.assert_allclose(loss, case["output/loss"], **SCALAR_TOL, err_msg=name)
    if "output/targets" in case:
      np.testing.assert_array_equal(aux["targets"], case["output/targets"], err_msg=name)
    if "output/mask" in case:
      np.testing.assert_array_equal(aux["mask"], case["output/mask"], err_msg=name)
  # The thresholded default, the KL-rectified variant and the (CLI-unreachable) logit MSE.
  assert settings == {(True, False), (True, True), (False, False)}, settings


def test_consistency_weight_parity(parity):
  pf = parity("upc.npz")
  for name in pf.cases_of("get_current_consistency_weight"):
    case, args = pf.case(name), pf.case_args(name)
    config = tiny_config("upc")
    hp = config.upc
    assert (hp.consistency, hp.consistency_rampup) == (
      args["consistency"],
      args["consistency_rampup"],
    )
    got = schedules.consistency_weight(
      case["input/iter_num"], hp.consistency, hp.consistency_rampup, hp.iters_per_epoch
    )
    np.testing.assert_allclose(got, case["output/weight"], rtol=1e-12, err_msg=name)
    traced = jax.jit(
      lambda s: schedules.consistency_weight(
        s, hp.consistency, hp.consistency_rampup, hp.iters_per_epoch
      )
    )
    np.testing.assert_allclose(
      jax.vmap(traced)(jnp.asarray(case["input/iter_num"], jnp.int32)),
      case["output/weight"],
      rtol=1e-6,
    )


def test_consistency_loss_hand_values():
  # One voxel, teacher p = softmax([0, ln 9]) = [0.1, 0.9]: confident at 0.9 (>=), not at 0.91.
  s = jnp.array([[[0.0, 0.0]], [[2.0, 0.0]]])  # [B=2, 1 voxel, C=2]
  t = jnp.array([[[0.0, np.log(9.0)]], [[0.0, 0.0]]])  # sample 2 ties -> class 0, max prob 0.5
  loss, aux = upc.consistency_loss(s, t, threshold=0.9)
  np.testing.assert_array_equal(aux["targets"], [[1], [0]])
  np.testing.assert_array_equal(aux["mask"], [[1.0], [0.0]])
  np.testing.assert_allclose(loss, np.log(2.0) / 2, rtol=1e-6)  # mean over ALL voxels
  loss, _ = upc.consistency_loss(s, t, threshold=0.91)
  assert float(loss) == 0.0
  with pytest.raises(ValueError, match="temperature"):
    upc.consistency_loss(s, t, temperature=0.0)


@pytest.mark.parametrize("pseudo_rect", [False, True])
def test_step_compiles_once_and_matches_hand_computation(pseudo_rect):
  config = tiny_config("upc")
  config.upc.pseudo_rect = pseudo_rect
  # At 4 filters, p = 0.9 drops all x9 channels of most samples (constant logits, docs/methods/upc.md §1); 0.5 keeps
  # the teacher's confidence varied so the threshold below splits the voxels.
  config.model.kwargs.dropout_rate = 0.5
  batch = random_batch(config, seed=2)
  state = methods.build(config).init(jax.random.PRNGKey(5), batch)

  rng = jax.random.fold_in(state.rng, state.step)
  student_rng, noise_rng, teacher_rng = jax.random.split(rng, 3)
  images = batch["image"]
  noise = jnp.clip(0.2 * jax.random.normal(noise_rng, images.shape), -0.4, 0.4)
  model = common.build_model(config)
  t_logits, _ = common.train_forward(
    model, state.aux["ema_params"], state.aux["ema_batch_stats"], images, teacher_rng
  )  # clean teacher input
  s_logits, _ = common.train_forward(
    model, state.params, state.batch_stats, images + noise, student_rng
  )
  sup, _, _ = losses.supervised_ce_dice(s_logits[:2], batch["label"][:2])
  q = jax.nn.softmax(t_logits, axis=-1)
  targets = jnp.argmax(q, axis=-1)
  ce = -jnp.take_along_axis(jax.nn.log_softmax(s_logits, -1), targets[..., None], axis=-1)[..., 0]
  threshold = float(
    np.quantile(np.asarray(q.max(-1)), 0.5)
  )  # the untrained teacher is rarely 0.9-sure
  if pseudo_rect:
    kl = jnp.sum(jax.scipy.special.xlogy(q, q) - q * jax.nn.log_softmax(s_logits, -1), axis=-1)
    cons = jnp.mean(ce * jnp.exp(-kl)) + jnp.mean(kl)
  else:
    mask = (q.max(-1) >= threshold).astype(jnp.float32)
    assert 0.2 < float(mask.mean()) < 0.8
    cons = jnp.mean(ce * mask)

  config.upc.threshold = threshold
  method = methods.build(config)
  chex.clear_trace_counter()  # counts are per function: other tests may trace the same step
  step = jax.jit(chex.assert_max_traces(method.train_step, n=1))
  new_state, metrics = step(state, batch)
  if not pseudo_rect:
    np.testing.assert_allclose(float(metrics["confident_fraction"]), float(mask.mean()), atol=1e-3)
  weight = 1.0 * np.exp(-5.0)
  np.testing.assert_allclose(float(metrics["consistency_weight"]), weight, rtol=1e-6)
  np.testing.assert_allclose(float(metrics["loss_consistency"]), float(cons), rtol=1e-3)
  np.testing.assert_allclose(float(metrics["loss"]), float(sup + weight * cons), rtol=1e-4)
  chex.assert_trees_all_close(new_state.aux["ema_params"], new_state.params)  # alpha = 0 at step 0
  # Step 1: alpha = min(1 - 1/2, 0.9999) = 0.5, the running average of the iterates.
  newer, _ = step(new_state, batch)
  expected = jax.tree.map(lambda e, p: 0.5 * e + 0.5 * p, new_state.aux["ema_params"], newer.params)
  chex.assert_trees_all_close(newer.aux["ema_params"], expected, rtol=1e-6, atol=1e-7)


def test_la_config_recipe():
  c = config_lib.load_config_module(REPO / "configs" / "la_upc.py").get_config("labeled=8,seed=3")
  config_check.validate(c)
  assert (c.method, c.data.labeled, c.seed, c.total_steps) == ("upc", 8, 3, 6000)
  assert c.model.kwargs.has_dropout and c.model.kwargs.dropout_rate == 0.9
  hp = c.upc
  assert (hp.ema_decay, hp.consistency, hp.consistency_rampup, hp.noise_std, hp.noise_clip) == (
    0.9999,
    1.0,
    40.0,
    0.2,
    0.4,
  )
  assert (hp.pseudo, hp.pseudo_rect, hp.threshold, hp.temperature) == (True, False, 0.9, 1.0)
  assert "mt" not in c
  bad = c.copy_and_resolve_references()
  bad.upc.temperature = 0.0
  with pytest.raises(ValueError, match="config.upc.temperature"):
    methods.build(bad)
