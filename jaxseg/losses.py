"""Segmentation and consistency losses of UA-MT / Mean Teacher, channels-last.

Upstream: `yulequan/UA-MT: code/utils/losses.py` and the inline losses of
`code/train_LA_meanteacher_certainty_unlabel.py`. Torch puts classes on axis 1; here the class axis is -1,
so logits are [B, D, H, W, C] (or [B, H, W, C]) and integer labels [B, D, H, W]. All functions are pure
jnp and jit-able.
"""
import math

import jax
import jax.numpy as jnp

Array = jax.Array


def dice_loss(score: Array, target: Array, smooth: float = 1e-5) -> Array:
  """1 - (2 sum(s t) + smooth) / (sum(s^2) + sum(t^2) + smooth), one joint sum over every element.

  UA-MT `losses.dice_loss`: no per-sample or per-class split and *squared* denominators. Training calls it
  with score = softmax(logits)[..., 1] and target = (labels == 1).

  Args:
    score: probabilities, any shape (e.g. [B, D, H, W]).
    target: same shape, bool / int / float (cast to float).
    smooth: additive smoothing of numerator and denominator.

  Returns:
    Scalar loss.
  """
  target = target.astype(score.dtype)
  intersect = jnp.sum(score * target)
  denom = jnp.sum(score * score) + jnp.sum(target * target)
  return 1.0 - (2.0 * intersect + smooth) / (denom + smooth)


def dice_loss1(score: Array, target: Array, smooth: float = 1e-5) -> Array:
  """Like `dice_loss` but with plain sums in the denominator (UA-MT `losses.dice_loss1`)."""
  target = target.astype(score.dtype)
  intersect = jnp.sum(score * target)
  return 1.0 - (2.0 * intersect + smooth) / (jnp.sum(score) + jnp.sum(target) + smooth)


def softmax_dice_loss(input_logits: Array, target_logits: Array) -> Array:
  """Mean over classes of dice_loss1(softmax(input)[..., c], softmax(target)[..., c]).

  UA-MT `losses.softmax_dice_loss`: the target is the soft (teacher) probability map.

  Args:
    input_logits: [B, ..., C].
    target_logits: [B, ..., C].

  Returns:
    Scalar loss.
  """
  _check_same_shape("softmax_dice_loss", input_logits, target_logits)
  p = jax.nn.softmax(input_logits, axis=-1)
  q = jax.nn.softmax(target_logits, axis=-1)
  # Per-class plain-sum dice, reduced over every axis but the class axis.
  axes = tuple(range(p.ndim - 1))
  smooth = 1e-5
  per_class = 1.0 - (2.0 * jnp.sum(p * q, axis=axes) + smooth) / (
      jnp.sum(p, axis=axes) + jnp.sum(q, axis=axes) + smooth)
  return jnp.mean(per_class)


def softmax_mse_loss(input_logits: Array, target_logits: Array) -> Array:
  """Elementwise (softmax(input) - softmax(target))^2, shape [B, ..., C], no reduction.

  UA-MT `losses.softmax_mse_loss` (the per-voxel map the masked UA-MT consistency reduces).
  """
  _check_same_shape("softmax_mse_loss", input_logits, target_logits)
  diff = jax.nn.softmax(input_logits, axis=-1) - jax.nn.softmax(target_logits, axis=-1)
  return diff * diff


def softmax_kl_loss(input_logits: Array, target_logits: Array) -> Array:
  """Elementwise KL term q (log q - log_softmax(input)), q = softmax(target); shape [B, ..., C].

  UA-MT `losses.softmax_kl_loss` = `F.kl_div(log_softmax(a), softmax(b), reduction='none')`, where
  q log q is taken as 0 at q == 0 (xlogy).
  """
  _check_same_shape("softmax_kl_loss", input_logits, target_logits)
  log_p = jax.nn.log_softmax(input_logits, axis=-1)
  q = jax.nn.softmax(target_logits, axis=-1)
  return jax.scipy.special.xlogy(q, q) - q * log_p


def symmetric_mse_loss(input1: Array, input2: Array) -> Array:
  """Mean over all elements of (input1 - input2)^2, gradients to both (UA-MT `symmetric_mse_loss`)."""
  _check_same_shape("symmetric_mse_loss", input1, input2)
  diff = input1 - input2
  return jnp.mean(diff * diff)


def entropy_map(p: Array, eps: float = 1e-6, keepdims: bool = True) -> Array:
  """Unnormalised entropy -sum_c p log(p + eps) in nats over the class axis.

  The UA-MT MC uncertainty (`train_LA_meanteacher_certainty_unlabel.py`, eps inside the log) and DTC's
  `entropy_map`.

  Args:
    p: probabilities [B, ..., C].
    eps: added inside the log.
    keepdims: keep a singleton class axis ([B, ..., 1]) as upstream's keepdim=True.
  """
  return -jnp.sum(p * jnp.log(p + eps), axis=-1, keepdims=keepdims)


def entropy_loss_map(p: Array, num_classes: int) -> Array:
  """entropy_map(p) / ln C with a singleton class axis [B, ..., 1] (UA-MT `losses.entropy_loss_map`)."""
  return entropy_map(p) / math.log(num_classes)


def entropy_loss(p: Array, num_classes: int) -> Array:
  """Mean over batch and space of entropy_map(p) / ln C (UA-MT `losses.entropy_loss`)."""
  return jnp.mean(entropy_map(p, keepdims=False)) / math.log(num_classes)


def cross_entropy(logits: Array, labels: Array) -> Array:
  """Softmax cross-entropy averaged over all voxels (`F.cross_entropy` with its default 'mean').

  Args:
    logits: [B, ..., C].
    labels: integer [B, ...] in [0, C).
  """
  # A one-hot product rather than an integer-label gather: the gather's gradient is a scatter that
  # XLA spends ~10 s constant-folding at LA patch sizes.
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  return -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits, axis=-1), axis=-1))


def voxel_cross_entropy(logits: Array, labels: Array) -> Array:
  """Per-voxel softmax cross-entropy [B, ...] (`nn.CrossEntropyLoss(reduction='none')`)."""
  logits = logits.astype(jnp.float32)
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  return -jnp.sum(onehot * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def masked_cross_entropy(logits: Array, labels: Array, mask: Array) -> Array:
  """sum(CE * m) / (sum(m) + 1e-16), pooled over the batch (BCP `mix_loss`, CML
  `supervison_loss` with a weight mask)."""
  mask = mask.astype(jnp.float32)
  return jnp.sum(voxel_cross_entropy(logits, labels) * mask) / (jnp.sum(mask) + 1e-16)


def class_probabilities(logits: Array) -> Array:
  """softmax over classes, or [1 - sigmoid, sigmoid] for one channel (BCP `get_probability`)."""
  logits = logits.astype(jnp.float32)
  if logits.shape[-1] == 1:
    p = jax.nn.sigmoid(logits)
    return jnp.concatenate([1.0 - p, p], axis=-1)
  return jax.nn.softmax(logits, axis=-1)


def mask_dice_loss(logits: Array, labels: Array, mask: Array | None = None,
                   smooth: float = 1e-5) -> Array:
  """`mask_DiceLoss(nclass)` of BCP and CML (DeepMed-Lab-ECNU/BCP and SongwuJob/CML
  code/utils/losses.py): 1 - mean over (sample, class) of (2 I + s) / (U + s), background included.

  I = sum_v p t m, U = sum_v (p + t) m (linear, not squared), per sample and class; p =
  `class_probabilities(logits)`, t = one-hot(labels), m = mask (all ones if None).

  Args:
    logits: [B, *spatial, C]; labels: integer [B, *spatial]; mask: [B, *spatial] or None.
  """
  p = class_probabilities(logits)
  t = jax.nn.one_hot(labels, p.shape[-1], dtype=p.dtype)
  m = 1.0 if mask is None else mask.astype(p.dtype)[..., None]
  axes = tuple(range(1, p.ndim - 1))
  inter = jnp.sum(p * t * m, axis=axes)
  union = jnp.sum((p + t) * m, axis=axes)
  return 1.0 - jnp.mean((2.0 * inter + smooth) / (union + smooth))


def supervised_ce_dice(logits: Array, labels: Array) -> tuple[Array, Array, Array]:
  """UA-MT / MT supervised loss 0.5 (CE + dice_loss(softmax[..., 1], labels == 1)).

  Inline `loss_seg`, `loss_seg_dice`, `supervised_loss` of
  `yulequan/UA-MT: code/train_LA_meanteacher_certainty_unlabel.py`: CE over both classes, Dice on the
  foreground channel only, summed jointly over the labeled samples.

  Args:
    logits: labeled-slice logits [B_l, ..., C].
    labels: integer [B_l, ...].

  Returns:
    (total, ce, dice) scalars.
  """
  ce = cross_entropy(logits, labels)
  probs = jax.nn.softmax(logits, axis=-1)
  # A static slice, not `probs[..., 1]`: the gather's gradient is a scatter-add that XLA spends
  # seconds constant-folding at LA patch sizes; a slice transposes to a cheap pad.
  foreground = jax.lax.index_in_dim(probs, 1, axis=-1, keepdims=False)
  dice = dice_loss(foreground, labels == 1)
  return 0.5 * (ce + dice), ce, dice


def masked_consistency(dist_map: Array, mask: Array, num_classes: int) -> Array:
  """sum(mask * dist) / (C sum(mask) + 1e-16), the UA-MT certainty-masked consistency.

  `train_LA_meanteacher_certainty_unlabel.py`: the mask has one channel and broadcasts over the C class
  channels of the distance map, hence the factor C (maintainer, UA-MT issue #7). With mask == 1 this is
  the plain mean of the map (the MT consistency).

  Args:
    dist_map: elementwise consistency [B, ..., C] (e.g. `softmax_mse_loss`).
    mask: float/bool [B, ..., 1] (1 = certain voxel, kept).
    num_classes: C.

  Returns:
    Scalar.
  """
  if mask.ndim != dist_map.ndim or mask.shape[-1] != 1:
    raise ValueError(f"masked_consistency: mask must be dist_map's shape with a singleton class axis, "
                     f"got mask {mask.shape} for dist_map {dist_map.shape}")
  mask = mask.astype(dist_map.dtype)
  return jnp.sum(mask * dist_map) / (num_classes * jnp.sum(mask) + 1e-16)


def _check_same_shape(name: str, a: Array, b: Array) -> None:
  if a.shape != b.shape:
    raise ValueError(f"{name}: inputs must have the same shape, got {a.shape} and {b.shape}")
