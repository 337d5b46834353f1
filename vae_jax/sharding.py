"""The one module that knows about devices, meshes and processes.

Data parallelism: a 1-D mesh over every device with a `data` axis; parameters,
optimiser state and the in-memory dataset are replicated, the per-step example
indices (and so the gathered batches) are split along `data`.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh() -> Mesh:
  """A mesh over all devices of all processes, one `data` axis."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
  """Sharding that splits axis `batch_axis` over the data axis."""
  spec = [None] * batch_axis + [DATA_AXIS]
  return NamedSharding(mesh, P(*spec))


def put_replicated(tree, mesh: Mesh):
  """Places a host pytree on every device (each process passes the same values)."""
  sharding = replicated(mesh)
  return jax.tree.map(lambda x: _global_array(np.asarray(x), sharding), tree)


def put_batch(array: np.ndarray, mesh: Mesh, batch_axis: int = 0):
  """Places a host array of the *global* batch, split over the data axis.

  Every process passes the same global array and keeps only its devices' part,
  so a multi-process run needs no extra communication for the indices.
  """
  return _global_array(np.asarray(array), batch_sharded(mesh, batch_axis))


def _global_array(array: np.ndarray, sharding: NamedSharding):
  if jax.process_count() == 1:
    return jax.device_put(array, sharding)
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def is_main_process() -> bool:
  """Only process 0 writes logs, images and config files."""
  return jax.process_index() == 0


def to_host(tree):
  """Fetches a (replicated) pytree as numpy, in every process."""
  def fetch(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return np.asarray(jax.device_get(x))
  return jax.tree.map(fetch, tree)
