"""Mean Teacher for 3D segmentation, as the LA literature runs it.

Upstream: yulequan/UA-MT code/train_LA_meanteacher_certainty_unlabel.py with the uncertainty mask
removed (docs/methods/mt.md §0: UA-MT ships no plain MT script; with mask == 1 its consistency is exactly
SSL4MIS train_mean_teacher_3D.py's mean softmax MSE).

Per step, batch [L1, L2, U1, U2] with labeled_batch_size 2:
  * student forward on all four volumes (one BN batch), supervised 0.5 * (CE + Dice) on [:2];
  * teacher (EMA params, train mode: dropout on, its own batch statistics) on U + noise,
    noise = clamp(0.1 * N(0, 1), -0.2, 0.2), no gradient;
  * consistency = mean((softmax(s[2:]) - softmax(t))^2) over every element;
  * loss = supervised + w(step) * consistency, w = 0.1 * sigmoid_rampup(step // 150, 40);
  * after the optimizer update: EMA with alpha = min(1 - 1/(step + 1), 0.99), parameters only.
"""

import jax
import jax.numpy as jnp
import ml_collections

from jaxseg import losses
from jaxseg import schedules
from jaxseg.methods import base
from jaxseg.methods import common
from jaxseg.state import TrainState


class MeanTeacher:
  """Method protocol: init / phases (one: train_step) / predict (jaxseg/methods/base.py)."""

  name = "mean_teacher"
  samples_unlabeled = True
  host_targets = base.NO_HOST_TARGETS

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.hp = config.mt
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
    consistency_images = images if hp.consistency_on == "all" else images[lb:]

    noisy = consistency_images + common.teacher_noise(
      noise_rng, consistency_images.shape, hp.noise_std, hp.noise_clip
    )
    teacher_logits, teacher_stats = common.train_forward(
      self.model, state.aux["ema_params"], state.aux["ema_batch_stats"], noisy, teacher_rng
    )
    teacher_logits = jax.lax.stop_gradient(teacher_logits)
    weight = schedules.consistency_weight(
      state.step, hp.consistency, hp.consistency_rampup, hp.iters_per_epoch
    )

    def loss_fn(params):
      logits, batch_stats = common.train_forward(
        self.model, params, state.batch_stats, images, student_rng
      )
      supervised, ce, dice = losses.supervised_ce_dice(logits[:lb], labels[:lb])
      student = logits if hp.consistency_on == "all" else logits[lb:]
      consistency = jnp.mean(losses.softmax_mse_loss(student, teacher_logits))
      loss = supervised + weight * consistency
      metrics = {
        "loss": loss,
        "loss_ce": ce,
        "loss_dice": dice,
        "loss_consistency": consistency,
        "consistency_weight": weight,
      }
      return loss, (batch_stats, metrics)

    grads, (batch_stats, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
    # The teacher's own running statistics are updated by its forward but never evaluated.
    new_state = common.apply_gradients_and_ema(
      self.tx, state, grads, batch_stats, hp.ema_decay, teacher_stats
    )
    return new_state, metrics

  def predict(self, state: TrainState, images):
    """The student in eval mode, as upstream test_LA.py evaluates it."""
    return common.eval_probabilities(self.model, state.params, state.batch_stats, images)
