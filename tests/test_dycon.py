"""DyCON (jaxseg.methods.dycon): one step by hand, one trace, the NaN skip, the epoch schedules, the
configs, and two-step runs on synthetic data in the LA, BraTS and Pancreas layouts.

The three short runs use the same shrunk network, patch, batch and step count, so their compiled
programs are identical and the persistent compilation cache (tests/conftest.py) serves the second
and third."""

import pathlib

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxseg import config_check
from jaxseg import config_lib
from jaxseg import losses
from jaxseg import methods
from jaxseg.data import DATASETS
from jaxseg.methods import common
from jaxseg.methods import dycon
from jaxseg.methods.dycon import losses as dycon_losses
from tests.conftest import check_short_run
from tests.conftest import random_batch
from tests.conftest import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def _shrink(c, steps: int = 2):
  """Test size: n_filters 4, projection 32 -> 16, batch 4 = 2 + 2, 16^3 patches, 4 labeled."""
  c.total_steps = steps
  c.batch_size, c.labeled_batch_size = 4, 2
  c.model.kwargs.n_filters = 4
  c.model.kwargs.proj_hidden, c.model.kwargs.proj_features = 32, 16
  c.data.labeled = 4
  c.data.patch_size = (16, 16, 16)
  c.eval.stride_xy, c.eval.stride_z = 8, 8
  c.eval.every_steps = 0
  c.log_every_steps = 1
  c.checkpoint_every_steps = 2
  return c


def _config(**dycon):
  c = _shrink(tiny_config("dycon", 2))
  c.dycon.update(dycon)
  return c


def test_step_compiles_once_and_matches_hand_computation():
  config = _config()
  method = methods.build(config)
  assert (method.iters_per_epoch, method.max_epoch) == (2, 2)  # 4 labeled // 2; 2 // 2 + 1
  batch = random_batch(config, seed=1)
  state = method.init(jax.random.PRNGKey(3), batch)

  # The step by hand, first: the step below donates `state` (as the training loop, so that the
  # short runs reuse this compiled program from the persistent cache).
  lb = 2
  rng = jax.random.fold_in(state.rng, state.step)
  student_rng, noise_rng, teacher_rng = jax.random.split(rng, 3)
  x, y = batch["image"], batch["label"]
  noisy = x + jnp.clip(0.1 * jax.random.normal(noise_rng, x.shape), -0.2, 0.2)
  apply = jax.jit(
    lambda p, s, img, k: method.model.apply(
      {"params": p, "batch_stats": s},
      img,
      train=True,
      return_all=True,
      rngs={"dropout": k},
      mutable=["batch_stats"],
    )[0]
  )
  _, zt, ft = apply(state.aux["ema_params"], state.aux["ema_batch_stats"], noisy, teacher_rng)
  _, zs, fs = apply(state.params, state.batch_stats, x, student_rng)
  ps, pt = jax.nn.softmax(zs, -1), jax.nn.softmax(zt, -1)
  ce = losses.cross_entropy(zs[:lb], y[:lb])
  dice = losses.dice_loss(ps[:lb, ..., 1], y[:lb] == 1)
  mask = dycon_losses.patch_labels(y, 8, "trilinear")  # 16^3 patch -> 2^3 feature grid
  fecl = dycon_losses.fecl_loss(
    dycon_losses.embeddings(fs)[lb:], mask[lb:], dycon_losses.embeddings(ft)[lb:], None, 0
  )
  uncl = dycon_losses.uncl_loss(zs, zt, 5.0)  # beta at epoch 0
  mse = jnp.mean((jax.nn.softmax(ps[lb:], -1) - jax.nn.softmax(pt[lb:], -1)) ** 2)
  weight = 0.1 * np.exp(-5.0)  # 0.1 sigmoid_rampup(0 // 150, 200)
  want = (ce + dice) + weight * mse + 0.5 * (fecl + uncl)

  chex.clear_trace_counter()
  step = jax.jit(chex.assert_max_traces(method.train_step, n=1), donate_argnums=0)
  new_state, metrics = step(state, batch)
  np.testing.assert_allclose(float(metrics["loss_fecl"]), float(fecl), rtol=1e-4)
  np.testing.assert_allclose(float(metrics["loss_uncl"]), float(uncl), rtol=1e-4)
  np.testing.assert_allclose(float(metrics["loss"]), float(want), rtol=1e-4)
  assert float(metrics["beta"]) == 5.0 and float(metrics["skipped"]) == 0.0
  chex.assert_trees_all_close(new_state.aux["ema_params"], new_state.params)  # alpha 0 at t = 0
  assert int(new_state.aux["iter_num"]) == 1

  for _ in range(2):
    new_state, metrics = step(new_state, batch)
  # Step 2 is in sampler epoch 1 of max_epoch 2: beta = 5 * 0.1 ** (1 / 2).
  np.testing.assert_allclose(float(metrics["beta"]), 5.0 * 0.1**0.5, rtol=1e-6)
  assert float(metrics["epoch"]) == 1.0
  assert int(new_state.step) == int(new_state.aux["iter_num"]) == 3
  assert np.isfinite(float(metrics["loss"]))


def test_nonfinite_loss_skips_the_update():
  config = _config()
  method = methods.build(config)
  batch = random_batch(config, seed=2)
  state = method.init(jax.random.PRNGKey(0), batch)
  bad = dict(batch, image=batch["image"].at[0, 0, 0, 0, 0].set(jnp.nan))
  old = jax.tree.map(np.asarray, state)
  new_state, metrics = jax.jit(method.train_step, donate_argnums=0)(state, bad)
  state = old
  assert float(metrics["skipped"]) == 1.0 and float(metrics["skipped_total"]) == 1.0
  assert all(np.isfinite(float(v)) for v in metrics.values())  # the loop logs zeros, not NaN
  chex.assert_trees_all_equal(new_state.params, state.params)
  chex.assert_trees_all_equal(new_state.opt_state, state.opt_state)
  chex.assert_trees_all_equal(new_state.aux["ema_params"], state.aux["ema_params"])
  assert int(new_state.step) == 1 and int(new_state.aux["iter_num"]) == 0


def test_variants_and_config_checks():
  # The earlier FeCL (whole batch, avg-pool labels), the teacher-label variant, gambling, static beta.
  config = _config(
    fecl_on="all",
    patch_label_rule="avgpool",
    patch_label_source="teacher",
    use_gambling=True,
    static_beta=0.7,
  )
  method = methods.build(config)
  batch = random_batch(config, seed=3)
  state = jax.eval_shape(method.init, jax.random.PRNGKey(1), batch)
  _, metrics = jax.eval_shape(method.train_step, state, batch)  # traces (no compile: CPU budget)
  assert {"loss_fecl", "loss_uncl", "beta", "skipped"} <= set(metrics)
  assert float(method.beta(jnp.int32(5))) == pytest.approx(0.7)
  c = _config()
  assert float(methods.build(c).beta(jnp.int32(1))) == pytest.approx(5.0 * 0.1**0.5)
  for key, value in (
    ("fecl_on", "labeled"),
    ("patch_label_rule", "nearest"),
    ("patch_label_source", "prediction"),
  ):
    with pytest.raises(ValueError, match=f"config.dycon.{key}"):
      methods.build(_config(**{key: value}))
  bad = _config()
  bad.model.name = "vnet"
  with pytest.raises(ValueError, match="unet3d_dycon"):
    methods.build(bad)


def test_configs_hold_the_upstream_recipe():
  load = lambda name, arg=None: config_lib.load_config_module(REPO / "configs" / name).get_config(
    arg
  )
  c = load("brats_dycon.py", "labeled=50,seed=2")
  config_check.validate(c)
  assert (c.method, c.data.name, c.data.labeled, c.seed) == ("dycon", "brats", 50, 2)
  assert (c.total_steps, c.batch_size, c.labeled_batch_size) == (20000, 8, 4)
  assert tuple(c.data.patch_size) == (96, 96, 96) and c.data.augment == "crop_rot_flip"
  assert (c.optimizer.lr, c.optimizer.lr_schedule, c.optimizer.clip_grad_norm) == (
    0.01,
    "constant",
    1.0,
  )
  assert (c.eval.stride_xy, c.eval.stride_z, c.eval.largest_cc) == (16, 4, True)
  assert (c.dycon.temperature, c.dycon.gamma, c.dycon.u_weight, c.dycon.rampup_epochs) == (
    0.6,
    2.0,
    0.5,
    1500.0,
  )
  assert dycon.iters_per_epoch(load("brats_dycon.py")) == 6  # 25 labels // 4 (upstream)
  la = load("la_dycon.py")
  config_check.validate(la)
  assert (la.data.name, tuple(la.data.patch_size), la.total_steps) == ("la", (112, 112, 80), 15000)
  panc = load("pancreas_dycon.py")
  config_check.validate(panc)
  assert (panc.data.name, panc.data.labeled, tuple(panc.data.patch_size)) == (
    "pancreas",
    12,
    (112, 112, 96),
  )
  # The optimizer clips before weight decay and SGD.
  tx = common.make_optimizer(c)
  params = {"w": jnp.ones(3)}
  updates, _ = tx.update({"w": jnp.full(3, 100.0)}, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], -0.01 * (1 / np.sqrt(3) + 1e-4), rtol=1e-5)


def _synthetic_run(tmp_path, config_file: str, dataset: str, data=None, **synthetic):
  c = config_lib.load_config_module(REPO / "configs" / config_file).get_config()
  _shrink(c)
  c.data.update(data or {})
  cfg = ml_collections.ConfigDict(dict(n_cases=8, shape=(24, 24, 16), seed=0, **synthetic))
  c.data.root = str(DATASETS[dataset].synthesize(tmp_path / "data", cfg))
  summary = check_short_run(c, tmp_path / "run")
  assert summary["n_cases"] == 2


def test_brats_two_step_run_is_finite(tmp_path):
  _synthetic_run(tmp_path, "brats_dycon.py", "brats", n_val=2, n_test=1)


def test_pancreas_two_step_run_is_finite(tmp_path):
  # pancreas_dycon validates on the last n_val names of train.list (6 at full size).
  _synthetic_run(tmp_path, "pancreas_dycon.py", "pancreas", data={"n_val": 2}, n_test=1)
