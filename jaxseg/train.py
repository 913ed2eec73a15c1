"""THE training loop, for every method: data -> jitted step -> logs -> periodic eval ->
checkpoint / resume -> final evaluation.

Re-running the same command on the same workdir resumes from the last checkpoint (orbax, state +
data iterator), so a killed run loses nothing that was checkpointed and ends as if it had never
stopped.
"""
import json
import os
import pathlib
import platform
import signal
import socket
import subprocess
import sys
import time

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from jaxseg import checkpoints as checkpoints_lib
from jaxseg import config_lib
from jaxseg import evaluate as evaluate_lib
from jaxseg import io_utils
from jaxseg import methods
from jaxseg import parallel
from jaxseg import writers
from jaxseg.data.builder import build_datasets
from jaxseg.methods import common as methods_common

# Fault injection for the resume test: the process SIGKILLs itself right after this step.
_FAULT_ENV = "JAXSEG_FAULT_KILL_AT_STEP"


class NonFiniteLossError(FloatingPointError):
  pass


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  """Train `config.method` for `config.total_steps`, then evaluate the final state on the
  validation split. Returns the evaluation summary (also in `<workdir>/eval/<split>/summary.json`)."""
  config_lib.validate(config)
  workdir = pathlib.Path(workdir).resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  parallel.maybe_initialize_distributed()
  if jax.process_count() > 1:
    # Each host would need its own labeled-first slice of the global batch; until the pipeline
    # shards the two streams per host, refuse rather than feed every host the same examples.
    raise ValueError(f"{jax.process_count()} processes: multi-host data feeding is not supported yet; "
                     "run on one host (all its local devices are used)")
  is_main = jax.process_index() == 0
  if is_main:
    io_utils.write_json(workdir / "config.json", config.to_dict())
    io_utils.write_json(workdir / "env.json", environment_record())

  data = build_datasets(config, workdir)
  method = methods.build(config)
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  iterator = data.train_iterator

  example = {
      "image": np.zeros((config.batch_size, *config.data.patch_size, 1), np.float32),
      "label": np.zeros((config.batch_size, *config.data.patch_size), np.int32),
  }
  state = method.init(jax.random.PRNGKey(config.seed), example)

  ckpt = ocp.CheckpointManager(
      workdir / "checkpoints",
      options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True))
  # Best-on-validation state (checkpoints.py): only the periodic validation on the val split
  # feeds it; the final checkpoint above stays the default for evaluation.
  best_ckpt = checkpoints_lib.best_manager(workdir) if config.eval.every_steps else None
  latest = ckpt.latest_step()
  if latest is not None:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = ckpt.restore(latest, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), data=grain.checkpoint.CheckpointRestore(iterator)))
    state = restored["state"]
    _log(f"resumed from {workdir / 'checkpoints'} at step {int(state.step)}")
  start = int(state.step)
  total = config.total_steps

  summary_path = workdir / "eval" / config.eval.split / "summary.json"
  if start >= total and summary_path.exists():
    summary = json.loads(summary_path.read_text())
    _log(f"run already finished; its evaluation ({summary_path}):")
    print(evaluate_lib.format_table(summary), flush=True)
    return summary

  state = parallel.put_replicated(state, mesh)
  phases = methods_common.phases_of(method)
  # Each phase's step is compiled once, on first use; `enter` runs once at the phase's first step
  # (a checkpoint taken at a phase boundary predates it, so a resume there re-enters correctly).
  step_fns = {p.name: jax.jit(p.train_step, donate_argnums=0) for p in phases}
  writer = writers.MetricWriter(workdir, resume_step=start, enable_tensorboard=is_main)
  progress = writers.Progress(total, start)
  fault_step = int(os.environ.get(_FAULT_ENV, "-1"))
  _log(f"training {config.method} on {config.data.name}: steps {start}->{total}, "
       f"{mesh.devices.size} device(s) {jax.devices()[0].platform}, workdir {workdir}")

  for step in range(start, total):
    phase = methods_common.phase_at(phases, step)
    if len(phases) > 1 and (step == phase.start or step == start):
      _log(f"phase {phase.name!r} from step {step}")
    if step == phase.start and phase.enter is not None:
      state = jax.jit(phase.enter, donate_argnums=0)(state)
    batch = parallel.put_batch(next(iterator), mesh)
    state, metrics = step_fns[phase.name](state, batch)
    done = step + 1
    if step == start:
      jax.block_until_ready(state)
      progress.start_timing(done)
    if done % config.log_every_steps == 0 or done == total:
      scalars = _checked(jax.device_get(metrics), done, workdir)
      writer.write(done, scalars)
      progress.report(done, scalars)
    every = config.eval.every_steps
    if every and (done % every == 0 or done == total):
      val = evaluate_lib.evaluate(method, state, data.val_source, config, stream=None,
                                  max_cases=config.eval.max_cases)
      writer.write(done, {f"val_{k}": val[k] for k in evaluate_lib.METRIC_NAMES})
      improved = checkpoints_lib.save_best(best_ckpt, done, state, val["dice"], split="val",
                                           mode=val["mode"], n_cases=val["n_cases"])
      _log(f"validation at step {done}: dice={val['dice']:.4f} hd95={val['hd95']:.2f}"
           + (" (new best, saved)" if improved else ""))
    if done % config.checkpoint_every_steps == 0 or done == total:
      _checked(jax.device_get({"loss": metrics["loss"]}), done, workdir)
      ckpt.save(done, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(iterator)))
    if done == fault_step:
      ckpt.wait_until_finished()
      os.kill(os.getpid(), signal.SIGKILL)
  ckpt.wait_until_finished()
  if best_ckpt is not None:
    best_ckpt.wait_until_finished()
  writer.close()

  n_eval = len(data.val_source)
  if config.eval.max_cases:  # a short check on real data; the summary's n_cases says so
    n_eval = min(n_eval, config.eval.max_cases)
  _log(f"evaluating the final state (step {int(state.step)}) on the {config.eval.split} split "
       f"({n_eval} of {len(data.val_source)} cases, mode {config.eval.mode})")
  return evaluate_lib.evaluate(method, state, data.val_source, config,
                               out_dir=workdir / "eval" / config.eval.split, split=config.eval.split,
                               checkpoint_step=int(state.step), max_cases=config.eval.max_cases)


def _checked(scalars: dict, step: int, workdir) -> dict:
  scalars = {k: float(v) for k, v in scalars.items()}
  bad = {k: v for k, v in scalars.items() if not np.isfinite(v)}
  if bad:
    raise NonFiniteLossError(
        f"step {step}: non-finite training values {bad}; the run is stopped and no checkpoint of "
        f"this state is written. The last good checkpoint is in {workdir / 'checkpoints'}. "
        "Lower the learning rate, check the data for extreme intensities, or use float32 compute.")
  return scalars


def environment_record() -> dict:
  """Versions, devices and the git commit, so a result can be traced to what produced it."""
  import flax
  import optax
  repo = pathlib.Path(__file__).resolve().parents[1]
  try:
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                         text=True, timeout=10).stdout.strip() or None
    dirty = bool(subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10).stdout.strip())
  except (OSError, subprocess.SubprocessError):
    sha, dirty = None, None
  return {
      "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
      "argv": sys.argv,
      "host": socket.gethostname(),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else None,
      "flax": flax.__version__,
      "optax": optax.__version__,
      "orbax": getattr(ocp, "__version__", None),
      "grain": getattr(grain, "__version__", None),
      "numpy": np.__version__,
      "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()],
      "process_count": jax.process_count(),
      "git_sha": sha,
      "git_dirty": dirty,
  }


def _log(msg: str) -> None:
  if jax.process_index() == 0:
    print(f"[jaxseg] {msg}", flush=True)
