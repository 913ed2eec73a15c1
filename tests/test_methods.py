"""The method registry (jaxseg/methods/__init__.py) and protocol (jaxseg/methods/base.py): every
registered method conforms, runs its smoke config end to end and evaluates."""

import functools
import pathlib
from collections.abc import Mapping

import chex
import jax
import numpy as np
import pytest

from jaxseg import config_lib
from jaxseg import methods
from jaxseg.methods import base
from tests.conftest import check_short_run
from tests.conftest import random_batch
from tests.conftest import tiny_config

_CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


@functools.cache
def smoke_config_file(name: str) -> pathlib.Path:
  """The first configs/*.py on LA (`data.name == 'la'` before the smoke shrink) whose
  `get_config('smoke=1').method` is `name`."""
  for path in sorted(_CONFIGS.glob("*.py")):
    module = config_lib.load_config_module(path)
    if module.get_config("smoke=1").method == name and module.get_config().data.name == "la":
      return path
  raise LookupError(f"no LA config in {_CONFIGS} has method {name!r}")


def smoke_config(name: str):
  return config_lib.load_config_module(smoke_config_file(name)).get_config("smoke=1")


@pytest.mark.parametrize("name", sorted(methods.METHODS))
def test_method_satisfies_the_protocol(name):
  cls = methods.METHODS[name]
  assert cls.name == name
  assert isinstance(cls.samples_unlabeled, bool)
  assert isinstance(cls.host_targets, Mapping)
  assert all(isinstance(k, str) and callable(f) for k, f in cls.host_targets.items())
  config = smoke_config(name)
  method = methods.build(config)
  assert isinstance(method, base.Method)
  phases = base.phases_of(method)
  assert phases and all(isinstance(p, base.Phase) and callable(p.train_step) for p in phases)
  assert all(p.enter is None or callable(p.enter) for p in phases)
  batch = base.example_batch(config, cls.host_targets)
  assert set(batch) == {"image", "label", *cls.host_targets}
  shape = (config.batch_size, *config.data.patch_size)
  assert batch["image"].shape == shape + (1,) and batch["label"].shape == shape
  assert all(batch[k].shape == shape and batch[k].dtype == np.float32 for k in cls.host_targets)
  # Only the supervised baseline (its config has no unlabeled slots) draws no unlabeled samples.
  assert cls.samples_unlabeled == (config.labeled_batch_size < config.batch_size)


@pytest.mark.parametrize("name", sorted(methods.METHODS))
def test_method_smoke_run_trains_two_steps_and_evaluates(name, tmp_path):
  config = smoke_config(name)
  config.total_steps = 2
  summary = check_short_run(config, tmp_path)
  assert 0.0 <= summary["dice"] <= 1.0
  assert summary["n_cases"] == config.data.n_val and summary["checkpoint_step"] == 2


def _edge_batches(config, host_targets) -> dict[str, dict]:
  """Batches built to hit the numerical edges of the losses: no foreground, only foreground,
  intensities that saturate the logits, and a constant image (constant features)."""
  rng = np.random.default_rng(0)
  shape = (config.batch_size, *config.data.patch_size)
  noise = rng.normal(size=shape + (1,)).astype(np.float32)
  labels = (rng.random(shape) > 0.5).astype(np.int32)
  cases = {
    "empty_foreground": (noise, np.zeros(shape, np.int32)),
    "all_foreground": (noise, np.ones(shape, np.int32)),
    "saturated_logits": (1e4 * noise, labels),
    "constant_image": (np.zeros(shape + (1,), np.float32), labels),
  }
  out = {}
  for case, (image, label) in cases.items():
    batch = {"image": image, "label": label}
    for key, fn in host_targets.items():
      batch[key] = np.stack([np.asarray(fn(l), np.float32) for l in label])
    out[case] = batch
  return out


@pytest.mark.parametrize("name", sorted(methods.METHODS))
def test_method_steps_stay_finite_at_the_edges(name):
  """Every phase's step, compiled once, on each edge batch: finite metrics and parameters (a
  non-finite gradient would reach the parameters through the update)."""
  config = smoke_config(name)
  method = methods.build(config)
  batches = _edge_batches(config, method.host_targets)
  state = method.init(jax.random.PRNGKey(0), base.example_batch(config, method.host_targets))
  for phase in base.phases_of(method):
    step = jax.jit(phase.train_step)
    start = phase.enter(state) if phase.enter is not None else state
    for case, batch in batches.items():
      new_state, metrics = step(start, batch)
      bad = {
        k: np.asarray(v).tolist()
        for k, v in jax.device_get(metrics).items()
        if not np.all(np.isfinite(v))
      }
      assert not bad, f"{name} {phase.name} {case}: non-finite metrics {bad}"
      finite = jax.tree.map(lambda x: bool(np.all(np.isfinite(np.asarray(x)))), new_state.params)
      assert all(jax.tree.leaves(finite)), f"{name} {phase.name} {case}: non-finite parameters"


@pytest.mark.parametrize("name", ["supervised", "mean_teacher"])
def test_train_step_compiles_once_and_learns(name):
  config = tiny_config(name)
  config.optimizer.lr = 0.05
  method = methods.build(config)
  batch = random_batch(config)
  state = method.init(jax.random.PRNGKey(0), batch)
  (phase,) = base.phases_of(method)
  step = jax.jit(chex.assert_max_traces(phase.train_step, n=1))
  first = None
  for _ in range(6):
    state, metrics = step(state, batch)
    first = float(metrics["loss"]) if first is None else first
  assert int(state.step) == 6
  assert float(metrics["loss"]) < first  # same batch: the loss must go down
  probs = method.predict(state, batch["image"])
  np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, rtol=1e-5)


def test_registry_errors_name_the_method():
  config = tiny_config()
  config.method = "nope"
  with pytest.raises(KeyError, match="nope"):
    methods.build(config)
