"""Device mesh and shardings: a ("data", "space") mesh, the batch's samples sharded over "data",
the state replicated.

A recipe means the same on any device count: its global batch is fed whole, batch norm inside the
jitted step reduces over the *global* batch (sync-BN), and the numbers equal one device's up to
float32 reduction order (tests/test_parallel.py). `mesh_for` chooses the arrangement from the device
count and the batch (`config.mesh.shape='auto'`) or takes it from the config ('data:4,space:2'):
"data" takes the devices the batch can use, "space" the rest, so that a batch of 4 runs on 8
devices.

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


AXES = ("data", "space")


class MeshError(errors.UserError, ValueError):
  """A device arrangement that does not fit the devices, the batch or the patch."""


def parse_mesh_shape(spec: str) -> dict[str, int]:
  """'data:4,space:2' -> {'data': 4, 'space': 2}; an axis left out has size 1.

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


def auto_mesh_shape(n_devices: int, batch_size: int) -> dict[str, int]:
  """As many devices on "data" as divide both the device count and the batch; the rest on
  "space". 8 devices, batch 4: data 4 x space 2; 1 device: data 1 x space 1."""
  data = math.gcd(n_devices, batch_size)
  return {"data": data, "space": n_devices // data}


def mesh_for(config, devices=None) -> Mesh:
  """The mesh of a run of `config` over `devices` (default: every device of every process): the
  arrangement of `config.mesh.shape` ('auto': `auto_mesh_shape`).

  Raises:
    MeshError: the arrangement does not use exactly the devices, or its "data" axis does not
      divide `config.batch_size`.
  """
  devices = jax.devices() if devices is None else list(devices)
  spec = config.mesh.shape
  shape = (
    auto_mesh_shape(len(devices), config.batch_size) if spec == "auto" else parse_mesh_shape(spec)
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
  grid = mesh_utils.create_device_mesh(tuple(shape[a] for a in AXES), devices)
  return Mesh(grid, AXES)


def describe(shape) -> str:
  """'data 4 x space 2' for a mesh or an {axis: size} dict."""
  sizes = dict(shape.shape) if isinstance(shape, Mesh) else shape
  return " x ".join(f"{a} {sizes[a]}" for a in AXES)


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
