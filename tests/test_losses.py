"""Tests of jaxseg.losses against losses_uamt.npz (UA-MT code/utils/losses.py and the inline training losses).

Fixture arrays are torch layout (class axis 1); `_cl` moves it last.
"""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import losses
from jaxseg import schedules
from jaxseg.methods.uamt import uamt_threshold
from tests.conftest import MAP_TOL
from tests.conftest import SCALAR_TOL
from tests.conftest import channels_last


def test_dice_losses_parity(parity):
  pf = parity("losses_uamt.npz")
  checked = 0
  for name in pf.cases_of("dice_loss"):
    case = pf.case(name)
    if "output/loss" in case:
      got = jax.jit(losses.dice_loss)(case["input/score"], case["input/target"])
      np.testing.assert_allclose(got, case["output/loss"], **SCALAR_TOL, err_msg=name)
      # The inputs are softmax(logits)[:, 1] and label == 1 of the stored sources.
      probs = jax.nn.softmax(channels_last(case["input/logits"]), axis=-1)
      got = losses.dice_loss(probs[..., 1], case["input/label"] == 1)
      np.testing.assert_allclose(got, case["output/loss"], **SCALAR_TOL, err_msg=name)
      checked += 1
    if "output/per_class" in case:
      probs = jax.nn.softmax(channels_last(case["input/logits"]), axis=-1)
      label = case["input/label"]
      per_class = [losses.dice_loss(probs[..., c], label == c) for c in range(probs.shape[-1])]
      np.testing.assert_allclose(per_class, case["output/per_class"], **SCALAR_TOL, err_msg=name)
      np.testing.assert_allclose(np.mean(per_class), case["output/mean_over_classes"], **SCALAR_TOL)
      checked += 1
  assert checked


@pytest.mark.parametrize("function", ["softmax_mse_loss", "softmax_kl_loss"])
def test_elementwise_maps_parity(parity, function):
  pf = parity("losses_uamt.npz")
  fn = jax.jit(getattr(losses, function))
  for name in pf.cases_of(function):
    case = pf.case(name)
    got = fn(channels_last(case["input/input_logits"]), channels_last(case["input/target_logits"]))
    np.testing.assert_allclose(got, channels_last(case["output/loss_map"]), **MAP_TOL, err_msg=name)


def test_entropy_parity(parity):
  """UA-MT's entropy_loss (the mean) and entropy_loss_map are the normalised entropy."""
  pf = parity("losses_uamt.npz")
  for name in pf.cases_of("entropy_loss"):
    case = pf.case(name)
    got = jnp.mean(jax.jit(losses.normalized_entropy)(channels_last(case["input/p"])))
    np.testing.assert_allclose(got, case["output/loss"], **SCALAR_TOL, err_msg=name)
  for name in pf.cases_of("entropy_loss_map"):
    case, c = pf.case(name), pf.case_args(name)["C"]
    want = channels_last(case["output/ent_map"])
    got = losses.normalized_entropy(channels_last(case["input/p"]))
    np.testing.assert_allclose(got, want[..., 0], **MAP_TOL, err_msg=name)
    # entropy_map is the same quantity in nats (unnormalised).
    np.testing.assert_allclose(
      losses.entropy_map(channels_last(case["input/p"])) / math.log(c), want, **MAP_TOL
    )


def test_supervised_loss_parity(parity):
  pf = parity("losses_uamt.npz")
  names = [n for n in pf.cases if "output/supervised_loss" in pf.case(n)]
  assert names
  for name in names:
    case, lb = pf.case(name), pf.case_args(name)["labeled_bs"]
    logits, label = channels_last(case["input/outputs"])[:lb], jnp.asarray(case["input/label"])[:lb]
    total, ce, dice = jax.jit(losses.supervised_ce_dice)(logits, label)
    np.testing.assert_allclose(ce, case["output/loss_seg"], **SCALAR_TOL, err_msg=name)
    np.testing.assert_allclose(dice, case["output/loss_seg_dice"], **SCALAR_TOL, err_msg=name)
    np.testing.assert_allclose(total, case["output/supervised_loss"], **SCALAR_TOL, err_msg=name)
    np.testing.assert_allclose(
      losses.cross_entropy(logits, label), case["output/loss_seg"], **SCALAR_TOL
    )


def test_uamt_uncertainty_parity(parity):
  """MC mean / entropy / threshold mask / masked consistency / weight per stored iteration.

  The threshold uses `max_iterations` and the weight `consistency`/`consistency_rampup` from the case args
  (UA-MT train_LA_meanteacher_certainty_unlabel.py defaults 6000, 0.1, 40 when absent).
  """
  pf = parity("losses_uamt.npz")
  names = [n for n in pf.cases if "input/mc_preds_logits" in pf.case(n)]
  assert names
  dist_fns = {"mse": losses.softmax_mse_loss, "kl": losses.softmax_kl_loss}
  for name in names:
    case, args = pf.case(name), pf.case_args(name)
    mc = channels_last(case["input/mc_preds_logits"])
    student = channels_last(case["input/student_logits_unlabeled"])
    stride = int(args.get("stride", student.shape[0]))
    passes = mc.shape[0] // stride
    assert passes * stride == mc.shape[0] and passes == args.get("T", passes)
    num_classes = mc.shape[-1]
    # Rows are i * stride + b (MC pass i, sample b): a row-major reshape puts the pass on axis 0.
    probs = jax.nn.softmax(mc, axis=-1).reshape((passes, stride) + mc.shape[1:])
    mean_probs = probs.mean(axis=0)
    np.testing.assert_allclose(
      mean_probs, channels_last(case["output/mean_probs"]), **MAP_TOL, err_msg=name
    )
    uncertainty = losses.entropy_map(mean_probs)
    np.testing.assert_allclose(
      uncertainty, channels_last(case["output/uncertainty"]), **MAP_TOL, err_msg=name
    )

    max_iters = args.get("max_iterations", 6000)
    consistency, rampup = args.get("consistency", 0.1), args.get("consistency_rampup", 40.0)
    # The whole chain under jit with a traced step (compiled once per case).
    chain = jax.jit(
      lambda s, u, d: (
        schedules.consistency_weight(s, consistency, rampup)
        * losses.masked_consistency(
          d, (u < uamt_threshold(s, max_iters)).astype(d.dtype), num_classes
        )
      )
    )
    modes = sorted({k.split("/")[1] for k in case if re.match(r"output/[^/]+/iter\d+/", k)})
    assert modes
    for mode in modes:
      dist = dist_fns[mode](student, channels_last(case["input/ema_output_logits"]))
      np.testing.assert_allclose(
        dist, channels_last(case[f"output/{mode}/consistency_dist_map"]), **MAP_TOL
      )
      iters = sorted(
        {int(m.group(1)) for k in case for m in [re.match(rf"output/{mode}/iter(\d+)/", k)] if m}
      )
      assert iters
      for it in iters:
        pre, msg = f"output/{mode}/iter{it}/", f"{name}/{mode}/iter{it}"
        threshold = uamt_threshold(it, max_iters)
        np.testing.assert_allclose(threshold, case[pre + "threshold"], rtol=1e-12, err_msg=msg)
        mask = (uncertainty < threshold).astype(jnp.float32)
        want_mask = channels_last(case[pre + "mask"])
        # Masks must match exactly unless a voxel sits within float32 rounding of the threshold.
        near = np.abs(np.asarray(uncertainty) - threshold) < 1e-6
        np.testing.assert_array_equal(
          np.asarray(mask)[~near], np.asarray(want_mask)[~near], err_msg=msg
        )
        value = losses.masked_consistency(dist, mask, num_classes)
        np.testing.assert_allclose(value, case[pre + "consistency_dist"], **SCALAR_TOL, err_msg=msg)
        weight = schedules.consistency_weight(it, consistency, rampup)
        np.testing.assert_allclose(
          weight, case[pre + "consistency_weight"], rtol=1e-12, err_msg=msg
        )
        np.testing.assert_allclose(
          weight * value, case[pre + "consistency_loss"], **SCALAR_TOL, err_msg=msg
        )
        np.testing.assert_allclose(
          chain(jnp.int32(it), uncertainty, dist),
          case[pre + "consistency_loss"],
          **SCALAR_TOL,
          err_msg=msg,
        )


def test_masked_consistency_all_ones_is_mean():
  dist = jax.random.uniform(jax.random.key(0), (2, 4, 4, 3, 2))
  ones = jnp.ones(dist.shape[:-1] + (1,))
  np.testing.assert_allclose(losses.masked_consistency(dist, ones, 2), dist.mean(), rtol=1e-6)
  zeros = jnp.zeros_like(ones)
  assert float(losses.masked_consistency(dist, zeros, 2)) == 0.0
  with pytest.raises(ValueError, match="masked_consistency"):
    losses.masked_consistency(dist, jnp.ones(dist.shape[:-1]), 2)


def test_dice_loss_hand_values():
  score = jnp.array([1.0, 0.5, 0.0])
  target = jnp.array([1, 1, 0])
  # 1 - (2 * 1.5 + s) / (1.25 + 2 + s).
  np.testing.assert_allclose(
    losses.dice_loss(score, target), 1 - (3 + 1e-5) / (3.25 + 1e-5), rtol=1e-6
  )
  with pytest.raises(ValueError, match="softmax_mse_loss"):
    losses.softmax_mse_loss(jnp.zeros((1, 2)), jnp.zeros((1, 3)))


def test_masked_means_normalise_as_upstream():
  dist = jnp.arange(8.0).reshape(1, 4, 2)
  one_channel = jnp.array([1.0, 0.0, 1.0, 0.0]).reshape(1, 4, 1)
  # AC-MT MU: one-channel mask, denominator = 2 voxels.
  np.testing.assert_allclose(losses.masked_mean(dist, one_channel), (0 + 1 + 4 + 5) / 2, rtol=1e-6)
  # AC-MT Ent / S-Err: mask duplicated to both channels, denominator = 4.
  np.testing.assert_allclose(
    losses.masked_mean(dist, jnp.broadcast_to(one_channel, dist.shape)),
    (0 + 1 + 4 + 5) / 4,
    rtol=1e-6,
  )
  assert float(losses.masked_mean(dist, jnp.zeros_like(dist))) == 0.0


def test_voxel_cross_entropy_by_hand():
  logits = jnp.array([[[0.0, math.log(3.0)], [2.0, 2.0]]])  # [1, 2 voxels, 2 classes]
  labels = jnp.array([[1, 0]])
  want = np.array([[-math.log(0.75), math.log(2.0)]])
  np.testing.assert_allclose(losses.voxel_cross_entropy(logits, labels), want, rtol=1e-6)
  np.testing.assert_allclose(losses.cross_entropy(logits, labels), want.mean(), rtol=1e-6)
  np.testing.assert_allclose(
    losses.masked_cross_entropy(logits, labels, jnp.array([[1.0, 0.0]])), want[0, 0], rtol=1e-6
  )
  np.testing.assert_allclose(losses.normalized_entropy(jnp.array([0.5, 0.5])), 1.0, rtol=1e-5)
