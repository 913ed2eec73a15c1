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

With several processes each reads only the streams of the replicas its devices hold (and of those
only its rows of the batch), checkpoints those streams' states, and holds one whole replica's state
at a time for evaluation; the stacked state itself stays sharded over the processes.
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
    self.batch_size = config.batch_size
    self.seeds = [config.seed + k for k in range(self.n)]
    self._take = {}  # mesh -> the jitted slice of `replica_states`
    self._held = {}  # mesh -> `held(mesh)`
    self.dirs = [workdir] if self.n == 1 else [replica_dir(workdir, k) for k in range(self.n)]

  def init(self, method, example_batch):
    """`method.init` of each seed, stacked [N, ...] (one replica: unstacked), on the host."""
    states = [method.init(jax.random.PRNGKey(s), example_batch) for s in self.seeds]
    if self.n == 1:
      return states[0]
    return jax.tree.map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]), *states)

  def held(self, mesh=None) -> dict[int, list[int]]:
    """{replica: rows} of the stacked global batch that this process feeds
    (`parallel.process_runs_rows`; without a mesh, every replica and row). With several processes
    each reads only the streams of the replicas its devices hold, and of those only its rows.

    Raises:
      parallel.MeshError: the process holds different rows of different replicas (a mesh whose
        devices are not grouped by process), which one stacked local batch cannot feed.
    """
    if mesh is None:
      return {k: list(range(self.batch_size)) for k in range(self.n)}
    if mesh in self._held:  # asked for every step's batch
      return self._held[mesh]
    held = parallel.process_runs_rows(mesh, self.n, self.batch_size)
    if len({tuple(rows) for rows in held.values()}) > 1:
      raise parallel.MeshError(
        f"mesh ({parallel.describe(mesh)}): process {jax.process_index()} holds different rows "
        f"of different replicas ({held}); set mesh.shape so that each process's devices cover "
        "whole rows of the runs axis"
      )
    self._held[mesh] = held
    return held

  def iterator(self, config, data: builder.Datasets, mesh=None):
    """The training stream: `data.train_iterator` (seed `config.seed`); with more replicas a
    `RunsIterator` of each held replica's stream (seed + k, this process's rows; `held`)."""
    if self.n == 1:
      return data.train_iterator
    return RunsIterator(
      {
        k: builder.train_iterator(config, data.train_source, data.splits, self.seeds[k], rows)
        for k, rows in self.held(mesh).items()
      }
    )

  def jit(self, fn, mesh):
    """`fn(state, *args)` compiled with the state donated; with replicas, vmapped over the runs
    axis, and on a mesh whose "runs" axis has several devices, mapped over it by `jax.shard_map`
    (each device group vmaps over its own replicas; "data" and "space" stay automatic). vmap turns
    a convolution of stacked parameters into a grouped one, and XLA's partitioner does not split
    the groups of a grouped convolution over devices correctly (an invalid feature_group_count,
    jax 0.10): the manual "runs" axis keeps the groups local. On a mesh with a "space" axis it is
    traced inside `layers.spatially_partitioned` (jaxseg/parallel.py)."""
    fn = parallel.for_mesh(fn, mesh)
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
    return parallel.put_runs_batch(batch, mesh, self.held(mesh), self.n, self.batch_size)

  def replicas(self, tree) -> list:
    """Each replica's slice of a stacked pytree (metrics [N], states [N, ...]); one replica: [tree]."""
    if self.n == 1:
      return [tree]
    return [jax.tree.map(lambda x, k=k: x[k], tree) for k in range(self.n)]

  def replica_states(self, state, mesh):
    """Each replica's state, placed as a single run's (replicated over `mesh`): what validation,
    the best checkpoint and the final evaluation take. One jitted slice per replica, so that one
    replica at a time is gathered, and every process of a multi-process run holds it whole."""
    if self.n == 1:
      yield state
      return
    if mesh not in self._take:
      self._take[mesh] = jax.jit(
        lambda tree, k: jax.tree.map(lambda x: x[k], tree),
        out_shardings=parallel.replicated(mesh),
      )
    for k in range(self.n):
      yield self._take[mesh](state, k)

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
  """The training iterators of several replicas as one: `next` stacks their batches on a leading
  axis [n, R, ...]. Its state is theirs, keyed by replica, so grain's orbax handler
  (`grain.checkpoint.CheckpointSave`, which stores an iterator's `get_state()` bytes, one file per
  process) checkpoints and restores every stream a process reads at once.

  Args:
    iterators: {replica: iterator} in replica order (a list: replicas 0..n-1).
  """

  def __init__(self, iterators):
    if not isinstance(iterators, dict):
      iterators = dict(enumerate(iterators))
    self.replicas = list(iterators)
    self.iterators = list(iterators.values())

  def __iter__(self) -> "RunsIterator":
    return self

  def __next__(self) -> dict:
    batches = [next(it) for it in self.iterators]
    return {k: np.stack([np.asarray(b[k]) for b in batches]) for k in batches[0]}

  def get_state(self) -> bytes:
    state = {"replicas": self.replicas, "streams": [it.get_state() for it in self.iterators]}
    return json.dumps(state, sort_keys=True).encode()

  def set_state(self, state: bytes) -> None:
    state = json.loads(state)
    if isinstance(state, list):  # written before the replicas were recorded: all of them
      state = {"replicas": list(range(len(state))), "streams": state}
    replicas, streams = state["replicas"], state["streams"]
    if len(streams) != len(self.iterators):
      raise errors.RunStateError(
        f"the checkpoint holds {len(streams)} training streams, this run has "
        f"{len(self.iterators)} (runs differs)"
      )
    if replicas != self.replicas:
      raise errors.RunStateError(
        f"the checkpoint holds the training streams of replicas {replicas} for this process, "
        f"which now reads those of {self.replicas} (the processes or mesh.shape differ)"
      )
    for it, s in zip(self.iterators, streams):
      it.set_state(s)

  def start_prefetch(self) -> None:
    for it in self.iterators:
      it.start_prefetch()
