r"""Reproduce a table of the seed: train every method of it, evaluate, and render reproduced beside
published.

  python -m jaxseg.reproduce --table la16 --scale full --seeds 3 --root runs/reproduce \
      --data_root /path/to/LA
  python -m jaxseg.reproduce --table la16 --scale mini --methods supervised,uamt --seeds 2 \
      --root runs/reproduce --data_root /path/to/LA            # 2 CPU cores, reduced scale
  python -m jaxseg.reproduce --table la16 --data synthetic --steps 2 --root /tmp/r   # plumbing

Tables and published numbers: jaxseg/published.py. For each row (method) of `--table` and each seed
(1337, 1338, ...), the row's config (configs/*.py, `labeled=N,seed=S`) is trained with
`train.train_and_evaluate` in `<root>/<table>/<scale>/<method>/seed<S>`, one run after another.
A run whose `eval/val/summary.json` exists is skipped; a killed one resumes from its checkpoint
(the same command again). Training validates on the VALIDATION split its config uses (the last
ids of train.list on LA): the command refuses a config that evaluates or selects on the test split.
Each finished run's FINAL state is then evaluated (`evaluate_all`) in parity mode (the method's own
evaluation) and clean mode (jaxseg/evaluation.py), on the validation split and, where the data
root holds the dataset's test list (LA's test.list of 20 cases), on the test split: nothing is
selected on it. The table says where upstream selected its checkpoint on the test list.

Writes `<root>/<table>/<scale>/results.md`, `results.json` and `results.png`: one table per split
and mode evaluated (test before validation, parity before clean; the first is the headline: the
figure and results.json "rows"), each with per method the reproduced mean ± std over seeds (each
seed's mean over cases) of Dice, Jaccard, 95HD and ASD, the published Dice, the difference, and
whether the difference falls inside the run-to-run band: the spread the method's doc reports
(published.BANDS) where there is one, else the seeds' own sample std (ddof 1; no band with one
seed); and the per-case Dice.

Two commands on one root can share a table's work (two GPUs, or the two cores of a CPU):
`--first_seed 1338` starts the seeds there, and each command's table includes every finished
seed of its methods on disk.

`--scale mini` is the reduced-scale protocol for 2 CPU cores (`mini`); `--data synthetic` runs
every config's smoke shrink (config_lib.smoke: generated phantoms) instead of real data, to test
the plumbing.
"""

import argparse
import csv
import dataclasses
import json
import math
import pathlib
import sys

import ml_collections
import numpy as np

from jaxseg import config_lib
from jaxseg import errors
from jaxseg import io_utils
from jaxseg import published

REPO = pathlib.Path(__file__).resolve().parents[1]
SEED0 = 1337  # the configs' default seed; seed i of a table is SEED0 + i

# Reduced scale (docs/results.md "The reduced-scale protocol and its calibration"):
# LA volumes at a quarter of the resolution (2.5 mm), the recipe's 112x112x80 patch quartered and
# rounded to VNet's multiple of 16, 8-filter networks, 1000 steps. Its supervised baseline reaches
# 75 % validation Dice on the validation cases whose contrast the training cases share; the fourth
# validation case (A4R1S23KR0KU2WSYHK2X, a dark atrium unlike every training case) scores 0 at
# every reduced scale tried, and the tables report it, per case, in every mean.
MINI_DOWNSAMPLE = 4
MINI_PATCH = (32, 32, 16)
MINI_FILTERS = 8
MINI_STEPS = 1000

# Method-block fields counted in training steps, which `scale_schedule` scales with total_steps.
_STEP_FIELDS = ("iters_per_epoch", "consistency_iters_per_epoch")
_NOT_METHOD_BLOCKS = ("model", "data", "optimizer", "eval", "mesh")


def scale_schedule(c: ml_collections.ConfigDict, steps: int) -> ml_collections.ConfigDict:
  """Shortens `c` to `steps` training steps in place, keeping every schedule's length as a
  fraction of the run: the lr step period (`optimizer.lr_step_every`), the consistency ramps'
  epoch length (`iters_per_epoch`, so `sigmoid_rampup(step // iters_per_epoch, rampup)` still
  ends where upstream's does) and phase lengths (`*_steps` of the method block, e.g. BCP's
  pretrain_steps), each times steps / total_steps (at least 1). Checkpoints every quarter of the
  run; no periodic validation (the final state is what the tables evaluate). Returns `c`."""
  ratio = steps / c.total_steps
  c.total_steps = int(steps)
  o = c.optimizer
  if o.get("lr_step_every"):
    o.lr_step_every = max(1, round(o.lr_step_every * ratio))
  for name, block in c.items():
    if name in _NOT_METHOD_BLOCKS or not isinstance(block, ml_collections.ConfigDict):
      continue
    for key, value in block.items():
      if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        if key in _STEP_FIELDS or key.endswith("_steps"):
          block[key] = max(1, round(value * ratio))
  c.checkpoint_every_steps = max(1, steps // 4)
  c.eval.every_steps = 0
  return c


def mini(c: ml_collections.ConfigDict, steps: int = MINI_STEPS) -> ml_collections.ConfigDict:
  """The reduced-scale protocol, in place: what it shrinks and why.

  * Resolution: LA volumes downsampled by MINI_DOWNSAMPLE per axis at load time
    (`data.downsample`, trilinear image / nearest label; spacing scaled with it), so that a small
    patch still holds most of the atrium. Shrinking the crop alone (48x48x32 at full resolution)
    sees too little context: 600 supervised steps reach about 31 % validation Dice.
  * Patch: 112x112x80 divided by the same factor and rounded to VNet's multiple of 16
    (MINI_PATCH).
  * Width: `model.kwargs.n_filters` 16 -> MINI_FILTERS (every network of the method).
  * Steps: `steps` (default MINI_STEPS), schedules scaled with them (`scale_schedule`).
  * Evaluation: the sliding-window strides divided by the factor (LA 18/4 -> 4/1), metrics in
    voxels of the downsampled volumes.
  * BCP's box mask takes its bounds from the patch (`bcp.mask_bounds='shape'`): upstream's bounds
    are the constants of the 112x112x80 patch.

  Kept: the labeled cases, the batch size and its labeled / unlabeled composition, the optimizer
  and learning rate, every loss weight and EMA decay, the validation split.

  Raises:
    errors.ConfigError: a dataset other than LA (the protocol is calibrated on LA only).
  """
  if c.data.name != "la":
    raise errors.ConfigError(
      f"--scale mini: data.name={c.data.name!r}; the reduced-scale protocol is calibrated on LA "
      "only (use --scale full)"
    )
  scale_schedule(c, steps)
  c.data.downsample = MINI_DOWNSAMPLE
  c.data.spacing = tuple(s * MINI_DOWNSAMPLE for s in c.data.spacing)
  c.data.patch_size = MINI_PATCH
  c.model.kwargs.n_filters = MINI_FILTERS
  c.eval.stride_xy = max(1, c.eval.stride_xy // MINI_DOWNSAMPLE)
  c.eval.stride_z = max(1, c.eval.stride_z // MINI_DOWNSAMPLE)
  for block in c.values():  # a method block with box-mask bounds (BCP's) takes them from the patch
    if isinstance(block, ml_collections.ConfigDict) and "mask_bounds" in block:
      block.mask_bounds = "shape"
  return c


@dataclasses.dataclass(frozen=True)
class Run:
  entry: published.Entry
  seed: int
  workdir: pathlib.Path


def build_config(
  entry: published.Entry,
  seed: int,
  scale: str,
  data: str,
  data_root: str = "",
  steps: int | None = None,
) -> ml_collections.ConfigDict:
  """The config of one run: the entry's config file with `labeled=N,seed=S` (`smoke=1` for
  `data='synthetic'`), shrunk by `scale` ('mini': `mini`; with synthetic data only its schedule
  scaling, the smoke shapes standing in for the resolution), `steps` overriding the step count.

  Raises:
    errors.ConfigError: the entry has no config, or the config evaluates on the test split.
  """
  if entry.config is None:
    raise errors.ConfigError(
      f"{entry.method} on {entry.dataset} ({entry.labeled} labeled): no config trains this row"
    )
  labeled = entry.run_labeled or entry.labeled
  arg = f"labeled={labeled},seed={seed}" + (",smoke=1" if data == "synthetic" else "")
  c = config_lib.load_config_module(REPO / entry.config).get_config(arg)
  if data == "synthetic":
    if scale == "mini" or steps:
      scale_schedule(c, steps or c.total_steps)
  else:
    if data_root:
      c.data.root = str(data_root)
    if scale == "mini":
      mini(c, steps or MINI_STEPS)
    elif steps:
      scale_schedule(c, steps)
  if c.eval.split != "val":
    raise errors.ConfigError(
      f"{entry.config}: eval.split={c.eval.split!r}; reproduce evaluates and selects on the "
      "validation split only (the test split stays held out)"
    )
  return c


def plan(
  table: str, methods: list[str] | None, seeds: int, scale: str, root, first_seed: int = SEED0
) -> list[Run]:
  """Every (row, seed) run of `table`, rows in published order, seeds first_seed, first_seed + 1,
  ... (`first_seed` other than SEED0 lets two commands on one root split a table's seeds).

  Raises:
    errors.ConfigError: an unknown table, or a `methods` name not in it.
  """
  try:
    entries = published.table(table)
  except KeyError as e:
    raise errors.ConfigError(f"--table: {e.args[0]}") from None
  entries = [e for e in entries if e.config is not None]
  if methods:
    known = [e.method for e in entries]
    unknown = [m for m in methods if m not in known]
    if unknown:
      raise errors.ConfigError(f"--methods {unknown}: not in table {table}; its methods: {known}")
    entries = [e for e in entries if e.method in methods]
  base = pathlib.Path(root) / table / scale
  return [
    Run(e, first_seed + i, base / e.method / f"seed{first_seed + i}")
    for e in entries
    for i in range(seeds)
  ]


# The evaluations of each finished run, in the order the tables are rendered: the final state on
# the test split (where the data root has the dataset's test list) and on the validation split,
# each in parity mode (the method's own evaluation) and clean mode (jaxseg/evaluation.py). The
# first with results is the table's headline (results.json "rows"); nothing is selected on any.
EVALS = (("test", "parity"), ("test", "clean"), ("val", "parity"), ("val", "clean"))


def summary_path(run: Run, split: str = "val", mode: str = "parity") -> pathlib.Path:
  """Where the run's `split` / `mode` summary is: training writes val / parity to eval/val/,
  `jaxseg.evaluate` the others to eval/<split>/<mode>/."""
  if (split, mode) == ("val", "parity"):
    return run.workdir / "eval" / "val" / "summary.json"
  return run.workdir / "eval" / split / mode / "summary.json"


def with_finished_seeds(runs: list[Run]) -> list[Run]:
  """`runs` plus every other finished seed (`seed<N>/` with a summary) of their methods on disk,
  in method then seed order: the table a second command on the same root (`--first_seed`)
  renders includes the first one's seeds."""
  by_method: dict[str, dict[int, Run]] = {}
  for run in runs:
    by_method.setdefault(run.entry.method, {})[run.seed] = run
  for seeds in by_method.values():
    first = next(iter(seeds.values()))
    for d in first.workdir.parent.glob("seed*"):
      seed = d.name[len("seed") :]
      if seed.isdigit() and int(seed) not in seeds:
        run = Run(first.entry, int(seed), d)
        if summary_path(run).is_file():
          seeds[int(seed)] = run
  return [seeds[k] for seeds in by_method.values() for k in sorted(seeds)]


def train_all(runs: list[Run], configs: list, stream=None) -> None:
  """Trains and evaluates each unfinished run in order (`train.train_and_evaluate` resumes a
  killed one from its checkpoint); progress lines go to `stream` (default stdout)."""
  from jaxseg import train  # jax only when there is something to train

  stream = stream or sys.stdout
  for i, (run, config) in enumerate(zip(runs, configs)):
    tag = f"[reproduce {i + 1}/{len(runs)}] {run.entry.method} seed={run.seed}"
    if summary_path(run).is_file():
      print(f"{tag}: done ({summary_path(run)})", file=stream, flush=True)
      continue
    print(f"{tag}: training in {run.workdir}", file=stream, flush=True)
    if train.train_and_evaluate(config, run.workdir) is None:
      raise errors.RunStateError(f"{tag}: stopped by SIGTERM; run the same command to resume")


def evaluate_all(runs: list[Run], stream=None) -> None:
  """Evaluates each finished run's final state in every (split, mode) of EVALS it lacks (the test
  split only where the data root has its test list); progress lines go to `stream`."""
  from jaxseg import evaluation

  stream = stream or sys.stdout
  for run in runs:
    if not summary_path(run).is_file():
      continue
    config = evaluation.load_run_config(run.workdir)
    has_test = evaluation.test_list_path(config, run.workdir).is_file()
    for split, mode in EVALS:
      if summary_path(run, split, mode).is_file() or (split == "test" and not has_test):
        continue
      print(
        f"[reproduce] {run.entry.method} seed={run.seed}: evaluating the final state on {split}, "
        f"{mode} mode",
        file=stream,
        flush=True,
      )
      evaluation.evaluate_workdir(run.workdir, split=split, mode=mode, stream=None)


def _stats(values: list[float]) -> tuple[float, float]:
  """(mean, sample std with ddof 1; NaN for one value)."""
  a = np.asarray(values, np.float64)
  return float(np.mean(a)), float(np.std(a, ddof=1)) if len(a) > 1 else math.nan


def collect(runs: list[Run], split: str = "val", mode: str = "parity") -> list[dict]:
  """One row per method: the reproduced mean and std over seeds of each run's `split` / `mode`
  summary (Dice and Jaccard in %), the published entry, the difference and the band. Methods
  without such a summary are left out."""
  rows = []
  by_method: dict[str, list[Run]] = {}
  for run in runs:
    by_method.setdefault(run.entry.method, []).append(run)
  baseline = None
  for method, method_runs in by_method.items():
    done = [r for r in method_runs if summary_path(r, split, mode).is_file()]
    summaries = [json.loads(summary_path(r, split, mode).read_text()) for r in done]
    if not summaries:
      continue
    entry = method_runs[0].entry
    row = dict(method=method, config=entry.config, n_seeds=len(summaries))
    row["seeds"] = [r.seed for r in done]
    for metric, scale in (("dice", 100.0), ("jaccard", 100.0), ("hd95", 1.0), ("asd", 1.0)):
      row[metric], row[f"{metric}_std"] = _stats([scale * s[metric] for s in summaries])
    row["published_dice"] = entry.dice
    row["diff"] = row["dice"] - entry.dice
    doc_band = published.band(method)
    if doc_band is not None:
      row["band"], row["band_source"] = doc_band
    elif len(summaries) > 1:
      row["band"], row["band_source"] = row["dice_std"], "the seeds' own std"
    else:
      row["band"], row["band_source"] = math.nan, "none (one seed)"
    row["inside"] = bool(abs(row["diff"]) <= row["band"]) if math.isfinite(row["band"]) else None
    row["published_checkpoint"] = entry.checkpoint
    row["published_source"] = entry.source
    row["verified"] = entry.verified
    row["mode"] = summaries[0].get("mode", "?")
    row["units"] = summaries[0].get("units", "?")
    row["case_dice"] = _case_dice([summary_path(r, split, mode).parent for r in done])
    if method == published.BASELINE_METHOD:
      baseline = row["dice"]
    rows.append(row)
  for row in rows:
    row["vs_supervised"] = row["dice"] - baseline if baseline is not None else math.nan
  return rows


def _case_dice(folders: list[pathlib.Path]) -> dict[str, float]:
  """{case: Dice % averaged over the runs} from each evaluation folder's `cases.csv`, cases in
  file order; a case some run lacks is left out (a NaN Dice stays NaN)."""
  per_run = []
  for folder in folders:
    path = folder / "cases.csv"
    if not path.is_file():
      return {}
    with path.open(newline="") as f:
      per_run.append({r["case"]: 100.0 * float(r["dice"]) for r in csv.DictReader(f)})
  if not per_run:
    return {}
  cases = [c for c in per_run[0] if all(c in d for d in per_run)]
  return {c: float(np.mean([d[c] for d in per_run])) for c in cases}


def _pm(mean: float, std: float) -> str:
  if not math.isfinite(mean):
    return "NaN"
  return f"{mean:.2f}" + (f" ± {std:.2f}" if math.isfinite(std) else "")


def markdown(
  rows: list[dict], table: str, scale: str, data: str, split: str = "val", mode: str = "parity"
) -> str:
  """The results table as Markdown, with what it measures and what it compares against."""
  dataset, labeled = published.TABLES[table]
  units = rows[0]["units"] if rows else "?"
  units = "voxels" if units == "voxel" else units
  lines = [
    f"## Table {table}: {dataset}, {labeled} labeled, scale {scale}, data {data}; "
    f"{'TEST' if split == 'test' else 'VALIDATION'} split, {mode} mode",
    "",
    "Reproduced: mean ± std over seeds (sample std) of each run's mean over the "
    f"{'TEST' if split == 'test' else 'VALIDATION'} cases, final state, {mode} evaluation "
    f"(distances in {units}"
    + (f", of the {MINI_DOWNSAMPLE}x downsampled volumes" if scale == "mini" else "")
    + "). Published: the paper's test-split number (jaxseg/published.py).",
  ]
  if scale == "mini" or data == "synthetic":
    lines.append(
      "REDUCED SCALE: not the paper's protocol; compare methods with the supervised baseline at "
      "the same scale (column 'vs supervised'), not with the published numbers."
    )
  lines += [
    "",
    "| method | seeds | Dice % | Jaccard % | 95HD | ASD | vs supervised | published Dice % "
    "| difference | band (±) | inside | published checkpoint |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    inside = "-" if r["inside"] is None else ("yes" if r["inside"] else "no")
    band = "-" if not math.isfinite(r["band"]) else f"{r['band']:.2f} ({r['band_source']})"
    ckpt = r["published_checkpoint"] + ("" if r["verified"] else ", unverified number")
    vs = "-" if not math.isfinite(r["vs_supervised"]) else f"{r['vs_supervised']:+.2f}"
    lines.append(
      f"| {r['method']} | {r['n_seeds']} | {_pm(r['dice'], r['dice_std'])} "
      f"| {_pm(r['jaccard'], r['jaccard_std'])} | {_pm(r['hd95'], r['hd95_std'])} "
      f"| {_pm(r['asd'], r['asd_std'])} | {vs} | {r['published_dice']:.2f} "
      f"| {r['diff']:+.2f} | {band} | {inside} | {ckpt} |"
    )
  cases = list(dict.fromkeys(c for r in rows for c in r.get("case_dice", {})))
  if cases:
    lines += [
      "",
      "Per validation case: Dice % (mean over the seeds), so that one case's failure is not "
      "hidden in a mean over a few cases.",
      "",
      "| method | " + " | ".join(cases) + " |",
      "|---|" + "---|" * len(cases),
    ]
    for r in rows:
      d = r.get("case_dice", {})
      cells = [f"{d[c]:.2f}" if c in d else "-" for c in cases]
      lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
  if any(r["published_checkpoint"] == "best_on_test" for r in rows):
    lines += [
      "",
      "best_on_test: upstream selected its checkpoint on the test list; reproduce evaluates the "
      "final state on the validation split and never selects on the test split.",
    ]
  return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: pathlib.Path, title: str) -> None:
  """Bars: reproduced Dice (mean, std as error bar) per method; dots: the published Dice."""
  import matplotlib

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 2, 3.5))
  x = np.arange(len(rows))
  std = [r["dice_std"] if math.isfinite(r["dice_std"]) else 0.0 for r in rows]
  ax.bar(x, [r["dice"] for r in rows], yerr=std, capsize=4, color="tab:blue", label="reproduced")
  ax.scatter(x, [r["published_dice"] for r in rows], color="tab:red", zorder=3, label="published")
  ax.set_xticks(x, [r["method"] for r in rows], rotation=30, ha="right")
  ax.set_ylabel("Dice (%)")
  ax.set_ylim(0, 100)
  ax.set_title(title, fontsize=9)
  ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _strict(rows: list[dict]) -> list[dict]:
  """Strict JSON: a std or band that does not exist (one seed) is null, not NaN."""
  return [
    {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in r.items()}
    for r in rows
  ]


def render(runs: list[Run], table: str, scale: str, data: str, out_dir) -> list[dict]:
  """Writes results.md / results.json / results.png into `out_dir`: one table per (split, mode)
  of EVALS with results, the first of them the headline ("rows", the figure). Returns its rows."""
  out_dir = pathlib.Path(out_dir)
  tables = [(split, mode, collect(runs, split, mode)) for split, mode in EVALS]
  tables = [t for t in tables if t[2]] or [("val", "parity", [])]
  split, mode, rows = tables[0]
  text = "\n".join(markdown(r, table, scale, data, sp, mo) for sp, mo, r in tables)
  out_dir.mkdir(parents=True, exist_ok=True)
  io_utils.write_text(out_dir / "results.md", text)
  io_utils.write_json(
    out_dir / "results.json",
    {
      "table": table,
      "scale": scale,
      "split": split,
      "mode": mode,
      "rows": _strict(rows),
      "tables": [dict(split=sp, mode=mo, rows=_strict(r)) for sp, mo, r in tables],
    },
  )
  if rows:
    plot(rows, out_dir / "results.png", f"{table}, scale {scale}, data {data}, {split} {mode}")
  return rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m jaxseg.reproduce",
    description="Train every method of a published table and compare with the paper.",
  )
  parser.add_argument("--table", required=True, choices=sorted(published.TABLES))
  parser.add_argument("--methods", default="", help="comma-separated subset (method names)")
  parser.add_argument("--seeds", type=int, default=3, help="seeds per method (1337, 1338, ...)")
  parser.add_argument(
    "--first_seed",
    type=int,
    default=SEED0,
    help="the first seed (seeds first_seed, first_seed + 1, ...); two commands with different "
    "first seeds on one --root train different runs side by side",
  )
  parser.add_argument("--scale", default="full", choices=["full", "mini"])
  parser.add_argument("--root", required=True, help="runs go to ROOT/<table>/<scale>/<method>/")
  parser.add_argument("--data_root", default="", help="the dataset folder (config data.root)")
  parser.add_argument(
    "--data", default="real", choices=["real", "synthetic"], help="synthetic: smoke phantoms"
  )
  parser.add_argument(
    "--steps", type=int, default=0, help="override the step count (schedules scaled)"
  )
  parser.add_argument("--render_only", action="store_true", help="train nothing; render the table")
  args = parser.parse_args(argv)
  if args.seeds < 1:
    parser.error("--seeds must be >= 1")
  methods = [m for m in args.methods.split(",") if m]
  try:
    runs = plan(args.table, methods, args.seeds, args.scale, args.root, args.first_seed)
    configs = [
      build_config(r.entry, r.seed, args.scale, args.data, args.data_root, args.steps or None)
      for r in runs
    ]
    if not args.render_only:
      train_all(runs, configs)
      evaluate_all(runs)
  except errors.UserError as e:
    print(f"jaxseg: error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
    return 2
  out = pathlib.Path(args.root) / args.table / args.scale
  render(with_finished_seeds(runs), args.table, args.scale, args.data, out)
  print(f"wrote {out / 'results.md'}", flush=True)
  print((out / "results.md").read_text(), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
