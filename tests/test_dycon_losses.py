"""jaxseg/methods/dycon/losses.py against KU-CVML/DyCON code/utils/dycon_losses.py and the inline FeCL inputs
of code/train_DyCON_BraTS19.py (fixture dycon.npz, docs/parity.md), plus the pieces the
fixture does not isolate (the earlier avg-pool patch-label rule) and jit robustness."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.methods.dycon import losses as dl
from tests.conftest import MAP_TOL
from tests.conftest import SCALAR_TOL
from tests.conftest import channels_last

FIXTURE = "dycon.npz"


def test_adaptive_beta(parity):
  pf = parity(FIXTURE)
  for name in pf.cases_of("adaptive_beta"):
    case, a = pf.case(name), pf.case_args(name)
    epoch, want = case["input/epoch"], case["output/beta"]
    host = dl.adaptive_beta(epoch, a["total_epochs"], a["max_beta"], a["min_beta"])
    np.testing.assert_allclose(host, want, rtol=1e-12, err_msg=name)
    traced = jax.jit(lambda e: dl.adaptive_beta(e, a["total_epochs"], a["max_beta"], a["min_beta"]))
    np.testing.assert_allclose(traced(jnp.asarray(epoch, jnp.int32)), want, rtol=1e-6, err_msg=name)


def test_threshold_rampup(parity):
  pf = parity(FIXTURE)
  names = pf.cases_of("sigmoid_rampup")
  for name in names:
    case, a = pf.case(name), pf.case_args(name)
    args = (a["total_rampup_epochs"], a["min_threshold"], a["max_threshold"], a["steepness"])
    epoch, want = case["input/current_epoch"], case["output/value"]
    for e, w in zip(epoch, want):  # upstream takes one scalar epoch at a time
      np.testing.assert_allclose(dl.threshold_rampup(int(e), *args), w, rtol=1e-12, err_msg=name)
    traced = jax.jit(lambda e: dl.threshold_rampup(e, *args))(jnp.asarray(epoch, jnp.int32))
    np.testing.assert_allclose(traced, want, rtol=1e-6, err_msg=name)
  assert dl.threshold_rampup(5, 0, 0.3, 0.5) == 0.5  # no ramp: the max at once


def test_gambling_softmax(parity):
  pf = parity(FIXTURE)
  for name in pf.cases_of("gambling_softmax"):
    case = pf.case(name)
    got = jax.jit(dl.gambling_softmax)(channels_last(case["input/logits"]))
    np.testing.assert_allclose(got, channels_last(case["output/probs"]), **MAP_TOL, err_msg=name)


def test_uncl_loss(parity):
  pf = parity(FIXTURE)
  fn = jax.jit(dl.uncl_loss)
  for name in pf.cases_of("UnCLoss.forward"):
    case, a = pf.case(name), pf.case_args(name)
    s, t = channels_last(case["input/s_logits"]), channels_last(case["input/t_logits"])
    for beta in a["betas"]:
      np.testing.assert_allclose(
        fn(s, t, beta), case[f"output/beta{beta}/loss"], **SCALAR_TOL, err_msg=f"{name} beta={beta}"
      )


def test_uncl_gradient_matches_upstream_broadcast_form():
  """Upstream adds a [B, ...] to a [B, 1, ...] tensor, broadcasting to [B, B, ...] before the mean;
  the per-voxel form has the same value and gradient (docs/methods/dycon.md §2.3)."""
  rng = np.random.default_rng(0)
  s, t = (jnp.asarray(rng.standard_normal((3, 4, 4, 2, 2)), jnp.float32) for _ in range(2))

  def upstream(s, t, beta=2.0):
    ps, pt = jax.nn.softmax(s, -1), jax.nn.softmax(t, -1)
    hs = -jnp.sum(ps * jnp.log(ps + 1e-6), -1)[:, None]  # keepdim: [B, 1, ...]
    ht = -jnp.sum(pt * jnp.log(pt + 1e-6), -1)[:, None]
    sq = jnp.square(ps - pt) / (jnp.exp(beta * hs) + jnp.exp(beta * ht))[:, 0, ..., None]
    return jnp.mean(jnp.sum(sq, -1) + beta * (hs + ht))  # [B, ...] + [B, 1, ...] -> [B, B, ...]

  ours = lambda s, t: dl.uncl_loss(s, t, 2.0)
  both = jax.jit(lambda s, t: [(f(s, t), jax.grad(f)(s, t)) for f in (ours, upstream)])
  (v_ours, g_ours), (v_up, g_up) = both(s, t)
  np.testing.assert_allclose(v_ours, v_up, rtol=1e-6)
  np.testing.assert_allclose(g_ours, g_up, rtol=1e-5, atol=1e-8)


def test_fecl_embedding_pipeline(parity):
  pf = parity(FIXTURE)
  for name in pf.cases_of("inline embedding + mask_con construction"):
    case, a = pf.case(name), pf.case_args(name)
    for key in ("stud", "ema"):
      got = dl.embeddings(channels_last(case[f"input/{key}_features"]))
      np.testing.assert_allclose(got, case[f"output/{key}_embedding"], **MAP_TOL, err_msg=name)
    factor = int(round(1 / a["scale_factor"]))
    assert factor == 4 * a["feature_scaler"]
    mask = dl.patch_labels(jnp.asarray(case["input/label"]), factor, "trilinear")
    np.testing.assert_array_equal(mask, case["output/mask_con"][:, 0], err_msg=name)


def test_patch_labels_avgpool_rule_is_block_majority():
  """The pre-2025-11-01 rule: avg_pool3d(y, f, f) > 0.5, i.e. more than half of each f^3 block."""
  rng = np.random.default_rng(1)
  labels = (rng.random((2, 16, 8, 24)) > 0.45).astype(np.int32)
  got = dl.patch_labels(jnp.asarray(labels), 8, "avgpool")
  blocks = labels.reshape(2, 2, 8, 1, 8, 3, 8).mean(axis=(2, 4, 6))
  np.testing.assert_array_equal(got, (blocks > 0.5).reshape(2, -1).astype(np.float32))
  # The HEAD rule only looks at the 8 central voxels of each block.
  centre = labels.reshape(2, 2, 8, 1, 8, 3, 8)[:, :, 3:5, :, 3:5, :, 3:5].mean(axis=(2, 4, 6))
  np.testing.assert_array_equal(
    dl.patch_labels(jnp.asarray(labels), 8, "trilinear"),
    (centre > 0.5).reshape(2, -1).astype(np.float32),
  )
  with pytest.raises(ValueError, match="rule"):
    dl.patch_labels(jnp.asarray(labels), 8, "nearest")


def test_fecl_loss(parity):
  pf = parity(FIXTURE)
  names = pf.cases_of("FeCLoss.forward")
  for name in names:
    case, a = pf.case(name), pf.case_args(name)
    kw = dict(
      temperature=a["temperature"],
      gamma=a["gamma"],
      use_focal=a["use_focal"],
      rampup_epochs=a["rampup_epochs"],
      lambda_cross=a["lambda_cross"],
    )
    feat, mask = case["input/feat"], case["input/mask"]
    teacher, gambling = case["input/teacher_feat"], case["input/gambling_uncertainty"]
    for out, t, g in (
      ("total", teacher, None),
      ("student_only", None, None),
      ("with_gambling", teacher, gambling),
    ):
      want = case[f"output/{out}"]
      np.testing.assert_allclose(
        dl.fecl_loss(feat, mask, t, g, a["epoch"], **kw),
        want,
        **SCALAR_TOL,
        err_msg=f"{name}/{out}",
      )
    # Traced epoch, as in the jitted training step.
    jitted = jax.jit(lambda e: dl.fecl_loss(feat, mask, teacher, None, e, **kw))
    np.testing.assert_allclose(
      jitted(jnp.int32(a["epoch"])), case["output/total"], **SCALAR_TOL, err_msg=name
    )


def test_fecl_jit_degenerate_inputs_stay_finite():
  """Cases where XLA constant folding used to give 0/0 or -log(0): a patch without other positives
  (upstream divides by (sum P - 1) + 1e-18), a hard teacher negative with cosine exactly 1
  (-log(1 - C + 1e-18) = 41.45, not inf), and all-zero embeddings (normalise's gradient)."""
  mask = jnp.asarray([[0.0, 0.0, 1.0, 0.0]])  # patch 2 is the only foreground patch
  feat = jnp.zeros((1, 4, 3))
  terms = jax.jit(lambda f, t: dl.fecl_terms(f, mask, t, None, 0))
  out = terms(feat, feat)
  assert all(np.isfinite(float(v)) for v in out.values())
  same = jnp.tile(jnp.asarray([[[1.0, 0.0, 0.0]]]), (1, 4, 1))  # every embedding identical
  out = terms(same, same)
  np.testing.assert_allclose(out["cross"], -np.log(np.float32(1e-18)), rtol=1e-6)
  grad = jax.jit(jax.grad(lambda f: dl.fecl_loss(dl.embeddings(f), mask, None, None, 0)))(
    jnp.zeros((1, 2, 2, 1, 3))
  )
  assert np.all(np.isfinite(grad))


def test_double_softmax_consistency(parity):
  pf = parity(FIXTURE)
  for name in pf.cases_of("softmax_mse_loss applied to probabilities"):
    case = pf.case(name)
    got = dl.double_softmax_consistency(
      channels_last(case["input/stud_probs"]), channels_last(case["input/ema_probs"])
    )
    np.testing.assert_allclose(got, case["output/loss"], **SCALAR_TOL, err_msg=name)


def test_gambling_uncertainty_and_max_epoch():
  logits = jnp.asarray(np.random.default_rng(2).standard_normal((2, 16, 16, 8, 2)), jnp.float32)
  g = dl.gambling_uncertainty(logits, 8)
  p = np.asarray(dl.gambling_softmax(logits))
  entropy = -(p * np.log(p + 1e-6)).sum(-1)
  centre = entropy.reshape(2, 2, 8, 2, 8, 1, 8)[:, :, 3:5, :, 3:5, :, 3:5].mean(axis=(2, 4, 6))
  np.testing.assert_allclose(g, centre.reshape(2, -1), rtol=1e-5)
  assert (
    dl.max_epoch(20000, 6) == 3334
  )  # BraTS, 25 labels, labeled batch 4 (docs/methods/dycon.md §2.3)
