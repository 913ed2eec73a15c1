"""Confident learning: hand-checked steps, cleanlab 2.9.0 expectations, the acmt.npz S-Err cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.methods.acmt import confident_learning as cl

_find = jax.jit(cl.find_label_issues, static_argnames=("filter_by", "min_examples_per_class"))


def _issues(labels, probs, filter_by):
  mask = _find(jnp.asarray(labels), jnp.asarray(probs, jnp.float32), filter_by=filter_by)
  return np.flatnonzero(np.asarray(mask)).tolist()


def _two_class(p1):
  p1 = np.asarray(p1, np.float32)
  return np.stack([1.0 - p1, p1], axis=1)


def test_two_class_case_by_hand():
  labels = [0, 0, 0, 0, 1, 1, 1, 1]
  probs = _two_class([0.1, 0.2, 0.7, 0.9, 0.8, 0.6, 0.3, 0.95])
  # t0 = mean(.9, .8, .3, .1) = .525, t1 = mean(.8, .6, .3, .95) = .6625. Confident guesses:
  # 0, 0, 1, 1 for the label-0 rows; 1, none (.4 < t0, .6 < t1), 0, 1 for the label-1 rows.
  np.testing.assert_allclose(
    cl.confident_thresholds(jnp.asarray(labels), jnp.asarray(probs)), [0.525, 0.6625], rtol=1e-6
  )
  joint = cl.confident_joint_counts(jnp.asarray(labels), jnp.asarray(probs))
  np.testing.assert_array_equal(joint, [[2, 2], [1, 2]])
  # Row 1 rescaled to its 4 labels: [4/3, 8/3] -> [1, 3].
  np.testing.assert_array_equal(
    cl.calibrate_confident_joint(joint, jnp.array([4, 4])), [[2, 2], [1, 3]]
  )
  # prune_by_class removes 4 - 2 = 2 label-0 rows with the lowest p0 (rows 3, 2) and 4 - 3 = 1 label-1
  # row with the lowest p1 (row 6); with two classes the margin ranking is the same.
  for filter_by in cl.FILTERS:
    assert _issues(labels, probs, filter_by) == [2, 3, 6], filter_by


def test_issue_whose_label_is_the_argmax_is_dropped():
  # Row 4 (label 1, p1 = .52) is confidently class 0 (p0 = .48 >= t0 = .45) and the only label-1 row
  # to prune, but its label is still the argmax, so cleanlab's final filter keeps it clean.
  labels = [0, 0, 0, 0, 1, 1, 1, 1]
  probs = _two_class(1.0 - np.array([0.3, 0.4, 0.2, 0.9, 0.48, 0.1, 0.05, 0.15]))
  joint = cl.confident_joint_counts(jnp.asarray(labels), jnp.asarray(probs))
  np.testing.assert_array_equal(joint, [[1, 0], [1, 3]])
  for filter_by in cl.FILTERS:
    assert _issues(labels, probs, filter_by) == [], filter_by


def test_three_classes_filters_differ_as_cleanlab():
  # Expectations from cleanlab 2.9.0 find_label_issues(labels, probs, filter_by=..., n_jobs=1).
  labels = [2, 2, 0, 1, 1, 2, 2, 2, 1, 0, 2, 2]
  probs = [
    [0.38, 0.54, 0.08],
    [0.23, 0.65, 0.12],
    [0.96, 0.01, 0.03],
    [0.68, 0.10, 0.22],
    [0.57, 0.25, 0.18],
    [0.09, 0.38, 0.53],
    [0.14, 0.09, 0.77],
    [0.56, 0.17, 0.27],
    [0.78, 0.15, 0.07],
    [0.41, 0.21, 0.38],
    [0.84, 0.02, 0.14],
    [0.45, 0.13, 0.42],
  ]
  joint = cl.confident_joint_counts(jnp.asarray(labels), jnp.asarray(probs, jnp.float32))
  np.testing.assert_array_equal(joint, [[2, 0, 0], [1, 1, 0], [1, 3, 3]])
  assert _issues(labels, probs, "prune_by_noise_rate") == [0, 1, 7, 8, 10]
  assert _issues(labels, probs, "prune_by_class") == [0, 1, 3, 7, 10]
  assert _issues(labels, probs, "both") == [0, 1, 7, 10]


def test_calibration_breaks_ties_like_float64():
  # Row 2 is [1, 2, 7] * 12 / 10 = [1.2, 2.4, 8.4]: rounding gives 11, one short. In exact arithmetic
  # 2.4 and 8.4 tie; in float64 2/10*12 = 2.4000000000000004 > 7/10*12 = 8.399999999999999 - 8, so
  # cleanlab bumps the middle entry (cleanlab 2.9.0 output).
  joint = jnp.array([[5, 2, 1], [3, 11, 2], [1, 2, 7]])
  calibrated = jax.jit(cl.calibrate_confident_joint)(joint, jnp.array([11, 17, 12]))
  np.testing.assert_array_equal(calibrated, [[7, 3, 1], [3, 12, 2], [1, 3, 8]])


def test_keep_at_least_one_per_class():
  # Column 0 has diagonal 0: it is raised to 1 and the 1 is taken from its one non-zero entry.
  np.testing.assert_array_equal(
    cl.keep_at_least_n_per_class(jnp.array([[0, 3], [5, 10]]), 1), [[1, 3], [4, 10]]
  )
  np.testing.assert_array_equal(
    cl.keep_at_least_n_per_class(jnp.array([[0, 3, 2], [5, 10, 0], [1, 0, 4]]), 1),
    [[1, 3, 2], [4, 10, 0], [0, 0, 4]],
  )


def test_single_example_class_is_never_pruned():
  # Class 1 has one (obviously wrong) example: n_1 = 1 <= min_examples_per_class.
  # (cleanlab 2.9.0 flags nothing here either.)
  labels = [0, 0, 0, 0, 0, 0, 0, 1]
  probs = _two_class([0.1, 0.2, 0.1, 0.3, 0.2, 0.15, 0.25, 0.05])
  for filter_by in cl.FILTERS:
    assert _issues(labels, probs, filter_by) == [], filter_by


def test_cleanlab_would_raise_only_for_one_nonzero_class():
  assert bool(cl.cleanlab_would_raise(jnp.array([1, 1, 1])))
  assert not bool(cl.cleanlab_would_raise(jnp.array([0, 0, 0])))  # cleanlab's allow_one_class
  assert not bool(cl.cleanlab_would_raise(jnp.array([0, 1, 1])))


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="filter_by"):
    cl.find_label_issues(
      jnp.zeros(4, jnp.int32), jnp.full((4, 2), 0.5), filter_by="confident_learning"
    )
  with pytest.raises(ValueError, match="pred_probs"):
    cl.find_label_issues(jnp.zeros(4, jnp.int32), jnp.full((3, 2), 0.5))


def test_matches_cleanlab_on_acmt_fixture(parity):
  pf = parity("acmt.npz")
  cases = [n for n in pf.cases if "filter_by" in pf.case_args(n)]
  assert cases, "acmt.npz holds no cleanlab case"
  for name in cases:
    case, args = pf.case(name), pf.case_args(name)
    n_unlabeled = case["input/ema_output"].shape[0]
    student = case["input/outputs"][-n_unlabeled:]
    labels = jnp.argmax(jnp.asarray(student), axis=1).reshape(-1)
    teacher = jax.nn.softmax(jnp.moveaxis(jnp.asarray(case["input/ema_output"]), 1, -1), axis=-1)
    issues = _find(labels, teacher.reshape(-1, teacher.shape[-1]), filter_by=args["filter_by"])
    expected = case["output/issue_mask"][:, 0].reshape(-1) > 0
    np.testing.assert_array_equal(np.asarray(issues), expected, err_msg=name)
