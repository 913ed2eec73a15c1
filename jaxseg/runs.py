"""The runs axis: `config.runs` = N independent replicas of one recipe, with the seeds seed, seed+1,
..., seed+N-1, trained in one jitted program (docs/design.md "The runs axis").

Replica k is the run of the same config with seed+k: its state is `method.init` of that seed, its
batches the training stream of that seed (`jaxseg.data.builder.train_iterator`), its step the
method's own `train_step` under `jax.vmap`. The loop (jaxseg/train.py) holds the N states stacked on
a leading axis sharded over the mesh's "runs" axis (jaxseg/parallel.py) and feeds batches
[N, B, ...]; replica k writes its metrics, evaluation and best checkpoint to `<workdir>/run<k>/` as a
single run writes them to its workdir, while one checkpoint of the stacked state and the N
iterators in `<workdir>/checkpoints` resumes them all. With runs=1 every function here is the plain
run's: no leading axis, no vmap, the workdir itself.
"""

import json
import pathlib

import jax
import numpy as np

from jaxseg import errors
from jaxseg import parallel
from jaxseg.data import builder


class Runs:
  """The replicas of a run of `config` in `workdir`: their seeds and folders, and how the loop
  initializes, feeds, steps and slices them."""

  def __init__(self, config, workdir: pathlib.Path):
    self.n = int(config.runs)
    if self.n > 1 and jax.process_count() > 1:
      raise errors.ConfigError(
        f"invalid config: runs={self.n} with {jax.process_count()} processes: a runs axis is "
        "fed by one process; run the replicas on one host, or as separate jobs"
      )
    self.batch_size = config.batch_size
    self.seeds = [config.seed + k for k in range(self.n)]
    self.dirs = [workdir] if self.n == 1 else [replica_dir(workdir, k) for k in range(self.n)]

  def init(self, method, example_batch):
    """`method.init` of each seed, stacked [N, ...] (one replica: unstacked), on the host."""
    states = [method.init(jax.random.PRNGKey(s), example_batch) for s in self.seeds]
    if self.n == 1:
      return states[0]
    return jax.tree.map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]), *states)

  def iterator(self, config, data: builder.Datasets):
    """The training stream: `data.train_iterator` (seed `config.seed`), with more replicas a
    `RunsIterator` of it and each further seed's own stream."""
    if self.n == 1:
      return data.train_iterator
    more = [
      builder.train_iterator(config, data.train_source, data.splits, s) for s in self.seeds[1:]
    ]
    return RunsIterator([data.train_iterator, *more])

  def jit(self, fn, mesh):
    """`fn(state, *args)` compiled with the state donated; with replicas, vmapped over the runs
    axis, and on a mesh whose "runs" axis has several devices, mapped over it by `jax.shard_map`
    (each device group vmaps over its own replicas; "data" and "space" stay automatic). vmap turns
    a convolution of stacked parameters into a grouped one, and XLA's partitioner does not split
    the groups of a grouped convolution over devices correctly (an invalid feature_group_count,
    jax 0.10): the manual "runs" axis keeps the groups local."""
    if self.n == 1:
      return jax.jit(fn, donate_argnums=0)
    batched = jax.vmap(fn)
    if mesh.shape["runs"] > 1:
      spec = jax.sharding.PartitionSpec("runs")
      batched = jax.shard_map(
        batched, mesh=mesh, in_specs=spec, out_specs=spec, axis_names={"runs"}, check_vma=False
      )
    return jax.jit(batched, donate_argnums=0)

  def put_state(self, state, mesh):
    return parallel.put_replicated(state, mesh) if self.n == 1 else parallel.put_runs(state, mesh)

  def put_batch(self, batch: dict, mesh) -> dict:
    if self.n == 1:
      return parallel.put_process_batch(batch, mesh, self.batch_size)
    return parallel.put_runs_batch(batch, mesh)

  def replicas(self, tree) -> list:
    """Each replica's slice of a stacked pytree (metrics [N], states [N, ...]); one replica: [tree]."""
    if self.n == 1:
      return [tree]
    return [jax.tree.map(lambda x, k=k: x[k], tree) for k in range(self.n)]

  def tag(self, k: int) -> str:
    """'' for a single run, 'run<k> (seed S): ' for a replica, to prefix log lines."""
    return "" if self.n == 1 else f"run{k} (seed {self.seeds[k]}): "


def replica_dir(workdir, k: int) -> pathlib.Path:
  """`<workdir>/run<k>`: where replica k of a runs axis writes what a single run writes."""
  return pathlib.Path(workdir) / f"run{k}"


def replica_of(path) -> tuple[pathlib.Path, int] | None:
  """(job workdir, k) when `path` is a replica folder `replica_dir(job, k)` (it holds no
  config.json of its own), else None."""
  path = pathlib.Path(path)
  k = path.name[len("run") :]
  if path.name.startswith("run") and k.isdigit() and not (path / "config.json").is_file():
    return path.parent, int(k)
  return None


class RunsIterator:
  """N training iterators as one: `next` stacks their batches on a leading axis [N, B, ...]; the
  state is theirs in order, so grain's orbax handler (`grain.checkpoint.CheckpointSave`, which
  stores an iterator's `get_state()` bytes) checkpoints and restores all N streams at once."""

  def __init__(self, iterators: list):
    self.iterators = list(iterators)

  def __iter__(self) -> "RunsIterator":
    return self

  def __next__(self) -> dict:
    batches = [next(it) for it in self.iterators]
    return {k: np.stack([np.asarray(b[k]) for b in batches]) for k in batches[0]}

  def get_state(self) -> bytes:
    return json.dumps([it.get_state() for it in self.iterators], sort_keys=True).encode()

  def set_state(self, state: bytes) -> None:
    states = json.loads(state)
    if len(states) != len(self.iterators):
      raise errors.RunStateError(
        f"the checkpoint holds {len(states)} training streams, this run has "
        f"{len(self.iterators)} (runs differs)"
      )
    for it, s in zip(self.iterators, states):
      it.set_state(s)

  def start_prefetch(self) -> None:
    for it in self.iterators:
      it.start_prefetch()
