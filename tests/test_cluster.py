"""launch/cluster.py: the SLURM and TPU VM scripts it renders (run against stand-in `srun`,
`scontrol`, `sbatch`), its argument errors, and the distributed start-up variables of
jaxseg/parallel.py that the scripts set."""

import json
import os
import pathlib
import shlex
import shutil
import stat
import subprocess
import sys

import pytest

from jaxseg import parallel

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "launch" / "cluster.py"


def _launch(*args, env=None):
  return subprocess.run(
    [sys.executable, str(SCRIPT), *args],
    capture_output=True,
    text=True,
    cwd=REPO,
    env=env,
    timeout=120,
  )


def _slurm_args(workdir, *extra):
  return [
    "slurm",
    "--config",
    "configs/la_uamt.py:labeled=8,seed=2",
    "--workdir",
    str(workdir),
    "--nodes",
    "2",
    "--gpus_per_node",
    "4",
    "--partition",
    "gpu",
    "--time",
    "1-12:00:00",
    "--account",
    "lab",
    "--set",
    "data.root=/data/my LA",
    "--set",
    "total_steps=100",
    *extra,
  ]


def _train_argv(workdir, python="python"):
  return [
    python,
    "-m",
    "jaxseg.main",
    "--config=configs/la_uamt.py:labeled=8,seed=2",
    "--config.data.root=/data/my LA",
    "--config.total_steps=100",
    f"--workdir={workdir}",
  ]


def _fake_tools(bin_dir: pathlib.Path, log: pathlib.Path, **tools: str):
  """Executables in bin_dir that append {tool, argv, env subset} as one JSON line to log."""
  bin_dir.mkdir(exist_ok=True)
  for name, stdout in tools.items():
    path = bin_dir / name
    path.write_text(
      f"#!{sys.executable}\nimport json, os, sys\n"
      f"env = {{k: v for k, v in os.environ.items() if k.startswith('JAXSEG_')}}\n"
      f"open({str(log)!r}, 'a').write(json.dumps(dict(tool={name!r}, argv=sys.argv[1:], "
      f"env=env)) + '\\n')\nprint({stdout!r}, end='')\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _calls(log):
  return [json.loads(l) for l in log.read_text().splitlines()]


def test_slurm_dry_run_renders_the_sbatch_script(tmp_path):
  workdir = tmp_path / "runs" / "uamt l8"
  out = _launch(*_slurm_args(workdir, "--dry_run"))
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  sbatch = [l for l in lines if l.startswith("#SBATCH")]
  assert sbatch == [
    "#SBATCH --job-name=jaxseg-la_uamt",
    "#SBATCH --nodes=2",
    "#SBATCH --ntasks-per-node=4",
    "#SBATCH --gres=gpu:4",
    f"#SBATCH --output={shlex.quote(str(workdir / 'slurm-%j.out'))}",
    "#SBATCH --partition=gpu",
    "#SBATCH --time=1-12:00:00",
    "#SBATCH --account=lab",
  ]
  assert "export JAXSEG_COORDINATOR" in lines
  assert not any("JAXSEG_LOCAL_DEVICE_IDS" in l for l in lines)  # one process per GPU
  srun = shlex.split(lines[-1])
  assert srun == [
    "srun",
    "--nodes=2",
    "--ntasks-per-node=4",
    "--kill-on-bad-exit=1",
    *_train_argv(workdir),
  ]
  assert not workdir.exists()  # a dry run writes nothing


def test_slurm_script_runs_srun_with_the_coordinator(tmp_path):
  """The rendered script under bash, with stand-ins for scontrol and srun: the coordinator is the
  first host at 61440 + job id % 4096 (jax's own SLURM port rule), or --port."""
  log, bin_dir = tmp_path / "calls.jsonl", tmp_path / "bin"
  _fake_tools(bin_dir, log, scontrol="gpu-a17\ngpu-b03\n", srun="")
  # Only what the script itself exports may reach srun, not the caller's JAXSEG_* settings.
  inherited = {k: v for k, v in os.environ.items() if not k.startswith("JAXSEG_")}
  env = dict(
    inherited,
    PATH=f"{bin_dir}:{os.environ['PATH']}",
    SLURM_JOB_ID="5000",
    SLURM_JOB_NODELIST="gpu-a17,gpu-b03",
  )
  for extra, port in (((), 61440 + 5000 % 4096), (("--port", "23456"), 23456)):
    log.unlink(missing_ok=True)
    workdir = tmp_path / f"run{port}"
    out = _launch(*_slurm_args(workdir, "--repo_dir", str(tmp_path), "--dry_run", *extra))
    assert out.returncode == 0, out.stderr
    ran = subprocess.run(
      ["bash", "-c", out.stdout], env=env, capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    scontrol, srun = _calls(log)
    assert scontrol["argv"] == ["show", "hostnames", "gpu-a17,gpu-b03"]
    assert srun["env"] == {"JAXSEG_COORDINATOR": f"gpu-a17:{port}"}
    assert srun["argv"][3:] == _train_argv(workdir)
    assert workdir.is_dir()  # made before srun, for the processes' outputs


def test_slurm_one_process_per_node_drives_all_its_gpus(tmp_path):
  out = _launch(
    *_slurm_args(tmp_path / "w", "--process_per", "node", "--gpus_per_node", "3", "--dry_run")
  )
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert "#SBATCH --ntasks-per-node=1" in lines and "#SBATCH --gres=gpu:3" in lines
  assert "export JAXSEG_LOCAL_DEVICE_IDS=0,1,2" in lines
  assert shlex.split(lines[-1])[:3] == ["srun", "--nodes=2", "--ntasks-per-node=1"]


def _ssh_commands(script: str) -> list[list[str]]:
  return [shlex.split(l) for l in script.splitlines() if l.startswith("gcloud")]


def test_tpu_vm_dry_run_renders_the_gcloud_lines(tmp_path):
  workdir = "/mnt/shared/runs/uamt l8"
  base = [
    "tpu_vm",
    "--config",
    "configs/la_uamt.py:labeled=8,seed=2",
    "--workdir",
    workdir,
    "--tpu_name",
    "pod-v4",
    "--zone",
    "us-central2-b",
    "--project",
    "my-proj",
    "--set",
    "data.root=/data/my LA",
    "--set",
    "total_steps=100",
    "--dry_run",
  ]
  out = _launch(*base)
  assert out.returncode == 0, out.stderr
  archive, copy = [shlex.split(l) for l in out.stdout.splitlines()[2:4]]
  assert archive[:3] == ["git", "-C", str(REPO)] and archive[-1] == "HEAD"
  where = ["--zone", "us-central2-b", "--project", "my-proj", "--worker=all"]
  assert copy[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and copy[-5:] == where
  install, run = _ssh_commands(out.stdout)[1:]
  for ssh in (install, run):
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod-v4"]
    assert ssh[6:11] == where and ssh[11] == "--command" and len(ssh) == 13
  assert install[12].endswith("cd jaxseg && python3 -m pip install -q -e '.[tpu]'")
  remote = shlex.split(run[12])
  assert remote[:4] == ["cd", "jaxseg", "&&", "JAXSEG_DISTRIBUTED=1"]
  assert remote[4:] == _train_argv(workdir, python="python3")

  cloned = _launch(*base, "--repo_url", "https://example.org/jaxseg.git", "--ref", "v1")
  assert cloned.returncode == 0, cloned.stderr
  commands = _ssh_commands(cloned.stdout)
  assert len(commands) == 2 and "tpu-vm scp" not in cloned.stdout
  assert shlex.split(commands[0][12])[:12] == [
    "rm",
    "-rf",
    "jaxseg",
    "&&",
    "git",
    "clone",
    "https://example.org/jaxseg.git",
    "jaxseg",
    "&&",
    "git",
    "-C",
    "jaxseg",
  ]


@pytest.mark.parametrize(
  "args, message",
  [
    (["tpu_vm", "--zone", "z"], "--tpu_name is required"),
    (["tpu_vm", "--tpu_name", "t"], "--zone is required"),
    (["tpu_vm", "--tpu_name", "t", "--zone", "z", "--ref", "main"], "--ref needs --repo_url"),
    (["slurm", "--nodes", "0"], "--nodes 0: expected at least 1"),
    (["slurm", "--gpus_per_node", "0"], "--gpus_per_node 0: expected at least 1"),
    (["slurm", "--time", "12h"], "--time '12h': expected [D-]HH:MM:SS"),
    (["slurm", "--port", "80"], "--port 80: expected 1024..65535"),
    (["slurm", "--set", "total_steps"], "--set 'total_steps': expected KEY=VALUE"),
    (["slurm", "--set", "a b=1"], "--set 'a b=1': expected KEY=VALUE"),
  ],
)
def test_bad_arguments_are_named(tmp_path, args, message):
  out = _launch(*args, "--config", "configs/la_uamt.py", "--workdir", str(tmp_path / "w"))
  assert out.returncode == 2
  assert out.stderr.startswith("launch/cluster.py: error: ") and message in out.stderr
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
  "config, message",
  [
    ("configs/no_such.py", "config file configs/no_such.py not found"),
    ("configs/la_uamt", "expected PATH.py[:ARG]"),
  ],
)
def test_bad_config_is_named(tmp_path, config, message):
  out = _launch("slurm", "--config", config, "--workdir", str(tmp_path / "w"), "--dry_run")
  assert out.returncode == 2 and message in out.stderr and repr(config) in out.stderr


def test_without_dry_run_writes_and_submits(tmp_path):
  log, bin_dir = tmp_path / "calls.jsonl", tmp_path / "bin"
  workdir = tmp_path / "run"
  bare = dict(os.environ, PATH=os.path.dirname(sys.executable) + ":/usr/bin:/bin")
  if shutil.which("sbatch", path=bare["PATH"]):
    pytest.skip("a real sbatch is installed here: this test would submit a job")
  out = _launch(*_slurm_args(workdir), env=bare)
  script = workdir / "launch" / "slurm.sbatch"
  assert out.returncode == 0, out.stderr
  assert "sbatch is not on PATH here" in out.stdout and f"sbatch {script}" in out.stdout
  dry = _launch(*_slurm_args(workdir, "--dry_run"))
  assert script.read_text() == dry.stdout

  _fake_tools(bin_dir, log, sbatch="Submitted batch job 7\n")
  out = _launch(*_slurm_args(workdir), env=dict(bare, PATH=f"{bin_dir}:{bare['PATH']}"))
  assert out.returncode == 0, out.stderr
  assert [c["argv"] for c in _calls(log)] == [[str(script)]]


def test_distributed_kwargs_from_the_environment():
  assert parallel.distributed_kwargs({}) == {}
  env = {
    "JAXSEG_COORDINATOR": "gpu-a17:62344",
    "JAXSEG_NUM_PROCESSES": "8",
    "JAXSEG_PROCESS_ID": "3",
    "JAXSEG_LOCAL_DEVICE_IDS": "0,1,2,3",
  }
  assert parallel.distributed_kwargs(env) == {
    "coordinator_address": "gpu-a17:62344",
    "num_processes": 8,
    "process_id": 3,
    "local_device_ids": [0, 1, 2, 3],
  }
  for var, value, message in (
    ("JAXSEG_COORDINATOR", "gpu-a17", "expected host:port"),
    ("JAXSEG_NUM_PROCESSES", "eight", "expected an integer"),
    ("JAXSEG_PROCESS_ID", "-1", "expected one non-negative integer"),
    ("JAXSEG_LOCAL_DEVICE_IDS", "0;1", "expected comma-separated integers"),
  ):
    with pytest.raises(parallel.DistributedEnvError, match=f"{var}='{value}': {message}"):
      parallel.distributed_kwargs({var: value})


def test_maybe_initialize_distributed_passes_the_launcher_values(monkeypatch):
  calls = []
  monkeypatch.setattr(parallel.jax.distributed, "initialize", lambda **kw: calls.append(kw))
  for var in (*parallel.DISTRIBUTED_ENV, "JAX_COORDINATOR_ADDRESS", "JAXSEG_DISTRIBUTED"):
    monkeypatch.delenv(var, raising=False)
  parallel.maybe_initialize_distributed()
  assert calls == []  # a single-process run starts nothing
  monkeypatch.setenv("JAXSEG_DISTRIBUTED", "1")
  parallel.maybe_initialize_distributed()
  monkeypatch.delenv("JAXSEG_DISTRIBUTED")
  monkeypatch.setenv("JAXSEG_COORDINATOR", "gpu-a17:62344")
  monkeypatch.setenv("JAXSEG_LOCAL_DEVICE_IDS", "0,1")
  parallel.maybe_initialize_distributed()
  assert calls == [{}, {"coordinator_address": "gpu-a17:62344", "local_device_ids": [0, 1]}]


def test_a_bad_distributed_variable_is_one_line_from_the_command(tmp_path):
  env = dict(os.environ, JAXSEG_NUM_PROCESSES="two")
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "jaxseg.main",
      "--config=configs/la_uamt.py:smoke=1",
      f"--workdir={tmp_path / 'run'}",
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1] == (
    "jaxseg: error: JAXSEG_NUM_PROCESSES='two': expected an integer"
  )
