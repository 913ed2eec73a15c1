"""`python -m jaxseg.bench --suite`: every config's train step and eval forward, JSON and Markdown.

  python -m jaxseg.bench --suite --size small --out_dir runs/bench_small
  python -m jaxseg.bench --suite --size recipe --compute_dtype float32,bfloat16 --out_dir runs/bench

Each (config, size, compute dtype) runs in its own process (`python -m jaxseg.bench_suite ...`,
the worker entry point below), so that the device's peak-memory counter, which only grows within a
process, is that config's own, and a config that fails (e.g. out of memory) is a row with its
error instead of the end of the suite.

Per row: compile s (lower + compile of the jitted step), median step ms over `steps` timed steps
after the compiling one, steps/s, peak memory by XLA's memory analysis of the step executable and
by the device (`memory_stats()['peak_bytes_in_use']`; on the CPU, which has no such counter, the
process's peak RSS), FLOPs per step by XLA's cost analysis, the achieved FLOP/s and, where the
device's peak is known (`PEAK_FLOPS`), the fraction of it.

FLOPs are counted on the step with every stochastic pass in one vmap (`mc_chunk` / `pass_chunk`
set past the pass count): XLA's cost analysis counts the body of a loop once, and the CPU default
runs the MC passes as a `lax.map` loop. Data-dependent loops (the largest-component labelling of
DTC / BCP / CML / DyCON) are counted once per step; their work is elementwise and small.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import resource
import subprocess
import sys
import time

import jax
import numpy as np
from jax.extend import core as jex_core

from jaxseg import config_check
from jaxseg import config_lib
from jaxseg import io_utils
from jaxseg import methods
from jaxseg import parallel
from jaxseg.methods import base as methods_base

REPO = pathlib.Path(__file__).resolve().parents[1]
SIZES = ("recipe", "small")
# `--size small`: the recipe's method, batch and network family at a few seconds a step on a CPU.
SMALL_PATCH_3D = (32, 32, 32)
SMALL_PATCH_2D = (64, 64)
SMALL_N_FILTERS = 8
# Config fields that split stochastic passes into looped groups (the CPU default); counting FLOPs
# sets them past the pass count so that every pass is in one vmap.
PASS_CHUNK_FIELDS = ("mc_chunk", "pass_chunk")

# Dense peak FLOP/s by device kind (substring of `device.device_kind`, lower case) and compute
# dtype. float32 on NVIDIA GPUs runs convolutions and matmuls as TF32 at XLA's default precision,
# on TPUs as bf16 passes: the peak is that unit's. Vendor data sheets (SXM parts).
PEAK_FLOPS = {
  "a100": {"float32": 156e12, "bfloat16": 312e12},
  "h100": {"float32": 494.7e12, "bfloat16": 989.4e12},
  "h200": {"float32": 494.7e12, "bfloat16": 989.4e12},
  "tpu v4": {"float32": 275e12, "bfloat16": 275e12},
  "tpu v5 lite": {"float32": 197e12, "bfloat16": 197e12},
  "tpu v5e": {"float32": 197e12, "bfloat16": 197e12},
}


def config_files(root: pathlib.Path = REPO / "configs") -> list[pathlib.Path]:
  """Every config file of the suite (configs/*.py), sorted."""
  files = sorted(p for p in root.glob("*.py") if not p.name.startswith("_"))
  if not files:
    raise FileNotFoundError(f"no config files in {root}")
  return files


def resize(config, size: str, n_filters: int | None = None):
  """`config` (changed in place and returned) at `size`: 'recipe' (as written), 'small'
  (`SMALL_PATCH_3D` / `SMALL_PATCH_2D` patches, network width `SMALL_N_FILTERS`, 2D UNet channels
  halved) or 'DxHxW' (that patch, e.g. '64x64x48'). `n_filters` then overrides the width of a
  network that has one."""
  kwargs = config.model.kwargs
  if size == "small":
    config.data.patch_size = SMALL_PATCH_2D if len(config.data.patch_size) == 2 else SMALL_PATCH_3D
    if "n_filters" in kwargs:
      kwargs.n_filters = SMALL_N_FILTERS
    if "feature_chns" in kwargs:
      kwargs.feature_chns = tuple(c // 2 for c in kwargs.feature_chns)
  elif size != "recipe":
    try:
      patch = tuple(int(s) for s in size.split("x"))
    except ValueError:
      patch = ()
    if len(patch) != len(config.data.patch_size):
      raise ValueError(
        f"--size={size!r}: expected one of {SIZES} or a "
        f"{len(config.data.patch_size)}-D patch like "
        f"{'x'.join(str(s) for s in config.data.patch_size)}"
      )
    config.data.patch_size = patch
  if n_filters is not None:
    if "n_filters" not in kwargs:
      raise ValueError(f"--n_filters={n_filters}: model {config.model.name!r} has no n_filters")
    kwargs.n_filters = n_filters
  return config


def load(
  spec: str, size: str = "recipe", compute_dtype: str = "float32", n_filters: int | None = None
):
  """The config of `spec` ('configs/x.py' or 'configs/x.py:arg') at `size` and `compute_dtype`."""
  path, _, arg = spec.partition(":")
  config = config_lib.load_config_module(path).get_config(arg or None)
  config.compute_dtype = compute_dtype
  return resize(config, size, n_filters)


def random_batch(config, host_targets) -> dict:
  """`methods_base.example_batch`'s layout with random images and labels; host targets computed
  from those labels."""
  rng = np.random.default_rng(0)
  batch = methods_base.example_batch(config)
  batch["image"] = rng.normal(size=batch["image"].shape).astype(np.float32)
  batch["label"] = rng.integers(
    0, config.data.num_classes, size=batch["label"].shape, dtype=np.int32
  )
  for key, fn in host_targets.items():
    batch[key] = np.stack([np.asarray(fn(l), np.float32) for l in batch["label"]])
  return batch


def peak_flops(device, compute_dtype: str) -> float | None:
  """The device's dense peak FLOP/s for `compute_dtype` from `PEAK_FLOPS`, None when unknown."""
  kind = device.device_kind.lower()
  for key, peaks in PEAK_FLOPS.items():
    if key in kind:
      return peaks[compute_dtype]
  return None


def device_peak_bytes(device) -> tuple[int | None, str]:
  """(peak bytes, what they are): the device's `peak_bytes_in_use`, or on a device without that
  counter (the CPU) the process's peak resident set."""
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and stats.get("peak_bytes_in_use") is not None:
    return int(stats["peak_bytes_in_use"]), "peak_bytes_in_use"
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process_peak_rss"


def step_flops(config, state, batch) -> float | None:
  """FLOPs of one train step (last phase) by XLA's cost analysis of the lowered step, with every
  stochastic pass in one vmap (see the module docstring)."""
  counted = config.copy_and_resolve_references()
  hp = counted.get(counted.method)
  for field in PASS_CHUNK_FIELDS:
    if hp is not None and field in hp:
      hp[field] = 1 << 30
  method = methods.build(counted)
  step = methods_base.phases_of(method)[-1].train_step
  analysis = jax.jit(step).lower(state, batch).cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  return float(analysis["flops"]) if analysis and "flops" in analysis else None


def _eqn_flops(eqn) -> float:
  """2 x multiply-adds of one convolution or dot_general equation, every kernel tap counted (padding
  included, as torch's FlopCounterMode); 0 for other primitives."""
  out = eqn.outvars[0].aval
  if eqn.primitive.name == "conv_general_dilated":
    rhs, spec = eqn.invars[1].aval, eqn.params["dimension_numbers"].rhs_spec
    return 2.0 * out.size * rhs.shape[spec[1]] * math.prod(rhs.shape[d] for d in spec[2:])
  if eqn.primitive.name == "dot_general":
    (contract, _), _ = eqn.params["dimension_numbers"]
    return 2.0 * out.size * math.prod(eqn.invars[0].aval.shape[d] for d in contract)
  return 0.0


def _jaxpr_flops(jaxpr) -> float:
  total = 0.0
  for eqn in jaxpr.eqns:
    total += _eqn_flops(eqn)
    inner = []
    for value in eqn.params.values():
      for v in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(v, jex_core.ClosedJaxpr):
          inner.append(_jaxpr_flops(v.jaxpr))
        elif isinstance(v, jex_core.Jaxpr):
          inner.append(_jaxpr_flops(v))
    if eqn.primitive.name == "cond":
      total += max(inner, default=0.0)
    else:
      # A scan (lax.map) runs its body `length` times.
      total += sum(inner) * eqn.params.get("length", 1)
  return total


def conv_matmul_flops(fn, *args) -> float:
  """FLOPs of the convolutions and matmuls of `fn(*args)` from its jaxpr (forward and, when `fn`
  differentiates, backward), 2 per multiply-add, every kernel tap counted, scan bodies times
  their length (a while loop's once): torch's FlopCounterMode convention. XLA's cost analysis
  counts only the taps inside the input (padding excluded) and elementwise work too, so it differs
  by tens of percent at small patches."""
  return _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def measure(config, steps: int = 3) -> dict:
  """One suite row: compile, step and eval-forward times, memory and FLOPs of `config`."""
  if steps < 1:
    raise ValueError(f"steps={steps}: the suite needs at least one timed step")
  config_check.validate(config)
  method = methods.build(config)
  mesh = parallel.mesh_for(config)
  host_batch = random_batch(config, method.host_targets)
  state = parallel.put_replicated(method.init(jax.random.PRNGKey(0), host_batch), mesh)
  batch = parallel.put_batch(host_batch, mesh)
  # A phased method (BCP, CML) is timed in its last phase, where a run spends most steps.
  phase = methods_base.phases_of(method)[-1]
  flops = step_flops(config, state, batch)
  t = time.perf_counter()
  compiled = (
    jax.jit(parallel.for_mesh(phase.train_step, mesh), donate_argnums=0)
    .lower(state, batch)
    .compile()
  )
  compile_s = time.perf_counter() - t
  analysis = compiled.memory_analysis()
  times = []
  for _ in range(steps + 1):  # the first run allocates; it is not timed
    t = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  step_s = float(np.median(times[1:]))

  predict = jax.jit(method.predict)
  windows = np.asarray(host_batch["image"][: config.eval.batch_size])
  jax.block_until_ready(predict(state, windows))
  eval_times = []
  for _ in range(steps):
    t = time.perf_counter()
    jax.block_until_ready(predict(state, windows))
    eval_times.append(time.perf_counter() - t)

  device = jax.devices()[0]
  peak = peak_flops(device, config.compute_dtype)
  device_bytes, device_bytes_kind = device_peak_bytes(device)
  achieved = flops / step_s if flops else None
  return {
    "method": config.method,
    "phase": phase.name,
    "model": config.model.name,
    "n_filters": config.model.kwargs.get("n_filters"),
    "batch_size": config.batch_size,
    "patch_size": list(config.data.patch_size),
    "compute_dtype": config.compute_dtype,
    "backend": jax.default_backend(),
    "device_kind": device.device_kind,
    "n_devices": jax.device_count(),
    "jax": jax.__version__,
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "compile_s": compile_s,
    "step_ms_median": 1e3 * step_s,
    "steps_per_s": 1.0 / step_s,
    "steps_timed": steps,
    "eval_windows": int(windows.shape[0]),
    "eval_ms_median": 1e3 * float(np.median(eval_times)),
    "xla_peak_bytes": getattr(analysis, "peak_memory_in_bytes", None) if analysis else None,
    "xla_temp_bytes": getattr(analysis, "temp_size_in_bytes", None) if analysis else None,
    "device_peak_bytes": device_bytes,
    "device_peak_kind": device_bytes_kind,
    "flops_per_step": flops,
    "conv_matmul_flops_per_step": conv_matmul_flops(phase.train_step, state, batch),
    "achieved_flops_per_s": achieved,
    "peak_flops_per_s": peak,
    "fraction_of_peak": achieved / peak if achieved and peak else None,
    "final_loss": float(metrics["loss"]),
  }


def run_suite(
  specs: list[str],
  sizes: list[str],
  dtypes: list[str],
  steps: int = 3,
  timeout_s: float = 1800.0,
  budget_s: float = 0.0,
  log=print,
) -> list[dict]:
  """One row per (config spec, size, dtype), each measured in a fresh worker process; a failed
  worker gives a row with 'error' (the last line of its stderr) and 'stderr_tail'. With
  `budget_s` > 0 no worker runs past that many seconds from the start: the rest are rows marked
  skipped."""
  rows, start = [], time.monotonic()
  for spec in specs:
    for size in sizes:
      for dtype in dtypes:
        head = {"config": spec, "size": size, "compute_dtype": dtype}
        cmd = [sys.executable, "-m", "jaxseg.bench_suite", spec, size, dtype, str(steps)]
        left = budget_s - (time.monotonic() - start) if budget_s > 0 else timeout_s
        if left <= 0:
          rows.append({**head, "error": f"skipped: the suite's {budget_s:.0f} s budget was spent"})
          continue
        t = time.perf_counter()
        try:
          proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=min(timeout_s, left), cwd=REPO
          )
        except subprocess.TimeoutExpired:
          row = {**head, "error": f"timed out after {min(timeout_s, left):.0f} s"}
        else:
          lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
          if proc.returncode == 0 and lines:
            row = {**head, **json.loads(lines[-1])}
          else:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            row = {
              **head,
              "error": f"exit {proc.returncode}: {last}",
              "stderr_tail": proc.stderr[-3000:],
            }
        row["wall_s"] = time.perf_counter() - t
        log(json.dumps(row))
        rows.append(row)
  return rows


def _fmt(value, scale: float = 1.0, digits: int = 1) -> str:
  return "-" if value is None else f"{value / scale:.{digits}f}"


def markdown(rows: list[dict]) -> str:
  """The suite's rows as a Markdown table (errors in their own column)."""
  head = (
    "| config | size | dtype | batch x patch | compile s | step ms | steps/s | eval fwd ms | "
    "XLA peak MiB | device peak MiB | GFLOP/step | achieved GFLOP/s | % of peak | error |"
  )
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for r in rows:
    shape = (
      f"{r['batch_size']} x {'x'.join(str(s) for s in r['patch_size'])}"
      if "patch_size" in r
      else "-"
    )
    frac = r.get("fraction_of_peak")
    lines.append(
      "| "
      + " | ".join(
        [
          pathlib.Path(r["config"]).name,
          r["size"],
          r["compute_dtype"],
          shape,
          _fmt(r.get("compile_s")),
          _fmt(r.get("step_ms_median"), digits=0),
          _fmt(r.get("steps_per_s"), digits=3),
          _fmt(r.get("eval_ms_median"), digits=0),
          _fmt(r.get("xla_peak_bytes"), 2**20, 0),
          _fmt(r.get("device_peak_bytes"), 2**20, 0),
          _fmt(r.get("flops_per_step"), 1e9),
          _fmt(r.get("achieved_flops_per_s"), 1e9),
          "-" if frac is None else f"{100 * frac:.1f}",
          (r.get("error") or "").replace("|", "/").replace("\n", " ")[:120],
        ]
      )
      + " |"
    )
  return "\n".join(lines) + "\n"


def write(rows: list[dict], out_dir: str | os.PathLike, command: str) -> tuple[str, str]:
  """Writes, atomically, into `out_dir`: the rows and the command as JSON, and the table as Markdown,
  both named `suite`; returns their paths (json, markdown)."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  stem = out / "suite"
  json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
  io_utils.write_json(json_path, {"command": command, "rows": rows})
  load_note = ""
  if hasattr(os, "getloadavg"):
    load_note = f" (1-min load average at the end: {os.getloadavg()[0]:.1f})"
  io_utils.write_text(md_path, f"`{command}`{load_note}\n\n" + markdown(rows))
  return str(json_path), str(md_path)


def _worker(argv: list[str]) -> None:
  """`python -m jaxseg.bench_suite SPEC SIZE DTYPE STEPS`: one row as a JSON line on stdout."""
  if len(argv) != 4:
    raise SystemExit("usage: python -m jaxseg.bench_suite CONFIG[:ARG] SIZE DTYPE STEPS")
  spec, size, dtype, steps = argv
  row = measure(load(spec, size, dtype), int(steps))
  print(json.dumps(row), flush=True)


if __name__ == "__main__":
  _worker(sys.argv[1:])
