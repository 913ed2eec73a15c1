"""DyCON's losses and schedules (Assefa et al., CVPR 2025), channels-last.

Upstream: `KU-CVML/DyCON: code/utils/dycon_losses.py` (adaptive_beta, gambling_softmax, its own
sigmoid_rampup, UnCLoss, FeCLoss) and the inline FeCL inputs of `code/train_DyCON_BraTS19.py`
(commit 69c1384). Method notes: docs/methods/dycon.md §2. Torch puts classes/channels on
axis 1; here they are on the last axis: logits [B, D, H, W, C], features [B, d, h, w, C], integer
labels [B, D, H, W]. Patch embeddings are [B, N, C] with N = d*h*w in row-major (d, h, w) order,
which is the order of torch's `view(B, C, -1)` on NCDHW.

Every function is pure jnp and jit-able; epoch-indexed schedules accept host numbers or traced
JAX values (`state.step // iters_per_epoch` inside a jitted step).
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg import losses
from jaxseg import schedules

Array = jax.Array

LABEL_RULES = ("trilinear", "avgpool")


def adaptive_beta(epoch, total_epochs: float, max_beta: float = 5.0, min_beta: float = 0.5):
  """UnCL's beta(e) = max_beta (min_beta / max_beta)^(e / E): 5 -> 0.5 over E epochs, not clipped
  (it keeps falling past E).

  Upstream calls it once per sampler epoch with E = max_epoch = max_iterations // len(loader) + 1.

  Args:
    epoch: epoch index e (host number / array or JAX value).
    total_epochs: E, a static number > 0.
  """
  if total_epochs <= 0:
    raise ValueError(f"adaptive_beta: total_epochs must be > 0, got {total_epochs}")
  ratio = min_beta / max_beta
  if schedules.is_jax(epoch):
    return max_beta * jnp.power(ratio, epoch / total_epochs)
  out = max_beta * np.power(ratio, np.asarray(epoch, np.float64) / total_epochs)
  return schedules.host_result(out)


def threshold_rampup(
  current_epoch,
  total_rampup_epochs: float,
  min_threshold: float,
  max_threshold: float,
  steepness: float = 5.0,
):
  """DyCON's own `sigmoid_rampup`: min + (max - min) exp(-steepness (1 - clip(e, 0, T) / T)^2);
  max when T == 0. Not UA-MT's ramp (that one has no min/max and lives in jaxseg.schedules).

  FeCL thresholds: positives 1.3 -> 1.5, negatives and teacher cross-negatives 0.3 -> 0.5, over
  T = 1500 epochs.
  """
  if total_rampup_epochs < 0:
    raise ValueError(
      f"threshold_rampup: total_rampup_epochs must be >= 0, got {total_rampup_epochs}"
    )
  if total_rampup_epochs == 0:
    return jnp.asarray(max_threshold) if schedules.is_jax(current_epoch) else float(max_threshold)
  xp = jnp if schedules.is_jax(current_epoch) else np
  e = xp.clip(
    xp.asarray(current_epoch, dtype=None if xp is jnp else np.float64), 0.0, total_rampup_epochs
  )
  phase = 1.0 - e / total_rampup_epochs
  out = min_threshold + (max_threshold - min_threshold) * xp.exp(-steepness * phase * phase)
  return out if xp is jnp else schedules.host_result(out)


def gambling_softmax(logits: Array, axis: int = -1) -> Array:
  """exp(x) / (sum exp(x) + 1e-18) over `axis`, without max subtraction (upstream
  `gambling_softmax`; it overflows where softmax would not, as upstream)."""
  e = jnp.exp(logits)
  return e / (jnp.sum(e, axis=axis, keepdims=True) + 1e-18)


def uncl_loss(s_logits: Array, t_logits: Array, beta) -> Array:
  """Uncertainty-aware consistency (UnCLoss), averaged over batch and voxels:

    mean_v [ sum_c (pS - pT)^2 / (exp(beta H_S) + exp(beta H_T)) + beta (H_S + H_T) ],

  p = softmax over classes, H = -sum_c p log(p + 1e-6) (nats). Gradients reach pS in the numerator,
  in exp(beta H_S) and in beta H_S; pass teacher logits with their gradient stopped. Upstream
  broadcasts a [B, D, H, W] tensor against a [B, 1, D, H, W] one before the mean; mean-of-sum is
  sum-of-means, so this per-voxel form has the same value and gradients.

  Args:
    s_logits, t_logits: [B, ..., C].
    beta: scalar (host or traced).
  """
  if s_logits.shape != t_logits.shape:
    raise ValueError(f"uncl_loss: shapes differ: {s_logits.shape} vs {t_logits.shape}")
  p_s = jax.nn.softmax(s_logits, axis=-1)
  p_t = jax.nn.softmax(t_logits, axis=-1)
  h_s = losses.entropy_map(p_s, eps=1e-6, keepdims=True)
  h_t = losses.entropy_map(p_t, eps=1e-6, keepdims=True)
  weighted = jnp.square(p_s - p_t) / (jnp.exp(beta * h_s) + jnp.exp(beta * h_t))
  per_voxel = jnp.sum(weighted, axis=-1) + beta * (h_s + h_t)[..., 0]
  return jnp.mean(per_voxel)


def double_softmax_consistency(stud_probs: Array, ema_probs: Array) -> Array:
  """DyCON's plain MT term `softmax_mse_loss(stud_probs, ema_probs).mean()`: softmax is applied
  AGAIN to what are already probabilities (upstream quirk, kept), then the mean of the squared
  difference over every element. Inputs [B, ..., C] probabilities."""
  return jnp.mean(losses.softmax_mse_loss(stud_probs, ema_probs))


def embeddings(features: Array) -> Array:
  """Projection features [B, d, h, w, C] -> L2-normalised patch embeddings [B, N, C], N = d*h*w.

  torch `F.normalize(features.view(B, C, N).transpose(1, 2), dim=-1)`: x / max(||x||, 1e-12)."""
  b, c = features.shape[0], features.shape[-1]
  e = features.reshape(b, -1, c)
  sq = jnp.sum(jnp.square(e), axis=-1, keepdims=True)
  # sqrt'(0) is inf; torch's norm backward gives 0 at a zero vector, so mask it (an all-zero
  # feature vector happens when InstanceNorm sees a 1-voxel bottleneck).
  norm = jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
  return e / jnp.maximum(norm, 1e-12)


def _downsample_matrix(n_in: int, factor: int) -> np.ndarray:
  """float32 [n_in // factor, n_in]: torch `F.interpolate(scale_factor=1/factor, mode='linear',
  align_corners=False)` along one axis. With a scale factor given, torch samples output o at
  (o + 0.5) * factor - 0.5 (for factor 8: 8 o + 3.5, the mean of voxels 8o+3 and 8o+4)."""
  n_out = n_in // factor
  if n_out < 1:
    raise ValueError(f"cannot downsample {n_in} voxels by {factor}")
  src = np.maximum((np.arange(n_out) + 0.5) * factor - 0.5, 0.0)
  lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  w = src - lo
  m = np.zeros((n_out, n_in), np.float64)
  np.add.at(m, (np.arange(n_out), lo), 1.0 - w)
  np.add.at(m, (np.arange(n_out), hi), w)
  return m.astype(np.float32)


def downsample_trilinear(x: Array, factor: int) -> Array:
  """[B, D, H, W] float -> [B, D // f, H // f, W // f]: torch trilinear interpolation with
  scale_factor 1/f, align_corners=False (separable; matmuls, so gradients are plain)."""
  for axis in (1, 2, 3):
    m = jnp.asarray(_downsample_matrix(x.shape[axis], factor), x.dtype)
    x = jnp.moveaxis(
      jnp.tensordot(m, x, axes=([1], [axis]), precision=jax.lax.Precision.HIGHEST), 0, axis
    )
  return x


def avg_pool(x: Array, factor: int) -> Array:
  """[B, D, H, W] -> non-overlapping f^3 block means (torch `avg_pool3d(kernel f, stride f)`;
  a trailing remainder is dropped as torch does)."""
  b = x.shape[0]
  sizes = [s // factor for s in x.shape[1:4]]
  x = x[:, : sizes[0] * factor, : sizes[1] * factor, : sizes[2] * factor]
  x = x.reshape(b, sizes[0], factor, sizes[1], factor, sizes[2], factor)
  return jnp.mean(x, axis=(2, 4, 6))


def patch_labels(labels: Array, factor: int, rule: str = "trilinear") -> Array:
  """Per-patch FeCL labels [B, N] (float 0/1) from voxel labels [B, D, H, W].

  rule 'trilinear' (upstream HEAD): `interpolate(y, scale 1/f, trilinear, align_corners=False) >
  0.5`; 'avgpool' (before the 2025-11-01 commits, closest to the paper): `avg_pool3d(y, f, f) > 0.5`,
  the majority of each f^3 block. f = 4 * feature_scaler (8 upstream).
  """
  if rule not in LABEL_RULES:
    raise ValueError(f"patch_labels: rule={rule!r}, expected one of {LABEL_RULES}")
  y = labels.astype(jnp.float32)
  down = downsample_trilinear(y, factor) if rule == "trilinear" else avg_pool(y, factor)
  return (down > 0.5).astype(jnp.float32).reshape(labels.shape[0], -1)


def gambling_uncertainty(logits: Array, factor: int) -> Array:
  """FeCL's optional positive weighting (commented out in upstream training): entropy of the
  gambling softmax of the student logits [B, D, H, W, C], -sum p log(p + 1e-6), downsampled
  trilinearly by 1/f (align_corners=False) -> [B, N]. Gradients flow (upstream has no detach)."""
  p = gambling_softmax(logits, axis=-1)
  entropy = losses.entropy_map(p, eps=1e-6, keepdims=False)
  return downsample_trilinear(entropy, factor).reshape(logits.shape[0], -1)


def fecl_terms(
  feat: Array,
  mask: Array,
  teacher_feat: Array | None = None,
  gambling: Array | None = None,
  epoch=0,
  *,
  temperature: float = 0.6,
  gamma: float = 2.0,
  use_focal: bool = True,
  rampup_epochs: float = 1500,
  lambda_cross: float = 1.0,
) -> dict[str, Array]:
  """Feature-level contrastive loss (FeCLoss.forward at HEAD) and its parts.

  Per sample b, with P_ij = [m_i == m_j], Q = 1 - P, I the identity:
    S = (E E^T / tau) * (1 - I)                  (diagonal set to 0, not -inf)
    S'_ij = S_ij - max_k S_kj                    (COLUMN max, gradient stopped: upstream's dim=1)
    X = exp(S'); d_ij = X_ij / (X_ij + sum_k X_ik Q_ik + 1e-18)
    l_ij = -log(d_ij + 1e-18) P_ij (1 - I_ij)
    student = mean_{b,i} sum_j l_ij w_ij / (sum_j P_ij - 1 + 1e-18)
  with focal weights w (use_focal, computed from d WITH gradient): (1 - d)^gamma on positive pairs
  with d < ramp(1.3 -> 1.5) (always, since d <= 1), d^gamma on negatives with d > ramp(0.3 -> 0.5)
  (no effect: l is zero there), else 1. Given `gambling` [B, N], the student term is instead
  mean_{b,i} g_bi sum_j l_ij / (sum_j P_ij - 1 + 1e-18) (no focal weights), as upstream.
  Teacher cross-negatives (teacher_feat given): C = E E_T^T (raw cosine), H = Q and C > ramp(0.3 ->
  0.5); cross = sum -log(1 - C + 1e-18) H / (sum H + 1e-18) pooled over the batch (0 when H is
  empty, which this expression gives by itself). total = student + lambda_cross * cross.

  Finite by construction, with upstream's values wherever upstream's are finite: d and log d in
  log space (log-sum-exp with the 1e-18 as a term), the divisions by counts as max(count, 1)
  (a zero count comes with a zero sum), and 1 - C clipped at 0 (C rounds a few ulps above 1).

  Args:
    feat: student embeddings [B, N, K] (L2-normalised, see `embeddings`).
    mask: patch labels [B, N] or [B, 1, N].
    teacher_feat: teacher embeddings [B, N, K] or None.
    gambling: per-patch weights [B, N] or None.
    epoch: sampler epoch (host or traced) for the ramped thresholds.
    temperature, gamma, use_focal, rampup_epochs, lambda_cross: upstream FeCLoss arguments.

  Returns:
    {'total', 'student', 'cross'} scalars.
  """
  b, n, _ = feat.shape
  mask = mask.reshape(b, n)
  pos = (mask[:, :, None] == mask[:, None, :]).astype(feat.dtype)
  neg = 1.0 - pos
  off_diag = 1.0 - jnp.eye(n, dtype=feat.dtype)

  logits = jnp.einsum("bik,bjk->bij", feat, feat) / temperature * off_diag
  logits = logits - jax.lax.stop_gradient(jnp.max(logits, axis=1, keepdims=True))
  # Upstream's d = X / (X + sum_k X_ik Q_ik + 1e-18) and -log(d + 1e-18), X = exp(logits), in log
  # space: the 1e-18 is one more logsumexp term, so the denominator's log is finite and its
  # gradient bounded even when every X of a row underflows (upstream then divides 0 by 1e-18 and
  # its backward multiplies 1e18 factors, which XLA may overflow to inf * 0 = NaN).
  log_eps = jnp.log(jnp.asarray(1e-18, feat.dtype))
  # Pairs outside Q get a logit whose exp is exactly 0 (a finite value, so no inf - inf).
  neg_logits = jnp.where(neg > 0, logits, -1e4)
  eps_col = jnp.full((b, n, 1), log_eps, feat.dtype)
  log_neg_eps = jax.nn.logsumexp(
    jnp.concatenate([neg_logits, eps_col], axis=-1), axis=-1, keepdims=True
  )
  log_division = logits - jnp.logaddexp(logits, log_neg_eps)
  division = jnp.exp(log_division)
  loss_matrix = -jnp.logaddexp(log_division, log_eps) * pos * off_diag
  # Upstream divides by (sum_j P_ij - 1) + 1e-18: the count of OTHER positives (the diagonal is
  # always positive) + 1e-18. A patch without other positives has a zero row sum, so it scores 0
  # either way; dividing by max(count, 1) gives those numbers without the 1e18 gradient factor.
  n_pos = jnp.sum(pos * off_diag, axis=-1)
  safe_n_pos = jnp.maximum(n_pos, 1.0)

  if gambling is not None:
    per_patch = jnp.sum(loss_matrix, axis=-1) / safe_n_pos
    student = jnp.mean(per_patch * gambling.reshape(b, n))
  elif use_focal:
    pos_th = threshold_rampup(epoch, rampup_epochs, 1.3, 1.5)
    neg_th = threshold_rampup(epoch, rampup_epochs, 0.3, 0.5)
    focal = jnp.where(
      (pos > 0) & (division < pos_th),
      jnp.power(1.0 - division, gamma),
      jnp.where((neg > 0) & (division > neg_th), jnp.power(division, gamma), 1.0),
    )
    student = jnp.mean(jnp.sum(loss_matrix * focal, axis=-1) / safe_n_pos)
  else:
    student = jnp.mean(jnp.sum(loss_matrix, axis=-1) / safe_n_pos)

  cross = jnp.zeros((), feat.dtype)
  if teacher_feat is not None:
    cross_sim = jnp.einsum("bik,bjk->bij", feat, teacher_feat)
    cross_th = threshold_rampup(epoch, rampup_epochs, 0.3, 0.5)
    hard = (neg > 0) & (cross_sim > cross_th)
    # Upstream multiplies -log(1 - C + 1e-18) by the mask, which is NaN wherever a pair outside the
    # mask has C >= 1 (near-identical same-class embeddings); `where` keeps those pairs out. Inside
    # the mask the value is upstream's.
    # The barrier keeps XLA from folding (1 - C) + 1e-18 into (1 + 1e-18) - C = 1 - C, which
    # would give -log(0) = inf at C == 1 where torch gives -log(1e-18).
    # Rounding can put C a few ulps above 1 (unit vectors); torch's -log(1 - C + 1e-18) is NaN
    # there, max(1 - C, 0) gives upstream's value at C == 1 instead.
    gap = jnp.maximum(jax.lax.optimization_barrier(1.0 - cross_sim), 0.0)
    safe = jnp.where(hard, gap + 1e-18, 1.0)
    hard_f = hard.astype(feat.dtype)
    # Upstream's + 1e-18 only matters when H is empty, where the sum is 0 either way.
    cross = jnp.sum(-jnp.log(safe) * hard_f) / jnp.maximum(jnp.sum(hard_f), 1.0)
  return {"total": student + lambda_cross * cross, "student": student, "cross": cross}


def fecl_loss(
  feat: Array,
  mask: Array,
  teacher_feat: Array | None = None,
  gambling: Array | None = None,
  epoch=0,
  **kwargs,
) -> Array:
  """`fecl_terms(...)['total']` (upstream FeCLoss.forward's return value)."""
  return fecl_terms(feat, mask, teacher_feat, gambling, epoch, **kwargs)["total"]


def max_epoch(total_steps: int, iters_per_epoch: int) -> int:
  """Upstream `max_epoch = max_iterations // len(trainloader) + 1`, UnCL's beta horizon."""
  if iters_per_epoch < 1:
    raise ValueError(f"iters_per_epoch must be >= 1, got {iters_per_epoch}")
  return total_steps // iters_per_epoch + 1


__all__ = [
  "LABEL_RULES",
  "adaptive_beta",
  "avg_pool",
  "double_softmax_consistency",
  "downsample_trilinear",
  "embeddings",
  "fecl_loss",
  "fecl_terms",
  "gambling_softmax",
  "gambling_uncertainty",
  "max_epoch",
  "patch_labels",
  "threshold_rampup",
  "uncl_loss",
]
