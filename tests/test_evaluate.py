"""jaxseg/evaluation.py and the command jaxseg/evaluate.py: a known predictor on known volumes gives
known metrics; files, table, and the command's refusals."""

import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import evaluate
from jaxseg import evaluation
from jaxseg import metrics
from tests.conftest import tiny_config


class _Oracle:
  """A 'method' whose prediction is a fixed threshold of the image: probabilities [..., 2]."""

  def predict(self, state, images):
    fg = (images[..., 0] > 0.5).astype(jnp.float32)
    return jnp.stack([1.0 - fg, fg], axis=-1)


def _source(images, labels):
  return [
    {"image": im, "label": lb, "case": f"c{i}"} for i, (im, lb) in enumerate(zip(images, labels))
  ]


def test_parity_evaluation_scores_known_cases(tmp_path):
  config = tiny_config()
  shape = (24, 24, 16)
  gt = np.zeros(shape, np.uint8)
  gt[4:12, 4:12, 4:12] = 1
  perfect = gt.astype(np.float32)
  shifted = np.roll(gt, 2, axis=0).astype(np.float32)  # 6 of 8 slabs overlap
  empty = np.zeros(shape, np.float32)
  source = _source([perfect, shifted, empty], [gt, gt, gt])
  summary = evaluation.evaluate(
    _Oracle(), {}, source, config, out_dir=tmp_path, split="val", checkpoint_step=7, stream=None
  )
  rows = list(csv.DictReader(open(tmp_path / "cases.csv")))
  assert [r["case"] for r in rows] == ["c0", "c1", "c2"]
  got = np.array([[float(r[k]) for k in evaluation.METRIC_NAMES] for r in rows])
  np.testing.assert_allclose(got[0], [1.0, 1.0, 0.0, 0.0])
  np.testing.assert_allclose(got[1, :2], [0.75, 0.6])  # dice 2*384/1024, jaccard 384/640
  np.testing.assert_allclose(got[2], [0.0, 0.0, 0.0, 0.0])  # upstream: empty prediction -> zeros
  assert summary["mode"] == "parity" and summary["n_cases"] == 3 and summary["checkpoint_step"] == 7
  np.testing.assert_allclose(summary["dice"], got[:, 0].mean())
  np.testing.assert_allclose(summary["dice_std"], got[:, 0].std())
  assert json.loads((tmp_path / "summary.json").read_text())["dice"] == pytest.approx(
    summary["dice"]
  )
  table = evaluation.format_table(summary)
  assert "parity" in table and f"{100 * summary['dice']:.2f}" in table


def test_multiclass_rows_have_per_class_and_mean():
  gt = np.zeros((8, 8, 8), np.int64)
  gt[:4] = 1
  gt[4:] = 2
  pred = gt.copy()
  pred[4:6] = 1  # half of class 2 predicted as class 1
  row = evaluation._case_metrics(pred, gt, num_classes=3)
  np.testing.assert_allclose(row["dice_class2"], 2 * 128 / (256 + 128))
  np.testing.assert_allclose(row["dice_class1"], 2 * 256 / (256 + 384))
  np.testing.assert_allclose(row["dice"], (row["dice_class1"] + row["dice_class2"]) / 2)


def test_clean_evaluation_scores_known_cases_in_mm(tmp_path):
  config = tiny_config()
  config.eval.mode = "clean"
  shape = (24, 24, 16)
  gt = np.zeros(shape, np.uint8)
  gt[4:12, 4:12, 4:12] = 1
  shifted = np.roll(gt, 2, axis=0).astype(np.float32)
  empty = np.zeros(shape, np.float32)
  source = _source(
    [gt.astype(np.float32), shifted, empty, shifted], [gt, gt, gt, np.zeros_like(gt)]
  )
  summary = evaluation.evaluate(
    _Oracle(),
    {},
    source,
    config,
    out_dir=tmp_path,
    split="val",
    checkpoint_step=3,
    stream=None,
    save_predictions=True,
  )
  rows = list(csv.DictReader(open(tmp_path / "cases.csv")))
  got = np.array([[float(r[k]) for k in evaluation.METRIC_NAMES] for r in rows])
  spacing = tuple(config.data.spacing)
  assert spacing == (0.625, 0.625, 0.625)
  np.testing.assert_allclose(got[0], [1.0, 1.0, 0.0, 0.0])
  np.testing.assert_allclose(got[1], metrics.clean_case_metrics(shifted > 0.5, gt, spacing))
  # Shift of 2 voxels along x: the far faces are 2 * 0.625 mm apart, and that is the 95th percentile.
  np.testing.assert_allclose(got[1, 2], 1.25)
  np.testing.assert_allclose(got[2, :2], [0.0, 0.0])
  assert np.isnan(got[2, 2:]).all() and np.isnan(got[3]).all()  # empty prediction / empty reference
  assert (
    summary["mode"] == "clean"
    and summary["units"] == "mm"
    and summary["spacing_mm"] == list(spacing)
  )
  assert summary["n_nan"] == {"dice": 1, "jaccard": 1, "hd95": 2, "asd": 2}
  np.testing.assert_allclose(summary["dice"], np.nanmean(got[:, 0]))
  np.testing.assert_allclose(summary["hd95"], np.nanmean(got[:, 2]))
  np.testing.assert_allclose(summary["asd_std"], np.nanstd(got[:, 3]))
  table = evaluation.format_table(summary)
  assert "clean" in table and "95HD (mm)" in table and "ASSD (mm)" in table and "(2 NaN)" in table
  with np.load(tmp_path / "predictions" / "c1.npz") as f:
    np.testing.assert_array_equal(f["pred"], (shifted > 0.5).astype(np.uint8))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  """A 2-step tiny run with validation every step, so it also keeps a best-on-validation checkpoint."""
  from jaxseg import train

  workdir = tmp_path_factory.mktemp("run")
  config = tiny_config("supervised", steps=2)
  config.eval.every_steps = 1
  config.eval.save_predictions = (
    True  # for the final evaluation; periodic validation writes nothing
  )
  summary = train.train_and_evaluate(config, workdir)
  return workdir, summary


def test_parity_and_clean_evaluation_of_a_checkpoint(trained_run):
  from jaxseg import checkpoints

  workdir, trained = trained_run
  assert len(list((workdir / "eval" / "val" / "predictions").glob("*.npz"))) == trained["n_cases"]
  selection = json.loads((workdir / "checkpoints_best" / "selection.json").read_text())
  assert selection["split"] == "val" and selection["step"] in (1, 2)
  parity, parity_dir = evaluation.evaluate_workdir(workdir, mode="parity", stream=None)
  assert parity_dir == workdir / "eval" / "val" / "parity"
  for (
    k
  ) in evaluation.METRIC_NAMES:  # the restored final checkpoint reproduces the training-time result
    assert parity[k] == pytest.approx(trained[k], rel=1e-6, abs=1e-9), k
  assert parity["checkpoint_step"] == 2 and parity["checkpoint"] == "final"
  clean, clean_dir = evaluation.evaluate_workdir(
    workdir,
    mode="clean",
    checkpoint="best_val",
    largest_cc=True,
    save_predictions=True,
    stream=None,
  )
  assert clean_dir == workdir / "eval" / "val" / "clean_lcc_best_val"
  assert clean["mode"] == "clean" and clean["largest_cc"] and clean["checkpoint"] == "best_val"
  assert clean["checkpoint_step"] == selection["step"] and clean["n_cases"] == parity["n_cases"]
  assert len(list((clean_dir / "predictions").glob("*.npz"))) == clean["n_cases"]
  # The training-time result is untouched.
  on_disk = json.loads((workdir / "eval" / "val" / "summary.json").read_text())
  assert on_disk["mode"] == "parity" and on_disk["dice"] == pytest.approx(trained["dice"])
  with pytest.raises(checkpoints.CheckpointError, match="validation split"):
    checkpoints.resolve_choice("best_test")


def test_cli_refuses_test_based_selection_and_missing_test_split(trained_run, capsys):
  workdir, _ = trained_run
  with pytest.raises(SystemExit) as info:
    evaluate.main(["--workdir", str(workdir), "--split", "test", "--checkpoint", "best_test"])
  assert info.value.code == 2 and "refused" in capsys.readouterr().err
  assert evaluate.main(["--workdir", str(workdir), "--split", "test"]) == 2
  assert "test.list" in capsys.readouterr().err
  # A test list that shares ids with the run's train/val split is refused too.
  splits = json.loads((workdir / "splits.json").read_text())
  (workdir / "data" / "test.list").write_text(splits["val"][0] + "\n")
  try:
    assert (
      evaluate.main(["--workdir", str(workdir), "--split", "test", "--checkpoint", "best_val"]) == 2
    )
    assert "refusing" in capsys.readouterr().err
  finally:
    (workdir / "data" / "test.list").unlink()


class _ClassOfValue:
  """A 'method' predicting class round(intensity) of each pixel: probabilities [..., 4]."""

  def predict(self, state, images):
    cls = jnp.clip(jnp.rint(images[..., 0]), 0, 3).astype(jnp.int32)
    return jax.nn.one_hot(cls, 4)


def test_2d_patch_size_evaluates_slice_wise_with_per_class_metrics():
  from jaxseg import inference

  config = tiny_config()
  config.data.patch_size = (16, 16)
  config.data.num_classes = 4
  gt = np.zeros((3, 20, 12), np.uint8)
  gt[:, 2:8, 2:6], gt[:, 10:14, 3:9], gt[:, 15:19, 1:11] = 1, 2, 3
  pred_image = gt.astype(np.float32)
  pred_image[:, 15:19, 1:11] = 2.0  # class 3 predicted as 2
  fn = lambda w: np.asarray(_ClassOfValue().predict(None, jnp.asarray(w)))  # noqa: E731
  got = evaluation.predict_case(fn, pred_image, config)
  want, _ = inference.predict_volume_slicewise(
    fn, pred_image, (16, 16), 4, batch_size=config.eval.batch_size
  )
  np.testing.assert_array_equal(got, want)
  summary = evaluation.evaluate(
    _ClassOfValue(), {}, _source([pred_image], [gt]), config, stream=None
  )
  assert summary["inference"].startswith("slice-wise") and summary["n_cases"] == 1
  assert summary["dice_class3"] == 0.0  # class 3 never predicted: upstream zeros
  assert summary["dice_class1"] > 0.5 and 0.0 < summary["dice_class2"] < 1.0
  np.testing.assert_allclose(
    summary["dice"], np.mean([summary[f"dice_class{c}"] for c in (1, 2, 3)])
  )
