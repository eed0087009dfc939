"""One student of the main job: its SeqIO tasks, training, scoring, examples.

`Student(config, data).run(spec, directory)` is stage 3 for one
`grid.RunSpec`: it registers the run's tasks, trains with
`dss_jax.trainer.train`, scores the test split with `dss_jax.evaluation`
and returns the run's result row; `write_examples` decodes a few test
examples with the trained student (`dss_jax.showcase`).
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax
import seqio

from dss_jax import (
  cards,
  checkpoints,
  errors,
  evaluation,
  optimizers,
  partitioning,
  seqio_tasks,
  showcase,
  trainer,
  vocab,
)
from dss_jax import grid as grid_lib
from dss_jax import step as step_lib
from dss_jax.distill.config import DistillConfig, student_config
from dss_jax.distill.stages import DataStages
from dss_jax.models import t5

# A run's test examples with the student's rationale (`show_examples`).
EXAMPLES_FILE = "examples.txt"


def _metric_value(metrics: Mapping[str, float], name: str) -> float:
  """The named metric, else the task's first (a card's custom metric)."""
  if name in metrics:
    return metrics[name]
  task = name.split("/")[0]
  return next(v for k, v in metrics.items() if k.startswith(f"{task}/"))


@dataclasses.dataclass(frozen=True)
class JobTasks:
  """The SeqIO names of a job's card and source, in the order that
  `seqio_tasks.register_card` returns them."""

  label: str
  rationale: str
  mixture: str
  gold: str
  teacher: str

  def for_method(self, method: str) -> tuple[str, str]:
    """(training task or mixture, evaluation task) of a method."""
    if method == "finetune":
      return self.gold, self.gold
    if method == "distill":
      return self.teacher, self.teacher
    return self.mixture, self.label


class Student:
  """Stage 3 of the job: one student per run, trained and scored."""

  def __init__(self, config: DistillConfig, data: DataStages):
    """A job's students.

    Args:
      config: the job.
      data: its data stages (the card, the output folder, the TFDS build).
    """
    self.config = config
    self.data = data
    # Set by `register_tasks`: the names depend on the card and the source
    # only, so every run of the job shares them.
    self.tasks: JobTasks | None = None

  @property
  def card(self) -> cards.TaskCard:
    return self.data.card

  def task_names(self, method: str) -> tuple[str, str]:
    """(training task or mixture, evaluation task) of a method.

    Raises:
      RuntimeError: before `register_tasks`, which names the tasks.
    """
    if self.tasks is None:
      raise RuntimeError("register_tasks names the tasks; call it first")
    return self.tasks.for_method(method)

  def step_config(self, spec: grid_lib.RunSpec) -> step_lib.StepConfig:
    """What one step of a run holds: lambda, the recipe, the inputs.

    Baselines train one task, so a step of `batch_size` inputs is as many
    rows; distilling step-by-step trains each input's label and rationale,
    exactly ("official") or in expectation ("mixture").
    """
    config = self.config
    return step_lib.StepConfig(
      recipe=config.recipe if spec.uses_rationales else "mixture",
      rationale_rate=config.rationale_rate,
      inputs_per_step=config.batch_size,
    )

  def register_tasks(self, spec: grid_lib.RunSpec) -> seqio.Vocabulary:
    """Registers the SeqIO tasks of a run; returns its vocabulary.

    The names `seqio_tasks.register_card` gives them are kept in `tasks`.
    The mixture's rationale rate is the run's lambda (`step_config`).
    """
    config = self.config
    vocabulary = vocab.get_vocabulary(config.vocabulary)
    names = seqio_tasks.register_card(
      config.card,
      config.source_name,
      data_dir=config.data_dir,
      vocabulary=vocabulary,
      label_source="teacher" if spec.method == "dss_teacher" else "gold",
      rationale_rate=self.step_config(spec).rationale_rate,
      train_fraction=spec.fraction,
      fraction_seed=spec.seed,
    )
    self.tasks = JobTasks(*names)
    return vocabulary

  def train_kwargs(self, spec: grid_lib.RunSpec) -> dict[str, Any]:
    """What a run trains on: `dss_jax.trainer.train`'s data arguments."""
    config = self.config
    train_name, _ = self.task_names(spec.method)
    targets = (
      config.targets_length if spec.uses_rationales else config.label_length
    )
    return dict(
      mixture_or_task_name=train_name,
      task_feature_lengths={"inputs": config.inputs_length, "targets": targets},
      step=self.step_config(spec),
      pack=False,
      # The datasets of task cards fit in memory: preprocess each example
      # once, not once an epoch (about a quarter of a demo step's CPU time).
      cache_examples=True,
      random_seed=spec.seed,
    )

  def _metric_name(self, eval_name: str) -> str:
    metric = (
      "equation_accuracy"
      if self.card.metric == "equation_accuracy"
      else "accuracy"
    )
    return f"{eval_name}/{metric}"

  def _evaluator(
    self,
    eval_name: str,
    model: t5.Transformer,
    split: str,
    num_examples: int | None,
    output_dir: pathlib.Path,
  ) -> evaluation.Evaluator:
    config = self.config
    return evaluation.Evaluator(
      eval_name,
      model,
      feature_lengths={
        "inputs": config.inputs_length,
        "targets": config.label_length,
      },
      split=split,
      num_examples=num_examples,
      batch_size=config.eval_batch_size,
      output_dir=str(output_dir),
    )

  def run(
    self, spec: grid_lib.RunSpec, directory: pathlib.Path
  ) -> dict[str, Any]:
    """Stage 3: trains one student and scores it on the test split.

    The test split is scored with the last step's parameters and, when
    `validation_period` is set, with the checkpoint that scored best on the
    validation split (the official code scores every 250 steps; the paper's
    numbers are means over runs).

    Args:
      spec: the run.
      directory: its folder (checkpoints; a rerun resumes from them).

    Returns:
      The run's result row (`report.RESULT_FIELDS`).
    """
    config = self.config
    vocabulary = self.register_tasks(spec)
    _, eval_name = self.task_names(spec.method)
    metric = self._metric_name(eval_name)
    model = t5.Transformer(
      student_config(
        spec.model_size,
        vocabulary.vocab_size,
        config.dropout_rate,
        config.activation_dtype,
      )
    )
    validation = None
    if config.validation_period:
      validation = self._evaluator(
        eval_name,
        model,
        "validation",
        config.validation_examples,
        directory / "validation_eval",
      )
    start = time.monotonic()
    result = trainer.train(
      model=model,
      **self.train_kwargs(spec),
      train_steps=config.train_steps,
      model_dir=str(directory),
      optimizer=optimizers.AdamW(
        learning_rate=optimizers.LearningRateSchedule(
          peak=config.learning_rate,
          name="linear",
          warmup_steps=config.warmup_steps,
        )
      ),
      initial_checkpoint_path=(
        config.initial_checkpoint.replace("{size}", spec.model_size)
        if config.initial_checkpoint
        else None
      ),
      checkpoint_period=config.steps_per_checkpoint,
      keep_checkpoints=(
        None if config.keep_checkpoints == "all" else config.keep_checkpoints
      ),
      num_microbatches=config.microbatches,
      partitioner=_partitioner(config.num_partitions),
      log_period=max(1, config.train_steps // 10),
      evaluator=validation,
      eval_period=config.validation_period,
      best_metric=metric if validation else None,
      progress_bar=config.progress,
    )
    train_seconds = time.monotonic() - start
    if result.preempted:
      # The trainer saved a checkpoint on SIGTERM or Ctrl-C; no result is
      # written, so rerunning the command resumes this run from it.
      print(
        f"error: stopped at step {result.step} of {spec.name} (checkpoint "
        "saved); rerun the same command to resume",
        file=sys.stderr,
      )
      raise SystemExit(errors.INTERRUPTED_STATUS)
    test = self._evaluator(
      eval_name,
      model,
      "test",
      config.eval_examples,
      directory / evaluation.INFERENCE_EVAL_DIR,
    )
    value = _metric_value(
      test.evaluate(result.state.params, result.step), metric
    )
    picked_value, picked_step = value, int(result.step)
    best = checkpoints.BEST_CHECKPOINTS
    best_steps = (
      checkpoints.checkpoint_steps(directory, best) if validation else []
    )
    if best_steps and best_steps[-1] != result.step:
      picked_step = best_steps[-1]
      params = checkpoints.restore_params(directory / best / str(picked_step))
      picked_value = _metric_value(test.evaluate(params, picked_step), metric)
    num_params = sum(
      x.size for x in jax.tree_util.tree_leaves(result.state.params)
    )
    return {
      "card": self.card.name,
      "source": config.source_name,
      "method": spec.method,
      "model_size": spec.model_size,
      "num_params": int(num_params),
      "fraction": spec.fraction,
      "seed": spec.seed,
      "metric": self.card.metric,
      "value": round(value / 100.0, 6),
      "value_picked": round(picked_value / 100.0, 6),
      "picked_step": picked_step,
      "steps": int(result.step),
      "train_seconds": round(train_seconds, 1),
      "run_dir": str(directory),
      "checkpoint": str(directory / "checkpoints"),
    }

  # -------------------------------------------------------- decoded examples
  def showcase_spec(self) -> grid_lib.RunSpec | None:
    """The run whose student shows test examples: with rationales, on the
    most data, lowest seed; None when the job has no such run."""
    specs = [s for s in self.config.specs() if s.uses_rationales]
    if not specs or not self.config.show_examples:
      return None
    return min(specs, key=lambda s: (-s.fraction, s.model_size, s.seed))

  def show_examples(self) -> str | None:
    """Test examples decoded by the `showcase_spec` student, as text.

    Each has the student's rationale (`explain: `) and label (`predict: `)
    beside the teacher's. Written once to the run's `examples.txt` (a
    worker does it right after training the run); None when the job has no
    such run or it has not finished.
    """
    spec = self.showcase_spec()
    if spec is None:
      return None
    directory = grid_lib.run_dir(self.data.out_dir, spec)
    path = directory / EXAMPLES_FILE
    if not path.exists():
      if grid_lib.read_result(directory) is None:
        return None
      self.write_examples(spec, directory)
    return path.read_text()

  def write_examples(
    self, spec: grid_lib.RunSpec, directory: pathlib.Path
  ) -> pathlib.Path:
    """Decodes the test examples with a trained run; writes EXAMPLES_FILE."""
    path = directory / EXAMPLES_FILE
    path.write_text(self._decode_examples(spec, directory))
    return path

  def _decode_examples(
    self, spec: grid_lib.RunSpec, directory: pathlib.Path
  ) -> str:
    config = self.config
    vocabulary = self.register_tasks(spec)
    model = t5.Transformer(
      student_config(
        spec.model_size,
        vocabulary.vocab_size,
        config.dropout_rate,
        config.activation_dtype,
      )
    )
    params = checkpoints.restore_params(directory / checkpoints.CHECKPOINTS)
    builder = self.data.build()
    teacher_rows = {
      row["input"].decode(): {
        k: v.decode() for k, v in row.items() if isinstance(v, bytes)
      }
      for row in builder.as_dataset(split="test").as_numpy_iterator()
    }
    assert self.tasks is not None  # set by register_tasks
    examples = showcase.student_examples(
      model=model,
      params=params,
      vocabulary=vocabulary,
      label_task=self.tasks.label,
      rationale_task=self.tasks.rationale,
      teacher_rows=teacher_rows,
      inputs_length=config.inputs_length,
      targets_length=config.targets_length,
      label_length=config.label_length,
      count=config.show_examples,
    )
    return (
      f"Test examples, {spec.name} (greedy; only the label is scored):\n"
      + showcase.format_examples(examples)
    )


def _partitioner(num_partitions: int) -> partitioning.Partitioner | None:
  """T5X's num_partitions model-parallel ways; the rest split the batch.

  Raises:
    errors.UserError: the devices do not split into `num_partitions`.
  """
  if num_partitions == 1:
    return None  # the trainer's default: data parallel over every device
  devices = jax.device_count()
  if devices % num_partitions:
    raise errors.UserError(
      f"--num_partitions={num_partitions} must divide the {devices} devices "
      "JAX sees; choose a divisor of it"
    )
  return partitioning.Partitioner(model=num_partitions)
