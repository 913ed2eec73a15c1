"""Tests of jaxseg.schedules: parity with ramps_ema.npz (UA-MT ramps.py, EMA, consistency weight) and lr schedules."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import schedules

_RAMPS = {
  "sigmoid_rampup": (schedules.sigmoid_rampup, "rampup_length"),
}


@pytest.mark.parametrize("function", sorted(_RAMPS))
def test_ramps_parity(parity, function):
  pf = parity("ramps_ema.npz")
  fn, length_key = _RAMPS[function]
  names = pf.cases_of(function, required=False)
  assert names, f"no {function} case in ramps_ema.npz"
  for name in names:
    case, length = pf.case(name), pf.case_args(name)[length_key]
    current, want = case["input/current"], case["output/value"]
    # Host path: one Python scalar at a time, float64 like upstream.
    host = np.array([fn(c.item(), length) for c in current])
    np.testing.assert_allclose(host, want, rtol=1e-12, atol=0, err_msg=name)
    assert all(isinstance(fn(c.item(), length), float) for c in current)
    # Traced path under jit (float32).
    traced = jax.jit(lambda c, fn=fn, length=length: fn(c, length))(jnp.asarray(current))
    np.testing.assert_allclose(np.asarray(traced), want, rtol=1e-5, atol=1e-6, err_msg=name)


def test_consistency_weight_parity(parity):
  pf = parity("ramps_ema.npz")
  names = pf.cases_of("get_current_consistency_weight", required=False)
  assert names
  for name in names:
    args, case = pf.case_args(name), pf.case(name)
    iters, want = case["input/iter_num"], case["output/weight"]
    kwargs = dict(consistency=args["consistency"], rampup_length=args["consistency_rampup"])
    host = np.array([schedules.consistency_weight(int(i), **kwargs) for i in iters])
    np.testing.assert_allclose(host, want, rtol=1e-12, err_msg=name)
    traced = jax.jit(lambda s: schedules.consistency_weight(s, **kwargs))(
      jnp.asarray(iters, jnp.int32)
    )
    np.testing.assert_allclose(np.asarray(traced), want, rtol=1e-5, atol=1e-7, err_msg=name)


def _params(case, prefix):
  return {k[len(prefix) :]: v for k, v in case.items() if k.startswith(prefix)}


def _same(a, b):
  return set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def _assert_tree_close(got, want, msg):
  assert set(got) == set(want), msg
  for k in want:
    np.testing.assert_allclose(
      np.asarray(got[k]), want[k], rtol=1e-5, atol=1e-6, err_msg=f"{msg}/{k}"
    )


# ramps_ema.npz stores the EMA tensors by reference: `ema_before`, `ema_init` and every `ema_after_step<k>`
# hold the state after the LAST in-place update (e.g. ema_before == ema_after bitwise in every single-step
# case, while ema_after == model at step 0 proves the update itself ran). Where that aliasing is detected
# only the states that are still meaningful are compared: the step-0 copy and the final sequence state.


def test_ema_single_steps_parity(parity):
  pf = parity("ramps_ema.npz")
  names = [
    n
    for n in pf.cases_of("update_ema_variables", required=False)
    if isinstance(pf.case_args(n)["global_step"], int)
  ]
  assert names
  update = jax.jit(schedules.ema_update, static_argnums=3)
  for name in names:
    args, case = pf.case_args(name), pf.case(name)
    step, decay = args["global_step"], args["alpha"]
    alpha = float(case["output/effective_alpha"])
    assert schedules.ema_alpha(step, decay) == pytest.approx(alpha, abs=1e-15), name
    np.testing.assert_allclose(
      jax.jit(schedules.ema_alpha, static_argnums=1)(jnp.int32(step), decay),
      alpha,
      rtol=1e-6,
      err_msg=name,
    )
    model, ema = _params(case, "input/model/"), _params(case, "input/ema_before/")
    want = _params(case, "output/ema_after/")
    if alpha > 0 and _same(ema, want) and not _same(model, want):
      continue  # aliased ema_before (see above): the true starting state is not in the file.
    _assert_tree_close(schedules.ema_update(ema, model, step, decay), want, name)
    _assert_tree_close(update(ema, model, jnp.int32(step), decay), want, name)


def test_ema_step0_copies_student():
  ema = {"w": jnp.full((2, 3), 7.0), "b": jnp.zeros(3)}
  params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
  out = schedules.ema_update(ema, params, 0, 0.99)
  _assert_tree_close(out, {k: np.asarray(v) for k, v in params.items()}, "step0")
  out = jax.jit(schedules.ema_update, static_argnums=3)(ema, params, jnp.int32(1), 0.99)
  np.testing.assert_allclose(out["w"], 0.5 * 7.0 + 0.5 * np.arange(6.0).reshape(2, 3), rtol=1e-6)
  out = schedules.ema_update(ema, params, 500, 0.99)
  np.testing.assert_allclose(out["b"], 0.01 * np.ones(3), rtol=1e-5)


def test_ema_sequence_parity(parity):
  pf = parity("ramps_ema.npz")
  names = [
    n
    for n in pf.cases_of("update_ema_variables", required=False)
    if any(k.startswith("input/model_step") for k in pf.case(n))
  ]
  assert names
  update = jax.jit(schedules.ema_update, static_argnums=3)
  for name in names:
    case, decay = pf.case(name), pf.case_args(name)["alpha"]
    steps = sorted(
      {int(m.group(1)) for k in case for m in [re.match(r"input/model_step(\d+)/", k)] if m}
    )
    assert steps == list(range(len(steps))), f"{name}: global steps {steps} are not 0..n-1"
    stored = {s: _params(case, f"output/ema_after_step{s}/") for s in steps}
    aliased = all(_same(stored[s], stored[steps[-1]]) for s in steps)
    ema = _params(case, "input/ema_init/")
    for step in steps:
      ema = update(ema, _params(case, f"input/model_step{step}/"), jnp.int32(step), decay)
      if step == steps[-1] or not aliased:
        _assert_tree_close(ema, stored[step], f"{name}/step{step}")


def test_ramp_input_checks():
  with pytest.raises(ValueError, match="sigmoid_rampup"):
    schedules.sigmoid_rampup(1.0, -40)
  with pytest.raises(TypeError, match="static"):
    schedules.sigmoid_rampup(1.0, jnp.float32(40))


def test_step_lr_values():
  sched = schedules.step_lr(0.01, 2500, 0.1)
  counts = np.array([0, 1, 2499, 2500, 2501, 4999, 5000, 5999])
  want = 0.01 * 0.1 ** (counts // 2500)
  np.testing.assert_allclose([float(sched(c)) for c in counts], want, rtol=1e-6)
  np.testing.assert_allclose(jax.jit(sched)(jnp.asarray(counts)), want, rtol=1e-6)


def test_poly_lr_values():
  sched = schedules.poly_lr(0.01, 30000)
  counts = np.array([0, 1, 15000, 29999, 30000, 31000])
  want = 0.01 * (1.0 - np.minimum(counts, 30000) / 30000) ** 0.9
  # optax evaluates 1 - count/max in float32: near the end the cancellation leaves ~1e-9 absolute error.
  np.testing.assert_allclose([float(sched(c)) for c in counts], want, rtol=1e-5, atol=1e-9)
