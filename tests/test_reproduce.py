"""Tests for jaxseg.reproduce: the reduced-scale shrink, the test-split refusal, and one table on
the synthetic phantoms (2 methods x 2 seeds, 2 steps) whose rendered numbers are the runs'
summaries."""

import csv
import dataclasses
import io
import json
import math

import numpy as np
import pytest

from jaxseg import config_lib
from jaxseg import errors
from jaxseg import published
from jaxseg import reproduce

METHODS = ("supervised", "mean_teacher")


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("reproduce")
  argv = ["--table", "la16", "--methods", ",".join(METHODS), "--seeds", "2", "--scale", "mini"]
  argv += ["--data", "synthetic", "--steps", "2", "--root", str(root)]
  assert reproduce.main(argv) == 0
  return root, argv


def test_table_numbers_are_the_run_summaries(table_run):
  root, _ = table_run
  out = root / "la16" / "mini"
  rows = {r["method"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
  assert sorted(rows) == sorted(METHODS)
  md = (out / "results.md").read_text()
  assert "REDUCED SCALE" in md and (out / "results.png").stat().st_size > 0
  for method in METHODS:
    runs = [out / method / f"seed{s}" for s in (1337, 1338)]
    summaries = [json.loads((r / "eval" / "val" / "summary.json").read_text()) for r in runs]
    # Each run trained the schedule-scaled smoke config: 2 steps, its own seed.
    for run, seed in zip(runs, (1337, 1338)):
      config = json.loads((run / "config.json").read_text())
      assert (config["total_steps"], config["seed"], config["method"]) == (2, seed, method)
    dice = [100 * s["dice"] for s in summaries]
    row = rows[method]
    assert row["n_seeds"] == 2 and row["seeds"] == [1337, 1338]
    np.testing.assert_allclose(row["dice"], np.mean(dice), rtol=1e-12)
    np.testing.assert_allclose(row["dice_std"], np.std(dice, ddof=1), rtol=1e-12)
    hd95 = [s["hd95"] for s in summaries]
    if all(math.isfinite(h) for h in hd95):
      np.testing.assert_allclose(row["hd95"], np.mean(hd95), rtol=1e-12)
    published_dice = published.lookup(method, "la", 16).dice
    assert row["published_dice"] == published_dice
    np.testing.assert_allclose(row["diff"], np.mean(dice) - published_dice, rtol=1e-12)
    # No band in the docs for these two: the seeds' own std, and the verdict follows from it.
    assert row["band_source"] == "the seeds' own std"
    assert row["inside"] == (abs(row["diff"]) <= row["dice_std"])
    # Per case: each validation case's Dice averaged over the two seeds' cases.csv.
    per_seed = [
      {
        r["case"]: 100 * float(r["dice"])
        for r in csv.DictReader((run / "eval" / "val" / "cases.csv").open())
      }
      for run in runs
    ]
    assert list(row["case_dice"]) == list(per_seed[0]) and len(per_seed[0]) >= 1
    for case, value in row["case_dice"].items():
      np.testing.assert_allclose(value, (per_seed[0][case] + per_seed[1][case]) / 2, rtol=1e-12)
    case_line = [l for l in md.splitlines() if l.startswith(f"| {method} |")][1]
    assert case_line.count("|") == len(per_seed[0]) + 2
    assert f"| {row['case_dice'][next(iter(per_seed[0]))]:.2f} |" in case_line
    # The Markdown row shows the same numbers.
    line = next(l for l in md.splitlines() if l.startswith(f"| {method} |"))
    assert f"{np.mean(dice):.2f} ± {np.std(dice, ddof=1):.2f}" in line
    assert f"{np.mean(dice) - published_dice:+.2f}" in line
  np.testing.assert_allclose(
    rows["mean_teacher"]["vs_supervised"], rows["mean_teacher"]["dice"] - rows["supervised"]["dice"]
  )
  # Each run's final state was also evaluated in clean mode (the phantoms have no test list, so no
  # test split): a second table, of those summaries, after the parity headline.
  results = json.loads((out / "results.json").read_text())
  assert (results["split"], results["mode"]) == ("val", "parity")
  assert [(t["split"], t["mode"]) for t in results["tables"]] == [
    ("val", "parity"),
    ("val", "clean"),
  ]
  clean = {r["method"]: r for r in results["tables"][1]["rows"]}
  for method in METHODS:
    runs = [out / method / f"seed{s}" for s in (1337, 1338)]
    dice = [
      100 * json.loads((r / "eval" / "val" / "clean" / "summary.json").read_text())["dice"]
      for r in runs
    ]
    np.testing.assert_allclose(clean[method]["dice"], np.mean(dice), rtol=1e-12)
    assert clean[method]["mode"] == "clean"
  assert md.index("VALIDATION split, parity mode") < md.index("VALIDATION split, clean mode")


def test_finished_runs_are_skipped(table_run, capsys):
  root, argv = table_run
  assert reproduce.main(argv) == 0
  assert capsys.readouterr().out.count(": done (") == 4
  # The second seed alone (what a second command on the same root runs): its two runs, done.
  one = argv[: argv.index("--seeds")] + ["--seeds", "1", "--first_seed", "1338"]
  one += argv[argv.index("--seeds") + 2 :]
  assert reproduce.main(one) == 0
  out = capsys.readouterr().out
  assert out.count(": done (") == 2 and "seed1338" in out and "seed1337" not in out
  # ... and the table it renders still holds both seeds of each method.
  rows = json.loads((root / "la16" / "mini" / "results.json").read_text())["rows"]
  assert [r["seeds"] for r in rows] == [[1337, 1338]] * len(METHODS)


def test_mini_shrinks_and_keeps_the_ratios():
  c = config_lib.load_config_module(reproduce.REPO / "configs/la_uamt.py").get_config()
  reproduce.mini(c, steps=600)
  assert c.total_steps == 600
  assert c.optimizer.lr_step_every == 250  # 2500 of 6000
  assert c.uamt.iters_per_epoch == 15  # the consistency ramp still spans the run: 40 x 15 = 600
  assert (c.batch_size, c.labeled_batch_size, c.data.labeled) == (4, 2, 16)
  assert c.data.downsample == 4 and c.data.spacing == (2.5, 2.5, 2.5)
  assert tuple(c.data.patch_size) == reproduce.MINI_PATCH
  assert c.model.kwargs.n_filters == reproduce.MINI_FILTERS
  assert (c.eval.stride_xy, c.eval.stride_z, c.eval.every_steps) == (4, 1, 0)
  bcp = config_lib.load_config_module(reproduce.REPO / "configs/la_bcp.py").get_config()
  reproduce.mini(bcp, steps=1700)
  assert (bcp.bcp.pretrain_steps, bcp.bcp.mask_bounds) == (200, "shape")
  acdc = config_lib.load_config_module(reproduce.REPO / "configs/acdc_bcp.py").get_config()
  with pytest.raises(errors.ConfigError, match="calibrated on LA only"):
    reproduce.mini(acdc)


def test_refuses_a_config_that_evaluates_on_test(tmp_path):
  path = tmp_path / "la_test_split.py"
  path.write_text(
    "from jaxseg import config_lib\n\n\n"
    "def get_config(arg=None):\n"
    "  c = config_lib.load_config_module("
    f"'{reproduce.REPO / 'configs/la_vnet.py'}').get_config(arg)\n"
    "  c.eval.split = 'test'\n"
    "  return c\n"
  )
  entry = dataclasses.replace(published.lookup("supervised", "la", 16), config=str(path))
  with pytest.raises(errors.ConfigError, match="validation split only"):
    reproduce.build_config(entry, 1337, "full", "real", data_root=str(tmp_path))


def test_unknown_table_and_method():
  with pytest.raises(errors.ConfigError, match="its methods"):
    reproduce.plan("la16", ["nope"], 1, "mini", "/tmp/x")
  with pytest.raises(errors.ConfigError, match="unknown table"):
    reproduce.plan("la3", None, 1, "mini", "/tmp/x")


def test_evaluate_all_adds_the_test_split_only_where_a_test_list_exists(tmp_path, monkeypatch):
  """Which (split, mode) evaluations a finished run gets: the test split's two only when its data
  root has the test list, nothing already on disk again, nothing for an unfinished run."""
  from jaxseg import evaluation

  entry = published.table("la16")[0]
  runs = [reproduce.Run(entry, s, tmp_path / f"seed{s}") for s in (1337, 1338, 1339)]
  for run in runs[:2]:  # 1339 is unfinished
    reproduce.summary_path(run).parent.mkdir(parents=True)
    reproduce.summary_path(run).write_text("{}")
  done_clean = reproduce.summary_path(runs[1], "val", "clean")
  done_clean.parent.mkdir(parents=True)
  done_clean.write_text("{}")
  test_list = tmp_path / "test.list"
  calls = []
  monkeypatch.setattr(evaluation, "load_run_config", lambda workdir: None)
  monkeypatch.setattr(evaluation, "test_list_path", lambda config, workdir: test_list)
  monkeypatch.setattr(
    evaluation,
    "evaluate_workdir",
    lambda workdir, split, mode, stream: calls.append((workdir.name, split, mode)),
  )
  reproduce.evaluate_all(runs, stream=io.StringIO())
  assert calls == [("seed1337", "val", "clean")]  # no test list; seed1338 has its clean one
  calls.clear()
  test_list.write_text("case\n")
  reproduce.evaluate_all(runs, stream=io.StringIO())
  assert calls == [
    ("seed1337", "test", "parity"),
    ("seed1337", "test", "clean"),
    ("seed1337", "val", "clean"),
    ("seed1338", "test", "parity"),
    ("seed1338", "test", "clean"),
  ]
