r"""Methods x labeled counts x seeds from one command: run them here one after another, or write job scripts.

  python launch/sweep.py --configs configs/la_mt.py,configs/la_vnet.py --labeled 8,16 --seeds 0,1 \
      --root runs/sweep --set total_steps=100 --set eval.every_steps=50
  python launch/sweep.py ... --emit_scripts runs/sweep/jobs [--slurm_option=--gres=gpu:1 ...]
  python launch/sweep.py ... --seeds 0,1,2 --as_runs    # each config's seeds as one job (runs=3)

Each config is `[NAME=]PATH[:ARG]` (NAME defaults to the config's `method`; two configs with the same
method need explicit names, e.g. `l8=configs/la_mt.py:labeled=8,mt16=configs/la_mt.py`; ARG may hold
commas: an item starts a new config only where its part before ':' ends in .py). Any config's
`smoke=1` argument gives a sweep of seconds on a CPU (`configs/la_vnet.py:smoke=1`). Every run is exactly
`python -m jaxseg.main --config PATH[:ARG] --config.data.labeled=N --config.seed=S --config.KEY=VALUE ...
--workdir ROOT/NAME/labeledN/seedS`: the in-process runner parses the same flags with the same
ml_collections machinery, and the emitted scripts run that command. With --as_runs the seeds (consecutive,
e.g. 0,1,2) of each config and labeled count are one job: `--config.seed=FIRST --config.runs=N
--workdir ROOT/NAME/labeledN/seedsFIRST-LAST`, whose replica k (seed FIRST+k) writes its results to
`run<k>/` (jaxseg/runs.py): N seeds cost one compiled program.

Resumable: a run whose `eval/<eval.split>/summary.json` exists (every replica's, for a runs job) is
skipped; an unfinished one resumes from its checkpoint (the normal resume of jaxseg.main). `<root>/sweep.json` lists the runs (launch/report.py
reads it). With --emit_scripts DIR: `DIR/run_000.sh` ... (one per run, each skipping a finished run),
`DIR/run_all.sh` (all, one after another) and `DIR/slurm_array.sbatch` (a SLURM job array, one task per
run; `--slurm_option` adds `#SBATCH` lines).
"""

import argparse
import dataclasses
import pathlib
import shlex
import subprocess
import sys
import time
import traceback

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))  # `python launch/sweep.py` from anywhere

MANIFEST = "sweep.json"


@dataclasses.dataclass(frozen=True)
class Run:
  name: str  # the method column of the report (config method unless named)
  method: str
  config: str  # PATH[:ARG] as given to jaxseg.main
  labeled: int
  seed: int  # the first seed of a runs job
  overrides: tuple  # ("key=value", ...) applied as --config.key=value
  workdir: str
  runs: int = 1  # > 1: one job of the seeds seed..seed+runs-1 (--as_runs)

  def flags(self) -> list[str]:
    return (
      [
        f"--config={self.config}",
        f"--config.data.labeled={self.labeled}",
        f"--config.seed={self.seed}",
      ]
      + ([f"--config.runs={self.runs}"] if self.runs > 1 else [])
      + [f"--config.{o}" for o in self.overrides]
    )

  def result_dirs(self) -> list[pathlib.Path]:
    """Where each seed's results go: the workdir, or a runs job's `run<k>/` folders."""
    workdir = pathlib.Path(self.workdir)
    return [workdir] if self.runs == 1 else [workdir / f"run{k}" for k in range(self.runs)]

  def command(self, python: str = sys.executable) -> list[str]:
    return [python, "-m", "jaxseg.main", *self.flags(), f"--workdir={self.workdir}"]


def parse_config_spec(spec: str) -> tuple[str | None, str]:
  """'[NAME=]PATH[:ARG]' -> (NAME or None, 'PATH[:ARG]')."""
  path_part, sep, arg = spec.partition(":")
  name, eq, path = path_part.partition("=")
  if not eq:
    name, path = None, path_part
  if not path.endswith(".py"):
    raise ValueError(f"--configs entry {spec!r}: expected [NAME=]PATH.py[:ARG]")
  # Absolute, so that runs and scripts find it whatever their working directory.
  if pathlib.Path(path).is_file():
    path = str(pathlib.Path(path).resolve())
  elif (REPO / path).is_file():
    path = str(REPO / path)
  else:
    raise ValueError(f"--configs entry {spec!r}: config file {path} not found")
  return name or None, path + (sep + arg if sep else "")


def split_config_specs(text: str) -> list[str]:
  """'a=configs/x.py:smoke=1,seed=2,configs/y.py' -> ['a=configs/x.py:smoke=1,seed=2',
  'configs/y.py']: a comma-separated item whose part before ':' ends in .py starts a config spec;
  any other item continues the previous spec's ARG."""
  specs = []
  for item in text.split(","):
    if specs and not item.partition(":")[0].endswith(".py"):
      specs[-1] += "," + item
    else:
      specs.append(item)
  return specs


def build_config(run_or_flags):
  """The ConfigDict jaxseg.main would build from these flags (same parser, same overrides)."""
  from absl import flags
  from ml_collections import config_flags

  argv = run_or_flags.flags() if isinstance(run_or_flags, Run) else list(run_or_flags)
  argv = ["sweep", *argv]
  values = flags.FlagValues()
  # The overrides are read from `sys_argv` (sys.argv by default), so hand it the same list.
  config_flags.DEFINE_config_file(
    "config", None, "config file", flag_values=values, lock_config=True, sys_argv=argv
  )
  values(argv)
  return values.config


def plan(
  configs: list[str],
  labeled: list[int],
  seeds: list[int],
  root,
  overrides: list[str],
  as_runs: bool = False,
) -> list[Run]:
  """Every (config, labeled, seed) run, in that nesting order; with `as_runs`, one runs job per
  (config, labeled) holding every seed (they must be consecutive)."""
  root = pathlib.Path(root).resolve()
  seeds = [int(s) for s in seeds]
  if as_runs and seeds != list(range(seeds[0], seeds[0] + len(seeds))):
    raise ValueError(
      f"--as_runs: the seeds {seeds} must be consecutive and ascending (e.g. 0,1,2): a runs "
      "job trains the seeds seed..seed+runs-1"
    )
  specs = [parse_config_spec(c) for c in configs]
  named = []
  for name, config in specs:
    method = build_config([f"--config={config}"]).method
    named.append((name or method, method, config))
  names = [n for n, _, _ in named]
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise ValueError(f"--configs: several configs are named {dup}; name them: NAME=PATH[:ARG]")
  runs = []
  for name, method, config in named:
    for n in labeled:
      if as_runs:
        job = root / name / f"labeled{n}" / f"seeds{seeds[0]}-{seeds[-1]}"
        runs.append(
          Run(name, method, config, int(n), seeds[0], tuple(overrides), str(job), len(seeds))
        )
        continue
      for s in seeds:
        runs.append(
          Run(
            name,
            method,
            config,
            int(n),
            int(s),
            tuple(overrides),
            str(root / name / f"labeled{n}" / f"seed{s}"),
          )
        )
  return runs


def summary_paths(run: Run, split: str = "val") -> list[pathlib.Path]:
  return [d / "eval" / split / "summary.json" for d in run.result_dirs()]


def is_done(run: Run, split: str = "val") -> bool:
  return all(p.is_file() for p in summary_paths(run, split))


def write_manifest(root, runs: list[Run]) -> pathlib.Path:
  from jaxseg import io_utils

  path = pathlib.Path(root).resolve() / MANIFEST
  io_utils.write_json(path, {"runs": [dataclasses.asdict(r) for r in runs]})
  return path


def run_all(runs: list[Run], runner: str = "subprocess", stream=None) -> list[tuple[Run, str]]:
  """Runs every unfinished run in order. Returns [(run, error message)] for the runs that failed."""
  stream = stream or sys.stdout
  failures = []
  for i, run in enumerate(runs):
    config = build_config(run)
    tag = f"[sweep {i + 1}/{len(runs)}] {run.name} labeled={run.labeled} {_seeds(run)}"
    if is_done(run, config.eval.split):
      done = ", ".join(str(p) for p in summary_paths(run, config.eval.split))
      print(f"{tag}: done ({done}), skipped", file=stream, flush=True)
      continue
    print(f"{tag}: {shlex.join(run.command())}", file=stream, flush=True)
    t0 = time.time()
    try:
      if runner == "inprocess":
        from jaxseg import train

        train.train_and_evaluate(config, run.workdir)
      else:
        subprocess.run(run.command(), cwd=REPO, check=True)
    except Exception as e:  # one failed run must not stop the sweep
      message = f"{type(e).__name__}: {e}"
      failures.append((run, message))
      print(f"{tag}: FAILED after {time.time() - t0:.0f}s: {message}", file=stream, flush=True)
      if runner == "inprocess":
        traceback.print_exc(file=stream)
      continue
    print(f"{tag}: finished in {time.time() - t0:.0f}s", file=stream, flush=True)
  return failures


def emit_scripts(runs: list[Run], out_dir, slurm_options: list[str] = ()) -> list[pathlib.Path]:
  """One bash script per run, run_all.sh and slurm_array.sbatch in `out_dir`. Returns the run scripts."""
  out_dir = pathlib.Path(out_dir).resolve()
  out_dir.mkdir(parents=True, exist_ok=True)
  scripts = []
  for i, run in enumerate(runs):
    split = build_config(run).eval.split
    cmd = '"${PYTHON:-python}" ' + shlex.join(run.command()[1:])
    done = " && ".join(f"[ -f {shlex.quote(str(p))} ]" for p in summary_paths(run, split))
    text = "\n".join(
      [
        "#!/usr/bin/env bash",
        f"# jaxseg sweep run {i}: {run.name} labeled={run.labeled} {_seeds(run)}",
        "set -euo pipefail",
        f"cd {shlex.quote(str(REPO))}",
        f"if {done}; then",
        f"  echo 'done: {run.workdir} (skipped)'; exit 0",
        "fi",
        cmd,
        "",
      ]
    )
    path = out_dir / f"run_{i:03d}.sh"
    path.write_text(text)
    path.chmod(0o755)
    scripts.append(path)
  all_script = out_dir / "run_all.sh"
  all_script.write_text(
    "#!/usr/bin/env bash\nset -euo pipefail\n"
    + "".join(f"bash {shlex.quote(str(s))}\n" for s in scripts)
  )
  all_script.chmod(0o755)
  header = [
    "#!/usr/bin/env bash",
    "#SBATCH --job-name=jaxseg-sweep",
    f"#SBATCH --array=0-{len(runs) - 1}",
    f"#SBATCH --output={out_dir}/logs/%A_%a.out",
  ]
  header += [f"#SBATCH {opt}" for opt in slurm_options]
  (out_dir / "logs").mkdir(exist_ok=True)
  (out_dir / "slurm_array.sbatch").write_text(
    "\n".join(
      header
      + ["set -euo pipefail", f'bash "{out_dir}/run_$(printf %03d "$SLURM_ARRAY_TASK_ID").sh"', ""]
    )
  )
  return scripts


def _seeds(run: Run) -> str:
  """'seed=S', or 'seeds=S..T' for a runs job."""
  if run.runs == 1:
    return f"seed={run.seed}"
  return f"seeds={run.seed}..{run.seed + run.runs - 1}"


def _int_list(text: str) -> list[int]:
  try:
    return [int(x) for x in text.split(",") if x.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="launch/sweep.py", description=__doc__.split("\n")[0])
  parser.add_argument(
    "--configs",
    required=True,
    help="comma-separated [NAME=]PATH[:ARG] config specs (one per method; ARG may hold commas)",
  )
  parser.add_argument("--labeled", type=_int_list, required=True, help="labeled counts, e.g. 8,16")
  parser.add_argument("--seeds", type=_int_list, required=True, help="seeds, e.g. 0,1,2")
  parser.add_argument("--root", required=True, help="sweep folder: ROOT/NAME/labeledN/seedS")
  parser.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="config override for every run (repeatable), e.g. total_steps=100",
  )
  parser.add_argument(
    "--runner",
    choices=["subprocess", "inprocess"],
    default="subprocess",
    help="subprocess: one `python -m jaxseg.main` per run; inprocess: same config, this process",
  )
  parser.add_argument(
    "--emit_scripts",
    metavar="DIR",
    default=None,
    help="write job scripts to DIR instead of running",
  )
  parser.add_argument(
    "--as_runs",
    action="store_true",
    help="train each config's seeds (consecutive) as one job with --config.runs=N: one compiled "
    "program for all seeds, each seed's results in the job's run<k>/",
  )
  parser.add_argument(
    "--slurm_option",
    action="append",
    default=[],
    help="extra #SBATCH line for slurm_array.sbatch (repeatable), e.g. --gres=gpu:1",
  )
  args = parser.parse_args(argv)
  for o in args.set:
    if "=" not in o:
      parser.error(f"--set {o!r}: expected KEY=VALUE")
  try:
    runs = plan(
      split_config_specs(args.configs),
      args.labeled,
      args.seeds,
      args.root,
      args.set,
      args.as_runs,
    )
  except ValueError as e:
    parser.error(str(e))
  manifest = write_manifest(args.root, runs)
  if args.emit_scripts:
    scripts = emit_scripts(runs, args.emit_scripts, args.slurm_option)
    print(
      f"wrote {len(scripts)} run scripts, run_all.sh and slurm_array.sbatch to "
      f"{pathlib.Path(args.emit_scripts).resolve()} (manifest {manifest})"
    )
    return 0
  failures = run_all(runs, args.runner)
  done = sum(is_done(r, build_config(r).eval.split) for r in runs)
  print(f"[sweep] {done}/{len(runs)} runs finished; manifest {manifest}")
  for run, message in failures:
    print(f"[sweep] FAILED: {run.workdir}: {message}")
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
