"""The built-in trainer's loop and job: feeds `dss_jax.step`, saves, logs.

`train()` is what `python -m dss_jax.train` runs (gin binds its arguments; see
gin_configs/runs/train.gin). It reads a SeqIO mixture through
`dss_jax.input_pipeline`, trains a `dss_jax.models.t5.Transformer` with an
optimizer from `dss_jax.optimizers`, shards parameters, optimizer state and
batches over a mesh with T5X's logical axis rules, and checkpoints with orbax
(`dss_jax.checkpoints`).

Guarantees the tests check:
  * resume is exact: a run interrupted (SIGTERM) and resumed ends with the
    same parameters as one that never stopped;
  * a NaN or Inf loss stops the run with one clear error, and no state at or
    after the bad step is ever saved;
  * the loss of each task of a mixture is logged, and under the official
    recipe the optimized loss is exactly alpha * L_label + (1 - alpha) *
    L_rationale, alpha = 1 / (1 + lambda), each L a mean over that task's
    real target tokens in the step (the official implementation's loss).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import flax.linen as nn
import jax
import numpy as np
import tqdm
from etils import epath
from jax._src import distributed
from jax.experimental import multihost_utils

from dss_jax import checkpoints, errors, optimizers, partitioning
from dss_jax.flops import (  # noqa: F401  (the trainer's API too)
  PEAK_FLOPS_BY_DEVICE_KIND,
  measure_matmul_flops,
  peak_flops_per_second,
  train_flops_per_step,
)
from dss_jax.step import (
  LossConfig,
  StepConfig,
  Trainer,
  TrainState,
  official_loss,
)
from dss_jax.teacher import store as store_lib

Array = jax.Array
PyTree = Any
Batch = Mapping[str, Array]


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or Inf; the last good checkpoint is kept."""


class Evaluator(Protocol):
  """What the trainer needs from `dss_jax.evaluation.Evaluator`."""

  def evaluate(self, params: PyTree, step: int) -> Mapping[str, float]: ...


# ----------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------


class _Preemption:
  """Turns SIGTERM (a preempted VM) and Ctrl-C into a stop the loop checks.

  Either signal saves a checkpoint after the current step and stops; a
  second Ctrl-C interrupts at once (KeyboardInterrupt), losing the steps
  since the last checkpoint.

  On several hosts the signal may reach only some of them (a maintenance
  event). As in T5X, JAX's preemption sync manager (started by
  `jax.distributed.initialize`) then takes SIGTERM itself and picks a step
  that every host stops after (`reached_preemption_sync_point`), with no
  device synchronization; Ctrl-C is passed on to it as SIGTERM. Without the
  manager, the hosts all-gather their stop flags after every step.
  """

  def __init__(self):
    self.requested = False
    self._previous = {}
    self._sync_manager = False

  def __enter__(self) -> _Preemption:
    self._sync_manager = jax.process_count() > 1 and _has_sync_manager()
    # With the sync manager, its own SIGTERM handler must stay in place.
    signals = (signal.SIGINT,)
    if not self._sync_manager:
      signals = (signal.SIGTERM, signal.SIGINT)
    try:
      for signum in signals:
        self._previous[signum] = signal.signal(signum, self._handle)
    except ValueError:  # not the main thread: no handler, no preemption
      self._previous = {}
    return self

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.requested:
      raise KeyboardInterrupt
    name = signal.Signals(signum).name
    logging.warning("%s: saving a checkpoint and stopping", name)
    if signum == signal.SIGINT:
      print(
        "\ninterrupted: saving a checkpoint after this step "
        "(Ctrl-C again to stop at once)",
        file=sys.stderr,
      )
    self.requested = True
    if self._sync_manager:
      os.kill(os.getpid(), signal.SIGTERM)  # to the sync manager

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)

  def should_stop(self, step: int) -> bool:
    """True on every host after the same step, once any host was signaled.

    Args:
      step: the step just done; every host calls this after every step.
    """
    if jax.process_count() == 1:
      return self.requested
    if self._sync_manager:
      stop = multihost_utils.reached_preemption_sync_point(step)
      if stop:
        logging.warning("preemption sync point: stopping after step %d", step)
      return stop
    flags = multihost_utils.process_allgather(np.array(self.requested))
    return bool(np.any(flags))


def _has_sync_manager() -> bool:
  """Whether `jax.distributed` runs JAX's preemption sync manager."""
  return (
    getattr(distributed.global_state, "preemption_sync_manager", None)
    is not None
  )


@dataclasses.dataclass
class _Meter:
  """Accumulates host-side metrics between two log lines."""

  flops_per_step: float
  peak_flops: float
  sums: dict[str, float] = dataclasses.field(default_factory=dict)
  steps: int = 0
  tokens: int = 0
  real_tokens: int = 0
  start: float = dataclasses.field(default_factory=time.perf_counter)

  def add(self, metrics: Mapping[str, float], batch: Mapping[str, Any]):
    for k, v in metrics.items():
      self.sums[k] = self.sums.get(k, 0.0) + float(v)
    self.steps += 1
    n = jax.process_count()
    self.tokens += n * (
      batch["encoder_input_tokens"].size + batch["decoder_target_tokens"].size
    )
    self.real_tokens += n * int(
      np.count_nonzero(batch["encoder_input_tokens"])
      + np.count_nonzero(batch["decoder_loss_weights"])
    )

  def summary(self) -> dict[str, float]:
    elapsed = max(time.perf_counter() - self.start, 1e-9)
    out = {k: v / max(self.steps, 1) for k, v in self.sums.items()}
    out["steps_per_sec"] = self.steps / elapsed
    out["tokens_per_sec"] = self.tokens / elapsed
    out["real_tokens_per_sec"] = self.real_tokens / elapsed
    out["mfu"] = self.flops_per_step * out["steps_per_sec"] / self.peak_flops
    return out


def _check_finite(step: int, metrics: Mapping[str, float]) -> None:
  if not all(math.isfinite(metrics[k]) for k in ("loss", "grad_norm")):
    raise NonFiniteLossError(
      f"loss became {metrics['loss']} (grad norm {metrics['grad_norm']}) at "
      f"step {step}; stopping. The last good checkpoint is kept; lower the "
      "learning rate or check the data, then resume."
    )


@dataclasses.dataclass
class TrainResult:
  """What `train` returns: where it stopped and how."""

  step: int
  state: TrainState
  metrics: dict[str, float]
  preempted: bool = False


def train(
  *,
  model: nn.Module,
  mixture_or_task_name: str,
  task_feature_lengths: Mapping[str, int],
  train_steps: int,
  model_dir: str,
  step: StepConfig = StepConfig(),
  batch_size: int | None = None,
  optimizer: optimizers.Optimizer = optimizers.AdamW(),
  loss: LossConfig = LossConfig(),
  pack: bool = False,
  packed_rows: int | None = None,
  use_cached_tasks: bool = False,
  cache_examples: bool = False,
  random_seed: int = 0,
  data_shards: int | None = None,
  num_microbatches: int = 1,
  partitioner: partitioning.Partitioner | None = None,
  initial_checkpoint_path: str | None = None,
  checkpoint_period: int = 1000,
  keep_checkpoints: int | None = 3,
  async_checkpointing: bool = True,
  log_period: int = 100,
  evaluator: Evaluator | None = None,
  eval_period: int = 0,
  best_metric: str | None = None,
  best_mode: str = "max",
  peak_flops: float | None = None,
  progress_bar: bool = True,
) -> TrainResult:
  """Trains (or resumes training) a model on a SeqIO mixture.

  Args:
    model: the student (`dss_jax.models.t5.Transformer`).
    mixture_or_task_name: MIXTURE_OR_TASK_NAME.
    task_feature_lengths: TASK_FEATURE_LENGTHS.
    train_steps: TRAIN_STEPS, the total number of optimizer updates.
    model_dir: MODEL_DIR: checkpoints and TensorBoard logs.
    step: what a step holds (RECIPE, RATIONALE_RATE, INPUTS_PER_STEP): the
      rows of a step (2 per input for the label and rationale tasks of a
      mixture, 1 for a single task), the sampling rates 1 : lambda and, for
      the official recipe, the loss `alpha * L_label + (1 - alpha) *
      L_rationale`, alpha = 1 / (1 + lambda), each L a mean over that task's
      real target tokens in the step (`loss.normalizing_factor` does not
      apply). Under "mixture", `loss` normalizes the sampled rows (per
      sequence by default, so the rationale rate is lambda).
    batch_size: deprecated (the gin macro BATCH_SIZE): global rows per step;
      when set, `step.inputs_per_step` becomes rows / tasks, with a warning
      naming INPUTS_PER_STEP.
    optimizer: `optimizers.AdamW` or `optimizers.Adafactor`.
    loss: LOSS_NORMALIZING_FACTOR and regularizers.
    pack: PACK: pack each step's rows into `packed_rows` rows; the examples
      per step stay the same.
    packed_rows: PACKED_ROWS, global rows of a packed step.
    use_cached_tasks: USE_CACHED_TASKS.
    cache_examples: keep each task's preprocessed examples in memory and
      reshuffle them every epoch (`input_pipeline.DatasetConfig`).
    random_seed: RANDOM_SEED: parameters, dropout and data order.
    data_shards: DATA_SHARDS: input shards each global batch is assembled
      from (`input_pipeline.DatasetConfig.data_shards`); None: one per
      process, or, when resuming, the checkpoint's, so a run resumes
      exactly on another number of processes.
    num_microbatches: gradient accumulation steps inside one update.
    partitioner: the mesh and its logical axis rules; default
      `partitioning.Partitioner()` (data parallel over every device, T5X's
      standard rules).
    initial_checkpoint_path: INITIAL_CHECKPOINT_PATH: parameters to start
      from (T5X or this trainer's checkpoints); ignored when resuming.
    checkpoint_period: save every this many steps (and at the end).
    keep_checkpoints: how many latest checkpoints to keep; None: all.
    async_checkpointing: write checkpoints in the background.
    log_period: write metrics every this many steps.
    evaluator: optional `dss_jax.evaluation.Evaluator`.
    eval_period: EVAL_PERIOD: evaluate every this many steps and at the
      last step (0: only at the last step), if an evaluator is given.
    best_metric: keep the best checkpoint by this eval metric.
    best_mode: "max" or "min".
    peak_flops: per-device peak FLOP/s for MFU; None looks it up (measured
      on CPU).
    progress_bar: show a console progress bar on host 0.

  Returns:
    The final step, state and last logged metrics.

  Raises:
    NonFiniteLossError: the loss became NaN or Inf.
    input_pipeline.DataShardsError: DATA_SHARDS does not fit the processes
      or differs from the checkpoint's.
  """
  # Imported here: the input pipeline (TensorFlow, SeqIO) and CLU's writers
  # load only when training from a mixture, so `Trainer` runs (benchmarks on
  # accelerator machines) without TensorFlow.
  from clu import metric_writers

  from dss_jax import input_pipeline, vocab

  if not isinstance(task_feature_lengths, Mapping):
    raise errors.UserError(
      "TASK_FEATURE_LENGTHS must be a dict such as {'inputs': 512, "
      f"'targets': 128}}, got {task_feature_lengths!r}"
    )
  if not str(model_dir).strip():
    # Else the checkpoints land in the working directory.
    raise errors.UserError(
      'MODEL_DIR is empty; give the run\'s folder (--gin.MODEL_DIR="...")'
    )
  names = input_pipeline.task_names(mixture_or_task_name)
  step = _legacy_batch_size(step, batch_size, len(names))
  rows = step.rows_per_step(len(names))
  _check_counts(
    TRAIN_STEPS=train_steps,
    CHECKPOINT_PERIOD=checkpoint_period,
    **(
      {} if keep_checkpoints is None else {"keep_checkpoints": keep_checkpoints}
    ),
    log_period=log_period,
    num_microbatches=num_microbatches,
    **{
      f"TASK_FEATURE_LENGTHS[{k!r}]": v for k, v in task_feature_lengths.items()
    },
  )
  if eval_period < 0:
    raise errors.UserError(f"EVAL_PERIOD must be >= 0, got {eval_period}")
  if best_mode not in ("max", "min"):
    raise errors.UserError(f"best_mode must be max or min, got {best_mode!r}")
  if epath.Path(model_dir).exists() and not epath.Path(model_dir).is_dir():
    raise errors.UserError(
      f"MODEL_DIR {model_dir} is a file; give a folder for the checkpoints"
    )
  _check_train_identity(
    model_dir,
    MIXTURE_OR_TASK_NAME=mixture_or_task_name,
    TASK_FEATURE_LENGTHS=dict(task_feature_lengths),
    # Rows, the name runs recorded before INPUTS_PER_STEP; kept so they
    # resume.
    BATCH_SIZE=rows,
    recipe=step.recipe,
    PACK=pack,
    RANDOM_SEED=random_seed,
  )
  partitioner = partitioner or partitioning.Partitioner()
  batch_rows = packed_rows if pack else rows
  _check_micro_batches(num_microbatches, batch_rows)
  task_weights = step.task_weights(len(names))
  if step.official:
    loss = official_loss(loss)
  _log_step_contents(names, step, packed_rows if pack else None)
  mesh = partitioner.mesh.shape
  logging.info(
    "on a mesh of %d data x %d model devices, in %d micro-batch(es) of %d rows",
    mesh["data"],
    mesh["model"],
    num_microbatches,
    batch_rows // num_microbatches,
  )
  checkpointer = checkpoints.Checkpointer(
    model_dir,
    max_to_keep=keep_checkpoints,
    async_save=async_checkpointing,
    best_metric=best_metric,
    best_mode=best_mode,
  )
  data_config = dataset_config(
    mixture_or_task_name=mixture_or_task_name,
    task_feature_lengths=task_feature_lengths,
    step=step,
    pack=pack,
    packed_rows=packed_rows,
    random_seed=random_seed,
    use_cached_tasks=use_cached_tasks,
    cache_examples=cache_examples,
    data_shards=_resumed_data_shards(checkpointer, data_shards),
    task_names=names,
  )
  trainer = Trainer(
    model,
    optimizer.build(train_steps),
    partitioner,
    task_names=names,
    task_weights=task_weights,
    loss=loss,
    num_microbatches=num_microbatches,
    dropout=getattr(getattr(model, "config", None), "dropout_rate", 1.0) > 0,
  )
  if jax.process_index() == 0:
    # Eval jobs refuse another vocabulary for these checkpoints.
    vocab.write_identity(
      model_dir, input_pipeline.targets_vocabulary(mixture_or_task_name)
    )
  dataset = input_pipeline.make_dataset(data_config)
  state, batches_done = _initial_state(
    trainer,
    checkpointer,
    dataset,
    batch_rows,
    random_seed,
    initial_checkpoint_path,
  )
  writer = metric_writers.create_default_writer(
    str(epath.Path(model_dir) / "train"),
    just_logging=jax.process_index() > 0,
  )
  loop = _Loop(
    trainer=trainer,
    checkpointer=checkpointer,
    writer=writer,
    schedule=optimizer.schedule(train_steps),
    train_steps=train_steps,
    checkpoint_period=checkpoint_period,
    log_period=log_period,
    evaluator=evaluator,
    eval_period=eval_period,
    meter=_Meter(
      train_flops_per_step(
        model.config,
        batch_rows,
        task_feature_lengths["inputs"],
        task_feature_lengths["targets"],
      ),
      peak_flops_per_second(peak_flops),
    ),
    progress_bar=progress_bar and jax.process_index() == 0,
    data_shards=input_pipeline.num_data_shards(data_config),
  )
  try:
    with _Preemption() as preemption:
      return loop.run(
        state,
        input_pipeline.iterate(dataset, batches_done),
        batches_done,
        preemption,
      )
  finally:
    checkpointer.close()
    writer.close()


def dataset_config(
  *,
  mixture_or_task_name: str,
  task_feature_lengths: Mapping[str, int],
  step: StepConfig,
  pack: bool = False,
  packed_rows: int | None = None,
  random_seed: int = 0,
  use_cached_tasks: bool = False,
  cache_examples: bool = False,
  data_shards: int | None = None,
  task_names: Sequence[str] | None = None,
) -> Any:
  """The training data `train` reads, from its own arguments.

  Args:
    mixture_or_task_name: MIXTURE_OR_TASK_NAME.
    task_feature_lengths: TASK_FEATURE_LENGTHS.
    step: what a step holds (see `train`): its rows, sampling rates and
      whether its inputs are paired.
    pack: PACK.
    packed_rows: PACKED_ROWS.
    random_seed: RANDOM_SEED (data order and mixing).
    use_cached_tasks: USE_CACHED_TASKS.
    cache_examples: keep each task's preprocessed examples in memory and
      reshuffle them every epoch (`input_pipeline.DatasetConfig`).
    data_shards: DATA_SHARDS (None: one per process).
    task_names: the tasks of MIXTURE_OR_TASK_NAME, if already looked up.

  Returns:
    An `input_pipeline.DatasetConfig`.
  """
  # Imported here: TensorFlow loads only when training from a mixture.
  from dss_jax import input_pipeline

  names = task_names or input_pipeline.task_names(mixture_or_task_name)
  return input_pipeline.DatasetConfig(
    mixture_or_task_name=mixture_or_task_name,
    task_feature_lengths=dict(task_feature_lengths),
    batch_size=step.rows_per_step(len(names)),
    rates=step.rates(len(names)),
    seed=random_seed,
    pack=pack,
    packed_rows=packed_rows,
    use_cached=use_cached_tasks,
    cache_examples=cache_examples,
    paired=step.official,
    data_shards=data_shards,
  )


def _resumed_data_shards(
  checkpointer: checkpoints.Checkpointer, data_shards: int | None
) -> int | None:
  """DATA_SHARDS of a run: as configured, else the checkpoint's if any.

  A resumed run must assemble its global batches from the same input shards
  as the run that saved, whatever its process count, to see the same data.

  Raises:
    input_pipeline.DataShardsError: the configured value differs from the
      checkpoint's.
  """
  # Imported here: TensorFlow loads only when training from a mixture.
  from dss_jax import input_pipeline

  saved = checkpointer.saved_data_shards()
  if saved is None:
    return data_shards
  if data_shards is not None and data_shards != saved:
    raise input_pipeline.DataShardsError(
      f"DATA_SHARDS {data_shards} differs from the {saved} input shards of "
      f"the checkpoint in {checkpointer.directory}; unset it (or set "
      f"{saved}) to resume"
    )
  if saved % jax.process_count():
    raise input_pipeline.DataShardsError(
      f"the checkpoint in {checkpointer.directory} reads {saved} input "
      f"shards, which {jax.process_count()} processes cannot split: resume "
      f"on a number of processes that divides {saved} (start runs with "
      "DATA_SHARDS a multiple of every host count they may resume on)"
    )
  if data_shards is None:
    logging.info("reading %d input shards, as the checkpoint did", saved)
  return saved


def _legacy_batch_size(
  step: StepConfig, batch_size: int | None, tasks: int
) -> StepConfig:
  """`step` with the inputs of the deprecated BATCH_SIZE (rows), if set."""
  if batch_size is None:
    return step
  _check_counts(BATCH_SIZE=batch_size)
  if batch_size % tasks:
    raise errors.UserError(
      f"BATCH_SIZE {batch_size} (rows) does not split into the {tasks} "
      "tasks' rows of each input; set INPUTS_PER_STEP (inputs per step) "
      "instead"
    )
  inputs = batch_size // tasks
  logging.warning(
    "BATCH_SIZE (rows per step) is deprecated: it sets INPUTS_PER_STEP = "
    "%d; set INPUTS_PER_STEP instead",
    inputs,
  )
  return dataclasses.replace(step, inputs_per_step=inputs)


def _check_micro_batches(num_microbatches: int, rows: int) -> None:
  """Refuses accumulation that does not split the step's rows evenly."""
  if rows % num_microbatches:
    raise errors.UserError(
      f"NUM_MICROBATCHES={num_microbatches} must divide the step's {rows} "
      "rows; pick a divisor of them"
    )


def _log_step_contents(
  names: Sequence[str], step: StepConfig, packed_rows: int | None
) -> None:
  """Says what one step trains on, the numbers the paper's recipe fixes."""
  rows = step.rows_per_step(len(names))
  if len(names) == 1:
    what = f"{rows} examples of {names[0]}"
  elif step.official:
    what = (
      f"{step.inputs_per_step} inputs, each with its "
      + " and ".join(names)
      + f" example ({rows} rows; official recipe, alpha "
      + f"{step.label_weight:g})"
    )
  else:
    rates = step.rates(len(names))
    total = sum(rates)
    what = " + ".join(
      f"{rows * rate / total:g} {name}"
      for name, rate in zip(names, rates, strict=True)
    )
    what += (
      f" examples in expectation ({step.inputs_per_step} inputs, {rows} "
      "rows; sampled mixture)"
    )
  if packed_rows:
    what += f", packed into {packed_rows} rows"
  logging.info("each step trains on %s", what)


# In MODEL_DIR: what its checkpoints train on (TRAIN_STEPS may grow).
TRAIN_IDENTITY_FILE = "train_identity.json"


def _check_train_identity(model_dir: str, **identity: Any) -> None:
  """Refuses a MODEL_DIR whose checkpoints train another task or shape.

  A rerun into a finished MODEL_DIR with another task would otherwise
  resume the old run's last step and train nothing.

  Raises:
    errors.UserError: the values differ from those MODEL_DIR recorded.
  """
  path = epath.Path(model_dir) / TRAIN_IDENTITY_FILE
  identity = json.loads(json.dumps(identity))
  if path.exists():
    stored = json.loads(path.read_text())
    diffs = [
      f"{k} {stored.get(k)!r} -> {identity.get(k)!r}"
      for k in sorted(set(stored) | set(identity))
      if stored.get(k) != identity.get(k)
    ]
    if diffs:
      raise errors.UserError(
        f"MODEL_DIR {model_dir} holds a run of another configuration "
        f"({', '.join(diffs)}); use another MODEL_DIR, or delete it to "
        "train from scratch"
      )
  elif jax.process_index() == 0:
    with store_lib.os_faults(path, "recording the run's configuration"):
      try:
        path.parent.mkdir(parents=True, exist_ok=True)
      except FileNotFoundError as e:  # e.g. a folder in /proc
        raise errors.UserError(
          f"MODEL_DIR {model_dir} cannot be made ({e.strerror}); give a "
          "folder that can be created"
        ) from e
      path.write_text(json.dumps(identity, indent=2, sort_keys=True))


def _initial_state(
  trainer: Trainer,
  checkpointer: checkpoints.Checkpointer,
  dataset: Any,
  rows: int,
  seed: int,
  initial_checkpoint_path: str | None,
) -> tuple[TrainState, int]:
  """Resumes from MODEL_DIR if it has a checkpoint, else initializes."""
  shapes = {
    k: jax.ShapeDtypeStruct(
      (rows,) + tuple(v.shape[1:]), v.dtype.as_numpy_dtype
    )
    for k, v in dataset.element_spec.items()
  }
  if checkpointer.latest_step() is not None:
    abstract = trainer.abstract_state(shapes)
    latest = checkpointer.restore_latest(abstract.as_dict())
    step, restored, batches = latest
    logging.info("resumed from step %d (%d batches read)", step, batches)
    return TrainState.from_dict(restored), batches
  params = None
  if initial_checkpoint_path:
    abstract = trainer.abstract_state(shapes)
    params = checkpoints.load_params(
      initial_checkpoint_path,
      abstract.params,
      shardings=jax.tree.map(lambda x: x.sharding, abstract.params),
    )
    logging.info("initialized parameters from %s", initial_checkpoint_path)
  return trainer.init_state(jax.random.PRNGKey(seed), shapes, params), 0


def _check_counts(**counts: int) -> None:
  """Refuses a count below 1, named as gin names it (before any data)."""
  for name, value in counts.items():
    if not isinstance(value, int) or value < 1:
      raise errors.UserError(f"{name} must be an integer >= 1, got {value!r}")


@dataclasses.dataclass
class _Loop:
  """The training loop's state between steps (kept small and explicit)."""

  trainer: Trainer
  checkpointer: checkpoints.Checkpointer
  writer: Any  # clu.metric_writers.MetricWriter
  schedule: Callable[[int], Any]
  train_steps: int
  checkpoint_period: int
  log_period: int
  evaluator: Evaluator | None
  eval_period: int
  meter: _Meter
  progress_bar: bool
  data_shards: int | None = None

  def run(
    self,
    state: TrainState,
    batches: Iterator[Mapping[str, np.ndarray]],
    batches_done: int,
    preemption: _Preemption,
  ) -> TrainResult:
    step = int(state.step)
    bar = _progress(self.progress_bar, step, self.train_steps)
    pending = None  # (step, device metrics, host batch) of the last step
    last: dict[str, float] = {}
    preempted = False
    while step < self.train_steps:
      host_batch = next(batches)
      state, metrics = self.trainer.train_step(
        state, self.trainer.device_batch(host_batch)
      )
      step += 1
      batches_done += 1
      # Read the previous step's metrics only now, so the host never waits
      # for the device; a NaN is still caught before anything is saved.
      if pending is not None:
        last = self._record(*pending, bar)
      pending = (step, metrics, host_batch)
      if preemption.should_stop(step):
        preempted = True
        break
      if step % self.checkpoint_period == 0 or self._eval_due(step):
        last = self._record(*pending, bar)
        pending = None
        self._save(step, state, batches_done)
        if self._eval_due(step):
          self._evaluate(step, state, batches_done)
    if pending is not None:
      last = self._record(*pending, bar)
    self._save(step, state, batches_done)
    if (
      not preempted and self.evaluator is not None and not self._eval_due(step)
    ):
      # The last step is always scored, so keep-best sees it too.
      self._evaluate(step, state, batches_done)
    self.checkpointer.wait()
    if bar is not None:
      bar.close()
    return TrainResult(step, state, last, preempted)

  def _eval_due(self, step: int) -> bool:
    return (
      self.evaluator is not None
      and self.eval_period > 0
      and step % self.eval_period == 0
    )

  def _record(self, step, metrics, host_batch, bar) -> dict[str, float]:
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    _check_finite(step, values)
    self.meter.add(values, host_batch)
    if bar is not None:
      bar.update(1)
      bar.set_postfix(loss=f"{values['loss']:.4f}", refresh=False)
    if step % self.log_period == 0 or step == self.train_steps:
      summary = self.meter.summary()
      summary["learning_rate"] = float(self.schedule(step - 1))
      self.writer.write_scalars(step, summary)
      self.meter = dataclasses.replace(
        self.meter,
        sums={},
        steps=0,
        tokens=0,
        real_tokens=0,
        start=time.perf_counter(),
      )
      return summary
    return values

  def _save(self, step: int, state: TrainState, batches_done: int) -> None:
    if self.checkpointer.save(
      step, state.as_dict(), batches_done, self.data_shards
    ):
      logging.info("saved checkpoint at step %d", step)

  def _evaluate(self, step: int, state: TrainState, batches_done: int) -> None:
    metrics = dict(self.evaluator.evaluate(state.params, step))
    scalars = {
      f"eval/{k}": float(v)
      for k, v in metrics.items()
      if isinstance(v, (int, float, np.number))
    }
    self.writer.write_scalars(step, scalars)
    self.checkpointer.save_best(
      step,
      state.as_dict(),
      batches_done,
      {k.removeprefix("eval/"): v for k, v in scalars.items()},
      self.data_shards,
    )


def _progress(enabled: bool, step: int, total: int):
  if not enabled:
    return None
  return tqdm.tqdm(
    total=total,
    initial=step,
    desc="train",
    unit="step",
    file=sys.stderr,
    dynamic_ncols=True,
    mininterval=1.0,
  )
