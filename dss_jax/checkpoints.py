"""This project's checkpoints: orbax save and restore, and parameter loading.

Layout (one orbax `CheckpointManager` per folder):

    MODEL_DIR/checkpoints/<step>/state   params, opt_state, step, rng
    MODEL_DIR/checkpoints/<step>/data    {"batches": N, "data_shards": S,
                                          "params_checksum": [...],
                                          "state_checksum": [...]}: data-
                                         stream position and input shards,
                                         and checksums of every parameter's
                                         and optimizer array's bits
    MODEL_DIR/best_checkpoints/<step>/   the same items, kept by an eval metric

Saves are asynchronous (the arrays are copied to host, the write happens in
the background) and the manager keeps the latest N. A resumed run restores
everything a step depends on, so interrupted + resumed == uninterrupted.

Integrity: each step stores checksums of its parameters' bits and of the rest
of its state (optimizer moments, step, RNG): the uint32 sum of each array,
computed on the devices; a restore that fails or whose arrays do not
match is reported in one line, and `restore_latest` falls
back to the newest intact step.

Parameters for eval, inference and export (`restore_model_params`,
`place_params`) come from a checkpoint of any layout: this project's, or
T5X's (`dss_jax.t5x_checkpoints` reads those), found by `resolve_checkpoint`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import pathlib
import re
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util

from dss_jax import errors, t5x_checkpoints
from dss_jax.t5x_checkpoints import CheckpointRef

if TYPE_CHECKING:
  from dss_jax.models import t5
  from dss_jax.partitioning import Partitioner

PyTree = Any

STATE = "state"
DATA = "data"
CHECKPOINTS = "checkpoints"
BEST_CHECKPOINTS = "best_checkpoints"
# The orbax manager names step directories <step>.
_STEP_DIR = re.compile(r"^(\d+)$")
ORBAX = t5x_checkpoints.ORBAX
# A checkpoint that cannot be used; the reason fits one line.
CheckpointError = t5x_checkpoints.CheckpointError


class CorruptCheckpointError(errors.UserError):
  """A saved step cannot be restored intact."""


@jax.jit
def _bit_sums(params: PyTree) -> list[jax.Array]:
  def bits(x):
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
      x = x.astype(jnp.uint8)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}
    raw = jax.lax.bitcast_convert_type(x, unsigned[x.dtype.itemsize])
    # Wrapping uint32 sums: any single flipped bit changes the sum.
    return jnp.sum(raw.astype(jnp.uint32), dtype=jnp.uint32)

  return [bits(x) for x in jax.tree.leaves(params)]


def params_checksum(params: PyTree) -> list[int]:
  """Per-array checksums of a parameter tree's bits (sharded arrays too)."""
  return [int(x) for x in jax.device_get(_bit_sums(params))]


def _state_checksum(state: PyTree) -> list[int]:
  """Per-array checksums of everything but the parameters (optimizer
  moments, step, RNG): a flipped bit there would resume a different run."""
  rest = {k: v for k, v in state.items() if k != "params"}
  return params_checksum(rest)


absolute_path = t5x_checkpoints.absolute_path


def _manager(
  directory: epath.PathLike,
  max_to_keep: int | None,
  async_save: bool,
  best_metric: str | None = None,
  best_mode: str = "max",
) -> ocp.CheckpointManager:
  best_fn = None
  if best_metric is not None:

    def best_fn(metrics: Mapping[str, float]) -> float:
      return float(metrics[best_metric])

  options = ocp.CheckpointManagerOptions(
    max_to_keep=max_to_keep,
    enable_async_checkpointing=async_save,
    best_fn=best_fn,
    best_mode=best_mode,
    create=True,
  )
  return ocp.CheckpointManager(
    absolute_path(directory), options=options, item_names=(STATE, DATA)
  )


class Checkpointer:
  """Saves and restores the train state and the data-stream position.

  Args:
    model_dir: the run's MODEL_DIR.
    max_to_keep: how many of the latest checkpoints to keep.
    async_save: write in the background.
    best_metric: an eval metric name; when set, `save_best` keeps the
      `keep_best` checkpoints with the best value in MODEL_DIR/best_checkpoints.
    best_mode: "max" or "min" for `best_metric`.
    keep_best: how many best checkpoints to keep.
  """

  def __init__(
    self,
    model_dir: epath.PathLike,
    *,
    max_to_keep: int = 3,
    async_save: bool = True,
    best_metric: str | None = None,
    best_mode: str = "max",
    keep_best: int = 1,
  ):
    model_dir = epath.Path(model_dir)
    self._latest = _manager(model_dir / CHECKPOINTS, max_to_keep, async_save)
    self._best = None
    if best_metric is not None:
      self._best = _manager(
        model_dir / BEST_CHECKPOINTS,
        keep_best,
        async_save,
        best_metric=best_metric,
        best_mode=best_mode,
      )

  @property
  def directory(self) -> epath.Path:
    """MODEL_DIR/checkpoints."""
    return self._latest.directory

  def latest_step(self) -> int | None:
    """The newest saved step, or None."""
    return self._latest.latest_step()

  def save(
    self,
    step: int,
    state: PyTree,
    batches: int,
    data_shards: int | None = None,
  ) -> bool:
    """Saves `state` and the data position at `step` (async).

    Every process calls it; orbax writes each array's shards from the
    process that holds them and the JSON item from process 0.

    Args:
      step: the training step the state is at.
      state: a pytree of arrays (params, opt_state, step, rng).
      batches: how many batches the data stream has produced.
      data_shards: the input shards the stream is assembled from.

    Returns:
      Whether a checkpoint was written (False if `step` already exists).
    """
    if step in self._latest.all_steps():
      return False
    return self._latest.save(
      step, args=_save_args(state, batches, data_shards), force=True
    )

  def saved_data_shards(self) -> int | None:
    """The input shards of the newest step's data stream, if it says."""
    step = self.latest_step()
    if step is None:
      return None
    data = self._latest.restore(
      step, args=ocp.args.Composite(**{DATA: ocp.args.JsonRestore()})
    )[DATA]
    shards = data.get("data_shards")
    return None if shards is None else int(shards)

  def restore_latest(
    self, abstract_state: PyTree
  ) -> tuple[int, PyTree, int] | None:
    """Restores the newest intact step, skipping corrupt ones.

    Args:
      abstract_state: as `restore`.

    Returns:
      (step, state, batches consumed), or None when nothing was saved.

    Raises:
      CorruptCheckpointError: steps exist but none is intact.
    """
    steps = sorted(self._latest.all_steps(), reverse=True)
    for step in steps:
      try:
        state, batches = self.restore(step, abstract_state)
      except Exception as e:  # noqa: BLE001  (any unreadable step is skipped)
        reason = str(e).strip().splitlines()[0][:200] if str(e) else ""
        logging.warning(
          "checkpoint step %d in %s is corrupt (%s: %s); trying an older one",
          step,
          self.directory,
          type(e).__name__,
          reason,
        )
        continue
      return step, state, batches
    if steps:
      raise CorruptCheckpointError(
        f"no intact checkpoint in {self.directory} (steps {steps}); delete "
        "it to train from the start"
      )
    return None

  def save_best(
    self,
    step: int,
    state: PyTree,
    batches: int,
    metrics: Mapping[str, float],
    data_shards: int | None = None,
  ) -> None:
    """Offers the checkpoint at `step` with eval `metrics` to the keep-best set."""
    if self._best is None:
      return
    self._best.save(
      step,
      args=_save_args(state, batches, data_shards),
      metrics={k: float(v) for k, v in metrics.items()},
      force=True,
    )

  def restore(self, step: int, abstract_state: PyTree) -> tuple[PyTree, int]:
    """Restores the state and data position saved at `step`.

    Args:
      step: a saved step.
      abstract_state: `jax.ShapeDtypeStruct`s with shardings for the state,
        so arrays come back sharded as the trainer wants them.

    Returns:
      (state, batches consumed).
    """
    restored = self._latest.restore(
      step,
      args=ocp.args.Composite(
        **{
          STATE: ocp.args.StandardRestore(abstract_state),
          DATA: ocp.args.JsonRestore(),
        }
      ),
    )
    data = restored[DATA]
    want = data.get("params_checksum")
    if want is not None and params_checksum(restored[STATE]["params"]) != want:
      raise CorruptCheckpointError(
        f"checkpoint step {step} in {self.directory}: parameters do not match "
        "their checksum"
      )
    want = data.get("state_checksum")
    if want is not None and _state_checksum(restored[STATE]) != want:
      raise CorruptCheckpointError(
        f"checkpoint step {step} in {self.directory}: optimizer state does "
        "not match its checksum"
      )
    return restored[STATE], int(data["batches"])

  def wait(self) -> None:
    """Blocks until background saves are on disk."""
    self._latest.wait_until_finished()
    if self._best is not None:
      self._best.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the managers."""
    self._latest.close()
    if self._best is not None:
      self._best.close()


def _save_args(
  state: PyTree, batches: int, data_shards: int | None
) -> ocp.args.Composite:
  data = {
    "batches": int(batches),
    "params_checksum": params_checksum(state["params"]),
    "state_checksum": _state_checksum(state),
  }
  if data_shards is not None:
    data["data_shards"] = int(data_shards)
  return ocp.args.Composite(
    **{STATE: ocp.args.StandardSave(state), DATA: ocp.args.JsonSave(data)}
  )


def _state_dir(path: epath.PathLike) -> epath.Path:
  """Finds the orbax `state` item under a model dir, a manager or a step."""
  path = absolute_path(path)
  if path.name == STATE:
    return path
  if (path / STATE).exists():
    return path / STATE
  for manager_dir in (path / CHECKPOINTS, path):
    if manager_dir.exists():
      steps = [int(p.name) for p in manager_dir.iterdir() if p.name.isdigit()]
      if steps:
        return manager_dir / str(max(steps)) / STATE
  raise errors.MissingFileError(f"no checkpoint found under {path}")


def restore_params(path: epath.PathLike) -> PyTree:
  """Loads only the parameters of a checkpoint written by the trainer.

  Args:
    path: MODEL_DIR (takes the newest step), MODEL_DIR/checkpoints, or one
      step folder such as MODEL_DIR/checkpoints/1000.

  Returns:
    The parameter pytree (T5X's tree: token_embedder, encoder, decoder), as
    arrays on the default device.

  Raises:
    FileNotFoundError: if no checkpoint is found.
  """
  state_dir = _state_dir(path)
  logging.info("restoring parameters from %s", state_dir)
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(state_dir)
  tree = getattr(metadata, "item_metadata", metadata)
  tree = getattr(tree, "tree", tree)
  params_meta = tree["params"]
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(
    lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
    params_meta,
  )
  restored = checkpointer.restore(
    state_dir,
    args=ocp.args.PyTreeRestore(
      item={"params": abstract},
      restore_args={
        "params": ocp.checkpoint_utils.construct_restore_args(abstract)
      },
      partial_restore=True,
    ),
  )
  return restored["params"]


def checkpoint_steps(
  model_dir: str | pathlib.Path, folder: str = CHECKPOINTS
) -> list[int]:
  """The saved steps of a run, oldest first.

  Args:
    model_dir: MODEL_DIR.
    folder: `CHECKPOINTS` (the latest ones) or `BEST_CHECKPOINTS`.
  """
  directory = epath.Path(model_dir) / folder
  if not directory.exists():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


# ---------------------------------------------------------------------------
# Checkpoints of any layout: this project's, or T5X's.


def list_checkpoints(model_dir: str | os.PathLike[str]) -> list[CheckpointRef]:
  """Lists the complete checkpoints under a model directory, oldest first.

  Looks at this project's ``checkpoints/<step>`` directories (or ``<step>``
  ones when ``model_dir`` is a checkpoint manager's directory such as
  ``MODEL_DIR/best_checkpoints``) and at T5X's ``checkpoint_<step>`` ones;
  directories still being written (no orbax metadata or msgpack file yet, or
  an orbax temporary name) are left out, so a running job can be followed.

  Args:
    model_dir: a dss-jax or T5X model directory.

  Returns:
    The checkpoints, sorted by step.
  """
  root = epath.Path(model_dir)
  found: dict[int, CheckpointRef] = {}
  for ref in [
    *t5x_checkpoints.list_checkpoints(root),
    *_own_checkpoints(root),
    *_own_checkpoints(root / CHECKPOINTS),
    *t5x_checkpoints.list_checkpoints(root / CHECKPOINTS),
  ]:
    found.setdefault(ref.step, ref)
  return [found[s] for s in sorted(found)]


def _own_checkpoints(manager_dir: epath.Path) -> list[CheckpointRef]:
  """The complete ``<step>`` checkpoints of one orbax manager's directory."""
  if not t5x_checkpoints.is_dir(manager_dir):
    return []
  refs = []
  for child in manager_dir.iterdir():
    match = _STEP_DIR.match(child.name)
    if match and t5x_checkpoints.is_dir(child):
      ref = t5x_checkpoints.step_dir_ref(child, int(match.group(1)))
      if ref is not None:
        refs.append(ref)
  return refs


def resolve_checkpoint(
  path: str | os.PathLike[str], step: int | None = None
) -> CheckpointRef:
  """Finds the checkpoint a user pointed at, of any layout.

  Args:
    path: a model directory (then ``step``, or the latest step, is used), a
      step directory, an orbax item directory, or T5X's msgpack
      ``checkpoint`` file.
    step: which step to take from a model directory.

  Returns:
    The checkpoint.

  Raises:
    CheckpointError: the path does not exist or holds no checkpoint.
  """
  p = epath.Path(path)
  if p.exists() and t5x_checkpoints.is_dir(p):
    refs = list_checkpoints(p)
    if refs:
      return t5x_checkpoints.pick_step(refs, step, path)
    match = _STEP_DIR.match(p.name)
    if match:  # one of this project's step directories
      ref = t5x_checkpoints.step_dir_ref(p, int(match.group(1)))
      if ref is not None:
        return ref
    match = _STEP_DIR.match(p.parent.name)
    if match and any(
      (p / m).exists() for m in t5x_checkpoints.ORBAX_MARKERS
    ):  # the state item of one of this project's steps
      return CheckpointRef(os.fspath(p), int(match.group(1)), ORBAX)
  return t5x_checkpoints.resolve_checkpoint(path, step)


def recorded_checksums(ref: CheckpointRef) -> list[int] | None:
  """The parameter checksums saved beside one of this project's steps.

  Args:
    ref: a checkpoint; only this project's ``<step>/state`` items have a
      ``<step>/data`` record beside them.

  Returns:
    The per-array checksums (`params_checksum`'s order), or None where the
    checkpoint records none (T5X's layouts, older steps).

  Raises:
    CorruptCheckpointError: the record exists but cannot be read.
  """
  if ref.format != ORBAX:
    return None
  state = absolute_path(ref.path)
  record = state.parent / DATA / "metadata"
  if state.name != STATE or not record.exists():
    return None
  try:
    want = json.loads(record.read_text()).get("params_checksum")
  except (ValueError, AttributeError, UnicodeDecodeError) as e:
    raise CorruptCheckpointError(
      f"checkpoint {ref.path}: its record {record} is unreadable "
      f"({errors.one_line(e)}); restore the step or score another one"
    ) from None
  return None if want is None else [int(x) for x in want]


def verify_params(ref: CheckpointRef, flat: Mapping[str, np.ndarray]) -> None:
  """Checks parameters read from ``ref`` against their saved checksums.

  Args:
    ref: where ``flat`` was read from.
    flat: ``{"a/b/c": array}`` as `read_ref` returns them.

  Raises:
    CorruptCheckpointError: an array whose bits differ from the ones saved
      (one line naming the checkpoint, the parameter and the record).
  """
  want = recorded_checksums(ref)
  if want is None:
    return
  names = sorted(flat, key=lambda name: tuple(name.split("/")))
  tree = traverse_util.unflatten_dict(
    {tuple(k.split("/")): v for k, v in flat.items()}
  )
  # jax.tree.leaves orders a dict's keys sorted, level by level: the order
  # of the tuples of path parts, which `names` follows.
  got = params_checksum(tree)
  record = absolute_path(ref.path).parent / DATA / "metadata"
  if len(got) != len(want):
    raise CorruptCheckpointError(
      f"checkpoint {ref.path}: {len(got)} parameter arrays, but {record} "
      f"records {len(want)}; the step is damaged, score another one"
    )
  for name, g, w in zip(names, got, want, strict=True):
    if g != w:
      raise CorruptCheckpointError(
        f"checkpoint {ref.path}: parameter {name} does not match its "
        f"checksum in {record} (the file is damaged); restore the step or "
        "use another one"
      )


def read_ref(ref: CheckpointRef) -> dict[str, np.ndarray]:
  """Reads one checkpoint's parameters, flat, as host numpy arrays.

  This project's steps are checked against the checksums saved with them
  (`verify_params`), and a file that cannot be read (truncated, missing) is
  one line, so eval, inference and export never use damaged parameters.

  Args:
    ref: this project's orbax item (its tree keeps the parameters under
      "params"), or one of T5X's checkpoints.

  Returns:
    ``{"encoder/layers_0/attention/query/kernel": array, ...}``.

  Raises:
    CorruptCheckpointError: the checkpoint cannot be read, or its arrays
      differ from the ones saved.
  """
  _quiet_abandoned_reads()
  try:
    flat = _read_ref_unchecked(ref)
  except errors.UserError:
    raise
  except Exception as e:  # noqa: BLE001  (orbax, tensorstore, msgpack faults)
    files = re.findall(r'local file "([^"]+)"', str(e))
    what = (
      f"file {files[-1]}"
      if files
      else f"{type(e).__name__}: {errors.one_line(e)[:200]}"
    )
    raise CorruptCheckpointError(
      f"checkpoint {ref.path} cannot be read ({what}); it is damaged or "
      "incomplete: restore it or use another step"
    ) from None
  verify_params(ref, flat)
  return flat


def _quiet_abandoned_reads() -> None:
  """Silences orbax's loose ends after a failed read (set before reading).

  When one array of a checkpoint fails to read, orbax's event loop closes
  while the reads of the other arrays are still under way; when those end,
  tensorstore reports "Event loop is closed" (through `sys.excepthook` or
  `sys.unraisablehook`), and asyncio logs the abandoned tasks at exit. Both
  would print tracebacks after the one-line error about the damaged
  checkpoint.
  """
  hook, unraisable = sys.excepthook, sys.unraisablehook
  if getattr(hook, "_dss_quiet", False):
    return

  def closed_loop(value: BaseException | None) -> bool:
    return isinstance(value, RuntimeError) and "Event loop is closed" in str(
      value
    )

  def quiet(kind, value, tb):
    if not closed_loop(value):
      hook(kind, value, tb)

  def quiet_unraisable(report):
    if not closed_loop(report.exc_value):
      unraisable(report)

  quiet._dss_quiet = True  # type: ignore[attr-defined]
  sys.excepthook = quiet
  sys.unraisablehook = quiet_unraisable
  logging.getLogger("asyncio").addFilter(
    lambda record: "exception was never retrieved" not in record.getMessage()
  )


def _read_ref_unchecked(ref: CheckpointRef) -> dict[str, np.ndarray]:
  if ref.format == ORBAX:
    item_dir = absolute_path(ref.path)
    if "params" in t5x_checkpoints.orbax_tree(item_dir):
      flat = t5x_checkpoints.read_orbax_subtree(item_dir, "params")
      logging.info("read %d parameters from %s", len(flat), ref.path)
      return flat
  return t5x_checkpoints.read_ref(ref)


def read_params(
  path: str | os.PathLike[str], step: int | None = None
) -> dict[str, np.ndarray]:
  """Reads a checkpoint's parameters, flat, without a model to compare to.

  Args:
    path: see `resolve_checkpoint`.
    step: see `resolve_checkpoint`.

  Returns:
    ``{"encoder/layers_0/attention/query/kernel": array, ...}`` on the host.

  Raises:
    CheckpointError: no readable checkpoint at ``path``.
  """
  return read_ref(resolve_checkpoint(path, step))


def load_params(
  path: str | os.PathLike[str],
  reference: PyTree,
  *,
  step: int | None = None,
  fallback: PyTree | None = None,
  shardings: PyTree | None = None,
) -> dict[str, Any]:
  """Restores a model's parameters from a checkpoint of any layout.

  This is what INITIAL_CHECKPOINT_PATH and the eval jobs use.

  Args:
    path: see `resolve_checkpoint`; local or ``gs://``.
    reference: the model's parameters or their shapes.
    step: the step to take from a model directory (default: latest).
    fallback: parameters for names the checkpoint lacks (see
      `t5x_checkpoints.match_params`).
    shardings: optional tree of ``jax.sharding.Sharding`` like
      ``reference``; the arrays are placed with them, and from a legacy T5X
      checkpoint each host reads only its devices' slices.

  Returns:
    The parameter tree (numpy, or jax arrays when ``shardings`` is given).

  Raises:
    CheckpointError: see `resolve_checkpoint` and
      `t5x_checkpoints.match_params`.
  """
  return t5x_checkpoints.load_ref(
    resolve_checkpoint(path, step),
    reference,
    source=f"checkpoint {path}",
    fallback=fallback,
    shardings=shardings,
    read=read_ref,
  )


# ---------------------------------------------------------------------------
# A model's parameters, restored and placed for decoding.


def abstract_params(model: t5.Transformer) -> PyTree:
  """The model's parameter shapes and dtypes, without allocating them."""
  tokens = jnp.ones((1, 4), jnp.int32)
  shapes = jax.eval_shape(
    functools.partial(model.init, enable_dropout=False),
    jax.random.PRNGKey(0),
    tokens,
    tokens,
    tokens,
  )
  return shapes["params"]


def restore_model_params(
  model: t5.Transformer, checkpoint: str, *, step: int | None = None
) -> PyTree:
  """Restores ``model``'s parameters from any checkpoint layout.

  Args:
    model: the student.
    checkpoint: this project's model dir or step, or a T5X checkpoint
      (legacy or orbax), local or gs://.
    step: the step to take from a model dir (default: latest).

  Returns:
    The parameter tree (host numpy arrays).

  Raises:
    CheckpointError: no usable checkpoint (one line).
  """
  return load_params(checkpoint, abstract_params(model), step=step)


def decode_partitioner(partitioner: Partitioner | None) -> Partitioner | None:
  """The partitioner to decode with; None when hosts decode their own share.

  On several hosts, a partitioner without model parallelism would replicate
  the parameters over every host's devices and make all hosts decode every
  example together; without it, each host holds the parameters whole and
  decodes only its share (`evaluation.predict_tokens`).
  """
  if jax.process_count() > 1 and getattr(partitioner, "model", 1) == 1:
    return None
  return partitioner


def place_params(
  params: PyTree, partitioner: Partitioner | None = None
) -> PyTree:
  """Puts host parameters on devices once, rather than at every decode call.

  Args:
    params: the parameter tree.
    partitioner: optional partitioner: parameters are sharded by its logical
      axis rules (model parallelism for models that do not fit one device);
      None puts them on the default device.

  Returns:
    The parameters as jax arrays.
  """
  if partitioner is None:
    return jax.device_put(params)
  return jax.device_put(params, partitioner.shardings(params))
