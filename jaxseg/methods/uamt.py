"""UA-MT: uncertainty-aware Mean Teacher (Yu et al., MICCAI 2019), docs/methods/uamt.md.

Upstream: yulequan/UA-MT code/train_LA_meanteacher_certainty_unlabel.py (`consistency_on='unlabeled'`,
the default and the README's script) and code/train_LA_meanteacher_certainty.py (`consistency_on='all'`:
teacher noise, MC passes and consistency on the whole batch).

Per step, batch [L1, L2, U1, U2] with labeled_batch_size 2; S, the consistency sub-batch, is [U1, U2]
('unlabeled') or the whole batch ('all'):
  * student forward on all four volumes, supervised 0.5 * (CE + Dice) on [:2];
  * teacher target: EMA params in train mode on S + clamp(0.1 N, +-0.2), no gradient;
  * Monte-Carlo uncertainty: T = 8 stochastic teacher predictions of S from T / 2 forwards, each on
    [S, S] (the sub-batch repeated twice, so a forward's BN batch holds two noisy copies of every
    volume) with fresh noise and dropout; the forwards run as one `jax.vmap` over keys;
    u = entropy of the mean softmax (nats, eps 1e-6 inside the log);
  * consistency = sum(mask * dist) / (n_classes sum(mask) + 1e-16), mask = u < (0.75 + 0.25
    sigmoid_rampup(step, total_steps)) ln 2, dist = softmax MSE (or KL) of student vs teacher target;
  * loss = supervised + 0.1 sigmoid_rampup(step // 150, 40) * consistency;
  * EMA teacher with alpha = min(1 - 1/(step + 1), 0.99), parameters only.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections

from jaxseg import losses
from jaxseg import schedules
from jaxseg.methods import base
from jaxseg.methods import common
from jaxseg.state import TrainState

_DISTANCES = {"mse": losses.softmax_mse_loss, "kl": losses.softmax_kl_loss}


def uamt_threshold(step, max_steps: float):
  """UA-MT uncertainty threshold (0.75 + 0.25 sigmoid_rampup(step, max_steps)) ln 2, in nats.

  Per-step ramp (not per epoch) from `train_LA_meanteacher_certainty_unlabel.py` (max_iterations
  6000); `step` a host number or a traced JAX value.
  """
  return (0.75 + 0.25 * schedules.sigmoid_rampup(step, max_steps)) * math.log(2.0)


def certainty_masked_consistency(
  student_logits: jax.Array,
  teacher_logits: jax.Array,
  uncertainty: jax.Array,
  step,
  max_steps: float,
  consistency_type: str = "mse",
):
  """The UA-MT consistency on voxels whose uncertainty is below the ramped threshold.

  Args:
    student_logits, teacher_logits: [B, ..., C].
    uncertainty: [B, ..., 1] from `common.mc_uncertainty`.
    step: optimizer steps already taken (host or traced int).
    max_steps: the threshold ramp length (upstream `max_iterations`).
    consistency_type: 'mse' (softmax MSE, the default) or 'kl' (softmax KL).

  Returns:
    (consistency scalar, mask [B, ..., 1] float32 (1 = certain, kept), threshold scalar in nats).
  """
  if consistency_type not in _DISTANCES:
    raise ValueError(f"consistency_type={consistency_type!r}: expected one of {sorted(_DISTANCES)}")
  dist = _DISTANCES[consistency_type](
    student_logits.astype(jnp.float32), teacher_logits.astype(jnp.float32)
  )
  threshold = uamt_threshold(step, max_steps)
  mask = (uncertainty < threshold).astype(jnp.float32)
  return losses.masked_consistency(dist, mask, dist.shape[-1]), mask, threshold


class UAMT:
  """Method protocol: init / phases (one: train_step) / predict (jaxseg/methods/base.py).

  `mc_impl` exists for `jaxseg.bench --compare_mc` only; training always uses 'vmap'.
  """

  name = "uamt"
  samples_unlabeled = True
  host_targets = base.NO_HOST_TARGETS
  # `jaxseg.bench --compare_mc`: the `config.uamt` field counting the MC passes; the class takes
  # `mc_impl` / `mc_chunk` to time them as a vmap or a Python loop.
  mc_passes_field = "mc_passes"

  def __init__(
    self, config: ml_collections.ConfigDict, mc_impl: str = "vmap", mc_chunk: int | None = None
  ):
    hp = config.uamt
    if hp.consistency_type not in _DISTANCES:
      raise ValueError(
        f"config.uamt.consistency_type={hp.consistency_type!r}: expected one of "
        f"{sorted(_DISTANCES)}"
      )
    if hp.consistency_on not in ("unlabeled", "all"):
      raise ValueError(
        f"config.uamt.consistency_on={hp.consistency_on!r}: expected 'unlabeled' "
        "(train_LA_meanteacher_certainty_unlabel.py) or 'all' (..._certainty.py)"
      )
    if hp.mc_passes < common.MC_COPIES or hp.mc_passes % common.MC_COPIES:
      raise ValueError(
        f"config.uamt.mc_passes={hp.mc_passes}: must be a positive multiple of {common.MC_COPIES}"
      )
    if mc_impl not in common.MC_IMPLS:
      raise ValueError(f"UAMT: mc_impl={mc_impl!r}, expected one of {common.MC_IMPLS}")
    self.config = config
    self.hp = hp
    self.mc_impl = mc_impl
    # config.uamt.mc_chunk 0 = auto: all MC forwards in one vmap on an accelerator; one vmapped
    # forward at a time (lax.map) on the CPU, whose backend cannot allocate the batched one at LA
    # size. Same numbers either way.
    self.mc_chunk = common.pass_chunk(hp.get("mc_chunk", 0) if mc_chunk is None else mc_chunk)
    self.model = common.build_model(config)
    self.tx = common.make_optimizer(config)
    self.labeled_batch_size = config.labeled_batch_size
    # Upstream ramps the threshold over max_iterations, the run length.
    self.threshold_rampup = float(config.total_steps)

  def init(self, rng: jax.Array, example_batch) -> TrainState:
    return common.new_teacher_state(self, rng, example_batch)

  def phases(self) -> tuple[base.Phase, ...]:
    return (base.Phase("train", 0, self.train_step),)

  def train_step(self, state: TrainState, batch):
    """batch: image [B, D, H, W, 1], label [B, D, H, W]; the first labeled_batch_size are labeled."""
    hp, lb = self.hp, self.labeled_batch_size
    rng = jax.random.fold_in(state.rng, state.step)
    student_rng, noise_rng, teacher_rng, mc_rng = jax.random.split(rng, 4)
    images, labels = batch["image"], batch["label"]
    consistency_images = images if hp.consistency_on == "all" else images[lb:]
    ema_params, ema_stats = state.aux["ema_params"], state.aux["ema_batch_stats"]

    noisy = consistency_images + common.teacher_noise(
      noise_rng, consistency_images.shape, hp.noise_std, hp.noise_clip
    )
    teacher_logits, teacher_stats = common.train_forward(
      self.model, ema_params, ema_stats, noisy, teacher_rng
    )
    teacher_logits = jax.lax.stop_gradient(teacher_logits)
    mc_logits, _ = common.mc_passes(
      self.model,
      ema_params,
      ema_stats,
      consistency_images,
      mc_rng,
      passes=hp.mc_passes,
      noise_std=hp.noise_std,
      noise_clip=hp.noise_clip,
      impl=self.mc_impl,
      chunk=self.mc_chunk,
    )
    _, uncertainty = common.mc_uncertainty(mc_logits)
    weight = schedules.consistency_weight(
      state.step, hp.consistency, hp.consistency_rampup, hp.iters_per_epoch
    )

    def loss_fn(params):
      logits, batch_stats = common.train_forward(
        self.model, params, state.batch_stats, images, student_rng
      )
      supervised, ce, dice = losses.supervised_ce_dice(logits[:lb], labels[:lb])
      student = logits if hp.consistency_on == "all" else logits[lb:]
      consistency, mask, threshold = certainty_masked_consistency(
        student, teacher_logits, uncertainty, state.step, self.threshold_rampup, hp.consistency_type
      )
      loss = supervised + weight * consistency
      metrics = {
        "loss": loss,
        "loss_ce": ce,
        "loss_dice": dice,
        "loss_consistency": consistency,
        "consistency_weight": weight,
        "uncertainty_threshold": threshold,
        "certain_fraction": jnp.mean(mask),
        "uncertainty_mean": jnp.mean(uncertainty),
      }
      return loss, (batch_stats, metrics)

    grads, (batch_stats, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
    # Teacher BN running statistics are never evaluated; keep the target forward's, drop the MC ones.
    new_state = common.apply_gradients_and_ema(
      self.tx, state, grads, batch_stats, hp.ema_decay, teacher_stats
    )
    return new_state, metrics

  def predict(self, state: TrainState, images):
    """The student in eval mode, as upstream test_LA.py evaluates it."""
    return common.eval_probabilities(self.model, state.params, state.batch_stats, images)
