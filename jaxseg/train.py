"""THE training loop, for every method: data -> jitted step -> logs -> periodic eval ->
checkpoint / resume -> final evaluation.

Re-running the same command on the same workdir resumes from the last checkpoint (orbax, state +
data iterator), so a killed run loses nothing that was checkpointed and ends as if it had never
stopped. A checkpoint that cannot be restored (cut by a kill or a full disk, corrupted) is moved to
`<workdir>/checkpoints_corrupt/` with a warning and the one before it is used. SIGTERM saves a
checkpoint at the current step and ends the run with exit status 0. One run at a time holds a
workdir (`io_utils.RunDir`); a run that fails before its first step leaves it as it was.
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict | None:
  """Train `config.method` for `config.total_steps`, then evaluate the final state on the
  validation split.

  Returns:
    The evaluation summary (also in `<workdir>/eval/<split>/summary.json`), or None when a SIGTERM
    stopped the run (a checkpoint at the current step is saved; the same call resumes).

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
  if jax.process_count() > 1:
    # Each host would need its own labeled-first slice of the global batch; until the pipeline
    # shards the two streams per host, refuse rather than feed every host the same examples.
    raise ValueError(
      f"{jax.process_count()} processes: multi-host data feeding is not supported yet; "
      "run on one host (all its local devices are used)"
    )
  with io_utils.RunDir(workdir) as run:
    return _train(config, workdir, run)


def _train(config: ml_collections.ConfigDict, workdir: pathlib.Path, run: io_utils.RunDir):
  """train_and_evaluate inside the held workdir; `run.started()` marks the first step."""
  is_main = jax.process_index() == 0
  check_workdir_config(config, workdir)
  data = build_datasets(config, workdir)
  # Every case is read and checked now, so bad data stops the run before its first step; labeled
  # training cases and validation cases are ground truth and must hold foreground.
  data.train_source.check_all(range(len(data.splits["labeled"])))
  data.val_source.check_all(range(len(data.val_source)))
  method = methods.build(config)
  mesh = parallel.mesh_for(config)
  iterator = data.train_iterator

  state = method.init(
    jax.random.PRNGKey(config.seed), methods_base.example_batch(config, method.host_targets)
  )

  ckpt = ocp.CheckpointManager(
    workdir / "checkpoints",
    options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True),
  )
  # Best-on-validation state (checkpoints.py): only the periodic validation on the val split
  # feeds it; the final checkpoint above stays the default for evaluation.
  best_ckpt = checkpoints_lib.best_manager(workdir) if config.eval.every_steps else None
  if ckpt.all_steps():
    state = restore_latest(ckpt, state, iterator, workdir)
    _log(f"resumed from {workdir / 'checkpoints'} at step {int(state.step)}")
  start = int(state.step)
  total = config.total_steps
  if start == 0 and jax.process_index() == 0:
    print(parameter_overview.get_parameter_overview(state.params, include_stats=False), flush=True)

  summary_path = workdir / "eval" / config.eval.split / "summary.json"
  if start >= total and summary_path.exists():
    summary = json.loads(summary_path.read_text())
    _log(f"run already finished; its evaluation ({summary_path}):")
    print(evaluation.format_table(summary), flush=True)
    return summary

  state = parallel.put_replicated(state, mesh)
  phases = methods_base.phases_of(method)
  # Each phase's step is compiled once, on first use; `enter` runs once at the phase's first step
  # (a checkpoint taken at a phase boundary predates it, so a resume there re-enters correctly).
  step_fns = {p.name: jax.jit(p.train_step, donate_argnums=0) for p in phases}
  if is_main:
    io_utils.write_json(workdir / "config.json", config.to_dict())
    io_utils.write_json(workdir / "env.json", environment_record())
  run.started()
  writer = writers.MetricWriter(workdir, resume_step=start, enable_tensorboard=is_main)
  progress = writers.Progress(total, start)
  fault = {
    env: int(os.environ.get(env, "-1"))
    for env in (_FAULT_ENV, _FAULT_KILL_IN_SAVE_ENV, _FAULT_TERM_ENV)
  }
  _log(
    f"training {config.method} on {config.data.name}: steps {start}->{total}, batch "
    f"{config.batch_size} on {mesh.devices.size} {jax.devices()[0].platform} device(s) as "
    f"{parallel.describe(mesh)} (mesh.shape={config.mesh.shape!r}), workdir {workdir}"
  )

  with _TermFlag() as term, _Profiler(config, workdir, start) as profiler:
    stopped = _loop(
      config,
      method,
      data,
      mesh,
      phases,
      step_fns,
      ckpt,
      best_ckpt,
      writer,
      progress,
      state,
      start,
      fault,
      term,
      profiler,
      workdir,
    )
  _wait(ckpt, workdir)
  if best_ckpt is not None:
    _wait(best_ckpt, workdir)
  writer.close()
  if stopped is None:
    return None
  state = stopped

  n_eval = len(data.val_source)
  if config.eval.max_cases:  # a short check on real data; the summary's n_cases says so
    n_eval = min(n_eval, config.eval.max_cases)
  _log(
    f"evaluating the final state (step {int(state.step)}) on the {config.eval.split} split "
    f"({n_eval} of {len(data.val_source)} cases, mode {config.eval.mode})"
  )
  return evaluation.evaluate(
    method,
    state,
    data.val_source,
    config,
    out_dir=workdir / "eval" / config.eval.split,
    split=config.eval.split,
    checkpoint_step=int(state.step),
    max_cases=config.eval.max_cases,
    mesh=mesh,
  )


def _loop(
  config,
  method,
  data,
  mesh,
  phases,
  step_fns,
  ckpt,
  best_ckpt,
  writer,
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
  iterator = data.train_iterator
  window = {}  # name -> clu Average of that step metric since the last log line
  for step in range(start, total):
    phase = methods_base.phase_at(phases, step)
    if len(phases) > 1 and (step == phase.start or step == start):
      _log(f"phase {phase.name!r} from step {step}")
    if step == phase.start and phase.enter is not None:
      state = jax.jit(phase.enter, donate_argnums=0)(state)
    profiler.before(step)
    batch = parallel.put_batch(next(iterator), mesh)
    state, metrics = step_fns[phase.name](state, batch)
    done = step + 1
    profiler.after(done, state)
    if step == start:
      jax.block_until_ready(state)
      progress.start_timing(done)
    _accumulate(window, metrics)
    if done % config.log_every_steps == 0 or done == total:
      scalars = _checked({k: a.compute() for k, a in window.items()}, done, workdir)
      window.clear()
      writer.write(done, scalars)
      progress.report(done, scalars)
    every = config.eval.every_steps
    if every and (done % every == 0 or done == total):
      val = evaluation.evaluate(
        method,
        state,
        data.val_source,
        config,
        stream=None,
        max_cases=config.eval.max_cases,
        mesh=mesh,
      )
      writer.write(done, {f"val_{k}": val[k] for k in evaluation.METRIC_NAMES})
      improved = checkpoints_lib.save_best(
        best_ckpt, done, state, val["dice"], split="val", mode=val["mode"], n_cases=val["n_cases"]
      )
      _log(
        f"validation at step {done}: dice={val['dice']:.4f} hd95={val['hd95']:.2f}"
        + (" (new best, saved)" if improved else "")
      )
    if done == fault[_FAULT_TERM_ENV]:
      os.kill(os.getpid(), signal.SIGTERM)  # the handler sets term.requested before this returns
    stop = term.requested  # read once: a signal arriving below waits for the next step
    if stop or done % config.checkpoint_every_steps == 0 or done == total:
      _checked(jax.device_get({"loss": metrics["loss"]}), done, workdir)
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


RUNTIME_FIELDS = ("mesh", "compile_cache", "profile_steps")


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
  changed = sorted(k for k in _diff(stored, current) if k.split(".")[0] not in RUNTIME_FIELDS)
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
  the phases of a run may log different metrics; on device, so no host sync per step."""
  for name, value in metrics.items():
    update = clu_metrics.Average.from_model_output(jnp.asarray(value, jnp.float32))
    window[name] = window[name].merge(update) if name in window else update


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
