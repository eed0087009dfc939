"""The train step: a jitted, sharded update of one model's state.

`Trainer` builds the init and the step through its partitioner (T5X's
`Trainer` pattern): the loss of a batch, per-task losses and the official
recipe's weighted loss, gradient accumulation over micro-batches, and the
optimizer update. It needs JAX, flax and optax only (no TensorFlow), so
benchmarks run it on accelerator machines without the input pipeline; the
loop that feeds it, checkpoints and logs is `dss_jax.trainer`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding

from dss_jax import errors, losses, partitioning

Array = jax.Array
PyTree = Any
Batch = Mapping[str, Array]

# T5X's names for the loss normalization, mapped to dss_jax.losses' names.
LOSS_NORMALIZATIONS = {
  "AVERAGE_PER_SEQUENCE": "per_sequence",
  "NUM_REAL_TARGET_TOKENS": "tokens",
}

# What a distilling step-by-step step holds (see `StepConfig.recipe`):
#   mixture   SeqIO samples every row from one task at the rates 1 : lambda;
#             per-sequence loss.
#   official  the official implementation's step: every input with its label
#             and its rationale example; alpha-weighted token-mean losses.
RECIPES = ("mixture", "official")
# The batch feature that holds, for every target token, 1 + the index of the
# task it came from (0 on padding); the input pipeline writes it.
TASK_IDS = "decoder_task_ids"


# The rules of lambda and of the inputs of a step, one for every entry (the
# gin path's StepConfig, the main job's DistillConfig, T5X's
# seqio_tasks.options); each names its own setting in its message.
RATIONALE_RATE_RULE = "a finite number >= 0"
INPUTS_PER_STEP_RULE = "an integer >= 1"


def valid_rationale_rate(rate: Any) -> bool:
  """Whether `rate` is a valid lambda (`RATIONALE_RATE_RULE`)."""
  return (
    not isinstance(rate, bool)
    and isinstance(rate, (int, float))
    and math.isfinite(rate)
    and rate >= 0
  )


def valid_inputs_per_step(inputs: Any) -> bool:
  """Whether `inputs` is a valid step size (`INPUTS_PER_STEP_RULE`)."""
  return (
    not isinstance(inputs, bool) and isinstance(inputs, int) and inputs >= 1
  )


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What one training step holds: the recipe, lambda and the inputs.

  The one place lambda and the batch are validated; everything downstream
  (the sampling weights, the official loss weights, the rows of a step) is
  derived here. A step of a task with rationales (a mixture of the label and
  the rationale task) holds `2 * inputs_per_step` rows; a baseline's (one
  task) `inputs_per_step`.

  Attributes:
    recipe: one of `RECIPES`. "mixture": each row is sampled from the label
      task at rate 1 or the rationale task at rate `rationale_rate`.
      "official": each input with its label and its rationale example; the
      loss is `alpha * L_label + (1 - alpha) * L_rationale`.
    rationale_rate: lambda >= 0, the rationale task's rate (the label
      task's is 1); `alpha = 1 / (1 + lambda)`, 0.5 at the paper's lambda 1.
    inputs_per_step: global training inputs per step (all hosts), the
      paper's batch (64).
  """

  recipe: str = "mixture"
  rationale_rate: float = 1.0
  inputs_per_step: int = 64

  def __post_init__(self):
    if self.recipe not in RECIPES:
      raise errors.UserError(
        f"RECIPE (--recipe) must be one of {', '.join(RECIPES)}, got "
        f"{self.recipe!r}"
      )
    if not valid_rationale_rate(self.rationale_rate):
      raise errors.UserError(
        f"RATIONALE_RATE (--rationale_rate), lambda, must be {RATIONALE_RATE_RULE}"
        f", got {self.rationale_rate!r}"
      )
    if not valid_inputs_per_step(self.inputs_per_step):
      raise errors.UserError(
        f"INPUTS_PER_STEP (--batch_size) must be {INPUTS_PER_STEP_RULE}, got "
        f"{self.inputs_per_step!r}"
      )

  @property
  def official(self) -> bool:
    """Whether the step is the official recipe's."""
    return self.recipe == "official"

  @property
  def label_weight(self) -> float:
    """alpha = 1 / (1 + lambda), the official loss's weight of L_label."""
    return 1.0 / (1.0 + self.rationale_rate)

  def rates(self, tasks: int) -> tuple[float, ...]:
    """The sampling rates of a step's tasks: (1, lambda), or (1,) alone.

    Raises:
      errors.UserError: more than two tasks (label, rationale).
    """
    _check_tasks(tasks)
    return (1.0, float(self.rationale_rate))[:tasks]

  def rows_per_step(self, tasks: int) -> int:
    """Global rows of a step (before packing) of `tasks` tasks (1 or 2)."""
    _check_tasks(tasks)
    return self.inputs_per_step * tasks

  def task_weights(self, tasks: int) -> tuple[float, ...] | None:
    """The official loss's (alpha, 1 - alpha); None for the mixture recipe.

    Raises:
      errors.UserError: the official recipe without two tasks.
    """
    if not self.official:
      return None
    if tasks != 2:
      raise errors.UserError(
        "the official recipe trains a mixture of a label and a rationale "
        f'task, got {tasks} task(s); use RECIPE "mixture" for a baseline'
      )
    return (self.label_weight, 1.0 - self.label_weight)


def rows_per_step(
  inputs_per_step: int,
  tasks: int = 2,
  deprecated_rows: int | None = None,
) -> int:
  """Rows of a sampled-mixture step of `inputs_per_step` inputs, for gin.

  What `StepConfig.rows_per_step` derives for the built-in trainer, for the
  T5X run files (`EXAMPLES_PER_STEP = @dss_jax.step.rows_per_step()`), so
  both count a step in inputs.

  Args:
    inputs_per_step: INPUTS_PER_STEP (the model file's PAPER_BATCH_SIZE).
    tasks: the mixture's tasks (2: label and rationale).
    deprecated_rows: PAPER_MIXTURE_BATCH_SIZE, which counted rows; None
      unless a user still sets it.

  Raises:
    errors.UserError: bad values, or a PAPER_MIXTURE_BATCH_SIZE that
      disagrees with the rows derived from the inputs.
  """
  rows = StepConfig(inputs_per_step=inputs_per_step).rows_per_step(tasks)
  if deprecated_rows is not None:
    if deprecated_rows != rows:
      advice = (
        f" to {deprecated_rows // tasks} for {deprecated_rows} rows"
        if isinstance(deprecated_rows, int) and deprecated_rows % tasks == 0
        else f" (the mixture trains {tasks} rows per input)"
      )
      raise errors.UserError(
        f"PAPER_MIXTURE_BATCH_SIZE={deprecated_rows} is no longer read: a "
        "step is counted in inputs; set INPUTS_PER_STEP (or PAPER_BATCH_SIZE)"
        + advice
      )
    logging.warning(
      "PAPER_MIXTURE_BATCH_SIZE is deprecated (a step is counted in inputs: "
      "INPUTS_PER_STEP, %d rows derived); drop it",
      rows,
    )
  return rows


def _check_tasks(tasks: int) -> None:
  if not 1 <= tasks <= 2:
    raise errors.UserError(
      "a step trains one task (a baseline) or a label and a rationale task, "
      f"got {tasks} tasks"
    )


@flax.struct.dataclass
class TrainState:
  """Everything a training step depends on (and a checkpoint stores)."""

  step: Array
  params: PyTree
  opt_state: PyTree
  rng: Array

  def as_dict(self) -> dict[str, PyTree]:
    """The state as a plain dict, the checkpoint layout."""
    return {
      "step": self.step,
      "params": self.params,
      "opt_state": self.opt_state,
      "rng": self.rng,
    }

  @classmethod
  def from_dict(cls, d: Mapping[str, PyTree]) -> TrainState:
    """Inverse of `as_dict`."""
    return cls(d["step"], d["params"], d["opt_state"], d["rng"])


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """How the cross-entropy is normalized and regularized.

  Attributes:
    normalizing_factor: "AVERAGE_PER_SEQUENCE" (default; mixture rates then
      mean lambda) or "NUM_REAL_TARGET_TOKENS" (T5X's token normalization).
    z_loss: coefficient of log(Z)^2.
    label_smoothing: label smoothing mass.
  """

  normalizing_factor: str = "AVERAGE_PER_SEQUENCE"
  z_loss: float = 0.0
  label_smoothing: float = 0.0

  def __post_init__(self):
    if self.normalizing_factor not in LOSS_NORMALIZATIONS:
      raise errors.UserError(
        f"LOSS_NORMALIZING_FACTOR must be one of "
        f"{sorted(LOSS_NORMALIZATIONS)}, got {self.normalizing_factor!r}"
      )


class Trainer:
  """Builds the sharded, jitted init and train step for one model.

  As T5X's trainer does, it jits and places through its partitioner, whose
  mesh and logical axis rules decide every sharding: parameters, optimizer
  state and batches.

  Args:
    model: a flax module with T5X's `Transformer.__call__` signature.
    optimizer: an optax transformation.
    partitioner: the mesh and its logical axis rules.
    task_names: the mixture's tasks, in `decoder_task_ids` order.
    task_weights: the loss is sum_t task_weights[t] * L_t, each L_t the
      configured normalization over task t's tokens only (the official
      recipe); None: one loss over the whole batch.
    loss: normalization and regularizers.
    num_microbatches: gradient accumulation: the batch is split into this many
      micro-batches inside one step. Exact: the loss's normalizers (real
      target tokens, sequences, per task) are counted over the whole batch
      first and each micro-batch's loss divides its sums by them, so the
      summed gradients equal the full batch's (T5X's per-micro-batch mean
      would weigh a micro-batch of short targets as much as one of long).
      Micro-batch i holds rows i, i + m, i + 2m, ...: every device's share
      of the batch gives each micro-batch its part, so a micro-batch stays
      split over the data axis as the batch is (contiguous blocks would sit
      on a few devices and be moved between them).
    dropout: enable dropout (the model's `dropout_rate` sets the rate).
  """

  def __init__(
    self,
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    partitioner: partitioning.Partitioner,
    task_names: Sequence[str] = (),
    task_weights: Sequence[float] | None = None,
    loss: LossConfig = LossConfig(),
    num_microbatches: int = 1,
    dropout: bool = True,
  ):
    self.model = model
    self.optimizer = optimizer
    self.partitioner = partitioner
    self.task_names = tuple(task_names)
    self.task_weights = None if task_weights is None else tuple(task_weights)
    self.loss = loss
    self.num_microbatches = num_microbatches
    self.dropout = dropout
    self._train_step = None

  # -- shardings -------------------------------------------------------------

  def batch_sharding(self) -> NamedSharding:
    """Sharding of every [batch, length] input array."""
    return self.partitioner.batch_sharding()

  def _init_params(self, rng: Array, batch: Mapping[str, Any]) -> PyTree:
    # One row of zeros is enough to trace shapes; parameters do not depend on
    # the batch size.
    dummy = {
      k: jnp.zeros((1,) + tuple(v.shape[1:]), v.dtype)
      for k, v in _model_inputs(batch).items()
    }
    variables = self.model.init(
      {"params": rng, "dropout": rng}, **dummy, enable_dropout=False
    )
    return variables["params"]

  def abstract_state(self, batch: Mapping[str, Any]) -> TrainState:
    """Shapes, dtypes and shardings of the state, without allocating it."""
    params = jax.eval_shape(self._init_params, jax.random.PRNGKey(0), batch)
    opt_state = jax.eval_shape(self.optimizer.init, params)
    # Moments get their parameter's sharding (matched by path); scalars and
    # factored moments, and dims a mesh axis does not divide, are replicated.
    shardings = self.partitioner.shardings(
      {"params": params, "opt_state": opt_state}
    )
    replicated = self.partitioner.replicated()

    def with_sharding(x, s):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)

    return TrainState(
      step=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
      params=jax.tree.map(with_sharding, params, shardings["params"]),
      opt_state=jax.tree.map(with_sharding, opt_state, shardings["opt_state"]),
      rng=jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated),
    )

  def init_state(
    self,
    rng: Array,
    batch: Mapping[str, Any],
    params: PyTree | None = None,
  ) -> TrainState:
    """Initializes (or wraps given `params` in) a sharded train state.

    Args:
      rng: a `jax.random.PRNGKey`; split into init and dropout keys.
      batch: a batch (or its shapes) to trace the model with.
      params: pretrained parameters (INITIAL_CHECKPOINT_PATH), already placed.

    Returns:
      The state at step 0.
    """
    abstract = self.abstract_state(batch)
    shardings = jax.tree.map(lambda x: x.sharding, abstract)
    init_rng, train_rng = jax.random.split(rng)

    def init(init_rng, train_rng, params):
      if params is None:
        params = self._init_params(init_rng, batch)
      return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=self.optimizer.init(params),
        rng=train_rng,
      )

    return self.partitioner.jit(init, out_shardings=shardings)(
      init_rng, train_rng, params
    )

  # -- the step --------------------------------------------------------------

  def _loss_fn(
    self,
    params: PyTree,
    batch: Batch,
    rng: Array,
    normalizers: Mapping[str, Array] | None = None,
  ) -> tuple[Array, dict[str, Array]]:
    logits = self.model.apply(
      {"params": params},
      **_model_inputs(batch),
      enable_dropout=self.dropout,
      rngs={"dropout": rng},
    )
    targets = batch["decoder_target_tokens"]
    weights = batch["decoder_loss_weights"].astype(jnp.float32)
    segments = batch.get("decoder_segment_ids")
    kwargs = dict(
      segment_ids=segments,
      normalization=LOSS_NORMALIZATIONS[self.loss.normalizing_factor],
      z_loss=self.loss.z_loss,
      label_smoothing=self.loss.label_smoothing,
    )

    def cross_entropy(key: str, w: Array) -> Array:
      loss, aux = losses.cross_entropy_loss(logits, targets, w, **kwargs)
      if normalizers is None:
        return loss
      # A micro-batch's share of the whole step's loss: its sum over the
      # step's denominator (see `_normalizers`).
      if kwargs["normalization"] == "tokens":
        total = aux["token_loss_sum"]
      else:
        total = loss * jnp.maximum(aux["num_sequences"], 1.0)
      return total / normalizers[key]

    metrics = {}
    task_losses = []
    task_ids = batch.get(TASK_IDS)
    if task_ids is not None and len(self.task_names) > 1:
      # XLA shares the log-softmax between these calls (same logits); only
      # the masked reductions are repeated.
      for t, name in enumerate(self.task_names):
        mask = (task_ids == t + 1).astype(jnp.float32)
        task_loss = cross_entropy(name, weights * mask)
        task_losses.append(task_loss)
        metrics[f"loss/{name}"] = task_loss
    if self.task_weights is not None:
      loss = sum(
        w * task_loss
        for w, task_loss in zip(self.task_weights, task_losses, strict=True)
      )
    else:
      loss = cross_entropy("", weights)
    metrics["loss"] = loss
    return loss, metrics

  def _normalizers(self, batch: Batch) -> dict[str, Array]:
    """The loss's denominators, counted over the whole (step's) batch.

    Keyed "" for the whole batch and by task name for each task: the real
    target tokens ("NUM_REAL_TARGET_TOKENS") or the sequences (packed
    segments) with a real target token ("AVERAGE_PER_SEQUENCE"), with the
    floors `losses.cross_entropy_loss` uses.
    """
    weights = batch["decoder_loss_weights"].astype(jnp.float32)
    segments = batch.get("decoder_segment_ids")
    tokens = LOSS_NORMALIZATIONS[self.loss.normalizing_factor] == "tokens"

    def count(w: Array) -> Array:
      if tokens:
        return jnp.maximum(jnp.sum(w), 1e-8)
      return jnp.maximum(_num_sequences(w, segments), 1.0)

    out = {"": count(weights)}
    task_ids = batch.get(TASK_IDS)
    if task_ids is not None:
      for t, name in enumerate(self.task_names):
        out[name] = count(weights * (task_ids == t + 1))
    return out

  def _grads(
    self, params: PyTree, batch: Batch, rng: Array
  ) -> tuple[PyTree, dict[str, Array]]:
    grad_fn = jax.grad(self._loss_fn, has_aux=True)
    if self.num_microbatches == 1:
      return grad_fn(params, batch, rng)
    m = self.num_microbatches
    normalizers = self._normalizers(batch)
    # Strided micro-batches (see the class docstring): no data moves.
    micro = jax.tree.map(
      lambda x: x.reshape((x.shape[0] // m, m) + x.shape[1:]).swapaxes(0, 1),
      batch,
    )

    def micro_grads(mb, rng):
      return grad_fn(params, mb, rng, normalizers)

    def body(carry, inputs):
      i, mb = inputs
      grads, metrics = micro_grads(mb, jax.random.fold_in(rng, i))
      return jax.tree.map(jnp.add, carry, (grads, metrics)), None

    zeros = jax.tree.map(
      jnp.zeros_like,
      jax.eval_shape(micro_grads, jax.tree.map(lambda x: x[0], micro), rng),
    )
    # Each micro-batch's loss is its share of the step's: sums, not means.
    (grads, metrics), _ = jax.lax.scan(body, zeros, (jnp.arange(m), micro))
    return grads, metrics

  def _step(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(state.rng, state.step)
    grads, metrics = self._grads(state.params, batch, rng)
    updates, opt_state = self.optimizer.update(
      grads, state.opt_state, state.params
    )
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.global_norm(grads)
    new_state = state.replace(
      step=state.step + 1, params=params, opt_state=opt_state
    )
    return new_state, metrics

  def train_step(
    self, state: TrainState, batch: Batch
  ) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer update; the input state's buffers are donated."""
    if self._train_step is None:
      state_shardings = jax.tree.map(lambda x: x.sharding, state)
      batch_shardings = jax.tree.map(lambda _: self.batch_sharding(), batch)
      self._train_step = self.partitioner.jit(
        self._step,
        in_shardings=(state_shardings, batch_shardings),
        out_shardings=(state_shardings, None),
        donate_argnums=(0,),
      )
    return self._train_step(state, batch)

  def device_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, Array]:
    """Places this host's numpy batch as global arrays on the mesh."""
    return dict(self.partitioner.put_batch(batch))


def _num_sequences(weights: Array, segment_ids: Array | None) -> Array:
  """Sequences (packed segments) with a positive loss weight, as a float.

  Counts what `losses.cross_entropy_loss` calls "num_sequences".
  """
  if segment_ids is None:
    return jnp.sum(jnp.sum(weights, axis=-1) > 0).astype(jnp.float32)
  batch, length = segment_ids.shape
  # One flat id per (row, segment), as in `losses._segment_means`.
  ids = jnp.arange(batch)[:, None] * length + jnp.maximum(segment_ids - 1, 0)
  sums = jax.ops.segment_sum(
    weights.reshape(-1), ids.reshape(-1), batch * length
  )
  return jnp.sum(sums > 0).astype(jnp.float32)


def _model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
  names = (
    "encoder_input_tokens",
    "decoder_input_tokens",
    "decoder_target_tokens",
    "encoder_segment_ids",
    "decoder_segment_ids",
    "encoder_positions",
    "decoder_positions",
  )
  return {k: batch[k] for k in names if k in batch}


def official_loss(loss: LossConfig) -> LossConfig:
  """`loss` with each task's loss a mean over its real target tokens.

  The official implementation takes Hugging Face's cross-entropy of each
  pass, a mean over the pass's non-padding target tokens.
  """
  return dataclasses.replace(loss, normalizing_factor="NUM_REAL_TARGET_TOKENS")
