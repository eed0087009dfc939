"""Device mesh, T5X's logical axis rules, shardings: the `Partitioner`.

The model names every parameter and activation axis logically (`batch`,
`vocab`, `embed`, `mlp`, `heads`, `kv`, `joined_kv`, `relpos_buckets`,
`length`, `layers`); the rules here map those names onto a 2-D mesh
("data", "model"), as T5X's `standard_logical_axis_rules` does:

  * data parallel: mesh (N, 1), batch split over "data";
  * model (tensor) parallel: heads, mlp, vocab split over "model";
  * fsdp: also split each parameter's `embed` axis over "data" (T5X's
    parameter_partitioning_dims=2), so parameters and optimizer state are
    sharded across the data-parallel replicas.

A `Partitioner` holds the mesh and the rules together, so one gin binding
(`partitioning.Partitioner.model = %NUM_PARTITIONS`) places a whole job. The
trainer jits through it, as T5X's trainer jits through its partitioner:

    partitioner = Partitioner(data=-1, model=1, fsdp=False)
    param_sh = partitioner.shardings(params_shapes)
    step = partitioner.jit(train_step, in_shardings=(state_sh, batch_sh),
                           out_shardings=(state_sh, None), donate_argnums=0)
    batch = partitioner.put_batch(host_batch)  # batch split over "data"
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dss_jax import errors
from dss_jax.models.t5 import leaf_logical_axes

LogicalAxisRules = Sequence[tuple[str, str | tuple[str, ...] | None]]

DATA_AXIS = "data"
MODEL_AXIS = "model"

# Logical names that are never split (T5X's replicated rules).
_REPLICATED_RULES: LogicalAxisRules = (
  ("relpos_buckets", None),
  ("abspos_buckets", None),
  ("length", None),
  ("layers", None),
  ("stack", None),
  ("mlp_activations", None),
)


def standard_logical_axis_rules(
  activation_partitioning_dims: int = 1,
  parameter_partitioning_dims: int = 1,
  additional_rules: LogicalAxisRules | None = None,
) -> tuple[tuple[str, Any], ...]:
  """T5X's standard rules from logical axis names to mesh axes.

  Rules are tried in order; a mesh axis already used by an earlier dimension
  of the same array is skipped, so ("batch", "data") wins over
  ("embed", "data") for activations while parameters (no batch axis) get
  their `embed` axis split over "data".

  Args:
    activation_partitioning_dims: 2 also splits activations' `embed` over
      "model".
    parameter_partitioning_dims: 2 splits parameters' `embed` over "data"
      (fully sharded data parallel).
    additional_rules: rules appended at the end.

  Returns:
    The rules.

  Raises:
    ValueError: for dims other than 1 or 2.
  """
  if activation_partitioning_dims not in (1, 2) or (
    parameter_partitioning_dims not in (1, 2)
  ):
    raise ValueError("partitioning dims must be 1 or 2")
  rules: list[tuple[str, Any]] = [
    ("batch", DATA_AXIS),
    ("vocab", MODEL_AXIS),
    ("mlp", MODEL_AXIS),
    ("heads", MODEL_AXIS),
    ("kv", None),
    ("joined_kv", MODEL_AXIS),
  ]
  if activation_partitioning_dims == 2:
    rules.append(("embed", MODEL_AXIS))
  if parameter_partitioning_dims == 2:
    rules.append(("embed", DATA_AXIS))
  if activation_partitioning_dims == 1 and parameter_partitioning_dims == 1:
    rules.append(("embed", None))
  rules.extend(_REPLICATED_RULES)
  rules.extend(additional_rules or ())
  return tuple(rules)


STANDARD_LOGICAL_AXIS_RULES = standard_logical_axis_rules()
FSDP_LOGICAL_AXIS_RULES = standard_logical_axis_rules(
  parameter_partitioning_dims=2
)


def make_mesh(
  data: int = -1,
  model: int = 1,
  fsdp: bool = False,
  devices: Sequence[jax.Device] | None = None,
) -> Mesh:
  """A ("data", "model") mesh over all (or the given) devices.

  Args:
    data: size of the data axis; -1 takes every device not used by `model`.
    model: size of the model (tensor-parallel) axis.
    fsdp: accepted for symmetry with `Partitioner`; the mesh is the same and
      fsdp only changes the rules (see `Partitioner.rules`).
    devices: devices to use; defaults to `jax.devices()`.

  Returns:
    The mesh.

  Raises:
    ValueError: when the sizes do not divide the device count.
  """
  del fsdp
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  if model < 1 or n % model:
    raise ValueError(f"model={model} does not divide {n} devices")
  if data == -1:
    data = n // model
  if data * model != n:
    raise ValueError(
      f"mesh ({data}, {model}) needs {data * model} devices, got {n}"
    )
  try:
    # Orders devices so that "model" neighbours share the fastest links.
    grid = mesh_utils.create_device_mesh((data, model), devices=devices)
  except Exception:  # noqa: BLE001 - odd topologies fall back to plain order
    grid = np.asarray(devices).reshape(data, model)
  return Mesh(grid, (DATA_AXIS, MODEL_AXIS))


def logical_to_shardings(
  logical_specs: Any, mesh: Mesh, rules: LogicalAxisRules
) -> Any:
  """Maps a tree of logical PartitionSpecs to NamedShardings."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, list(rules))


def tree_logical_axes(tree: Any) -> Any:
  """Logical PartitionSpecs for params or any tree that embeds them.

  Optimizer states (optax's mu/nu, ...) hold copies of the parameter tree;
  their leaves end with the parameter's path and get its axes. Leaves that do
  not match a parameter (step counts, Adafactor's factored moments) are
  replicated.

  Args:
    tree: a pytree of arrays or `jax.ShapeDtypeStruct`s.

  Returns:
    A tree of `PartitionSpec`s of logical names.
  """

  def one(path, leaf):
    names = []
    for p in path:
      for attr in ("key", "name", "idx"):
        if hasattr(p, attr):
          names.append(str(getattr(p, attr)))
          break
    shape = np.shape(leaf)
    if len(names) < 2 or not shape:
      return PartitionSpec()
    try:
      return PartitionSpec(*leaf_logical_axes(names, len(shape)))
    except ValueError:
      return PartitionSpec()

  return jax.tree_util.tree_map_with_path(one, tree)


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules: LogicalAxisRules):
  """Makes `mesh` and `rules` current for tracing the model.

  Inside, `flax.linen.partitioning.with_sharding_constraint` in the model
  turns logical names into sharding constraints on this mesh.
  """
  with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules)):
    yield


def tree_shardings(tree: Any, mesh: Mesh, rules: LogicalAxisRules) -> Any:
  """NamedShardings for params, optimizer state or a train state.

  A dimension whose size the mesh axis does not divide (say 4 heads on a
  model axis of 8) is replicated instead, with a log line, rather than
  failing at placement time.

  Args:
    tree: arrays or `jax.ShapeDtypeStruct`s; see `tree_logical_axes`.
    mesh: the device mesh.
    rules: logical axis rules.

  Returns:
    A tree of `NamedSharding`s.
  """
  shardings = logical_to_shardings(tree_logical_axes(tree), mesh, rules)
  return jax.tree_util.tree_map_with_path(
    lambda path, leaf, sh: _divisible(path, np.shape(leaf), sh),
    tree,
    shardings,
  )


@dataclasses.dataclass
class Partitioner:
  """A mesh plus the rules that place the model on it.

  Attributes:
    data: data-axis size (-1: all remaining devices).
    model: model-axis size.
    fsdp: split parameters' `embed` axis over "data" too.
    activation_partitioning_dims: 2 also splits activations' `embed`.
    devices: optional explicit device list.
    logical_axis_rules: rules to use instead of T5X's standard ones built
      from `fsdp` and `activation_partitioning_dims` (T5X's partitioner
      takes them the same way).
  """

  data: int = -1
  model: int = 1
  fsdp: bool = False
  activation_partitioning_dims: int = 1
  devices: Sequence[jax.Device] | None = None
  logical_axis_rules: LogicalAxisRules | None = None

  def __post_init__(self):
    self.mesh = make_mesh(self.data, self.model, devices=self.devices)
    if self.logical_axis_rules is not None:
      self.rules = tuple(tuple(rule) for rule in self.logical_axis_rules)
    else:
      self.rules = standard_logical_axis_rules(
        self.activation_partitioning_dims, 2 if self.fsdp else 1
      )

  def context(self):
    """Mesh and axis rules active, so the model's logical constraints apply."""
    return mesh_context(self.mesh, self.rules)

  def shardings(self, tree: Any) -> Any:
    """NamedShardings for params, optimizer state or a train state."""
    return tree_shardings(tree, self.mesh, self.rules)

  def batch_sharding(self) -> NamedSharding:
    """Sharding of [batch, ...] input arrays: the rules' `batch` axis
    (split over "data" by the standard rules)."""
    return NamedSharding(
      self.mesh, nn.logical_to_mesh_axes(("batch",), list(self.rules))
    )

  def replicated(self) -> NamedSharding:
    """A fully replicated sharding (scalars, RNG keys)."""
    return NamedSharding(self.mesh, PartitionSpec())

  def jit(
    self,
    fn: Callable[..., Any],
    in_shardings: Any = None,
    out_shardings: Any = None,
    donate_argnums: int | Sequence[int] = (),
    static_argnums: int | Sequence[int] = (),
  ) -> Callable[..., Any]:
    """`jax.jit` with shardings, traced and run under this mesh and rules.

    Args:
      fn: the step function.
      in_shardings: shardings of the arguments (a tree per argument).
      out_shardings: shardings of the outputs.
      donate_argnums: arguments whose buffers the outputs may reuse (the
        train state), halving peak parameter memory.
      static_argnums: hashable, compile-time arguments.

    Returns:
      A callable with `fn`'s signature; its `.lower(...)` lowers under the
      same mesh and rules.
    """
    jitted = jax.jit(
      fn,
      in_shardings=in_shardings,
      out_shardings=out_shardings,
      donate_argnums=donate_argnums,
      static_argnums=static_argnums,
    )

    def call(*args, **kwargs):
      with self.context():
        return jitted(*args, **kwargs)

    def lower(*args, **kwargs):
      with self.context():
        return jitted.lower(*args, **kwargs)

    call.lower = lower
    return call

  def put_batch(self, batch: Any) -> Any:
    """Assembles this host's slice of a batch into global sharded arrays.

    Every host passes its own rows (its input shards); the global batch is
    split over the mesh by `batch_sharding`.
    """
    sharding = self.batch_sharding()
    return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      batch,
    )


def _divisible(
  path: Any, shape: tuple[int, ...], sharding: NamedSharding
) -> NamedSharding:
  spec = list(sharding.spec) + [None] * (len(shape) - len(sharding.spec))
  changed = False
  for i, axes in enumerate(spec):
    if axes is None:
      continue
    names = axes if isinstance(axes, tuple) else (axes,)
    size = int(np.prod([sharding.mesh.shape[a] for a in names]))
    if shape[i] % size:
      spec[i] = None
      changed = True
  if not changed:
    return sharding
  logging.info(
    "replicating %s: shape %s not divisible by %s",
    jax.tree_util.keystr(path),
    shape,
    sharding.spec,
  )
  return NamedSharding(sharding.mesh, PartitionSpec(*spec))


def initialize_distributed(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  heartbeat_timeout_seconds: int | None = None,
  shutdown_timeout_seconds: int | None = None,
) -> bool:
  """Starts `jax.distributed` on multi-host slices; a no-op on one host.

  On Cloud TPU VMs and under SLURM/Open MPI, JAX discovers the coordinator
  itself, so the arguments are only needed elsewhere (GPU or CPU hosts
  without a cluster manager: the entry points' `--coordinator_address`,
  `--process_count` and `--process_index` flags, as in T5X).

  Args:
    coordinator_address: "host:port" of process 0.
    num_processes: total processes.
    process_id: this process's index.
    heartbeat_timeout_seconds: a process silent this long counts as dead,
      and the others stop with an error instead of waiting for it forever
      (None: JAX's default, 100 s).
    shutdown_timeout_seconds: how long a finished process waits for the
      others at exit (None: JAX's default, 300 s).

  Returns:
    True if `jax.distributed.initialize` was called.
  """
  explicit = coordinator_address is not None
  # Markers the cluster environments set; without one this is a single host.
  cluster = any(
    os.environ.get(v)
    for v in (
      "JAX_COORDINATOR_ADDRESS",
      "MEGASCALE_COORDINATOR_ADDRESS",
      "SLURM_JOB_ID",
      "OMPI_COMM_WORLD_SIZE",
    )
  ) or "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
  if not explicit and not cluster:
    return False
  timeouts = {
    k: v
    for k, v in (
      ("heartbeat_timeout_seconds", heartbeat_timeout_seconds),
      ("shutdown_timeout_seconds", shutdown_timeout_seconds),
    )
    if v is not None
  }
  jax.distributed.initialize(
    coordinator_address=coordinator_address,
    num_processes=num_processes,
    process_id=process_id,
    **timeouts,
  )
  logging.info(
    "jax.distributed: process %d of %d, %d local / %d global devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return True


# Keys in the job's key-value store (jax.distributed's coordination service)
# through which processes tell each other how they ended.
_FAILED_KEY = "dss_jax/failed/"
_ENDED_KEY = "dss_jax/ended/"
# How often a process looks for another's failure: well under a second, so a
# failing host ends the job at once rather than after a heartbeat timeout.
_POLL_SECONDS = 0.5


class JobFate:
  """Makes every process of a multi-process job end when one fails.

  JAX's own answer to a process that stops is its heartbeat: after
  `heartbeat_timeout_seconds` of silence the coordination service declares
  it dead, and every other process aborts with a C++ check failure and a
  stack dump. A process that raised is not silent, though: JAX's exit hook
  waits in the shutdown barrier (`shutdown_timeout_seconds`, 300 s by
  default) while the others wait in a collective, so nothing ends for
  minutes. Here a failing process instead

    1. writes its error line under `dss_jax/failed/<index>` in the job's
       key-value store and prints it,
    2. leaves with `os._exit` (no shutdown barrier to wait in);

  and every other process watches that folder from a thread (every 0.5 s),
  prints one line naming the failed process and its error, and leaves with
  status 1, whatever its main thread is waiting in. Process 0 hosts the
  coordination service, so it leaves last: after every other process has
  said it is leaving (or after the heartbeat timeout).

  Bounds: a process that raises ends the job within about a second. A
  process that dies without a word (kill -9, a lost machine) is caught by
  JAX's heartbeat: the others stop after `--heartbeat_timeout_seconds`
  (JAX's default 100 s), through JAX's own abort.

  A process that finishes waits (watching) until every process has finished,
  so one that fails late still stops the others before JAX's shutdown
  barrier.
  """

  def __init__(self, heartbeat_timeout_seconds: float | None = None):
    # Imported here: a private module of JAX, the only handle on the client
    # of the job's coordination service.
    from jax._src import distributed

    self._client = distributed.global_state.client
    self._index = jax.process_index()
    self._count = jax.process_count()
    self._timeout = heartbeat_timeout_seconds or 100
    self._lock = threading.Lock()
    self._stop = threading.Event()
    self._thread = threading.Thread(
      target=self._watch, name="dss_jax-job-fate", daemon=True
    )

  def __enter__(self) -> JobFate:
    self._thread.start()
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self._stop.set()
    self._thread.join()

  def failure(self) -> tuple[int, str] | None:
    """(index, error line) of a process that failed, if any did."""
    try:
      entries = self._client.key_value_dir_get(_FAILED_KEY)
    except Exception:  # noqa: BLE001 - no entry yet, or the service left
      return None
    for key, line in sorted(entries):
      index = int(key.rsplit("/", 1)[-1])
      if index != self._index:
        return index, line
    return None

  def fail(self, line: str | None, status: int) -> None:
    """Tells the job this process failed, prints `line`, and leaves.

    Args:
      line: the `error: ...` line (None: already printed).
      status: the exit status.
    """
    with self._lock:
      peer = self.failure()
      if peer is not None and line and status != errors.USER_ERROR_STATUS:
        # A collective that broke because another process left: its error
        # is the one to read. (A line already printed, or a user error of
        # this process's own, stands as it is.)
        self._leave_after(peer)
      text = line or f"error: exited with status {status}"
      self._set(_FAILED_KEY, text)
      logging.disable(logging.CRITICAL)
      if line:
        print(line, file=sys.stderr)
      self._exit(status)

  def finish(self) -> None:
    """Waits until every process has finished, or leaves on a failure."""
    self._set(_ENDED_KEY, "ok")
    while len(self._entries(_ENDED_KEY)) < self._count:
      time.sleep(_POLL_SECONDS)
    peer = self.failure()
    if peer is not None:
      with self._lock:
        self._leave_after(peer)
    # Everyone finished: JAX's shutdown barrier will pass at once.

  def _watch(self) -> None:
    while not self._stop.wait(_POLL_SECONDS):
      peer = self.failure()
      if peer is not None:
        with self._lock:
          self._leave_after(peer)

  def _leave_after(self, peer: tuple[int, str]) -> None:
    # The main thread may go on logging until the process leaves; the error
    # line is to be the last one.
    logging.disable(logging.CRITICAL)
    index, line = peer
    reason = line.removeprefix("error: ")
    print(
      f"error: process {index} of {self._count} stopped ({reason}); this "
      f"process {self._index} stops too",
      file=sys.stderr,
    )
    self._set(_ENDED_KEY, "stopped")
    self._exit(1)

  def _exit(self, status: int) -> None:
    self._set(_ENDED_KEY, "stopped")
    if self._index == 0:
      # The others need the coordination service until they have left.
      deadline = time.monotonic() + self._timeout
      while (
        len(self._entries(_ENDED_KEY)) < self._count
        and time.monotonic() < deadline
      ):
        time.sleep(0.1)
      time.sleep(_POLL_SECONDS)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)

  def _set(self, folder: str, value: str) -> None:
    try:
      self._client.key_value_set(
        f"{folder}{self._index}", value, allow_overwrite=True
      )
    except Exception:  # noqa: BLE001 - the service left: nobody to tell
      pass

  def _entries(self, folder: str) -> list[tuple[str, str]]:
    try:
      return self._client.key_value_dir_get(folder)
    except Exception:  # noqa: BLE001 - no entry yet
      return []


def run_as_one_job(
  main: Callable[[], Any], heartbeat_timeout_seconds: float | None = None
) -> Any:
  """Runs this process's `main` so that one failing process ends the job.

  See `JobFate`. A user error (`errors.UserError`) ends in its one
  `error: ...` line and status 2, as on one host, a fault
  (`errors.FaultError`) the same with status 1; any other exception in
  its traceback and one line, status 1; an exception that is only the echo
  of another process's failure (a collective whose peer left) in one line
  naming that process. Every other process then prints one line and exits
  with status 1.

  Args:
    main: what this process runs.
    heartbeat_timeout_seconds: the job's heartbeat timeout, the bound on how
      long process 0 waits for the others to leave.

  Returns:
    What `main` returned, once every process has finished.
  """
  with JobFate(heartbeat_timeout_seconds) as fate:
    try:
      result = main()
    except SystemExit as e:
      status = e.code if isinstance(e.code, int) else int(e.code is not None)
      if status:
        fate.fail(None, status)  # its line is printed already
      fate.finish()
      raise
    except KeyboardInterrupt:
      fate.fail("error: interrupted (Ctrl-C)", 130)
    except BaseException as e:  # noqa: BLE001 - every failure ends the job
      known = errors.reported(e)
      if known is not None:
        fate.fail(*known)
      if fate.failure() is None:
        traceback.print_exc()  # a bug: keep what shows where
      fate.fail(f"error: {type(e).__name__}: {errors.one_line(e)}", 1)
    fate.finish()
    return result
