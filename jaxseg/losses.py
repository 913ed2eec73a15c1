"""Segmentation and consistency losses of UA-MT / Mean Teacher, channels-last.

Upstream: `yulequan/UA-MT: code/utils/losses.py` and the inline losses of
`code/train_LA_meanteacher_certainty_unlabel.py`. Torch puts classes on axis 1; here the class axis is -1,
so logits are [B, D, H, W, C] (or [B, H, W, C]) and integer labels [B, D, H, W]. All functions are pure
jnp and jit-able.
"""

import math

import chex
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


def cross_entropy(logits: Array, labels: Array) -> Array:
  """Softmax cross-entropy averaged over all voxels (`F.cross_entropy` with its default 'mean').

  Args:
    logits: [B, ..., C].
    labels: integer [B, ...] in [0, C).
  """
  return jnp.mean(voxel_cross_entropy(logits, labels))


def voxel_cross_entropy(logits: Array, labels: Array) -> Array:
  """Per-voxel softmax cross-entropy [B, ...] float32 (`nn.CrossEntropyLoss(reduction='none')`).

  Args:
    logits: [B, ..., C].
    labels: integer [B, ...] in [0, C).
  """
  chex.assert_equal_shape_prefix((logits, labels), labels.ndim)
  chex.assert_type(labels, int)
  # A one-hot product rather than an integer-label gather: the gather's gradient is a scatter that
  # XLA spends ~10 s constant-folding at LA patch sizes.
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(jax.nn.one_hot(labels, logits.shape[-1], dtype=log_p.dtype) * log_p, axis=-1)


def masked_mean(values: Array, mask: Array) -> Array:
  """sum(mask * values) / (sum(mask) + 1e-16), `mask` broadcast against `values` in the numerator
  only, pooled over the batch.

  With a mask duplicated over the C channels of a [B, ..., C] map (AC-MT Ent, S-Err, P-Err) the
  denominator counts every voxel C times; with a one-channel mask [B, ..., 1] (AC-MT MU) it counts
  voxels once. An all-zero mask gives 0.
  """
  mask = mask.astype(values.dtype)
  return jnp.sum(mask * values) / (jnp.sum(mask) + 1e-16)


def masked_cross_entropy(logits: Array, labels: Array, mask: Array) -> Array:
  """masked_mean of the per-voxel CE (BCP `mix_loss`, CML `supervison_loss` with a weight mask)."""
  return masked_mean(voxel_cross_entropy(logits, labels), mask.astype(jnp.float32))


def normalized_entropy(probs: Array, eps: float = 1e-6) -> Array:
  """-sum_c p log(p + eps) / ln C over the class axis: [B, ..., C] -> [B, ...] in [0, 1].

  AC-MT `entropy_map` (lemoshu/AC-MT code/utils/losses.py) and the inner term of its
  `masked_entropy_loss`; C = 2 upstream.
  """
  return entropy_map(probs, eps=eps, keepdims=False) / math.log(probs.shape[-1])


def class_probabilities(logits: Array) -> Array:
  """softmax over classes, or [1 - sigmoid, sigmoid] for one channel (BCP `get_probability`)."""
  logits = logits.astype(jnp.float32)
  if logits.shape[-1] == 1:
    p = jax.nn.sigmoid(logits)
    return jnp.concatenate([1.0 - p, p], axis=-1)
  return jax.nn.softmax(logits, axis=-1)


def mask_dice_loss(
  logits: Array, labels: Array, mask: Array | None = None, smooth: float = 1e-5
) -> Array:
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


def vnet_caffe_dice_loss(logits: Array, labels: Array) -> tuple[Array, Array]:
  """The Dice loss layer of the original V-Net release (faustomilletari/VNet `pyLayer.py`
  `DiceLoss`), with its gradient reproduced exactly.

  Per sample b, with the hard prediction r = argmax and g = labels > 0.5 over its voxels:
  I_b = sum r g, U_b = sum r + sum g (both constants of the step). The layer's forward reports the
  hard Dice 2 I_b / (U_b + 1e-5); its backward sets, on the softmax output p,
  d/dp_1 = -c and d/dp_0 = +c with c = 2 (g U_b - 2 p_1 I_b) / U_b^2, i.e. the paper's Dice
  gradient 2 (g U - 2 p I) / U^2 with I and U taken from the hard prediction, summed (not averaged)
  over the batch. Here the value is sum_b (1 - hard Dice_b) and the gradient is that backward (a
  surrogate whose value is cancelled). Where U_b = 0 (empty prediction and empty label; upstream
  divides by zero) the sample's gradient is 0.

  Args:
    logits: [B, *spatial, 2].
    labels: [B, *spatial] (binarised at 0.5, as the layer does).

  Returns:
    (loss, mean hard Dice) scalars.
  """
  if logits.shape[-1] != 2 or logits.shape[:-1] != labels.shape:
    raise ValueError(
      f"vnet_caffe_dice_loss: expected logits [B, ..., 2] and labels [B, ...], got "
      f"{logits.shape} and {labels.shape}"
    )
  probs = jax.nn.softmax(logits, axis=-1)
  p0 = jax.lax.index_in_dim(probs, 0, axis=-1, keepdims=False)
  p1 = jax.lax.index_in_dim(probs, 1, axis=-1, keepdims=False)
  axes = tuple(range(1, labels.ndim))
  g = (labels > 0.5).astype(probs.dtype)
  r = jax.lax.stop_gradient((p1 > p0).astype(probs.dtype))  # argmax; ties go to class 0
  inter = jnp.sum(r * g, axis=axes)
  union = jnp.sum(r, axis=axes) + jnp.sum(g, axis=axes)
  dice = 2.0 * inter / (union + 1e-5)
  shape = (-1,) + (1,) * len(axes)
  safe = jnp.where(union > 0, union, 1.0).reshape(shape)
  c = 2.0 * (g * safe - 2.0 * jax.lax.stop_gradient(p1) * inter.reshape(shape)) / safe**2
  c = jnp.where(union.reshape(shape) > 0, c, 0.0)
  surrogate = jnp.sum(c * (p0 - p1))
  value = jnp.sum(1.0 - dice)
  return value + surrogate - jax.lax.stop_gradient(surrogate), jnp.mean(dice)


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
    raise ValueError(
      f"masked_consistency: mask must be dist_map's shape with a singleton class axis, "
      f"got mask {mask.shape} for dist_map {dist_map.shape}"
    )
  mask = mask.astype(dist_map.dtype)
  return jnp.sum(mask * dist_map) / (num_classes * jnp.sum(mask) + 1e-16)


def _check_same_shape(name: str, a: Array, b: Array) -> None:
  if a.shape != b.shape:
    raise ValueError(f"{name}: inputs must have the same shape, got {a.shape} and {b.shape}")
