"""From a config to the run's data: root, split (saved in the workdir), sources and the
training iterator. The dataset is `jaxseg.data.DATASETS[config.data.name]`; what the batches hold
besides images and labels (unlabeled samples, host-side targets) is declared by the method class
`jaxseg.methods.METHODS[config.method]` (the protocol in jaxseg/methods/base.py)."""

import dataclasses
import pathlib
from collections.abc import Sequence

import grain
import jax
import ml_collections
from jax.experimental import multihost_utils

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


def build_datasets(
  config: ml_collections.ConfigDict, workdir, rows: Sequence[int] | None = None
) -> Datasets:
  """The dataset's split (labeled = the first `data.labeled` train ids, as upstream; validation as
  the dataset defines it) is checked against / written to `<workdir>/splits.json`.

  `rows`: the slots of every global batch the training iterator yields (default all; with several
  processes, this process's rows, `jaxseg.parallel.process_rows`). With several processes, process
  0 generates synthetic data and writes the split first; the others then read what it wrote.
  """
  d = config.data
  spec = get_dataset(d.name, d)
  what = f"data.name={d.name}, n_val={d.get('n_val')}, labeled={d.labeled}"
  first = jax.process_index() == 0
  if not first:
    _data_ready()
  root, split = _prepare(config, workdir, spec, what)
  if first and jax.process_count() > 1:
    _data_ready()
  train_ids = split["labeled"] + split["unlabeled"]
  train_source = spec.train_source(root, train_ids, d.num_classes)
  val_source = spec.val_source(root, split["val"], d.num_classes)
  iterator = train_iterator(config, train_source, split, config.seed, rows)
  return Datasets(root, split, train_source, val_source, iterator)


def train_iterator(
  config: ml_collections.ConfigDict,
  train_source,
  split: dict,
  seed: int,
  rows: Sequence[int] | None = None,
) -> grain.DatasetIterator:
  """The training stream of `config` with `seed` over `train_source` (the split's labeled then
  unlabeled ids): `build_datasets`' iterator for that seed, e.g. one per replica of a runs axis."""
  n_labeled, n_train = len(split["labeled"]), len(split["labeled"]) + len(split["unlabeled"])
  method = methods.method_class(config.method)
  # A method that samples no unlabeled data (the supervised baseline, as upstream train_LA.py)
  # never draws from the unlabeled pool.
  unlabeled_idx = list(range(n_labeled, n_train)) if method.samples_unlabeled else []
  return pipeline.make_train_iterator(
    train_source,
    list(range(n_labeled)),
    unlabeled_idx,
    config.batch_size,
    config.labeled_batch_size,
    tuple(config.data.patch_size),
    seed=seed,
    augment=config.data.augment,
    worker_count=config.data.worker_count,
    host_targets=method.host_targets,
    rows=rows,
  )


def _data_ready() -> None:
  """Every process waits here until process 0 has prepared the data and the split."""
  multihost_utils.sync_global_devices("jaxseg.data.builder: data and split ready")


def _prepare(config: ml_collections.ConfigDict, workdir, spec, what: str):
  """(data root, split): generates synthetic data and writes `<workdir>/splits.json` where absent,
  else checks them."""
  root = resolve_root(config, workdir)
  return root, splits_lib.load_or_save_splits(workdir, spec.make_splits(root, config.data), what)
