"""Ramp-up / ramp-down curves, consistency weights, EMA teacher updates and learning-rate schedules.

Ramps follow `yulequan/UA-MT: code/utils/ramps.py` (shared verbatim by DTC, UPC, MCF, BCP, CML, AC-MT,
DyCON). Each ramp accepts either host values (Python / numpy scalars or arrays, computed in float64 and
returned as a Python float for scalars, like upstream) or JAX values (possibly traced inside `jit`,
computed with `jnp.where`, in the default JAX float dtype). Ramp lengths are static Python numbers.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

Scalar = int | float | np.ndarray | jax.Array


def is_jax(x: Any) -> bool:
  """Whether a schedule input is a JAX value (tracers are jax.Array instances, so values traced
  under jit count): such inputs are computed with jnp, host numbers with float64 numpy."""
  return isinstance(x, jax.Array)


def host_result(x: np.ndarray) -> float | np.ndarray:
  """A host schedule value as float64: a Python float for a scalar, else an array."""
  x = np.asarray(x, dtype=np.float64)
  return float(x) if x.ndim == 0 else x


def _check_length(name: str, length: Any) -> float:
  if is_jax(length):
    raise TypeError(f"{name}: the ramp length must be a static Python number, got a JAX value")
  length = float(length)
  if length < 0:
    raise ValueError(f"{name}: the ramp length must be >= 0, got {length}")
  return length


def sigmoid_rampup(current: Scalar, rampup_length: float) -> Scalar:
  """exp(-5 (1 - clip(current, 0, L) / L)^2); 1 when L == 0 (UA-MT `ramps.sigmoid_rampup`).

  Note the value at 0 is exp(-5) ~ 6.7e-3, not 0, and negative inputs clip to 0.

  Args:
    current: any shape; host or JAX value.
    rampup_length: L, a static Python number.

  Returns:
    Same shape as `current` (Python float for host scalars).
  """
  length = _check_length("sigmoid_rampup", rampup_length)
  if is_jax(current):
    if length == 0:
      return jnp.ones_like(current, dtype=jnp.result_type(float))
    phase = 1.0 - jnp.clip(current, 0.0, length) / length
    return jnp.exp(-5.0 * phase * phase)
  if length == 0:
    return host_result(np.ones_like(current, dtype=np.float64))
  phase = 1.0 - np.clip(np.asarray(current, dtype=np.float64), 0.0, length) / length
  return host_result(np.exp(-5.0 * phase * phase))


def consistency_weight(
  step: Scalar, consistency: float, rampup_length: float, iters_per_epoch: int = 150
) -> Scalar:
  """consistency * sigmoid_rampup(step // iters_per_epoch, rampup_length).

  UA-MT `train_LA_meanteacher_certainty_unlabel.py::get_current_consistency_weight`, which the loop calls
  with `iter_num // 150` (integer division), so the weight is a staircase changing every 150 steps.

  Args:
    step: optimizer steps already taken (upstream `iter_num` before increment); int, host or JAX.
    consistency: the final weight (0.1 for UA-MT/MT, 1.0 for DTC).
    rampup_length: ramp length in "epochs" of `iters_per_epoch` steps (40 for LA).
    iters_per_epoch: the hard-coded 150 of the upstream loops.
  """
  if is_jax(step):
    epoch = jnp.floor_divide(step, iters_per_epoch)
  else:
    epoch = np.floor_divide(np.asarray(step), iters_per_epoch)
  return consistency * sigmoid_rampup(epoch, rampup_length)


def ema_alpha(step: Scalar, decay: float) -> Scalar:
  """Effective EMA decay min(1 - 1/(step + 1), decay) of UA-MT `update_ema_variables`.

  step 0 gives 0 (teacher := student); the decay is reached at step 1/(1 - decay) - 1 (99 for 0.99).
  """
  if is_jax(step):
    return jnp.minimum(1.0 - 1.0 / (step + 1.0), decay)
  return host_result(np.minimum(1.0 - 1.0 / (np.asarray(step, dtype=np.float64) + 1.0), decay))


def ema_update(ema_params: Any, params: Any, step: Scalar, decay: float) -> Any:
  """One teacher update ema <- a ema + (1 - a) params with a = ema_alpha(step, decay).

  UA-MT `update_ema_variables` (parameters only: pass the params pytree, not batch_stats). Pure and
  jit-able; `step` may be traced.

  Args:
    ema_params: teacher pytree.
    params: student pytree with the same structure.
    step: optimizer steps taken before this update (upstream `iter_num` before increment).
    decay: the EMA decay (0.99 in UA-MT/MT).
  """
  alpha = ema_alpha(step, decay)
  return optax.incremental_update(new_tensors=params, old_tensors=ema_params, step_size=1.0 - alpha)


def step_lr(base_lr: float, every: int, factor: float, begin: int = 0) -> optax.Schedule:
  """lr(count) = base_lr * factor ** (max(count - begin, 0) // every), count = optimizer steps
  already taken.

  UA-MT LA recipe: base 0.01, every 2500, factor 0.1 -> 1e-2 for counts 0..2499, 1e-3 for 2500..4999
  (upstream sets the new lr after the 2500th step, so the 2501st step is the first at 1e-3).
  MCF (WYC-321/MCF code/train_MCF.py) decays one step later: begin = 1 (1e-2 for counts 0..2500).
  """
  if every <= 0:
    raise ValueError(f"step_lr: every must be > 0, got {every}")
  return optax.exponential_decay(
    init_value=base_lr,
    transition_steps=every,
    decay_rate=factor,
    transition_begin=begin,
    staircase=True,
  )


def poly_lr(base_lr: float, max_steps: int, power: float = 0.9) -> optax.Schedule:
  """SSL4MIS poly schedule lr(count) = base_lr * (1 - count / max_steps) ** power (0 from max_steps on).

  `HiLab-git/SSL4MIS: code/train_*_3D.py` sets `lr_ = base_lr * (1 - iter_num / max_iterations) ** 0.9`.
  """
  if max_steps <= 0:
    raise ValueError(f"poly_lr: max_steps must be > 0, got {max_steps}")
  return optax.polynomial_schedule(
    init_value=base_lr, end_value=0.0, power=power, transition_steps=max_steps
  )
