"""AC-MT: every acmt.npz case (all four strategies), hand checks, one trace per step, tiny runs."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import methods
from jaxseg import schedules
from jaxseg import train
from jaxseg.methods import acmt
from jaxseg.methods.acmt import strategies
from tests.conftest import tiny_config

RTOL, ATOL = 1e-4, 1e-5


def _last(x):
  """Torch [B, C, ...] -> channels-last [B, ..., C]."""
  return jnp.moveaxis(jnp.asarray(x), 1, -1)


def _kind(args: dict) -> str:
  """Which upstream computation a case transcribes, from its arguments (not its name)."""
  if "filter_by" in args:
    return "serr"
  if "n_samples" in args:
    return "perr"
  if "T" in args:
    return "mu"
  if "Ent_th" in args:
    return "ent"
  return "supervised"


def _cases(parity, kind):
  pf = parity("acmt.npz")
  found = [(pf.case(n), pf.case_args(n)) for n in pf.cases if _kind(pf.case_args(n)) == kind]
  assert found, f"acmt.npz holds no {kind} case"
  return found


def _close(actual, expected, rtol=RTOL, atol=ATOL):
  np.testing.assert_allclose(
    np.asarray(actual, np.float64), np.asarray(expected, np.float64), rtol=rtol, atol=atol
  )


def _labeled(case, args):
  n_unlabeled = next(
    v.shape[0] for k, v in case.items() if k in ("input/noisy_ema_output", "input/ema_output")
  )
  return args.get("labeled_bs", case["input/outputs"].shape[0] - n_unlabeled)


def _iters(case, args):
  iters = args.get("iters")
  if iters is None:
    iters = sorted({int(k.split("/")[1][4:]) for k in case if k.startswith("output/iter")})
  return iters


def test_supervised_matches_fixture(parity):
  for case, args in _cases(parity, "supervised"):
    lb = args["labeled_bs"]
    logits = _last(case["input/outputs"])[:lb]
    total, ce, dice = jax.jit(acmt.supervised_loss)(logits, jnp.asarray(case["input/label"][:lb]))
    _close(ce, case["output/loss_ce"])
    _close(dice, case["output/loss_dice"])
    _close(total, case["output/supervised_loss"])


def test_ent_selection_matches_fixture(parity):
  for case, args in _cases(parity, "ent"):
    lb = _labeled(case, args)
    student = _last(case["input/outputs"])[lb:]
    teacher = _last(case["input/noisy_ema_output"])
    fn = jax.jit(
      lambda s, t, step: strategies.ent_selection(
        s, t, step, low=args["Ent_th"], rampup=float(args["max_iterations"])
      )
    )
    for it in _iters(case, args):
      loss, out = fn(student, teacher, jnp.int32(it))
      _close(out["entropy"], case["output/EMap"])
      _close(out["dist"], _last(case["output/consistency_dist_map"]))
      _close(out["threshold"], case[f"output/iter{it}/threshold"], rtol=1e-6)
      np.testing.assert_array_equal(np.asarray(out["mask"]), _last(case[f"output/iter{it}/mask"]))
      _close(loss, case[f"output/iter{it}/consistency_loss"])
      _close(
        schedules.consistency_weight(jnp.int32(it), 0.1, 40.0, 150),
        case[f"output/iter{it}/consistency_weight"],
        rtol=1e-6,
      )


def test_mu_selection_matches_fixture(parity):
  for case, args in _cases(parity, "mu"):
    t, stride = args["T"], args["stride"]
    mc = case["input/mc_preds_logits"]
    # Upstream row i * stride + b is pass i of sample b.
    mc = jnp.moveaxis(jnp.asarray(mc).reshape((t, stride) + mc.shape[1:]), 2, -1)
    student = _last(case["input/outputs"])[-stride:]
    teacher = _last(case["input/ema_output"])
    fn = jax.jit(
      lambda s, te, m, step: strategies.mu_selection(
        s, te, m, step, rampup=float(args["max_iterations"])
      )
    )
    for it in _iters(case, args):
      loss, out = fn(student, teacher, mc, jnp.int32(it))
      _close(out["uncertainty"], _last(case["output/uncertainty"]))
      _close(out["dist"], _last(case["output/consistency_dist_map"]))
      _close(out["threshold"], case[f"output/iter{it}/threshold"], rtol=1e-6)
      np.testing.assert_array_equal(np.asarray(out["mask"]), _last(case[f"output/iter{it}/mask"]))
      _close(loss, case[f"output/iter{it}/consistency_loss"])


def test_perr_selection_matches_fixture(parity):
  for case, args in _cases(parity, "perr"):
    lb = _labeled(case, args)
    pass_logits = jnp.moveaxis(jnp.asarray(case["input/ema_preds_stack"]), 2, -1)
    pass_features = jnp.moveaxis(jnp.asarray(case["input/ema_fts_stack"]), 2, -1)
    assert pass_logits.shape[0] == args["n_samples"]
    fn = jax.jit(lambda *a: strategies.perr_selection(*a, uncertainty_th=args["uncertainty_th"]))
    loss, out = fn(
      _last(case["input/outputs"])[lb:],
      _last(case["input/ema_output"]),
      _last(case["input/noisy_ema_output"]),
      pass_logits,
      pass_features,
    )
    _close(out["uncertainty"], _last(case["output/uncertainty_map"]))
    np.testing.assert_array_equal(np.asarray(out["certain"]), _last(case["output/certain_mask"]))
    np.testing.assert_array_equal(np.asarray(out["rect_label"]), case["output/rect_onehot"])
    _close(out["features_mean"], _last(case["output/ema_ft_mean"]))
    _close(out["obj_prototype"], case["output/obj_prototype"])
    _close(out["bg_prototype"], case["output/bg_prototype"])
    _close(out["dist_obj"], _last(case["output/distance_f_obj"]))
    _close(out["dist_bg"], _last(case["output/distance_f_bg"]))
    np.testing.assert_array_equal(
      np.asarray(out["selection"]), _last(case["output/selection_mask"])
    )
    np.testing.assert_array_equal(np.asarray(out["clean"]), _last(case["output/clean_mask"]))
    np.testing.assert_array_equal(np.asarray(out["noisy"]), _last(case["output/noisy_mask"]))
    _close(out["masked_entropy"], case["output/masked_entropy_loss"])
    _close(loss, case["output/consistency_loss"])


def test_serr_selection_matches_fixture(parity):
  for case, args in _cases(parity, "serr"):
    lb = _labeled(case, args)
    fn = jax.jit(lambda *a: strategies.serr_selection(*a, filter_by=args["filter_by"]))
    loss, out = fn(
      _last(case["input/outputs"])[lb:],
      _last(case["input/ema_output"]),
      _last(case["input/noisy_ema_output"]),
    )
    np.testing.assert_array_equal(np.asarray(out["mask"]), _last(case["output/issue_mask"]))
    assert int(out["fallback"]) == int(case["output/fallback_used"])
    _close(loss, case["output/consistency_loss"])


def test_masked_entropy_broadcast_quirk_by_hand():
  # B_u = 2 = C: sample 0's entropy is 1 (p = 0.5), sample 1's is ~0 (p = 1).
  probs = jnp.stack([jnp.full((3, 2), 0.5), jnp.tile(jnp.array([1.0, 0.0]), (3, 1))])  # [2, 3, 2]
  mask = jnp.zeros((2, 3, 2)).at[:, :, 1].set(1.0)  # only channel 1 clean
  e1 = -(1.0 * np.log(1.0 + 1e-6)) / np.log(2.0)  # entropy of sample 1
  # Quirk: out[b, ..., c] = mask[b, ..., c] * e[c] -> channel 1 takes sample 1's entropy everywhere.
  _close(strategies.masked_entropy_loss(probs, mask, True), 6 * e1 / 12)
  # Intended: out[b, ..., c] = mask[b, ..., c] * e[b] -> sample 0 contributes its entropy ~1.
  e0 = -np.log(0.5 + 1e-6) / np.log(2.0)
  _close(strategies.masked_entropy_loss(probs, mask, False), (3 * e0 + 3 * e1) / 12)
  with pytest.raises(ValueError, match="perr_entropy_broadcast_quirk"):
    strategies.masked_entropy_loss(jnp.full((3, 4, 2), 0.5), jnp.ones((3, 4, 2)), True)


def test_dice_loss_per_class_by_hand():
  probs = jnp.array([[[0.75, 0.25], [0.5, 0.5]]])  # [1, 2 voxels, 2 classes]
  labels = jnp.array([[0, 1]])
  bg = 1 - (2 * 0.75 + 1e-5) / (0.75**2 + 0.5**2 + 1 + 1e-5)
  fg = 1 - (2 * 0.5 + 1e-5) / (0.25**2 + 0.5**2 + 1 + 1e-5)
  _close(acmt.dice_loss_per_class(probs, labels), (bg + fg) / 2)


def test_serr_falls_back_when_cleanlab_would_raise():
  # Every student label is 1 (one non-zero class): cleanlab raises, upstream uses mean(dist).
  student = jnp.tile(jnp.array([-1.0, 2.0]), (2, 4, 4, 4, 1))
  teacher = jnp.tile(jnp.array([0.5, 0.0]), (2, 4, 4, 4, 1))
  loss, out = jax.jit(strategies.serr_selection)(student, teacher, teacher * 2.0)
  assert bool(out["fallback"])
  _close(loss, jnp.mean(out["dist"]))


def test_config_rejects_bad_strategy():
  config = tiny_config("acmt")
  config.acmt.strategy = "nope"
  with pytest.raises(ValueError, match="config.acmt.strategy"):
    methods.build(config)


@pytest.mark.parametrize("strategy", strategies.STRATEGIES)
def test_two_step_run_is_finite_and_traces_once(strategy, tmp_path, monkeypatch):
  chex.clear_trace_counter()  # the counter is global and keyed by source, shared by the params
  config = tiny_config("acmt", steps=2)
  config.acmt.strategy = strategy
  traced = []

  class Counted(acmt.ACMT):
    def __init__(self, cfg):
      super().__init__(cfg)
      self.train_step = chex.assert_max_traces(self.train_step, n=1)
      traced.append(self)

  monkeypatch.setitem(methods.METHODS, "acmt", Counted)
  summary = train.train_and_evaluate(config, tmp_path)
  assert traced, "the training loop did not build the method"
  assert np.isfinite(summary["dice"])
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [1, 2]
  for r in records:
    assert all(np.isfinite(r[k]) for k in ("loss", "loss_ce", "loss_dice", "loss_consistency")), r
    assert 0.0 <= r["selected_fraction"] <= 1.0
