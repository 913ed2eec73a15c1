"""Metric logging: metrics.jsonl (one JSON object per logged step) and TensorBoard events.

TensorBoard events are written with tensorboardX rather than clu.metric_writers: clu's writers
import TensorFlow (hundreds of MB, and no CUDA-12/TPU wheel pairing to worry about here), while
tensorboardX writes the same event files with only protobuf.
"""

import json
import math
import pathlib
import sys
import time

from tensorboardX import SummaryWriter

from jaxseg import io_utils


class MetricWriter:
  """Scalars to `<workdir>/metrics.jsonl` and `<workdir>/tensorboard/`."""

  def __init__(self, workdir, resume_step: int = 0, enable_tensorboard: bool = True):
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._truncate_after(resume_step)
    self._file = open(self.path, "a")
    self._tb = (
      SummaryWriter(str(pathlib.Path(workdir) / "tensorboard")) if enable_tensorboard else None
    )

  def _truncate_after(self, step: int) -> None:
    """On resume, drop records of steps the restored checkpoint has not reached (they will rerun)."""
    if not self.path.exists():
      return
    kept = []
    for line in self.path.read_text().splitlines():
      try:
        if json.loads(line).get("step", 0) <= step:
          kept.append(line)
      except json.JSONDecodeError:  # a line cut by a kill
        continue
    with io_utils.atomic_open(self.path) as f:
      f.write("".join(l + "\n" for l in kept))

  def write(self, step: int, scalars: dict) -> None:
    # No wall-clock time in the record: the same command twice writes the same bytes (TensorBoard
    # events keep the time).
    record = {"step": int(step)}
    record.update({k: float(v) for k, v in scalars.items()})
    try:
      self._file.write(json.dumps(record) + "\n")
      self._file.flush()
    except OSError as e:  # a line cut here is dropped on resume (_truncate_after)
      raise io_utils.storage_error(self.path, e) from e
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, float(v), int(step))

  def close(self) -> None:
    self._file.close()
    if self._tb is not None:
      self._tb.close()


class NullWriter:
  """MetricWriter's stand-in on the processes other than 0 of a multi-process run, which write
  nothing: process 0 writes the run's metrics."""

  def write(self, step: int, scalars: dict) -> None:
    del step, scalars

  def close(self) -> None:
    pass


class Progress:
  """One-line progress reports with throughput and ETA, to `stream` (None: silent). A value may be
  a list, the replicas' values of a runs axis (jaxseg/runs.py)."""

  def __init__(self, total_steps: int, start_step: int, stream=sys.stdout):
    self.total = total_steps
    self.start_step = start_step
    self.stream = stream
    self._t0 = None
    self._s0 = start_step

  def start_timing(self, step: int) -> None:
    """Time from here (after the first, compiling step) so the ETA is not skewed by compilation."""
    self._t0, self._s0 = time.time(), step

  def report(self, step: int, scalars: dict) -> None:
    if self.stream is None:
      return
    pct = 100.0 * step / max(self.total, 1)
    if self._t0 is not None and step > self._s0:
      rate = (time.time() - self._t0) / (step - self._s0)
      eta = f"{_fmt_time(rate * (self.total - step))} left, {rate:.3f} s/step"
    else:
      eta = "ETA after the first timed steps"
    values = " ".join(f"{k}={_fmt(v)}" for k, v in scalars.items())
    print(f"[step {step}/{self.total} {pct:5.1f}%] {eta} | {values}", file=self.stream, flush=True)


def _fmt(v) -> str:
  """'0.5123'; the replicas' values of a runs axis as '0.5123/0.4987'."""
  if isinstance(v, (list, tuple)):
    return "/".join(_fmt(x) for x in v)
  v = float(v)
  return f"{v:.4g}" if math.isfinite(v) else str(v)


def _fmt_time(seconds: float) -> str:
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
