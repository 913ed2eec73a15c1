"""Functions the methods share: model building, optimizer, forward passes, teacher noise.

Methods share code through these functions, not through inheritance.
"""

from typing import Any

import chex
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxseg import losses
from jaxseg import models
from jaxseg import schedules
from jaxseg.models import layers
from jaxseg.state import TrainState

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(config: ml_collections.ConfigDict):
  """The network named by `config.model.name` with `config.model.kwargs`, the compute dtype and
  `config.model.remat` (absent: False)."""
  kwargs = dict(config.model.get("kwargs", {}))
  dtype = config.get("compute_dtype", "float32")
  if dtype not in _DTYPES:
    raise ValueError(f"config.compute_dtype={dtype!r}: expected one of {sorted(_DTYPES)}")
  remat = config.model.get("remat", False)
  return models.get(config.model.name, dtype=_DTYPES[dtype], remat=remat, **kwargs)


def lr_schedule(
  opt: ml_collections.ConfigDict, steps: int, kind: str | None = None
) -> optax.Schedule:
  """The learning rate per optimizer step of `opt` (a config's `optimizer` block): `kind` (default
  `opt.lr_schedule`) 'step' (`lr_step_every`, `lr_step_factor`, `lr_step_begin`), 'poly' over
  `steps` steps (`poly_power`) or 'constant'."""
  kind = opt.lr_schedule if kind is None else kind
  if opt.get("lr_step_begin", 0) and kind != "step":
    raise ValueError(
      f"config.optimizer.lr_step_begin={opt.lr_step_begin} needs lr_schedule='step', got {kind!r}"
    )
  if kind == "step":
    return schedules.step_lr(
      opt.lr, opt.lr_step_every, opt.lr_step_factor, begin=opt.get("lr_step_begin", 0)
    )
  if kind == "poly":
    return schedules.poly_lr(opt.lr, steps, opt.get("poly_power", 0.9))
  if kind == "constant":
    return optax.constant_schedule(opt.lr)
  raise ValueError(f"config.optimizer.lr_schedule={kind!r}: expected step, poly or constant")


def sgd(opt: ml_collections.ConfigDict, lr: optax.ScalarOrSchedule) -> optax.GradientTransformation:
  """SGD with momentum and *coupled* weight decay at learning rate `lr`, as
  torch.optim.SGD(weight_decay=...), after an optional global-norm gradient clip
  (`opt.clip_grad_norm`, 0 = off).

  torch adds `wd * p` to the gradient before the momentum buffer, so the decay goes first in the
  chain (upstream: yulequan/UA-MT code/train_LA_meanteacher_certainty_unlabel.py). The momentum
  buffer does not hold the lr, so a schedule here is torch SGD with its lr changed between steps.
  """
  if opt.name != "sgd":
    raise ValueError(
      f"config.optimizer.name={opt.name!r}: only 'sgd' (the upstream optimizer) is implemented"
    )
  chain = [
    optax.add_decayed_weights(opt.weight_decay),
    optax.sgd(lr, momentum=opt.momentum or None),
  ]
  if opt.get("clip_grad_norm", 0.0):
    # torch.nn.utils.clip_grad_norm_ before optimizer.step() clips the raw gradients, before SGD
    # adds the weight decay (DyCON: KU-CVML/DyCON code/train_DyCON_BraTS19.py).
    chain.insert(0, optax.clip_by_global_norm(opt.clip_grad_norm))
  return optax.chain(*chain)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """`sgd` with the config's `lr_schedule` over `total_steps`."""
  return sgd(config.optimizer, lr_schedule(config.optimizer, config.total_steps))


def init_variables(model, rng: jax.Array, images: jax.Array) -> dict[str, Any]:
  """Flax variables {'params', 'batch_stats'} for `images` [B, D, H, W, C] (eval-mode trace)."""
  variables = model.init({"params": rng}, images, train=False)
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def check_images(images: jax.Array) -> None:
  """Trace-time guard on a network input: channels-last [B, D, H, W, C] or [B, H, W, C], floating."""
  chex.assert_rank(images, {4, 5})
  chex.assert_type(images, float)


def train_forward(model, params, batch_stats, images, dropout_rng):
  """Train-mode forward (batch-statistics BN, dropout on). Returns (logits, new batch_stats)."""
  check_images(images)
  logits, mutated = model.apply(
    {"params": params, "batch_stats": batch_stats},
    images,
    train=True,
    rngs={"dropout": dropout_rng},
    mutable=["batch_stats"],
  )
  return logits, mutated.get("batch_stats", {})


def eval_probabilities(model, params, batch_stats, images):
  """Eval-mode softmax probabilities [B, D, H, W, n_classes] in float32."""
  check_images(images)
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


# UA-MT and AC-MT feed the sub-batch repeated twice (`repeat(2, 1, 1, 1, 1)`) to each of their
# T / 2 stochastic forwards.
MC_COPIES = 2
MC_IMPLS = ("vmap", "loop")


def mc_passes(
  model,
  params: Any,
  batch_stats: Any,
  images: jax.Array,
  rng: jax.Array,
  *,
  passes: int,
  noise_std: float,
  noise_clip: float,
  impl: str = "vmap",
  chunk: int = 0,
) -> tuple[jax.Array, Any]:
  """T = `passes` stochastic train-mode predictions of `images`, as the UA-MT / AC-MT MC loops
  make them (yulequan/UA-MT train_LA_meanteacher_certainty_unlabel.py, lemoshu/AC-MT
  train_ACMT_MU_3D.py).

  `passes / MC_COPIES` forwards, each on `images` tiled MC_COPIES times along the batch ([U1, U2,
  U1, U2]) plus fresh clamp(noise_std N(0, 1), +-noise_clip) noise and fresh dropout masks, so BN
  batch statistics are over MC_COPIES * B volumes as upstream. Forward f's copy c of sample b is
  prediction f * MC_COPIES + c of sample b, i.e. upstream row (f * MC_COPIES + c) * B + b.

  Args:
    model, params, batch_stats: the network (train mode) and its variables.
    images: [B, *spatial, 1].
    rng: forward f uses `jax.random.split(rng, passes // MC_COPIES)[f]` for noise and dropout.
    passes: T, a positive multiple of MC_COPIES.
    noise_std, noise_clip: the input noise.
    impl: 'vmap' (one batched forward, what training runs) or 'loop' (a Python loop of forwards,
      for the benchmark).
    chunk: with 'vmap', forwards per vmapped group (0 = all in one; see `vmap_passes`).

  Returns:
    (logits [T, B, *spatial, C], the BN statistics each forward computed from `batch_stats`
    with a leading [T / MC_COPIES] axis), gradients stopped.
  """
  if impl not in MC_IMPLS:
    raise ValueError(f"mc_passes: impl={impl!r}, expected one of {MC_IMPLS}")
  if passes < MC_COPIES or passes % MC_COPIES:
    raise ValueError(f"mc_passes: passes={passes} must be a positive multiple of {MC_COPIES}")
  n_forward = passes // MC_COPIES
  tiled = jnp.concatenate([images] * MC_COPIES, axis=0)

  def forward(key):
    noise_key, dropout_key = jax.random.split(key)
    noisy = tiled + teacher_noise(noise_key, tiled.shape, noise_std, noise_clip)
    return train_forward(model, params, batch_stats, noisy, dropout_key)

  keys = jax.random.split(rng, n_forward)
  if impl == "vmap":
    logits, stats = vmap_passes(forward, keys, chunk)
  else:
    outs = [forward(keys[f]) for f in range(n_forward)]
    logits = jnp.stack([o[0] for o in outs])
    stats = jax.tree.map(lambda *xs: jnp.stack(xs), *[o[1] for o in outs])
  # [n_forward, MC_COPIES * B, ...] -> [passes, B, ...] is a row-major regrouping.
  logits = logits.reshape((passes, images.shape[0]) + logits.shape[2:])
  return jax.lax.stop_gradient(logits), jax.lax.stop_gradient(stats)


def mc_uncertainty(mc_logits: jax.Array, eps: float = 1e-6) -> tuple[jax.Array, jax.Array]:
  """Mean softmax over the T predictions and its entropy (UA-MT / AC-MT MU: natural log, eps in
  the log).

  Args:
    mc_logits: [T, B, ..., C] (upstream's [T * B, C, ...] buffer regrouped: row i * B + b -> [i, b]).
    eps: added inside the log.

  Returns:
    (mean_probs [B, ..., C] float32, uncertainty [B, ..., 1] in nats, not normalised).
  """
  probs = jax.nn.softmax(mc_logits.astype(jnp.float32), axis=-1)
  mean_probs = jnp.mean(probs, axis=0)
  return mean_probs, losses.entropy_map(mean_probs, eps=eps, keepdims=True)


def compose_bn_stats(
  after: Any, start: Any, per_forward: Any, momentum: float = layers.BatchNorm.momentum
) -> Any:
  """Running BN statistics as if K forwards had run one after the other on top of `after`.

  Each of the K vmapped forwards (leading axis of `per_forward`) started from `start` r0 and
  returned (1 - m) r0 + m s_k; in sequence (upstream: separate module calls) they give
  r_k = (1 - m) r_{k-1} + m s_k from r_0 = `after`. m is torch's momentum (0.1). BCP composes
  from the statistics it started with (after = start), AC-MT after its main forward.
  """
  keep = 1.0 - momentum

  def combine(r, r0, new):
    out = r
    for k in range(new.shape[0]):
      out = keep * out + (new[k] - keep * r0)
    return out.astype(r.dtype)

  return jax.tree.map(combine, after, start, per_forward)


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
  return {
    "ema_params": schedules.ema_update(aux["ema_params"], params, step, decay),
    "ema_batch_stats": teacher_batch_stats,
  }


def apply_gradients_and_ema(
  tx, state: TrainState, grads, batch_stats, decay: float, teacher_batch_stats
) -> TrainState:
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
