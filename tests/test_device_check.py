"""launch/device_check.sh --dry_run: every stage of the accelerator check, on the CPU, tiny."""

import json
import os
import pathlib
import subprocess

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_device_check_dry_run(tmp_path):
  benchmarks = REPO / "docs" / "benchmarks.md"
  before = benchmarks.read_text() if benchmarks.exists() else None
  env = {k: v for k, v in os.environ.items() if k not in ("OUT", "JAXSEG_DATA_DIR")}
  proc = subprocess.run(
    ["bash", "launch/device_check.sh", "--dry_run", "--out_dir", str(tmp_path)],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=1500,
    env=env,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  rows = json.loads((tmp_path / "suite" / "suite.json").read_text())["rows"]
  assert [r["compute_dtype"] for r in rows] == ["float32", "bfloat16"]
  for row in rows:
    assert "error" not in row, row
    assert row["step_ms_median"] > 0 and row["flops_per_step"] > 0
    assert np.isfinite(row["final_loss"])
  # The same steps in bf16 do the same work and, from the same weights and batch, reach nearly the
  # same loss (bf16 keeps 8 mantissa bits; losses and BN statistics are float32).
  assert rows[0]["conv_matmul_flops_per_step"] == rows[1]["conv_matmul_flops_per_step"]
  np.testing.assert_allclose(rows[1]["final_loss"], rows[0]["final_loss"], rtol=0.05)
  # Rematerialisation recomputes the same forward: the same loss, off and on.
  plain, remat, ratio = json.loads((tmp_path / "remat.json").read_text())
  assert (plain["remat"], remat["remat"]) == (False, True)
  np.testing.assert_allclose(remat["final_loss"], plain["final_loss"], rtol=1e-4)
  assert ratio["step_s_median"] == remat["step_s_median"] / plain["step_s_median"]
  # The training stage is the reproduce command's UA-MT run, its table beside the published number.
  run = tmp_path / "reproduce" / "la16" / "full" / "uamt" / "seed1337"
  summary = json.loads((run / "eval" / "val" / "summary.json").read_text())
  assert 0.0 <= summary["dice"] <= 1.0
  results = json.loads((tmp_path / "reproduce" / "la16" / "full" / "results.json").read_text())
  (row,) = [r for r in results["rows"] if r["method"] == "uamt"]
  np.testing.assert_allclose(row["dice"], 100 * summary["dice"], rtol=1e-6)
  text = (tmp_path / "benchmarks_rows.md").read_text()
  assert "| configs/la_uamt.py | 2/2 | done |" in text
  assert f"| {100 * summary['dice']:.2f} |" in text
  assert "| remat / plain |" in text and "results.md" in text
  assert text.count("| la_uamt.py:smoke=1,labeled=4,seed=0 | recipe |") == 2
  # A dry run leaves the repository's benchmarks page alone.
  assert (benchmarks.read_text() if benchmarks.exists() else None) == before
