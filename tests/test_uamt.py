"""UA-MT (jaxseg.methods.uamt): MC parity, vmap == loop, the step's numbers, one trace, a run, the bench.

The losses_uamt.npz chain is also checked by tests/test_losses.py with inline jnp; here the same cases go
through the functions UA-MT runs (`common.mc_uncertainty`, `uamt.certainty_masked_consistency`).
"""

import math
import pathlib
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import losses
from jaxseg import methods
from jaxseg.methods import common
from jaxseg.methods import uamt
from tests.conftest import MAP_TOL
from tests.conftest import SCALAR_TOL
from tests.conftest import channels_last
from tests.conftest import random_batch
from tests.conftest import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_mc_reduction_and_masked_consistency_parity(parity):
  pf = parity("losses_uamt.npz")
  names = [n for n in pf.cases if "input/mc_preds_logits" in pf.case(n)]
  assert names
  for name in names:
    case, args = pf.case(name), pf.case_args(name)
    mc = channels_last(case["input/mc_preds_logits"])
    student = channels_last(case["input/student_logits_unlabeled"])
    teacher = channels_last(case["input/ema_output_logits"])
    stride = student.shape[0]
    passes = mc.shape[0] // stride
    assert passes * stride == mc.shape[0] and passes == args.get("T", passes)
    # Upstream rows are i * stride + b: a row-major regrouping gives [T, B, ...].
    mean_probs, uncertainty = jax.jit(common.mc_uncertainty)(
      mc.reshape((passes, stride) + mc.shape[1:])
    )
    np.testing.assert_allclose(
      mean_probs, channels_last(case["output/mean_probs"]), **MAP_TOL, err_msg=name
    )
    np.testing.assert_allclose(
      uncertainty, channels_last(case["output/uncertainty"]), **MAP_TOL, err_msg=name
    )

    max_iters = args.get("max_iterations", 6000)
    modes = sorted({k.split("/")[1] for k in case if re.match(r"output/[^/]+/iter\d+/", k)})
    assert set(modes) == {"mse", "kl"}, modes
    for mode in modes:
      fn = jax.jit(
        lambda s, u, m=mode: uamt.certainty_masked_consistency(student, teacher, u, s, max_iters, m)
      )
      iters = sorted(
        {int(m.group(1)) for k in case for m in [re.match(rf"output/{mode}/iter(\d+)/", k)] if m}
      )
      assert iters
      for it in iters:
        pre, msg = f"output/{mode}/iter{it}/", f"{name}/{mode}/iter{it}"
        value, mask, threshold = fn(jnp.int32(it), uncertainty)
        np.testing.assert_allclose(threshold, case[pre + "threshold"], rtol=1e-6, err_msg=msg)
        # Exact mask except where float32 rounding sits on the threshold.
        near = np.abs(np.asarray(uncertainty) - case[pre + "threshold"]) < 1e-6
        np.testing.assert_array_equal(
          np.asarray(mask)[~near], channels_last(case[pre + "mask"])[~near], err_msg=msg
        )
        np.testing.assert_allclose(value, case[pre + "consistency_dist"], **SCALAR_TOL, err_msg=msg)


def test_certainty_masked_consistency_rejects_unknown_type():
  x = jnp.zeros((1, 2, 2, 2, 2))
  with pytest.raises(ValueError, match="consistency_type"):
    uamt.certainty_masked_consistency(x, x, x[..., :1], 0, 10, "l1")


def _teacher(method, batch):
  state = method.init(jax.random.PRNGKey(0), batch)
  return state, state.aux["ema_params"], state.aux["ema_batch_stats"]


def test_mc_vmap_equals_loop_and_upstream_layout():
  config = tiny_config("uamt")
  method = methods.build(config)
  batch = random_batch(config)
  _, params, stats = _teacher(method, batch)
  images = batch["image"][2:]
  kw = dict(passes=8, noise_std=0.1, noise_clip=0.2)
  rng = jax.random.PRNGKey(7)
  run = jax.jit(
    lambda impl, chunk, p, s, x, k: common.mc_passes(
      method.model, p, s, x, k, impl=impl, chunk=chunk, **kw
    )[0],
    static_argnums=(0, 1),
  )
  vmapped, looped = (run(impl, 0, params, stats, images, rng) for impl in ("vmap", "loop"))
  # Chunked vmapping (lax.map over groups of forwards) draws the same keys per forward.
  chunked = run("vmap", 1, params, stats, images, rng)
  np.testing.assert_allclose(chunked, vmapped, rtol=1e-3, atol=1e-3)
  assert vmapped.shape == (8, 2, *config.data.patch_size, 2)
  # Same keys, same noise and dropout: only float32 summation order differs between a batched and an
  # unbatched conv/BN (observed ~1e-4 on logits of magnitude ~5); different draws would differ by O(1).
  np.testing.assert_allclose(vmapped, looped, rtol=1e-3, atol=1e-3)
  for got, want in zip(common.mc_uncertainty(vmapped), common.mc_uncertainty(looped)):
    np.testing.assert_allclose(got, want, atol=1e-4)
  # Forward 0 by hand: [U1, U2, U1, U2] + noise in ONE BN batch -> predictions 0 and 1 of each sample.
  noise_key, dropout_key = jax.random.split(jax.random.split(rng, 4)[0])
  tiled = jnp.concatenate([images, images])
  noisy = tiled + common.teacher_noise(noise_key, tiled.shape, 0.1, 0.2)
  ref, _ = jax.jit(common.train_forward, static_argnums=0)(
    method.model, params, stats, noisy, dropout_key
  )
  # (separate programs: again only summation order differs)
  np.testing.assert_allclose(looped[:2], ref.reshape((2, 2) + ref.shape[1:]), rtol=1e-3, atol=1e-3)
  # Passes are distinct draws (dropout and noise differ).
  assert float(jnp.abs(vmapped[0] - vmapped[2]).max()) > 1e-2


def test_step_compiles_once_and_matches_hand_computation():
  config = tiny_config("uamt")
  config.uamt.consistency_on = (
    "all"  # ..._certainty.py: noise, MC and consistency on the whole batch
  )
  config.uamt.consistency_type = "kl"
  method = methods.build(config)
  batch = random_batch(config, seed=1)
  state = method.init(jax.random.PRNGKey(3), batch)
  chex.clear_trace_counter()  # counts are per function: other tests may trace the same step
  step = jax.jit(chex.assert_max_traces(method.train_step, n=1))
  new_state, metrics = step(state, batch)

  rng = jax.random.fold_in(state.rng, state.step)
  student_rng, noise_rng, teacher_rng, mc_rng = jax.random.split(rng, 4)
  images, hp = batch["image"], config.uamt
  noisy = images + jnp.clip(0.1 * jax.random.normal(noise_rng, images.shape), -0.2, 0.2)
  ema, ema_stats = state.aux["ema_params"], state.aux["ema_batch_stats"]
  t_logits, _ = common.train_forward(method.model, ema, ema_stats, noisy, teacher_rng)
  mc, _ = common.mc_passes(
    method.model, ema, ema_stats, images, mc_rng, passes=hp.mc_passes, noise_std=0.1, noise_clip=0.2
  )
  probs = jax.nn.softmax(mc, axis=-1).mean(axis=0)
  u = -jnp.sum(probs * jnp.log(probs + 1e-6), axis=-1, keepdims=True)
  s_logits, _ = common.train_forward(
    method.model, state.params, state.batch_stats, images, student_rng
  )
  sup, _, _ = losses.supervised_ce_dice(s_logits[:2], batch["label"][:2])
  threshold = (0.75 + 0.25 * np.exp(-5.0)) * np.log(2.0)  # sigmoid_rampup(0, total_steps)
  mask = (u < threshold).astype(jnp.float32)
  q = jax.nn.softmax(t_logits, axis=-1)
  kl = jax.scipy.special.xlogy(q, q) - q * jax.nn.log_softmax(s_logits, axis=-1)
  cons = jnp.sum(mask * kl) / (2.0 * jnp.sum(mask) + 1e-16)
  weight = 0.1 * np.exp(-5.0)
  np.testing.assert_allclose(float(metrics["uncertainty_threshold"]), threshold, rtol=1e-6)
  # Jit (step) vs eager (here) may flip a voxel sitting on the threshold; none did when written.
  np.testing.assert_allclose(float(metrics["certain_fraction"]), float(mask.mean()), atol=1e-3)
  np.testing.assert_allclose(float(metrics["loss_consistency"]), float(cons), rtol=1e-3)
  np.testing.assert_allclose(float(metrics["loss"]), float(sup + weight * cons), rtol=1e-5)
  chex.assert_trees_all_close(new_state.aux["ema_params"], new_state.params)  # alpha = 0 at step 0

  for _ in range(2):
    new_state, metrics = step(new_state, batch)
  assert int(new_state.step) == 3 and np.isfinite(float(metrics["loss"]))


def test_config_switches_are_checked():
  config = tiny_config("uamt")
  config.uamt.mc_passes = 7
  with pytest.raises(ValueError, match="config.uamt.mc_passes"):
    methods.build(config)
  config = tiny_config("uamt")
  config.uamt.consistency_on = "labeled"
  with pytest.raises(ValueError, match="config.uamt.consistency_on"):
    methods.build(config)


def test_la_config_recipe():
  from jaxseg import config_check
  from jaxseg import config_lib

  c = config_lib.load_config_module(REPO / "configs" / "la_uamt.py").get_config("labeled=8,seed=3")
  config_check.validate(c)
  assert (c.method, c.data.labeled, c.seed, c.total_steps) == ("uamt", 8, 3, 6000)
  assert (c.uamt.consistency, c.uamt.consistency_rampup, c.uamt.ema_decay, c.uamt.mc_passes) == (
    0.1,
    40.0,
    0.99,
    8,
  )
  assert (c.uamt.consistency_type, c.uamt.consistency_on) == ("mse", "unlabeled")
  assert c.model.kwargs.dropout_rate == 0.5 and c.model.kwargs.has_dropout
  assert "mt" not in c
  np.testing.assert_allclose(uamt.uamt_threshold(0, c.total_steps), 0.5210279, rtol=1e-6)


def test_uamt_threshold_values():
  assert uamt.uamt_threshold(0, 6000) == pytest.approx((0.75 + 0.25 * math.exp(-5)) * math.log(2))
  assert uamt.uamt_threshold(6000, 6000) == pytest.approx(math.log(2))
  traced = jax.jit(lambda s: uamt.uamt_threshold(s, 6000))(jnp.int32(3000))
  np.testing.assert_allclose(traced, (0.75 + 0.25 * math.exp(-5 * 0.25)) * math.log(2), rtol=1e-6)
