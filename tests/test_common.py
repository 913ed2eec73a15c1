"""jaxseg/methods/common.py: the shared mechanics of the methods (MC passes, BN-statistics
composition, the optimizer and its lr schedules)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxseg import schedules
from jaxseg.methods import common
from tests.conftest import tiny_config


def _close(got, want, tol=1e-6):
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=tol, atol=tol)


def test_compose_bn_stats_equals_sequential_updates():
  m = 0.1
  start, main = jnp.array([1.0, 2.0]), jnp.array([1.5, 2.5])
  stats = jnp.array([[3.0, -1.0], [0.0, 4.0], [2.0, 2.0]])  # batch statistics of 3 forwards
  per_forward = (1 - m) * start[None] + m * stats  # what each vmapped forward writes
  expected = main
  for s in stats:
    expected = (1 - m) * expected + m * s
  _close(common.compose_bn_stats({"v": main}, {"v": start}, {"v": per_forward}, m)["v"], expected)


class _Probe(nn.Module):
  """Returns [x, -x] and records the batch mean as a running statistic (momentum 0.1)."""

  @nn.compact
  def __call__(self, x, train=False):
    mean = self.variable("batch_stats", "mean", lambda: jnp.zeros(()))
    if train:
      mean.value = 0.9 * mean.value + 0.1 * jnp.mean(x)
    return jnp.concatenate([x, -x], axis=-1)


def test_mc_passes_row_order_and_statistics():
  images = jnp.arange(2 * 2 * 2 * 2, dtype=jnp.float32).reshape(2, 2, 2, 2, 1)
  stats = {"mean": jnp.float32(5.0)}
  logits, new_stats = jax.jit(
    lambda x, k: common.mc_passes(
      _Probe(), {}, stats, x, k, passes=6, noise_std=0.0, noise_clip=0.0
    )
  )(images, jax.random.PRNGKey(0))
  # T = 6 passes from 3 forwards on [U1, U2, U1, U2]; pass t of sample b is [t, b].
  expected = jnp.broadcast_to(jnp.concatenate([images, -images], -1)[None], (6, 2, 2, 2, 2, 2))
  np.testing.assert_array_equal(np.asarray(logits), np.asarray(expected))
  # Every forward starts from the same statistics and sees [U, U] (mean 7.5).
  _close(new_stats["mean"], jnp.full((3,), 0.9 * 5.0 + 0.1 * 7.5))
  # With noise, the forwards (and the two copies within one) draw different noise.
  noisy, _ = jax.jit(
    lambda x, k: common.mc_passes(
      _Probe(), {}, stats, x, k, passes=4, noise_std=0.1, noise_clip=0.2
    )
  )(images, jax.random.PRNGKey(0))
  offsets = np.asarray(noisy[..., 0] - images[None, ..., 0])
  assert 0.0 < np.abs(offsets).max() <= 0.2 + 1e-6
  assert len({float(offsets[t, 0, 0, 0, 0]) for t in range(4)}) == 4
  # Chunked (lax.map over single vmapped forwards, the CPU default) draws the same per-forward keys.
  chunked, chunked_stats = jax.jit(
    lambda x, k: common.mc_passes(
      _Probe(), {}, stats, x, k, passes=4, noise_std=0.1, noise_clip=0.2, chunk=1
    )
  )(images, jax.random.PRNGKey(0))
  np.testing.assert_allclose(np.asarray(chunked), np.asarray(noisy), rtol=1e-6)
  _close(
    chunked_stats["mean"],
    jax.jit(
      lambda x, k: common.mc_passes(
        _Probe(), {}, stats, x, k, passes=4, noise_std=0.1, noise_clip=0.2
      )
    )(images, jax.random.PRNGKey(0))[1]["mean"],
  )


def test_mc_passes_loop_equals_vmap_and_rejects_bad_arguments():
  images = jnp.arange(2 * 2 * 2 * 2, dtype=jnp.float32).reshape(2, 2, 2, 2, 1)
  stats = {"mean": jnp.float32(5.0)}
  kw = dict(passes=4, noise_std=0.1, noise_clip=0.2)
  vmapped = common.mc_passes(_Probe(), {}, stats, images, jax.random.PRNGKey(1), **kw)
  looped = common.mc_passes(_Probe(), {}, stats, images, jax.random.PRNGKey(1), impl="loop", **kw)
  for got, want in zip(jax.tree.leaves(looped), jax.tree.leaves(vmapped)):
    _close(got, want)
  with pytest.raises(ValueError, match="impl"):
    common.mc_passes(_Probe(), {}, stats, images, jax.random.PRNGKey(1), impl="scan", **kw)
  with pytest.raises(ValueError, match="multiple of 2"):
    common.mc_passes(
      _Probe(), {}, stats, images, jax.random.PRNGKey(1), passes=3, noise_std=0.0, noise_clip=0.0
    )


def _opt(**kw):
  return ml_collections.ConfigDict(
    dict(
      name="sgd",
      lr=0.01,
      momentum=0.9,
      weight_decay=1e-4,
      lr_schedule="step",
      lr_step_every=3,
      lr_step_factor=0.1,
      **kw,
    )
  )


def test_lr_schedules():
  step = common.lr_schedule(_opt(), 10)
  _close([step(i) for i in (0, 2, 3, 6)], [1e-2, 1e-2, 1e-3, 1e-4])
  _close(common.lr_schedule(_opt(lr_step_begin=1), 10)(3), 1e-2)
  poly = common.lr_schedule(_opt(), 10, kind="poly")
  _close(poly(5), 0.01 * 0.5**0.9)
  _close(common.lr_schedule(_opt(), 10, kind="constant")(7), 0.01)
  with pytest.raises(ValueError, match="lr_schedule='cosine'"):
    common.lr_schedule(_opt(), 10, kind="cosine")
  with pytest.raises(ValueError, match="lr_step_begin"):
    common.lr_schedule(_opt(lr_step_begin=1), 10, kind="poly")


def test_sgd_matches_torch_coupled_weight_decay():
  # torch.optim.SGD(lr, momentum=0.9, weight_decay=wd): g' = g + wd p; buf = 0.9 buf + g'; p -= lr buf
  config = tiny_config("supervised")
  tx = common.make_optimizer(config)
  p = {"w": jnp.array([1.0, -2.0])}
  g = {"w": jnp.array([0.5, 0.25])}
  opt = tx.init(p)
  buf, ref = np.zeros(2), np.array([1.0, -2.0])
  lr, wd = config.optimizer.lr, config.optimizer.weight_decay
  for _ in range(3):
    updates, opt = tx.update(g, opt, p)
    p = jax.tree.map(lambda a, u: a + u, p, updates)
    buf = 0.9 * buf + (np.array([0.5, 0.25]) + wd * ref)
    ref = ref - lr * buf
  np.testing.assert_allclose(np.asarray(p["w"]), ref, rtol=1e-6)
  with pytest.raises(ValueError, match="only 'sgd'"):
    common.sgd(ml_collections.ConfigDict(dict(config.optimizer.to_dict(), name="adam")), 0.01)


def test_lr_is_a_function_of_the_step():
  config = tiny_config("supervised")
  config.optimizer.lr_step_every = 2
  sched = schedules.step_lr(config.optimizer.lr, 2, 0.1)
  assert [float(sched(i)) for i in range(5)] == pytest.approx(
    [config.optimizer.lr * f for f in (1, 1, 0.1, 0.1, 0.01)]
  )


def test_vmap_passes_chunks_give_the_same_values():
  fn = lambda k: jax.random.normal(k, (3,)) * 2.0 + jnp.arange(3.0)  # noqa: E731
  keys = jax.random.split(jax.random.PRNGKey(0), 5)
  whole = common.vmap_passes(fn, keys)
  for chunk in (1, 2, 5, 9):
    np.testing.assert_allclose(common.vmap_passes(fn, keys, chunk), whole, rtol=1e-6)
  assert common.pass_chunk(3) == 3
  assert common.pass_chunk(0) == (1 if jax.default_backend() == "cpu" else 0)


def test_check_images_guards_rank_and_dtype_at_trace_time():
  common.check_images(jnp.zeros((2, 8, 8, 8, 1), jnp.float32))
  common.check_images(jnp.zeros((2, 8, 8, 1), jnp.bfloat16))
  with pytest.raises(AssertionError):
    common.check_images(jnp.zeros((8, 8, 1), jnp.float32))  # no batch axis
  with pytest.raises(AssertionError):
    common.check_images(jnp.zeros((2, 8, 8, 8, 1), jnp.int32))
