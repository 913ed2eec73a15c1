"""Tests for jaxseg/methods/bcp.py (and configs/la_bcp.py, configs/acdc_bcp.py): BCP's losses, EMA and
pseudo-labels against bcp.npz (every case of each upstream function), the phase mechanics (teacher
and optimizer at the self-train entry, learning rates, running statistics of paired forwards), and
short runs: LA shrunk, killed in self-training and resumed there, each phase traced once; ACDC on
the synthetic ACDC layout."""

import json
import os
import pathlib
import subprocess
import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxseg import config_check
from jaxseg import config_lib
from jaxseg import losses
from jaxseg import methods
from jaxseg import postprocess
from jaxseg import train
from jaxseg.methods import bcp
from jaxseg.models import layers
from jaxseg.state import TrainState
from tests.conftest import MAP_TOL
from tests.conftest import SCALAR_TOL
from tests.conftest import channels_last
from tests.conftest import check_short_run
from tests.conftest import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = "bcp.npz"


def _inputs(case, *names, last=()):
  """Fixture inputs as jnp arrays (channels-last for the names in `last`); float pseudo-labels as
  the int64 upstream casts them to inside mix_loss."""
  out = []
  for n in names:
    a = case["input/" + n]
    a = channels_last(a) if n in last else jnp.asarray(a)
    out.append(a.astype(jnp.int32) if n.startswith("plab") else a)
  return out


# ------------------------------------------------------------------------------------- parity --


def test_la_mix_loss_and_mask_dice(parity):
  pf = parity(FIXTURE)
  for name in pf.cases_of("mix_loss"):
    if pf.meta["cases"][name]["file"] != "code/utils/BCP_utils.py":
      continue  # the ACDC script's mix_loss is tested below
    case = pf.case(name)
    args = pf.case_args(name)
    ol, ou, lab_a, plab_a, plab_b, lab_b, m = _inputs(
      case,
      "outputs_l",
      "outputs_u",
      "lab_a",
      "plab_a",
      "plab_b",
      "lab_b",
      "loss_mask",
      last=("outputs_l", "outputs_u"),
    )
    w = dict(l_weight=args.get("l_weight", 1.0), u_weight=args.get("u_weight", 0.5))
    loss_l = 0.5 * sum(bcp.mix_loss(ol, lab_a, plab_a, m, **w))
    loss_u = 0.5 * sum(bcp.mix_loss(ou, plab_b, lab_b, m, unlab=True, **w))
    np.testing.assert_allclose(loss_l, case["output/loss_l"], **SCALAR_TOL, err_msg=name)
    np.testing.assert_allclose(loss_u, case["output/loss_u"], **SCALAR_TOL, err_msg=name)
    np.testing.assert_allclose(
      losses.mask_dice_loss(ol, lab_a, m),
      case["output/mask_dice_with_mask"],
      **SCALAR_TOL,
      err_msg=name,
    )
    np.testing.assert_allclose(
      losses.mask_dice_loss(ol, lab_a), case["output/mask_dice_no_mask"], **SCALAR_TOL, err_msg=name
    )


def test_la_sup_loss(parity):
  pf = parity(FIXTURE)
  for name in pf.cases_of("sup_loss"):
    case = pf.case(name)
    out, label = _inputs(case, "output", "label", last=("output",))
    np.testing.assert_allclose(
      bcp.sup_loss(out, label), case["output/loss"], **SCALAR_TOL, err_msg=name
    )


def test_acdc_mix_loss(parity):
  pf = parity(FIXTURE)
  for name in pf.cases_of("mix_loss"):
    if pf.meta["cases"][name]["file"] != "code/ACDC_BCP_train.py":
      continue
    case, args = pf.case(name), pf.case_args(name)
    out_unl, out_l, plab_a, lab_a, lab_b, plab_b, m = _inputs(
      case,
      "out_unl",
      "out_l",
      "plab_a",
      "lab_a",
      "lab_b",
      "plab_b",
      "loss_mask",
      last=("out_unl", "out_l"),
    )
    w = dict(l_weight=args.get("l_weight", 1.0), u_weight=args.get("u_weight", 0.5), dice="acdc")
    unl = bcp.mix_loss(out_unl, plab_a, lab_a, m, unlab=True, **w)
    l = bcp.mix_loss(out_l, lab_b, plab_b, m, **w)
    for got, key in zip((*unl, *l), ("unl_dice", "unl_ce", "l_dice", "l_ce")):
      np.testing.assert_allclose(got, case["output/" + key], **SCALAR_TOL, err_msg=f"{name}/{key}")


def test_acdc_dice_loss(parity):
  pf = parity(FIXTURE)
  for name in pf.cases_of("DiceLoss(n_classes=4).forward"):
    case = pf.case(name)
    logits = channels_last(case["input/logits"])
    target, mask = (jnp.asarray(case["input/" + k])[:, 0] for k in ("target", "mask"))
    probs = jax.nn.softmax(logits, axis=-1)
    np.testing.assert_allclose(
      bcp.acdc_dice_loss(probs, target), case["output/probs_no_mask"], **SCALAR_TOL, err_msg=name
    )
    np.testing.assert_allclose(
      bcp.acdc_dice_loss(probs, target), case["output/softmax_true"], **SCALAR_TOL, err_msg=name
    )
    np.testing.assert_allclose(
      bcp.acdc_dice_loss(probs, target, mask),
      case["output/probs_with_mask"],
      **SCALAR_TOL,
      err_msg=name,
    )
    # Legacy (pre-a925e30) mask: the background term ignores the mask.
    legacy = bcp.acdc_dice_loss(probs, target, mask, legacy_mask=True)
    c = probs.shape[-1]
    t = jax.nn.one_hot(target, c)
    m = jnp.broadcast_to(mask[..., None], probs.shape).astype(jnp.float32).at[..., 0].set(1.0)
    d = 1 - (2 * jnp.sum(probs * t * m, (0, 1, 2)) + 1e-10) / (
      jnp.sum(probs**2 * m, (0, 1, 2)) + jnp.sum(t * m, (0, 1, 2)) + 1e-10
    )
    np.testing.assert_allclose(legacy, jnp.mean(d), rtol=1e-6)


def _tree(case, prefix):
  return {
    k[len(prefix) :]: jnp.asarray(v, jnp.float32)
    for k, v in case.items()
    if k.startswith(prefix) and not k.endswith("num_batches_tracked")
  }


@pytest.mark.parametrize("function", ["update_ema_variables", "update_model_ema"])
def test_constant_ema(parity, function):
  """LA: parameters only; ACDC: the whole state_dict (BN running stats too), alpha constant."""
  pf = parity(FIXTURE)
  aliased = []
  for name in pf.cases_of(function):
    case = pf.case(name)
    alpha = pf.case_args(name)["alpha"]
    before, model = _tree(case, "input/ema_before/"), _tree(case, "input/model/")
    want = _tree(case, "output/ema_after/")
    if all(np.array_equal(before[k], want[k]) for k in want) and any(
      not np.array_equal(before[k], model[k]) for k in want
    ):
      # A fixture set whose generator kept references to the teacher's tensors stores
      # ema_before == ema_after bitwise although the model differs (the in-place update overwrote
      # them): nothing to compare against in that case; the others are still checked, and the
      # formula is checked by hand below.
      aliased.append(name)
      continue
    got = bcp.constant_ema(before, model, alpha)
    assert set(got) == set(want)
    for k in want:
      np.testing.assert_allclose(got[k], want[k], **MAP_TOL, err_msg=f"{name}/{k}")
  if aliased and len(aliased) == len(pf.cases_of(function)):
    pytest.skip(f"{FIXTURE}: every {function} case has ema_before aliasing ema_after {aliased}")


def test_constant_ema_formula():
  ema, new = {"a": jnp.array([1.0, -2.0])}, {"a": jnp.array([3.0, 4.0])}
  got = bcp.constant_ema(ema, new, 0.99)
  np.testing.assert_allclose(got["a"], [0.99 * 1 + 0.01 * 3, 0.99 * -2 + 0.01 * 4], rtol=1e-6)


@pytest.mark.parametrize(
  "function", ["get_cut_mask / LargestCC_pancreas", "get_ACDC_masks / get_ACDC_2DLargestCC"]
)
def test_pseudo_labels(parity, function):
  pf = parity(FIXTURE)
  for name in pf.cases_of(function):
    case = pf.case(name)
    got = jax.jit(postprocess.cut_mask_pseudo_labels)(channels_last(case["input/logits"]))
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(got, np.float32), case["output/nms1"], err_msg=name)


# ------------------------------------------------------------------------------ mechanics --


class _ConvBN(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = layers.Conv(3, (3, 3), padding=1, name="conv")(x)
    x = layers.BatchNorm(name="bn")(x, train)
    return nn.Dropout(0.5, deterministic=not train)(x)


def test_paired_forward_equals_two_sequential_forwards():
  model = _ConvBN()
  xs = jax.random.normal(jax.random.key(0), (2, 3, 8, 8, 1))
  variables = model.init(jax.random.key(1), xs[0])
  stats = jax.tree.map(lambda a: a + 0.3, variables["batch_stats"])
  keys = jax.random.split(jax.random.key(2), 2)
  logits, got = bcp.paired_train_forward(model, variables["params"], stats, xs, keys)
  from jaxseg.methods import common

  want_stats = stats
  for k in range(2):
    out, want_stats = common.train_forward(model, variables["params"], want_stats, xs[k], keys[k])
    np.testing.assert_allclose(logits[k], out, rtol=1e-6, atol=1e-6)
  chex.assert_trees_all_close(got, want_stats, rtol=1e-6, atol=1e-7)


def _fake_state(method, momentum_count: int = 7) -> TrainState:
  """A small state in BCP's layout (no network compile): params/batch_stats + optimizer state
  after `momentum_count` updates, and a teacher that differs from the student."""
  params = {"w": jnp.arange(4.0), "b": jnp.ones(2)}
  stats = {"mean": jnp.full(2, 0.5)}
  opt_state = method.tx.init(params)
  for _ in range(momentum_count):
    _, opt_state = method.tx.update(jax.tree.map(jnp.ones_like, params), opt_state, params)
  return TrainState(
    step=jnp.asarray(3, jnp.int32),
    params=params,
    batch_stats=stats,
    opt_state=opt_state,
    rng=jax.random.key_data(jax.random.key(0)),
    aux={
      "ema_params": jax.tree.map(jnp.zeros_like, params),
      "ema_batch_stats": jax.tree.map(jnp.zeros_like, stats),
    },
  )


def _lr(tx, params, count):
  """The learning rate `tx` applies at optimizer step `count` (one update from zero momentum)."""
  opt_state = optax.tree_utils.tree_set(tx.init(params), count=jnp.asarray(count, jnp.int32))
  g = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(g, opt_state, jax.tree.map(jnp.zeros_like, params))
  return -float(updates["w"][0])


@pytest.mark.parametrize("config_file,labeled", [("la_bcp.py", 16), ("acdc_bcp.py", 3)])
def test_configs_and_self_train_entry(config_file, labeled):
  c = config_lib.load_config_module(REPO / "configs" / config_file).get_config(
    f"labeled={labeled},seed=4"
  )
  la = config_file.startswith("la")
  if la:  # validate compares ACDC's labeled PATIENTS with the labeled SLICES per batch
    config_check.validate(c)
  assert (c.method, c.data.labeled, c.seed) == ("bcp", labeled, 4)
  assert c.model.name == ("bcp_vnet" if la else "unet2d")
  assert (c.bcp.pretrain_steps, c.total_steps) == ((2000, 17000) if la else (10000, 40000))
  assert (c.batch_size, c.labeled_batch_size) == ((8, 4) if la else (24, 12))
  assert (c.bcp.reset_optimizer, c.bcp.ema_batch_stats, c.eval.largest_cc) == (la, not la, la)
  assert c.bcp.mask_ratio == pytest.approx(2 / 3) and c.bcp.u_weight == 0.5
  assert (c.bcp.recipe, c.bcp.mask_bounds) == (("la", "upstream") if la else ("acdc", "shape"))
  method = methods.build(c)
  assert [(p.name, p.start) for p in method.phases()] == [
    ("pretrain", 0),
    ("selftrain", c.bcp.pretrain_steps),
  ]
  state = _fake_state(method)
  entered = jax.jit(method.enter_selftrain)(state)
  assert jax.tree.structure(entered) == jax.tree.structure(state)
  chex.assert_trees_all_equal(entered.aux["ema_params"], state.params)
  chex.assert_trees_all_equal(entered.aux["ema_batch_stats"], state.batch_stats)
  chex.assert_trees_all_equal(entered.params, state.params)
  count = optax.tree_utils.tree_get(entered.opt_state, "count")
  if la:  # load_net: a new SGD, momentum buffers and schedule count from zero
    assert int(count) == 0
    assert not any(
      np.any(np.asarray(t))
      for t in jax.tree.leaves(optax.tree_utils.tree_get(entered.opt_state, "trace"))
    )
  else:  # load_net_opt: the pre-train momentum kept
    chex.assert_trees_all_equal(entered.opt_state, state.opt_state)
  # Learning rates: pre-train constant; LA self-train 0.01 x 0.1^(t // 2500) from its own start.
  p = state.params
  assert _lr(method.tx, p, 4999) == pytest.approx(0.01)
  for t, want in (
    (0, 0.01),
    (2499, 0.01),
    (2500, 1e-3 if la else 0.01),
    (14999, 1e-7 if la else 0.01),
  ):
    assert _lr(method.self_tx, p, t) == pytest.approx(want, rel=1e-5), t


def test_mask_bounds_come_from_the_config_not_the_eval_mode():
  """'upstream' on the LA recipe draws the corner within context_mask's hard-coded 112/112/80: on a
  16^3 patch the box mostly lands outside (all-ones mask); 'shape' always places a 10^3 box. The
  evaluation mode changes neither."""
  c = tiny_config("bcp", 2)
  keys = jax.random.split(jax.random.key(0), 64)
  boxed = {}
  for mode, bounds in (("parity", "upstream"), ("clean", "upstream"), ("parity", "shape")):
    c.eval.mode, c.bcp.mask_bounds = mode, bounds
    method = methods.build(c)
    masks = jax.jit(jax.vmap(lambda k: method._mask(k, (16, 16, 16))))(keys)
    boxed[mode, bounds] = np.asarray((masks == 0).sum(axis=(1, 2, 3)))
  assert np.mean(boxed["parity", "upstream"] == 0) > 0.5
  np.testing.assert_array_equal(boxed["clean", "upstream"], boxed["parity", "upstream"])
  assert np.all(boxed["parity", "shape"] == 10**3)


def test_rejects_unbalanced_batches():
  c = tiny_config("bcp", 2)
  c.batch_size, c.labeled_batch_size = 6, 2
  with pytest.raises(ValueError, match="twice"):
    methods.build(c)
  c = tiny_config("bcp", 2)
  c.bcp.mask_bounds = "box"
  with pytest.raises(ValueError, match="mask_bounds"):
    methods.build(c)
  c = tiny_config("bcp", 2)
  c.bcp.recipe = "acdc"  # a 2D recipe on the 3D smoke patch
  with pytest.raises(ValueError, match="recipe='acdc' is a 2D recipe"):
    methods.build(c)
  c.bcp.recipe = "brats"
  with pytest.raises(ValueError, match="config.bcp.recipe='brats'"):
    methods.build(c)


# ---------------------------------------------------------------------------------- runs --


class _TracedBCP(bcp.BCP):
  """BCP whose phase steps fail on a second trace (the loop jits each phase once)."""

  def __init__(self, config):
    super().__init__(config)
    self._traced = tuple(
      type(p)(p.name, p.start, chex.assert_max_traces(p.train_step, n=1), p.enter)
      for p in super().phases()
    )

  def phases(self):
    return self._traced


def test_la_run_killed_in_selftrain_resumes_there(tmp_path, monkeypatch, capsys):
  """la_bcp shrunk (16^3, n_filters 4): pretrain 1 step, then self-training; SIGKILL right after
  step 2 (checkpointed, inside self-training); the rerun resumes at step 2 in 'selftrain' without
  re-entering it, each phase compiled once, every loss and the final Dice finite."""
  steps, overrides = 4, ["--config.bcp.pretrain_steps=1", "--config.bcp.mask_bounds=shape"]
  env = dict(os.environ, **{train._FAULT_ENV: "2"})
  cmd = [
    sys.executable,
    "-m",
    "jaxseg.main",
    "--config",
    "configs/la_bcp.py:smoke=1,labeled=4,seed=0",
    f"--config.total_steps={steps}",
    "--workdir",
    str(tmp_path),
    *overrides,
  ]
  killed = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert killed.returncode == -9, killed.stderr[-3000:]
  assert "phase 'selftrain' from step 1" in killed.stdout

  config = tiny_config("bcp", steps)
  config.bcp.pretrain_steps, config.bcp.mask_bounds = 1, "shape"
  entered = []

  class Traced(_TracedBCP):
    def enter_selftrain(self, state):
      entered.append(True)
      return super().enter_selftrain(state)

  monkeypatch.setitem(methods.METHODS, "bcp", Traced)
  chex.clear_trace_counter()
  summary = check_short_run(config, tmp_path)
  out = capsys.readouterr().out
  assert "resumed from" in out and "phase 'selftrain' from step 2" in out
  assert not entered  # resumed inside the phase: teacher and optimizer come from the checkpoint
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert "pseudo_fg_fraction" not in records[0]
  assert all("pseudo_fg_fraction" in r for r in records[1:])
  assert all(0.0 < r["mask_box_fraction"] < 1.0 for r in records)
  assert summary["n_cases"] == config.data.n_val


def test_acdc_short_run(tmp_path, monkeypatch):
  from jaxseg.data import DATASETS

  c = config_lib.load_config_module(REPO / "configs" / "acdc_bcp.py").get_config("labeled=2,seed=0")
  c.total_steps, c.bcp.pretrain_steps = 2, 1
  c.batch_size, c.labeled_batch_size = 4, 2
  c.data.patch_size = (32, 32)
  c.model.kwargs.feature_chns = (4, 8, 16, 32, 64)
  c.data.root = str(DATASETS["acdc"].synthesize(tmp_path / "acdc", c.data.get("synthetic")))
  c.eval.every_steps = 0
  c.eval.max_cases = 1
  c.log_every_steps = 1
  monkeypatch.setitem(methods.METHODS, "bcp", _TracedBCP)
  chex.clear_trace_counter()
  check_short_run(c, tmp_path / "run")
  records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert "pseudo_fg_fraction" not in records[0] and "pseudo_fg_fraction" in records[1]
