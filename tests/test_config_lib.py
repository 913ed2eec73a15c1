"""Configs: every file loads and validates, arguments parse, bad values name the field."""
import pathlib

import pytest

from jaxseg import config_lib

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[1] / "configs").glob("*.py"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_loads_validates_and_documents_its_command(path):
  module = config_lib.load_config_module(path)
  config = module.get_config()
  config_lib.validate(config)
  for field in ("method", "seed", "total_steps", "batch_size", "labeled_batch_size"):
    assert field in config, field
  assert config.model.name and config.data.name and "root" in config.data
  assert config.eval.mode in ("parity", "clean")
  assert "python -m jaxseg.main" in module.__doc__


def test_la_recipes_hold_the_upstream_hyperparameters():
  mt = config_lib.load_config_module(CONFIGS[0].with_name("la_mt.py")).get_config("labeled=8,seed=3")
  assert (mt.data.labeled, mt.seed, mt.total_steps) == (8, 3, 6000)
  assert tuple(mt.data.patch_size) == (112, 112, 80)
  assert (mt.batch_size, mt.labeled_batch_size) == (4, 2)
  assert (mt.optimizer.lr, mt.optimizer.momentum, mt.optimizer.weight_decay) == (0.01, 0.9, 1e-4)
  assert (mt.optimizer.lr_step_every, mt.optimizer.lr_step_factor) == (2500, 0.1)
  assert (mt.mt.ema_decay, mt.mt.consistency, mt.mt.consistency_rampup) == (0.99, 0.1, 40.0)
  assert (mt.mt.noise_std, mt.mt.noise_clip, mt.mt.iters_per_epoch) == (0.1, 0.2, 150)
  assert (mt.eval.stride_xy, mt.eval.stride_z) == (18, 4)
  assert mt.model.kwargs.n_filters == 16 and mt.model.kwargs.has_dropout
  sup = config_lib.load_config_module(CONFIGS[0].with_name("la_vnet.py")).get_config()
  assert sup.method == "supervised" and sup.labeled_batch_size == sup.batch_size == 4
  assert sup.data.labeled == 16


def test_parse_arg_types_and_errors():
  a = config_lib.parse_arg("labeled=8,seed=2", labeled=16, seed=1337, name="x")
  assert (a.labeled, a.seed, a.name) == (8, 2, "x")
  with pytest.raises(ValueError, match="unknown_key"):
    config_lib.parse_arg("unknown_key=1", labeled=16)
  with pytest.raises(ValueError, match="key=value"):
    config_lib.parse_arg("labeled", labeled=16)


@pytest.mark.parametrize("field,value,message", [
    ("method", "nope", "method"),
    ("labeled_batch_size", 4, "unlabeled"),
    ("total_steps", 0, "total_steps"),
])
def test_validate_names_the_bad_field(field, value, message):
  config = config_lib.la_recipe("mean_teacher", labeled=8, seed=0)
  config[field] = value
  with pytest.raises(ValueError, match=message):
    config_lib.validate(config)


def test_validate_patch_and_class_count():
  config = config_lib.la_recipe("mean_teacher", labeled=8, seed=0)
  config.data.patch_size = (112, 112, 81)
  with pytest.raises(ValueError, match="divisible by 16"):
    config_lib.validate(config)
  config = config_lib.la_recipe("mean_teacher", labeled=8, seed=0)
  config.data.num_classes = 3
  with pytest.raises(ValueError, match="n_classes"):
    config_lib.validate(config)
