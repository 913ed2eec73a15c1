"""Evaluation of a state on a split: per-case CSV, summary JSON, and a printed table.

Two modes (docs/design.md "Evaluation modes"), named in every output:
  * parity (what published numbers mean; upstream yulequan/UA-MT code/test_util.py `test_all_case`):
    stride sliding window with count-averaged softmax, argmax, medpy dc / jc / hd95 / asd in voxels, an
    empty prediction scored (0, 0, 0, 0).
  * clean: MONAI-style gaussian-blended sliding window (`eval.overlap`, `eval.sigma_scale`), optional
    largest-connected-component post-processing per class (`eval.largest_cc`), distances in mm from
    `data.spacing`, hd95 = max of the two directed 95th percentiles, symmetric ASSD (column `asd`), NaN
    for undefined metrics (jaxseg/metrics.py `clean_case_metrics`); summary means ignore NaN and report
    the count per metric in `n_nan`.

Where results go (never overwriting the training-time result):
  * training (jaxseg/train.py) writes `<workdir>/eval/<split>/{cases.csv,summary.json}`: the final state in
    `config.eval.mode` (the contract every run fulfils);
  * `evaluate_workdir` (the command `python -m jaxseg.evaluate`) writes
    `<workdir>/eval/<split>/<variant>/`, variant = `<mode>[_lcc][_best_val]` (`_lcc`: clean mode with
    largest-component post-processing; `_best_val`: the best-on-validation checkpoint), plus
    `predictions/<case>.npz` (key `pred`, uint8 label map [D, H, W]) with save_predictions. Re-running
    the same variant replaces it; the summary records every setting.
"""

import functools
import json
import math
import pathlib
import sys
import time
import warnings
import weakref

import jax
import ml_collections
import numpy as np

from jaxseg import inference
from jaxseg import io_utils
from jaxseg import metrics
from jaxseg import postprocess

METRIC_NAMES = ("dice", "jaccard", "hd95", "asd")
MODES = ("parity", "clean")
PREDICTIONS_DIR = "predictions"


# One jitted predict per method object: `jax.jit(method.predict)` made anew per call would compile
# again at every periodic validation (a fresh bound method is a fresh cache key).
_PREDICT = weakref.WeakKeyDictionary()


def _jitted_predict(method):
  if method not in _PREDICT:
    _PREDICT[method] = jax.jit(method.predict)
  return _PREDICT[method]


# Likewise one on-device sliding window per (method, classes, window batch, mesh).
_WINDOWS = weakref.WeakKeyDictionary()


def _device_windows(method, num_classes: int, batch_size: int, mesh) -> inference.DeviceWindows:
  per_method = _WINDOWS.setdefault(method, {})
  key = (num_classes, batch_size, mesh)
  if key not in per_method:
    per_method[key] = inference.DeviceWindows(method.predict, num_classes, batch_size, mesh)
  return per_method[key]


def evaluate(
  method,
  state,
  source,
  config,
  out_dir=None,
  split: str = "val",
  checkpoint_step: int | None = None,
  max_cases: int = 0,
  stream=sys.stdout,
  checkpoint: str = "final",
  save_predictions: bool | None = None,
  mesh=None,
) -> dict:
  """Evaluate `method.predict` under `state` on every case of `source` (a random-access source).

  `config.eval.mode` picks the mode (module docstring). Returns the summary dict; when `out_dir` is
  given writes `cases.csv` and `summary.json` there, and with `save_predictions` (default:
  `config.eval.save_predictions` when `out_dir` is given) each case's label map as
  `out_dir/predictions/<case>.npz`.

  3D volumes run the sliding window on the device (`inference.DeviceWindows`: one jitted program
  per volume, its window batches sharded over every device of `mesh`; without a mesh, on one
  device), with the host loop's numbers; 2D networks run slice by slice through `predict_case`.

  In a multi-process run every process calls this alike (the sliding window is one program over
  the global mesh, so each process computes every case's metrics); process 0 alone prints and
  writes.
  """
  writes = jax.process_index() == 0
  stream = stream if writes else None
  mode = config.eval.mode
  if mode not in MODES:
    raise ValueError(f"eval.mode={mode!r}: must be one of {MODES}")
  if save_predictions is None:  # the config's choice applies to results written to disk
    save_predictions = out_dir is not None and bool(config.eval.get("save_predictions", False))
  if save_predictions and out_dir is None:
    raise ValueError("evaluate: save_predictions needs an out_dir")
  num_classes = config.data.num_classes
  if len(config.data.patch_size) == 3:
    windows = _device_windows(method, num_classes, config.eval.batch_size, mesh)
    state = windows.put(state)
    label_map_of = lambda image: predict_case_on_device(windows, state, image, config)  # noqa: E731
  else:
    state = jax.device_put(jax.device_get(state), jax.local_devices()[0])
    predict = _jitted_predict(method)
    prob_fn = lambda w: predict(state, w)  # noqa: E731
    label_map_of = lambda image: predict_case(prob_fn, image, config)  # noqa: E731
  settings = mode_settings(config)
  n = len(source) if not max_cases else min(max_cases, len(source))
  rows, t0 = [], time.time()
  for i in range(n):
    example = source[i]
    label_map = label_map_of(np.asarray(example["image"], np.float32))
    row = {"case": example["case"]}
    row.update(
      _case_metrics(
        label_map,
        np.asarray(example["label"]),
        num_classes,
        mode=mode,
        spacing=settings.get("spacing_mm"),
      )
    )
    rows.append(row)
    if save_predictions and writes:
      _save_prediction(
        pathlib.Path(out_dir) / PREDICTIONS_DIR / f"{example['case']}.npz", label_map
      )
    if stream is not None:
      _progress(
        stream, f"eval {split} ({mode})", i + 1, n, f"{row['case']} dice={row['dice']:.4f}", t0
      )
  summary = summarize(
    rows,
    mode=mode,
    split=split,
    checkpoint=checkpoint,
    checkpoint_step=checkpoint_step,
    method=config.method,
    **settings,
  )
  if out_dir is not None and writes:
    out_dir = pathlib.Path(out_dir)
    fields = ["case"] + [k for k in rows[0] if k != "case"] if rows else ["case"]
    io_utils.write_csv(out_dir / "cases.csv", rows, fields)
    io_utils.write_json(out_dir / "summary.json", summary)
  if stream is not None:
    print(format_table(summary), file=stream, flush=True)
  return summary


def mode_settings(config) -> dict:
  """The settings that define the mode's numbers, recorded in the summary."""
  e = config.eval
  if len(config.data.patch_size) == 2 and e.mode == "parity":  # 2D networks (predict_case)
    return {
      "units": "voxel",
      "asd": "directed (prediction -> reference), medpy",
      "inference": f"slice-wise, nearest zoom to {tuple(config.data.patch_size)} and back",
      "largest_cc": bool(e.get("largest_cc", False)),
    }
  if e.mode == "parity":
    return {
      "units": "voxel",
      "asd": "directed (prediction -> reference), medpy",
      "stride_xy": int(e.stride_xy),
      "stride_z": int(e.stride_z),
      "largest_cc": bool(e.get("largest_cc", False)),
    }
  if config.data.get("spacing") is None:  # a config saved before data.spacing existed
    units, spacing = "voxel (config has no data.spacing)", None
  else:
    units, spacing = "mm", [float(s) for s in config.data.spacing]
  return {
    "units": units,
    "asd": "symmetric (ASSD, pooled distances)",
    "spacing_mm": spacing,
    "overlap": float(e.get("overlap", 0.5)),
    "sigma_scale": float(e.get("sigma_scale", 0.125)),
    "largest_cc": bool(e.get("largest_cc", False)),
  }


def predict_case(prob_fn, image: np.ndarray, config) -> np.ndarray:
  """int64 label map [D, H, W] of one volume [D, H, W] under `config.eval.mode`.

  A 2D `data.patch_size` (ph, pw) means a 2D network: `inference.predict_volume_slicewise` (SSL4MIS
  `test_single_volume`: nearest zoom of each slice to the patch size and back) in both modes.

  `eval.largest_cc` keeps each class's largest connected component (full connectivity). In parity
  mode it is the method's own test rule (DTC, BCP, CML, DyCON: `--nms 1` in their test scripts); in
  clean mode an option.
  """
  e, d = config.eval, config.data
  if len(d.patch_size) == 2:
    # A 2D network (ACDC): slice by slice at the training size, the upstream rule in either mode.
    label_map, _ = inference.predict_volume_slicewise(
      prob_fn, image, tuple(d.patch_size), d.num_classes, batch_size=e.batch_size
    )
  elif e.mode == "parity":
    label_map, _ = inference.sliding_window_parity(
      prob_fn,
      image,
      tuple(d.patch_size),
      e.stride_xy,
      e.stride_z,
      d.num_classes,
      batch_size=e.batch_size,
    )
  else:
    label_map, _ = inference.sliding_window_gaussian(
      prob_fn,
      image,
      tuple(d.patch_size),
      d.num_classes,
      overlap=float(e.get("overlap", 0.5)),
      sigma_scale=float(e.get("sigma_scale", 0.125)),
      batch_size=e.batch_size,
    )
  return _postprocess(label_map, config)


def predict_case_on_device(
  windows: inference.DeviceWindows, state, image: np.ndarray, config
) -> np.ndarray:
  """`predict_case` of a 3D volume [D, H, W] by the on-device sliding window `windows` under
  `state` (placed by `windows.put`)."""
  e, d = config.eval, config.data
  if e.mode == "parity":
    grid = functools.partial(inference.parity_grid, stride_xy=e.stride_xy, stride_z=e.stride_z)
  else:
    grid = functools.partial(
      inference.gaussian_grid,
      overlap=float(e.get("overlap", 0.5)),
      sigma_scale=float(e.get("sigma_scale", 0.125)),
    )
  label_map, _ = windows(state, image, tuple(d.patch_size), grid)
  return _postprocess(label_map, config)


def _postprocess(label_map: np.ndarray, config) -> np.ndarray:
  if config.eval.get("largest_cc", False):
    label_map = postprocess.largest_component_per_class_np(label_map, config.data.num_classes)
  return label_map


def _case_metrics(
  pred: np.ndarray, gt: np.ndarray, num_classes: int, mode: str = "parity", spacing=None
) -> dict:
  """Binary: the foreground's metrics. Multi-class: per class c >= 1 and their mean.

  Parity: `metrics.parity_case_metrics` (voxels, plain mean over classes). Clean:
  `metrics.clean_case_metrics` in the units of `spacing`; a case's class mean ignores NaN classes
  (NaN only when every class is).
  """
  if mode == "parity":
    case_fn = metrics.parity_case_metrics
  elif mode == "clean":
    case_fn = lambda p, g: metrics.clean_case_metrics(p, g, spacing)  # noqa: E731
  else:
    raise ValueError(f"mode={mode!r}: must be one of {MODES}")
  if num_classes == 2:
    return dict(zip(METRIC_NAMES, case_fn(pred == 1, gt == 1).tolist()))
  out, per = {}, []
  for c in range(1, num_classes):
    m = case_fn(pred == c, gt == c).tolist()
    per.append(m)
    out.update({f"{name}_class{c}": v for name, v in zip(METRIC_NAMES, m)})
  out.update(dict(zip(METRIC_NAMES, _nanmean(np.asarray(per, np.float64), axis=0).tolist())))
  return out


def _nanmean(x: np.ndarray, axis=None):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices are NaN, which is what we want
    return np.nanmean(x, axis=axis)


def summarize(rows: list[dict], **info) -> dict:
  """Mean and std (over cases, NaN ignored) of every numeric column, `n_nan` (NaN count per column),
  `n_cases`, plus `info`."""
  summary = dict(info)
  summary["n_cases"] = len(rows)
  keys = [k for k in (rows[0] if rows else {}) if k != "case"]
  n_nan = {}
  for k in keys:
    values = np.asarray([r[k] for r in rows], np.float64)
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)
      summary[k] = float(np.nanmean(values))
      summary[f"{k}_std"] = float(np.nanstd(values))
    n_nan[k] = int(np.count_nonzero(np.isnan(values)))
  summary["n_nan"] = n_nan
  return summary


def format_table(summary: dict) -> str:
  """A Markdown table of the mean +- std of the four metrics, naming the mode, split and checkpoint."""
  clean = summary.get("mode") == "clean"
  units = "mm" if summary.get("units") == "mm" else "vox"
  header = (
    f"| method | split | mode | checkpoint | n | Dice (%) | Jaccard (%) | 95HD ({units}) "
    f"| {'ASSD' if clean else 'ASD'} ({units}) |"
  )
  rule = "|---|---|---|---|---|---|---|---|---|"
  n_nan = summary.get("n_nan", {})

  def cell(k, scale):
    if k not in summary:
      return "-"
    text = (
      f"{scale * summary[k]:.2f} ± {scale * summary[k + '_std']:.2f}"
      if math.isfinite(summary[k])
      else "NaN"
    )
    return text + (f" ({n_nan[k]} NaN)" if n_nan.get(k) else "")

  ckpt = summary.get("checkpoint", "final")
  if summary.get("checkpoint_step") is not None:
    ckpt = f"{ckpt} (step {summary['checkpoint_step']})"
  line = (
    f"| {summary.get('method', '?')} | {summary.get('split', '?')} | {summary.get('mode', '?')} "
    f"| {ckpt} | {summary['n_cases']} | {cell('dice', 100)} | {cell('jaccard', 100)} "
    f"| {cell('hd95', 1)} | {cell('asd', 1)} |"
  )
  return "\n".join([header, rule, line])


def _save_prediction(path: pathlib.Path, label_map: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp.npz")
  np.savez_compressed(tmp, pred=np.asarray(label_map).astype(np.uint8))
  tmp.replace(path)


def _progress(stream, what: str, done: int, total: int, note: str, t0: float) -> None:
  """A text progress bar: redrawn in place on a terminal, one line per update otherwise."""
  width = 24
  filled = int(round(width * done / max(total, 1)))
  elapsed = time.time() - t0
  eta = elapsed / max(done, 1) * (total - done)
  text = (
    f"  {what} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {note} "
    f"({elapsed:.0f}s, ~{eta:.0f}s left)"
  )
  if getattr(stream, "isatty", lambda: False)():
    print("\r" + text, end="\n" if done == total else "", file=stream, flush=True)
  else:
    print(text, file=stream, flush=True)


# ------------------------------------------------------------------------------------------------------
# A finished (or partial) run's checkpoint, as `python -m jaxseg.evaluate` evaluates it.
# ------------------------------------------------------------------------------------------------------


def variant_name(mode: str, checkpoint: str, largest_cc: bool) -> str:
  """`<mode>[_lcc][_best_val]`: the subfolder of eval/<split>/ this command writes (module docstring)."""
  name = mode + ("_lcc" if mode == "clean" and largest_cc else "")
  return name + ("" if checkpoint == "final" else f"_{checkpoint}")


def load_run_config(workdir) -> ml_collections.ConfigDict:
  path = pathlib.Path(workdir) / "config.json"
  if not path.is_file():
    raise FileNotFoundError(
      f"{path}: not found; --workdir must be a run directory made by `python -m jaxseg.main`"
    )
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def test_list_path(config, workdir) -> pathlib.Path:
  """`<data root>/<the dataset's test list>` of the run in `workdir` (it may not exist)."""
  from jaxseg.data import builder
  from jaxseg.data import get_dataset

  root = builder.resolve_root(config, pathlib.Path(workdir))
  return root / get_dataset(config.data.name, config.data).test_list


def split_source(config, workdir, split: str):
  """The random-access source of `split`: 'val' from <workdir>/splits.json, 'test' from
  <data root>/test.list (held out: never part of the run's train or val ids)."""
  from jaxseg.data import builder
  from jaxseg.data import get_dataset
  from jaxseg.data import splits as splits_lib

  workdir = pathlib.Path(workdir)
  stored = splits_lib.read_splits(workdir / splits_lib.SPLITS_FILE)
  root = builder.resolve_root(config, workdir)
  if split == "val":
    ids = stored["val"]
  elif split == "test":
    list_path = test_list_path(config, workdir)
    if not list_path.is_file():
      raise FileNotFoundError(
        f"--split test: {list_path} not found. The test split is the data root's test list "
        f"(data root {root}); this dataset has none, so evaluate on --split val"
      )
    ids = get_dataset(config.data.name, config.data).read_list(list_path)
    seen = set(stored["train"]) | set(stored["val"])
    leaked = sorted(set(ids) & seen)
    if leaked:
      raise ValueError(
        f"{list_path}: test ids {leaked[:5]} (of {len(leaked)}) are also in the run's "
        f"train/val split ({workdir / splits_lib.SPLITS_FILE}); refusing to report "
        "them as test results"
      )
  else:
    raise ValueError(f"--split {split!r}: must be 'val' or 'test'")
  if not ids:
    raise ValueError(f"split {split!r} of {workdir} has no cases")
  return get_dataset(config.data.name, config.data).val_source(root, ids, config.data.num_classes)


def evaluate_workdir(
  workdir,
  split: str = "val",
  mode: str | None = None,
  checkpoint: str = "final",
  overlap: float | None = None,
  sigma_scale: float | None = None,
  largest_cc: bool = False,
  save_predictions: bool = False,
  max_cases: int = 0,
  batch_size: int | None = None,
  stream=sys.stdout,
  replica: int | None = None,
) -> tuple[dict, pathlib.Path]:
  """Evaluates a run's checkpoint (see the module docstring). Returns (summary, output folder).

  A runs job (`config.runs` N > 1, jaxseg/runs.py) is evaluated one replica at a time: `replica`
  k, or `workdir` given as the replica's folder `<job>/run<k>`. Its final state is slice k of the
  job's stacked checkpoint, its best one the replica's own `run<k>/checkpoints_best`; the results
  go to `<job>/run<k>/eval/<split>/<variant>/`."""
  from jaxseg import checkpoints as checkpoints_lib
  from jaxseg import config_check
  from jaxseg import methods
  from jaxseg import runs as runs_lib
  from jaxseg.methods import base as methods_base

  checkpoint = checkpoints_lib.resolve_choice(checkpoint)
  workdir = pathlib.Path(workdir).resolve()
  job = runs_lib.replica_of(workdir)
  if job is not None:
    if replica is not None and replica != job[1]:
      raise ValueError(f"--workdir {workdir} is replica {job[1]}, not --replica {replica}")
    workdir, replica = job
  config = load_run_config(workdir)
  n_runs = config.get("runs", 1)
  if n_runs > 1 and (replica is None or not 0 <= replica < n_runs):
    raise ValueError(
      f"{workdir / 'config.json'}: runs={n_runs}, a job of {n_runs} replicas in one checkpoint; "
      f"choose one: --replica K with K in 0..{n_runs - 1} (or --workdir {workdir}/run<K>)"
      + ("" if replica is None else f", not {replica}")
    )
  if n_runs == 1 and replica not in (None, 0):
    raise ValueError(f"--replica {replica}: {workdir} is a single run (runs=1), not a runs job")
  mode = mode or config.eval.mode
  if mode not in MODES:
    raise ValueError(f"--mode {mode!r}: must be one of {MODES}")
  if largest_cc and mode != "clean":
    raise ValueError(
      "largest_cc is a clean-mode option; parity mode applies the method's own rule "
      "(the run's config eval.largest_cc)"
    )
  with config.unlocked():
    config.eval.mode = mode
    if overlap is not None:
      config.eval.overlap = overlap
    if sigma_scale is not None:
      config.eval.sigma_scale = sigma_scale
    if mode == "clean":  # parity keeps the run's own rule
      config.eval.largest_cc = bool(largest_cc)
    if batch_size:
      config.eval.batch_size = batch_size
    if mode == "clean" and config.data.get("spacing") is None:
      print(
        f"[jaxseg.evaluate] {workdir / 'config.json'} has no data.spacing: clean-mode distances "
        "are in voxels",
        file=stream,
        flush=True,
      )
  layout = runs_lib.Runs(config, workdir)
  if n_runs > 1:  # evaluate replica k as the single run of seed + k it is
    with config.unlocked():
      config.runs, config.seed = 1, config.seed + replica
  config_check.validate(config)
  source = split_source(config, workdir, split)

  method = methods.build(config)
  template = method.init(
    jax.random.PRNGKey(config.seed), methods_base.example_batch(config, method.host_targets)
  )
  if n_runs == 1:
    state, step = checkpoints_lib.restore(workdir, checkpoint, template)
  elif checkpoint == "final":
    stacked = jax.tree.map(lambda x: np.broadcast_to(x, (n_runs, *np.shape(x))), template)
    state, step = checkpoints_lib.restore(workdir, checkpoint, stacked)
    state = layout.replicas(state)[replica]
  else:
    state, step = checkpoints_lib.restore(layout.dirs[replica], checkpoint, template)
  if checkpoint == "final" and step < config.total_steps:
    print(
      f"[jaxseg.evaluate] note: the run is not finished: latest checkpoint is step {step} of "
      f"{config.total_steps}",
      file=stream,
      flush=True,
    )

  out_dir = layout.dirs[replica or 0] / "eval" / split / variant_name(mode, checkpoint, largest_cc)
  print(
    f"[jaxseg.evaluate] mode={mode} split={split} ({len(source)} cases) checkpoint={checkpoint} "
    f"(step {step}) -> {out_dir}",
    file=stream,
    flush=True,
  )
  summary = evaluate(
    method,
    state,
    source,
    config,
    out_dir=out_dir,
    split=split,
    checkpoint_step=step,
    max_cases=max_cases,
    stream=stream,
    checkpoint=checkpoint,
    save_predictions=save_predictions,
  )
  return summary, out_dir
