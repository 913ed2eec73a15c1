"""Benchmark one config's train step and inference; JSON out.

  python -m jaxseg.bench --config configs/la_mt.py --steps 5 --out bench.json
  python -m jaxseg.bench --config configs/la_uamt.py --steps 3 --compare_mc

Times the jitted `train_step` at the config's real batch and patch size on random data (compile
separately from steady state), and the eval-mode forward on a batch of sliding windows, and reports
the step's memory by XLA's memory analysis. Speed is measured here, never in tests. Any config
field can be overridden, e.g. the rematerialisation switch and the compute dtype:

  python -m jaxseg.bench --config configs/la_uamt.py --size 64x64x48 --config.model.remat=True
  python -m jaxseg.bench --config configs/la_uamt.py --size 64x64x48 --compute_dtype bfloat16

`--compare_mc` (methods with Monte-Carlo passes, those whose class sets `mc_passes_field`, e.g.
UA-MT) instead times the step three times, with the MC passes as one `jax.vmap` (what training runs
on an accelerator), as a `lax.map` over one-forward vmapped groups (the CPU default) and as a Python
loop of forwards, and prints one JSON line per case.

`--compare_remat` compiles the step with `model.remat` off and on (jaxseg/models/vnet.py) and times
them alternately, so that both see the same load: one JSON line each with XLA's memory analysis
of the step, then the ratios. On the CPU it relies on jaxseg's default
`--xla_disable_hlo_passes=cse_barrier_expander` (jaxseg/xla_cpu.py): without it XLA:CPU merges
the recomputed forward back into the original one, and both steps are the same program
(docs/benchmarks.md "bf16 and rematerialisation").

`--size` ('recipe', 'small' or a patch 'DxHxW') and `--n_filters` resize the config first.
`--suite` runs every config (jaxseg/bench_suite.py: JSON and a Markdown table of compile s, step
ms, memory, FLOPs and the fraction of the device's peak); `--against_torch` times the UA-MT step
against the PyTorch reference of bench/torch_reference.py (bench/against_torch.py):

  python -m jaxseg.bench --suite --size small,recipe --compute_dtype float32,bfloat16 --out_dir runs/bench
  python -m jaxseg.bench --against_torch --config configs/la_uamt.py --size 64x64x48 --n_filters 8
"""

import json
import pathlib
import sys
import time

import jax
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from jaxseg import bench_suite
from jaxseg import config_check
from jaxseg import io_utils
from jaxseg import methods
from jaxseg import parallel
from jaxseg.methods import base as methods_base
from jaxseg.methods import common as methods_common

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed train steps after the compiling one.")
_OUT = flags.DEFINE_string("out", None, "Write the JSON here as well as to stdout.")
_COMPARE_MC = flags.DEFINE_bool(
  "compare_mc",
  False,
  "Methods with MC passes: time the step with them as vmap and as a Python loop.",
)
_COMPARE_REMAT = flags.DEFINE_bool(
  "compare_remat",
  False,
  "Time the step with model.remat off and on, alternately; XLA memory of each.",
)
_SIZE = flags.DEFINE_string(
  "size", "recipe", "'recipe', 'small' or a patch 'DxHxW'; with --suite a comma list."
)
_N_FILTERS = flags.DEFINE_integer("n_filters", None, "Override the network width (n_filters).")
_COMPUTE_DTYPE = flags.DEFINE_string(
  "compute_dtype",
  None,
  "float32 or bfloat16 (default: the config's; --suite: float32); with --suite a comma list.",
)
_SUITE = flags.DEFINE_bool(
  "suite",
  False,
  "Every configs/*.py (or --suite_configs) at each "
  "--size and --compute_dtype, each in its own process.",
)
_SUITE_CONFIGS = flags.DEFINE_multi_string(
  "suite_configs", None, "--suite: only these configs (file[:arg]; repeat the flag for several)."
)
_SUITE_BUDGET_S = flags.DEFINE_float(
  "suite_budget_s",
  0.0,
  "--suite: start no config after this "
  "many seconds (0: no limit); the rest are rows marked "
  "skipped.",
)
_OUT_DIR = flags.DEFINE_string(
  "out_dir",
  "runs/bench",
  "--suite: the folder the suite writes its JSON rows and its Markdown table to.",
)
_CONV_LOWERINGS = flags.DEFINE_string(
  "conv_lowerings",
  "",
  "--against_torch: comma list of JAXSEG_CONV_LOWERING values (xla, matmul, auto) to compile "
  "the jaxseg step under, each timed beside torch in every round (default: the one in effect).",
)
_AGAINST_TORCH = flags.DEFINE_bool(
  "against_torch",
  False,
  "Time the UA-MT step against bench/torch_reference.py, "
  "alternately, for --steps rounds; print the ratio.",
)


def _random_batch(config, host_targets) -> dict:
  """`methods_base.example_batch`'s layout with random images and labels, host targets computed
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


def _timed_steps(step, state, batch, steps: int, metrics=None):
  """Run `steps` already-compiled steps; returns (state, last metrics, seconds per step)."""
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  return state, metrics, times


def benchmark(config, steps: int = 5) -> dict:
  config_check.validate(config)
  method = methods.build(config)
  mesh = parallel.mesh_for(config)
  batch = _random_batch(config, method.host_targets)
  t = time.perf_counter()
  state = parallel.put_replicated(method.init(jax.random.PRNGKey(0), batch), mesh)
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t
  # A phased method (BCP, CML) is timed in its last phase, where a run spends most steps.
  phase = methods_base.phases_of(method)[-1]
  device_batch = parallel.put_batch(batch, mesh)
  t = time.perf_counter()
  step = (
    jax.jit(parallel.for_mesh(phase.train_step, mesh), donate_argnums=0)
    .lower(state, device_batch)
    .compile()
  )
  compile_s = time.perf_counter() - t
  analysis = step.memory_analysis()
  t = time.perf_counter()
  state, metrics = step(state, device_batch)
  jax.block_until_ready(metrics)
  first_step_s = compile_s + time.perf_counter() - t
  state, metrics, times = _timed_steps(step, state, device_batch, steps, metrics)

  predict = jax.jit(method.predict)
  windows = np.asarray(batch["image"][: config.eval.batch_size])
  jax.block_until_ready(predict(state, windows))
  t = time.perf_counter()
  for _ in range(max(1, steps // 2)):
    jax.block_until_ready(predict(state, windows))
  predict_s = (time.perf_counter() - t) / max(1, steps // 2)

  device = jax.devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  return {
    "method": config.method,
    "phase": phase.name,
    "model": dict(name=config.model.name, **config.model.kwargs.to_dict()),
    "remat": config.model.get("remat", False),
    "batch_size": config.batch_size,
    "patch_size": list(config.data.patch_size),
    "compute_dtype": config.get("compute_dtype", "float32"),
    "devices": [str(d) for d in jax.devices()],
    "backend": jax.default_backend(),
    "jax": jax.__version__,
    "init_s": init_s,
    "compile_s": compile_s,
    "first_step_s": first_step_s,
    "step_s_mean": float(np.mean(times)) if times else None,
    "step_s_min": float(np.min(times)) if times else None,
    "steps_timed": len(times),
    "predict_windows": int(windows.shape[0]),
    "predict_s": predict_s,
    "peak_bytes_in_use": (stats or {}).get("peak_bytes_in_use"),
    # The step executable's own buffers (arguments, outputs, temporaries), comparable across
    # backends; `peak_bytes_in_use` is the device's counter (None on the CPU).
    "xla_peak_bytes": getattr(analysis, "peak_memory_in_bytes", None) if analysis else None,
    "xla_temp_bytes": getattr(analysis, "temp_size_in_bytes", None) if analysis else None,
    "final_loss": float(metrics["loss"]),
  }


def compare_mc(config, steps: int = 5) -> list[dict]:
  """The step of a method with MC passes (its class names the config field holding their count in
  `mc_passes_field` and takes `mc_impl` / `mc_chunk` keyword arguments) with MC as 'loop', 'vmap'
  and 'vmap_chunk1': compile s, median step s, memory.

  The loop runs first: the device's `peak_bytes_in_use` only grows within a process, so the vmap
  line's peak is max(loop, vmap). `temp_bytes` is each executable's own scratch size (XLA memory
  analysis), comparable between the two.
  """
  cls = methods.method_class(config.method)
  field = getattr(cls, "mc_passes_field", None)
  if field is None:
    with_mc = sorted(k for k, v in methods.METHODS.items() if getattr(v, "mc_passes_field", None))
    raise ValueError(
      f"--compare_mc needs a method with Monte-Carlo passes ({with_mc}); the config's "
      f"method is {config.method!r}"
    )
  if steps < 1:
    raise ValueError(f"--steps={steps}: --compare_mc needs at least one timed step")
  config_check.validate(config)
  mesh = parallel.mesh_for(config)
  batch = _random_batch(config, cls.host_targets)
  results = []
  mc_passes = config[config.method][field]
  n_forward = mc_passes // methods_common.MC_COPIES
  # 'vmap': every forward in one vmap; 'vmap_chunk1': lax.map over one-forward groups (the CPU default).
  for name, impl, chunk in (
    ("loop", "loop", 0),
    ("vmap", "vmap", n_forward),
    ("vmap_chunk1", "vmap", 1),
  ):
    method = cls(config, mc_impl=impl, mc_chunk=chunk)
    state = parallel.put_replicated(method.init(jax.random.PRNGKey(0), batch), mesh)
    device_batch = parallel.put_batch(batch, mesh)
    t = time.perf_counter()
    step = jax.jit(
      parallel.for_mesh(methods_base.phases_of(method)[-1].train_step, mesh), donate_argnums=0
    )
    compiled = step.lower(state, device_batch).compile()
    compile_s = time.perf_counter() - t
    analysis = compiled.memory_analysis()
    state, metrics, times = _timed_steps(compiled, state, device_batch, steps)
    device = jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    results.append(
      {
        "method": config.method,
        "mc_impl": name,
        "mc_passes": mc_passes,
        "batch_size": config.batch_size,
        "patch_size": list(config.data.patch_size),
        "n_filters": config.model.kwargs.get("n_filters"),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "compile_s": compile_s,
        "step_s_median": float(np.median(times)),
        "steps_timed": len(times),
        "temp_bytes": getattr(analysis, "temp_size_in_bytes", None) if analysis else None,
        "peak_bytes_in_use": (stats or {}).get("peak_bytes_in_use"),
        "final_loss": float(metrics["loss"]),
      }
    )
    del state, compiled
  return results


def compare_remat(config, steps: int = 3) -> list[dict]:
  """The step (last phase) with `model.remat` False and True from the same init and batch: compile
  s, XLA memory analysis, median step s over `steps` rounds that run the two alternately, final
  loss. A third line holds the ratios remat / plain."""
  if steps < 1:
    raise ValueError(f"--steps={steps}: --compare_remat needs at least one timed step")
  cases = []
  for remat in (False, True):
    case_config = config.copy_and_resolve_references()
    case_config.model.remat = remat
    config_check.validate(case_config)
    method = methods.build(case_config)
    mesh = parallel.mesh_for(case_config)
    batch = _random_batch(case_config, method.host_targets)
    state = parallel.put_replicated(method.init(jax.random.PRNGKey(0), batch), mesh)
    device_batch = parallel.put_batch(batch, mesh)
    step = jax.jit(
      parallel.for_mesh(methods_base.phases_of(method)[-1].train_step, mesh), donate_argnums=0
    )
    t = time.perf_counter()
    compiled = step.lower(state, device_batch).compile()
    compile_s = time.perf_counter() - t
    state, metrics = compiled(state, device_batch)  # allocates; not timed
    jax.block_until_ready(metrics)
    cases.append(
      dict(remat=remat, compiled=compiled, state=state, batch=device_batch, compile_s=compile_s)
    )
  times = {False: [], True: []}
  for _ in range(steps):
    for case in cases:
      case["state"], case["metrics"], t = _timed_steps(
        case["compiled"], case["state"], case["batch"], 1
      )
      times[case["remat"]] += t
  results = []
  for case in cases:
    analysis = case["compiled"].memory_analysis()
    results.append(
      {
        "method": config.method,
        "remat": case["remat"],
        "model": config.model.name,
        "n_filters": config.model.kwargs.get("n_filters"),
        "batch_size": config.batch_size,
        "patch_size": list(config.data.patch_size),
        "compute_dtype": config.get("compute_dtype", "float32"),
        "backend": jax.default_backend(),
        "compile_s": case["compile_s"],
        "step_s_median": float(np.median(times[case["remat"]])),
        "steps_timed": steps,
        "xla_peak_bytes": getattr(analysis, "peak_memory_in_bytes", None) if analysis else None,
        "xla_temp_bytes": getattr(analysis, "temp_size_in_bytes", None) if analysis else None,
        "final_loss": float(case["metrics"]["loss"]),
      }
    )
  plain, remat = results
  ratios = {"ratio": "remat / plain"}
  for key in ("compile_s", "step_s_median", "xla_peak_bytes", "xla_temp_bytes"):
    if plain[key] and remat[key] is not None:
      ratios[key] = remat[key] / plain[key]
  return results + [ratios]


def _suite() -> None:
  specs = _SUITE_CONFIGS.value or [
    str(p.relative_to(bench_suite.REPO)) for p in bench_suite.config_files()
  ]
  rows = bench_suite.run_suite(
    specs,
    _SIZE.value.split(","),
    (_COMPUTE_DTYPE.value or "float32").split(","),
    _STEPS.value,
    budget_s=_SUITE_BUDGET_S.value,
  )
  json_path, md_path = bench_suite.write(
    rows, _OUT_DIR.value, "python -m jaxseg.bench " + " ".join(sys.argv[1:])
  )
  print(f"wrote {json_path} and {md_path}", flush=True)


def checkout_module(name: str):
  """`bench/<name>.py` of the source checkout this package runs from, as a module (the PyTorch
  side by side is not part of the installed package)."""
  import importlib.util

  path = pathlib.Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: --against_torch runs from a jaxseg source checkout")
  spec = importlib.util.spec_from_file_location(f"jaxseg_checkout_bench_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def main(argv):
  del argv
  if _SUITE.value:
    _suite()
    return
  if _CONFIG.value is None:
    raise app.UsageError("--config is required (except with --suite)")
  config = bench_suite.resize(_CONFIG.value, _SIZE.value, _N_FILTERS.value)
  if _COMPUTE_DTYPE.value:
    config.compute_dtype = _COMPUTE_DTYPE.value
  if _AGAINST_TORCH.value:
    lowerings = _CONV_LOWERINGS.value.split(",") if _CONV_LOWERINGS.value else None
    result = checkout_module("against_torch").against_torch(
      config, _STEPS.value, lowerings=lowerings
    )
    print(json.dumps(result), file=sys.stdout, flush=True)
    for lowering, r in result["lowerings"].items():
      print(
        f"UA-MT step (convolutions {lowering}): jaxseg {r['jax_step_s_median']:.3f} s, torch "
        f"{result['torch_step_s_median']:.3f} s, ratio {r['ratio_jax_over_torch']:.2f}",
        flush=True,
      )
    if _OUT.value:
      io_utils.write_json(_OUT.value, result)
    return
  if _COMPARE_MC.value or _COMPARE_REMAT.value:
    results = (compare_mc if _COMPARE_MC.value else compare_remat)(config, _STEPS.value)
    for result in results:
      print(json.dumps(result), file=sys.stdout, flush=True)
    if _OUT.value:
      io_utils.write_json(_OUT.value, results)
    return
  result = benchmark(config, _STEPS.value)
  text = json.dumps(result, indent=2)
  print(text, file=sys.stdout, flush=True)
  if _OUT.value:
    io_utils.write_json(_OUT.value, result)


if __name__ == "__main__":
  app.run(main)
