"""Benchmark one config's train step and inference; JSON out.

  python -m jaxseg.bench --config configs/la_mt.py --steps 5 --out bench.json

Times the jitted `train_step` at the config's real batch and patch size on random data (compile
separately from steady state), and the eval-mode forward on a batch of sliding windows. Speed is
measured here, never in tests.
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

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed train steps after the compiling one.")
_OUT = flags.DEFINE_string("out", None, "Write the JSON here as well as to stdout.")


def benchmark(config, steps: int = 5) -> dict:
  config_lib.validate(config)
  method = methods.build(config)
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  rng = np.random.default_rng(0)
  shape = (config.batch_size, *config.data.patch_size)
  batch = {"image": rng.normal(size=shape + (1,)).astype(np.float32),
           "label": rng.integers(0, config.data.num_classes, size=shape).astype(np.int32)}
  t = time.perf_counter()
  state = parallel.put_replicated(method.init(jax.random.PRNGKey(0), batch), mesh)
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t
  step = jax.jit(method.train_step, donate_argnums=0)
  device_batch = parallel.put_batch(batch, mesh)
  t = time.perf_counter()
  state, metrics = step(state, device_batch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    state, metrics = step(state, device_batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)

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


def main(argv):
  del argv
  result = benchmark(_CONFIG.value, _STEPS.value)
  text = json.dumps(result, indent=2)
  print(text, file=sys.stdout, flush=True)
  if _OUT.value:
    io_utils.write_json(_OUT.value, result)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
