"""The docs/benchmarks.md section of one launch/device_check.sh run.

  python bench/device_report.py --suite OUT/suite/suite.json --train_workdir OUT/train \
      --train_wall_s 212 --train_rc 0 --total_steps 1000 --command "launch/device_check.sh" \
      --train_command "python -m jaxseg.main ..." --out OUT/benchmarks_rows.md \
      [--remat OUT/remat.json] [--results_md OUT/reproduce/la16/full/results.md] \
      [--append docs/benchmarks.md]

Reads the suite's JSON (jaxseg/bench_suite.py), the `--compare_remat` lines (jaxseg/bench.py) and
the training run's workdir (`metrics.jsonl`, `eval/val/summary.json`, `env.json`) and writes a
Markdown section: the device, the suite table, the rematerialisation table, one row for the
training run (steps done, wall seconds, final loss, validation Dice) and, when the run came from
`python -m jaxseg.reproduce`, a link to its table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from jaxseg import bench_suite  # noqa: E402


def _read_json(path: pathlib.Path):
  if not path.is_file():
    return None
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from e


def train_row(workdir: pathlib.Path, wall_s: float, rc: int, total_steps: int) -> str:
  """One Markdown table (header and row) for the training run in `workdir`."""
  lines = []
  metrics = workdir / "metrics.jsonl"
  if metrics.is_file():
    for i, line in enumerate(metrics.read_text().splitlines()):
      try:
        lines.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise ValueError(f"{metrics}: line {i + 1} is not JSON ({e})") from e
  losses = [r for r in lines if "loss" in r]
  step = losses[-1]["step"] if losses else 0
  loss = f"{losses[-1]['loss']:.4f}" if losses else "-"
  summary = _read_json(workdir / "eval" / "val" / "summary.json")
  dice = f"{100 * summary['dice']:.2f}" if summary and summary.get("dice") is not None else "-"
  status = "done" if rc == 0 and step == total_steps else f"exit {rc} at step {step}"
  per_step = f"{1e3 * wall_s / step:.0f}" if step else "-"
  return (
    "| run | steps | status | wall s (compile, data, eval included) | ms/step (wall / steps) "
    "| final loss | val Dice (%) |\n|---|---|---|---|---|---|---|\n"
    f"| configs/la_uamt.py | {step}/{total_steps} | {status} | {wall_s:.0f} | {per_step} "
    f"| {loss} | {dice} |\n"
  )


def remat_table(results: list[dict] | None) -> str:
  """The `--compare_remat` lines as a Markdown table (plain, remat, and their ratio)."""
  if not results:
    return "Rematerialisation: not measured (the stage did not finish; see remat.log).\n"
  cases = [r for r in results if "remat" in r]
  ratio = next((r for r in results if r.get("ratio")), {})

  def mib(v):
    return f"{v / 2**20:.0f}" if v is not None else "-"

  out = [
    "| model.remat | compile s | median step ms | XLA peak MiB | XLA temp MiB | final loss |",
    "|---|---|---|---|---|---|",
  ]
  for r in cases:
    out.append(
      f"| {r['remat']} | {r['compile_s']:.1f} | {1e3 * r['step_s_median']:.1f} "
      f"| {mib(r.get('xla_peak_bytes'))} | {mib(r.get('xla_temp_bytes'))} | {r['final_loss']:.4f} |"
    )
  if ratio:
    keys = ("compile_s", "step_s_median", "xla_peak_bytes", "xla_temp_bytes")
    cells = [f"{ratio[k]:.2f}" if k in ratio else "-" for k in keys]
    out.append(f"| remat / plain | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} | |")
  first = cases[0] if cases else {}
  head = (
    f"Rematerialisation (`--compare_remat`, {first.get('method', '?')}, patch "
    f"{'x'.join(map(str, first.get('patch_size', [])))}, batch {first.get('batch_size', '?')}):\n\n"
  )
  return head + "\n".join(out) + "\n"


def section(
  suite: dict,
  workdir: pathlib.Path,
  wall_s: float,
  rc: int,
  total_steps: int,
  command: str,
  train_command: str,
  remat: list[dict] | None = None,
  results_md: pathlib.Path | None = None,
) -> str:
  rows = suite["rows"]
  measured = [r for r in rows if "device_kind" in r]
  device = (
    (
      f"{measured[0]['device_kind']} x {measured[0]['n_devices']}, {measured[0]['backend']}, "
      f"jax {measured[0]['jax']}"
    )
    if measured
    else "device unknown (no suite row ran)"
  )
  when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  return (
    f"## {device} ({when})\n\n`{command}`\n\nSuite: `{suite['command']}`\n\n"
    + bench_suite.markdown(rows)
    + "\n"
    + remat_table(remat)
    + f"\nTraining: `{train_command}`\n\n"
    + train_row(workdir, wall_s, rc, total_steps)
    + (
      f"\nIts table beside the published number: `{results_md}`\n"
      if results_md is not None and results_md.is_file()
      else ""
    )
  )


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--suite", required=True, type=pathlib.Path)
  p.add_argument("--train_workdir", required=True, type=pathlib.Path)
  p.add_argument("--train_wall_s", required=True, type=float)
  p.add_argument("--train_rc", required=True, type=int)
  p.add_argument("--total_steps", required=True, type=int)
  p.add_argument("--command", required=True)
  p.add_argument("--train_command", required=True)
  p.add_argument("--out", required=True, type=pathlib.Path)
  p.add_argument("--remat", type=pathlib.Path, help="the --compare_remat JSON (a list)")
  p.add_argument("--results_md", type=pathlib.Path, help="reproduce's results.md, if it ran")
  p.add_argument("--append", type=pathlib.Path, help="also append the section to this file")
  a = p.parse_args(argv)
  suite = _read_json(a.suite)
  if suite is None:
    raise FileNotFoundError(f"{a.suite}: no suite JSON (did the suite run?)")
  text = section(
    suite,
    a.train_workdir,
    a.train_wall_s,
    a.train_rc,
    a.total_steps,
    a.command,
    a.train_command,
    remat=_read_json(a.remat) if a.remat else None,
    results_md=a.results_md,
  )
  a.out.parent.mkdir(parents=True, exist_ok=True)
  a.out.write_text(text)
  if a.append:
    with a.append.open("a") as f:
      f.write("\n" + text)
  print(text)


if __name__ == "__main__":
  main()
