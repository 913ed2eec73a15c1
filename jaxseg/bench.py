"""Benchmark one config's train step and inference; JSON out.

  python -m jaxseg.bench --config configs/la_mt.py --steps 5 --out bench.json
  python -m jaxseg.bench --config configs/la_uamt.py --steps 3 --compare_mc

Times the jitted `train_step` at the config's real batch and patch size on random data (compile
separately from steady state), and the eval-mode forward on a batch of sliding windows. Speed is
measured here, never in tests.

`--compare_mc` (method uamt only) instead times the UA-MT step three times, with its Monte-Carlo
teacher passes as one `jax.vmap` (what training runs on an accelerator), as a `lax.map` over
one-forward vmapped groups (the CPU default) and as a Python loop of forwards, and prints one JSON
line per case.
"""
import json
import sys
import time

import jax
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from jaxseg import config_lib
from jaxseg import io_utils
from jaxseg import methods
from jaxseg import parallel
from jaxseg.methods import common as methods_common
from jaxseg.methods import uamt

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed train steps after the compiling one.")
_OUT = flags.DEFINE_string("out", None, "Write the JSON here as well as to stdout.")
_COMPARE_MC = flags.DEFINE_bool("compare_mc", False,
                                "uamt only: time the step with MC passes as vmap and as a Python loop.")


def _random_batch(config) -> dict:
  rng = np.random.default_rng(0)
  shape = (config.batch_size, *config.data.patch_size)
  return {"image": rng.normal(size=shape + (1,)).astype(np.float32),
          "label": rng.integers(0, config.data.num_classes, size=shape).astype(np.int32)}


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
  config_lib.validate(config)
  method = methods.build(config)
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  batch = _random_batch(config)
  t = time.perf_counter()
  state = parallel.put_replicated(method.init(jax.random.PRNGKey(0), batch), mesh)
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t
  # A phased method (BCP, CML) is timed in its last phase, where a run spends most steps.
  phase = methods_common.phases_of(method)[-1]
  step = jax.jit(phase.train_step, donate_argnums=0)
  device_batch = parallel.put_batch(batch, mesh)
  t = time.perf_counter()
  state, metrics = step(state, device_batch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t
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
      "batch_size": config.batch_size,
      "patch_size": list(config.data.patch_size),
      "compute_dtype": config.get("compute_dtype", "float32"),
      "devices": [str(d) for d in jax.devices()],
      "backend": jax.default_backend(),
      "jax": jax.__version__,
      "init_s": init_s,
      "first_step_s": compile_s,
      "step_s_mean": float(np.mean(times)) if times else None,
      "step_s_min": float(np.min(times)) if times else None,
      "steps_timed": len(times),
      "predict_windows": int(windows.shape[0]),
      "predict_s": predict_s,
      "peak_bytes_in_use": (stats or {}).get("peak_bytes_in_use"),
      "final_loss": float(metrics["loss"]),
  }


def compare_mc(config, steps: int = 5) -> list[dict]:
  """UA-MT step with MC as 'loop', 'vmap' and 'vmap_chunk1': compile s, median step s, memory.

  The loop runs first: the device's `peak_bytes_in_use` only grows within a process, so the vmap
  line's peak is max(loop, vmap). `temp_bytes` is each executable's own scratch size (XLA memory
  analysis), comparable between the two.
  """
  if config.method != "uamt":
    raise ValueError(f"--compare_mc is for method uamt, the config's method is {config.method!r}")
  if steps < 1:
    raise ValueError(f"--steps={steps}: --compare_mc needs at least one timed step")
  config_lib.validate(config)
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  batch = _random_batch(config)
  results = []
  n_forward = config.uamt.mc_passes // uamt.MC_COPIES
  # 'vmap': every forward in one vmap; 'vmap_chunk1': lax.map over one-forward groups (the CPU default).
  for name, impl, chunk in (("loop", "loop", 0), ("vmap", "vmap", n_forward), ("vmap_chunk1", "vmap", 1)):
    method = uamt.UAMT(config, mc_impl=impl, mc_chunk=chunk)
    state = parallel.put_replicated(method.init(jax.random.PRNGKey(0), batch), mesh)
    device_batch = parallel.put_batch(batch, mesh)
    t = time.perf_counter()
    compiled = jax.jit(method.train_step, donate_argnums=0).lower(state, device_batch).compile()
    compile_s = time.perf_counter() - t
    analysis = compiled.memory_analysis()
    state, metrics, times = _timed_steps(compiled, state, device_batch, steps)
    device = jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    results.append({
        "method": "uamt",
        "mc_impl": name,
        "mc_passes": config.uamt.mc_passes,
        "consistency_on": config.uamt.consistency_on,
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
    })
    del state, compiled
  return results


def main(argv):
  del argv
  if _COMPARE_MC.value:
    results = compare_mc(_CONFIG.value, _STEPS.value)
    for result in results:
      print(json.dumps(result), file=sys.stdout, flush=True)
    if _OUT.value:
      io_utils.write_json(_OUT.value, results)
    return
  result = benchmark(_CONFIG.value, _STEPS.value)
  text = json.dumps(result, indent=2)
  print(text, file=sys.stdout, flush=True)
  if _OUT.value:
    io_utils.write_json(_OUT.value, result)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
