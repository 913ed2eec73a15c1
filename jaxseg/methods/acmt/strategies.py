"""AC-MT's four consistency selections (Ent, MU, P-Err, S-Err) and the loss terms they use.

Upstream: lemoshu/AC-MT code/train_ACMT_{ENT,MU,PErr,SErr}_3D.py and code/utils/losses.py. Each
selection takes the student's unlabeled logits and the noisy teacher's logits ([B_u, D, H, W, C])
and returns (consistency loss, dict of intermediates); docs/methods/acmt.md gives the rules.
"""

import math

import jax
import jax.numpy as jnp

from jaxseg import losses
from jaxseg import schedules
from jaxseg.methods import common
from jaxseg.methods.acmt import confident_learning

Array = jax.Array

STRATEGIES = ("ent", "mu", "perr", "serr")


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
  ent = losses.normalized_entropy(probs)  # [B, ...]
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
        "set config.acmt.perr_entropy_broadcast_quirk=False for the intended per-sample product"
      )
  else:
    aligned = ent[..., None]
  return jnp.mean(mask * aligned)


def ent_selection(
  student_logits: Array,
  teacher_noisy_logits: Array,
  step,
  *,
  low: float = 0.75,
  high: float = 0.95,
  rampup: float = 8000.0,
) -> tuple[Array, dict]:
  """Ent: consistency on voxels whose student entropy reaches the ramped threshold.

  train_ACMT_Ent_3D.py: threshold = low + (high - low) sigmoid_rampup(step, rampup) (raw steps),
  mask = entropy >= threshold duplicated over the C channels.
  """
  dist = losses.softmax_mse_loss(student_logits, teacher_noisy_logits)
  emap = losses.normalized_entropy(jax.nn.softmax(jax.lax.stop_gradient(student_logits), axis=-1))
  threshold = low + (high - low) * schedules.sigmoid_rampup(step, rampup)
  mask = jnp.broadcast_to((emap >= threshold)[..., None], dist.shape).astype(dist.dtype)
  return losses.masked_mean(dist, mask), {
    "dist": dist,
    "entropy": emap,
    "threshold": threshold,
    "mask": mask,
  }


def mu_selection(
  student_logits: Array,
  teacher_noisy_logits: Array,
  mc_logits: Array,
  step,
  *,
  low: float = 0.75,
  span: float = 0.15,
  rampup: float = 8000.0,
) -> tuple[Array, dict]:
  """MU: consistency on voxels of HIGH MC uncertainty (the opposite of UA-MT).

  train_ACMT_MU_3D.py: threshold = (low + span sigmoid_rampup(step, rampup)) ln 2; one-channel mask,
  denominator sum(mask) with no factor C.

  Args:
    mc_logits: [T, B_u, ..., C], pass t of sample b = upstream row t * B_u + b.
  """
  dist = losses.softmax_mse_loss(student_logits, teacher_noisy_logits)
  _, uncertainty = common.mc_uncertainty(mc_logits)
  threshold = (low + span * schedules.sigmoid_rampup(step, rampup)) * math.log(2.0)
  mask = (uncertainty >= threshold).astype(dist.dtype)
  return losses.masked_mean(dist, mask), {
    "dist": dist,
    "uncertainty": uncertainty,
    "threshold": threshold,
    "mask": mask,
  }


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


def perr_selection(
  student_logits: Array,
  teacher_logits: Array,
  teacher_noisy_logits: Array,
  pass_logits: Array,
  pass_features: Array,
  *,
  uncertainty_th: float = 0.1,
  temperature: float = 2.0,
  broadcast_quirk: bool = True,
) -> tuple[Array, dict]:
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
    raise ValueError(
      f"perr_selection: P-Err builds object/background prototypes and needs 2 classes, "
      f"got logits {student_logits.shape}"
    )
  dist = losses.softmax_mse_loss(student_logits, teacher_noisy_logits)
  student_probs = jax.nn.softmax(student_logits, axis=-1)
  teacher_probs = jax.nn.softmax(teacher_logits.astype(jnp.float32), axis=-1)
  # torch.std: unbiased over the P passes, per channel.
  uncertainty = jnp.std(
    jax.nn.sigmoid(pass_logits.astype(jnp.float32) / temperature), axis=0, ddof=1
  )
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
  student_onehot = jax.nn.one_hot(
    jnp.argmax(jax.lax.stop_gradient(student_probs), axis=-1), 2, dtype=jnp.float32
  )
  clean = (selection == student_onehot).astype(jnp.float32)
  noisy = clean == 0
  entropy_term = masked_entropy_loss(student_probs, clean, broadcast_quirk)
  loss = losses.masked_mean(dist, noisy) + entropy_term
  return loss, {
    "dist": dist,
    "uncertainty": uncertainty,
    "certain": certain,
    "rect_label": rect_label,
    "features_mean": features_mean,
    "features": features,
    "obj_prototype": obj_proto,
    "bg_prototype": bg_proto,
    "dist_obj": d_obj,
    "dist_bg": d_bg,
    "selection": selection,
    "clean": clean,
    "noisy": noisy,
    "masked_entropy": entropy_term,
  }


def serr_selection(
  student_logits: Array,
  teacher_logits: Array,
  teacher_noisy_logits: Array,
  *,
  filter_by: str = "both",
) -> tuple[Array, dict]:
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
  loss = jnp.where(fallback, jnp.mean(dist), losses.masked_mean(dist, mask))
  return loss, {"dist": dist, "mask": mask, "fallback": fallback}
