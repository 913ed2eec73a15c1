"""Multi-host training on one machine: two `python -m jaxseg.main` processes (one CPU device each,
joined by jax.distributed over localhost, gloo collectives) give the losses and results of one
process with two devices; each loads only its rows of the global batch; a run killed after a
checkpoint, then stopped by a SIGTERM to one process only, resumes to the same numbers; process 0
alone writes the run's files. Plus the pieces in process: the per-process rows of the pipeline and
the per-process workdir lock."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from jaxseg import errors
from jaxseg import io_utils
from jaxseg import train
from jaxseg.data import pipeline
from tests.conftest import xla_flags

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = "configs/la_mt.py:smoke=1,labeled=4,seed=0"
# Batch 4 (2 labeled + 2 unlabeled) over 2 devices; a checkpoint after every step: the killed run
# stops after step 1, the signalled one after step 2, the resumed one runs step 3; one validation
# case keeps evaluation short.
OVERRIDES = (
  "--config.total_steps=3",
  "--config.checkpoint_every_steps=1",
  "--config.eval.max_cases=1",
)
TIMEOUT_S = 600
# Start-up variables of a caller's own environment that must not reach the runs (the suite's
# convolution lowering, set by conftest, does).
_CLEARED = (
  *(k for k in os.environ if k.startswith("JAXSEG_") and k != "JAXSEG_CONV_LOWERING"),
  "JAX_COORDINATOR_ADDRESS",
)

# `python -m jaxseg.main` that also records, in $JAXSEG_TEST_WRITES, every file it writes through
# io_utils.atomic_open (config.json, splits.json, summary.json, cases.csv, ...) and the batch rows
# it loads (parallel.process_rows) as a line 'rows=0,1'.
_MAIN = r"""
import contextlib, os, runpy, sys
from jaxseg import io_utils, parallel
_atomic_open = io_utils.atomic_open
_process_rows = parallel.process_rows

def _rows(*args):
  rows = _process_rows(*args)
  with open(os.environ["JAXSEG_TEST_WRITES"], "a") as log:
    log.write("rows=" + ",".join(map(str, rows)) + "\n")
  return rows

@contextlib.contextmanager
def _recorded(path, mode="w"):
  with open(os.environ["JAXSEG_TEST_WRITES"], "a") as log:
    log.write(f"{path}\n")
  with _atomic_open(path, mode) as f:
    yield f

io_utils.atomic_open = _recorded
parallel.process_rows = _rows
runpy.run_module("jaxseg.main", run_name="__main__", alter_sys=True)
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(n_devices: int, writes: pathlib.Path, **extra) -> dict:
  env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(n_devices), JAXSEG_TEST_WRITES=str(writes))
  env.update(extra)
  return env


def _launch(
  workdir: pathlib.Path, envs: list[dict], extra: tuple = ()
) -> list[subprocess.CompletedProcess]:
  """One process per environment, all at once, each with TIMEOUT_S; returns their results."""
  command = [
    sys.executable,
    "-c",
    _MAIN,
    "--config",
    CONFIG,
    "--workdir",
    str(workdir),
    *OVERRIDES,
    *extra,
  ]
  procs = [
    subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for env in envs
  ]
  results = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=TIMEOUT_S)
      results.append(subprocess.CompletedProcess(p.args, p.returncode, out.decode(), err.decode()))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  return results


def _two_processes(
  workdir: pathlib.Path, logs: pathlib.Path, tag: str, faults=({}, {}), extra: tuple = ()
):
  """Processes 0 and 1 of one run, with the fault variables `faults[i]` for process i."""
  coordinator = f"localhost:{_free_port()}"
  return _launch(
    workdir,
    [
      _env(
        1,
        logs / f"{tag}_writes{i}.txt",
        JAXSEG_COORDINATOR=coordinator,
        JAXSEG_NUM_PROCESSES="2",
        JAXSEG_PROCESS_ID=str(i),
        **faults[i],
      )
      for i in range(2)
    ],
    extra,
  )


def _recorded(logs: pathlib.Path, name: str) -> list[str]:
  path = logs / name
  return path.read_text().split() if path.exists() else []


def _written(logs: pathlib.Path, name: str) -> list[str]:
  return [l for l in _recorded(logs, name) if not l.startswith("rows=")]


def _result(workdir: pathlib.Path) -> tuple[dict, list[dict]]:
  summary = json.loads((workdir / "eval" / "val" / "summary.json").read_text())
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return summary, records


def _checkpoints(workdir: pathlib.Path) -> list[str]:
  return sorted(p.name for p in (workdir / "checkpoints").iterdir())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """One process with 2 devices, straight; 2 processes killed after step 1's checkpoint, restarted
  and stopped by a SIGTERM to process 1 after step 2, restarted again to the end."""
  logs = tmp_path_factory.mktemp("logs")
  single = tmp_path_factory.mktemp("single") / "run"
  (one,) = _launch(single, [_env(2, logs / "single_writes0.txt")])
  assert one.returncode == 0, one.stderr[-3000:]
  multi = tmp_path_factory.mktemp("multi") / "run"
  kill = {train._FAULT_ENV: "1"}
  killed = _two_processes(multi, logs, "killed", (kill, kill))
  assert (multi / "checkpoints").is_dir(), killed[0].stderr[-3000:] + killed[1].stderr[-3000:]
  after_kill = _checkpoints(multi)
  termed = _two_processes(multi, logs, "termed", ({}, {train._FAULT_TERM_ENV: "2"}))
  after_term = _checkpoints(multi)
  eval_after_term = (multi / "eval").exists()
  resumed = _two_processes(multi, logs, "resumed")
  for p in (*termed, *resumed):
    assert p.returncode == 0, p.stderr[-3000:]
  return dict(
    single=single,
    multi=multi,
    logs=logs,
    killed=killed,
    after_kill=after_kill,
    termed=termed,
    after_term=after_term,
    eval_after_term=eval_after_term,
    resumed=resumed,
  )


def test_two_processes_resume_to_the_numbers_of_one_process_with_two_devices(runs):
  # Both processes stopped after step 1's checkpoint (process 0 by its own SIGKILL; process 1 by
  # its own or by losing the coordinator), before any evaluation.
  assert runs["killed"][0].returncode == -9, runs["killed"][0].stderr[-3000:]
  assert runs["killed"][1].returncode != 0
  assert runs["after_kill"] == ["1"]
  # A SIGTERM to process 1 alone stops both after the same step, with its checkpoint.
  assert "at step 1" in runs["termed"][0].stdout
  assert "SIGTERM: stopped after step 2" in runs["termed"][0].stdout
  assert runs["after_term"] == ["1", "2"] and not runs["eval_after_term"]
  out = runs["resumed"][0].stdout
  assert "resumed from" in out and "at step 2" in out
  assert "on 2 cpu device(s) as data 2 x space 1" in out
  # Each process saved and restored its own iterator state in the checkpoint.
  data = runs["multi"] / "checkpoints" / "3" / "data"
  for i in range(2):
    assert json.loads((data / f"process_{i}-of-2.json").read_text()) == {"next_index": 3}

  want_summary, want = _result(runs["single"])
  summary, got = _result(runs["multi"])
  assert [r["step"] for r in got] == [r["step"] for r in want] == [1, 2, 3]
  for key in ("loss", "loss_ce", "loss_dice", "loss_consistency"):
    np.testing.assert_allclose(
      [r[key] for r in got], [r[key] for r in want], rtol=1e-5, atol=1e-5, err_msg=key
    )
  assert len({r["loss"] for r in got}) == 3
  # Each process loaded only its half of every global batch: the labeled rows on process 0.
  for tag in ("killed", "termed", "resumed"):
    for i, rows in enumerate(("rows=0,1", "rows=2,3")):
      assert [l for l in _recorded(runs["logs"], f"{tag}_writes{i}.txt") if "rows" in l] == [rows]
  assert "rows=0,1,2,3" in _recorded(runs["logs"], "single_writes0.txt")
  assert summary["n_cases"] == want_summary["n_cases"] == 1
  for key in ("dice", "jaccard", "hd95", "asd"):
    assert summary[key] == pytest.approx(want_summary[key], rel=1e-6, abs=1e-9), key


def test_only_process_zero_writes_the_run_files(runs):
  logs, multi = runs["logs"], runs["multi"]
  for tag in ("killed", "termed", "resumed"):
    assert _written(logs, f"{tag}_writes1.txt") == [], tag
  first = _written(logs, "killed_writes0.txt")
  assert str(multi / "config.json") in first and str(multi / "splits.json") in first
  last = _written(logs, "resumed_writes0.txt")
  assert {str(multi / "eval" / "val" / n) for n in ("summary.json", "cases.csv")} <= set(last)
  # The single-process run writes the same files (the record works).
  single = _written(logs, "single_writes0.txt")
  assert str(runs["single"] / "eval" / "val" / "summary.json") in single
  # Progress lines and the results table come from process 0 only.
  assert "[step 3/3" in runs["resumed"][0].stdout and "| method |" in runs["resumed"][0].stdout
  for p in (runs["killed"][1], runs["termed"][1], runs["resumed"][1]):
    assert "[step" not in p.stdout and "| method |" not in p.stdout


RUNS = ("--config.runs=2",)


@pytest.fixture(scope="module")
def runs_job(tmp_path_factory):
  """runs=2 (seeds 0 and 1): one process with 2 devices (runs 2 x data 1), straight; 2 processes
  of one device each (each holds one replica), killed after step 1's checkpoint, then restarted to
  the end."""
  logs = tmp_path_factory.mktemp("runs_logs")
  single = tmp_path_factory.mktemp("runs_single") / "run"
  (one,) = _launch(single, [_env(2, logs / "single_writes0.txt")], RUNS)
  assert one.returncode == 0, one.stderr[-3000:]
  multi = tmp_path_factory.mktemp("runs_multi") / "run"
  kill = {train._FAULT_ENV: "1"}
  killed = _two_processes(multi, logs, "killed", (kill, kill), RUNS)
  assert (multi / "checkpoints").is_dir(), killed[0].stderr[-3000:] + killed[1].stderr[-3000:]
  after_kill = _checkpoints(multi)
  resumed = _two_processes(multi, logs, "resumed", extra=RUNS)
  for p in resumed:
    assert p.returncode == 0, p.stderr[-3000:]
  return dict(single=single, multi=multi, logs=logs, after_kill=after_kill, resumed=resumed)


def test_a_runs_axis_over_two_processes_resumes_to_one_process_numbers(runs_job):
  """Each process feeds, checkpoints and restores the stream of the replica its device holds; both
  replicas' logs and results equal those of one process with two devices."""
  assert runs_job["after_kill"] == ["1"]
  out = runs_job["resumed"][0].stdout
  assert "resumed from" in out and "at step 1" in out
  assert "as runs 2 x data 1 x space 1" in out and "2 runs (seeds 0..1)" in out
  data = runs_job["multi"] / "checkpoints" / "3" / "data"
  for i in range(2):
    stored = json.loads((data / f"process_{i}-of-2.json").read_text())
    assert stored["replicas"] == [i], stored
    assert stored["streams"] == [{"next_index": 3}]
  losses = []
  for k in range(2):
    want_summary, want = _result(runs_job["single"] / f"run{k}")
    summary, got = _result(runs_job["multi"] / f"run{k}")
    assert [r["step"] for r in got] == [r["step"] for r in want] == [1, 2, 3]
    for key in ("loss", "loss_ce", "loss_dice", "loss_consistency"):
      np.testing.assert_allclose(
        [r[key] for r in got], [r[key] for r in want], rtol=1e-5, atol=1e-5, err_msg=f"run{k} {key}"
      )
    losses.append([r["loss"] for r in got])
    assert summary["n_cases"] == want_summary["n_cases"] == 1
    for key in ("dice", "jaccard", "hd95", "asd"):
      assert summary[key] == pytest.approx(want_summary[key], rel=1e-6, abs=1e-9), (k, key)
  assert losses[0] != losses[1]  # two seeds, two runs
  # Process 1 computed everything and wrote nothing.
  assert _written(runs_job["logs"], "resumed_writes1.txt") == []
  assert "[step" not in runs_job["resumed"][1].stdout


def _take(iterator, n: int) -> list[dict]:
  return [next(iterator) for _ in range(n)]


def test_process_rows_of_the_stream_make_the_single_process_batch():
  """Two processes' rows (labeled slots 0-1, unlabeled slots 2-3) stacked are the whole stream's
  batches, also after a restore from one process's iterator state."""
  rng = np.random.default_rng(0)
  source = [
    {"image": rng.normal(size=(12, 12, 10)).astype(np.float32), "label": np.zeros((12, 12, 10))}
    for _ in range(6)
  ]
  args = dict(
    source=source,
    labeled_idx=[0, 1, 2],
    unlabeled_idx=[3, 4, 5],
    batch_size=4,
    labeled_batch_size=2,
    patch_size=(8, 8, 8),
    seed=3,
  )
  whole = _take(pipeline.make_train_iterator(**args), 4)
  first = pipeline.make_train_iterator(**args, rows=[0, 1])
  second = pipeline.make_train_iterator(**args, rows=[2, 3])
  parts = list(zip(_take(first, 2), _take(second, 2)))
  resumed = pipeline.make_train_iterator(**args, rows=[2, 3])
  resumed.set_state(second.get_state())
  parts += list(zip(_take(first, 2), _take(resumed, 2)))
  for want, (a, b) in zip(whole, parts):
    assert a["image"].shape == (2, 8, 8, 8, 1)
    for key in ("image", "label"):
      np.testing.assert_array_equal(np.concatenate([a[key], b[key]]), want[key])
  # Rows need not be contiguous (a process's devices may hold slots 1 and 3).
  odd = _take(pipeline.make_train_iterator(**args, rows=[1, 3]), 1)[0]
  np.testing.assert_array_equal(odd["image"], whole[0]["image"][[1, 3]])
  with pytest.raises(ValueError, match="rows=\\[2, 1\\]"):
    pipeline.make_train_iterator(**args, rows=[2, 1])
  with pytest.raises(ValueError, match="rows=\\[4\\]"):
    pipeline.make_train_iterator(**args, rows=[4])


def test_each_process_takes_its_own_workdir_lock(tmp_path):
  with io_utils.RunDir(tmp_path, 0):
    with io_utils.RunDir(tmp_path, 1):  # the same run's process 1: no conflict
      assert (tmp_path / ".lock.1").exists()
    with pytest.raises(errors.RunStateError, match="another jaxseg run"):
      with io_utils.RunDir(tmp_path, 0):
        pass
  # A process other than 0 never removes what an early failure leaves: process 0 does.
  workdir = tmp_path / "new"
  with pytest.raises(RuntimeError):
    with io_utils.RunDir(workdir, 1):
      (workdir / "splits.json").write_text("{}")
      raise RuntimeError("bad data")
  assert (workdir / "splits.json").exists()


def test_patches_split_over_two_processes_give_the_numbers_of_one_process(tmp_path):
  """mesh.shape=space:2 over two processes: each loads every row of the global batch and feeds half
  of each patch (every convolution's halo crossing the processes); the losses and results equal
  those of one process with two devices on the same mesh. (Against data 2 they agree only to the
  smoke size's conditioning: its 16^3 patch leaves 4 values per channel to the bottleneck's batch
  norm, which grows the reduction-order noise of another partition to 1e-3 in three steps;
  tests/test_parallel.py compares the partitions at 32^3.)"""
  space = ("--config.mesh.shape=space:2",)
  single, multi = tmp_path / "single", tmp_path / "multi"
  (one,) = _launch(single, [_env(2, tmp_path / "single_writes0.txt")], space)
  assert one.returncode == 0, one.stderr[-3000:]
  procs = _two_processes(multi, tmp_path, "space", extra=space)
  for p in procs:
    assert p.returncode == 0, p.stderr[-3000:]
  for out in (one.stdout, procs[0].stdout):
    assert "as data 1 x space 2" in out
  for i in range(2):
    assert [l for l in _recorded(tmp_path, f"space_writes{i}.txt") if "rows" in l] == [
      "rows=0,1,2,3"
    ]
  want_summary, want = _result(single)
  summary, got = _result(multi)
  assert [r["step"] for r in got] == [r["step"] for r in want] == [1, 2, 3]
  for key in ("loss", "loss_ce", "loss_dice", "loss_consistency"):
    np.testing.assert_allclose(
      [r[key] for r in got], [r[key] for r in want], rtol=1e-5, atol=1e-5, err_msg=key
    )
  for key in ("dice", "jaccard", "hd95", "asd"):
    assert summary[key] == pytest.approx(want_summary[key], rel=1e-6, abs=1e-9), key
  assert _written(tmp_path, "space_writes1.txt") == []
