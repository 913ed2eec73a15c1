"""From a config to the run's data: root, split (saved in the workdir), sources and the
training iterator."""
import dataclasses
import pathlib

import grain
import ml_collections

from jaxseg.data import build_source
from jaxseg.data import la
from jaxseg.data import pipeline
from jaxseg.data import splits as splits_lib
from jaxseg.data import synthetic


@dataclasses.dataclass
class Datasets:
  root: pathlib.Path
  splits: dict
  train_source: object
  val_source: object
  train_iterator: grain.DatasetIterator


def resolve_root(config: ml_collections.ConfigDict, workdir) -> pathlib.Path:
  """LA-layout root: generated synthetic phantoms, or the configured / $JAXSEG_DATA_DIR folder."""
  d = config.data
  if d.name == "synthetic":
    root = pathlib.Path(d.root) if d.root else pathlib.Path(workdir) / "data"
    s = d.synthetic
    return synthetic.generate(root, n_cases=s.n_cases, shape=tuple(s.shape), seed=s.seed)
  return la.find_root(d.root or None)


def build_datasets(config: ml_collections.ConfigDict, workdir) -> Datasets:
  """Labeled = the first `data.labeled` ids of the train part of the list, as upstream; the
  validation ids (the last `data.n_val` of the list) are written to `<workdir>/splits.json`."""
  d = config.data
  root = resolve_root(config, workdir)
  ids = splits_lib.read_list(root / d.list_file)
  split = splits_lib.load_or_make_splits(workdir, ids, d.n_val, d.labeled)
  train_ids = split["labeled"] + split["unlabeled"]
  train_source = build_source(d.name, root, train_ids, d.num_classes)
  val_source = build_source(d.name, root, split["val"], d.num_classes)
  n_labeled = len(split["labeled"])
  # Supervised runs see only the labeled cases, as upstream train_LA.py.
  unlabeled_idx = [] if config.labeled_batch_size == config.batch_size else list(
      range(n_labeled, len(train_ids)))
  iterator = pipeline.make_train_iterator(
      train_source, list(range(n_labeled)), unlabeled_idx, config.batch_size,
      config.labeled_batch_size, tuple(d.patch_size), seed=config.seed, augment=d.augment,
      worker_count=d.worker_count)
  return Datasets(root, split, train_source, val_source, iterator)
