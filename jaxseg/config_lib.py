"""Config helpers: `get_config(arg)` argument parsing, the shared LA recipe, validation.

Configs are python files in configs/ (big_vision style). Everything a run does is in its config,
and the config is saved in the workdir.
"""
import ml_collections

from jaxseg import methods


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """'labeled=8,seed=2' -> ConfigDict, typed after `defaults` (unknown keys are an error)."""
  out = ml_collections.ConfigDict(defaults)
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
      out[key] = value.lower() in ("1", "true", "yes")
    else:
      out[key] = kind(value)
  return out


def la_recipe(method: str, labeled: int, seed: int) -> ml_collections.ConfigDict:
  """The UA-MT-lineage LA recipe (uamt.md §4, mt.md §4): VNet(16, batchnorm, dropout), patch
  112x112x80, batch 4 (2 labeled), SGD 0.01 momentum 0.9 wd 1e-4, x0.1 every 2500, 6000 steps,
  parity evaluation with stride 18/18/4."""
  c = ml_collections.ConfigDict()
  c.method = method
  c.seed = seed
  c.total_steps = 6000
  c.batch_size = 4
  c.labeled_batch_size = 2
  c.compute_dtype = "float32"

  c.model = ml_collections.ConfigDict()
  c.model.name = "vnet"
  c.model.kwargs = ml_collections.ConfigDict(dict(
      n_channels=1, n_classes=2, n_filters=16, normalization="batchnorm", has_dropout=True,
      dropout_rate=0.5))

  c.data = ml_collections.ConfigDict()
  c.data.name = "la"
  c.data.root = ""  # --config.data.root=... or $JAXSEG_DATA_DIR
  c.data.list_file = "train.list"
  c.data.labeled = labeled
  # The standard LA test split is held out; validation is carved from the end of train.list.
  c.data.n_val = 4
  c.data.num_classes = 2
  c.data.patch_size = (112, 112, 80)
  c.data.augment = "rot_flip_crop"
  c.data.worker_count = 0
  # mm per voxel in (D, H, W) order; clean-mode distances use it (the UA-MT LA volumes are 0.625 mm
  # isotropic).
  c.data.spacing = (0.625, 0.625, 0.625)

  c.optimizer = ml_collections.ConfigDict(dict(
      name="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4, lr_schedule="step",
      lr_step_every=2500, lr_step_factor=0.1))

  c.mt = ml_collections.ConfigDict(dict(
      ema_decay=0.99, consistency=0.1, consistency_rampup=40.0, iters_per_epoch=150,
      noise_std=0.1, noise_clip=0.2, consistency_on="unlabeled"))

  c.eval = ml_collections.ConfigDict(dict(
      mode="parity", split="val", stride_xy=18, stride_z=4, batch_size=4, every_steps=1000,
      max_cases=0,  # > 0: evaluate only the first N cases (periodic and final; short checks only)
      # Clean mode (jaxseg/evaluate.py): MONAI sliding-window arguments and largest-component
      # post-processing. Either mode: save each case's label map (launch/report.py draws them).
      overlap=0.5, sigma_scale=0.125, largest_cc=False, save_predictions=False))

  c.log_every_steps = 20
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 2
  return c


def acdc_recipe(method: str, labeled: int, seed: int) -> ml_collections.ConfigDict:
  """The SSL4MIS-lineage ACDC recipe that BCP and CML share (bcp.md §4-§6, cml.md §4-§6): the 2D
  UNet (16..256 channels, encoder dropout 0.05..0.5, 4 classes), whole slices zoomed to 256x256 by
  RandomGenerator, batch 24 (12 labeled), SGD 0.01 momentum 0.9 wd 1e-4 at a CONSTANT lr, `labeled`
  PATIENTS (their slices are the labeled set), validation on val.list volumes slice by slice with
  argmax and no post-processing. The method's own block and step counts are the caller's."""
  c = la_recipe(method, labeled=labeled, seed=seed)
  del c.mt
  c.batch_size = 24
  c.labeled_batch_size = 12
  c.model.name = "unet2d"
  c.model.kwargs = ml_collections.ConfigDict(dict(
      n_channels=1, n_classes=4, feature_chns=(16, 32, 64, 128, 256),
      dropout=(0.05, 0.1, 0.2, 0.3, 0.5)))
  c.data = ml_collections.ConfigDict()
  c.data.name = "acdc"
  c.data.root = ""  # --config.data.root=... or $JAXSEG_DATA_DIR
  c.data.train_list = "train_slices.list"
  c.data.val_list = "val.list"
  c.data.labeled = labeled  # patients
  c.data.n_val = 0  # validation is val.list (20 volumes), not carved from train
  c.data.num_classes = 4
  c.data.patch_size = (256, 256)
  c.data.augment = "acdc_random_generator"
  c.data.worker_count = 0
  c.optimizer.lr_schedule = "constant"
  c.eval.largest_cc = False  # test_ACDC.py: argmax, no post-processing
  c.eval.batch_size = 16  # slices per forward
  return c


def validate(config: ml_collections.ConfigDict) -> None:
  """Fail early, naming the field, on a config that cannot run."""
  def need(cond, msg):
    if not cond:
      raise ValueError(f"invalid config: {msg}")

  need(config.method in methods.METHODS,
       f"method={config.method!r} is not one of {sorted(methods.METHODS)}")
  need(config.total_steps >= 1, f"total_steps={config.total_steps} must be >= 1")
  need(0 < config.labeled_batch_size <= config.batch_size,
       f"labeled_batch_size={config.labeled_batch_size} must be in 1..batch_size={config.batch_size}")
  if config.method == "supervised":
    need(config.labeled_batch_size == config.batch_size,
         "the supervised method trains on labeled data only: labeled_batch_size must equal batch_size")
  else:
    need(config.labeled_batch_size < config.batch_size,
         f"method {config.method} needs unlabeled samples: labeled_batch_size < batch_size")
  # ACDC counts labeled PATIENTS (their slices fill the batch); the sampler checks the slice count.
  need(config.data.name == "acdc" or config.data.labeled >= config.labeled_batch_size,
       f"data.labeled={config.data.labeled} is smaller than labeled_batch_size={config.labeled_batch_size}")
  n_classes = config.model.kwargs.get("n_classes")
  # A single-logit sigmoid head (DTC) serves a binary task.
  need(n_classes == config.data.num_classes or (n_classes == 1 and config.data.num_classes == 2),
       f"model.kwargs.n_classes={n_classes} differs from data.num_classes={config.data.num_classes}")
  for p in config.data.patch_size:
    need(p % 16 == 0, f"data.patch_size={tuple(config.data.patch_size)}: every side must be divisible "
                      "by 16 (VNet has four stride-2 downsamplings)")
  # Grain worker processes stream the same batches (tests/test_pipeline.py) but their iterator
  # state did not survive an orbax save/restore round trip here; threads (worker_count 0, the
  # default) prefetch enough for these crop-and-flip pipelines.
  need(config.data.get("worker_count", 0) == 0,
       f"data.worker_count={config.data.get('worker_count')}: only 0 (threaded prefetch) supports "
       "checkpoint resume; use 0")
  need(config.eval.mode in ("parity", "clean"),
       f"eval.mode={config.eval.mode!r}: must be 'parity' or 'clean'")


def load_config_module(path):
  """Import a config file by path (configs/ is a folder of files, not a package)."""
  import importlib.util
  import pathlib
  path = pathlib.Path(path)
  spec = importlib.util.spec_from_file_location(f"jaxseg_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_sibling(this_file, name: str):
  """The config module `name` in the same folder as `this_file`."""
  import pathlib
  return load_config_module(pathlib.Path(this_file).with_name(name))
