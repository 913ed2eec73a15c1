"""The training loop end to end at tiny size: outputs, resume after SIGKILL, the NaN guard."""
import csv
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from jaxseg import train
from tests.conftest import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run_main(workdir, *overrides, env_extra=None):
  env = dict(os.environ)
  env.update(env_extra or {})
  cmd = [sys.executable, "-m", "jaxseg.main", "--config", "configs/smoke.py:method=mean_teacher,steps=6",
         "--workdir", str(workdir), *overrides]
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


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
  # The same command on a finished workdir does not train again.
  again = train.train_and_evaluate(config, tmp_path)
  assert again["dice"] == pytest.approx(on_disk["dice"])


def test_sigkilled_run_resumes_to_the_same_result(tmp_path):
  straight = _run_main(tmp_path / "straight")
  assert straight.returncode == 0, straight.stderr[-3000:]

  killed = _run_main(tmp_path / "killed", env_extra={train._FAULT_ENV: "3"})
  assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL, mid-run
  assert not (tmp_path / "killed" / "eval").exists()
  resumed = _run_main(tmp_path / "killed")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from" in resumed.stdout

  a = json.loads((tmp_path / "straight" / "eval" / "val" / "summary.json").read_text())
  b = json.loads((tmp_path / "killed" / "eval" / "val" / "summary.json").read_text())
  for k in ("dice", "jaccard", "hd95", "asd"):
    assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-9), k
  la = [json.loads(l) for l in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
  lb = [json.loads(l) for l in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in lb] == [r["step"] for r in la]  # no step lost or logged twice
  np.testing.assert_allclose([r["loss"] for r in lb], [r["loss"] for r in la], rtol=1e-6)


def test_non_finite_loss_stops_the_run(tmp_path):
  config = tiny_config("supervised", steps=6)
  config.optimizer.lr = 1e30
  with pytest.raises(train.NonFiniteLossError, match="non-finite"):
    train.train_and_evaluate(config, tmp_path)
  ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert "6" not in ckpts


def test_missing_dataset_says_where_it_looked(tmp_path, monkeypatch):
  from jaxseg.data import DataError
  monkeypatch.delenv("JAXSEG_DATA_DIR", raising=False)
  config = tiny_config("mean_teacher")
  config.data.name = "la"
  config.data.root = str(tmp_path / "nowhere")
  with pytest.raises(DataError, match="nowhere"):
    train.train_and_evaluate(config, tmp_path / "run")


class _TwoPhaseSupervised:
  """Supervised training split into two phases; `enter` of the second counts in aux."""

  def __init__(self, config):
    from jaxseg.methods import common
    from jaxseg.methods.supervised import Supervised
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

    self.phases = (common.Phase("first", 0, step("first")),
                   common.Phase("second", 2, step("second"), enter))

  def init(self, rng, example_batch):
    import jax.numpy as jnp
    return self.inner.init(rng, example_batch).replace(aux={"entered": jnp.zeros((), jnp.int32)})

  def predict(self, state, images):
    return self.inner.predict(state, images)


def test_phases_run_in_order_and_enter_once(tmp_path, monkeypatch):
  from jaxseg import methods
  built = []
  monkeypatch.setitem(methods.METHODS, "supervised",
                      lambda c: built.append(_TwoPhaseSupervised(c)) or built[-1])
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
  from jaxseg.methods import common

  class Bad:
    phases = (common.Phase("a", 1, None),)
  with pytest.raises(ValueError, match="start at step 0"):
    common.phases_of(Bad())
  good = (common.Phase("a", 0, None), common.Phase("b", 5, None))
  assert common.phase_at(good, 4).name == "a" and common.phase_at(good, 5).name == "b"
