"""jaxseg/methods/mean_teacher.py: the step's numbers by hand and the EMA warm-up."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg import losses
from jaxseg import methods
from jaxseg.methods import common
from tests.conftest import random_batch
from tests.conftest import tiny_config


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
  t_logits, _ = common.train_forward(
    method.model, state.aux["ema_params"], state.aux["ema_batch_stats"], unl + noise, teacher_rng
  )
  s_logits, _ = common.train_forward(
    method.model, state.params, state.batch_stats, batch["image"], student_rng
  )
  sup, _, _ = losses.supervised_ce_dice(s_logits[:lb], batch["label"][:lb])
  cons = jnp.mean((jax.nn.softmax(s_logits[lb:]) - jax.nn.softmax(t_logits)) ** 2)
  weight = 0.1 * np.exp(-5.0)  # sigmoid_rampup(0 // 150, 40) = exp(-5)
  np.testing.assert_allclose(float(metrics["consistency_weight"]), weight, rtol=1e-6)
  # Two separately compiled programs fuse and sum in different orders: float32 tolerance.
  np.testing.assert_allclose(float(metrics["loss_consistency"]), float(cons), rtol=1e-4)
  np.testing.assert_allclose(float(metrics["loss"]), float(sup + weight * cons), rtol=1e-4)

  # EMA warm-up: alpha = 0 at step 0, so the teacher becomes the student.
  chex.assert_trees_all_close(new_state.aux["ema_params"], new_state.params)
  # Step 1: alpha = 0.5.
  newer, _ = jax.jit(method.train_step)(new_state, batch)
  expected = jax.tree.map(lambda e, p: 0.5 * e + 0.5 * p, new_state.aux["ema_params"], newer.params)
  chex.assert_trees_all_close(newer.aux["ema_params"], expected, rtol=1e-6, atol=1e-7)
