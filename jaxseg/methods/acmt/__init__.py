"""AC-MT: ambiguity-consensus Mean Teacher (Xu et al., MedIA 2023), docs/methods/acmt.md.

Upstream: lemoshu/AC-MT code/train_ACMT_{Ent,MU,PErr}_3D.py and code/train_ACMT_SErr_3D_cl2.py, one
script per ambiguity-selection strategy (`config.acmt.strategy`). Channels-last throughout: logits
[B, D, H, W, C], labels [B, D, H, W].

Per step, batch [L1, L2, U1, U2] with labeled_batch_size 2 (U = the unlabeled volumes):
  * student forward on all four (train mode), supervised 0.5 * (CE + DiceLoss(2)) on [:2], DiceLoss
    being SSL4MIS's per-class squared-denominator Dice averaged over both classes;
  * teacher (EMA params, train mode: dropout on, batch statistics) on U + clamp(0.1 N, +-0.2) gives the
    consistency target; dist = (softmax(student_U) - softmax(teacher))^2 per element;
  * the strategy (jaxseg/methods/acmt/strategies.py) selects where dist counts (all masks are
    non-differentiable):
      ent:  normalised entropy of the STUDENT's U prediction >= 0.75 + 0.2 sigmoid_rampup(step, 8000);
            mask duplicated over the C channels, loss = sum(mask dist) / (sum(mask) + 1e-16);
      mu:   T = 8 stochastic STUDENT predictions of U (T / 2 forwards on [U, U] + fresh noise, one
            vmapped forward), entropy of their mean (nats) >= (0.75 + 0.15 sigmoid_rampup(step, 8000))
            ln 2; one-channel mask, so the denominator counts voxels once (no factor C);
      perr: 10 stochastic teacher passes on clean U (vmapped) give std(sigmoid(logits / 2)) (unbiased)
            and mean block_eight features; certain channels of the clean teacher's softmax give a
            rectified label, confidence-weighted class prototypes of the trilinearly upsampled features,
            and the nearest-prototype class; voxels where it disagrees with the student's argmax are
            "noisy" (consistency there), the rest "clean" (entropy minimised there);
      serr: confident learning (cleanlab find_label_issues, jaxseg/methods/acmt/confident_learning.py)
            with the student's argmax as labels and the clean teacher's softmax as pred_probs; consistency on
            the flagged voxels (mask duplicated over channels); upstream falls back to mean(dist) when
            cleanlab raises (all labels one non-zero class), reproduced;
  * loss = supervised + 0.1 sigmoid_rampup(step // 150, 40) * consistency;
  * EMA teacher, alpha = min(1 - 1/(step + 1), 0.99), parameters only.

Upstream quirks kept for parity: MU's MC passes use the student, not the teacher, and their BN updates
reach the student's running statistics (composed here in upstream's order: main forward, then the
T / 2 MC forwards); Ent and S-Err normalise by 2 x voxels, MU by voxels; P-Err's masked entropy
multiplies the entropy of sample c by the clean mask of channel c (torch right-aligned broadcasting of
[B, X, Y, Z] against [B, C, X, Y, Z]; `config.acmt.perr_entropy_broadcast_quirk`).
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxseg import losses
from jaxseg import schedules
from jaxseg.methods import base
from jaxseg.methods import common
from jaxseg.methods.acmt import confident_learning
from jaxseg.methods.acmt import strategies
from jaxseg.state import TrainState

Array = jax.Array


# ----------------------------------------------------------------------------------------------
# Losses (AC-MT `code/utils/losses.py` and the inline code of the four scripts).


def dice_loss_per_class(probs: Array, labels: Array, smooth: float = 1e-5) -> Array:
  """SSL4MIS `losses.DiceLoss(n_classes)(probs, labels)`: mean over classes of 1 - Dice.

  Per class c over the whole batch: 1 - (2 sum(p_c y_c) + smooth) / (sum(p_c^2) + sum(y_c^2) + smooth),
  y_c the one-hot label; background included.

  Args:
    probs: softmax probabilities [B, ..., C].
    labels: int [B, ...].
  """
  n_classes = probs.shape[-1]
  onehot = jax.nn.one_hot(labels, n_classes, dtype=probs.dtype)
  axes = tuple(range(probs.ndim - 1))
  intersect = jnp.sum(probs * onehot, axis=axes)
  z_sum = jnp.sum(probs * probs, axis=axes)
  y_sum = jnp.sum(onehot * onehot, axis=axes)
  return jnp.mean(1.0 - (2.0 * intersect + smooth) / (z_sum + y_sum + smooth))


def supervised_loss(logits: Array, labels: Array) -> tuple[Array, Array, Array]:
  """0.5 * (CE + DiceLoss(C)) of the labeled slice. Returns (total, ce, dice).

  Args:
    logits: [B_l, D, H, W, C].
    labels: int [B_l, D, H, W].
  """
  ce = losses.cross_entropy(logits, labels)
  dice = dice_loss_per_class(jax.nn.softmax(logits, axis=-1), labels)
  return 0.5 * (ce + dice), ce, dice


# ----------------------------------------------------------------------------------------------
# Stochastic forward passes.


def _forward_with_features(model, params, batch_stats, images, dropout_rng):
  """Train-mode forward returning (logits, features dict, new batch_stats)."""
  (logits, features), mutated = model.apply(
    {"params": params, "batch_stats": batch_stats},
    images,
    train=True,
    return_features=True,
    rngs={"dropout": dropout_rng},
    mutable=["batch_stats"],
  )
  return logits, features, mutated.get("batch_stats", {})


def teacher_passes(
  model, params: Any, batch_stats: Any, images: Array, rng: Array, *, passes: int, chunk: int = 0
) -> tuple[Array, Array]:
  """P-Err's stochastic teacher predictions on the clean input, one vmapped forward.

  Returns:
    (logits [P, B, D, H, W, C], block_eight features [P, B, D/2, H/2, W/2, F]), gradient stopped.
  """

  def forward(key):
    logits, features, _ = _forward_with_features(model, params, batch_stats, images, key)
    return logits, features["x8"]

  logits, features = common.vmap_passes(forward, jax.random.split(rng, passes), chunk)
  return jax.lax.stop_gradient(logits), jax.lax.stop_gradient(features)


# ----------------------------------------------------------------------------------------------


class ACMT:
  """Method protocol: init / phases (one: train_step) / predict (jaxseg/methods/base.py)."""

  name = "acmt"
  samples_unlabeled = True
  host_targets = base.NO_HOST_TARGETS

  def __init__(self, config: ml_collections.ConfigDict):
    hp = config.acmt
    if hp.strategy not in strategies.STRATEGIES:
      raise ValueError(
        f"config.acmt.strategy={hp.strategy!r}: expected one of {strategies.STRATEGIES}"
      )
    if hp.strategy == "mu" and (hp.mu_passes < common.MC_COPIES or hp.mu_passes % common.MC_COPIES):
      raise ValueError(
        f"config.acmt.mu_passes={hp.mu_passes}: must be a positive multiple of {common.MC_COPIES}"
      )
    if hp.strategy == "perr" and hp.perr_passes < 2:
      raise ValueError(
        f"config.acmt.perr_passes={hp.perr_passes}: the unbiased std needs >= 2 passes"
      )
    if hp.strategy == "serr" and hp.serr_filter_by not in confident_learning.FILTERS:
      raise ValueError(
        f"config.acmt.serr_filter_by={hp.serr_filter_by!r}: expected one of "
        f"{confident_learning.FILTERS}"
      )
    n_unlabeled = config.batch_size - config.labeled_batch_size
    n_classes = config.model.kwargs.get("n_classes")
    if hp.strategy == "perr":
      if n_classes != 2:
        raise ValueError(
          f"config.acmt.strategy='perr' needs model.kwargs.n_classes == 2, got {n_classes}"
        )
      if hp.perr_entropy_broadcast_quirk and n_unlabeled not in (1, n_classes):
        raise ValueError(
          f"config.acmt.perr_entropy_broadcast_quirk=True needs batch_size - labeled_batch_size "
          f"({n_unlabeled}) to be {n_classes} or 1, as upstream's broadcast does; set it to False"
        )
    self.config = config
    self.hp = hp
    self.pass_chunk = common.pass_chunk(hp.get("pass_chunk", 0))
    self.model = common.build_model(config)
    self.tx = common.make_optimizer(config)
    self.labeled_batch_size = config.labeled_batch_size
    # Upstream ramps the Ent / MU thresholds over max_iterations, the run length.
    self.threshold_rampup = float(hp.get("threshold_rampup") or config.total_steps)

  def init(self, rng: jax.Array, example_batch) -> TrainState:
    return common.new_teacher_state(self, rng, example_batch)

  def phases(self) -> tuple[base.Phase, ...]:
    return (base.Phase("train", 0, self.train_step),)

  def train_step(self, state: TrainState, batch):
    """batch: image [B, D, H, W, 1], label [B, D, H, W]; the first labeled_batch_size are labeled."""
    hp, lb = self.hp, self.labeled_batch_size
    rng = jax.random.fold_in(state.rng, state.step)
    student_rng, noise_rng, teacher_rng, clean_rng, passes_rng = jax.random.split(rng, 5)
    images, labels = batch["image"], batch["label"]
    unlabeled = images[lb:]
    ema_params, ema_stats = state.aux["ema_params"], state.aux["ema_batch_stats"]

    noisy = unlabeled + common.teacher_noise(
      noise_rng, unlabeled.shape, hp.noise_std, hp.noise_clip
    )
    teacher_noisy, teacher_stats = common.train_forward(
      self.model, ema_params, ema_stats, noisy, teacher_rng
    )
    teacher_noisy = jax.lax.stop_gradient(teacher_noisy)
    # Ent's upstream also runs an unused clean teacher forward; it only touches the teacher's BN
    # running statistics, which a train-mode teacher never reads, so it is skipped.
    teacher_clean = None
    if hp.strategy in ("perr", "serr"):
      teacher_clean, _ = common.train_forward(
        self.model, ema_params, ema_stats, unlabeled, clean_rng
      )
      teacher_clean = jax.lax.stop_gradient(teacher_clean)
    if hp.strategy == "mu":
      mc_logits, mc_stats = common.mc_passes(
        self.model,
        state.params,
        state.batch_stats,
        unlabeled,
        passes_rng,
        passes=hp.mu_passes,
        noise_std=hp.noise_std,
        noise_clip=hp.noise_clip,
        chunk=self.pass_chunk,
      )
    if hp.strategy == "perr":
      pass_logits, pass_features = teacher_passes(
        self.model,
        ema_params,
        ema_stats,
        unlabeled,
        passes_rng,
        passes=hp.perr_passes,
        chunk=self.pass_chunk,
      )
    weight = schedules.consistency_weight(
      state.step, hp.consistency, hp.consistency_rampup, hp.iters_per_epoch
    )

    def loss_fn(params):
      logits, batch_stats = common.train_forward(
        self.model, params, state.batch_stats, images, student_rng
      )
      supervised, ce, dice = supervised_loss(logits[:lb], labels[:lb])
      student = logits[lb:]
      extra = {}
      if hp.strategy == "ent":
        consistency, out = strategies.ent_selection(
          student,
          teacher_noisy,
          state.step,
          low=hp.ent_threshold,
          high=hp.ent_threshold_max,
          rampup=self.threshold_rampup,
        )
        extra = {"threshold": out["threshold"], "selected_fraction": jnp.mean(out["mask"])}
      elif hp.strategy == "mu":
        consistency, out = strategies.mu_selection(
          student,
          teacher_noisy,
          mc_logits,
          state.step,
          low=hp.mu_threshold,
          span=hp.mu_threshold_span,
          rampup=self.threshold_rampup,
        )
        extra = {
          "threshold": out["threshold"],
          "selected_fraction": jnp.mean(out["mask"]),
          "uncertainty_mean": jnp.mean(out["uncertainty"]),
        }
      elif hp.strategy == "perr":
        consistency, out = strategies.perr_selection(
          student,
          teacher_clean,
          teacher_noisy,
          pass_logits,
          pass_features,
          uncertainty_th=hp.perr_uncertainty_th,
          temperature=hp.perr_temperature,
          broadcast_quirk=hp.perr_entropy_broadcast_quirk,
        )
        extra = {
          "selected_fraction": jnp.mean(out["noisy"]),
          "masked_entropy": out["masked_entropy"],
        }
      else:
        consistency, out = strategies.serr_selection(
          student, teacher_clean, teacher_noisy, filter_by=hp.serr_filter_by
        )
        extra = {
          "selected_fraction": jnp.mean(out["mask"]),
          "cleanlab_fallback": out["fallback"].astype(jnp.float32),
        }
      loss = supervised + weight * consistency
      metrics = {
        "loss": loss,
        "loss_ce": ce,
        "loss_dice": dice,
        "loss_consistency": consistency,
        "consistency_weight": weight,
        **extra,
      }
      return loss, (batch_stats, metrics)

    grads, (batch_stats, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
    if hp.strategy == "mu":
      # Upstream's MC passes run the student in train mode after its main forward.
      batch_stats = common.compose_bn_stats(batch_stats, state.batch_stats, mc_stats)
    # The teacher's running statistics are never read (it always runs in train mode).
    new_state = common.apply_gradients_and_ema(
      self.tx, state, grads, batch_stats, hp.ema_decay, teacher_stats
    )
    return new_state, metrics

  def predict(self, state: TrainState, images):
    """The student in eval mode, as upstream test_3D.py evaluates it."""
    return common.eval_probabilities(self.model, state.params, state.batch_stats, images)
