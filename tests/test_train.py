"""The training loop end to end at tiny size: outputs and their modes, the NaN guard, phases.
(Faults injected in a subprocess: tests/test_faults.py.)"""

import csv
import json
import os
import stat

import numpy as np
import pytest

from jaxseg import errors
from jaxseg import train
from tests.conftest import tiny_config


def test_run_writes_every_output(tmp_path):
  config = tiny_config("mean_teacher", steps=3)
  summary = train.train_and_evaluate(config, tmp_path)
  assert summary["mode"] == "parity" and summary["n_cases"] == config.data.n_val
  for name in ("config.json", "env.json", "splits.json", "metrics.jsonl"):
    assert (tmp_path / name).exists(), name
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [1, 2, 3]
  assert all(np.isfinite(r["loss"]) for r in records)
  rows = list(csv.DictReader(open(tmp_path / "eval" / "val" / "cases.csv")))
  assert len(rows) == config.data.n_val
  on_disk = json.loads((tmp_path / "eval" / "val" / "summary.json").read_text())
  np.testing.assert_allclose(on_disk["dice"], np.mean([float(r["dice"]) for r in rows]))
  env = json.loads((tmp_path / "env.json").read_text())
  assert env["jax"] and env["devices"]
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  # Readable by the lab group: results, logs and checkpoints take the umask's mode (0644 / 0755).
  umask = os.umask(0)
  os.umask(umask)
  for path in [tmp_path / "eval", *tmp_path.rglob("*")]:
    if not path.is_symlink() and path.name != ".lock":
      want = (0o777 if path.is_dir() else 0o666) & ~umask
      assert stat.S_IMODE(path.stat().st_mode) == want, path
  # The same command on a finished workdir does not train again.
  again = train.train_and_evaluate(config, tmp_path)
  assert again["dice"] == pytest.approx(on_disk["dice"])


def test_non_finite_loss_stops_the_run(tmp_path):
  config = tiny_config("supervised", steps=6)
  config.optimizer.lr = 1e30
  with pytest.raises(train.NonFiniteLossError, match=r"^step \d+: non-finite") as e:
    train.train_and_evaluate(config, tmp_path)
  assert isinstance(e.value, errors.UserError)  # the command line prints it as one line
  bad_step = int(str(e.value).split(":")[0].split()[1])
  ckpts = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert all(c < bad_step for c in ckpts), (ckpts, bad_step)
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert all(r["step"] < bad_step for r in records)


def test_missing_dataset_says_where_it_looked(tmp_path, monkeypatch):
  from jaxseg.data import DataError

  monkeypatch.delenv("JAXSEG_DATA_DIR", raising=False)
  config = tiny_config("mean_teacher")
  config.data.name = "la"
  config.data.root = str(tmp_path / "nowhere")
  with pytest.raises(DataError, match="nowhere"):
    train.train_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()  # a run that never started leaves nothing


class _TwoPhaseSupervised:
  """Supervised training split into two phases; `enter` of the second counts in aux. Every
  instance is appended to `built`."""

  name = "supervised"
  samples_unlabeled = False
  host_targets = {}
  built = []

  def __init__(self, config):
    from jaxseg.methods.supervised import Supervised

    self.built.append(self)
    self.inner = Supervised(config)
    self.model, self.tx = self.inner.model, self.inner.tx
    self.traces = {"first": 0, "second": 0, "enter": 0}

    def step(name):
      def fn(state, batch):
        self.traces[name] += 1
        state, metrics = self.inner.train_step(state, batch)
        return state, dict(metrics, entered=state.aux["entered"])

      return fn

    def enter(state):
      self.traces["enter"] += 1
      return state.replace(aux={"entered": state.aux["entered"] + 1})

    from jaxseg.methods import base

    self._phases = (
      base.Phase("first", 0, step("first")),
      base.Phase("second", 2, step("second"), enter),
    )

  def phases(self):
    return self._phases

  def init(self, rng, example_batch):
    import jax.numpy as jnp

    return self.inner.init(rng, example_batch).replace(aux={"entered": jnp.zeros((), jnp.int32)})

  def predict(self, state, images):
    return self.inner.predict(state, images)


def test_phases_run_in_order_and_enter_once(tmp_path, monkeypatch):
  from jaxseg import methods

  built = _TwoPhaseSupervised.built
  built.clear()
  monkeypatch.setitem(methods.METHODS, "supervised", _TwoPhaseSupervised)
  config = tiny_config("supervised", steps=4)
  config.checkpoint_every_steps = 2
  train.train_and_evaluate(config, tmp_path)
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  # Steps 1-2 run before the second phase's enter, steps 3-4 after it.
  assert [r["entered"] for r in records] == [0, 0, 1, 1]
  assert built[0].traces == {"first": 1, "second": 1, "enter": 1}  # each compiled once

  # Resuming at the phase boundary (checkpoint of step 2, taken before `enter`) enters again.
  import shutil

  shutil.rmtree(tmp_path / "checkpoints" / "4")
  shutil.rmtree(tmp_path / "eval")
  train.train_and_evaluate(config, tmp_path)
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["entered"] for r in records] == [0, 0, 1, 1]
  assert built[1].traces == {"first": 0, "second": 1, "enter": 1}


def test_phase_starts_are_checked():
  from jaxseg.methods import base

  class Bad:
    def phases(self):
      return (base.Phase("a", 1, None),)

  with pytest.raises(ValueError, match="start at step 0"):
    base.phases_of(Bad())
  good = (base.Phase("a", 0, None), base.Phase("b", 5, None))
  assert base.phase_at(good, 4).name == "a" and base.phase_at(good, 5).name == "b"


def test_log_window_averages_each_metric_over_its_own_steps():
  from jaxseg import train

  window = {}
  train._accumulate(window, {"loss": 1.0, "ce": 4.0})
  train._accumulate(window, {"loss": 3.0})  # a phase that logs fewer metrics
  train._accumulate(window, {"loss": 5.0, "ce": 8.0})
  means = {k: float(a.compute()) for k, a in window.items()}
  assert means == {"loss": 3.0, "ce": 6.0}
