"""Metric writer (JSONL + TensorBoard, truncation on resume) and the progress line."""

import io
import json

from jaxseg import writers


def test_jsonl_records_and_resume_truncation(tmp_path):
  w = writers.MetricWriter(tmp_path)
  for step in (1, 2, 3, 4):
    w.write(step, {"loss": 1.0 / step})
  w.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 5, "loss"')  # a line cut by a kill
  # Resuming from a checkpoint at step 2 drops the records the rerun will write again.
  w = writers.MetricWriter(tmp_path, resume_step=2)
  w.write(3, {"loss": 0.25})
  w.close()
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [1, 2, 3]
  assert records[2]["loss"] == 0.25
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_progress_line_has_eta():
  out = io.StringIO()
  p = writers.Progress(total_steps=100, start_step=0, stream=out)
  p.report(1, {"loss": 0.5})
  p.start_timing(1)
  p._t0 -= 10.0  # pretend 10 s passed for 10 steps: 1 s/step, 90 steps left
  p.report(11, {"loss": 0.25})
  lines = out.getvalue().splitlines()
  assert "[step 11/100" in lines[1]
  assert "1m29s left" in lines[1] or "1m30s left" in lines[1]
  assert "loss=0.25" in lines[1]
