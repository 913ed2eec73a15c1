r"""One training run on a cluster: a multi-node SLURM job or a Cloud TPU VM pod, one command.

  python launch/cluster.py slurm --config configs/la_uamt.py:labeled=8 \
      --workdir /shared/runs/uamt --nodes 2 --gpus_per_node 8 --partition gpu --time 24:00:00 \
      --set data.root=/shared/LA [--dry_run]
  python launch/cluster.py tpu_vm --config configs/la_uamt.py --workdir /mnt/shared/runs/uamt \
      --tpu_name my-pod --zone us-central2-b --project my-project \
      --set data.root=/mnt/shared/LA [--dry_run]

Every process runs exactly `python -m jaxseg.main --config PATH[:ARG] --config.KEY=VALUE ...
--workdir DIR`; jaxseg.parallel.maybe_initialize_distributed then joins them into one mesh.

slurm: an sbatch script. `srun` starts one process per GPU (`--ntasks-per-node=G`; jax's SLURM
detection reads the process count, id and local GPU from SLURM_NTASKS / SLURM_PROCID /
SLURM_LOCALID) or, with `--process_per node`, one process per node driving its G GPUs
(JAXSEG_LOCAL_DEVICE_IDS). The coordinator is process 0 on the first host of
$SLURM_JOB_NODELIST (JAXSEG_COORDINATOR), on `--port` or, by default, on jax's own SLURM port rule
(61440 + job id % 4096). `--setup` lines (module loads, a virtualenv) run before srun.

tpu_vm: `gcloud compute tpus tpu-vm ssh NAME --zone Z [--project P] --worker=all --command ...`
lines: put the code on every worker (`--repo_url` clones it; by default the committed HEAD of
this checkout is archived and copied with `tpu-vm scp`), `pip install -e '.[tpu]'`, then the run
with JAXSEG_DISTRIBUTED=1 (jax detects the pod's workers itself). The workdir must be one folder
every worker sees (a shared disk or a gcsfuse mount).

--dry_run prints the script and writes nothing. Otherwise the script goes to
`<workdir>/launch/slurm.sbatch` or `<workdir>/launch/tpu_vm.sh` and is submitted (`sbatch`) or run
(`bash`, when gcloud is on PATH); where the tool is missing, the command to use is printed.
"""

import argparse
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

TARGETS = ("slurm", "tpu_vm")
_TIME = re.compile(r"^(\d+-)?\d{1,3}:\d{2}:\d{2}$")  # sbatch --time: [D-]HH:MM:SS
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# The remote checkout of a TPU VM worker ($HOME is the ssh user's).
TPU_REPO_DIR = "jaxseg"


class ClusterError(ValueError):
  """A launcher argument the user can fix."""


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="launch/cluster.py", description=__doc__.split("\n")[0])
  p.add_argument("target", choices=TARGETS)
  p.add_argument("--config", required=True, help="PATH[:ARG], e.g. configs/la_uamt.py:labeled=8")
  p.add_argument("--workdir", required=True, help="run folder, seen by every process")
  p.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="config override, passed as --config.KEY=VALUE (repeatable)",
  )
  p.add_argument("--dry_run", action="store_true", help="print the script, write nothing")
  p.add_argument(
    "--python",
    default=None,
    help="interpreter on the cluster (default: python; tpu_vm: python3, as TPU VM images name it)",
  )
  s = p.add_argument_group("slurm")
  s.add_argument("--nodes", type=int, default=1)
  s.add_argument("--gpus_per_node", type=int, default=8)
  s.add_argument("--process_per", choices=("gpu", "node"), default="gpu")
  s.add_argument("--partition", default=None)
  s.add_argument("--time", default=None, help="[D-]HH:MM:SS")
  s.add_argument("--account", default=None)
  s.add_argument("--cpus_per_task", type=int, default=None)
  s.add_argument(
    "--port", type=int, default=None, help="coordinator port (default: derived from $SLURM_JOB_ID)"
  )
  s.add_argument(
    "--repo_dir",
    default=str(REPO),
    help="the jaxseg checkout as the compute nodes see it (default: this one)",
  )
  s.add_argument(
    "--setup",
    action="append",
    default=[],
    metavar="SHELL_LINE",
    help="a line run before srun, verbatim (e.g. 'source ~/venv/bin/activate')",
  )
  t = p.add_argument_group("tpu_vm")
  t.add_argument("--tpu_name", default=None)
  t.add_argument("--zone", default=None)
  t.add_argument("--project", default=None)
  t.add_argument(
    "--repo_url",
    default=None,
    help="git URL to clone on the workers (default: copy this checkout's HEAD)",
  )
  t.add_argument("--ref", default=None, help="branch, tag or commit of --repo_url")
  return p.parse_args(argv)


def _config_path(spec: str) -> str:
  """'PATH[:ARG]' -> the same with PATH relative to the repository (as the remote checkout holds
  it) when it lies inside it, absolute otherwise; a missing file is an error."""
  path, sep, arg = spec.partition(":")
  if not path.endswith(".py"):
    raise ClusterError(
      f"--config {spec!r}: expected PATH.py[:ARG], e.g. configs/la_uamt.py:smoke=1"
    )
  candidates = [pathlib.Path(path), REPO / path]
  found = next((c.resolve() for c in candidates if c.is_file()), None)
  if found is None:
    raise ClusterError(f"--config {spec!r}: config file {path} not found")
  rel = found.relative_to(REPO) if found.is_relative_to(REPO) else found
  return str(rel) + (sep + arg if sep else "")


def _overrides(items: list[str]) -> list[str]:
  flags = []
  for item in items:
    key, sep, value = item.partition("=")
    key = key.removeprefix("config.")
    if not sep or not _KEY.match(key):
      raise ClusterError(f"--set {item!r}: expected KEY=VALUE (e.g. --set total_steps=100)")
    flags.append(f"--config.{key}={value}")
  return flags


def _python(args) -> str:
  return args.python or ("python3" if args.target == "tpu_vm" else "python")


def train_command(args: argparse.Namespace) -> list[str]:
  """The argv every process runs."""
  return [
    _python(args),
    "-m",
    "jaxseg.main",
    f"--config={_config_path(args.config)}",
    *_overrides(args.set),
    f"--workdir={args.workdir}",
  ]


def _check_slurm(args):
  if args.nodes < 1:
    raise ClusterError(f"--nodes {args.nodes}: expected at least 1")
  if args.gpus_per_node < 1:
    raise ClusterError(f"--gpus_per_node {args.gpus_per_node}: expected at least 1")
  if args.time is not None and not _TIME.match(args.time):
    raise ClusterError(f"--time {args.time!r}: expected [D-]HH:MM:SS, e.g. 24:00:00")
  if args.port is not None and not 1024 <= args.port <= 65535:
    raise ClusterError(f"--port {args.port}: expected 1024..65535")
  if args.cpus_per_task is not None and args.cpus_per_task < 1:
    raise ClusterError(f"--cpus_per_task {args.cpus_per_task}: expected at least 1")


def render_slurm(args: argparse.Namespace) -> str:
  """The sbatch script: #SBATCH header, the coordinator's address, srun of the training command."""
  _check_slurm(args)
  q = shlex.quote
  tasks = args.gpus_per_node if args.process_per == "gpu" else 1
  # Absolute: srun runs in --repo_dir, and the script's own copy lives in this workdir.
  workdir = pathlib.Path(args.workdir).absolute()
  args.workdir = str(workdir)
  name = pathlib.Path(args.config.partition(":")[0]).stem
  header = [
    "#!/bin/bash",
    f"#SBATCH --job-name={q('jaxseg-' + name)}",
    f"#SBATCH --nodes={args.nodes}",
    f"#SBATCH --ntasks-per-node={tasks}",
    f"#SBATCH --gres=gpu:{args.gpus_per_node}",
    f"#SBATCH --output={q(str(workdir / 'slurm-%j.out'))}",
  ]
  for flag, value in (
    ("partition", args.partition),
    ("time", args.time),
    ("account", args.account),
    ("cpus-per-task", args.cpus_per_task),
  ):
    if value is not None:
      header.append(f"#SBATCH --{flag}={q(str(value))}")
  port = str(args.port) if args.port else "$((61440 + SLURM_JOB_ID % 4096))"
  body = [
    "set -euo pipefail",
    f"mkdir -p {q(str(workdir))}",
    f"cd {q(args.repo_dir)}",
    *args.setup,
    "# Process 0 runs on the first host of the allocation and hosts the coordinator.",
    f'JAXSEG_COORDINATOR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):{port}"',
    "export JAXSEG_COORDINATOR",
  ]
  if args.process_per == "node":
    body.append(f"export JAXSEG_LOCAL_DEVICE_IDS={','.join(map(str, range(args.gpus_per_node)))}")
  srun = ["srun", f"--nodes={args.nodes}", f"--ntasks-per-node={tasks}", "--kill-on-bad-exit=1"]
  body.append(shlex.join(srun + train_command(args)))
  return "\n".join(header + [""] + body) + "\n"


def render_tpu_vm(args: argparse.Namespace) -> str:
  """A bash script of `gcloud compute tpus tpu-vm` lines: code onto every worker, install, run."""
  if not args.tpu_name:
    raise ClusterError("tpu_vm: --tpu_name is required (the TPU VM or pod slice)")
  if not args.zone:
    raise ClusterError("tpu_vm: --zone is required (e.g. us-central2-b)")
  if args.ref and not args.repo_url:
    raise ClusterError("--ref needs --repo_url")
  q = shlex.quote
  where = ["--zone", args.zone] + (["--project", args.project] if args.project else [])
  ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.tpu_name, *where, "--worker=all"]
  lines = ["#!/bin/bash", "set -euo pipefail"]
  if args.repo_url:
    fetch = f"rm -rf {TPU_REPO_DIR} && git clone {q(args.repo_url)} {TPU_REPO_DIR}"
    if args.ref:
      fetch += f" && git -C {TPU_REPO_DIR} checkout {q(args.ref)}"
  else:
    archive = "/tmp/jaxseg-src.tar.gz"
    lines.append(
      shlex.join(
        ["git", "-C", str(REPO), "archive", "--format=tar.gz", f"--output={archive}", "HEAD"]
      )
    )
    lines.append(
      shlex.join(
        [
          "gcloud",
          "compute",
          "tpus",
          "tpu-vm",
          "scp",
          archive,
          f"{args.tpu_name}:{archive}",
          *where,
          "--worker=all",
        ]
      )
    )
    fetch = f"rm -rf {TPU_REPO_DIR} && mkdir {TPU_REPO_DIR} && tar -xzf {archive} -C {TPU_REPO_DIR}"
  install = f"{fetch} && cd {TPU_REPO_DIR} && {q(_python(args))} -m pip install -q -e '.[tpu]'"
  run = f"cd {TPU_REPO_DIR} && JAXSEG_DISTRIBUTED=1 {shlex.join(train_command(args))}"
  lines.append(shlex.join(ssh + ["--command", install]))
  lines.append(shlex.join(ssh + ["--command", run]))
  return "\n".join(lines) + "\n"


def render(args: argparse.Namespace) -> str:
  return render_slurm(args) if args.target == "slurm" else render_tpu_vm(args)


def main(argv=None) -> int:
  args = parse_args(argv)
  try:
    script = render(args)
  except ClusterError as e:
    print(f"launch/cluster.py: error: {e}", file=sys.stderr)
    return 2
  if args.dry_run:
    print(script, end="")
    return 0
  out = (
    pathlib.Path(args.workdir)
    / "launch"
    / ("slurm.sbatch" if args.target == "slurm" else "tpu_vm.sh")
  )
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(script)
  out.chmod(0o755)
  print(f"[cluster] wrote {out}")
  tool, cmd = (
    ("sbatch", ["sbatch", str(out)]) if args.target == "slurm" else ("gcloud", ["bash", str(out)])
  )
  if shutil.which(tool) is None:
    print(f"[cluster] {tool} is not on PATH here: run `{shlex.join(cmd)}` where it is")
    return 0
  return subprocess.run(cmd, check=False).returncode


if __name__ == "__main__":
  sys.exit(main())
