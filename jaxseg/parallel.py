"""Device mesh and shardings: a ("runs", "data", "space") mesh, the batch's samples sharded over
"data", the state replicated; with `config.runs` > 1 (jaxseg/runs.py) the state and the batch carry
a leading replica axis sharded over "runs".

A recipe means the same on any device count: its global batch is fed whole, batch norm inside the
jitted step reduces over the *global* batch (sync-BN), and the numbers equal one device's up to
float32 reduction order (tests/test_parallel.py). `mesh_for` chooses the arrangement from the device
count, the replica count and the batch (`config.mesh.shape='auto'`) or takes it from the config
('runs:2,data:4'): "runs" takes the devices the replicas can use, "data" those the batch can use,
"space" the rest, so that a batch of 4 runs on 8 devices.

The "space" devices replicate the step for now instead of sharding each sample's depth: with the
depth sharded and the activations replicated along another mesh axis (data 4 x space 2, or space 8
at 32^3), XLA's partitioned convolution backward returns weight gradients summed once per replica
(jax 0.10, Shardy and GSPMD alike; tests/test_parallel.py::test_xla_depth_sharded_conv_gradient
shows it). When that test starts failing, XLA is fixed and `batch_sharding` can put the depth on
"space" (P("data", "space")).
"""

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


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Samples over "data", replicated over "space" (module docstring)."""
  return NamedSharding(mesh, P("data"))


def put_replicated(tree, mesh: Mesh):
  return jax.device_put(tree, replicated(mesh))


def put_batch(batch: dict, mesh: Mesh) -> dict:
  """Host-local numpy batch -> global arrays sharded as `batch_sharding`.

  On one host the local batch is the global batch; on several, each host feeds its own slice.
  """
  sharding = batch_sharding(mesh)
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
  }


def process_rows(mesh: Mesh, batch_size: int) -> list[int]:
  """The rows (ascending) of a global batch of `batch_size` samples that this process's devices
  hold under `batch_sharding(mesh)`: what this process loads. One process: every row."""
  rows = set()
  for index in batch_sharding(mesh).addressable_devices_indices_map((batch_size,)).values():
    rows.update(range(*index[0].indices(batch_size)))
  return sorted(rows)


def put_process_batch(batch: dict, mesh: Mesh, batch_size: int) -> dict:
  """This process's rows of a global batch (`process_rows` order, numpy [R, ...]) -> global arrays
  [batch_size, ...] sharded as `batch_sharding`: every process feeds its own rows, and together
  they make the global batch."""
  sharding = batch_sharding(mesh)
  return {
    k: jax.make_array_from_process_local_data(
      sharding, np.asarray(v), (batch_size, *np.shape(v)[1:])
    )
    for k, v in batch.items()
  }


def runs_sharding(mesh: Mesh, batch: bool = False) -> NamedSharding:
  """A leading replica axis (jaxseg/runs.py) over "runs": the stacked state [N, ...], or with
  `batch` the stacked batch [N, B, ...], its samples over "data" as `batch_sharding`'s."""
  return NamedSharding(mesh, P("runs", "data") if batch else P("runs"))


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
  sharding = runs_sharding(mesh, batch=True)
  replicas = list(held)
  rows = held[replicas[0]]
  position = {r: i for i, r in enumerate(rows)}

  def global_array(value):
    value = np.asarray(value)
    shape = (runs, batch_size, *value.shape[2:])

    def local(index):
      ks = [replicas.index(k) for k in range(*index[0].indices(runs))]
      bs = [position[b] for b in range(*index[1].indices(batch_size))]
      return value[ks][:, bs]

    return jax.make_array_from_callback(shape, sharding, local)

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
