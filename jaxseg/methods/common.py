"""Functions the methods share: model building, optimizer, forward passes, teacher noise.

Methods share code through these functions, not through inheritance.
"""
import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxseg import models
from jaxseg import schedules
from jaxseg.state import TrainState

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class Phase:
  """One stage of a run (DESIGN.md "phases": BCP and CML pre-train, then self-train).

  Phase i runs the global steps [start_i, start_{i+1}) with its own `train_step` (each compiled
  once); the last phase runs to `config.total_steps`. `enter(state) -> state`, when given, is
  applied once right before the phase's first step (e.g. teacher := student, fresh momentum). It
  must keep the state's pytree structure: checkpoints of every phase restore against `init`'s.
  """
  name: str
  start: int
  train_step: Callable
  enter: Callable | None = None


def phases_of(method) -> tuple[Phase, ...]:
  """`method.phases`, or the single phase running `method.train_step` from step 0."""
  phases = tuple(getattr(method, "phases", None) or (Phase("train", 0, method.train_step),))
  starts = [p.start for p in phases]
  if starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
    raise ValueError(f"{type(method).__name__}.phases must start at step 0 with strictly increasing "
                     f"starts; got {[(p.name, p.start) for p in phases]}")
  return phases


def phase_at(phases, step: int) -> Phase:
  """The phase that runs global step `step` (0-based)."""
  return [p for p in phases if p.start <= step][-1]


def build_model(config: ml_collections.ConfigDict):
  """The network named by `config.model.name` with `config.model.kwargs` and the compute dtype."""
  kwargs = dict(config.model.get("kwargs", {}))
  dtype = config.get("compute_dtype", "float32")
  if dtype not in _DTYPES:
    raise ValueError(f"config.compute_dtype={dtype!r}: expected one of {sorted(_DTYPES)}")
  return models.get(config.model.name, dtype=_DTYPES[dtype], **kwargs)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """SGD with momentum and *coupled* weight decay, as torch.optim.SGD(weight_decay=...), after an
  optional global-norm gradient clip (`optimizer.clip_grad_norm`, 0 = off).

  torch adds `wd * p` to the gradient before the momentum buffer, so the decay goes first in the
  chain (upstream: yulequan/UA-MT code/train_LA_meanteacher_certainty_unlabel.py).
  """
  opt = config.optimizer
  if opt.get("lr_step_begin", 0) and opt.lr_schedule != "step":
    raise ValueError(f"config.optimizer.lr_step_begin={opt.lr_step_begin} needs lr_schedule='step', "
                     f"got {opt.lr_schedule!r}")
  if opt.lr_schedule == "step":
    lr = schedules.step_lr(opt.lr, opt.lr_step_every, opt.lr_step_factor,
                           begin=opt.get("lr_step_begin", 0))
  elif opt.lr_schedule == "poly":
    lr = schedules.poly_lr(opt.lr, config.total_steps, opt.get("poly_power", 0.9))
  elif opt.lr_schedule == "constant":
    lr = optax.constant_schedule(opt.lr)
  else:
    raise ValueError(f"config.optimizer.lr_schedule={opt.lr_schedule!r}: expected step, poly or constant")
  if opt.name != "sgd":
    raise ValueError(f"config.optimizer.name={opt.name!r}: only 'sgd' (the upstream optimizer) is implemented")
  chain = [optax.add_decayed_weights(opt.weight_decay), optax.sgd(lr, momentum=opt.momentum or None)]
  if opt.get("clip_grad_norm", 0.0):
    # torch.nn.utils.clip_grad_norm_ before optimizer.step() clips the raw gradients, before SGD
    # adds the weight decay (DyCON: KU-CVML/DyCON code/train_DyCON_BraTS19.py).
    chain.insert(0, optax.clip_by_global_norm(opt.clip_grad_norm))
  return optax.chain(*chain)


def init_variables(model, rng: jax.Array, images: jax.Array) -> dict[str, Any]:
  """Flax variables {'params', 'batch_stats'} for `images` [B, D, H, W, C] (eval-mode trace)."""
  variables = model.init({"params": rng}, images, train=False)
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def train_forward(model, params, batch_stats, images, dropout_rng):
  """Train-mode forward (batch-statistics BN, dropout on). Returns (logits, new batch_stats)."""
  logits, mutated = model.apply(
      {"params": params, "batch_stats": batch_stats}, images, train=True,
      rngs={"dropout": dropout_rng}, mutable=["batch_stats"])
  return logits, mutated.get("batch_stats", {})


def eval_probabilities(model, params, batch_stats, images):
  """Eval-mode softmax probabilities [B, D, H, W, n_classes] in float32."""
  logits = model.apply({"params": params, "batch_stats": batch_stats}, images, train=False)
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def teacher_noise(rng: jax.Array, shape, std: float, clip: float) -> jax.Array:
  """clamp(std * N(0, 1), -clip, clip) per voxel (UA-MT/MT teacher input noise)."""
  return jnp.clip(std * jax.random.normal(rng, shape, jnp.float32), -clip, clip)


def pass_chunk(configured: int) -> int:
  """Forwards per vmapped group for stochastic passes: `configured`, or for 0 ("auto") all of them
  on an accelerator and one at a time on the CPU, whose XLA backend fails to allocate (std::bad_alloc)
  a 16-20 volume batched forward at the LA patch size."""
  return configured or (1 if jax.default_backend() == "cpu" else 0)


def vmap_passes(fn, keys: jax.Array, chunk: int = 0):
  """`jax.vmap(fn)(keys)`, or with 0 < chunk < len(keys) a `jax.lax.map` over vmapped groups of
  `chunk` keys (bounded memory, same values). No Python loop either way."""
  if 0 < chunk < keys.shape[0]:
    return jax.lax.map(fn, keys, batch_size=chunk)
  return jax.vmap(fn)(keys)


def new_state(method, rng: jax.Array, example_batch, aux_fn=None) -> TrainState:
  """Initial TrainState for `method` (which has .model and .tx); `aux_fn(rng, variables)` builds aux."""
  init_rng, aux_rng, step_rng = jax.random.split(rng, 3)
  variables = init_variables(method.model, init_rng, jnp.asarray(example_batch["image"]))
  aux = aux_fn(aux_rng, variables) if aux_fn is not None else {}
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=variables["params"],
      batch_stats=variables["batch_stats"],
      opt_state=method.tx.init(variables["params"]),
      rng=step_rng,
      aux=aux,
  )


def new_teacher_state(method, rng: jax.Array, example_batch) -> TrainState:
  """Initial state with a mean teacher in aux: {'ema_params', 'ema_batch_stats'}.

  The teacher is initialised independently, as upstream builds it (yulequan/UA-MT
  train_LA_meanteacher_certainty_unlabel.py `create_model(ema=True)`); the EMA warm-up
  (alpha = 0 at step 0) makes it a copy of the student at the first update.
  """
  def teacher(rng, _):
    variables = init_variables(method.model, rng, jnp.asarray(example_batch["image"]))
    return {"ema_params": variables["params"], "ema_batch_stats": variables["batch_stats"]}
  return new_state(method, rng, example_batch, aux_fn=teacher)


def update_teacher(aux, params, step, decay: float, teacher_batch_stats) -> dict:
  """EMA of the student's parameters after the optimizer update (parameters only, not BN
  buffers); the teacher keeps the running statistics of its own train-mode forward."""
  return {"ema_params": schedules.ema_update(aux["ema_params"], params, step, decay),
          "ema_batch_stats": teacher_batch_stats}


def apply_gradients_and_ema(tx, state: TrainState, grads, batch_stats, decay: float,
                            teacher_batch_stats) -> TrainState:
  """The optimizer update, then the teacher's EMA of the updated student (upstream order)."""
  new_state = apply_gradients(tx, state, grads, batch_stats)
  aux = update_teacher(state.aux, new_state.params, state.step, decay, teacher_batch_stats)
  return new_state.replace(aux=aux)


def apply_gradients(tx, state: TrainState, grads, batch_stats, aux=None) -> TrainState:
  """One optimizer update; the step counter advances and the new BN statistics are kept."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  return state.replace(
      step=state.step + 1,
      params=optax.apply_updates(state.params, updates),
      batch_stats=batch_stats,
      opt_state=opt_state,
      aux=state.aux if aux is None else aux,
  )
