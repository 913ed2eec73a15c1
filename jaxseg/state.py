"""The train state: a plain pytree that every method shares.

No functions live inside it, so it serializes (orbax), compares (tests) and shards (jit) as is.
The model and the optimizer are static fields of the Method, not of the state.
"""

from typing import Any

import flax
import jax


@flax.struct.dataclass
class TrainState:
  """State of one run.

  Attributes:
    step: int32 scalar, optimizer steps already taken (upstream `iter_num` before increment).
    params: the trained (student) network's parameters.
    batch_stats: its BatchNorm running statistics (empty dict for norm-free models).
    opt_state: optax state of `params`.
    rng: a raw uint32 PRNG key; step randomness is `jax.random.fold_in(rng, step)`.
    aux: method-owned pytree, e.g. {'ema_params', 'ema_batch_stats'} for a teacher.
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  aux: Any
