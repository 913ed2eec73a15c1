"""Methods: purity (one trace), the Mean Teacher step's numbers, EMA warm-up, registry."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import losses
from jaxseg import methods
from jaxseg import schedules
from jaxseg.methods import common
from tests.conftest import random_batch, tiny_config


@pytest.mark.parametrize("name", ["supervised", "mean_teacher"])
def test_train_step_compiles_once_and_learns(name):
  config = tiny_config(name)
  config.optimizer.lr = 0.05
  method = methods.build(config)
  batch = random_batch(config)
  state = method.init(jax.random.PRNGKey(0), batch)
  step = jax.jit(chex.assert_max_traces(method.train_step, n=1))
  first = None
  for _ in range(6):
    state, metrics = step(state, batch)
    first = float(metrics["loss"]) if first is None else first
  assert int(state.step) == 6
  assert float(metrics["loss"]) < first  # same batch: the loss must go down
  probs = method.predict(state, batch["image"])
  np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, rtol=1e-5)


def test_mean_teacher_step_matches_hand_computation():
  config = tiny_config("mean_teacher")
  method = methods.build(config)
  batch = random_batch(config, seed=1)
  state = method.init(jax.random.PRNGKey(3), batch)
  new_state, metrics = jax.jit(method.train_step)(state, batch)

  # Recompute the step's loss from the same keys, outside the method.
  lb = config.labeled_batch_size
  rng = jax.random.fold_in(state.rng, state.step)
  student_rng, noise_rng, teacher_rng = jax.random.split(rng, 3)
  unl = batch["image"][lb:]
  noise = jnp.clip(0.1 * jax.random.normal(noise_rng, unl.shape), -0.2, 0.2)
  assert float(jnp.abs(noise).max()) <= 0.2 + 1e-7
  t_logits, _ = common.train_forward(method.model, state.aux["ema_params"],
                                     state.aux["ema_batch_stats"], unl + noise, teacher_rng)
  s_logits, _ = common.train_forward(method.model, state.params, state.batch_stats,
                                     batch["image"], student_rng)
  sup, _, _ = losses.supervised_ce_dice(s_logits[:lb], batch["label"][:lb])
  cons = jnp.mean((jax.nn.softmax(s_logits[lb:]) - jax.nn.softmax(t_logits)) ** 2)
  weight = 0.1 * np.exp(-5.0)  # sigmoid_rampup(0 // 150, 40) = exp(-5)
  np.testing.assert_allclose(float(metrics["consistency_weight"]), weight, rtol=1e-6)
  np.testing.assert_allclose(float(metrics["loss_consistency"]), float(cons), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["loss"]), float(sup + weight * cons), rtol=1e-5)

  # EMA warm-up: alpha = 0 at step 0, so the teacher becomes the student.
  chex.assert_trees_all_close(new_state.aux["ema_params"], new_state.params)
  # Step 1: alpha = 0.5.
  newer, _ = jax.jit(method.train_step)(new_state, batch)
  expected = jax.tree.map(lambda e, p: 0.5 * e + 0.5 * p, new_state.aux["ema_params"], newer.params)
  chex.assert_trees_all_close(newer.aux["ema_params"], expected, rtol=1e-6, atol=1e-7)


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


def test_lr_is_a_function_of_the_step():
  config = tiny_config("supervised")
  config.optimizer.lr_step_every = 2
  sched = schedules.step_lr(config.optimizer.lr, 2, 0.1)
  assert [float(sched(i)) for i in range(5)] == pytest.approx(
      [config.optimizer.lr * f for f in (1, 1, 0.1, 0.1, 0.01)])


def test_registry_errors_name_the_method():
  config = tiny_config()
  config.method = "nope"
  with pytest.raises(KeyError, match="nope"):
    methods.build(config)


def test_vmap_passes_chunks_give_the_same_values():
  fn = lambda k: jax.random.normal(k, (3,)) * 2.0 + jnp.arange(3.0)  # noqa: E731
  keys = jax.random.split(jax.random.PRNGKey(0), 5)
  whole = common.vmap_passes(fn, keys)
  for chunk in (1, 2, 5, 9):
    np.testing.assert_allclose(common.vmap_passes(fn, keys, chunk), whole, rtol=1e-6)
  assert common.pass_chunk(3) == 3
  assert common.pass_chunk(0) == (1 if jax.default_backend() == "cpu" else 0)
