"""The benchmark runs a config end to end and reports sane JSON (no timing is asserted)."""
import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_bench_writes_json(tmp_path):
  out = tmp_path / "bench.json"
  proc = subprocess.run(
      [sys.executable, "-m", "jaxseg.bench", "--config", "configs/smoke.py:method=supervised",
       "--steps", "1", "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert result["method"] == "supervised" and result["steps_timed"] == 1
  assert result["patch_size"] == [16, 16, 16] and result["batch_size"] == 4
  assert result["step_s_mean"] > 0 and result["first_step_s"] > 0 and result["predict_s"] > 0
  assert result["final_loss"] == result["final_loss"]  # finite, not NaN
