"""Evaluate a state on a split: per-case CSV, summary JSON, and a printed table.

Parity mode (what published numbers mean; upstream yulequan/UA-MT code/test_util.py
`test_all_case`): stride sliding window with count-averaged softmax, argmax, medpy dc / jc /
hd95 / asd in voxels, an empty prediction scored (0, 0, 0, 0).
"""
import pathlib
import sys
import time

import jax
import numpy as np

from jaxseg import inference
from jaxseg import io_utils
from jaxseg import metrics

METRIC_NAMES = ("dice", "jaccard", "hd95", "asd")


def evaluate(method, state, source, config, out_dir=None, split: str = "val",
             checkpoint_step: int | None = None, max_cases: int = 0, stream=sys.stdout) -> dict:
  """Evaluate `method.predict` under `state` on every case of `source` (a random-access source).

  Returns the summary dict; when `out_dir` is given writes `cases.csv` and `summary.json` there.
  """
  mode = config.eval.mode
  if mode != "parity":
    raise ValueError(f"eval.mode={mode!r}: only 'parity' is implemented")
  # One device is plenty for inference; this also frees it from the training mesh's shardings.
  state = jax.device_put(jax.device_get(state), jax.local_devices()[0])
  predict = jax.jit(method.predict)
  num_classes = config.data.num_classes
  n = len(source) if not max_cases else min(max_cases, len(source))
  rows, t0 = [], time.time()
  for i in range(n):
    example = source[i]
    image = np.asarray(example["image"], np.float32)
    label_map, _ = inference.sliding_window_parity(
        lambda w: predict(state, w), image, tuple(config.data.patch_size), config.eval.stride_xy,
        config.eval.stride_z, num_classes, batch_size=config.eval.batch_size)
    row = {"case": example["case"]}
    row.update(_case_metrics(label_map, np.asarray(example["label"]), num_classes))
    rows.append(row)
    if stream is not None:
      elapsed = time.time() - t0
      eta = elapsed / (i + 1) * (n - i - 1)
      print(f"  eval {split} [{i + 1}/{n}] {row['case']}: dice={row['dice']:.4f} "
            f"({elapsed:.0f}s, ~{eta:.0f}s left)", file=stream, flush=True)
  summary = summarize(rows, mode=mode, split=split, checkpoint_step=checkpoint_step,
                      method=config.method)
  if out_dir is not None:
    out_dir = pathlib.Path(out_dir)
    fields = ["case"] + [k for k in rows[0] if k != "case"] if rows else ["case"]
    io_utils.write_csv(out_dir / "cases.csv", rows, fields)
    io_utils.write_json(out_dir / "summary.json", summary)
  if stream is not None:
    print(format_table(summary), file=stream, flush=True)
  return summary


def _case_metrics(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> dict:
  """Binary: the foreground's metrics. Multi-class: per class c >= 1 and their mean."""
  if num_classes == 2:
    return dict(zip(METRIC_NAMES, metrics.parity_case_metrics(pred == 1, gt == 1).tolist()))
  out, per = {}, []
  for c in range(1, num_classes):
    m = metrics.parity_case_metrics(pred == c, gt == c).tolist()
    per.append(m)
    out.update({f"{name}_class{c}": v for name, v in zip(METRIC_NAMES, m)})
  out.update(dict(zip(METRIC_NAMES, np.mean(per, axis=0).tolist())))
  return out


def summarize(rows: list[dict], **info) -> dict:
  """Mean and std (over cases) of every numeric column, plus `n_cases` and `info`."""
  summary = dict(info)
  summary["n_cases"] = len(rows)
  keys = [k for k in (rows[0] if rows else {}) if k != "case"]
  for k in keys:
    values = np.asarray([r[k] for r in rows], np.float64)
    summary[k] = float(np.mean(values))
    summary[f"{k}_std"] = float(np.std(values))
  return summary


def format_table(summary: dict) -> str:
  """A Markdown table of the mean +- std of the four metrics, naming the mode and split."""
  header = "| method | split | mode | n | Dice (%) | Jaccard (%) | 95HD (vox) | ASD (vox) |"
  rule = "|---|---|---|---|---|---|---|---|"
  def cell(k, scale):
    return f"{scale * summary[k]:.2f} ± {scale * summary[k + '_std']:.2f}" if k in summary else "-"
  line = (f"| {summary.get('method', '?')} | {summary.get('split', '?')} | {summary.get('mode', '?')} "
          f"| {summary['n_cases']} | {cell('dice', 100)} | {cell('jaccard', 100)} | {cell('hd95', 1)} "
          f"| {cell('asd', 1)} |")
  return "\n".join([header, rule, line])
