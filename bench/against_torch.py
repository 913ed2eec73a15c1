"""`python -m jaxseg.bench --against_torch`: the UA-MT step in jaxseg and in PyTorch, side by side.

  python -m jaxseg.bench --against_torch --config configs/la_uamt.py --size 64x64x48 --n_filters 8

This file and the PyTorch side, bench/torch_reference.py, live in a source checkout's bench/
(never part of the installed package, which names no method outside jaxseg/methods/; torch is
optional). Both start from the same weights (the torch initialisation imported
with `jaxseg.models.torch_import`) and take the same random batch. Their first steps are the loss
scale check (same weights and data; dropout masks and noise differ, so the losses agree to a few
percent, not exactly); the FLOPs check compares the convolutions and matmuls of the jaxseg step's
jaxpr (`bench_suite.conv_matmul_flops`) with torch's FlopCounterMode, both counting every kernel
tap; XLA's own cost analysis (padding taps excluded, elementwise work included) is reported beside
them. Then `steps` rounds each time one jaxseg step and one torch step,
alternately in this process, so that both see the same machine load; the ratio is of the medians.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg import bench_suite
from jaxseg import config_check
from jaxseg import methods
from jaxseg.methods import base as methods_base
from jaxseg.models import torch_import

REFERENCE = pathlib.Path(__file__).resolve().parent / "torch_reference.py"


def load_reference(path: pathlib.Path = REFERENCE):
  """bench/torch_reference.py as a module; a clear error without torch or outside a checkout."""
  if not path.is_file():
    raise FileNotFoundError(
      f"--against_torch needs {path} (bench/ of a jaxseg source checkout; "
      "it is not installed with the package)"
    )
  if importlib.util.find_spec("torch") is None:
    raise ImportError("--against_torch needs PyTorch: pip install torch (CPU wheels suffice)")
  spec = importlib.util.spec_from_file_location("jaxseg_bench_torch_reference", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _check_config(config) -> None:
  kw = config.model.kwargs
  if (
    config.method != "uamt"
    or config.model.name != "vnet"
    or kw.normalization != "batchnorm"
    or not kw.has_dropout
    or kw.dropout_rate != 0.5
    or kw.n_channels != 1
  ):
    raise ValueError(
      "--against_torch compares the UA-MT VNet step (bench/torch_reference.py): it needs "
      "method 'uamt' with model 'vnet' (1 channel, batchnorm, dropout 0.5), e.g. "
      f"configs/la_uamt.py; got method {config.method!r}, model {config.model.name!r} "
      f"{kw.to_dict()}"
    )
  if config.uamt.consistency_type != "mse" or config.uamt.consistency_on != "unlabeled":
    raise ValueError(
      "--against_torch: the reference is the default UA-MT variant "
      "(uamt.consistency_type='mse', uamt.consistency_on='unlabeled')"
    )


def against_torch(
  config, steps: int = 5, threads: int | None = None, log=print, lowerings=None
) -> dict:
  """Median step seconds of jaxseg and of the PyTorch reference, timed alternately; their ratio,
  the FLOPs of each step and the first-step losses on the same weights and batch.

  `lowerings`: the `layers.CONV_LOWERING` values to compile the jaxseg step under (default: the
  one in effect), each timed in every round beside torch, so that their ratios come from one run
  (under "lowerings" in the result; the top-level jax_* keys are the first's).
  """
  if steps < 1:
    raise ValueError(f"--steps={steps}: --against_torch needs at least one timed round")
  _check_config(config)
  config_check.validate(config)
  reference = load_reference()
  import torch  # only here: jaxseg never imports torch otherwise

  from jaxseg.models import layers

  lowerings = list(lowerings or [layers.CONV_LOWERING])
  hp, kwargs = config.uamt, config.model.kwargs.to_dict()
  ref = reference.UAMTStep(
    kwargs["n_filters"],
    seed=0,
    labeled_batch_size=config.labeled_batch_size,
    mc_passes=hp.mc_passes,
    total_steps=config.total_steps,
    threads=threads,
  )
  method = methods.build(config)
  host_batch = bench_suite.random_batch(config, method.host_targets)
  student, teacher = (
    torch_import.import_state_dict("vnet", sd, **kwargs) for sd in ref.state_dicts()
  )
  batch = jax.device_put(host_batch)
  images, labels = reference.to_torch(host_batch["image"], host_batch["label"])
  train_step = methods_base.phases_of(method)[-1].train_step

  def initial_state():
    """The same starting state, in fresh buffers each time (every compiled step donates its)."""
    state = method.init(jax.random.PRNGKey(0), host_batch)
    state = state.replace(
      params=student["params"],
      batch_stats=student["batch_stats"],
      opt_state=method.tx.init(student["params"]),
      aux={"ema_params": teacher["params"], "ema_batch_stats": teacher["batch_stats"]},
    )
    return jax.tree.map(jnp.copy, state)

  runs = {}
  previous = layers.CONV_LOWERING
  try:
    for lowering in lowerings:
      layers.CONV_LOWERING = lowering  # read at trace time: nothing traced before may be reused
      jax.clear_caches()
      layers.conv_lowering()  # an unknown name fails here, naming the setting
      state = initial_state()
      flops_jax = bench_suite.conv_matmul_flops(train_step, state, batch)
      flops_xla = bench_suite.step_flops(config, state, batch)
      t = time.perf_counter()
      compiled = jax.jit(train_step, donate_argnums=0).lower(state, batch).compile()
      compile_s = time.perf_counter() - t
      state, metrics = compiled(state, batch)
      runs[lowering] = dict(
        compiled=compiled,
        state=state,
        compile_s=compile_s,
        flops=flops_jax,
        flops_xla=flops_xla,
        loss=float(metrics["loss"]),
        step_s=[],
      )
  finally:
    layers.CONV_LOWERING = previous
  loss_torch = ref.step(images, labels)
  flops_torch = ref.flops(images, labels)
  for lowering, run in runs.items():
    log(
      f"convolutions {lowering}: compiled in {run['compile_s']:.1f} s; first-step loss jaxseg "
      f"{run['loss']:.5f} torch {loss_torch:.5f}; GFLOP/step jaxseg {run['flops'] / 1e9:.2f} "
      f"torch {flops_torch / 1e9:.2f}"
    )

  torch_s = []
  for r in range(steps):
    for run in runs.values():
      t = time.perf_counter()
      run["state"], metrics = run["compiled"](run["state"], batch)
      jax.block_until_ready(metrics)
      run["step_s"].append(time.perf_counter() - t)
    t = time.perf_counter()
    ref.step(images, labels)
    torch_s.append(time.perf_counter() - t)
    jax_part = ", ".join(f"jaxseg ({k}) {v['step_s'][-1]:.3f} s" for k, v in runs.items())
    log(f"round {r + 1}/{steps}: {jax_part}, torch {torch_s[-1]:.3f} s")
  torch_med = float(np.median(torch_s))
  per_lowering = {
    lowering: {
      "jax_compile_s": run["compile_s"],
      "jax_step_s": run["step_s"],
      "jax_step_s_median": float(np.median(run["step_s"])),
      "ratio_jax_over_torch": float(np.median(run["step_s"])) / torch_med,
      "flops_jax": run["flops"],
      "flops_ratio": run["flops"] / flops_torch if run["flops"] and flops_torch else None,
      "flops_xla_cost_analysis": run["flops_xla"],
      "first_loss_jax": run["loss"],
    }
    for lowering, run in runs.items()
  }
  first = per_lowering[lowerings[0]]
  return {
    "method": "uamt",
    "n_filters": kwargs["n_filters"],
    "patch_size": list(config.data.patch_size),
    "batch_size": config.batch_size,
    "mc_passes": hp.mc_passes,
    "compute_dtype": config.get("compute_dtype", "float32"),
    "backend": jax.default_backend(),
    "device_kind": jax.devices()[0].device_kind,
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "conv_lowering": lowerings[0],
    "torch": torch.__version__,
    "torch_threads": torch.get_num_threads(),
    "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    **first,
    "torch_step_s": torch_s,
    "torch_step_s_median": torch_med,
    "flops_torch": flops_torch,
    "first_loss_torch": loss_torch,
    "lowerings": per_lowering,
  }
