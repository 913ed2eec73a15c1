"""Device mesh and shardings: data parallel over a ("data",) mesh, state replicated.

Batch norm inside a jitted step then reduces over the *global* batch (sync-BN); parity runs keep
to one device so that BN sees exactly the upstream batch.
"""
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def maybe_initialize_distributed() -> None:
  """Multi-host start-up when a launcher sets the coordinator (SLURM / TPU-VM pods)."""
  if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("JAXSEG_DISTRIBUTED") == "1":
    jax.distributed.initialize()


def make_mesh(devices=None) -> Mesh:
  """A 1-D ("data",) mesh over all devices (of every host)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise ValueError(f"batch_size={batch_size} is not divisible by the {n} devices of the mesh")


def put_replicated(tree, mesh: Mesh):
  return jax.device_put(tree, replicated(mesh))


def put_batch(batch: dict, mesh: Mesh) -> dict:
  """Host-local numpy batch -> global arrays sharded on the leading axis.

  On one host the local batch is the global batch; on several, each host feeds its own slice.
  """
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}
