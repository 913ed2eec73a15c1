"""Confident learning (cleanlab 2.x `filter.find_label_issues`) as a pure, jit-able jnp function.

Re-implementation of `cleanlab.filter.find_label_issues(labels, pred_probs, filter_by=...)` with its
defaults (multi_label False, frac_noise 1, num_to_remove_per_class None, min_examples_per_class 1,
no ranking) for the filters AC-MT S-Err uses (`lemoshu/AC-MT: code/train_ACMT_SErr_3D_cl2.py`):
'prune_by_noise_rate', 'prune_by_class' and 'both'. Algorithm (cleanlab 2.9.0 `filter.py`, `count.py`):

  1. per-class thresholds t_k = mean(p[i, k] | label_i = k) (2 for an absent class), clipped >= 2e-6;
  2. confident joint C[given k, true j]: for every example with some p[i, j] >= t_j - 1e-6 the guessed
     true class is argmax p[i] if several classes pass, else the one that passes; diagonal clipped
     >= 1; calibrated so row k sums to n_k (the label count) and rounded preserving row totals;
  3. prune matrix P = C^T with every diagonal raised to >= min_examples_per_class (the excess taken
     uniformly from the column's non-zero off-diagonals, then truncated to int);
  4. 'prune_by_class': for each class k with n_k > min_examples_per_class, flag the n_k - P[k, k]
     examples labelled k with the lowest p[i, k]; 'prune_by_noise_rate': for each k and j != k, flag the
     P[j, k] examples labelled k with the largest margin p[i, j] - p[i, k]; 'both': the intersection;
  5. un-flag every example whose label is still the argmax of p[i] + 1e-6 * onehot(label_i).

Shapes are static (N examples, K classes); the data-dependent counts become ranks within a class,
so the function runs inside `jit` with one sort per class offset (K sorts of N keys in all).

Numerical notes (differences from cleanlab that can only matter at exact ties):
  * calibration (step 2) repeats cleanlab's float64 arithmetic in numpy's order (the K x K block runs
    under `jax.enable_x64`), because float64 rounding decides ties between equal fractions;
  * thresholds are float32 means (numpy's float32 pairwise sum may differ in the last ulp);
  * sorting is stable (ties keep index order); numpy's default argsort does not promise that.
"""

import jax
import jax.numpy as jnp

Array = jax.Array

FILTERS = ("prune_by_noise_rate", "prune_by_class", "both")
# cleanlab.internal.constants
_FLOATING_POINT_COMPARISON = 1e-6
_CONFIDENT_THRESHOLDS_LOWER_BOUND = 2e-6
_ABSENT_CLASS_THRESHOLD = 2.0  # cleanlab count.get_confident_thresholds BIG_VALUE
_TINY_VALUE = 1e-100


def cleanlab_would_raise(labels: Array) -> Array:
  """True where cleanlab's input validation raises: fewer than 2 classes unless every label is 0.

  `assert_valid_class_labels` rejects single-class labels; `find_label_issues` lets the all-zero case
  through (`allow_one_class`). AC-MT falls back to the plain MSE consistency when cleanlab raises.

  Args:
    labels: int [N].

  Returns:
    bool scalar.
  """
  first = labels[0]
  single_class = jnp.all(labels == first)
  return single_class & (first != 0)


def confident_thresholds(labels: Array, pred_probs: Array) -> Array:
  """Per-class mean self-confidence t_k (float32 [K]); absent classes get 2 (never confident)."""
  k = pred_probs.shape[1]
  onehot = jax.nn.one_hot(labels, k, dtype=pred_probs.dtype)
  counts = jnp.sum(onehot, axis=0)
  sums = jnp.sum(onehot * pred_probs, axis=0)
  mean = sums / jnp.maximum(counts, 1.0)
  t = jnp.where(counts > 0, mean, _ABSENT_CLASS_THRESHOLD)
  return jnp.maximum(t, _CONFIDENT_THRESHOLDS_LOWER_BOUND).astype(pred_probs.dtype)


def confident_joint_counts(labels: Array, pred_probs: Array) -> Array:
  """Uncalibrated confident joint C[given, guessed true] (int32 [K, K]), diagonal clipped >= 1."""
  k = pred_probs.shape[1]
  thresholds = confident_thresholds(labels, pred_probs)
  confident = pred_probs >= thresholds - _FLOATING_POINT_COMPARISON
  n_confident = jnp.sum(confident, axis=1)
  guess = jnp.where(n_confident > 1, jnp.argmax(pred_probs, axis=1), jnp.argmax(confident, axis=1))
  given = jax.nn.one_hot(labels, k, dtype=jnp.int32) * (n_confident > 0)[:, None]
  joint = given.T @ jax.nn.one_hot(guess, k, dtype=jnp.int32)
  diag = jnp.arange(k)
  return joint.at[diag, diag].max(1)


def _rank_in_group(keys: Array, order_desc_ties_last: bool) -> Array:
  """rank[j] of each entry of every row of `keys` [R, K] when sorted (ties broken by index).

  Ascending with ties in index order, or (order_desc_ties_last) descending with ties in reverse index
  order: numpy's `argsort(x)[::-1]` on a stably sorted x.
  """
  kk = keys.shape[-1]
  idx = jnp.arange(kk)
  ki, kj = keys[..., :, None], keys[..., None, :]  # i: other entry, j: this entry
  ii, jj = idx[:, None], idx[None, :]
  if order_desc_ties_last:
    before = (ki > kj) | ((ki == kj) & (ii > jj))
  else:
    before = (ki < kj) | ((ki == kj) & (ii < jj))
  return jnp.sum(before, axis=-2)


def _numpy_sum(values: list) -> Array:
  """Sum of a short list of scalars in numpy's pairwise order (`np.sum` of a contiguous array).

  Blocks under 8 add sequentially, blocks up to 128 use 8 interleaved partial sums, longer ones split
  in halves (numpy `pairwise_sum`); the order matters for the float64 rounding cleanlab sees.
  """
  n = len(values)
  if n < 8:
    total = values[0] * 0.0
    for v in values:
      total = total + v
    return total
  if n <= 128:
    acc = list(values[:8])
    i = 8
    while i < n - n % 8:
      acc = [acc[j] + values[i + j] for j in range(8)]
      i += 8
    total = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
    for v in values[i:]:
      total = total + v
    return total
  half = n // 2
  half -= half % 8
  return _numpy_sum(values[:half]) + _numpy_sum(values[half:])


def _no_reciprocal(denominator: Array, shape) -> Array:
  """`denominator` broadcast to `shape` behind an optimization barrier.

  XLA rewrites x / broadcast(y) as x * broadcast(1 / y), which is not the IEEE quotient numpy
  computes; the barrier keeps the division exact.
  """
  return jax.lax.optimization_barrier(jnp.broadcast_to(denominator, shape))


def calibrate_confident_joint(joint: Array, label_counts: Array) -> Array:
  """Rows rescaled to the label counts, rounded preserving row totals (int32 [K, K]).

  cleanlab `count.calibrate_confident_joint` + `internal.util.round_preserving_row_totals`, in float64
  with numpy's operation order: v[k, j] = joint[k, j] / sum_j joint[k, j] * n_k, then v / sum(v) * N;
  each row is rounded half-to-even and its shortfall against round(sum of the row) is added to the
  entries with the largest v - round(v) (an excess is removed from the smallest). The entries of a row
  share a denominator, so exact ties in v - round(v) are common and float64 rounding decides them:
  that is why this K x K step runs in float64 (`jax.enable_x64` for the block, inside jit).
  """
  k = joint.shape[0]
  n_total = jnp.sum(label_counts)
  with jax.enable_x64(True):
    f64 = jnp.float64
    row_sum = jnp.maximum(jnp.sum(joint.astype(f64), axis=1, keepdims=True), _TINY_VALUE)
    values = (
      joint.astype(f64) / _no_reciprocal(row_sum, joint.shape) * label_counts.astype(f64)[:, None]
    )
    total = _numpy_sum([values[i, j] for i in range(k) for j in range(k)])
    values = (
      values / _no_reciprocal(jnp.maximum(total, _TINY_VALUE), joint.shape) * n_total.astype(f64)
    )
    ints = jnp.round(values)
    row_total = jnp.stack(
      [jnp.round(_numpy_sum([values[i, j] for j in range(k)])) for i in range(k)]
    )
    diff = (row_total - jnp.sum(ints, axis=1)).astype(jnp.int32)
    frac = values - ints
    changes = jnp.minimum(jnp.abs(diff), k)[:, None]
    rank_up = _rank_in_group(frac, order_desc_ties_last=True)
    rank_down = _rank_in_group(frac, order_desc_ties_last=False)
    bump = jnp.where(
      diff[:, None] > 0,
      (rank_up < changes).astype(jnp.int32),
      -(rank_down < changes).astype(jnp.int32),
    )
    return (ints.astype(jnp.int32) + bump).astype(jnp.int32)


def keep_at_least_n_per_class(prune_counts: Array, n: int) -> Array:
  """cleanlab `filter._keep_at_least_n_per_class` (frac_noise 1) on P = C^T (int32 [K, K]).

  Raises each diagonal entry to >= n and removes the increase uniformly from the non-zero entries of
  its column (over count_nonzero - 1, at least 1), clipping at 0 and truncating to int.
  """
  k = prune_counts.shape[0]
  diag = jnp.diagonal(prune_counts)
  new_diag = jnp.maximum(diag, n)
  increase = new_diag - diag
  per_col = jnp.maximum(jnp.count_nonzero(prune_counts, axis=0) - 1, 1)
  # trunc((p - inc / per_col)) for p - inc / per_col >= 0, else 0; exact in integers.
  numer = prune_counts * per_col[None, :] - increase[None, :]
  reduced = jnp.where(numer > 0, numer // per_col[None, :], 0)
  eye = jnp.eye(k, dtype=bool)
  return jnp.where(eye, new_diag[None, :], reduced).astype(jnp.int32)


def _flag_lowest_within_class(labels: Array, keys: Array, counts: Array) -> Array:
  """bool [N]: for each class k, the counts[k] examples labelled k with the smallest key.

  One stable sort by (label, key, index); the rank within a class is the position minus the class's
  start.
  """
  n = labels.shape[0]
  k = counts.shape[0]
  iota = jnp.arange(n, dtype=jnp.int32)
  # + 0.0 maps -0.0 to +0.0: lax.sort orders -0.0 before +0.0, numpy treats them as equal.
  sorted_labels, _, order = jax.lax.sort((labels, keys + 0.0, iota), num_keys=2, is_stable=True)
  class_counts = jnp.sum(jax.nn.one_hot(labels, k, dtype=jnp.int32), axis=0)
  start = jnp.cumsum(class_counts) - class_counts
  rank = iota - start[sorted_labels]
  flagged_sorted = rank < counts[sorted_labels]
  return jnp.zeros((n,), bool).at[order].set(flagged_sorted)


def find_label_issues(
  labels: Array,
  pred_probs: Array,
  filter_by: str = "prune_by_noise_rate",
  min_examples_per_class: int = 1,
) -> Array:
  """Boolean mask [N] of likely label errors, as cleanlab 2.x `filter.find_label_issues`.

  Args:
    labels: int [N], given labels in [0, K).
    pred_probs: float [N, K], out-of-sample predicted probabilities (rows sum to 1).
    filter_by: 'prune_by_noise_rate' (cleanlab's default), 'prune_by_class' or 'both'.
    min_examples_per_class: classes with at most this many examples are never pruned.

  Returns:
    bool [N], True = label issue. Inputs that cleanlab rejects (see `cleanlab_would_raise`) are not
    detected here; the caller decides the fallback.
  """
  if filter_by not in FILTERS:
    raise ValueError(f"find_label_issues: filter_by={filter_by!r} is not one of {FILTERS}")
  if labels.ndim != 1 or pred_probs.ndim != 2 or pred_probs.shape[0] != labels.shape[0]:
    raise ValueError(
      f"find_label_issues: expected labels [N] and pred_probs [N, K], got "
      f"{labels.shape} and {pred_probs.shape}"
    )
  k = pred_probs.shape[1]
  labels = labels.astype(jnp.int32)
  pred_probs = pred_probs.astype(jnp.float32)
  label_counts = jnp.sum(jax.nn.one_hot(labels, k, dtype=jnp.int32), axis=0)
  joint = calibrate_confident_joint(confident_joint_counts(labels, pred_probs), label_counts)
  prune = keep_at_least_n_per_class(joint.T, min_examples_per_class)
  # cleanlab only writes a class's mask back when it has more than one example.
  prunable = ((label_counts > min_examples_per_class) & (label_counts > 1))[labels]
  self_conf = jnp.take_along_axis(pred_probs, labels[:, None], axis=1)[:, 0]

  by_class = by_noise = None
  if filter_by in ("prune_by_class", "both"):
    n_issues = label_counts - jnp.diagonal(prune)
    by_class = prunable & _flag_lowest_within_class(labels, self_conf, jnp.maximum(n_issues, 0))
  if filter_by in ("prune_by_noise_rate", "both"):
    by_noise = jnp.zeros(labels.shape, bool)
    for offset in range(1, k):  # j = (k + offset) mod K covers every off-diagonal pair once
      other = (labels + offset) % k
      margin = jnp.take_along_axis(pred_probs, other[:, None], axis=1)[:, 0] - self_conf
      # counts[label k] = P[j, k] with j = (k + offset) mod K
      classes = jnp.arange(k)
      counts = jnp.maximum(prune[(classes + offset) % k, classes], 0)
      by_noise = by_noise | _flag_lowest_within_class(labels, -margin, counts)
    by_noise = prunable & by_noise
  if filter_by == "both":
    issues = by_class & by_noise
  else:
    issues = by_class if filter_by == "prune_by_class" else by_noise
  # cleanlab count._reduce_issues: a label that is (nearly) the argmax is never an issue.
  boosted = pred_probs + _FLOATING_POINT_COMPARISON * jax.nn.one_hot(labels, k, dtype=jnp.float32)
  return issues & (jnp.argmax(boosted, axis=1) != labels)
