"""CML (jaxseg.methods.cml): parity of every cml.npz case, the lr schedule across phases, one trace per
phase and short LA / ACDC runs."""

import json
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import config_check
from jaxseg import config_lib
from jaxseg import methods
from jaxseg import mixing
from jaxseg import postprocess
from jaxseg.methods import cml
from tests.conftest import MAP_TOL
from tests.conftest import SCALAR_TOL
from tests.conftest import channels_last
from tests.conftest import check_short_run
from tests.conftest import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = "cml.npz"


def test_features_discrepancy_loss_parity_and_one_sided_gradient(parity):
  pf = parity(FIXTURE)
  for name in pf.cases_of("features_discrepancy_loss"):
    case = pf.case(name)
    a, b = channels_last(case["input/features_A"]), channels_last(case["input/features_B"])
    fn = jax.jit(cml.features_discrepancy_loss)
    np.testing.assert_allclose(fn(a, b), case["output/loss_AB"], **SCALAR_TOL, err_msg=name)
    if "output/loss_BA" in case:
      np.testing.assert_allclose(fn(b, a), case["output/loss_BA"], **SCALAR_TOL, err_msg=name)
    grad_a, grad_b = jax.grad(cml.features_discrepancy_loss, argnums=(0, 1))(a, b)
    assert float(jnp.abs(grad_a).max()) > 0 and float(jnp.abs(grad_b).max()) == 0, name
  # Zero feature vectors (a channel set dropped everywhere) give cos = 0 and finite gradients.
  z = (
    jnp.zeros((1, 2, 2, 2, 4)).at[0, 0, 0, 0].set(1.0)
  )  # one non-zero position of 8, parallel to b
  g = jax.grad(cml.features_discrepancy_loss)(z, jnp.ones_like(z))
  assert np.all(np.isfinite(g))
  np.testing.assert_allclose(
    cml.features_discrepancy_loss(z, jnp.ones_like(z)), 1 + 1 / 8, rtol=1e-6
  )


def test_supervision_loss_parity(parity):
  pf = parity(FIXTURE)
  for name in pf.cases_of("supervison_loss"):
    case = pf.case(name)
    logits, label = channels_last(case["input/outputs"]), jnp.asarray(case["input/label"])
    outputs = {k[len("output/") :]: v for k, v in case.items() if k.startswith("output/")}
    assert outputs, name
    for key, want in outputs.items():
      # 'loss' / 'loss_no_mask': no weight mask; 'loss_with_mask': with the case's weight_mask.
      mask = jnp.asarray(case["input/weight_mask"]) if key == "loss_with_mask" else None
      got = jax.jit(cml.supervision_loss)(logits, label, mask)
      np.testing.assert_allclose(got, want, **SCALAR_TOL, err_msg=f"{name}/{key}")


def test_box_mask_geometry_parity(parity):
  """Upstream draws the corner with numpy's global RNG; the stored draws fix the box, and the jax
  draw must land in the same range and produce a box of the same size."""
  pf = parity(FIXTURE)
  names = pf.cases_of("generate_mask_3D") + pf.cases_of("generate_mask_2D")
  for name in names:
    case, args = pf.case(name), pf.case_args(name)
    spatial = tuple(args["img_shape"][2:])
    size = mixing.box_size(spatial, args["mask_ratio"])
    got = mixing.box_mask_at(case["output/draws"], size, spatial)
    np.testing.assert_array_equal(got, case["output/mask"], err_msg=name)
    np.testing.assert_array_equal(
      np.broadcast_to(got, case["output/loss_mask"].shape), case["output/loss_mask"], err_msg=name
    )
    for seed in range(2):
      m = np.asarray(
        cml.cutmix_box(jax.random.PRNGKey(seed), jnp.zeros((1, *spatial, 1)), args["mask_ratio"])
      )
      zeros = np.argwhere(m == 0)
      assert len(zeros) == np.prod(size), name
      lo, hi = zeros.min(0), zeros.max(0) + 1
      np.testing.assert_array_equal(hi - lo, size, err_msg=name)
      assert np.all(lo <= np.array(spatial) - np.array(size) - 1), name


def test_la_cutmix_and_pseudo_label_parity(parity):
  pf = parity(FIXTURE)
  for name in pf.cases_of("inline CutMix (train()) + get_cut_mask/LargestCC_pancreas"):
    case, args = pf.case(name), pf.case_args(name)
    lb, half = args["labeled_bs"], args["sub_bs"]
    images = channels_last(case["input/volume_batch"])
    labels = jnp.asarray(case["input/label_batch"])
    lmask, umask = jnp.asarray(case["input/img_mask"]), jnp.asarray(case["input/unimg_mask"])
    plab = jax.jit(postprocess.cut_mask_pseudo_labels)(channels_last(case["input/unoutputs1"]))
    plab_sub = jax.jit(postprocess.cut_mask_pseudo_labels)(channels_last(case["input/unoutputs2"]))
    np.testing.assert_array_equal(plab, case["output/plab"], err_msg=name)
    np.testing.assert_array_equal(plab_sub, case["output/plab_sub"], err_msg=name)
    unlabeled = images[lb:]
    uhalf = unlabeled.shape[0] // 2
    want = {
      "mixl_img": cml.mix_pair(images[:half], images[half:lb], lmask),
      "mixl_lab": cml.mix_pair(labels[:half], labels[half:lb], lmask),
      "mixu_img": cml.mix_pair(unlabeled[:uhalf], unlabeled[uhalf:], umask),
      "mixu_lab": cml.mix_pair(labels[lb : lb + uhalf], labels[lb + uhalf :], umask),
    }
    want["mixu_plab"], want["mixu_plab_sub"] = cml.heterogeneous_targets(plab, plab_sub, umask)
    for key, got in want.items():
      ref = case[f"output/{key}"]
      ref = np.moveaxis(ref, 1, -1) if ref.ndim == images.ndim else ref
      np.testing.assert_allclose(got, ref, **MAP_TOL, err_msg=f"{name}/{key}")


def test_acdc_pseudo_label_parity(parity):
  pf = parity(FIXTURE)
  for name in pf.cases_of("get_ACDC_masks"):
    case = pf.case(name)
    logits = channels_last(case["input/logits"])
    np.testing.assert_array_equal(
      jnp.argmax(jax.nn.softmax(logits, -1), -1), case["output/nms0"], err_msg=name
    )
    np.testing.assert_array_equal(
      jax.jit(postprocess.cut_mask_pseudo_labels)(logits), case["output/nms1"], err_msg=name
    )


def test_lr_schedule_is_constant_in_pretrain_and_steps_in_main():
  c = config_lib.load_config_module(REPO / "configs" / "la_cml.py").get_config("labeled=16,seed=3")
  config_check.validate(c)
  assert (c.method, c.model.name, c.data.labeled, c.seed) == ("cml", "cml_vnet", 16, 3)
  assert (c.total_steps, c.cml.pretrain_steps, c.batch_size, c.labeled_batch_size) == (
    17000,
    2000,
    8,
    4,
  )
  assert (c.cml.u_weight, c.cml.dis_weight, c.eval.largest_cc) == (1.0, 0.2, True)
  lr = cml.lr_schedule(c)
  # main step t (0-based) runs at 0.01 * 0.1 ** (t // 2500): upstream sets it after the t-th update.
  for step, want in (
    (0, 1e-2),
    (1999, 1e-2),
    (2000, 1e-2),
    (4499, 1e-2),
    (4500, 1e-3),
    (6999, 1e-3),
    (7000, 1e-4),
    (16999, 1e-7),
  ):
    np.testing.assert_allclose(float(lr(step)), want, rtol=1e-5, err_msg=str(step))
  c.optimizer.lr_schedule = "constant"
  assert float(cml.lr_schedule(c)(10_000)) == pytest.approx(0.01)


class _TracedCML(cml.CML):
  """CML whose phase steps fail on a second trace (the loop jits each phase once)."""

  def __init__(self, config):
    super().__init__(config)
    self._traced = tuple(
      type(p)(p.name, p.start, chex.assert_max_traces(p.train_step, n=1), p.enter)
      for p in super().phases()
    )

  def phases(self):
    return self._traced


def test_la_short_run_each_phase_traced_once(tmp_path, monkeypatch):
  config = tiny_config("cml", steps=4)
  config.cml.pretrain_steps = 2
  monkeypatch.setitem(methods.METHODS, "cml", _TracedCML)
  chex.clear_trace_counter()
  check_short_run(config, tmp_path)
  method = _TracedCML(config)
  assert [(p.name, p.start) for p in method.phases()] == [("pretrain", 0), ("main", 2)]
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert "loss_u" not in records[1] and "loss_u" in records[2]  # phase switch after 2 steps


def test_acdc_short_run(tmp_path):
  from jaxseg.data import DATASETS

  c = config_lib.load_config_module(REPO / "configs" / "acdc_cml.py").get_config("labeled=2,seed=0")
  assert c.model.name == "cml_unet2d" and c.model.kwargs.shared_branches
  c.total_steps, c.cml.pretrain_steps = 2, 1
  c.batch_size, c.labeled_batch_size = 4, 2
  c.data.patch_size = (32, 32)
  c.model.kwargs.feature_chns = (4, 8, 16, 32, 64)
  c.data.root = str(DATASETS["acdc"].synthesize(tmp_path / "acdc", c.data.get("synthetic")))
  c.eval.every_steps = 0
  c.eval.max_cases = 1
  c.log_every_steps = 1
  check_short_run(c, tmp_path / "run")
