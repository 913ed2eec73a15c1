"""Device mesh and shardings: a ("runs", "data", "space") mesh, the batch's samples sharded over
"data", the state replicated; with `config.runs` > 1 (jaxseg/runs.py) the state and the batch carry
a leading replica axis sharded over "runs".

A recipe means the same on any device count: its global batch is fed whole, batch norm inside the
jitted step reduces over the *global* batch (sync-BN), and the numbers equal one device's up to
float32 reduction order (tests/test_parallel.py). `mesh_for` chooses the arrangement from the device
count, the replica count and the batch (`config.mesh.shape='auto'`) or takes it from the config
('runs:2,data:4'): "runs" takes the devices the replicas can use, "data" those the batch can use,
"space" the rest, so that a batch of 4 runs on 8 devices.

With "space" > 1 the batch's first spatial axis is split over it as well (P("data", "space"), where
it divides; `batch_spec`), so that a batch of 4 on 8 devices puts half a patch on each, and the
step is traced inside `jaxseg.models.layers.spatially_partitioned`: every convolution lowers to
matmuls, pads and slices, which XLA's partitioner splits correctly, with the halos exchanged where
a convolution reads across a split. XLA's own partitioned convolution is not used there: with the
activations split along one axis and replicated along another (data 4 x space 2, or space 8 where
deep feature maps are smaller than the axis) its weight gradients come back summed once per
replica (jax 0.10, Shardy and GSPMD alike; tests/test_parallel.py::test_xla_depth_sharded_conv_gradient).
"""

import functools
import math
import os

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxseg import errors
from jaxseg.models import layers


# Explicit jax.distributed.initialize arguments a launcher may set (launch/cluster.py): the
# coordinator "host:port", the process count and id, and the local device ids ("0,1,2,3": one process
# driving every GPU of its node; unset, jax's SLURM detection gives each process the GPU of its
# SLURM_LOCALID).
class DistributedEnvError(errors.UserError, ValueError):
  """A JAXSEG_* distributed start-up variable that cannot be used; names the variable."""


DISTRIBUTED_ENV = {
  "JAXSEG_COORDINATOR": "coordinator_address",
  "JAXSEG_NUM_PROCESSES": "num_processes",
  "JAXSEG_PROCESS_ID": "process_id",
  "JAXSEG_LOCAL_DEVICE_IDS": "local_device_ids",
}


def distributed_kwargs(environ=None) -> dict:
  """The `jax.distributed.initialize` keyword arguments set by the JAXSEG_* variables of `environ`
  (default os.environ); the unset ones jax detects itself (SLURM, Cloud TPU pods)."""
  environ = os.environ if environ is None else environ
  kwargs = {}
  for var, arg in DISTRIBUTED_ENV.items():
    value = environ.get(var, "").strip()
    if not value:
      continue
    if arg == "coordinator_address":
      host, sep, port = value.rpartition(":")
      if not (sep and host and port.isdigit()):
        raise DistributedEnvError(f"{var}={value!r}: expected host:port (e.g. node001:61234)")
      kwargs[arg] = value
      continue
    try:
      ints = [int(v) for v in value.split(",")]
    except ValueError:
      kind = "comma-separated integers" if arg == "local_device_ids" else "an integer"
      raise DistributedEnvError(f"{var}={value!r}: expected {kind}") from None
    if arg == "local_device_ids":
      kwargs[arg] = ints
    elif len(ints) != 1 or ints[0] < 0:
      raise DistributedEnvError(f"{var}={value!r}: expected one non-negative integer")
    else:
      kwargs[arg] = ints[0]
  return kwargs


def maybe_initialize_distributed() -> None:
  """Multi-host start-up when a launcher asks for it: JAX_COORDINATOR_ADDRESS,
  JAXSEG_DISTRIBUTED=1 (jax detects the rest: SLURM, Cloud TPU pods) or any `DISTRIBUTED_ENV`
  variable (those values are passed explicitly)."""
  kwargs = distributed_kwargs()
  if (
    kwargs
    or os.environ.get("JAX_COORDINATOR_ADDRESS")
    or os.environ.get("JAXSEG_DISTRIBUTED") == "1"
  ):
    jax.distributed.initialize(**kwargs)


AXES = ("runs", "data", "space")


class MeshError(errors.UserError, ValueError):
  """A device arrangement that does not fit the devices, the batch or the patch."""


def parse_mesh_shape(spec: str) -> dict[str, int]:
  """'data:4,space:2' -> {'runs': 1, 'data': 4, 'space': 2}; an axis left out has size 1.

  Raises:
    MeshError: an unknown axis, a size that is not a positive integer.
  """
  shape = dict.fromkeys(AXES, 1)
  for item in spec.split(","):
    name, sep, size = item.strip().partition(":")
    if not (sep and name in AXES and size.isdigit() and int(size) >= 1):
      raise MeshError(
        f"mesh.shape={spec!r}: expected 'auto' or axis:size pairs of the axes "
        f"{AXES} (e.g. 'data:4,space:2')"
      )
    shape[name] = int(size)
  return shape


def auto_mesh_shape(n_devices: int, batch_size: int, runs: int = 1) -> dict[str, int]:
  """As many devices on "runs" as divide both the device count and the replica count, then as many
  on "data" as divide both what is left and the batch; the rest on "space". 8 devices, batch 4:
  data 4 x space 2; with runs 2: runs 2 x data 4; with runs 8: runs 8; 1 device: all sizes 1."""
  on_runs = math.gcd(n_devices, runs)
  data = math.gcd(n_devices // on_runs, batch_size)
  return {"runs": on_runs, "data": data, "space": n_devices // on_runs // data}


def mesh_for(config, devices=None) -> Mesh:
  """The mesh of a run of `config` over `devices` (default: every device of every process): the
  arrangement of `config.mesh.shape` ('auto': `auto_mesh_shape`).

  Raises:
    MeshError: the arrangement does not use exactly the devices, its "runs" axis does not divide
      `config.runs` or its "data" axis does not divide `config.batch_size`.
  """
  devices = jax.devices() if devices is None else list(devices)
  spec = config.mesh.shape
  shape = (
    auto_mesh_shape(len(devices), config.batch_size, config.runs)
    if spec == "auto"
    else parse_mesh_shape(spec)
  )
  shown = describe(shape)
  if math.prod(shape.values()) != len(devices):
    raise MeshError(
      f"mesh.shape={spec!r}: {shown} needs {math.prod(shape.values())} devices, "
      f"there are {len(devices)}"
    )
  if config.batch_size % shape["data"]:
    raise MeshError(
      f"mesh ({shown}): batch_size={config.batch_size} is not divisible by the data "
      "axis; set mesh.shape (e.g. 'data:1,space:N')"
    )
  if config.runs % shape["runs"]:
    raise MeshError(
      f"mesh ({shown}): runs={config.runs} is not divisible by the runs axis; set mesh.shape "
      "(e.g. 'runs:1,data:N')"
    )
  grid = mesh_utils.create_device_mesh(tuple(shape[a] for a in AXES), devices)
  return Mesh(grid, AXES)


def describe(shape) -> str:
  """'data 4 x space 2' (runs 1) or 'runs 2 x data 4 x space 1' for a mesh or an {axis: size}
  dict."""
  sizes = dict(shape.shape) if isinstance(shape, Mesh) else shape
  return " x ".join(f"{a} {sizes[a]}" for a in AXES if a != "runs" or sizes[a] > 1)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_spec(mesh: Mesh, shape, lead: tuple = ("data",)) -> P:
  """How an array of global `shape` whose leading axes are `lead` (the samples, or the replicas and
  the samples) is split: over `lead`, and its first spatial axis (the one after them) over "space"
  where the mesh has a "space" axis that divides it and the array has two spatial axes or more
  ([B, H, W, D, C] images, [B, H, W, D] labels, 2D [B, H, W, C]); otherwise replicated over
  "space"."""
  space, n = mesh.shape["space"], len(lead)
  if space > 1 and len(shape) >= n + 2 and shape[n] % space == 0:
    return P(*lead, "space")
  return P(*lead)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Samples over "data": which rows of a batch each device holds (`batch_spec` adds "space")."""
  return NamedSharding(mesh, P("data"))


def for_mesh(fn, mesh: Mesh):
  """`fn` (a step or forward to jit) as it must be traced for `mesh`: inside
  `layers.spatially_partitioned` where the mesh has a "space" axis (module docstring), else
  itself."""
  return layers.partitioned_trace(fn) if mesh.shape["space"] > 1 else fn


def put_replicated(tree, mesh: Mesh):
  return jax.device_put(tree, replicated(mesh))


def put_batch(batch: dict, mesh: Mesh) -> dict:
  """The whole global batch (numpy, one process) -> global arrays sharded as `batch_spec`."""
  return put_process_batch(batch, mesh, len(next(iter(batch.values()))))


def process_rows(mesh: Mesh, batch_size: int) -> list[int]:
  """The rows (ascending) of a global batch of `batch_size` samples that this process's devices
  hold any part of under `batch_sharding(mesh)`: what this process loads (whole rows; "space" takes
  its part of them in `put_process_batch`). One process: every row."""
  return list(_held_rows(mesh, batch_size))


@functools.cache
def _held_rows(mesh: Mesh, batch_size: int) -> tuple[int, ...]:
  rows = set()
  for index in batch_sharding(mesh).addressable_devices_indices_map((batch_size,)).values():
    rows.update(range(*index[0].indices(batch_size)))
  return tuple(sorted(rows))


def put_process_batch(batch: dict, mesh: Mesh, batch_size: int) -> dict:
  """This process's rows of a global batch (`process_rows` order, numpy [R, ...]) -> global arrays
  [batch_size, ...] sharded as `batch_spec`: every process feeds its own rows, each device takes
  its part of them, and together they make the global batch."""
  position = {r: i for i, r in enumerate(_held_rows(mesh, batch_size))}

  def global_array(value):
    value = np.asarray(value)
    shape = (batch_size, *value.shape[1:])

    def local(index):
      rows = [position[b] for b in range(*index[0].indices(batch_size))]
      return value[rows][(slice(None), *index[1:])]

    sharding = NamedSharding(mesh, batch_spec(mesh, shape))
    return jax.make_array_from_callback(shape, sharding, local)

  return {k: global_array(v) for k, v in batch.items()}


def runs_sharding(mesh: Mesh, batch: bool = False, shape=None) -> NamedSharding:
  """A leading replica axis (jaxseg/runs.py) over "runs": the stacked state [N, ...], or with
  `batch` the stacked batch [N, B, ...], its samples over "data" (and, with the global `shape` of
  one of its arrays, that array's first spatial axis as `batch_spec` splits it)."""
  if not batch:
    return NamedSharding(mesh, P("runs"))
  if shape is None:
    return NamedSharding(mesh, P("runs", "data"))
  return NamedSharding(mesh, batch_spec(mesh, shape, lead=("runs", "data")))


def put_runs(tree, mesh: Mesh):
  """The stacked state [N, ...] of a runs axis, one slice of replicas per "runs" device group."""
  return jax.device_put(tree, runs_sharding(mesh))


def process_runs_rows(mesh: Mesh, runs: int, batch_size: int) -> dict[int, list[int]]:
  """{replica: rows (ascending)} of the stacked global batch [runs, batch_size, ...] that this
  process's devices hold under `runs_sharding(mesh, batch=True)`: the replicas whose streams this
  process reads, and their rows. One process: every replica, every row."""
  held = {}
  sharding = runs_sharding(mesh, batch=True)
  for index in sharding.addressable_devices_indices_map((runs, batch_size)).values():
    for k in range(*index[0].indices(runs)):
      held.setdefault(k, set()).update(range(*index[1].indices(batch_size)))
  return {k: sorted(held[k]) for k in sorted(held)}


def put_runs_batch(
  batch: dict, mesh: Mesh, held: dict[int, list[int]], runs: int, batch_size: int
) -> dict:
  """This process's part of the stacked batch of a runs axis -> global arrays
  [runs, batch_size, ...] sharded as `runs_sharding(mesh, batch=True)`.

  Args:
    batch: numpy [len(held), R, ...]: the replicas of `held` in its order, each its R rows.
    held: `process_runs_rows(mesh, runs, batch_size)`; every replica with the same rows.
  """
  replicas = list(held)
  rows = held[replicas[0]]
  position = {r: i for i, r in enumerate(rows)}

  def global_array(value):
    value = np.asarray(value)
    shape = (runs, batch_size, *value.shape[2:])

    def local(index):
      ks = [replicas.index(k) for k in range(*index[0].indices(runs))]
      bs = [position[b] for b in range(*index[1].indices(batch_size))]
      return value[ks][:, bs][(slice(None), slice(None), *index[2:])]

    return jax.make_array_from_callback(shape, runs_sharding(mesh, True, shape), local)

  return {k: global_array(v) for k, v in batch.items()}


def to_host(tree):
  """A pytree of (possibly multi-process) arrays as numpy, each array's global value. One process:
  `jax.device_get`; several: a gather every process calls at the same point of its loop."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def any_process(flag: bool) -> bool:
  """Whether `flag` is set on any process (one process: `flag`). A collective: every process calls
  it at the same point of its loop."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))
