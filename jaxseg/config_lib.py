"""Config helpers: `get_config(arg)` argument parsing, the named blocks configs are assembled from,
and the shared smoke shrink.

Configs are python files in configs/ (big_vision style) and pure data: a config imports this module
and ml_collections only, never the methods, models or another config. A config builds its run from
the blocks below (`run`, a model block, a data block, `sgd`, the method's block, `parity_eval`) and
changes what its upstream script does differently; `smoke(c)` shrinks any of them to a CPU run of
seconds (`configs/<name>.py:smoke=1`). Validation against the method registry lives in
jaxseg/config_check.py.
"""

import importlib.util
import pathlib

import ml_collections

ConfigDict = ml_collections.ConfigDict


def parse_arg(arg: str | None, **defaults) -> ConfigDict:
  """'labeled=8,seed=2' -> ConfigDict, typed after `defaults` (unknown keys are an error).

  A bool default reads '1' / 'true' / 'yes' as True (`smoke=1`) and '0' / 'false' / 'no' as False."""
  out = ConfigDict(defaults)
  if not arg:
    return out
  for item in arg.split(","):
    if not item:
      continue
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"config argument {item!r}: expected key=value (e.g. 'labeled=8,seed=2')")
    if key not in defaults:
      raise ValueError(f"config argument {key!r} is not one of {sorted(defaults)}")
    kind = type(defaults[key])
    if kind is bool:
      if value.lower() not in ("1", "true", "yes", "0", "false", "no"):
        raise ValueError(f"config argument {key}={value!r}: expected 1 / 0 (true / false)")
      out[key] = value.lower() in ("1", "true", "yes")
    else:
      try:
        out[key] = kind(value)
      except ValueError:
        raise ValueError(f"config argument {key}={value!r}: expected {kind.__name__}") from None
  return out


# --- Blocks. Each returns a fresh ConfigDict; keyword arguments override or add fields.


def run(
  method: str, seed: int, total_steps: int, batch_size: int, labeled_batch_size: int, **overrides
) -> ConfigDict:
  """The top level of a config: method, seed, step count, batch composition (labeled samples
  first), float32 compute, logging every 20 steps, a checkpoint every 500 (the last 2 kept), one
  replica (`runs` N > 1: N independent replicas with seeds seed..seed+N-1 trained in one program,
  each writing its results to <workdir>/run<k>/; jaxseg/runs.py).

  Where it runs, which changes no number: `mesh.shape` ('auto', or e.g. 'runs:2,data:4'; see
  jaxseg/parallel.py), `compile_cache` ('auto': JAX's persistent compilation cache in
  ~/.cache/jaxseg/xla unless $JAX_COMPILATION_CACHE_DIR names one; a folder; '' off) and
  `profile_steps` ('START:END': a jax.profiler trace of those steps in <workdir>/profile)."""
  c = ConfigDict(
    dict(
      method=method,
      seed=seed,
      total_steps=total_steps,
      batch_size=batch_size,
      labeled_batch_size=labeled_batch_size,
      runs=1,
      compute_dtype="float32",
      log_every_steps=20,
      checkpoint_every_steps=500,
      keep_checkpoints=2,
      mesh=ConfigDict(dict(shape="auto")),
      compile_cache="auto",
      profile_steps="",
    )
  )
  c.update(overrides)
  return c


def vnet_model(name: str = "vnet", **overrides) -> ConfigDict:
  """`config.model` for the UA-MT VNet family (vnet, vnet_sdf, bcp_vnet, cml_vnet): 16 filters,
  batchnorm, dropout 0.5, 2 classes (yulequan/UA-MT code/networks/vnet.py defaults). `remat`:
  recompute the blocks' activations in the backward pass (less memory, more time)."""
  kwargs = dict(
    n_channels=1,
    n_classes=2,
    n_filters=16,
    normalization="batchnorm",
    has_dropout=True,
    dropout_rate=0.5,
  )
  kwargs.update(overrides)
  return ConfigDict(dict(name=name, kwargs=ConfigDict(kwargs), remat=False))


def unet2d_model(name: str = "unet2d", **overrides) -> ConfigDict:
  """`config.model` for the SSL4MIS 2D UNet (unet2d, cml_unet2d): channels 16..256, encoder dropout
  0.05..0.5, 4 classes (HiLab-git/SSL4MIS code/networks/unet.py, as BCP and CML ship it)."""
  kwargs = dict(
    n_channels=1,
    n_classes=4,
    feature_chns=(16, 32, 64, 128, 256),
    dropout=(0.05, 0.1, 0.2, 0.3, 0.5),
  )
  kwargs.update(overrides)
  return ConfigDict(dict(name=name, kwargs=ConfigDict(kwargs)))


def unet3d_dycon_model(**overrides) -> ConfigDict:
  """`config.model` for DyCON's UNet3D (KU-CVML/DyCON code/networks/unet_3D.py as
  train_DyCON_BraTS19.py builds it): filters 16..256 (feature_scale 4), projection head at 1/8
  resolution (scale_factor 2), dropout 0.3, 2 classes. n_filters 0 keeps feature_scale's widths
  (the knob `smoke` sets)."""
  kwargs = dict(
    in_channels=1, n_classes=2, feature_scale=4, n_filters=0, scale_factor=2, dropout_rate=0.3
  )
  kwargs.update(overrides)
  return ConfigDict(dict(name="unet3d_dycon", kwargs=ConfigDict(kwargs), remat=False))


def la_data(labeled: int, **overrides) -> ConfigDict:
  """`config.data` for LA (UA-MT layout): the first `labeled` ids of train.list are labeled, the
  last 4 are validation (the LA test split stays held out), 112x112x80 patches, RandomRotFlip then
  RandomCrop, 2 classes, 0.625 mm isotropic (the UA-MT LA volumes). `name='pancreas'` with its own
  patch / augment / spacing reuses it for DTC's Pancreas layout, which splits the same way."""
  d = ConfigDict(
    dict(
      name="la",
      root="",  # --config.data.root=... or $JAXSEG_DATA_DIR
      list_file="train.list",
      labeled=labeled,
      n_val=4,
      num_classes=2,
      patch_size=(112, 112, 80),
      augment="rot_flip_crop",
      # Grain worker processes do not survive a checkpoint round trip (jaxseg/config_check.py).
      worker_count=0,
      spacing=(0.625, 0.625, 0.625),  # mm per voxel (D, H, W); clean-mode distances use it
      # LA only: > 1 shrinks every volume by this factor per axis at load time (jaxseg/data/la.py;
      # the reduced-scale protocol of jaxseg/reproduce.py); scale `spacing` with it.
      downsample=1,
    )
  )
  d.update(overrides)
  return d


def brats_data(labeled: int, **overrides) -> ConfigDict:
  """`config.data` for BraTS 2019 (SSL4MIS layout): labeled = the first `labeled` ids of
  train.txt, validation = val.txt, 96^3 patches (hard-coded in KU-CVML/DyCON
  train_DyCON_BraTS19.py), RandomCrop then RandomRotFlip, 1 mm isotropic."""
  d = ConfigDict(
    dict(
      name="brats",
      root="",
      labeled=labeled,
      val_list="val.txt",
      num_classes=2,
      patch_size=(96, 96, 96),
      augment="crop_rot_flip",
      worker_count=0,
      spacing=(1.0, 1.0, 1.0),
    )
  )
  d.update(overrides)
  return d


def isles_data(labeled: int, **overrides) -> ConfigDict:
  """`config.data` for ISLES-2022 (jaxseg/data/isles.py, DyCON's lists): labeled = the first
  `labeled` ids of train.list (10 = 5 % of 200), validation = val.list; DWI alone, stored as
  prepared (no resampling: spacing varies by case, so clean-mode distances are in voxels); patch
  96x96x64 and RandomRotFlip then RandomCrop (KU-CVML/DyCON code/dataloaders/isles22.py)."""
  d = ConfigDict(
    dict(
      name="isles",
      root="",
      labeled=labeled,
      list_file="train.list",
      val_list="val.list",
      num_classes=2,
      patch_size=(96, 96, 64),
      augment="rot_flip_crop",
      worker_count=0,
      spacing=None,
    )
  )
  d.update(overrides)
  return d


def acdc_data(labeled: int, **overrides) -> ConfigDict:
  """`config.data` for ACDC (SSL4MIS layout): `labeled` counts PATIENTS, whose slices of
  train_slices.list are the labeled set (3 -> 68 slices, 7 -> 136); validation = the val.list
  volumes, slice by slice; whole slices zoomed to 256x256 by RandomGenerator; 4 classes."""
  d = ConfigDict(
    dict(
      name="acdc",
      root="",
      train_list="train_slices.list",
      val_list="val.list",
      labeled=labeled,
      n_val=0,  # validation is val.list (20 volumes), not carved from train
      num_classes=4,
      patch_size=(256, 256),
      augment="acdc_random_generator",
      worker_count=0,
    )
  )
  d.update(overrides)
  return d


def sgd(lr_schedule: str = "step", **overrides) -> ConfigDict:
  """`config.optimizer`: SGD lr 0.01, momentum 0.9, weight decay 1e-4 (every upstream here).
  `lr_schedule`: 'step' multiplies by `lr_step_factor` 0.1 every `lr_step_every` 2500 steps (UA-MT
  lineage; the fields stay for any schedule, so that `--config.optimizer.lr_schedule=step` works
  from the command line), 'constant', or 'poly' (`poly_power`), as jaxseg/schedules.py. Other
  fields a config may add: `lr_step_begin`, `clip_grad_norm`."""
  o = ConfigDict(
    dict(
      name="sgd",
      lr=0.01,
      momentum=0.9,
      weight_decay=1e-4,
      lr_schedule=lr_schedule,
      lr_step_every=2500,
      lr_step_factor=0.1,
    )
  )
  o.update(overrides)
  return o


def mean_teacher_block(**overrides) -> ConfigDict:
  """`config.mt`: the UA-MT-lineage Mean Teacher (yulequan/UA-MT
  code/train_LA_meanteacher_certainty_unlabel.py without the uncertainty mask): EMA 0.99,
  consistency 0.1 * sigmoid_rampup(step // 150, 40) on the unlabeled half, teacher input noise
  clamp(0.1 N, +-0.2)."""
  b = ConfigDict(
    dict(
      ema_decay=0.99,
      consistency=0.1,
      consistency_rampup=40.0,
      iters_per_epoch=150,
      noise_std=0.1,
      noise_clip=0.2,
      consistency_on="unlabeled",
    )
  )
  b.update(overrides)
  return b


def dtc_block(**overrides) -> ConfigDict:
  """`config.dtc`: DTC's loss hyper-parameters (HiLab-git/DTC code/train_la_dtc.py defaults;
  --consistency_weight, --gamma, --D_lr, --ema_decay and --consistency_type are parsed upstream but
  unused)."""
  b = ConfigDict(
    dict(
      beta=0.3,  # --beta: weight of the SDF regression in the supervised loss
      consistency=1.0,  # --consistency: final weight of the dual-task consistency
      consistency_rampup=40.0,
      iters_per_epoch=150,  # sigmoid_rampup(step // 150, 40)
      sdf_to_mask_k=1500.0,  # sigmoid(-k tanh): level set -> soft mask
    )
  )
  b.update(overrides)
  return b


def dycon_block(**overrides) -> ConfigDict:
  """`config.dycon`: the hyper-parameters of KU-CVML/DyCON code/train_DyCON_BraTS19.py with
  run_brats19.sh's arguments."""
  b = ConfigDict(
    dict(
      ema_decay=0.99,
      consistency=0.1,
      consistency_rampup=200.0,
      consistency_iters_per_epoch=150,
      noise_std=0.1,
      noise_clip=0.2,
      l_weight=1.0,
      u_weight=0.5,
      beta_max=5.0,
      beta_min=0.5,
      static_beta=0.0,  # > 0: constant UnCL beta (upstream --s_beta); 0: adaptive beta_max -> beta_min
      temperature=0.6,
      gamma=2.0,
      use_focal=True,
      rampup_epochs=1500.0,
      lambda_cross=1.0,
      use_teacher_loss=True,
      fecl_on="unlabeled",  # 'unlabeled' (HEAD) | 'all' (before 2025-11-01)
      patch_label_rule="trilinear",  # 'trilinear' (HEAD) | 'avgpool' (before 2025-11-01)
      patch_label_source="ground_truth",  # 'ground_truth' (upstream) | 'teacher' (argmax pT)
      use_gambling=False,  # gambling-softmax uncertainty weighting (commented out upstream)
      iters_per_epoch=0,  # sampler epoch length; 0 = data.labeled // labeled_batch_size
      skip_nonfinite=True,  # upstream skips a batch whose loss is NaN / inf
    )
  )
  b.update(overrides)
  return b


def parity_eval(stride_xy: int = 18, stride_z: int = 4, **overrides) -> ConfigDict:
  """`config.eval`: what the published numbers mean (yulequan/UA-MT code/test_util.py): the final
  state on the validation split, sliding window at `stride_xy` / `stride_z` (LA: 18 / 4), medpy
  metrics in voxels; validation every 1000 steps. The clean-mode fields (MONAI overlap and gaussian
  sigma) serve `--config.eval.mode=clean`; `largest_cc` is each method's test rule."""
  e = ConfigDict(
    dict(
      mode="parity",
      split="val",
      stride_xy=stride_xy,
      stride_z=stride_z,
      batch_size=4,
      every_steps=1000,
      max_cases=0,  # > 0: evaluate only the first N cases (periodic and final; short checks only)
      overlap=0.5,
      sigma_scale=0.125,
      largest_cc=False,
      save_predictions=False,  # save each case's label map (launch/report.py draws them)
    )
  )
  e.update(overrides)
  return e


# --- Smoke shrink.

SMOKE_VAL_CASES = 2


def smoke_stand_in(dataset: str, labeled: int) -> tuple[str, dict]:
  """(data.name, data.synthetic) of the smoke run of a `dataset` config: generated volumes of
  24x24x16 (ACDC: patients of two 3-slice 40x36 frames), enough for the labeled ones, 2 validation
  and 2 unlabeled (at least 8). LA becomes the LA-layout phantoms ('synthetic'); the other datasets
  write their own stand-in in their layout (`synthesize` in jaxseg/data/<dataset>.py reads the
  dict)."""
  n_cases, volume = max(8, labeled + SMOKE_VAL_CASES + 2), (24, 24, 16)
  stand_ins = {
    "la": ("synthetic", dict(n_cases=n_cases, shape=volume, seed=0)),
    "synthetic": ("synthetic", dict(n_cases=n_cases, shape=volume, seed=0)),
    "pancreas": ("pancreas", dict(n_cases=n_cases, n_test=1, shape=volume, seed=0)),
    "brats": (
      "brats",
      dict(n_cases=n_cases, n_val=SMOKE_VAL_CASES, n_test=1, shape=volume, seed=0),
    ),
    # One validation patient: its 2 frames are the 2 validation volumes.
    "acdc": ("acdc", dict(n_cases=n_cases, n_val=1, shape=(3, 40, 36), seed=0)),
    "isles": (
      "isles",
      dict(n_cases=n_cases, n_val=SMOKE_VAL_CASES, n_test=1, shape=volume, seed=0),
    ),
    "promise12": ("promise12", dict(n_cases=n_cases, shape=volume, seed=0)),
  }
  if dataset not in stand_ins:
    raise ValueError(
      f"smoke: data.name={dataset!r} has no synthetic stand-in; known: {sorted(stand_ins)}"
    )
  return stand_ins[dataset]


def smoke(c: ConfigDict) -> ConfigDict:
  """Shrink `c` in place to a run of seconds on a CPU (big_vision's runlocal): the recipe's code
  paths at toy size, no number to reach beyond "runs end to end". Returns `c`.

  4 steps, a log line every step, a checkpoint every 2, no periodic validation, sliding-window
  strides 8, 16^3 patches (2D: 32x32), the smallest network width (n_filters 4; 2D UNet channels
  4..64), 2 validation cases, and generated data instead of data.root (`smoke_stand_in`). What is
  a config's own (batch size, phase lengths) the config shrinks itself."""
  c.total_steps = 4
  c.log_every_steps = 1
  c.checkpoint_every_steps = 2
  c.eval.every_steps = 0
  c.eval.stride_xy = 8
  c.eval.stride_z = 8
  if "n_filters" in c.model.kwargs:
    c.model.kwargs.n_filters = 4
  if "feature_chns" in c.model.kwargs:
    c.model.kwargs.feature_chns = (4, 8, 16, 32, 64)
  c.data.patch_size = (32, 32) if len(c.data.patch_size) == 2 else (16, 16, 16)
  if c.data.get("n_val"):  # validation carved from the train list; the others have val lists
    c.data.n_val = SMOKE_VAL_CASES
  c.data.root = ""
  c.data.name, synthetic = smoke_stand_in(c.data.name, c.data.labeled)
  c.data.synthetic = ConfigDict(synthetic)
  return c


def load_config_module(path):
  """Import a config file by path (configs/ is a folder of files, not a package); for launchers
  and tests."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"config file {path} not found")
  spec = importlib.util.spec_from_file_location(f"jaxseg_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
