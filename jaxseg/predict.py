r"""Segment new scans with a trained model: one NIfTI label map per scan, in the scan's geometry.

  python -m jaxseg.predict --workdir RUN --input FILE_OR_DIR --output DIR
      [--checkpoint final|best_val] [--mode parity|clean] [--batch_size N]
  python -m jaxseg.predict --config configs/brats_dycon.py --model unet3d_dycon \
      --torch_checkpoint unet_3D_best_model.pth --input DIR --output DIR [--model_kwargs JSON]

The run's ``config.json`` (or a config file ``FILE[:args]``) says everything: the dataset, whose
preparation the scan goes through (``SCAN_PREPARATIONS``: the intensity processing of
``python -m jaxseg.prepare <dataset>`` and the orientation the dataset's source feeds the network);
the method, whose ``predict`` gives the class probabilities; and the evaluation settings, under
which ``jaxseg.evaluation.predict_case`` runs the sliding window (or slice-wise) inference and the
method's test rule (``eval.largest_cc``: the largest connected component per class). Weights come
from the run's checkpoint, or from an upstream PyTorch state_dict through
``jaxseg.models.torch_import.import_state_dict``.

Inputs: a scan file or a folder of them (not searched recursively): NIfTI (``.nii``, ``.nii.gz``)
read with nibabel, MetaImage / NRRD (``.mha``, ``.mhd``, ``.nrrd``, ``.nhdr``) read with SimpleITK.
Arrays are taken in voxel index order (i, j, k), the order the prepared h5 files hold. Output:
``<output>/<scan>_seg.nii.gz``, uint8 labels on the scan's own voxel grid: the preparation's crop and
transpose are undone, and the file carries the scan's affine (NIfTI input: the same affine, qform
and sform; MetaImage / NRRD input: SimpleITK's NIfTI writer with the scan's origin, spacing and
direction).

Where the prepared data were cropped around the label (LA's crop box), a new scan has no label to
crop around: the network sees the whole volume, normalised as the preparation does before cropping.
"""

import argparse
import dataclasses
import json
import pathlib
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import nibabel as nib
import numpy as np

from jaxseg import checkpoints as checkpoints_lib
from jaxseg import config_check
from jaxseg import config_lib
from jaxseg import errors
from jaxseg import evaluation
from jaxseg import methods
from jaxseg.data import brats
from jaxseg.data import h5folder
from jaxseg.methods import base
from jaxseg.models import torch_import
from jaxseg.prepare import brats as prepare_brats
from jaxseg.prepare import common as prepare_common
from jaxseg.prepare import pancreas as prepare_pancreas
from jaxseg.prepare import promise12 as prepare_promise12

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
OUTPUT_SUFFIX = "_seg.nii.gz"


class PredictError(errors.UserError, ValueError):
  """A missing workdir, checkpoint or config, or an unreadable scan; the message names the file."""


# ---------------------------------------------------------------------------------------------
# Scans: reading and writing in the scan's own geometry.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Scan:
  """One input scan.

  Attributes:
    path: the file.
    array: [I, J, K] in voxel index order, in the stored dtype after the file's intensity
      scaling (as jaxseg/prepare reads raw files: BraTS's histogram clip bins integer images by
      value).
    spacing: voxel size in mm along (I, J, K).
    write: ``(label uint8 [I, J, K], out_path) -> None``, writes a NIfTI in the scan's geometry.
  """

  path: pathlib.Path
  array: np.ndarray
  spacing: tuple[float, ...]
  write: Callable[[np.ndarray, pathlib.Path], None]


def scan_name(path: pathlib.Path) -> str | None:
  """The file name without its scan suffix, or None when the suffix is not a supported format."""
  name = path.name
  for suffix in NIFTI_SUFFIXES + ITK_SUFFIXES:
    if name.lower().endswith(suffix):
      return name[: -len(suffix)]
  return None


def _three_d(path: pathlib.Path, array: np.ndarray) -> np.ndarray:
  """``array`` as [I, J, K]: trailing singleton axes (a 4-D NIfTI with one volume) dropped."""
  while array.ndim > 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim != 3:
    raise PredictError(
      f"{path}: expected a 3-D scan, got an array of shape {array.shape} "
      "(multi-volume and 2-D files are not supported)"
    )
  if not np.all(np.isfinite(array)):
    raise PredictError(f"{path}: the scan holds non-finite intensities (NaN or inf)")
  return array


def read_nifti(path: pathlib.Path) -> Scan:
  """A NIfTI scan (nibabel); its label map is written with the same affine and header geometry."""
  try:
    img = nib.load(str(path))
    array = np.asarray(img.dataobj)
  except Exception as e:  # nibabel raises several types for damaged or foreign files
    raise PredictError(f"{path}: cannot read as NIfTI ({e})") from e
  array = _three_d(path, array)

  def write(label: np.ndarray, out: pathlib.Path) -> None:
    header = img.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1.0, 0.0)  # labels are stored as is, never rescaled on reading
    out_img = type(img)(np.asarray(label, np.uint8), img.affine, header)
    out_img.set_qform(img.get_qform(), code=int(img.header["qform_code"]) or 1)
    out_img.set_sform(img.get_sform(), code=int(img.header["sform_code"]))
    _atomic_save(out, lambda tmp: nib.save(out_img, str(tmp)))

  return Scan(path, array, tuple(float(z) for z in img.header.get_zooms()[:3]), write)


def read_itk(path: pathlib.Path) -> Scan:
  """A MetaImage / NRRD scan (SimpleITK); the array is transposed from SimpleITK's (k, j, i) to
  (i, j, k), and the label map goes back through SimpleITK's NIfTI writer with the scan's origin,
  spacing and direction."""
  try:
    import SimpleITK as sitk  # optional: only MetaImage / NRRD input needs it
  except ImportError as e:
    raise PredictError(
      f"{path}: reading MetaImage / NRRD needs SimpleITK (pip install SimpleITK), "
      "or convert the scan to NIfTI"
    ) from e
  try:
    img = sitk.ReadImage(str(path))
  except Exception as e:  # SimpleITK raises RuntimeError with ITK's message
    raise PredictError(
      f"{path}: cannot read with SimpleITK ({str(e).strip().splitlines()[-1]})"
    ) from e
  if img.GetNumberOfComponentsPerPixel() != 1:
    raise PredictError(
      f"{path}: {img.GetNumberOfComponentsPerPixel()} components per voxel; "
      "expected a scalar 3-D scan"
    )
  array = _three_d(path, np.transpose(sitk.GetArrayFromImage(img)))

  def write(label: np.ndarray, out: pathlib.Path) -> None:
    out_img = sitk.GetImageFromArray(np.transpose(np.asarray(label, np.uint8)))
    out_img.CopyInformation(img)
    _atomic_save(out, lambda tmp: sitk.WriteImage(out_img, str(tmp)))

  return Scan(path, array, tuple(float(s) for s in img.GetSpacing()), write)


def read_scan(path: pathlib.Path) -> Scan:
  path = pathlib.Path(path)
  if not path.is_file():
    raise PredictError(f"{path}: scan file not found")
  lower = path.name.lower()
  if lower.endswith(NIFTI_SUFFIXES):
    return read_nifti(path)
  if lower.endswith(ITK_SUFFIXES):
    return read_itk(path)
  raise PredictError(
    f"{path}: not a supported scan format (NIfTI {', '.join(NIFTI_SUFFIXES)}; "
    f"with SimpleITK {', '.join(ITK_SUFFIXES)})"
  )


def _atomic_save(out: pathlib.Path, save: Callable[[pathlib.Path], None]) -> None:
  """``save(tmp)`` to a temporary name with the same suffixes in ``out``'s folder, then
  ``os.replace``: a reader never sees half a label map."""
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(f".{out.name[: -len(OUTPUT_SUFFIX)]}.tmp{OUTPUT_SUFFIX}")
  try:
    save(tmp)
    tmp.replace(out)
  finally:
    tmp.unlink(missing_ok=True)


def list_scans(input_path: pathlib.Path) -> list[pathlib.Path]:
  """The scan itself, or the supported scans directly inside a folder, sorted by name.

  Raises:
    PredictError: a missing input, a folder without scans, or two scans with the same name
      (``a.nii`` and ``a.nii.gz`` would write the same output).
  """
  input_path = pathlib.Path(input_path)
  if input_path.is_file():
    if scan_name(input_path) is None:
      raise PredictError(
        f"{input_path}: not a supported scan format (NIfTI "
        f"{', '.join(NIFTI_SUFFIXES)}; with SimpleITK {', '.join(ITK_SUFFIXES)})"
      )
    return [input_path]
  if not input_path.is_dir():
    raise PredictError(f"{input_path}: --input is neither a scan file nor a folder")
  scans = sorted(p for p in input_path.iterdir() if p.is_file() and scan_name(p) is not None)
  if not scans:
    raise PredictError(
      f"{input_path}: no scan files (NIfTI {', '.join(NIFTI_SUFFIXES)}; with "
      f"SimpleITK {', '.join(ITK_SUFFIXES)}) in this folder"
    )
  names = [scan_name(p) for p in scans]
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise PredictError(
      f"{input_path}: several scans named {dup[:3]} would write the same "
      f"<name>{OUTPUT_SUFFIX}; keep one of each"
    )
  return scans


# ---------------------------------------------------------------------------------------------
# The dataset's preparation of a scan, and its undoing on the label map.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Prepared:
  """A scan as the network sees it.

  Attributes:
    image: float32 [D, H, W]: normalised, cropped and oriented as the dataset's source yields
      its volumes.
    restore: label map [D, H, W] of ``image`` -> uint8 label map on the scan's voxel grid.
  """

  image: np.ndarray
  restore: Callable[[np.ndarray], np.ndarray]


def _as_labels(label_map: np.ndarray) -> np.ndarray:
  return np.asarray(label_map).astype(np.uint8)


def zscore_whole_volume(array: np.ndarray, spacing) -> Prepared:
  """z-score over all voxels (``jaxseg.data.h5folder.normalize``): LA's preparation before its
  crop (``yulequan/UA-MT: code/dataloaders/la_heart_processing.py``), the synthetic phantoms, and
  the h5folder how-to."""
  del spacing
  return Prepared(h5folder.normalize(array), _as_labels)


def as_stored(array: np.ndarray, spacing) -> Prepared:
  """The intensities as they are (ISLES: DyCON's loader normalises nothing, so
  jaxseg/prepare/isles.py stores the DWI volume as float32 on its own grid)."""
  del spacing
  return Prepared(np.asarray(array, np.float32), _as_labels)


def brats_flair(array: np.ndarray, spacing, sagittal_to_axial: bool = True) -> Prepared:
  """jaxseg/prepare/brats.py (SSL4MIS ``brats_proprecessing.py``) on a FLAIR volume: crop to the
  nonzero box (end index exclusive, as upstream), clip at the 0.999 cumulative histogram bin,
  z-score over the voxels > 0; then the source's SagittalToAxial transpose (2, 1, 0). The label map
  is transposed back and pasted into the box (0 outside)."""
  del spacing
  if not np.any(array):
    raise PredictError("the FLAIR scan is all zeros: there is no brain to crop to")
  box = tuple(slice(lo, hi) for lo, hi in prepare_common.bbox(array != 0))
  image = prepare_brats.clip_percentile(array[box], 0.999)
  pixels = image[image > 0]
  if pixels.size == 0:
    raise PredictError("the FLAIR scan has no positive voxel inside its nonzero box")
  image = ((image - pixels.mean()) / pixels.std()).astype(np.float32)
  axes = brats.SAGITTAL_TO_AXIAL if sagittal_to_axial else (0, 1, 2)

  def restore(label_map: np.ndarray) -> np.ndarray:
    out = np.zeros(array.shape, np.uint8)
    out[box] = np.transpose(_as_labels(label_map), np.argsort(axes))
    return out

  return Prepared(np.ascontiguousarray(np.transpose(image, axes)), restore)


def acdc_frame(array: np.ndarray, spacing) -> Prepared:
  """jaxseg/prepare/acdc.py (SSL4MIS ``acdc_data_processing.py``): the frame transposed (2, 1, 0)
  to SimpleITK's (slices, H, W) order and min-max normalised to [0, 1]; the 2-D network then runs
  slice by slice along axis 0."""
  del spacing
  lo, hi = float(array.min()), float(array.max())
  if hi == lo:
    raise PredictError(f"constant scan ({lo}): min-max normalisation is undefined")
  image = np.transpose((array - lo) / (hi - lo), (2, 1, 0)).astype(np.float32)
  return Prepared(
    np.ascontiguousarray(image), lambda label_map: np.transpose(_as_labels(label_map), (2, 1, 0))
  )


def pancreas_ct(array: np.ndarray, spacing) -> Prepared:
  """jaxseg/prepare/pancreas.py (MC-Net ``Pre-processing.ipynb``) on a CT volume in HU: B-spline
  resampling to 1 mm, window [-125, 275] -> [0, 1], z-score over the whole resampled volume (the
  preparation's crop around the pancreas needs the label). The label map returns to the scan's grid
  by nearest neighbour: scan voxel i takes 1 mm voxel round(i * spacing)."""
  resampled = np.transpose(
    prepare_pancreas._resample(  # pylint: disable=protected-access
      np.ascontiguousarray(np.transpose(np.asarray(array, np.float32))), spacing, False
    )
  )
  image = prepare_pancreas.window(resampled)
  image = ((image - image.mean()) / image.std()).astype(np.float32)

  def restore(label_map: np.ndarray) -> np.ndarray:
    index = [
      np.clip(np.rint(np.arange(n) * s).astype(int), 0, m - 1)
      for n, s, m in zip(array.shape, spacing, label_map.shape)
    ]
    return _as_labels(label_map)[np.ix_(*index)]

  return Prepared(image, restore)


def promise12_mri(array: np.ndarray, spacing) -> Prepared:
  """jaxseg/prepare/promise12.py (``faustomilletari/VNet: DataManager.py``): min-max to [0, 1],
  linear resampling to 1 x 1 x 1.5 mm, centre crop of 128 x 128 x 64, z-score over the voxels > 0.
  The label map is pasted into the resampled grid (0 outside the crop) and resampled back onto the
  scan's grid by nearest neighbour (SimpleITK, as the preparation's resampler)."""
  import SimpleITK as sitk  # optional: MetaImage is PROMISE12's format, SimpleITK its reader

  img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(np.asarray(array, np.float32))))
  img.SetSpacing([float(s) for s in spacing])
  rescale = sitk.RescaleIntensityImageFilter()
  rescale.SetOutputMinimum(0)
  rescale.SetOutputMaximum(1)
  image, new_size, start = prepare_promise12._resample_crop(  # pylint: disable=protected-access
    rescale.Execute(img), prepare_promise12.VOL_SIZE
  )
  pixels = image[image > 0]
  if pixels.size == 0:
    raise PredictError("no voxel > 0 inside the centre crop")
  image = ((image - pixels.mean()) / pixels.std()).astype(np.float32)

  def restore(label_map: np.ndarray) -> np.ndarray:
    grid = np.zeros(new_size, np.uint8)
    grid[tuple(slice(b, b + n) for b, n in zip(start, label_map.shape))] = _as_labels(label_map)
    resampled = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(grid)))
    resampled.SetSpacing(prepare_promise12.DST_RES)
    back = sitk.Resample(
      resampled, img, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8
    )
    return np.transpose(sitk.GetArrayFromImage(back))

  return Prepared(image, restore)


# Dataset name (config.data.name) -> the preparation of a raw scan (array in voxel index order,
# spacing in mm) for its network.
SCAN_PREPARATIONS: dict[str, Callable[[np.ndarray, tuple[float, ...]], Prepared]] = {
  "la": zscore_whole_volume,
  "synthetic": zscore_whole_volume,
  "h5folder": zscore_whole_volume,
  "isles": as_stored,
  "pancreas": pancreas_ct,
  "brats": brats_flair,
  "brats_upstream_test": lambda array, spacing: brats_flair(
    array, spacing, sagittal_to_axial=False
  ),
  "acdc": acdc_frame,
  "promise12": promise12_mri,
}


def preparation(dataset: str) -> Callable[[np.ndarray, tuple[float, ...]], Prepared]:
  """``SCAN_PREPARATIONS[dataset]``, with a clear error for a dataset without one."""
  if dataset not in SCAN_PREPARATIONS:
    raise PredictError(
      f"data.name={dataset!r}: jaxseg.predict has no scan preparation for this "
      f"dataset; known: {sorted(SCAN_PREPARATIONS)}"
    )
  return SCAN_PREPARATIONS[dataset]


# ---------------------------------------------------------------------------------------------
# The model: config, method and weights.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Predictor:
  """A config and a jitted ``prob_fn(windows [N, *patch, 1]) -> probabilities [N, *patch, C]``."""

  config: object
  prob_fn: Callable[[np.ndarray], np.ndarray]
  source: str  # where the weights came from, for the log

  def label_map(self, image: np.ndarray) -> np.ndarray:
    """``evaluation.predict_case`` of a prepared volume: the label map evaluation would give."""
    return evaluation.predict_case(self.prob_fn, image, self.config)


def load_config(workdir: str | None, config_file: str | None):
  """The run's ``config.json``, or a config file ``path[:args]`` (``get_config(args)``)."""
  if workdir:
    path = pathlib.Path(workdir) / "config.json"
    if not pathlib.Path(workdir).is_dir():
      raise PredictError(f"{workdir}: --workdir does not exist")
    if not path.is_file():
      raise PredictError(
        f"{path}: not found; --workdir must be a run directory made by `python -m jaxseg.main`"
      )
    try:
      return ml_collections.ConfigDict(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
      raise PredictError(f"{path}: not valid JSON ({e})") from e
  path, _, arg = config_file.partition(":")
  if not pathlib.Path(path).is_file():
    raise PredictError(f"{path}: --config file not found")
  try:
    return config_lib.load_config_module(path).get_config(arg or None)
  except ValueError as e:  # parse_arg: an unknown or malformed `:args` entry
    raise PredictError(f"{config_file}: {e}") from e


def build_predictor(
  workdir: str | None = None,
  config_file: str | None = None,
  checkpoint: str = "final",
  model: str | None = None,
  torch_checkpoint: str | None = None,
  model_kwargs: dict | None = None,
  mode: str | None = None,
  batch_size: int | None = None,
) -> Predictor:
  """The method of the config with the run's checkpoint, or with a torch state_dict.

  Args:
    workdir: a run directory (config.json, checkpoints/).
    config_file: a config ``path[:args]``, instead of a workdir (needs ``torch_checkpoint``).
    checkpoint: 'final' or 'best_val' (jaxseg/checkpoints.py).
    model, model_kwargs: the network of the torch state_dict (default: the config's
      model.name / model.kwargs; given kwargs update the config's).
    torch_checkpoint: a ``.pth`` / ``.pt`` state_dict (needs torch) of that network.
    mode, batch_size: override ``eval.mode`` / ``eval.batch_size``.

  Raises:
    PredictError: a missing workdir, config or checkpoint, weights that do not fit the method.
  """

  if bool(workdir) == bool(config_file):
    raise PredictError(
      "give exactly one of --workdir (a trained run) and --config (with --torch_checkpoint)"
    )
  if config_file and not torch_checkpoint:
    raise PredictError("--config needs --torch_checkpoint: a config file holds no weights")
  if (model or model_kwargs) and not torch_checkpoint:
    raise PredictError("--model / --model_kwargs name the network of --torch_checkpoint; give it")
  config = load_config(workdir, config_file)
  with config.unlocked():
    if model:
      config.model.name = model
    if model_kwargs:
      config.model.kwargs.update(model_kwargs)
    if mode:
      config.eval.mode = mode
    if batch_size:
      config.eval.batch_size = batch_size
  config_check.validate(config)
  method = methods.build(config)
  example = base.example_batch(config, method.host_targets)
  abstract = jax.eval_shape(method.init, jax.random.PRNGKey(0), example)
  if torch_checkpoint:
    state, source = _torch_state(config, abstract, torch_checkpoint), str(torch_checkpoint)
  else:
    try:
      state, step = checkpoints_lib.restore(workdir, checkpoint, abstract)
    except (checkpoints_lib.CheckpointError, FileNotFoundError) as e:
      raise PredictError(str(e)) from e
    source = f"{checkpoint} checkpoint of {workdir} (step {step})"
  state = jax.device_put(jax.tree.map(jnp.asarray, state))
  predict = jax.jit(method.predict)
  return Predictor(config, lambda windows: predict(state, windows), source)


def _torch_state(config, abstract, torch_checkpoint: str):
  """A state whose params / batch_stats are the imported torch weights (zeros elsewhere: predict
  reads nothing else)."""

  path = pathlib.Path(torch_checkpoint)
  if not path.is_file():
    raise PredictError(f"{path}: --torch_checkpoint not found")
  try:
    variables = torch_import.import_state_dict(config.model.name, path, **config.model.kwargs)
  except (KeyError, ValueError, TypeError, ImportError) as e:
    raise PredictError(f"{path}: cannot import as model {config.model.name!r} ({e})") from e
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  for name, got, want in (
    ("params", params, abstract.params),
    ("batch_stats", batch_stats, abstract.batch_stats),
  ):
    got_shapes = jax.tree.map(lambda a: tuple(np.shape(a)), got)
    want_shapes = jax.tree.map(lambda a: tuple(a.shape), want)
    if got_shapes != want_shapes:
      raise PredictError(
        f"{path}: the imported {name} do not fit method {config.method!r} with "
        f"model {config.model.name!r} {dict(config.model.kwargs)} (a method with "
        "several networks needs its own checkpoint)"
      )
  zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract)
  return zeros.replace(
    params=jax.tree.map(jnp.asarray, params), batch_stats=jax.tree.map(jnp.asarray, batch_stats)
  )


# ---------------------------------------------------------------------------------------------
# The command.
# ---------------------------------------------------------------------------------------------


def predict_scans(predictor: Predictor, input_path, output_dir, stream=None) -> list[pathlib.Path]:
  """Writes ``<output_dir>/<scan>_seg.nii.gz`` for every scan of ``input_path``; one progress line
  per scan on ``stream`` (None: silent). Returns the written paths."""
  prepare = preparation(predictor.config.data.name)
  scans = list_scans(pathlib.Path(input_path))
  output_dir = pathlib.Path(output_dir)
  written, t0 = [], time.time()
  for i, path in enumerate(scans, 1):
    t = time.time()
    scan = read_scan(path)
    try:
      prepared = prepare(scan.array, scan.spacing)
    except PredictError as e:
      raise PredictError(f"{path}: {e}") from e
    label = prepared.restore(predictor.label_map(prepared.image))
    out = output_dir / f"{scan_name(path)}{OUTPUT_SUFFIX}"
    scan.write(label, out)
    written.append(out)
    if stream is not None:
      left = (time.time() - t0) / i * (len(scans) - i)
      print(
        f"[jaxseg.predict] {i}/{len(scans)} {path.name} {tuple(label.shape)} -> {out} "
        f"(foreground voxels {int(np.count_nonzero(label))}; {time.time() - t:.1f}s, "
        f"~{left:.0f}s left)",
        file=stream,
        flush=True,
      )
  return written


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m jaxseg.predict",
    description="Segment new scans with a trained run (or an upstream .pth): one NIfTI label "
    "map per scan, in the scan's geometry.",
  )
  parser.add_argument("--workdir", help="a run directory made by `python -m jaxseg.main`")
  parser.add_argument(
    "--config",
    help="instead of --workdir: a config file path[:args] giving the "
    "dataset, method and evaluation settings (with --torch_checkpoint)",
  )
  parser.add_argument("--input", required=True, help="a scan file or a folder of scans")
  parser.add_argument("--output", required=True, help="folder for <scan>_seg.nii.gz")
  parser.add_argument("--checkpoint", default="final", help="final (default) or best_val")
  parser.add_argument(
    "--model", help="jaxseg model name of --torch_checkpoint (default: the config's model.name)"
  )
  parser.add_argument("--torch_checkpoint", help="an upstream PyTorch state_dict (.pth/.pt)")
  parser.add_argument("--model_kwargs", help="JSON object updating the config's model.kwargs")
  parser.add_argument("--mode", choices=["parity", "clean"], help="default: the config's eval.mode")
  parser.add_argument("--batch_size", type=int, help="windows per network call")
  args = parser.parse_args(argv)
  try:
    kwargs = json.loads(args.model_kwargs) if args.model_kwargs else None
  except json.JSONDecodeError as e:
    parser.error(f"--model_kwargs is not valid JSON ({e})")
  if kwargs is not None and not isinstance(kwargs, dict):
    parser.error("--model_kwargs must be a JSON object, e.g. '{\"n_filters\": 16}'")
  try:
    predictor = build_predictor(
      args.workdir,
      args.config,
      args.checkpoint,
      args.model,
      args.torch_checkpoint,
      kwargs,
      args.mode,
      args.batch_size,
    )
    print(
      f"[jaxseg.predict] {predictor.config.method} on {predictor.config.data.name} "
      f"preparation, mode {predictor.config.eval.mode}, weights {predictor.source}",
      flush=True,
    )
    predict_scans(predictor, args.input, args.output, stream=sys.stdout)
  except errors.UserError as e:  # PredictError, and the data / config errors it meets
    print(f"{parser.prog}: error: {e}", file=sys.stderr, flush=True)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
