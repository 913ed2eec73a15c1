"""THE training loop, for every method: data -> jitted step -> logs -> periodic eval ->
checkpoint / resume -> final evaluation.

Re-running the same command on the same workdir resumes from the last checkpoint (orbax, state +
data iterator), so a killed run loses nothing that was checkpointed and ends as if it had never
stopped. A checkpoint that cannot be restored (cut by a kill or a full disk, corrupted) is moved to
`<workdir>/checkpoints_corrupt/` with a warning and the one before it is used. SIGTERM saves a
checkpoint at the current step and ends the run with exit status 0. One run at a time holds a
workdir (`io_utils.RunDir`); a run that fails before its first step leaves it as it was. With
`config.runs` N > 1 the loop trains N replicas (seeds seed..seed+N-1) at once, each writing its
results to `<workdir>/run<k>/` (jaxseg/runs.py).
"""

import errno
import json
import os
import pathlib
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from clu import metrics as clu_metrics
from clu import parameter_overview

from jaxseg import checkpoints as checkpoints_lib
from jaxseg import config_check
from jaxseg import errors
from jaxseg import evaluation
from jaxseg import io_utils
from jaxseg import methods
from jaxseg import parallel
from jaxseg import runs as runs_lib
from jaxseg import writers
from jaxseg.data.builder import build_datasets
from jaxseg.methods import base as methods_base

# Fault injection for the fault tests (tests/test_train.py, tests/test_faults.py), each set to a step:
# SIGKILL once that step's checkpoint is complete; SIGKILL while that step's checkpoint is being
# written (orbax commits it in a background thread); a SIGTERM to itself after that step.
_FAULT_ENV = "JAXSEG_FAULT_KILL_AT_STEP"
_FAULT_KILL_IN_SAVE_ENV = "JAXSEG_FAULT_KILL_IN_SAVE_AT_STEP"
_FAULT_TERM_ENV = "JAXSEG_FAULT_TERM_AT_STEP"
CORRUPT_DIR = "checkpoints_corrupt"


class NonFiniteLossError(errors.UserError, FloatingPointError):
  pass


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict | list[dict] | None:
  """Train `config.method` for `config.total_steps`, then evaluate the final state on the
  validation split.

  Returns:
    The evaluation summary (also in `<workdir>/eval/<split>/summary.json`); with `config.runs` > 1
    the list of the replicas' summaries (`<workdir>/run<k>/eval/<split>/summary.json`); None when a
    SIGTERM stopped the run (a checkpoint at the current step is saved; the same call resumes).

  Raises:
    errors.UserError: bad config or data, a workdir in use, holding another config or a finished
      run of fewer steps (all before the first step, leaving the workdir as it was); a non-finite
      loss or a failed write later on.
  """
  config_check.validate(config)
  profile_window(config.profile_steps, config.total_steps)  # a bad value fails before any work
  workdir = pathlib.Path(workdir).resolve()
  enable_compile_cache(config.compile_cache)
  parallel.maybe_initialize_distributed()
  with io_utils.RunDir(workdir, jax.process_index()) as run:
    return _train(config, workdir, run)


def _train(config: ml_collections.ConfigDict, workdir: pathlib.Path, run: io_utils.RunDir):
  """train_and_evaluate inside the held workdir; `run.started()` marks the first step."""
  is_main = jax.process_index() == 0
  check_workdir_config(config, workdir)
  mesh = parallel.mesh_for(config)
  # Each process loads only the rows of the global batch its devices hold (one process: all).
  rows = parallel.process_rows(mesh, config.batch_size)
  data = build_datasets(config, workdir, rows)
  # Every case is read and checked now, so bad data stops the run before its first step; labeled
  # training cases and validation cases are ground truth and must hold foreground.
  data.train_source.check_all(range(len(data.splits["labeled"])))
  data.val_source.check_all(range(len(data.val_source)))
  method = methods.build(config)
  layout = runs_lib.Runs(config, workdir)
  iterator = layout.iterator(config, data, mesh)

  state = layout.init(method, methods_base.example_batch(config, method.host_targets))
  first_params = layout.replicas(state.params)[0]  # host numpy: printed for a fresh run

  ckpt = ocp.CheckpointManager(
    workdir / "checkpoints",
    options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True),
  )
  # Best-on-validation state (checkpoints.py): only the periodic validation on the val split
  # feeds it; the final checkpoint above stays the default for evaluation.
  best_ckpts = [
    checkpoints_lib.best_manager(d) if config.eval.every_steps else None for d in layout.dirs
  ]
  # On the mesh before a restore, so that orbax restores into the mesh's shardings: with several
  # processes a restored host-local state could not be moved onto the global mesh.
  state = layout.put_state(state, mesh)
  if ckpt.all_steps():
    state = restore_latest(ckpt, state, iterator, workdir)
    _log(f"resumed from {workdir / 'checkpoints'} at step {_step_of(state)}")
  start = _step_of(state)
  total = config.total_steps
  if start == 0 and jax.process_index() == 0:
    print(parameter_overview.get_parameter_overview(first_params, include_stats=False), flush=True)

  summary_paths = [d / "eval" / config.eval.split / "summary.json" for d in layout.dirs]
  if start >= total and all(p.exists() for p in summary_paths):
    summaries = [json.loads(p.read_text()) for p in summary_paths]
    for path, summary in zip(summary_paths, summaries):
      _log(f"run already finished; its evaluation ({path}):")
      print(evaluation.format_table(summary), flush=True)
    return summaries[0] if layout.n == 1 else summaries

  phases = methods_base.phases_of(method)
  # Each phase's step is compiled once, on first use; `enter` runs once at the phase's first step
  # (a checkpoint taken at a phase boundary predates it, so a resume there re-enters correctly).
  step_fns = {p.name: layout.jit(p.train_step, mesh) for p in phases}
  if is_main:
    io_utils.write_json(workdir / "config.json", config.to_dict())
    io_utils.write_json(workdir / "env.json", environment_record())
  run.started()
  # Process 0 alone writes the run's logs and results (the others compute the same values).
  metric_writers = [
    writers.MetricWriter(d, resume_step=start) if is_main else writers.NullWriter()
    for d in layout.dirs
  ]
  progress = writers.Progress(total, start, stream=sys.stdout if is_main else None)
  fault = {
    env: int(os.environ.get(env, "-1"))
    for env in (_FAULT_ENV, _FAULT_KILL_IN_SAVE_ENV, _FAULT_TERM_ENV)
  }
  _log(
    f"training {config.method} on {config.data.name}: steps {start}->{total}, batch "
    f"{config.batch_size} on {mesh.devices.size} {jax.devices()[0].platform} device(s) as "
    f"{parallel.describe(mesh)} (mesh.shape={config.mesh.shape!r}), workdir {workdir}"
    + (f", {layout.n} runs (seeds {layout.seeds[0]}..{layout.seeds[-1]})" if layout.n > 1 else "")
  )

  with _TermFlag() as term, _Profiler(config, workdir, start) as profiler:
    stopped = _loop(
      config,
      method,
      data,
      layout,
      iterator,
      mesh,
      phases,
      step_fns,
      ckpt,
      best_ckpts,
      metric_writers,
      progress,
      state,
      start,
      fault,
      term,
      profiler,
      workdir,
    )
  _wait(ckpt, workdir)
  for best_ckpt in best_ckpts:
    if best_ckpt is not None:
      _wait(best_ckpt, workdir)
  for writer in metric_writers:
    writer.close()
  if stopped is None:
    return None
  state = stopped

  n_eval = len(data.val_source)
  if config.eval.max_cases:  # a short check on real data; the summary's n_cases says so
    n_eval = min(n_eval, config.eval.max_cases)
  summaries = []
  for k, (replica, out) in enumerate(zip(layout.replica_states(state, mesh), layout.dirs)):
    _log(
      f"{layout.tag(k)}evaluating the final state (step {total}) on the {config.eval.split} "
      f"split ({n_eval} of {len(data.val_source)} cases, mode {config.eval.mode})"
    )
    summary = evaluation.evaluate(
      method,
      replica,
      data.val_source,
      config,
      out_dir=out / "eval" / config.eval.split,
      split=config.eval.split,
      checkpoint_step=total,
      max_cases=config.eval.max_cases,
      mesh=mesh,
    )
    summaries.append(summary)
  return summaries[0] if layout.n == 1 else summaries


def _loop(
  config,
  method,
  data,
  layout: runs_lib.Runs,
  iterator,
  mesh,
  phases,
  step_fns,
  ckpt,
  best_ckpts: list,
  metric_writers: list,
  progress,
  state,
  start: int,
  fault: dict,
  term: "_TermFlag",
  profiler: "_Profiler",
  workdir: pathlib.Path,
):
  """Steps `start`..`config.total_steps`. Returns the final state, or None when a SIGTERM stopped
  the run after checkpointing the current step."""
  total = config.total_steps
  window = {}  # name -> clu Average of that step metric since the last log line ([N] with runs)
  for step in range(start, total):
    phase = methods_base.phase_at(phases, step)
    if len(phases) > 1 and (step == phase.start or step == start):
      _log(f"phase {phase.name!r} from step {step}")
    if step == phase.start and phase.enter is not None:
      state = layout.jit(phase.enter, mesh)(state)
    profiler.before(step)
    batch = layout.put_batch(next(iterator), mesh)
    state, metrics = step_fns[phase.name](state, batch)
    done = step + 1
    profiler.after(done, state)
    if step == start:
      jax.block_until_ready(state)
      progress.start_timing(done)
    _accumulate(window, metrics)
    if done % config.log_every_steps == 0 or done == total:
      computed = parallel.to_host({k: a.compute() for k, a in window.items()})
      scalars = [_checked(r, done, workdir) for r in layout.replicas(computed)]
      window.clear()
      for writer, values in zip(metric_writers, scalars):
        writer.write(done, values)
      progress.report(done, scalars[0] if layout.n == 1 else _per_run(scalars))
    every = config.eval.every_steps
    if every and (done % every == 0 or done == total):
      for k, replica in enumerate(layout.replica_states(state, mesh)):
        val = evaluation.evaluate(
          method,
          replica,
          data.val_source,
          config,
          stream=None,
          max_cases=config.eval.max_cases,
          mesh=mesh,
        )
        metric_writers[k].write(done, {f"val_{m}": val[m] for m in evaluation.METRIC_NAMES})
        improved = checkpoints_lib.save_best(
          best_ckpts[k],
          done,
          replica,
          val["dice"],
          split="val",
          mode=val["mode"],
          n_cases=val["n_cases"],
        )
        _log(
          f"{layout.tag(k)}validation at step {done}: dice={val['dice']:.4f} "
          f"hd95={val['hd95']:.2f}" + (" (new best, saved)" if improved else "")
        )
    if done == fault[_FAULT_TERM_ENV]:
      os.kill(os.getpid(), signal.SIGTERM)  # the handler sets term.requested before this returns
    # Read once: a signal arriving below waits for the next step. Every process stops at the same
    # step when any one was signalled (each checkpoint is one collective save).
    stop = parallel.any_process(term.requested)
    if stop or done % config.checkpoint_every_steps == 0 or done == total:
      for loss in layout.replicas(parallel.to_host(metrics["loss"])):
        _checked({"loss": loss}, done, workdir)
      _save(ckpt, done, state, iterator, workdir)
    if done == fault[_FAULT_KILL_IN_SAVE_ENV]:
      os.kill(os.getpid(), signal.SIGKILL)
    if done == fault[_FAULT_ENV]:
      _wait(ckpt, workdir)
      os.kill(os.getpid(), signal.SIGKILL)
    if stop:
      _wait(ckpt, workdir)
      _log(
        f"SIGTERM: stopped after step {done}, checkpoint saved in {workdir / 'checkpoints'}; "
        "rerun the same command to resume"
      )
      return None
  return state


COMPILE_CACHE_DEFAULT = pathlib.Path("~/.cache/jaxseg/xla")


def enable_compile_cache(setting: str) -> None:
  """JAX's persistent compilation cache, so that a resume or the next run of a sweep loads its
  compiled steps instead of compiling them again. Set before the first compilation (jax reads the
  folder once).

  Args:
    setting: `config.compile_cache`: 'auto' (the folder $JAX_COMPILATION_CACHE_DIR names, as the
      tests set it, else ~/.cache/jaxseg/xla), a folder, or '' (off).
  """
  if not setting:
    jax.config.update("jax_enable_compilation_cache", False)
    return
  if setting == "auto":
    if jax.config.jax_compilation_cache_dir:
      return
    setting = COMPILE_CACHE_DEFAULT
  jax.config.update("jax_compilation_cache_dir", str(pathlib.Path(setting).expanduser()))


def profile_window(spec: str, total_steps: int) -> tuple[int, int] | None:
  """`config.profile_steps` 'START:END' -> (START, END): trace the steps START..END-1 (0-based,
  END <= total_steps); '' -> None.

  Raises:
    errors.ConfigError: not two integers 0 <= START < END <= total_steps.
  """
  if not spec:
    return None
  first, sep, last = spec.partition(":")
  try:
    window = (int(first), int(last)) if sep else None
  except ValueError:
    window = None
  if window is None or not 0 <= window[0] < window[1] <= total_steps:
    raise errors.ConfigError(
      f"invalid config: profile_steps={spec!r}: expected START:END with "
      f"0 <= START < END <= total_steps={total_steps} (e.g. '10:15')"
    )
  return window


class _Profiler:
  """A jax.profiler trace of the `config.profile_steps` window in `<workdir>/profile` (TensorBoard's
  profile tab opens it: `tensorboard --logdir <workdir>/profile`). A resumed run traces what is left
  of the window; the trace stops after the window's last step has finished on the device."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: pathlib.Path, start: int):
    self.window = profile_window(config.profile_steps, config.total_steps)
    self.folder = workdir / "profile"
    self.active = False
    if self.window is not None:
      self.window = (max(self.window[0], start), self.window[1])

  def before(self, step: int) -> None:
    if self.window is not None and step == self.window[0] < self.window[1]:
      jax.profiler.start_trace(str(self.folder))
      self.active = True

  def after(self, done: int, state) -> None:
    if self.active and done == self.window[1]:
      jax.block_until_ready(state)
      self._stop()

  def _stop(self) -> None:
    jax.profiler.stop_trace()
    self.active = False
    _log(f"profile of steps {self.window[0]}..{self.window[1] - 1} written to {self.folder}")

  def __enter__(self) -> "_Profiler":
    return self

  def __exit__(self, *exc) -> None:
    if self.active:  # a SIGTERM or an error inside the window: keep what was traced
      self._stop()


class _TermFlag:
  """While active, SIGTERM only sets `requested`; the loop checks it between steps, checkpoints the
  current step and returns (a scheduler's preemption notice becomes a clean stop, exit status 0).
  Outside the main thread (signal handlers cannot be set there) it stays inactive."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __enter__(self) -> "_TermFlag":
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _storage_failure(manager: ocp.CheckpointManager, e: Exception) -> errors.StorageError | None:
  """A StorageError when `e` (raised by orbax or tensorstore, which wrap the OSError in their own
  types) is a failed write, after removing the unfinished temporary checkpoint folders."""
  text = f"{e} {e.__cause__}"
  if not (isinstance(e, OSError) or "No space left" in text or "Errno" in text):
    return None
  folder = pathlib.Path(manager.directory)
  for tmp in folder.glob("*.orbax-checkpoint-tmp*"):
    shutil.rmtree(tmp, ignore_errors=True)
  hint = (
    "no space left on the device: free some space, then rerun the same command (it resumes "
    "from the last complete checkpoint)"
    if "No space left" in text or getattr(e, "errno", None) == errno.ENOSPC
    else text.strip()
  )
  return errors.StorageError(
    errno.ENOSPC,
    f"{folder}: cannot write a checkpoint ({hint}); the earlier checkpoints are intact",
  )


def _save(ckpt: ocp.CheckpointManager, step: int, state, iterator, workdir) -> None:
  try:
    ckpt.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(iterator)
      ),
    )
  except Exception as e:
    failure = _storage_failure(ckpt, e)
    if failure is None:
      raise
    raise failure from e


def _wait(manager: ocp.CheckpointManager, workdir) -> None:
  """Waits for orbax's background commit; a failed one raises (StorageError for a failed write)."""
  try:
    manager.wait_until_finished()
    manager.check_for_errors()
  except Exception as e:
    failure = _storage_failure(manager, e)
    if failure is None:
      raise
    raise failure from e


def restore_latest(ckpt: ocp.CheckpointManager, state, iterator, workdir: pathlib.Path):
  """The newest checkpoint of `ckpt` that restores, into `state`'s structure and `iterator`.

  A checkpoint that fails to restore (truncated or corrupted files) is moved to
  `<workdir>/checkpoints_corrupt/<step>` with a warning naming it, and the one before is tried:
  never a crash on a bad latest checkpoint, and never a silent restart from scratch.

  Raises:
    errors.RunStateError: no checkpoint restores.
  """
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  folder = pathlib.Path(ckpt.directory)
  for step in sorted(ckpt.all_steps(), reverse=True):
    try:
      restored = ckpt.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract),
          data=grain.checkpoint.CheckpointRestore(iterator),
        ),
      )
      return restored["state"]
    except Exception as e:  # orbax and tensorstore raise many types for unreadable files
      aside = workdir / CORRUPT_DIR / str(step)
      aside.parent.mkdir(exist_ok=True)
      shutil.rmtree(aside, ignore_errors=True)
      os.replace(folder / str(step), aside)
      ckpt.reload()
      reason = str(e).splitlines()[0][:200] if str(e) else ""
      _warn(
        f"checkpoint {folder / str(step)} cannot be restored ({type(e).__name__}: {reason}); "
        f"moved to {aside}, trying the one before"
      )
  raise errors.RunStateError(
    f"{folder}: no checkpoint can be restored (moved to {workdir / CORRUPT_DIR}); to start "
    "again from scratch use a new --workdir"
  )


# model.remat recomputes activations instead of storing them, same numbers: an out-of-memory run
# resumes with it switched on.
RUNTIME_FIELDS = ("mesh", "compile_cache", "profile_steps", "model.remat")


def check_workdir_config(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
  """A workdir resumes only the run it holds: its config.json must equal `config`, except in the
  fields that change where and how fast it runs, not its numbers (`RUNTIME_FIELDS`: a run may resume
  on another device count, or with a profile).

  Raises:
    errors.RunStateError: the workdir holds a finished run of fewer steps, or another config.
  """
  path = workdir / "config.json"
  if not path.exists():
    return
  try:
    stored = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise errors.RunStateError(f"{path}: unreadable ({e}); use another --workdir") from e
  current = json.loads(json.dumps(config.to_dict(), default=io_utils.jsonable))
  changed = sorted(
    k
    for k in _diff(stored, current)
    if k.split(".")[0] not in RUNTIME_FIELDS and k not in RUNTIME_FIELDS
  )
  if not changed:
    return
  summary = workdir / "eval" / config.eval.split / "summary.json"
  if changed == ["total_steps"] and summary.exists():
    raise errors.RunStateError(
      f"{workdir}: this run finished at total_steps={stored['total_steps']}; it is not extended "
      f"to total_steps={config.total_steps}: choose a new --workdir"
    )
  shown = ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
  raise errors.RunStateError(
    f"{workdir}: holds a run with another config (differs in {shown}); rerun with the same config "
    "to resume it, or choose a new --workdir"
  )


def _diff(a, b, prefix: str = "") -> list[str]:
  """The dotted keys whose values differ between two nested dicts."""
  if not (isinstance(a, dict) and isinstance(b, dict)):
    return [] if a == b else [prefix.rstrip(".") or "<config>"]
  return [
    k
    for key in sorted(set(a) | set(b))
    for k in _diff(a.get(key, _MISSING), b.get(key, _MISSING), f"{prefix}{key}.")
  ]


_MISSING = object()


def _warn(msg: str) -> None:
  if jax.process_index() == 0:
    print(f"[jaxseg] warning: {msg}", file=sys.stderr, flush=True)


def _accumulate(window: dict, metrics: dict) -> None:
  """Adds one step's scalar metrics to the running means of the current log window. Per name, so
  the phases of a run may log different metrics; on device, so no host sync per step. Metrics [N]
  of a runs axis keep one mean per replica."""
  for name, value in metrics.items():
    value = jnp.asarray(value, jnp.float32)
    average = clu_metrics.Average.from_model_output
    update = average(value) if value.ndim == 0 else jax.vmap(average)(value)
    window[name] = window[name].merge(update) if name in window else update


def _step_of(state) -> int:
  """The state's step (with a runs axis, every replica's: they step together)."""
  return int(np.ravel(parallel.to_host(state.step))[0])


def _per_run(scalars: list[dict]) -> dict:
  """The replicas' log values as one progress line: name -> [value of run 0, run 1, ...]."""
  return {k: [s[k] for s in scalars] for k in scalars[0]}


def _checked(scalars: dict, step: int, workdir) -> dict:
  scalars = {k: float(v) for k, v in scalars.items()}
  bad = {k: v for k, v in scalars.items() if not np.isfinite(v)}
  if bad:
    raise NonFiniteLossError(
      f"step {step}: non-finite training values {bad}; the run is stopped and no checkpoint of "
      f"this state is written. The last good checkpoint is in {workdir / 'checkpoints'}. "
      "Lower the learning rate, check the data for extreme intensities, or use float32 compute."
    )
  return scalars


def environment_record() -> dict:
  """Versions, devices and the git commit, so a result can be traced to what produced it."""
  import flax
  import optax

  repo = pathlib.Path(__file__).resolve().parents[1]
  try:
    sha = (
      subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
      ).stdout.strip()
      or None
    )
    dirty = bool(
      subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=10,
      ).stdout.strip()
    )
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
