r"""Tables, paired tests and figures from a sweep's runs.

  python launch/report.py --root runs/sweep [--eval eval/val] [--out runs/sweep/report]

Reads every run of `<root>/sweep.json` (launch/sweep.py), or every `config.json` below `root` when there
is no manifest, and each run's per-case results `<run>/<eval>/cases.csv` (+ `summary.json` for the mode).
A job of `runs` N > 1 (`sweep.py --as_runs`, jaxseg/runs.py) counts as N seeds, seed+k read from its
`run<k>/<eval>/`.
`--eval` picks which evaluation: `eval/val` (the training-time one, default), `eval/val/clean`,
`eval/test/clean_best_val`, ... (jaxseg/evaluation.py documents the layout). Writes to `--out`:

  * results.md / results.csv / results.tex: per method (the sweep's config name) and labeled count,
    mean ± std OVER SEEDS of each run's mean over cases (NaN cases ignored, as the summaries do); std is
    the sample std (ddof 1), empty with one seed. The evaluation mode and units are in every table.
  * wilcoxon.csv (and a table in results.md): a paired Wilcoxon signed-rank test
    (scipy.stats.wilcoxon, two-sided) of each method against the supervised baseline on the same labeled
    count, over per-case Dice. Cases are the paired units: each case's Dice is first AVERAGED OVER SEEDS
    (per method), then cases are paired by case id (cases with NaN Dice in either are dropped).
  * figures/dice_box_labeled<N>.png: a per-case Dice box plot per method (every seed's cases pooled);
    figures/cases_<method>_labeled<N>.png: the worst, median and best case by Dice of the method's
    lowest-seed run, three orthogonal slices through the reference's centre with the prediction (red) and
    reference (green) contours over the image. Needs the run's saved predictions
    (`<run>/<eval>/predictions/<case>.npz`: `--config.eval.save_predictions=True` in training, or
    `python -m jaxseg.evaluate --save_predictions`); a method without them gets no case figure and a note.
"""

import argparse
import csv
import dataclasses
import json
import math
import pathlib
import sys
import warnings

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

METRICS = ("dice", "jaccard", "hd95", "asd")
BASELINE_METHOD = "supervised"


@dataclasses.dataclass
class RunResult:
  name: str
  method: str
  labeled: int
  seed: int
  workdir: pathlib.Path  # the job's (config.json, data); a runs job's seed reads run<k>/<eval>
  eval_dir: pathlib.Path
  cases: dict  # case id -> {metric: float}
  summary: dict

  def mean(self, metric: str) -> float:
    return _nanmean([c[metric] for c in self.cases.values()])


def _nanmean(values) -> float:
  values = np.asarray(values, np.float64)
  if values.size == 0 or np.all(np.isnan(values)):
    return float("nan")
  return float(np.nanmean(values))


def _read_cases(path: pathlib.Path) -> dict:
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  missing = [m for m in METRICS if rows and m not in rows[0]]
  if missing:
    raise ValueError(f"{path}: columns {missing} missing")
  return {r["case"]: {m: float(r[m]) for m in METRICS} for r in rows}


def discover(root, eval_subdir: str = "eval/val", stream=sys.stderr) -> list[RunResult]:
  """Every run under `root` that has `<eval_subdir>/cases.csv`; runs without it are reported and skipped."""
  root = pathlib.Path(root).resolve()
  manifest = root / "sweep.json"
  entries = []
  # (name, method, labeled, first seed, workdir, runs); manifests and configs written before the
  # runs axis existed hold one run each.
  if manifest.is_file():
    for r in json.loads(manifest.read_text())["runs"]:
      entries.append(
        (
          r["name"],
          r["method"],
          int(r["labeled"]),
          int(r["seed"]),
          pathlib.Path(r["workdir"]),
          int(r.get("runs", 1)),
        )
      )
  else:
    for cfg_path in sorted(root.rglob("config.json")):
      cfg = json.loads(cfg_path.read_text())
      entries.append(
        (
          cfg["method"],
          cfg["method"],
          int(cfg["data"]["labeled"]),
          int(cfg["seed"]),
          cfg_path.parent,
          int(cfg.get("runs", 1)),
        )
      )
  seeds = [
    (name, method, labeled, seed + k, workdir, workdir / f"run{k}" if runs > 1 else workdir)
    for name, method, labeled, seed, workdir, runs in entries
    for k in range(runs)
  ]
  results = []
  for name, method, labeled, seed, workdir, result_dir in seeds:
    eval_dir = result_dir / eval_subdir
    if not (eval_dir / "cases.csv").is_file():
      print(
        f"[report] {result_dir}: no {eval_subdir}/cases.csv (unfinished run?), skipped",
        file=stream,
      )
      continue
    summary_path = eval_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    results.append(
      RunResult(
        name, method, labeled, seed, workdir, eval_dir, _read_cases(eval_dir / "cases.csv"), summary
      )
    )
  if not results:
    raise FileNotFoundError(
      f"{root}: no run with {eval_subdir}/cases.csv (run launch/sweep.py first, or "
      "pick another --eval)"
    )
  return results


def groups(results: list[RunResult]) -> dict:
  """(name, labeled) -> runs sorted by seed, in first-seen order of names and ascending labeled."""
  out = {}
  for r in results:
    out.setdefault((r.name, r.labeled), []).append(r)
  order = {n: i for i, n in enumerate(dict.fromkeys(r.name for r in results))}
  return {
    k: sorted(out[k], key=lambda r: r.seed) for k in sorted(out, key=lambda k: (k[1], order[k[0]]))
  }


def evaluation_mode(results: list[RunResult]) -> str:
  modes = sorted({r.summary.get("mode", "?") for r in results})
  if len(modes) != 1:
    raise ValueError(f"the runs' evaluations mix modes {modes}; pick one --eval folder")
  return modes[0]


def results_table(results: list[RunResult]) -> list[dict]:
  """One row per (method, labeled): mean and sample std over seeds of each run's case mean."""
  rows = []
  for (name, labeled), runs in groups(results).items():
    row = {
      "method": name,
      "labeled": labeled,
      "n_seeds": len(runs),
      "seeds": " ".join(str(r.seed) for r in runs),
      "n_cases": len(runs[0].cases),
    }
    for m in METRICS:
      per_seed = np.asarray([r.mean(m) for r in runs], np.float64)
      finite = per_seed[np.isfinite(per_seed)]
      row[f"{m}_mean"] = float(finite.mean()) if finite.size else float("nan")
      row[f"{m}_std"] = float(finite.std(ddof=1)) if finite.size > 1 else float("nan")
    rows.append(row)
  return rows


def seed_averaged_dice(runs: list[RunResult]) -> dict:
  """case id -> Dice averaged over the seeds (NaN seeds ignored; NaN when all are)."""
  ids = dict.fromkeys(c for r in runs for c in r.cases)
  return {c: _nanmean([r.cases[c]["dice"] for r in runs if c in r.cases]) for c in ids}


def wilcoxon_tests(results: list[RunResult], baseline: str | None = None) -> list[dict]:
  """Each method vs the baseline (default: the runs whose method is 'supervised') per labeled count."""
  from scipy import stats

  grouped = groups(results)
  if baseline is None:
    names = sorted({r.name for r in results if r.method == BASELINE_METHOD})
    if len(names) > 1:
      raise ValueError(f"several supervised configs {names}: choose one with --baseline")
    if not names:
      return []
    baseline = names[0]
  rows = []
  for (name, labeled), runs in grouped.items():
    if name == baseline or (baseline, labeled) not in grouped:
      continue
    a = seed_averaged_dice(runs)
    b = seed_averaged_dice(grouped[(baseline, labeled)])
    common = [c for c in a if c in b and math.isfinite(a[c]) and math.isfinite(b[c])]
    x = np.asarray([a[c] for c in common])
    y = np.asarray([b[c] for c in common])
    row = {
      "method": name,
      "baseline": baseline,
      "labeled": labeled,
      "n_cases": len(common),
      "mean_diff": float(np.mean(x - y)) if common else float("nan"),
      "median_diff": float(np.median(x - y)) if common else float("nan"),
      "statistic": float("nan"),
      "p_value": float("nan"),
      "note": "",
    }
    if not common:
      row["note"] = "no paired cases"
    elif np.all(x == y):
      row["note"] = "all differences are zero"
    else:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small-sample warnings: n_cases is in the table
        test = stats.wilcoxon(x, y, alternative="two-sided")
      row["statistic"], row["p_value"] = float(test.statistic), float(test.pvalue)
    rows.append(row)
  return rows


# ---------------------------------------------------------------------------------------------------------
# Table formats.
# ---------------------------------------------------------------------------------------------------------


def _pm(mean: float, std: float, scale: float, latex: bool = False) -> str:
  if not math.isfinite(mean):
    return "NaN"
  text = f"{scale * mean:.2f}"
  if math.isfinite(std):
    text += (r" $\pm$ " if latex else " ± ") + f"{scale * std:.2f}"
  return text


def _columns(mode: str, unit: str) -> list[tuple[str, str, float]]:
  asd = "ASSD" if mode == "clean" else "ASD"
  return [
    ("dice", "Dice (%)", 100.0),
    ("jaccard", "Jaccard (%)", 100.0),
    ("hd95", f"95HD ({unit})", 1.0),
    ("asd", f"{asd} ({unit})", 1.0),
  ]


def markdown_table(rows: list[dict], mode: str, unit: str = "vox") -> str:
  cols = _columns(mode, unit)
  lines = [
    "| method | labeled | seeds | mode | " + " | ".join(c[1] for c in cols) + " |",
    "|---|---|---|---|" + "---|" * len(cols),
  ]
  for r in rows:
    lines.append(
      f"| {r['method']} | {r['labeled']} | {r['n_seeds']} | {mode} | "
      + " | ".join(_pm(r[f"{k}_mean"], r[f"{k}_std"], s) for k, _, s in cols)
      + " |"
    )
  return "\n".join(lines)


def wilcoxon_markdown(rows: list[dict]) -> str:
  lines = [
    "| method | vs | labeled | paired cases | mean ΔDice (%) | median ΔDice (%) | W | p |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    p = f"{r['p_value']:.4g}" if math.isfinite(r["p_value"]) else (r["note"] or "NaN")
    w = f"{r['statistic']:.1f}" if math.isfinite(r["statistic"]) else "-"
    lines.append(
      f"| {r['method']} | {r['baseline']} | {r['labeled']} | {r['n_cases']} | "
      f"{100 * r['mean_diff']:.2f} | {100 * r['median_diff']:.2f} | {w} | {p} |"
    )
  return "\n".join(lines)


def latex_table(rows: list[dict], mode: str, caption: str, unit: str = "vox") -> str:
  cols = _columns(mode, unit)
  esc = lambda s: str(s).replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$")  # noqa: E731
  out = [
    r"\begin{table}[t]",
    r"\centering",
    rf"\caption{{{esc(caption)}}}",
    r"\begin{tabular}{ll" + "c" * len(cols) + "}",
    r"\toprule",
    "Method & Labeled & " + " & ".join(esc(c[1]) for c in cols) + r" \\",
    r"\midrule",
  ]
  for r in rows:
    out.append(
      f"{esc(r['method'])} & {r['labeled']} & "
      + " & ".join(_pm(r[f"{k}_mean"], r[f"{k}_std"], s, latex=True) for k, _, s in cols)
      + r" \\"
    )
  out += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
  return "\n".join(out)


WILCOXON_FIELDS = [
  "method",
  "baseline",
  "labeled",
  "n_cases",
  "mean_diff",
  "median_diff",
  "statistic",
  "p_value",
  "note",
]


def _write_csv(path: pathlib.Path, rows: list[dict], fields: list[str] | None = None) -> None:
  from jaxseg import io_utils

  io_utils.write_csv(path, rows, fields or (list(rows[0]) if rows else []))


# ---------------------------------------------------------------------------------------------------------
# Figures (matplotlib, Agg backend: no display needed).
# ---------------------------------------------------------------------------------------------------------


def _pyplot():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def dice_box_plot(results: list[RunResult], labeled: int, path: pathlib.Path, mode: str) -> None:
  plt = _pyplot()
  grouped = {name: runs for (name, n), runs in groups(results).items() if n == labeled}
  data = [
    [c["dice"] for r in runs for c in r.cases.values() if math.isfinite(c["dice"])]
    for runs in grouped.values()
  ]
  fig, ax = plt.subplots(figsize=(max(4.0, 1.6 + 1.4 * len(grouped)), 4.0), dpi=100)
  ax.boxplot(data, showmeans=True)
  ax.set_xticks(range(1, len(grouped) + 1), list(grouped))
  rng = np.random.default_rng(0)
  for i, values in enumerate(data, start=1):
    ax.scatter(i + rng.uniform(-0.12, 0.12, len(values)), values, s=10, alpha=0.6, color="tab:blue")
  ax.set_ylabel("Dice per case")
  ax.set_title(f"labeled={labeled}, {mode} mode\n(cases of all seeds)", fontsize=10)
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path)
  plt.close(fig)


def _load_case(run: RunResult, case: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(image [D, H, W], label [D, H, W], prediction [D, H, W]) of one case of a run."""
  import ml_collections

  from jaxseg.data import build_source
  from jaxseg.data import builder

  pred_path = run.eval_dir / "predictions" / f"{case}.npz"
  if not pred_path.is_file():
    raise FileNotFoundError(pred_path)
  with np.load(pred_path) as f:
    pred = f["pred"]
  config = ml_collections.ConfigDict(json.loads((run.workdir / "config.json").read_text()))
  root = builder.resolve_root(config, run.workdir)
  example = build_source(
    config.data.name, root, [case], config.data.num_classes, data_config=config.data
  )[0]
  return np.asarray(example["image"], np.float32), np.asarray(example["label"]), pred


def _centre(mask: np.ndarray, shape) -> tuple[int, ...]:
  if mask.any():
    return tuple(int(round(c)) for c in np.argwhere(mask).mean(axis=0))
  return tuple(s // 2 for s in shape)


def case_figure(run: RunResult, path: pathlib.Path, mode: str) -> list[str]:
  """Worst, median and best case (by Dice) of `run`: three orthogonal slices each. Returns the case ids."""
  plt = _pyplot()
  ranked = sorted(
    (c for c in run.cases if math.isfinite(run.cases[c]["dice"])),
    key=lambda c: run.cases[c]["dice"],
  )
  if not ranked:
    raise ValueError(f"{run.eval_dir}: no case with a finite Dice")
  picks = [("worst", ranked[0]), ("median", ranked[(len(ranked) - 1) // 2]), ("best", ranked[-1])]
  fig, axes = plt.subplots(3, 3, figsize=(9.0, 9.0), dpi=100)
  for row, (which, case) in enumerate(picks):
    image, label, pred = _load_case(run, case)
    centre = _centre(label > 0, label.shape)
    for col, (axis, plane) in enumerate(
      ((2, "axial (z)"), (1, "coronal (y)"), (0, "sagittal (x)"))
    ):
      take = lambda v: np.take(v, centre[axis], axis=axis).T  # noqa: E731
      ax = axes[row, col]
      ax.imshow(take(image), cmap="gray", origin="lower")
      for c in range(1, int(max(label.max(), pred.max(), 1)) + 1):
        if (take(label) == c).any():
          ax.contour(take(label) == c, levels=[0.5], colors="lime", linewidths=1.2)
        if (take(pred) == c).any():
          ax.contour(take(pred) == c, levels=[0.5], colors="red", linewidths=1.0, linestyles="--")
      ax.set_xticks([])
      ax.set_yticks([])
      if col == 0:
        ax.set_ylabel(f"{which}: {case}\nDice {run.cases[case]['dice']:.3f}")
      ax.set_title(f"{plane} = {centre[axis]}", fontsize=9)
  fig.suptitle(
    f"{run.name}, labeled={run.labeled}, seed {run.seed} ({mode} mode): "
    "reference green, prediction red"
  )
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path)
  plt.close(fig)
  return [c for _, c in picks]


# ---------------------------------------------------------------------------------------------------------


def make_report(
  root,
  out_dir=None,
  eval_subdir: str = "eval/val",
  baseline: str | None = None,
  figures: bool = True,
  stream=sys.stdout,
) -> dict:
  """Writes every output (module docstring) to `out_dir` (default <root>/report). Returns their paths."""
  root = pathlib.Path(root).resolve()
  out_dir = pathlib.Path(out_dir).resolve() if out_dir else root / "report"
  results = discover(root, eval_subdir)
  mode = evaluation_mode(results)
  unit = "mm" if all(r.summary.get("units") == "mm" for r in results) else "vox"
  table = results_table(results)
  tests = wilcoxon_tests(results, baseline)
  checkpoints = sorted({str(r.summary.get("checkpoint", "final")) for r in results})
  splits = sorted({str(r.summary.get("split", "?")) for r in results})
  caption = (
    f"{mode} mode, split {'/'.join(splits)}, checkpoint {'/'.join(checkpoints)}: mean ± std over "
    "seeds of the per-run case means"
  )
  out = {
    "results_md": out_dir / "results.md",
    "results_csv": out_dir / "results.csv",
    "results_tex": out_dir / "results.tex",
    "wilcoxon_csv": out_dir / "wilcoxon.csv",
    "figures": [],
  }
  notes = []
  if figures:
    for labeled in sorted({r.labeled for r in results}):
      path = out_dir / "figures" / f"dice_box_labeled{labeled}.png"
      dice_box_plot(results, labeled, path, mode)
      out["figures"].append(path)
    for (name, labeled), runs in groups(results).items():
      path = out_dir / "figures" / f"cases_{name}_labeled{labeled}.png"
      try:
        cases = case_figure(runs[0], path, mode)
      except FileNotFoundError as e:
        notes.append(
          f"no case figure for {name} labeled={labeled}: prediction {e} missing (evaluate "
          "with --save_predictions)"
        )
        continue
      out["figures"].append(path)
      notes.append(f"{path.name}: worst/median/best = {', '.join(cases)} (seed {runs[0].seed})")
  md = [
    f"# Results: {root}",
    "",
    f"Evaluation `{eval_subdir}`: **{mode} mode**, split {', '.join(splits)}, checkpoint "
    f"{', '.join(checkpoints)}. Mean ± sample std over seeds of each run's mean over cases "
    "(NaN cases ignored).",
    "",
    markdown_table(table, mode, unit),
    "",
  ]
  if tests:
    md += [
      f"Paired Wilcoxon signed-rank test (two-sided) against `{tests[0]['baseline']}` on the same "
      "labeled count, over per-case Dice averaged over seeds, cases paired by id.",
      "",
      wilcoxon_markdown(tests),
      "",
    ]
  if notes:
    md += ["Figures:", ""] + [f"- {n}" for n in notes] + [""]
  from jaxseg import io_utils

  with io_utils.atomic_open(out["results_md"]) as f:
    f.write("\n".join(md))
  _write_csv(out["results_csv"], [dict(r, mode=mode, units=unit) for r in table])
  _write_csv(out["wilcoxon_csv"], tests, WILCOXON_FIELDS)
  with io_utils.atomic_open(out["results_tex"]) as f:
    f.write(latex_table(table, mode, caption, unit))
  if stream is not None:
    print("\n".join(md), file=stream)
    print(f"[report] wrote {out_dir}", file=stream, flush=True)
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="launch/report.py", description=__doc__.split("\n")[0])
  parser.add_argument("--root", required=True, help="sweep folder (launch/sweep.py --root)")
  parser.add_argument(
    "--eval",
    default="eval/val",
    help="which evaluation of each run: eval/val (training-time), eval/val/clean, ...",
  )
  parser.add_argument("--out", default=None, help="output folder (default ROOT/report)")
  parser.add_argument(
    "--baseline",
    default=None,
    help="config name of the baseline (default: the runs of method 'supervised')",
  )
  parser.add_argument("--no_figures", action="store_true")
  args = parser.parse_args(argv)
  try:
    make_report(args.root, args.out, args.eval, args.baseline, figures=not args.no_figures)
  except (FileNotFoundError, ValueError) as e:
    print(f"{parser.prog}: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
