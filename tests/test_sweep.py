"""launch/sweep.py: the run grid, config building, job scripts, skipping finished runs (no training here;
tests/test_report.py runs a real sweep)."""

import json
import pathlib

import pytest

from launch import sweep

REPO = pathlib.Path(__file__).resolve().parents[1]
VNET = "configs/la_vnet.py:smoke=1"  # any config at smoke=1: seconds on a CPU
MT = "configs/la_mt.py:smoke=1"


def _plan(tmp_path, seeds=(0, 1)):
  return sweep.plan(
    [VNET, MT], [4, 6], list(seeds), tmp_path, ["total_steps=3", "eval.save_predictions=True"]
  )


def test_plan_grid_names_and_configs(tmp_path):
  runs = _plan(tmp_path)
  assert len(runs) == 2 * 2 * 2
  assert [(r.name, r.labeled, r.seed) for r in runs[:4]] == [
    ("supervised", 4, 0),
    ("supervised", 4, 1),
    ("supervised", 6, 0),
    ("supervised", 6, 1),
  ]
  assert runs[-1].workdir == str(tmp_path.resolve() / "mean_teacher" / "labeled6" / "seed1")
  config = sweep.build_config(runs[-1])
  assert config.method == "mean_teacher" and config.data.labeled == 6 and config.seed == 1
  assert config.total_steps == 3 and config.eval.save_predictions is True
  # The smoke config itself, not only the overrides.
  assert config.model.kwargs.n_filters == 4 and config.data.name == "synthetic"
  with pytest.raises(ValueError, match="name them"):
    sweep.plan([VNET, f"{VNET},seed=2"], [4], [0], tmp_path, [])
  named = sweep.plan([f"a={VNET}", f"b={VNET},seed=2"], [4], [0], tmp_path, [])
  assert [r.name for r in named] == ["a", "b"] and named[0].method == "supervised"
  with pytest.raises(ValueError, match="not found"):
    sweep.plan(["configs/nope.py"], [4], [0], tmp_path, [])


def test_emit_scripts(tmp_path):
  runs = _plan(tmp_path, seeds=(0,))
  scripts = sweep.emit_scripts(runs, tmp_path / "jobs", ["--gres=gpu:1"])
  assert [s.name for s in scripts] == ["run_000.sh", "run_001.sh", "run_002.sh", "run_003.sh"]
  text = scripts[3].read_text()
  assert text.startswith("#!/usr/bin/env bash") and f"cd {REPO}" in text
  assert "-m jaxseg.main --config=" in text and "--config.data.labeled=6 --config.seed=0" in text
  assert "--config.total_steps=3" in text and f"--workdir={runs[3].workdir}" in text
  assert f"if [ -f {runs[3].workdir}/eval/val/summary.json ]" in text
  sbatch = (tmp_path / "jobs" / "slurm_array.sbatch").read_text()
  assert "#SBATCH --array=0-3" in sbatch and "#SBATCH --gres=gpu:1" in sbatch
  assert "SLURM_ARRAY_TASK_ID" in sbatch
  assert (tmp_path / "jobs" / "run_all.sh").read_text().count("bash ") == 4


def test_finished_runs_are_skipped(tmp_path, capsys):
  runs = _plan(tmp_path, seeds=(0,))
  for r in runs:
    path = pathlib.Path(r.workdir) / "eval" / "val" / "summary.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"mode": "parity"}))
  assert sweep.run_all(runs, runner="inprocess") == []
  assert capsys.readouterr().out.count("), skipped\n") == len(runs)


def test_main_writes_manifest_and_scripts(tmp_path):
  rc = sweep.main(
    [
      "--configs",
      VNET,
      "--labeled",
      "4",
      "--seeds",
      "0,2",
      "--root",
      str(tmp_path),
      "--set",
      "total_steps=2",
      "--emit_scripts",
      str(tmp_path / "jobs"),
    ]
  )
  assert rc == 0
  manifest = json.loads((tmp_path / "sweep.json").read_text())
  assert [(r["name"], r["labeled"], r["seed"]) for r in manifest["runs"]] == [
    ("supervised", 4, 0),
    ("supervised", 4, 2),
  ]
  assert len(list((tmp_path / "jobs").glob("run_0*.sh"))) == 2
  with pytest.raises(SystemExit):
    sweep.main(
      [
        "--configs",
        VNET,
        "--labeled",
        "4",
        "--seeds",
        "0",
        "--root",
        str(tmp_path),
        "--set",
        "total_steps",
      ]
    )


def test_config_specs_split_on_config_paths_only():
  text = f"a={VNET},labeled=4,configs/la_mt.py,b=configs/la_acmt.py:strategy=mu,seed=2"
  assert sweep.split_config_specs(text) == [
    "a=configs/la_vnet.py:smoke=1,labeled=4",
    "configs/la_mt.py",
    "b=configs/la_acmt.py:strategy=mu,seed=2",
  ]
  assert sweep.split_config_specs("configs/la_mt.py") == ["configs/la_mt.py"]
  name, config = sweep.parse_config_spec(f"b={VNET},seed=2")
  assert name == "b" and config == f"{REPO / 'configs' / 'la_vnet.py'}:smoke=1,seed=2"
  # Every argument of a multi-argument spec reaches the config.
  built = sweep.build_config([f"--config={config}"])
  assert (built.seed, built.model.kwargs.n_filters, built.total_steps) == (2, 4, 4)


def test_as_runs_plans_one_job_per_config_and_labeled(tmp_path):
  runs = sweep.plan([VNET, MT], [4], [3, 4, 5], tmp_path, ["total_steps=3"], as_runs=True)
  assert [(r.name, r.seed, r.runs) for r in runs] == [("supervised", 3, 3), ("mean_teacher", 3, 3)]
  job = pathlib.Path(runs[1].workdir)
  assert job == tmp_path.resolve() / "mean_teacher" / "labeled4" / "seeds3-5"
  assert runs[1].result_dirs() == [job / "run0", job / "run1", job / "run2"]
  config = sweep.build_config(runs[1])
  assert (config.seed, config.runs, config.total_steps) == (3, 3, 3)
  (script,) = sweep.emit_scripts(runs[1:], tmp_path / "jobs")
  text = script.read_text()
  assert "--config.seed=3 --config.runs=3" in text and "seeds=3..5" in text
  done = " && ".join(f"[ -f {job}/run{k}/eval/val/summary.json ]" for k in range(3))
  assert f"if {done}; then" in text
  # A job is done only when every replica's summary exists.
  for k in range(2):
    path = job / f"run{k}" / "eval" / "val" / "summary.json"
    path.parent.mkdir(parents=True)
    path.write_text("{}")
  assert not sweep.is_done(runs[1])
  with pytest.raises(ValueError, match="must be consecutive"):
    sweep.plan([VNET], [4], [0, 2], tmp_path, [], as_runs=True)
