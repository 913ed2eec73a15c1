"""The runs axis (jaxseg/runs.py): N replicas in one jitted program equal N separate runs, on one
device and on 8; a runs job writes each replica's results where a single run writes its own,
resumes after a kill, and reports as seeds of one row (launch/sweep.py --as_runs, launch/report.py)."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxseg import config_check
from jaxseg import errors
from jaxseg import evaluation
from jaxseg import methods
from jaxseg import parallel
from jaxseg import runs as runs_lib
from jaxseg import train
from jaxseg.data import builder
from jaxseg.methods import base as methods_base
from launch import report
from launch import sweep
from tests.conftest import random_batch
from tests.conftest import run_script
from tests.conftest import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = "configs/la_mt.py:smoke=1,labeled=4"


def _well_posed(config):
  """At 16^3 the bottleneck BN normalises 4 values per channel and float32 reduction-order noise
  grows to 1e-3 in two steps (tests/test_parallel.py); 32x16x16 (8 values) and the upstream lr keep
  a 1e-5 comparison meaningful."""
  config.data.patch_size = (32, 16, 16)
  config.optimizer.lr = 0.01
  return config


def test_runs_equal_separate_runs(tmp_path):
  """runs=3 (seeds 0, 1, 2) for two steps: each replica's losses and final parameters are those of
  the single run of its seed, fed the same batches."""
  config = _well_posed(tiny_config("mean_teacher"))
  config.runs = 3
  method = methods.build(config)
  layout = runs_lib.Runs(config, tmp_path)
  assert layout.seeds == [0, 1, 2] and layout.dirs == [tmp_path / f"run{k}" for k in range(3)]
  mesh = parallel.mesh_for(config)
  example = methods_base.example_batch(config, method.host_targets)
  batches = [
    [{k: np.asarray(v) for k, v in random_batch(config, seed=10 * r + i).items()} for r in range(3)]
    for i in range(2)
  ]

  inits = layout.init(method, example)  # host numpy [3, ...]: each seed's method.init
  for got, want in zip(
    jax.tree.leaves(layout.replicas(inits)[2]),
    jax.tree.leaves(method.init(jax.random.PRNGKey(2), example)),
  ):
    np.testing.assert_array_equal(got, want)
  state = layout.put_state(inits, mesh)
  step = layout.jit(method.train_step, mesh)
  losses = []
  for per_run in batches:
    stacked = {k: np.stack([b[k] for b in per_run]) for k in per_run[0]}
    state, metrics = step(state, layout.put_batch(stacked, mesh))
    losses.append(np.asarray(metrics["loss"]))
  assert state.step.shape == (3,) and np.all(np.asarray(state.step) == 2)

  single_step = jax.jit(method.train_step)
  for r, (replica, single) in enumerate(zip(layout.replicas(state), layout.replicas(inits))):
    single_losses = []
    for per_run in batches:
      single, m = single_step(single, per_run[r])
      single_losses.append(float(m["loss"]))
    np.testing.assert_allclose([l[r] for l in losses], single_losses, rtol=1e-5, atol=1e-6)
    for got, want in zip(jax.tree.leaves(replica.params), jax.tree.leaves(single.params)):
      np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
  # The seeds make three different runs.
  assert len({round(float(l), 6) for l in losses[1]}) == 3


_DEVICES_SCRIPT = r"""
import json, sys
from tests.test_runs import runs_losses
print(json.dumps(runs_losses([int(n) for n in sys.argv[1:]])))
"""


def runs_losses(counts: list[int]) -> dict:
  """Two steps of mean_teacher with runs=N for each N of `counts` on this process's devices:
  {N: {'losses': [[N] per step], 'mesh': ..., 'state': spec, 'image': spec}}. The replicas start
  from one initial state and differ by their batches (what is compared is the sharding)."""
  out = {}
  for n in counts:
    config = _well_posed(tiny_config("mean_teacher"))
    config.runs = n
    method = methods.build(config)
    layout = runs_lib.Runs(config, pathlib.Path("unused"))
    mesh = parallel.mesh_for(config)
    one = method.init(jax.random.PRNGKey(0), methods_base.example_batch(config))
    state = layout.put_state(jax.tree.map(lambda x: np.stack([np.asarray(x)] * n), one), mesh)
    step = layout.jit(method.train_step, mesh)
    losses = []
    for i in range(2):
      batches = [random_batch(config, seed=10 * r + i) for r in range(n)]
      stacked = {k: np.stack([np.asarray(b[k]) for b in batches]) for k in batches[0]}
      sharded = layout.put_batch(stacked, mesh)
      state, metrics = step(state, sharded)
      losses.append(np.asarray(metrics["loss"]).tolist())
    out[n] = {
      "losses": losses,
      "mesh": dict(mesh.shape),
      "state": str(state.params["out_conv"]["kernel"].sharding.spec),
      "image": str(sharded["image"].sharding.spec),
    }
  return out


def test_runs_on_8_devices_equal_one_device():
  """runs=2 (runs 2 x data 4), runs=8 (runs 8) and runs=3 (3 replicas cannot split 8 devices: data 4
  x space 2, each patch split over "space") on 8 simulated devices give one device's losses (the
  replicas' steps mapped over "runs" by shard_map, runs.Runs.jit)."""
  got = run_script(_DEVICES_SCRIPT, "2", "8", "3", n_devices=8, timeout=900)
  eight = {int(k): v for k, v in got.items()}
  one = runs_losses([2, 8, 3])
  assert eight[2]["mesh"] == {"runs": 2, "data": 4, "space": 1}
  assert eight[8]["mesh"] == {"runs": 8, "data": 1, "space": 1}
  assert eight[3]["mesh"] == {"runs": 1, "data": 4, "space": 2}
  assert eight[3]["image"] == str(P("runs", "data", "space"))
  for n in (2, 8, 3):
    assert one[n]["mesh"] == {"runs": 1, "data": 1, "space": 1}
    if n != 3:
      assert eight[n]["state"] == str(P("runs"))
      assert eight[n]["image"] == str(P("runs", "data"))
    # float32 at the project's tolerance: the sharded and the single-device programs reduce in
    # different orders (with the CPU's matmul convolutions, one loss of 16 moved by 3e-5 relative).
    np.testing.assert_allclose(eight[n]["losses"], one[n]["losses"], rtol=1e-4, atol=1e-5)
    assert len({round(l, 6) for l in one[n]["losses"][1]}) == n  # the batches differ per replica


def test_replica_streams_are_the_single_runs_streams(tmp_path):
  """Replica k is fed the stream a single run with seed+k reads, and one checkpointed state
  restores all of them."""
  config = tiny_config("mean_teacher")
  config.runs, config.seed = 3, 5
  data = builder.build_datasets(config, tmp_path)
  stacked = runs_lib.Runs(config, tmp_path).iterator(config, data)
  singles = [builder.train_iterator(config, data.train_source, data.splits, s) for s in (5, 6, 7)]
  first = next(stacked)
  assert first["image"].shape == (3, config.batch_size, *config.data.patch_size, 1)
  for k, it in enumerate(singles):
    want = next(it)
    for key in want:
      np.testing.assert_array_equal(first[key][k], want[key])
  assert not np.array_equal(first["image"][0], first["image"][1])
  saved = stacked.get_state()
  second = next(stacked)
  stacked.set_state(saved)
  again = next(stacked)
  for key in second:
    np.testing.assert_array_equal(again[key], second[key])
  stored = json.loads(saved)
  assert stored["replicas"] == [0, 1, 2]
  with pytest.raises(errors.RunStateError, match="holds 2 training streams, this run has 3"):
    stacked.set_state(json.dumps(stored["streams"][:2]).encode())
  # A checkpoint written for another process's replicas (another process count or mesh).
  with pytest.raises(errors.RunStateError, match="replicas \\[1, 2, 3\\] for this process"):
    stacked.set_state(json.dumps({**stored, "replicas": [1, 2, 3]}).encode())
  # The format before replicas were recorded (a list of every stream) still restores.
  stacked.set_state(json.dumps(stored["streams"]).encode())
  again = next(stacked)
  for key in second:
    np.testing.assert_array_equal(again[key], second[key])


def test_runs_must_be_a_positive_integer():
  config = tiny_config("mean_teacher")
  for bad in (0, -1):
    config.runs = bad
    with pytest.raises(errors.ConfigError, match="runs=.* must be a positive integer"):
      config_check.validate(config)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
  """A two-seed sweep of the smoke Mean Teacher (4 steps, checkpoints at 2 and 4) as one runs=2
  job, in this process: (sweep root, the job's Run, the sweep arguments)."""
  root = tmp_path_factory.mktemp("runs_sweep")
  args = [
    "--configs",
    CONFIG,
    "--labeled",
    "4",
    "--seeds",
    "0,1",
    "--root",
    str(root),
    "--runner",
    "inprocess",
    "--as_runs",
    "--set",
    "eval.every_steps=4",  # a validation of each replica at the end, kept as its best checkpoint
  ]
  assert sweep.main(args) == 0
  (run,) = [sweep.Run(**r) for r in json.loads((root / sweep.MANIFEST).read_text())["runs"]]
  return root, run, args


def _results(workdir: pathlib.Path) -> list[tuple[dict, list]]:
  """Per replica: (summary, metrics records)."""
  out = []
  for k in range(2):
    folder = workdir / f"run{k}"
    summary = json.loads((folder / "eval" / "val" / "summary.json").read_text())
    records = [json.loads(l) for l in (folder / "metrics.jsonl").read_text().splitlines()]
    out.append((summary, records))
  return out


def test_a_runs_job_writes_each_replica_as_a_single_run(job, capsys):
  root, run, args = job
  workdir = pathlib.Path(run.workdir)
  assert (run.seed, run.runs) == (0, 2) and workdir.name == "seeds0-1"
  assert "--config.runs=2" in run.flags()
  assert json.loads((workdir / "config.json").read_text())["runs"] == 2
  assert (workdir / "checkpoints" / "4").is_dir() and not (workdir / "metrics.jsonl").exists()
  results = _results(workdir)
  for k, (summary, records) in enumerate(results):
    assert (workdir / f"run{k}" / "eval" / "val" / "cases.csv").is_file()
    assert summary["n_cases"] == 2 and summary["checkpoint_step"] == 4
    assert [r["step"] for r in records] == [1, 2, 3, 4, 4]  # the last: the validation
    assert all(np.isfinite(r["loss"]) for r in records[:4])
    assert records[4]["val_dice"] == pytest.approx(summary["dice"], abs=1e-12)
    assert (workdir / f"run{k}" / "tensorboard").is_dir()
    selection = workdir / f"run{k}" / "checkpoints_best" / "selection.json"
    assert json.loads(selection.read_text())["step"] == 4
  (s0, r0), (s1, r1) = results
  assert [r["loss"] for r in r0[:4]] != [r["loss"] for r in r1[:4]]
  assert (s0["dice"], s0["hd95"]) != (s1["dice"], s1["hd95"])
  assert sweep.main(args) == 0  # a finished job is skipped
  assert capsys.readouterr().out.count("), skipped\n") == 1
  # Re-evaluating a runs job needs a replica, asked for by name, not an orbax restore error.
  with pytest.raises(ValueError, match=r"config.json: runs=2, a job of 2 replicas .*--replica K"):
    evaluation.evaluate_workdir(workdir)
  with pytest.raises(ValueError, match=r"K in 0..1 .*, not 2"):
    evaluation.evaluate_workdir(workdir, replica=2)


def test_a_replica_of_a_runs_job_evaluates_to_its_own_numbers(job):
  """Replica k re-evaluated from the job's stacked final checkpoint (and from its own best one,
  the same step 4) gives what training wrote for it in the same mode, and not the other's."""
  _, run, _ = job
  workdir = pathlib.Path(run.workdir)
  results = _results(workdir)
  for k, (want, _) in enumerate(results):
    for where, kwargs in ((workdir, dict(replica=k)), (workdir / f"run{k}", {})):
      for checkpoint in ("final", "best_val"):
        summary, out = evaluation.evaluate_workdir(
          where, mode="parity", checkpoint=checkpoint, stream=None, **kwargs
        )
        suffix = "" if checkpoint == "final" else "_best_val"
        assert out == workdir / f"run{k}" / "eval" / "val" / f"parity{suffix}"
        assert summary["checkpoint_step"] == 4
        for metric in ("dice", "jaccard", "hd95", "asd"):
          assert summary[metric] == pytest.approx(want[metric], rel=1e-6, abs=1e-9), (k, metric)
  assert results[0][0]["dice"] != results[1][0]["dice"]
  with pytest.raises(ValueError, match="is replica 1, not --replica 0"):
    evaluation.evaluate_workdir(workdir / "run1", replica=0)


def test_a_killed_runs_job_resumes_to_the_same_numbers(job, tmp_path):
  """SIGKILL after step 3 (the checkpoint of step 2 is the latest), then the same job again: every
  replica ends with the uninterrupted job's losses and evaluation."""
  _, run, _ = job
  killed = subprocess.run(
    [sys.executable, "-m", "jaxseg.main", *run.flags(), f"--workdir={tmp_path}"],
    cwd=REPO,
    env=dict(os.environ, **{train._FAULT_ENV: "3"}),
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert killed.returncode == -9, killed.stderr[-3000:]
  assert not (tmp_path / "run0" / "eval").exists()
  summaries = train.train_and_evaluate(sweep.build_config(run), tmp_path)
  assert [s["dice"] for s in summaries] == [
    json.loads((pathlib.Path(run.workdir) / f"run{k}/eval/val/summary.json").read_text())["dice"]
    for k in range(2)
  ]
  for (summary, records), (want_summary, want_records) in zip(
    _results(tmp_path), _results(pathlib.Path(run.workdir))
  ):
    assert [r["step"] for r in records] == [1, 2, 3, 4, 4]
    np.testing.assert_allclose(
      [r["loss"] for r in records[:4]], [r["loss"] for r in want_records[:4]], rtol=1e-6
    )
    for k in ("dice", "jaccard", "hd95", "asd"):
      assert summary[k] == pytest.approx(want_summary[k], rel=1e-6, abs=1e-9), k


def test_report_reads_a_runs_job_as_seeds(job, tmp_path):
  """One row, the two replicas as seeds 0 and 1: mean and sample std of their summaries."""
  root, run, _ = job
  out = report.make_report(root, tmp_path / "report", figures=False, stream=None)
  (row,) = report.results_table(report.discover(root))
  assert (row["method"], row["labeled"], row["n_seeds"], row["seeds"]) == (
    "mean_teacher",
    4,
    2,
    "0 1",
  )
  summaries = [s for s, _ in _results(pathlib.Path(run.workdir))]
  for metric in ("dice", "jaccard", "hd95", "asd"):
    values = [s[metric] for s in summaries]
    np.testing.assert_allclose(row[f"{metric}_mean"], np.mean(values), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(row[f"{metric}_std"], np.std(values, ddof=1), rtol=1e-9, atol=1e-12)
  dice = [s["dice"] for s in summaries]
  cell = f"{100 * np.mean(dice):.2f} ± {100 * np.std(dice, ddof=1):.2f}"
  assert cell in out["results_md"].read_text()
  # Without the manifest, the job's config.json (runs=2) is found and read the same way.
  (root / sweep.MANIFEST).rename(tmp_path / "manifest.json")
  try:
    (again,) = report.results_table(report.discover(root, stream=None))
  finally:
    (tmp_path / "manifest.json").rename(root / sweep.MANIFEST)
  assert again["seeds"] == "0 1" and again["dice_mean"] == row["dice_mean"]
