"""Which checkpoint an evaluation uses, and how a run keeps its best-on-validation state.

Checkpoint policy (docs/design.md "Evaluation modes"):
  * `final` (the default): the latest step in `<workdir>/checkpoints` (orbax items 'state' + 'data').
  * `best_val`: `<workdir>/checkpoints_best`, one orbax checkpoint (item 'state') kept by
    `best_fn` = the mean validation Dice of the periodic validation in jaxseg/train.py. The file
    `<workdir>/checkpoints_best/selection.json` records the split and metric it was chosen on.
The test split never chooses anything: only the validation split feeds `save_best`, and
`resolve_choice` refuses any choice named after another split.
"""

import json
import math
import pathlib

import jax
import orbax.checkpoint as ocp

from jaxseg import io_utils

FINAL_DIR = "checkpoints"
BEST_DIR = "checkpoints_best"
SELECTION_FILE = "selection.json"
CHOICES = ("final", "best_val")
# The key under which save_best records the selection metric in the orbax checkpoint metadata.
BEST_METRIC = "val_dice"


class CheckpointError(ValueError):
  pass


def resolve_choice(choice: str) -> str:
  """Validates a `--checkpoint` value; a choice that would select by anything but validation is refused."""
  if choice in CHOICES:
    return choice
  if choice.startswith("best_"):
    raise CheckpointError(
      f"--checkpoint {choice}: checkpoints are only ever selected on the validation split "
      "(best_val); selecting by test (or any other split's) metrics is refused, because it would "
      "report an optimistically biased test score"
    )
  raise CheckpointError(f"--checkpoint {choice!r}: must be one of {list(CHOICES)}")


def _score(metrics) -> float:
  value = float(metrics[BEST_METRIC])
  # A validation with no scorable case (clean mode, NaN mean) must never win.
  return value if math.isfinite(value) else -math.inf


def best_manager(workdir, create: bool = True) -> ocp.CheckpointManager:
  """The best-on-validation manager at `<workdir>/checkpoints_best` (keeps one checkpoint)."""
  return ocp.CheckpointManager(
    pathlib.Path(workdir).resolve() / BEST_DIR,
    options=ocp.CheckpointManagerOptions(
      max_to_keep=1,
      best_fn=_score,
      best_mode="max",
      keep_checkpoints_without_metrics=False,
      create=create,
    ),
  )


def best_score(manager: ocp.CheckpointManager) -> float:
  """The kept checkpoint's validation Dice, -inf when none is kept yet (e.g. on resume)."""
  step = manager.best_step()
  if step is None:
    return -math.inf
  metrics = manager.metrics(step)
  return _score(metrics) if metrics else -math.inf


def save_best(
  manager: ocp.CheckpointManager,
  step: int,
  state,
  val_dice: float,
  split: str,
  mode: str,
  n_cases: int,
) -> bool:
  """Saves `state` as the best checkpoint if `val_dice` beats the kept one. Returns whether it did.

  Only the training loop's validation calls this; `split` must be 'val'.
  """
  if split != "val":
    raise CheckpointError(
      f"save_best: checkpoints are selected on the validation split only, got split={split!r}"
    )
  if not _score({BEST_METRIC: val_dice}) > best_score(manager):
    return False
  manager.save(
    step,
    args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
    metrics={BEST_METRIC: float(val_dice)},
  )
  manager.wait_until_finished()
  if jax.process_index() == 0:  # every process saves its shards; process 0 writes the record
    io_utils.write_json(
      pathlib.Path(manager.directory) / SELECTION_FILE,
      {
        "split": split,
        "metric": "dice",
        "mode": mode,
        "n_cases": n_cases,
        "step": int(step),
        "value": float(val_dice),
      },
    )
  return True


def restore(workdir, choice: str, abstract_state) -> tuple[object, int]:
  """Restores the chosen checkpoint's TrainState. Returns (state, step).

  Args:
    workdir: the run directory.
    choice: 'final' or 'best_val' (see resolve_choice).
    abstract_state: a TrainState of the right structure (e.g. `method.init(...)`); only its shapes and
      dtypes are used.
  """
  choice = resolve_choice(choice)
  workdir = pathlib.Path(workdir).resolve()
  folder = workdir / (FINAL_DIR if choice == "final" else BEST_DIR)
  if not folder.is_dir():
    hint = (
      "the run saved no best-on-validation checkpoint: train with config.eval.every_steps > 0"
      if choice == "best_val"
      else "has this run trained yet?"
    )
    raise CheckpointError(f"{folder}: no checkpoint folder ({hint})")
  if choice == "final":
    manager = ocp.CheckpointManager(folder, options=ocp.CheckpointManagerOptions(create=False))
    step = manager.latest_step()
  else:
    manager = best_manager(workdir, create=False)
    step = manager.best_step()
    selection = read_selection(workdir)
    if selection.get("split") != "val":
      raise CheckpointError(
        f"{folder / SELECTION_FILE}: the checkpoint was not selected on the "
        f"validation split ({selection}); refusing to use it"
      )
  if step is None:
    raise CheckpointError(f"{folder}: holds no complete checkpoint")
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
  restored = manager.restore(
    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
  )
  manager.close()
  return restored["state"], int(step)


def read_selection(workdir) -> dict:
  path = pathlib.Path(workdir) / BEST_DIR / SELECTION_FILE
  try:
    return json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{path}: cannot read the best-checkpoint record ({e})") from e
