"""AC-MT: ambiguity-consensus Mean Teacher (Xu et al., MedIA 2023), spec acmt.md.

Upstream: lemoshu/AC-MT code/train_ACMT_{Ent,MU,PErr}_3D.py and code/train_ACMT_SErr_3D_cl2.py, one
script per ambiguity-selection strategy (`config.acmt.strategy`). Channels-last throughout: logits
[B, D, H, W, C], labels [B, D, H, W].

Per step, batch [L1, L2, U1, U2] with labeled_batch_size 2 (U = the unlabeled volumes):
  * student forward on all four (train mode), supervised 0.5 * (CE + DiceLoss(2)) on [:2], DiceLoss
    being SSL4MIS's per-class squared-denominator Dice averaged over both classes;
  * teacher (EMA params, train mode: dropout on, batch statistics) on U + clamp(0.1 N, +-0.2) gives the
    consistency target; dist = (softmax(student_U) - softmax(teacher))^2 per element;
  * the strategy selects where dist counts (all masks are non-differentiable):
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
      serr: confident learning (cleanlab find_label_issues, `jaxseg.confident_learning`) with the
            student's argmax as labels and the clean teacher's softmax as pred_probs; consistency on
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
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxseg import confident_learning
from jaxseg import losses
from jaxseg import schedules
from jaxseg.methods import common
from jaxseg.models import layers
from jaxseg.state import TrainState

Array = jax.Array

STRATEGIES = ("ent", "mu", "perr", "serr")
# Upstream's MU loop feeds the unlabeled sub-batch repeated twice to each of its T / 2 forwards.
MC_COPIES = 2


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


def normalized_entropy(probs: Array, eps: float = 1e-6) -> Array:
  """-sum_c p log(p + eps) / ln C over the class axis: [B, ..., C] -> [B, ...] in [0, 1].

  AC-MT `entropy_map` (Ent) and the inner term of `masked_entropy_loss` (P-Err); C = 2 upstream.
  """
  return losses.entropy_map(probs, eps=eps, keepdims=False) / math.log(probs.shape[-1])


def masked_mean(dist: Array, mask: Array) -> Array:
  """sum(mask * dist) / (sum(mask) + 1e-16), `mask` broadcast against `dist` in the numerator only.

  With a mask duplicated over the C channels (Ent, S-Err, P-Err) the denominator counts every voxel C
  times; with a one-channel mask [B, ..., 1] (MU) it counts voxels once.
  """
  mask = mask.astype(dist.dtype)
  return jnp.sum(mask * dist) / (jnp.sum(mask) + 1e-16)


def masked_entropy_loss(probs: Array, mask: Array, broadcast_quirk: bool = True) -> Array:
  """AC-MT `masked_entropy_loss(p, mask)` of train_ACMT_PErr_3D.py: mean(mask * entropy).

  Upstream multiplies the normalised entropy e [B, X, Y, Z] by mask [B, C, X, Y, Z]; torch aligns
  dimensions from the right, so e's batch axis meets the mask's channel axis:
  out[b, c] = mask[b, c] * e[c] (the quirk; valid for B == C or B == 1). The intended product is
  mask[b, c] * e[b].

  Args:
    probs: [B, ..., C] probabilities.
    mask: [B, ..., C] (the clean mask).
    broadcast_quirk: reproduce upstream's alignment (parity) or use the intended one.

  Returns:
    Scalar, the mean over all B * C * voxels products.
  """
  ent = normalized_entropy(probs)  # [B, ...]
  mask = mask.astype(probs.dtype)
  if broadcast_quirk:
    b, c = mask.shape[0], mask.shape[-1]
    if b == c:
      aligned = jnp.moveaxis(ent, 0, -1)[None]  # [1, ..., B] with B read as the channel axis
    elif b == 1:
      aligned = ent[..., None]
    else:
      raise ValueError(
          f"masked_entropy_loss: upstream's broadcast of entropy {ent.shape} against mask {mask.shape} "
          f"needs the unlabeled batch ({b}) to equal the class count ({c}) or 1 (torch would raise); "
          "set config.acmt.perr_entropy_broadcast_quirk=False for the intended per-sample product")
  else:
    aligned = ent[..., None]
  return jnp.mean(mask * aligned)


# ----------------------------------------------------------------------------------------------
# The four selections. Each takes the student's unlabeled logits and the noisy teacher's logits
# ([B_u, D, H, W, C]) and returns (consistency loss, dict of intermediates).


def ent_selection(student_logits: Array, teacher_noisy_logits: Array, step, *, low: float = 0.75,
                  high: float = 0.95, rampup: float = 8000.0) -> tuple[Array, dict]:
  """Ent: consistency on voxels whose student entropy reaches the ramped threshold.

  train_ACMT_Ent_3D.py: threshold = low + (high - low) sigmoid_rampup(step, rampup) (raw steps),
  mask = entropy >= threshold duplicated over the C channels.
  """
  dist = losses.softmax_mse_loss(student_logits, teacher_noisy_logits)
  emap = normalized_entropy(jax.nn.softmax(jax.lax.stop_gradient(student_logits), axis=-1))
  threshold = low + (high - low) * schedules.sigmoid_rampup(step, rampup)
  mask = jnp.broadcast_to((emap >= threshold)[..., None], dist.shape).astype(dist.dtype)
  return masked_mean(dist, mask), {"dist": dist, "entropy": emap, "threshold": threshold,
                                   "mask": mask}


def mu_uncertainty(mc_logits: Array, eps: float = 1e-6) -> Array:
  """Entropy (nats) of the mean softmax over T predictions: [T, B, ..., C] -> [B, ..., 1]."""
  mean_probs = jnp.mean(jax.nn.softmax(mc_logits.astype(jnp.float32), axis=-1), axis=0)
  return losses.entropy_map(mean_probs, eps=eps, keepdims=True)


def mu_selection(student_logits: Array, teacher_noisy_logits: Array, mc_logits: Array, step, *,
                 low: float = 0.75, span: float = 0.15, rampup: float = 8000.0) -> tuple[Array, dict]:
  """MU: consistency on voxels of HIGH MC uncertainty (the opposite of UA-MT).

  train_ACMT_MU_3D.py: threshold = (low + span sigmoid_rampup(step, rampup)) ln 2; one-channel mask,
  denominator sum(mask) with no factor C.

  Args:
    mc_logits: [T, B_u, ..., C], pass t of sample b = upstream row t * B_u + b.
  """
  dist = losses.softmax_mse_loss(student_logits, teacher_noisy_logits)
  uncertainty = mu_uncertainty(mc_logits)
  threshold = (low + span * schedules.sigmoid_rampup(step, rampup)) * math.log(2.0)
  mask = (uncertainty >= threshold).astype(dist.dtype)
  return masked_mean(dist, mask), {"dist": dist, "uncertainty": uncertainty,
                                   "threshold": threshold, "mask": mask}


def prototype(features: Array, mask: Array, confidence: Array) -> Array:
  """AC-MT `getPrototype`: sum(f * mask * conf) / (sum(mask * conf) + 1e-5) per sample.

  Args:
    features: [B, D, H, W, F] (already at label resolution).
    mask: [B, D, H, W] binary.
    confidence: [B, D, H, W] class probability.

  Returns:
    [B, F].
  """
  weight = (mask.astype(features.dtype) * confidence)[..., None]
  axes = tuple(range(1, features.ndim - 1))
  return jnp.sum(features * weight, axis=axes) / (jnp.sum(weight, axis=axes) + 1e-5)


def prototype_distance(features: Array, proto: Array) -> Array:
  """AC-MT `calDist`: squared L2 distance to the sample's prototype, [B, ..., F] -> [B, ..., 1]."""
  offset = features - proto.reshape(proto.shape[:1] + (1,) * (features.ndim - 2) + proto.shape[1:])
  return jnp.sum(offset * offset, axis=-1, keepdims=True)


def upsample_features(features: Array, spatial: tuple) -> Array:
  """Trilinear resize [B, d, h, w, F] -> [B, *spatial, F] (torch F.interpolate, align_corners=False).

  jax.image.resize uses half-pixel centres like align_corners=False; upsampling needs no antialias.
  """
  shape = (features.shape[0],) + tuple(spatial) + (features.shape[-1],)
  return jax.image.resize(features.astype(jnp.float32), shape, method="trilinear")


def perr_selection(student_logits: Array, teacher_logits: Array, teacher_noisy_logits: Array,
                   pass_logits: Array, pass_features: Array, *, uncertainty_th: float = 0.1,
                   temperature: float = 2.0, broadcast_quirk: bool = True) -> tuple[Array, dict]:
  """P-Err: prototype-based label-noise identification (train_ACMT_PErr_3D.py).

  Args:
    student_logits: [B_u, D, H, W, C] (C = 2: object / background prototypes).
    teacher_logits: clean-input teacher logits [B_u, D, H, W, C].
    teacher_noisy_logits: noisy-input teacher logits (the consistency target).
    pass_logits: [P, B_u, D, H, W, C], P stochastic teacher passes on the clean input.
    pass_features: [P, B_u, d, h, w, F], their block_eight features.
    uncertainty_th: certain where std < this.
    temperature: sigmoid(logits / temperature) before the std.
    broadcast_quirk: see `masked_entropy_loss`.

  Returns:
    (loss, intermediates): loss = sum(noisy dist) / (sum(noisy) + 1e-16) + masked entropy on clean.
  """
  if student_logits.shape[-1] != 2:
    raise ValueError(f"perr_selection: P-Err builds object/background prototypes and needs 2 classes, "
                     f"got logits {student_logits.shape}")
  dist = losses.softmax_mse_loss(student_logits, teacher_noisy_logits)
  student_probs = jax.nn.softmax(student_logits, axis=-1)
  teacher_probs = jax.nn.softmax(teacher_logits.astype(jnp.float32), axis=-1)
  # torch.std: unbiased over the P passes, per channel.
  uncertainty = jnp.std(jax.nn.sigmoid(pass_logits.astype(jnp.float32) / temperature), axis=0, ddof=1)
  certain = (uncertainty < uncertainty_th).astype(jnp.float32)
  rect_label = jnp.argmax(certain * teacher_probs, axis=-1)  # ties (all uncertain) -> background
  features_mean = jnp.mean(pass_features.astype(jnp.float32), axis=0)
  features = upsample_features(features_mean, student_logits.shape[1:-1])
  obj_proto = prototype(features, rect_label == 1, teacher_probs[..., 1])
  bg_proto = prototype(features, rect_label == 0, teacher_probs[..., 0])
  d_obj = prototype_distance(features, obj_proto)
  d_bg = prototype_distance(features, bg_proto)
  # channel 0 = background nearer, channel 1 = object nearer; equal distances select neither.
  selection = jnp.concatenate([d_obj > d_bg, d_obj < d_bg], axis=-1).astype(jnp.float32)
  student_onehot = jax.nn.one_hot(jnp.argmax(jax.lax.stop_gradient(student_probs), axis=-1), 2,
                                  dtype=jnp.float32)
  clean = (selection == student_onehot).astype(jnp.float32)
  noisy = clean == 0
  entropy_term = masked_entropy_loss(student_probs, clean, broadcast_quirk)
  loss = masked_mean(dist, noisy) + entropy_term
  return loss, {"dist": dist, "uncertainty": uncertainty, "certain": certain,
                "rect_label": rect_label, "features_mean": features_mean, "features": features,
                "obj_prototype": obj_proto,
                "bg_prototype": bg_proto, "dist_obj": d_obj, "dist_bg": d_bg, "selection": selection,
                "clean": clean, "noisy": noisy, "masked_entropy": entropy_term}


def serr_selection(student_logits: Array, teacher_logits: Array, teacher_noisy_logits: Array, *,
                   filter_by: str = "both") -> tuple[Array, dict]:
  """S-Err: confident learning on the student's hard labels (train_ACMT_SErr_3D_cl2.py).

  labels = argmax of the student's U prediction, pred_probs = clean teacher softmax, both flattened
  in (B, D, H, W) order; flagged voxels get the consistency (mask duplicated over channels). Where
  cleanlab would raise (every label the same non-zero class) upstream's fallback mean(dist) is used.
  """
  dist = losses.softmax_mse_loss(student_logits, teacher_noisy_logits)
  n_classes = student_logits.shape[-1]
  labels = jnp.argmax(jax.lax.stop_gradient(student_logits), axis=-1).reshape(-1)
  pred_probs = jax.nn.softmax(teacher_logits.astype(jnp.float32), axis=-1).reshape(-1, n_classes)
  issues = confident_learning.find_label_issues(labels, pred_probs, filter_by=filter_by)
  mask = jnp.broadcast_to(issues.reshape(dist.shape[:-1] + (1,)), dist.shape).astype(dist.dtype)
  fallback = confident_learning.cleanlab_would_raise(labels)
  loss = jnp.where(fallback, jnp.mean(dist), masked_mean(dist, mask))
  return loss, {"dist": dist, "mask": mask, "fallback": fallback}


# ----------------------------------------------------------------------------------------------
# Stochastic forward passes.


def _forward_with_features(model, params, batch_stats, images, dropout_rng):
  """Train-mode forward returning (logits, features dict, new batch_stats)."""
  (logits, features), mutated = model.apply(
      {"params": params, "batch_stats": batch_stats}, images, train=True, return_features=True,
      rngs={"dropout": dropout_rng}, mutable=["batch_stats"])
  return logits, features, mutated.get("batch_stats", {})


def mc_student_passes(model, params: Any, batch_stats: Any, images: Array, rng: Array, *,
                      passes: int, noise_std: float, noise_clip: float,
                      chunk: int = 0) -> tuple[Array, Any]:
  """MU's T stochastic predictions: T / 2 forwards, each on [U, U] + fresh noise, as one vmap
  (`chunk` > 0: vmapped groups of that many forwards, see common.vmap_passes).

  Forward f's copy c of sample b is pass f * 2 + c (upstream row (f * 2 + c) * B + b), so the result
  regroups row-major to [T, B, ...]. BN uses each forward's own batch statistics.

  Returns:
    (logits [T, B, D, H, W, C] with gradient stopped, per-forward BN statistics with a leading
    [T / 2] axis, each computed from `batch_stats`).
  """
  n_forward = passes // MC_COPIES
  tiled = jnp.concatenate([images] * MC_COPIES, axis=0)

  def forward(key):
    noise_key, dropout_key = jax.random.split(key)
    noisy = tiled + common.teacher_noise(noise_key, tiled.shape, noise_std, noise_clip)
    return common.train_forward(model, params, batch_stats, noisy, dropout_key)

  logits, stats = common.vmap_passes(forward, jax.random.split(rng, n_forward), chunk)
  logits = logits.reshape((passes, images.shape[0]) + logits.shape[2:])
  return jax.lax.stop_gradient(logits), jax.lax.stop_gradient(stats)


def compose_bn_updates(after_main: Any, start: Any, per_forward: Any,
                       momentum: float = layers.BatchNorm.momentum) -> Any:
  """Running statistics after the main forward then the vmapped forwards, in sequence.

  Each vmapped forward f produced new_f = (1 - m) start + m s_f from the same `start`; applied one
  after the other on top of `after_main` (torch order) they give
  (1 - m)^F after_main + sum_f (1 - m)^(F - 1 - f) (new_f - (1 - m) start).
  """
  keep = 1.0 - momentum

  def combine(main, s0, new):
    n = new.shape[0]
    increments = new - keep * s0[None]
    weights = keep ** jnp.arange(n - 1, -1, -1, dtype=new.dtype)
    weights = weights.reshape((n,) + (1,) * (new.ndim - 1))
    return keep ** n * main + jnp.sum(weights * increments, axis=0)

  return jax.tree.map(combine, after_main, start, per_forward)


def teacher_passes(model, params: Any, batch_stats: Any, images: Array, rng: Array, *,
                   passes: int, chunk: int = 0) -> tuple[Array, Array]:
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
  """Method protocol: init / train_step / predict (see jaxseg/methods/__init__.py)."""

  name = "acmt"

  def __init__(self, config: ml_collections.ConfigDict):
    hp = config.acmt
    if hp.strategy not in STRATEGIES:
      raise ValueError(f"config.acmt.strategy={hp.strategy!r}: expected one of {STRATEGIES}")
    if hp.strategy == "mu" and (hp.mu_passes < MC_COPIES or hp.mu_passes % MC_COPIES):
      raise ValueError(f"config.acmt.mu_passes={hp.mu_passes}: must be a positive multiple of "
                       f"{MC_COPIES}")
    if hp.strategy == "perr" and hp.perr_passes < 2:
      raise ValueError(f"config.acmt.perr_passes={hp.perr_passes}: the unbiased std needs >= 2 passes")
    if hp.strategy == "serr" and hp.serr_filter_by not in confident_learning.FILTERS:
      raise ValueError(f"config.acmt.serr_filter_by={hp.serr_filter_by!r}: expected one of "
                       f"{confident_learning.FILTERS}")
    n_unlabeled = config.batch_size - config.labeled_batch_size
    n_classes = config.model.kwargs.get("n_classes")
    if hp.strategy == "perr":
      if n_classes != 2:
        raise ValueError(f"config.acmt.strategy='perr' needs model.kwargs.n_classes == 2, got {n_classes}")
      if hp.perr_entropy_broadcast_quirk and n_unlabeled not in (1, n_classes):
        raise ValueError(
            f"config.acmt.perr_entropy_broadcast_quirk=True needs batch_size - labeled_batch_size "
            f"({n_unlabeled}) to be {n_classes} or 1, as upstream's broadcast does; set it to False")
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

  def train_step(self, state: TrainState, batch):
    """batch: image [B, D, H, W, 1], label [B, D, H, W]; the first labeled_batch_size are labeled."""
    hp, lb = self.hp, self.labeled_batch_size
    rng = jax.random.fold_in(state.rng, state.step)
    student_rng, noise_rng, teacher_rng, clean_rng, passes_rng = jax.random.split(rng, 5)
    images, labels = batch["image"], batch["label"]
    unlabeled = images[lb:]
    ema_params, ema_stats = state.aux["ema_params"], state.aux["ema_batch_stats"]

    noisy = unlabeled + common.teacher_noise(noise_rng, unlabeled.shape, hp.noise_std, hp.noise_clip)
    teacher_noisy, teacher_stats = common.train_forward(self.model, ema_params, ema_stats, noisy,
                                                        teacher_rng)
    teacher_noisy = jax.lax.stop_gradient(teacher_noisy)
    # Ent's upstream also runs an unused clean teacher forward; it only touches the teacher's BN
    # running statistics, which a train-mode teacher never reads, so it is skipped.
    teacher_clean = None
    if hp.strategy in ("perr", "serr"):
      teacher_clean, _ = common.train_forward(self.model, ema_params, ema_stats, unlabeled, clean_rng)
      teacher_clean = jax.lax.stop_gradient(teacher_clean)
    if hp.strategy == "mu":
      mc_logits, mc_stats = mc_student_passes(
          self.model, state.params, state.batch_stats, unlabeled, passes_rng, passes=hp.mu_passes,
          noise_std=hp.noise_std, noise_clip=hp.noise_clip, chunk=self.pass_chunk)
    if hp.strategy == "perr":
      pass_logits, pass_features = teacher_passes(self.model, ema_params, ema_stats, unlabeled,
                                                  passes_rng, passes=hp.perr_passes,
                                                  chunk=self.pass_chunk)
    weight = schedules.consistency_weight(
        state.step, hp.consistency, hp.consistency_rampup, hp.iters_per_epoch)

    def loss_fn(params):
      logits, batch_stats = common.train_forward(self.model, params, state.batch_stats, images,
                                                 student_rng)
      supervised, ce, dice = supervised_loss(logits[:lb], labels[:lb])
      student = logits[lb:]
      extra = {}
      if hp.strategy == "ent":
        consistency, out = ent_selection(student, teacher_noisy, state.step, low=hp.ent_threshold,
                                         high=hp.ent_threshold_max, rampup=self.threshold_rampup)
        extra = {"threshold": out["threshold"], "selected_fraction": jnp.mean(out["mask"])}
      elif hp.strategy == "mu":
        consistency, out = mu_selection(student, teacher_noisy, mc_logits, state.step,
                                        low=hp.mu_threshold, span=hp.mu_threshold_span,
                                        rampup=self.threshold_rampup)
        extra = {"threshold": out["threshold"], "selected_fraction": jnp.mean(out["mask"]),
                 "uncertainty_mean": jnp.mean(out["uncertainty"])}
      elif hp.strategy == "perr":
        consistency, out = perr_selection(
            student, teacher_clean, teacher_noisy, pass_logits, pass_features,
            uncertainty_th=hp.perr_uncertainty_th, temperature=hp.perr_temperature,
            broadcast_quirk=hp.perr_entropy_broadcast_quirk)
        extra = {"selected_fraction": jnp.mean(out["noisy"]),
                 "masked_entropy": out["masked_entropy"]}
      else:
        consistency, out = serr_selection(student, teacher_clean, teacher_noisy,
                                          filter_by=hp.serr_filter_by)
        extra = {"selected_fraction": jnp.mean(out["mask"]),
                 "cleanlab_fallback": out["fallback"].astype(jnp.float32)}
      loss = supervised + weight * consistency
      metrics = {"loss": loss, "loss_ce": ce, "loss_dice": dice, "loss_consistency": consistency,
                 "consistency_weight": weight, **extra}
      return loss, (batch_stats, metrics)

    grads, (batch_stats, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
    if hp.strategy == "mu":
      # Upstream's MC passes run the student in train mode after its main forward.
      batch_stats = compose_bn_updates(batch_stats, state.batch_stats, mc_stats)
    # The teacher's running statistics are never read (it always runs in train mode).
    new_state = common.apply_gradients_and_ema(self.tx, state, grads, batch_stats, hp.ema_decay,
                                               teacher_stats)
    return new_state, metrics

  def predict(self, state: TrainState, images):
    """The student in eval mode, as upstream test_3D.py evaluates it."""
    return common.eval_probabilities(self.model, state.params, state.batch_stats, images)
