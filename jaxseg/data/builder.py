"""From a config to the run's data: root, split (saved in the workdir), sources and the
training iterator. The dataset is `jaxseg.data.DATASETS[config.data.name]`; what the batches hold
besides images and labels (unlabeled samples, host-side targets) is declared by the method class
`jaxseg.methods.METHODS[config.method]` (the protocol in jaxseg/methods/base.py)."""

import dataclasses
import pathlib

import grain
import ml_collections

from jaxseg import methods
from jaxseg.data import get_dataset
from jaxseg.data import pipeline
from jaxseg.data import splits as splits_lib


@dataclasses.dataclass
class Datasets:
  root: pathlib.Path
  splits: dict
  train_source: object
  val_source: object
  train_iterator: grain.DatasetIterator


def resolve_root(config: ml_collections.ConfigDict, workdir) -> pathlib.Path:
  """The data root. `data.name='synthetic'` (LA-layout phantoms) always generates; any other dataset
  generates its synthetic stand-in when `data.synthetic` is set and `data.root` is empty. Generated
  data goes to `data.root`, or `<workdir>/data`."""
  d = config.data
  spec = get_dataset(d.name, d)
  synthetic = d.get("synthetic")
  if d.name == "synthetic" or (synthetic and not d.root):
    if spec.synthesize is None:
      raise ValueError(f"data.name={d.name!r} has no synthetic stand-in; set data.root")
    root = pathlib.Path(d.root) if d.root else pathlib.Path(workdir) / "data"
    return spec.synthesize(root, synthetic)
  return spec.find_root(d.root or None)


def build_datasets(config: ml_collections.ConfigDict, workdir) -> Datasets:
  """The dataset's split (labeled = the first `data.labeled` train ids, as upstream; validation as
  the dataset defines it) is checked against / written to `<workdir>/splits.json`."""
  d = config.data
  spec = get_dataset(d.name, d)
  root = resolve_root(config, workdir)
  split = splits_lib.load_or_save_splits(
    workdir,
    spec.make_splits(root, d),
    f"data.name={d.name}, n_val={d.get('n_val')}, labeled={d.labeled}",
  )
  train_ids = split["labeled"] + split["unlabeled"]
  train_source = spec.train_source(root, train_ids, d.num_classes)
  val_source = spec.val_source(root, split["val"], d.num_classes)
  n_labeled = len(split["labeled"])
  method = methods.method_class(config.method)
  # A method that samples no unlabeled data (the supervised baseline, as upstream train_LA.py)
  # never draws from the unlabeled pool.
  unlabeled_idx = list(range(n_labeled, len(train_ids))) if method.samples_unlabeled else []
  iterator = pipeline.make_train_iterator(
    train_source,
    list(range(n_labeled)),
    unlabeled_idx,
    config.batch_size,
    config.labeled_batch_size,
    tuple(d.patch_size),
    seed=config.seed,
    augment=d.augment,
    worker_count=d.worker_count,
    host_targets=method.host_targets,
  )
  return Datasets(root, split, train_source, val_source, iterator)
