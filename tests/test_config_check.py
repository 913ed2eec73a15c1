"""jaxseg/config_check.py: each rule rejects a bad config with a message naming the field; the batch
rule follows the method class's `samples_unlabeled`."""

import pathlib

import pytest

from jaxseg import config_check
from jaxseg import config_lib
from jaxseg import methods

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(name: str = "la_mt.py", arg: str = "labeled=8,seed=0"):
  return config_lib.load_config_module(REPO / "configs" / name).get_config(arg)


def test_good_configs_pass():
  config_check.validate(_config())
  config_check.validate(_config("la_vnet.py"))
  config_check.validate(_config("acdc_bcp.py", "labeled=1"))  # ACDC counts patients, not slices


@pytest.mark.parametrize(
  "edit,message",
  [
    (dict(method="nope"), r"method='nope' is not one of \["),
    (dict(total_steps=0), "total_steps=0 must be >= 1"),
    (dict(labeled_batch_size=0), "labeled_batch_size=0 must be in 1..batch_size=4"),
    (dict(labeled_batch_size=5), "labeled_batch_size=5 must be in 1..batch_size=4"),
    (
      dict(labeled_batch_size=4),
      "method mean_teacher needs unlabeled samples: labeled_batch_size=4 must be < batch_size=4",
    ),
    ({"data.labeled": 1}, "data.labeled=1 is smaller than labeled_batch_size=2"),
    ({"data.num_classes": 3}, "model.kwargs.n_classes=2 differs from data.num_classes=3"),
    (
      {"data.patch_size": (112, 112, 81)},
      r"data.patch_size=\(112, 112, 81\): every side must be "
      "divisible by 16",
    ),
    (
      {"data.spacing": (0.625, 0.625, 0.625, 2.5, 2.5, 2.5)},
      r"data.spacing=\(0.625, 0.625, 0.625, 2.5, 2.5, 2.5\): must be 3 positive mm values",
    ),
    ({"data.spacing": (0.625, 0.0, 0.625)}, r"data.spacing=\(0.625, 0.0, 0.625\): must be 3"),
    ({"data.worker_count": 2}, "data.worker_count=2: only 0"),
    ({"eval.mode": "best"}, "eval.mode='best': must be 'parity' or 'clean'"),
  ],
)
def test_each_rule_names_the_field(edit, message):
  config = _config()
  for key, value in edit.items():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  with pytest.raises(ValueError, match="invalid config: " + message):
    config_check.validate(config)


def test_supervised_batches_are_all_labeled():
  config = _config("la_vnet.py")
  config.labeled_batch_size = 2
  with pytest.raises(
    ValueError,
    match="method supervised trains on labeled data only: "
    "labeled_batch_size=2 must equal batch_size=4",
  ):
    config_check.validate(config)


def test_batch_rule_reads_the_method_class(monkeypatch):
  """The rule is the registered class's `samples_unlabeled`, not the method's name."""
  assert methods.METHODS["supervised"].samples_unlabeled is False
  assert all(cls.samples_unlabeled for name, cls in methods.METHODS.items() if name != "supervised")

  class LabeledOnlyMT(methods.METHODS["mean_teacher"]):
    samples_unlabeled = False

  monkeypatch.setitem(methods.METHODS, "mean_teacher", LabeledOnlyMT)
  config = _config()
  with pytest.raises(ValueError, match="method mean_teacher trains on labeled data only"):
    config_check.validate(config)
  config.labeled_batch_size = config.batch_size
  config_check.validate(config)


def test_sigmoid_head_serves_a_binary_task():
  config = _config("la_dtc.py")
  assert config.model.kwargs.n_classes == 1 and config.data.num_classes == 2
  config_check.validate(config)
  config.data.num_classes = 3
  with pytest.raises(ValueError, match="n_classes=1 differs from data.num_classes=3"):
    config_check.validate(config)
