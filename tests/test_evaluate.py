"""Evaluation: a known predictor on known volumes gives known metrics; files and table."""
import csv
import json

import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import evaluate
from tests.conftest import tiny_config


class _Oracle:
  """A 'method' whose prediction is a fixed threshold of the image: probabilities [..., 2]."""

  def predict(self, state, images):
    fg = (images[..., 0] > 0.5).astype(jnp.float32)
    return jnp.stack([1.0 - fg, fg], axis=-1)


def _source(images, labels):
  return [{"image": im, "label": lb, "case": f"c{i}"} for i, (im, lb) in enumerate(zip(images, labels))]


def test_parity_evaluation_scores_known_cases(tmp_path):
  config = tiny_config()
  shape = (24, 24, 16)
  gt = np.zeros(shape, np.uint8)
  gt[4:12, 4:12, 4:12] = 1
  perfect = gt.astype(np.float32)
  shifted = np.roll(gt, 2, axis=0).astype(np.float32)  # 6 of 8 slabs overlap
  empty = np.zeros(shape, np.float32)
  source = _source([perfect, shifted, empty], [gt, gt, gt])
  summary = evaluate.evaluate(_Oracle(), {}, source, config, out_dir=tmp_path, split="val",
                              checkpoint_step=7, stream=None)
  rows = list(csv.DictReader(open(tmp_path / "cases.csv")))
  assert [r["case"] for r in rows] == ["c0", "c1", "c2"]
  got = np.array([[float(r[k]) for k in evaluate.METRIC_NAMES] for r in rows])
  np.testing.assert_allclose(got[0], [1.0, 1.0, 0.0, 0.0])
  np.testing.assert_allclose(got[1, :2], [0.75, 0.6])  # dice 2*384/1024, jaccard 384/640
  np.testing.assert_allclose(got[2], [0.0, 0.0, 0.0, 0.0])  # upstream: empty prediction -> zeros
  assert summary["mode"] == "parity" and summary["n_cases"] == 3 and summary["checkpoint_step"] == 7
  np.testing.assert_allclose(summary["dice"], got[:, 0].mean())
  np.testing.assert_allclose(summary["dice_std"], got[:, 0].std())
  assert json.loads((tmp_path / "summary.json").read_text())["dice"] == pytest.approx(summary["dice"])
  table = evaluate.format_table(summary)
  assert "parity" in table and f"{100 * summary['dice']:.2f}" in table


def test_multiclass_rows_have_per_class_and_mean():
  gt = np.zeros((8, 8, 8), np.int64)
  gt[:4] = 1
  gt[4:] = 2
  pred = gt.copy()
  pred[4:6] = 1  # half of class 2 predicted as class 1
  row = evaluate._case_metrics(pred, gt, num_classes=3)
  np.testing.assert_allclose(row["dice_class2"], 2 * 128 / (256 + 128))
  np.testing.assert_allclose(row["dice_class1"], 2 * 256 / (256 + 384))
  np.testing.assert_allclose(row["dice"], (row["dice_class1"] + row["dice_class2"]) / 2)
