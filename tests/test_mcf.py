"""MCF (jaxseg.methods.mcf): loss parity with train_MCF.py (mcf.npz), the in-graph choice of the
pseudo-label generator, the step's numbers and single trace, predict, a short run and the recipe."""

import pathlib
import re

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxseg import methods
from jaxseg import schedules
from jaxseg.methods import common
from jaxseg.methods import mcf
from tests.conftest import MAP_TOL
from tests.conftest import SCALAR_TOL
from tests.conftest import channels_last
from tests.conftest import random_batch
from tests.conftest import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = "mcf.npz"


def test_plain_mse_parity(parity):
  pf = parity(FIXTURE)
  for name in pf.cases_of("softmax_mse_loss"):
    case = pf.case(name)
    got = mcf.plain_mse(
      channels_last(case["input/input_logits"]), channels_last(case["input/target_logits"])
    )
    np.testing.assert_allclose(got, channels_last(case["output/loss_map"]), **MAP_TOL, err_msg=name)


def test_losses_match_upstream(parity):
  pf = parity(FIXTURE)
  names = [n for n in pf.cases if "input/v_outputs" in pf.case(n)]
  assert names
  fn = jax.jit(mcf.mcf_losses, static_argnames=("labeled_batch_size", "temperature"))
  seen_good = set()
  for name in names:
    case, args = pf.case(name), pf.case_args(name)
    assert args.get("consistency_type", "mse") == "mse"
    np.testing.assert_array_equal(case["input/v_label"], case["input/r_label"])  # same crop
    lb, temperature = args["labeled_bs"], args["T"]
    v, r = channels_last(case["input/v_outputs"]), channels_last(case["input/r_outputs"])
    labels = jnp.asarray(case["input/v_label"])
    iters = sorted(
      {int(m.group(1)) for k in case for m in [re.match(r"output/iter(\d+)/", k)] if m}
    )
    assert iters and iters == sorted(args.get("iters", iters))
    for it in iters:
      pre, msg = f"output/iter{it}/", f"{name}/iter{it}"
      weight = schedules.consistency_weight(it, args["consistency"], args["consistency_rampup"])
      np.testing.assert_allclose(weight, case[pre + "consistency_weight"], rtol=1e-12, err_msg=msg)
      out = fn(
        v, r, labels, labeled_batch_size=lb, weight=jnp.float32(weight), temperature=temperature
      )
      np.testing.assert_allclose(out["loss_v"], case[pre + "v_loss"], **SCALAR_TOL, err_msg=msg)
      np.testing.assert_allclose(out["loss_r"], case[pre + "r_loss"], **SCALAR_TOL, err_msg=msg)

    good = int(case["output/Good_student"])
    seen_good.add(good)
    assert int(out["good_student"]) == good, name
    for ours, theirs in (
      ("ce_v", "v_loss_seg"),
      ("dice_v", "v_loss_seg_dice"),
      ("ce_r", "r_loss_seg"),
      ("dice_r", "r_loss_seg_dice"),
      ("cdr_v", "v_mse"),
      ("cdr_r", "r_mse"),
      ("supervised_v", "v_supervised_loss"),
      ("supervised_r", "r_supervised_loss"),
      ("consistency", "consistency_dist"),
    ):
      np.testing.assert_allclose(
        out[ours], case["output/" + theirs], **SCALAR_TOL, err_msg=f"{name}: {theirs}"
      )
    np.testing.assert_array_equal(out["diff_mask"], case["output/diff_mask"], err_msg=name)
    assert out["diff_mask"].dtype == jnp.int32
    for ours, theirs in (("dist_v", "v_mse_dist"), ("dist_r", "r_mse_dist")):
      np.testing.assert_allclose(out[ours], case["output/" + theirs], **MAP_TOL, err_msg=name)
    for ours, theirs in (
      ("pseudo_label_v", "v_pseudo_label"),
      ("pseudo_label_r", "r_pseudo_label"),
    ):
      np.testing.assert_allclose(
        out[ours], channels_last(case["output/" + theirs]), **MAP_TOL, err_msg=name
      )
  # The fixture covers both outcomes of the competition (cases 'vnet better' / 'resnet better').
  assert seen_good == {mcf.VNET, mcf.RESVNET}


def test_good_student_is_chosen_inside_one_trace():
  """Swapping the two networks flips the winner without retracing (no Python branch on values)."""
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.normal(size=(4, 8, 8, 8, 2)), jnp.float32)
  labels = jnp.asarray(rng.random((4, 8, 8, 8)) > 0.5, jnp.int32)
  b = jnp.stack([a[..., 1], a[..., 0]], axis=-1) * 0.3  # a worse, less confident network
  chex.clear_trace_counter()
  fn = jax.jit(chex.assert_max_traces(lambda x, y, w: mcf.mcf_losses(x, y, labels, 2, w), n=1))
  w = jnp.float32(0.1)
  first, second = fn(a, b, w), fn(b, a, w)
  assert int(first["good_student"]) != int(second["good_student"])
  # The loser alone gets the weighted consistency; the winner's loss is its supervised loss.
  for out in (first, second):
    vnet_won = int(out["good_student"]) == mcf.VNET
    extra = 0.1 * float(out["consistency"])
    np.testing.assert_allclose(
      out["loss_v"], out["supervised_v"] + (0 if vnet_won else extra), rtol=1e-6
    )
    np.testing.assert_allclose(
      out["loss_r"], out["supervised_r"] + (extra if vnet_won else 0), rtol=1e-6
    )
  # Ties go to the ResVNet (strict <).
  assert int(fn(a, a, w)["good_student"]) == mcf.RESVNET


def test_pseudo_label_carries_no_gradient():
  rng = np.random.default_rng(1)
  v = jnp.asarray(rng.normal(size=(4, 4, 4, 4, 2)), jnp.float32)
  r = 0.1 * v  # less confident, so the VNet wins on Dice (checked below)
  labels = (v[..., 1] > v[..., 0]).astype(jnp.int32)
  out = jax.jit(mcf.mcf_losses, static_argnums=3)(v, r, labels, 2, 1.0)
  assert int(out["good_student"]) == mcf.VNET
  # d loss_r / d v = 0: the winner's prediction enters the loser's loss only as a constant target.
  grad = jax.jit(jax.grad(lambda v: mcf.mcf_losses(v, r, labels, 2, 1.0)["loss_r"]))(v)
  np.testing.assert_array_equal(grad, 0)


@pytest.fixture(scope="module")
def tiny():
  """(config, method, initial state, batch) at test size, built once for this module (compiling
  the two networks' init costs seconds on a CPU; the short run's init then hits the cache)."""
  config = tiny_config("mcf", 2)
  method = methods.build(config)
  batch = random_batch(config, seed=1)
  return config, method, method.init(jax.random.PRNGKey(3), batch), batch


def test_state_layout_and_init(tiny):
  _, _, state, _ = tiny
  assert set(state.params) == set(state.batch_stats) == set(state.opt_state) == {"vnet", "resvnet"}
  assert "resnet_encoder" in state.params["resvnet"] and "block_one" in state.params["vnet"]
  # kaiming-normal kernels (std sqrt(2 / fan_in)), torch-default biases.
  kernel = state.params["resvnet"]["resnet_encoder"]["layer3_0"]["conv2"]["kernel"]
  np.testing.assert_allclose(float(jnp.std(kernel)), np.sqrt(2 / kernel[..., 0].size), rtol=0.1)
  bias = state.params["vnet"]["block_five"]["conv0"]["bias"]
  assert float(jnp.abs(bias).max()) <= 1 / np.sqrt(64 * 27)
  # The two networks are initialised independently.
  assert not np.allclose(
    state.params["vnet"]["out_conv"]["kernel"], state.params["resvnet"]["out_conv"]["kernel"]
  )


def test_step_compiles_once_and_matches_hand_computation(tiny):
  _, method, state, batch = tiny
  chex.clear_trace_counter()
  step = jax.jit(chex.assert_max_traces(method.train_step, n=1))
  new_state, metrics = step(state, batch)

  @jax.jit
  def hand(state):
    """The step's forward and losses recomputed outside it, from the same keys."""
    rng = jax.random.fold_in(state.rng, state.step)
    keys = dict(zip(mcf.NETWORKS, jax.random.split(rng, 2)))
    logits = {
      n: common.train_forward(net, state.params[n], state.batch_stats[n], batch["image"], keys[n])[
        0
      ]
      for n, net in method.networks.items()
    }
    return mcf.mcf_losses(logits["vnet"], logits["resvnet"], batch["label"], 2, 0.1 * np.exp(-5.0))

  out = hand(state)
  np.testing.assert_allclose(float(metrics["consistency_weight"]), 0.1 * np.exp(-5.0), rtol=1e-6)
  for ours, theirs in (
    ("loss_vnet", "loss_v"),
    ("loss_resvnet", "loss_r"),
    ("loss_dice_vnet", "dice_v"),
    ("loss_cdr_resvnet", "cdr_r"),
    ("consistency", "consistency"),
  ):
    np.testing.assert_allclose(float(metrics[ours]), float(out[theirs]), rtol=1e-5, err_msg=ours)
  assert int(metrics["good_student"]) == int(out["good_student"])
  # Both networks and both optimizer states moved; BN statistics are per network.
  for name in mcf.NETWORKS:
    assert not np.allclose(
      new_state.params[name]["out_conv"]["kernel"], state.params[name]["out_conv"]["kernel"]
    )
    assert jax.tree.structure(new_state.opt_state[name]) == jax.tree.structure(
      state.opt_state[name]
    )
  assert not np.allclose(
    new_state.batch_stats["vnet"]["block_one"]["bn0"]["mean"],
    state.batch_stats["vnet"]["block_one"]["bn0"]["mean"],
  )

  for _ in range(2):
    new_state, metrics = step(new_state, batch)
  assert int(new_state.step) == 3 and np.isfinite(float(metrics["loss"]))


def test_predict_is_the_two_network_average(tiny):
  _, method, state, batch = tiny
  got = jax.jit(method.predict)(state, batch["image"])
  both = jax.jit(
    lambda state, x: [
      net.apply({"params": state.params[n], "batch_stats": state.batch_stats[n]}, x, train=False)
      for n, net in method.networks.items()
    ]
  )(state, batch["image"])
  want = 0.5 * sum(jax.nn.softmax(logits, axis=-1) for logits in both)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-5)


def test_la_config_recipe():
  from jaxseg import config_check
  from jaxseg import config_lib

  c = config_lib.load_config_module(REPO / "configs" / "la_mcf.py").get_config("labeled=8,seed=3")
  config_check.validate(c)
  assert (c.method, c.data.labeled, c.seed, c.total_steps) == ("mcf", 8, 3, 6000)
  assert (c.batch_size, c.labeled_batch_size, tuple(c.data.patch_size)) == (4, 2, (112, 112, 80))
  assert c.data.augment == "crop" and "mt" not in c
  assert (c.mcf.consistency, c.mcf.consistency_rampup, c.mcf.temperature, c.mcf.cdr_weight) == (
    0.1,
    40.0,
    0.1,
    0.5,
  )
  assert (c.mcf.second_model, c.mcf.init, c.model.name) == ("resvnet", "kaiming_normal", "vnet")
  assert c.model.kwargs.has_dropout and c.model.kwargs.n_filters == 16
  assert not c.eval.largest_cc
  # lr: 0.01 for the updates of iterations 0..2500, 1e-3 for 2501..5000, 1e-4 after.
  counts = (0, 2500, 2501, 5000, 5001, 5999)
  np.testing.assert_allclose(
    [_lr_at(c, k) for k in counts], [1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-4], rtol=1e-6
  )


def _lr_at(config, count):
  """The lr of update number `count` (0-based): one SGD update from zero momentum, no decay."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.optimizer.weight_decay = 0.0
  c.optimizer.momentum = 0.0
  tx = common.make_optimizer(c)
  p = {"w": jnp.zeros(())}
  state = tx.init(p)
  # Advance the schedule's step counter without changing anything else.
  state = jax.tree.map(lambda x: jnp.full_like(x, count) if x.dtype == jnp.int32 else x, state)
  updates, _ = tx.update({"w": jnp.ones(())}, state, p)
  return -float(updates["w"])


def test_config_switches_are_checked():
  config = tiny_config("mcf")
  config.mcf.init = "xavier"
  with pytest.raises(ValueError, match="config.mcf.init"):
    methods.build(config)
  config = tiny_config("mcf")
  config.optimizer.lr_schedule = "poly"
  with pytest.raises(ValueError, match="lr_step_begin"):
    methods.build(config)
