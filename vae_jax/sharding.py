"""The one module that knows about devices, meshes and processes.

Data parallelism: a 1-D mesh over every device of every process with a `data`
axis; parameters, optimiser state and the in-memory dataset are replicated, the
per-step example indices (and so the gathered batches) are split along `data`.

Several processes (a TPU pod slice, several GPU hosts, or local CPU processes in
the tests) each run the same program on their own devices. `initialize` starts
JAX's multi-process runtime before anything touches a device: process 0 hosts
the coordinator, every process sends it heartbeats, and cross-process
collectives go over the accelerator interconnect (or gloo over TCP on CPU, the
default of `jax_cpu_collectives_implementation` once the runtime is up). A
process that dies or stops answering makes the others exit within about
`peer_timeout_s` instead of waiting for it forever.
"""

import glob
import importlib.util
import os

from absl import flags
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vae_jax import logs as vlog

DATA_AXIS = 'data'
MODES = ('auto', 'on', 'off')
# What jax's own SLURM detection (jax._src.clusters.slurm_cluster) reads.
_SLURM_VARS = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID',
               'SLURM_LOCALID')


class DistributedError(RuntimeError):
  """The multi-process runtime could not start; the message says what to check."""


def detect_launcher() -> str | None:
  """Names the multi-process launcher this process was started by, or None.

  The environments `jax.distributed.initialize()` configures by itself: SLURM
  or Open MPI with more than one task, a Cloud TPU VM (jax asks the TPU
  metadata server for the slice's workers; a single-host slice is one
  process), or JAX_COORDINATOR_ADDRESS set by the user.
  """
  env = os.environ
  if env.get('JAX_COORDINATOR_ADDRESS'):
    return 'JAX_COORDINATOR_ADDRESS'
  if all(name in env for name in _SLURM_VARS) and _int_env('SLURM_NTASKS') > 1:
    return 'SLURM'
  if 'OMPI_MCA_orte_hnp_uri' in env and _int_env('OMPI_COMM_WORLD_SIZE') > 1:
    return 'Open MPI'
  if _on_cloud_tpu_vm():
    return 'Cloud TPU'
  return None


def _int_env(name: str) -> int:
  try:
    return int(os.environ.get(name, '1'))
  except ValueError:
    return 1


def _on_cloud_tpu_vm() -> bool:
  """libtpu installed and a TPU chip's device node present (/dev/accel* up to
  v4, VFIO groups from v5); the check reads files only, no device is opened."""
  if importlib.util.find_spec('libtpu') is None:
    return False
  return bool(glob.glob('/dev/accel[0-9]*') or glob.glob('/dev/vfio/[0-9]*'))


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids=None, *, mode: str = 'auto',
               initialization_timeout_s: int = 300, peer_timeout_s: int = 100) -> bool:
  """Starts JAX's multi-process runtime when this run has several processes.

  Must run before anything touches a device (jax.devices(), a computation).
  With mode 'auto' the runtime starts when a coordinator is given here or
  `detect_launcher()` finds one (SLURM, Open MPI, a Cloud TPU VM,
  JAX_COORDINATOR_ADDRESS); 'on' starts it regardless and leaves the detection
  to jax; 'off' never starts it (one process, its local devices).

  Args:
    coordinator_address: 'host:port' of process 0, the same in every process.
    num_processes: how many processes the run has.
    process_id: this process, 0 .. num_processes - 1.
    local_device_ids: the accelerators this process uses (default: all it sees).
    mode: 'auto', 'on' or 'off'.
    initialization_timeout_s: how long to wait for every process to connect.
    peer_timeout_s: a process that has sent no heartbeat for this long is dead,
      and a process that exits waits this long for the others to reach the end;
      after either, every remaining process exits with an error.

  Returns:
    True when the runtime is running (started here or before), False when this
    is a one-process run.

  Raises:
    DistributedError: arguments that do not describe a run, or that jax
      refuses. (A coordinator that does not answer within
      initialization_timeout_s ends the process from inside jax instead.)
  """
  if mode not in MODES:
    raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
  if jax.distributed.is_initialized():
    return True
  explicit = {'coordinator_address': coordinator_address, 'num_processes': num_processes,
              'process_id': process_id}
  given = [name for name, value in explicit.items() if value is not None]
  launcher = detect_launcher()
  if mode == 'off' or (mode == 'auto' and not given and launcher is None):
    if given:
      raise DistributedError(f'--distributed=off but --{given[0]} was given')
    return False
  missing = [name for name, value in explicit.items() if value is None]
  if given and missing and launcher is None:
    raise DistributedError(
        f'--{given[0]} was given without --{" and --".join(missing)}; a run of several '
        'processes outside SLURM, Open MPI or a TPU VM needs --coordinator_address, '
        '--num_processes and --process_id in every process')
  # jax's preemption service catches SIGTERM in C++ and only records it; the
  # training loop's own handler (saves, then exits 0) must see the signal, as
  # it does in a one-process run.
  jax.config.update('jax_enable_preemption_service', False)
  source = launcher or ('flags' if given else '--distributed=on')
  where = _target(source, coordinator_address, num_processes, process_id)
  # A coordinator that never answers ends the process from inside jax, with no
  # exception reaching Python: this line is the context its message lacks.
  vlog.info(f'Joining a multi-process run ({where}); waiting up to '
            f'{initialization_timeout_s} s for every process; a process silent for '
            f'{peer_timeout_s} s will end the run.')
  try:
    jax.distributed.initialize(
        coordinator_address, num_processes, process_id, local_device_ids,
        initialization_timeout=initialization_timeout_s,
        heartbeat_timeout_seconds=peer_timeout_s, shutdown_timeout_seconds=peer_timeout_s)
  except (RuntimeError, TypeError, ValueError) as e:
    raise DistributedError(
        f'could not start the multi-process runtime ({where}): {vlog.brief(e)}') from e
  return True


def _target(source, coordinator_address, num_processes, process_id) -> str:
  """'SLURM: coordinator auto, process 1 of auto', for messages."""
  def shown(value):
    return 'auto' if value is None else value
  address = coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS')
  return (f'{source}: coordinator {shown(address)}, '
          f'process {shown(process_id)} of {shown(num_processes)}')


def define_flags():
  """Defines the multi-process flags; entry points call this once, at import."""
  flags.DEFINE_enum(
      'distributed', 'auto', MODES,
      'Start the multi-process runtime: auto (when a --coordinator_address is given or '
      'SLURM, Open MPI or a Cloud TPU VM is detected), on, or off (one process).')
  flags.DEFINE_string('coordinator_address', None,
                      'host:port of process 0, the same in every process.')
  flags.DEFINE_integer('num_processes', None, 'Processes in the run.', lower_bound=1)
  flags.DEFINE_integer('process_id', None, 'This process, 0 .. num_processes - 1.',
                       lower_bound=0)
  flags.DEFINE_list('local_device_ids', None,
                    'Accelerators this process uses, e.g. 0,1 (default: all it sees).')
  flags.DEFINE_integer('initialization_timeout_s', 300,
                       'Seconds to wait for every process to connect.', lower_bound=1)
  flags.DEFINE_integer(
      'peer_timeout_s', 100,
      'Seconds after which a silent or finished peer makes every process exit with an '
      'error (heartbeat and shutdown timeouts).', lower_bound=1)


def initialize_from_flags() -> bool:
  """`initialize` with the values of the flags of `define_flags`."""
  f = flags.FLAGS
  ids = f.local_device_ids
  if ids is not None:
    try:
      ids = [int(i) for i in ids]
    except ValueError:
      raise DistributedError(
          f'--local_device_ids: expected integers like 0,1, got {",".join(ids)}') from None
  return initialize(f.coordinator_address, f.num_processes, f.process_id, ids,
                    mode=f.distributed, initialization_timeout_s=f.initialization_timeout_s,
                    peer_timeout_s=f.peer_timeout_s)


def describe() -> str:
  """'process 1 of 2: 4 of 8 cpu devices' (starts the backend)."""
  return (f'process {jax.process_index()} of {jax.process_count()}: '
          f'{jax.local_device_count()} of {jax.device_count()} {jax.default_backend()} devices')


def device_count() -> int:
  """Devices of every process together: what a global batch is split over."""
  return jax.device_count()


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
  so a multi-process run needs no extra communication for the indices. For the
  per-step example indices [S, B] this is how each process reads only its own
  slice of the data: the dataset is in memory in every process, and each device
  gathers its own columns' examples inside the compiled step.
  """
  return _global_array(np.asarray(array), batch_sharded(mesh, batch_axis))


def process_rows(mesh: Mesh, batch_size: int) -> tuple:
  """(start, stop): the rows of a global batch that this process's devices hold under
  `batch_sharded` (one contiguous block; the streaming path reads only these)."""
  index_map = batch_sharded(mesh).addressable_devices_indices_map((batch_size,))
  starts = [index[0].start or 0 for index in index_map.values()]
  stops = [batch_size if index[0].stop is None else index[0].stop for index in index_map.values()]
  start, stop = min(starts), max(stops)
  if stop - start != sum(b - a for a, b in set(zip(starts, stops))):
    raise ValueError(f"this process's devices hold rows that are not contiguous in {index_map}")
  return start, stop


def put_local_batch(local: np.ndarray, mesh: Mesh, batch_axis: int, batch_size: int):
  """The global batch array from this process's rows (`process_rows`) along `batch_axis`."""
  sharding = batch_sharded(mesh, batch_axis)
  if jax.process_count() == 1:
    return jax.device_put(local, sharding)
  global_shape = local.shape[:batch_axis] + (batch_size,) + local.shape[batch_axis + 1:]
  return jax.make_array_from_process_local_data(sharding, local, global_shape)


def _global_array(array: np.ndarray, sharding: NamedSharding):
  if jax.process_count() == 1:
    return jax.device_put(array, sharding)
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def is_main_process() -> bool:
  """Only process 0 writes logs, images and config files."""
  return jax.process_index() == 0


def any_process(flag: bool) -> bool:
  """True in every process when `flag` is True in at least one.

  Every process must call it at the same point of the program: it is a
  collective. Decisions taken from process-local events (a SIGTERM) go through
  it so that all processes take the same branch.
  """
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.any(multihost_utils.process_allgather(np.int32(bool(flag)))))


def to_host(tree):
  """Fetches a (replicated) pytree as numpy, in every process."""
  def fetch(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return np.asarray(jax.device_get(x))
  return jax.tree.map(fetch, tree)


def replicate(tree, mesh: Mesh):
  """`tree` replicated over `mesh`, leaving arrays that already are as they are.

  Unlike put_replicated it never fetches an array to the host, so it takes the
  train state's params in any process of a multi-process run.
  """
  target = replicated(mesh)

  def place(x):
    if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(target, x.ndim):
      return x
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return jax.device_put(x, target)
    return _global_array(np.asarray(x), target)
  return jax.tree.map(place, tree)


def gather_to_host(tree):
  """Fetches arrays split over the devices of every process, whole, as numpy."""
  def fetch(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
  return jax.tree.map(fetch, tree)
