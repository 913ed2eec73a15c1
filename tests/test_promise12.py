"""PROMISE12 with the original V-Net: the data source on its synthetic stand-in (layout, splits, bad
input), the release's Dice loss layer, and the config's smoke run."""

import pathlib

import h5py
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxseg import config_lib
from jaxseg import losses
from jaxseg.data import DATASETS
from jaxseg.data import promise12
from jaxseg.data import synthetic
from jaxseg.data.h5io import DataError
from jaxseg.data.h5io import write_case
from tests.conftest import check_short_run

_REPO = pathlib.Path(__file__).resolve().parents[1]


def _synth(tmp_path, **kw):
  cfg = ml_collections.ConfigDict(dict(n_cases=6, n_test=1, shape=(16, 12, 8), seed=3))
  cfg.update(kw)
  return promise12.synthesize(tmp_path / "promise12", cfg)


def _data(**kw):
  return ml_collections.ConfigDict({**dict(labeled=2, n_val=2), **kw})


def test_registered_and_find_root(tmp_path, monkeypatch):
  assert DATASETS["promise12"] is promise12.DATASET
  monkeypatch.delenv("JAXSEG_DATA_DIR", raising=False)
  with pytest.raises(DataError, match="PROMISE12 data not found.*jaxseg.prepare promise12"):
    promise12.find_root(None)
  with pytest.raises(DataError, match="no train.list"):
    promise12.find_root(tmp_path)
  root = _synth(tmp_path)
  assert promise12.find_root(root) == root
  monkeypatch.setenv("JAXSEG_DATA_DIR", str(root))
  assert promise12.find_root(None) == root


def test_stand_in_layout_and_reads(tmp_path):
  root = _synth(tmp_path)
  train = (root / "train.list").read_text().split()
  assert train == [f"Case{i:02d}" for i in range(6)]
  assert (root / "test.list").read_text().split() == ["Case06"]
  assert not (_synth(tmp_path / "b", n_test=0) / "test.list").exists()
  src = promise12.source(root, train[:2])
  item = src[1]
  assert item["case"] == "Case01"
  want_image, want_label = synthetic.make_case(3, 1, (16, 12, 8))
  np.testing.assert_array_equal(item["image"], want_image.astype(np.float32))
  np.testing.assert_array_equal(item["label"], want_label)
  assert item["image"].dtype == np.float32 and item["label"].dtype == np.uint8
  assert set(np.unique(item["label"])) == {0, 1}


def test_splits(tmp_path):
  root = _synth(tmp_path)
  s = promise12.make_splits(root, _data())
  assert s["val"] == ["Case04", "Case05"]
  assert s["labeled"] == ["Case00", "Case01"] and s["unlabeled"] == ["Case02", "Case03"]
  (root / "val.list").write_text("Case06\n")
  s = promise12.make_splits(root, _data(labeled=6))
  assert s["val"] == ["Case06"] and s["labeled"] == [f"Case{i:02d}" for i in range(6)]


def test_bad_input(tmp_path):
  root = _synth(tmp_path)
  with pytest.raises(DataError, match="labeled=9 must be in"):
    promise12.make_splits(root, _data(labeled=9))
  promise12.case_path(root, "Case05").unlink()
  with pytest.raises(DataError, match="Case05.h5"):
    promise12.make_splits(root, _data())
  with h5py.File(promise12.case_path(root, "Case00"), "w") as f:
    f["image"] = np.zeros((16, 12, 8), np.float32)
  with pytest.raises(DataError, match="Case00.h5.*label"):
    promise12.source(root, ["Case00"])[0]
  write_case(
    promise12.case_path(root, "Case01"),
    np.zeros((4, 4, 4), np.float32),
    np.full((4, 4, 4), 2, np.uint8),
  )
  with pytest.raises(DataError, match="Case01.h5"):
    promise12.source(root, ["Case01"])[0]
  (root / "train.list").write_text("Case00\nCase00\n")
  with pytest.raises(DataError, match="duplicated"):
    promise12.make_splits(root, _data())
  with pytest.raises(ValueError, match="n_cases >= 1"):
    promise12.synthesize(tmp_path / "c", {"n_cases": 0})


def _caffe_dice_layer(probs, labels):
  """faustomilletari/VNet pyLayer.py DiceLoss in numpy: (forward top, bottom diff) on the
  softmax output probs [B, 2, V] with labels [B, V]."""
  result = np.argmax(probs, axis=1).astype(np.float32)
  gt = (labels > 0.5).astype(np.float32)
  diff, dice = np.zeros_like(probs), []
  for i in range(probs.shape[0]):
    union = result[i].sum() + gt[i].sum()
    inter = (result[i] * gt[i]).sum()
    dice.append(2 * inter / (union + 0.00001))
    term = 2.0 * (gt[i] * union / union**2 - 2.0 * probs[i, 1] * inter / union**2)
    diff[i, 0] += term
    diff[i, 1] -= term
  return np.sum(dice), diff


def test_vnet_caffe_dice_loss_is_the_release_layer():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 4, 4, 2, 2)).astype(np.float64)
  labels = (rng.random((3, 4, 4, 2)) > 0.6).astype(np.int32)
  with jax.enable_x64(True):
    (value, mean_dice), grad = jax.value_and_grad(losses.vnet_caffe_dice_loss, has_aux=True)(
      jnp.asarray(logits), jnp.asarray(labels)
    )
    probs = jax.nn.softmax(jnp.asarray(logits), -1)
    top, diff = _caffe_dice_layer(
      np.moveaxis(np.asarray(probs), -1, 1).reshape(3, 2, -1), labels.reshape(3, -1)
    )
    # Caffe's diff is on the softmax output; chain it through the softmax to the logits.
    _, vjp = jax.vjp(lambda z: jax.nn.softmax(z, -1), jnp.asarray(logits))
    want = vjp(jnp.asarray(np.moveaxis(diff.reshape(3, 2, 4, 4, 2), 1, -1)))[0]
  # The layer keeps its Dice, union and g U / U^2 in float32.
  np.testing.assert_allclose(float(value), 3 - top, rtol=1e-6)
  np.testing.assert_allclose(float(mean_dice), top / 3, rtol=1e-6)
  np.testing.assert_allclose(grad, want, rtol=1e-6, atol=1e-12)
  assert np.abs(want).max() > 1e-3
  with pytest.raises(ValueError, match="logits"):
    losses.vnet_caffe_dice_loss(jnp.zeros((1, 4, 3)), jnp.zeros((1, 4)))


def test_vnet_caffe_dice_loss_empty_sample_has_no_gradient():
  logits = jnp.stack([jnp.ones((1, 8)), -jnp.ones((1, 8))], -1)  # predicts background everywhere
  value, grad = jax.value_and_grad(
    lambda z: losses.vnet_caffe_dice_loss(z, jnp.zeros((1, 8), jnp.int32))[0]
  )(logits)
  assert float(value) == 1.0 and not np.any(np.asarray(grad))


def test_config_smoke_trains_and_evaluates(tmp_path):
  module = config_lib.load_config_module(_REPO / "configs" / "promise12_vnet.py")
  full = module.get_config()
  assert (full.model.name, full.loss, full.data.name) == (
    "vnet_milletari",
    "vnet_caffe_dice",
    "promise12",
  )
  assert tuple(full.data.spacing) == (1.0, 1.0, 1.5)
  assert tuple(full.data.patch_size) == (128, 128, 64) and full.batch_size == 2
  c = module.get_config("smoke=1,labeled=2")
  c.total_steps = 2
  summary = check_short_run(c, tmp_path / "run")
  assert (summary["n_cases"], summary["checkpoint_step"]) == (c.data.n_val, 2)
