"""UPC: uncertainty-aware pseudo-label and consistency (Lu et al.), docs/methods/upc.md.

Upstream: AIforMS/UPC-Pytorch code/train_LA_UPC.py (the shipped defaults are the config defaults).

Per step, batch [L1, L2, U1, U2] with labeled_batch_size 2:
  * noise clamp(0.2 N(0, 1), +-0.4) on the *student* input, whole batch (labeled too); the teacher
    (EMA params, train mode: dropout 0.9 and batch-statistics BN) sees the clean batch, no gradient;
  * supervised 0.5 * (CE + Dice) on the noisy student's [:2];
  * consistency on all four samples, `consistency_loss`: by default the confidence-thresholded hard
    pseudo-label CE (mask = max softmax(t / T) >= 0.9, mean over *all* voxels); with `pseudo_rect`
    the KL-rectified CE mean(ce exp(-kl)) + mean(kl);
  * loss = supervised + 1.0 sigmoid_rampup(step // 150, 40) * consistency;
  * EMA teacher with alpha = min(1 - 1/(step + 1), 0.9999), parameters only; over 6000 steps the
    cap is never reached, so the teacher is the uniform average of the student iterates.
Both networks are VNet(has_dropout=True, dropout_rate=0.9) (`create_model(has_dropout=True)` for
student and teacher); only the student is evaluated.
"""

import jax
import jax.numpy as jnp
import ml_collections

from jaxseg import losses
from jaxseg import schedules
from jaxseg.methods import base
from jaxseg.methods import common
from jaxseg.state import TrainState


def update_variance(
  student_logits: jax.Array, teacher_logits: jax.Array, loss_origin: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """KL rectification mean(loss_origin exp(-kl)) + mean(kl) (UPC `update_variance`).

  kl = sum_c softmax(t)_c (log softmax(t)_c - log_softmax(s)_c) per voxel (KLDivLoss 'none' summed
  over classes); gradients flow through both terms into the student.

  Args:
    student_logits: [B, ..., C] (upstream pred1).
    teacher_logits: [B, ..., C] (pred2).
    loss_origin: per-voxel loss [B, ...] (the pseudo-label CE in training).

  Returns:
    (loss scalar, kl_map [B, ...]).
  """
  kl_map = jnp.sum(
    losses.softmax_kl_loss(student_logits.astype(jnp.float32), teacher_logits.astype(jnp.float32)),
    axis=-1,
  )
  return jnp.mean(loss_origin * jnp.exp(-kl_map)) + jnp.mean(kl_map), kl_map


def consistency_loss(
  student_logits: jax.Array,
  teacher_logits: jax.Array,
  *,
  pseudo: bool = True,
  pseudo_rect: bool = False,
  threshold: float = 0.9,
  temperature: float = 1.0,
) -> tuple[jax.Array, dict]:
  """UPC `update_consistency_loss(pred1=student, pred2=teacher)` for every `args` setting.

  * pseudo, not pseudo_rect (the shipped default): targets = argmax softmax(t / T) (ties -> class 0),
    mask = max prob >= threshold; loss = mean over ALL voxels of CE(s, targets) * mask.
  * pseudo and pseudo_rect: `update_variance(s, t, CE(s, targets))` (no threshold).
  * not pseudo (unreachable from the upstream CLI): mean((s - t)^2) on raw logits.

  Args:
    student_logits, teacher_logits: [B, ..., C]; the teacher is treated as a constant.
    pseudo, pseudo_rect, threshold, temperature: upstream `--pseudo`, `--pseudo_rect`, `--threshold`, `--T`.

  Returns:
    (loss scalar, aux) with aux {'mask' [B, ...] float32, 'targets' int32 [B, ...]} for the thresholded
    branch, {'targets', 'kl_map'} for the rectified one, {} for the MSE one.
  """
  teacher_logits = jax.lax.stop_gradient(teacher_logits)
  if not pseudo:
    diff = student_logits.astype(jnp.float32) - teacher_logits.astype(jnp.float32)
    return jnp.mean(diff * diff), {}
  if temperature <= 0:
    raise ValueError(f"consistency_loss: temperature must be > 0, got {temperature}")
  probs = jax.nn.softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
  targets = jnp.argmax(probs, axis=-1).astype(jnp.int32)
  ce = losses.voxel_cross_entropy(student_logits, targets)
  if pseudo_rect:
    loss, kl_map = update_variance(student_logits, teacher_logits, ce)
    return loss, {"targets": targets, "kl_map": kl_map}
  mask = (jnp.max(probs, axis=-1) >= threshold).astype(jnp.float32)
  return jnp.mean(ce * mask), {"mask": mask, "targets": targets}


class UPC:
  """Method protocol: init / phases (one: train_step) / predict (jaxseg/methods/base.py)."""

  name = "upc"
  samples_unlabeled = True
  host_targets = base.NO_HOST_TARGETS

  def __init__(self, config: ml_collections.ConfigDict):
    hp = config.upc
    if hp.temperature <= 0:
      raise ValueError(f"config.upc.temperature={hp.temperature} must be > 0")
    if not 0.0 <= hp.threshold <= 1.0:
      raise ValueError(f"config.upc.threshold={hp.threshold} must be in [0, 1]")
    self.config = config
    self.hp = hp
    self.model = common.build_model(config)
    self.tx = common.make_optimizer(config)
    self.labeled_batch_size = config.labeled_batch_size

  def init(self, rng: jax.Array, example_batch) -> TrainState:
    return common.new_teacher_state(self, rng, example_batch)

  def phases(self) -> tuple[base.Phase, ...]:
    return (base.Phase("train", 0, self.train_step),)

  def train_step(self, state: TrainState, batch):
    """batch: image [B, D, H, W, 1], label [B, D, H, W]; the first labeled_batch_size are labeled."""
    hp, lb = self.hp, self.labeled_batch_size
    rng = jax.random.fold_in(state.rng, state.step)
    student_rng, noise_rng, teacher_rng = jax.random.split(rng, 3)
    images, labels = batch["image"], batch["label"]

    teacher_logits, teacher_stats = common.train_forward(
      self.model, state.aux["ema_params"], state.aux["ema_batch_stats"], images, teacher_rng
    )
    teacher_logits = jax.lax.stop_gradient(teacher_logits)
    noisy = images + common.teacher_noise(noise_rng, images.shape, hp.noise_std, hp.noise_clip)
    weight = schedules.consistency_weight(
      state.step, hp.consistency, hp.consistency_rampup, hp.iters_per_epoch
    )

    def loss_fn(params):
      logits, batch_stats = common.train_forward(
        self.model, params, state.batch_stats, noisy, student_rng
      )
      supervised, ce, dice = losses.supervised_ce_dice(logits[:lb], labels[:lb])
      consistency, aux = consistency_loss(
        logits,
        teacher_logits,
        pseudo=hp.pseudo,
        pseudo_rect=hp.pseudo_rect,
        threshold=hp.threshold,
        temperature=hp.temperature,
      )
      loss = supervised + weight * consistency
      metrics = {
        "loss": loss,
        "loss_ce": ce,
        "loss_dice": dice,
        "loss_consistency": consistency,
        "consistency_weight": weight,
      }
      if "mask" in aux:
        metrics["confident_fraction"] = jnp.mean(aux["mask"])
      if "kl_map" in aux:
        metrics["kl_mean"] = jnp.mean(aux["kl_map"])
      return loss, (batch_stats, metrics)

    grads, (batch_stats, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
    new_state = common.apply_gradients_and_ema(
      self.tx, state, grads, batch_stats, hp.ema_decay, teacher_stats
    )
    return new_state, metrics

  def predict(self, state: TrainState, images):
    """The student in eval mode (upstream test_LA.py builds it without dropout; eval has none)."""
    return common.eval_probabilities(self.model, state.params, state.batch_stats, images)
