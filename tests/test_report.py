"""launch/report.py: a real two-method, two-seed sweep rendered into tables and figures, plus the
statistics on hand-made results."""

import csv
import json
import math
import pathlib

import numpy as np
import pytest
from scipy import stats

from launch import report
from launch import sweep


@pytest.fixture(scope="module")
def sweep_root(tmp_path_factory):
  root = tmp_path_factory.mktemp("sweep")
  args = [
    "--configs",
    "configs/la_vnet.py:smoke=1,labeled=4,configs/la_mt.py:smoke=1,labeled=4",
    "--labeled",
    "4",
    "--seeds",
    "0,1",
    "--root",
    str(root),
    "--runner",
    "inprocess",
    "--set",
    "total_steps=2",
    "--set",
    f"data.root={root / 'data'}",
    "--set",
    "eval.save_predictions=True",
  ]
  assert sweep.main(args) == 0
  return root, args


def _case_means(workdir: pathlib.Path, metric: str) -> dict:
  with open(workdir / "eval" / "val" / "cases.csv") as f:
    return {r["case"]: float(r[metric]) for r in csv.DictReader(f)}


def test_sweep_report_numbers_match_the_case_csvs(sweep_root, tmp_path, capsys):
  root, args = sweep_root
  manifest = json.loads((root / "sweep.json").read_text())["runs"]
  assert len(manifest) == 4
  assert sweep.main(args) == 0  # a finished sweep is skipped, run by run
  assert capsys.readouterr().out.count("), skipped\n") == 4

  out = report.make_report(root, tmp_path / "report", stream=None)
  rows = list(csv.DictReader(open(out["results_csv"])))
  assert [(r["method"], r["labeled"], r["n_seeds"]) for r in rows] == [
    ("supervised", "4", "2"),
    ("mean_teacher", "4", "2"),
  ]
  md = out["results_md"].read_text()
  tex = out["results_tex"].read_text()
  assert "parity mode" in md and r"\toprule" in tex and "parity" in tex
  for row in rows:
    runs = [pathlib.Path(r["workdir"]) for r in manifest if r["name"] == row["method"]]
    for metric, scale in (("dice", 100), ("jaccard", 100), ("hd95", 1), ("asd", 1)):
      per_seed = [np.mean(list(_case_means(w, metric).values())) for w in runs]
      np.testing.assert_allclose(
        float(row[f"{metric}_mean"]), np.mean(per_seed), rtol=1e-9, atol=1e-12
      )
      np.testing.assert_allclose(
        float(row[f"{metric}_std"]), np.std(per_seed, ddof=1), rtol=1e-9, atol=1e-12
      )
      cell = f"{scale * np.mean(per_seed):.2f} ± {scale * np.std(per_seed, ddof=1):.2f}"
      assert cell in md and cell.replace(" ± ", r" $\pm$ ") in tex, (metric, cell)

  tests = list(csv.DictReader(open(out["wilcoxon_csv"])))
  assert [(t["method"], t["baseline"], t["n_cases"]) for t in tests] == [
    ("mean_teacher", "supervised", "2")
  ]
  sup = [
    _case_means(pathlib.Path(r["workdir"]), "dice") for r in manifest if r["name"] == "supervised"
  ]
  mt = [
    _case_means(pathlib.Path(r["workdir"]), "dice") for r in manifest if r["name"] == "mean_teacher"
  ]
  diffs = [np.mean([m[c] for m in mt]) - np.mean([s[c] for s in sup]) for c in sup[0]]
  np.testing.assert_allclose(float(tests[0]["mean_diff"]), np.mean(diffs), atol=1e-12)

  names = sorted(p.name for p in out["figures"])
  assert names == [
    "cases_mean_teacher_labeled4.png",
    "cases_supervised_labeled4.png",
    "dice_box_labeled4.png",
  ]
  import matplotlib.image

  for path in out["figures"]:
    image = matplotlib.image.imread(path)
    assert image.shape[0] >= 300 and image.shape[1] >= 300, path
    assert (
      image[..., :3].std() > 0.05 and len(np.unique(image[..., :3].reshape(-1, 3), axis=0)) > 50
    ), path


def _fake(name, method, seed, dice_by_case):
  cases = {
    c: {"dice": d, "jaccard": d / (2 - d), "hd95": 1.0, "asd": 0.5} for c, d in dice_by_case.items()
  }
  return report.RunResult(
    name,
    method,
    8,
    seed,
    pathlib.Path("."),
    pathlib.Path("."),
    cases,
    {"mode": "clean", "units": "mm"},
  )


def test_statistics_on_hand_made_results():
  base = {f"c{i}": 0.70 + 0.01 * i for i in range(6)}
  better = {c: d + 0.02 + 0.001 * i for i, (c, d) in enumerate(base.items())}
  results = [
    _fake("sup", "supervised", 0, base),
    _fake("sup", "supervised", 1, base),
    _fake("mt", "mean_teacher", 0, better),
    _fake("mt", "mean_teacher", 1, {**better, "c5": math.nan}),
  ]
  table = {r["method"]: r for r in report.results_table(results)}
  seed0 = np.mean(list(better.values()))
  seed1 = np.mean([v for c, v in better.items() if c != "c5"])  # NaN cases are ignored
  np.testing.assert_allclose(table["mt"]["dice_mean"], (seed0 + seed1) / 2)
  np.testing.assert_allclose(table["mt"]["dice_std"], np.std([seed0, seed1], ddof=1))
  assert table["sup"]["dice_std"] == 0.0
  (test,) = report.wilcoxon_tests(results)
  # Six positive paired differences: the exact two-sided p-value is 2 / 2**6.
  assert test["n_cases"] == 6 and test["baseline"] == "sup"
  np.testing.assert_allclose(test["p_value"], 2 / 64)
  x = [np.nanmean([better[c], better[c] if c != "c5" else math.nan]) for c in base]
  np.testing.assert_allclose(test["p_value"], stats.wilcoxon(x, list(base.values())).pvalue)
  md = report.markdown_table(report.results_table(results), "clean", "mm")
  assert "95HD (mm)" in md and "ASSD (mm)" in md and "| clean |" in md
