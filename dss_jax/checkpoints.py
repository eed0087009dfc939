"""Orbax checkpoints of the built-in trainer, and parameter loading for eval.

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
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath

from dss_jax import errors

PyTree = Any

STATE = "state"
DATA = "data"
CHECKPOINTS = "checkpoints"
BEST_CHECKPOINTS = "best_checkpoints"


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


def absolute_path(path: epath.PathLike) -> epath.Path:
  """`path` made absolute when it is local; orbax refuses relative paths."""
  path = epath.Path(path)
  return path if "://" in str(path) else path.absolute()


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
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
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
