"""The main job as a library: card -> teacher -> TFDS -> SeqIO -> train -> eval.

`DistillConfig` holds everything a job needs (its defaults are the offline
demo); `Pipeline` runs its four stages, each skipping work already done:

  1. `annotate`: the teacher writes rationales and labels into an
     append-only store (`dss_jax.teacher`);
  2. `build_dataset`: the annotated TFDS dataset (`dss_jax.datasets`);
  3. `run`: one student per `grid.RunSpec`, trained and scored
     (`dss_jax.trainer`, `dss_jax.evaluation`);
  4. `write_report`: results CSV, tables and plots (`dss_jax.report`).

`run(config)` runs them all, training runs side by side in worker processes
(`dss_jax.workers`). The command lines are `dss_jax.distill` and
`dss_jax.grid_job`; in Python:

  from dss_jax import pipeline
  pipeline.run(pipeline.make_config({"seeds": (0,), "train_steps": 200}))
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import os
import pathlib
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import seqio
import tensorflow_datasets as tfds
from absl import logging

from dss_jax import (
  cards,
  checkpoints,
  datasets,
  errors,
  evaluation,
  host,
  optimizers,
  report,
  seqio_tasks,
  showcase,
  trainer,
  vocab,
)
from dss_jax import grid as grid_lib
from dss_jax import plan as plan_lib
from dss_jax import workers as workers_lib
from dss_jax.models import t5
from dss_jax.models.config import STUDENT_SIZES, T5_SIZES
from dss_jax.teacher import jobs, runner, sources
from dss_jax.teacher import store as store_lib

# A run's test examples with the student's rationale (`show_examples`).
EXAMPLES_FILE = "examples.txt"


class AnnotationIncompleteError(RuntimeError):
  """Some teacher calls failed; the job stops before building the dataset."""


class ConfigError(errors.UserError):
  """A `DistillConfig` value the job cannot run with.

  The message starts with the field's name; a command line names its flag
  instead, followed by `problem` (`dss_jax.distill`).

  Attributes:
    field: the `DistillConfig` field.
    problem: what is wrong with it, as it follows the name.
  """

  def __init__(self, field: str, problem: str):
    super().__init__(f"{field}{problem}")
    self.field = field
    self.problem = problem


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  """Everything a distillation job needs; the defaults are the offline demo.

  Attributes:
    card: task card name or path.
    backend: teacher backend, one of `jobs.BACKENDS`; "replay" reads the
      paper's released PaLM outputs (cqa, svamp, anli1, esnli).
    teacher_model: model name for "gemini" / "openai".
    base_url: endpoint for "openai" (or a Gemini endpoint override).
    source: the annotation's source name; by default "offline", "palm" or
      derived from the teacher model.
    annotate_splits: source splits the teacher annotates (train for
      training, test for the teacher's own accuracy).
    num_samples: teacher samples per example (self-consistency when > 1).
    concurrency: teacher calls in flight.
    requests_per_minute: client-side teacher rate limit.
    max_retry_wait_s: the longest teacher retry hint to wait for; a longer
      one stops the job.
    paper_data_dir: the paper's data layout (replay; default
      $DSS_PAPER_DATA_DIR or the downloaded zip).
    methods: training methods (`grid.METHODS`).
    model_sizes: student sizes (`STUDENT_SIZES` or T5 v1.1 sizes).
    fractions: training-data fractions.
    baseline_fractions: the fractions that methods without rationales
      (finetune, distill) train on too, among `fractions`; None: all of
      them. The demo's claim needs the baseline on all the data only, and
      skipping the rest saves a sixth of its time.
    seeds: seeds (initialization, data order, training subset).
    vocabulary: "byte" (no files) or "t5" (SentencePiece, for pretrained T5).
    initial_checkpoint: pretrained T5X checkpoint to start from; `{size}` in
      it is replaced by the run's model size (one path for a grid of sizes).
    train_steps: optimizer steps per run.
    batch_size: training inputs per step, the paper's batch (64). Baselines
      train `batch_size` examples a step; distilling step-by-step trains
      2 x `batch_size` sequences a step, as the official step's `batch_size`
      inputs each with its label and its rationale (see `recipe`).
    recipe: what a distilling step-by-step step holds: "mixture" (default;
      the SeqIO mixture sampled at rates 1 : lambda, so at lambda 1 a step
      holds `batch_size` label and `batch_size` rationale examples in
      expectation, per-sequence loss) or "official" (each input with its
      label and its rationale in the same step, loss alpha * L_label +
      (1 - alpha) * L_rationale, alpha = 1 / (1 + lambda), token means).
    learning_rate: peak learning rate (linear decay to 0).
    warmup_steps: linear warmup steps.
    dropout_rate: student dropout.
    inputs_length: input tokens (longer inputs are cut).
    targets_length: target tokens of rationale runs.
    label_length: target tokens of label-only runs and of decoding.
    rationale_rate: lambda, the weight of the rationale loss.
    eval_examples: test examples to score (None: all).
    validation_period: score the validation split every this many steps
      (and at the last step) and keep the best checkpoint; the test split is
      then scored at the last step and at that checkpoint. 0: last step only.
    validation_examples: validation examples to score (None: all).
    eval_batch_size: decoding batch size.
    out_dir: where everything goes.
    tfds_data_dir: TFDS data dir (default: <out_dir>/tfds).
    progress: progress bars.
    compilation_cache: keep XLA's compiled programs in <out_dir>/xla_cache,
      so runs after the first (and reruns) skip compilation.
    workers: runs trained side by side, each in its own single-threaded
      process (`dss_jax.workers`); None: one per core, at most 2; 1: all in
      this process.
    show_examples: test examples whose rationale and label a distilling
      step-by-step student decodes at the end, beside the teacher's.
  """

  card: str = "arith"
  backend: str = "offline"
  teacher_model: str | None = None
  base_url: str | None = None
  source: str | None = None
  annotate_splits: tuple[str, ...] = ("train", "test")
  num_samples: int = 1
  concurrency: int = 16
  requests_per_minute: float | None = None
  max_retry_wait_s: float = 300.0
  paper_data_dir: str | None = None
  methods: tuple[str, ...] = ("finetune", "dss_gold")
  model_sizes: tuple[str, ...] = ("demo",)
  # Half the data beside all of it: the paper's data-efficiency claim
  # (distilling step-by-step on 50% against finetuning on 100%).
  fractions: tuple[float, ...] = (0.5, 1.0)
  baseline_fractions: tuple[float, ...] | None = (1.0,)
  seeds: tuple[int, ...] = (0, 1, 2)
  vocabulary: str = "byte"
  initial_checkpoint: str | None = None
  train_steps: int = 800
  batch_size: int = 32
  recipe: str = "mixture"
  learning_rate: float = 3e-3
  warmup_steps: int = 50
  dropout_rate: float = 0.0
  inputs_length: int = 64
  targets_length: int = 26
  label_length: int = 4
  rationale_rate: float = 1.0
  eval_examples: int | None = None
  validation_period: int = 400
  validation_examples: int | None = 200
  eval_batch_size: int = 100
  out_dir: str = "demo_output"
  tfds_data_dir: str | None = None
  progress: bool = True
  compilation_cache: bool = True
  workers: int | None = None
  show_examples: int = 3

  def __post_init__(self):
    if self.recipe not in trainer.RECIPES:
      raise ConfigError(
        "recipe",
        f" must be one of {', '.join(trainer.RECIPES)}, got {self.recipe!r}",
      )
    if self.backend not in jobs.BACKENDS:
      raise ConfigError(
        "backend",
        f" must be one of {', '.join(jobs.BACKENDS)}, got {self.backend!r}",
      )
    for method in self.methods:
      if method not in grid_lib.METHODS:
        raise ConfigError(
          "methods",
          f": unknown method {method!r}; choose from "
          f"{','.join(grid_lib.METHODS)}",
        )
    for size in self.model_sizes:
      if size not in STUDENT_SIZES and size not in T5_SIZES:
        raise ConfigError(
          "model_sizes",
          f": unknown model size {size!r}; choose from "
          f"{', '.join(sorted(STUDENT_SIZES) + list(T5_SIZES))}",
        )
    self._check_numbers()
    self._check_paths()
    self._check_teacher()
    # A split named twice is annotated once (never two calls per example).
    object.__setattr__(
      self, "annotate_splits", tuple(dict.fromkeys(self.annotate_splits))
    )

  def _check_teacher(self) -> None:
    """The teacher's model and the annotation's name say what they are."""
    if self.teacher_model is not None and not self.teacher_model.strip():
      raise ConfigError(
        "teacher_model",
        " is empty; name the teacher model (or leave it unset for the "
        "backend's default)",
      )
    if self.source is not None:
      try:
        datasets.check_source_name(self.source)
      except errors.UserError as e:
        raise ConfigError("source", f"={self.source}: {e}") from None
    if self.backend == "replay" and self.source_name != datasets.PALM_SOURCE:
      raise ConfigError(
        "source",
        f"={self.source}: the replay teacher is the paper's released PaLM "
        f"outputs, source {datasets.PALM_SOURCE!r}; leave it unset",
      )
    if self.backend != "replay" and self.source_name == datasets.PALM_SOURCE:
      raise ConfigError(
        "source",
        f"={datasets.PALM_SOURCE} names the paper's released PaLM-540B "
        f"outputs, not the {self.backend} teacher's; name the annotation "
        "after its teacher, or use the replay teacher",
      )

  @functools.cached_property
  def inputs(self) -> dict[str, Any]:
    """What the job's data is made from: the card's contents (its hash)
    and the source files' hashes (`sources.fingerprint`)."""
    card = cards.load_card(self.card)
    if card.source.paper_folder:
      local = self.paper_data_dir or os.environ.get(sources.PAPER_DATA_ENV)
      if local:
        files = sources.fingerprint(
          sources.source_files(card, sources.find_root(local))
        )
      else:
        files = {"download": sources.DATASETS_ZIP_URL}
    else:
      files = sources.fingerprint(sources.source_files(card))
    # Keyed by name, not path: moving the data keeps the identity.
    named = {pathlib.Path(k).name: v for k, v in files.items()}
    return {
      "card_sha256": hashlib.sha256(
        card.model_dump_json().encode("utf-8")
      ).hexdigest(),
      "source_files": named,
    }

  def annotation_identity(self) -> dict[str, Any]:
    """Every value that decides what the annotation stage asks the teacher."""
    return json.loads(
      json.dumps(
        {
          **self.inputs,
          "backend": self.backend,
          "teacher_model": self.teacher_model,
          "base_url": self.base_url,
          "source": self.source_name,
          "annotate_splits": list(self.annotate_splits),
          "num_samples": self.num_samples,
        }
      )
    )

  def _check_paths(self) -> None:
    """Local files the job will read exist (before any stage)."""
    named = self.vocabulary in ("byte", "t5", "local")
    if not named and "://" not in self.vocabulary:
      if not pathlib.Path(self.vocabulary).is_file():
        raise ConfigError(
          "vocabulary",
          f"={self.vocabulary}: neither byte, t5 nor an existing "
          "SentencePiece model file",
        )
    if self.initial_checkpoint and "://" not in self.initial_checkpoint:
      for size in self.model_sizes:
        path = self.initial_checkpoint.replace("{size}", size)
        if not pathlib.Path(path).exists():
          raise ConfigError(
            "initial_checkpoint",
            f": {path} does not exist (for model size {size}; {{size}} in "
            "it is replaced by each size)",
          )
    for name in ("out_dir", "tfds_data_dir"):
      value = getattr(self, name)
      if value and pathlib.Path(value).exists():
        if not pathlib.Path(value).is_dir():
          raise ConfigError(name, f"={value} is a file; give a folder")
    if self.paper_data_dir and not pathlib.Path(self.paper_data_dir).is_dir():
      raise ConfigError(
        "paper_data_dir",
        f"={self.paper_data_dir}: no such folder; give the folder of the "
        "paper's released data",
      )

  def _check_numbers(self) -> None:
    """Numeric fields in range (before any stage)."""

    def check(name, ok, want):
      if not ok:
        raise ConfigError(name, f" must be {want}, got {getattr(self, name)!r}")

    for name in (
      "train_steps",
      "batch_size",
      "inputs_length",
      "targets_length",
      "label_length",
      "eval_batch_size",
      "num_samples",
      "concurrency",
    ):
      check(name, getattr(self, name) >= 1, ">= 1")
    for name in ("eval_examples", "validation_examples"):
      value = getattr(self, name)
      check(name, value is None or value >= 1, ">= 1 (or unset: all)")
    # Finite too: inf passes "> 0" and breaks the first step.
    optimizers.check_learning_rate(self.learning_rate, "--learning_rate")
    check("warmup_steps", self.warmup_steps >= 0, ">= 0")
    check("validation_period", self.validation_period >= 0, ">= 0")
    check("rationale_rate", self.rationale_rate >= 0, ">= 0")
    check("dropout_rate", 0 <= self.dropout_rate < 1, "in [0, 1)")
    check("fractions", all(0 < f <= 1 for f in self.fractions), "in (0, 1]")
    check(
      "baseline_fractions",
      all(0 < f <= 1 for f in self.baseline_fractions or ()),
      "in (0, 1]",
    )
    check("workers", self.workers is None or self.workers >= 1, ">= 1")
    check(
      "requests_per_minute",
      self.requests_per_minute is None or self.requests_per_minute > 0,
      "> 0",
    )
    check("seeds", all(seed >= 0 for seed in self.seeds), ">= 0")
    check("max_retry_wait_s", self.max_retry_wait_s >= 0, ">= 0")
    if self.teacher_model is not None and not self.teacher_model.strip():
      raise ConfigError("teacher_model", " is empty: name the model")
    if self.backend == "openai" and not self.teacher_model:
      raise ConfigError(
        "teacher_model",
        " is required with the openai teacher: the model name the server "
        "serves, e.g. Qwen/Qwen2.5-7B-Instruct",
      )
    for name in ("methods", "model_sizes", "fractions", "seeds"):
      check(name, len(getattr(self, name)) > 0, "a non-empty list")
      # Two runs in one folder fail in orbax and hang the job.
      check(name, not grid_lib.repeated(name, getattr(self, name)), "distinct")

  def specs(self) -> list[grid_lib.RunSpec]:
    """The job's runs (`grid_lib.expand`, less `baseline_fractions`)."""
    specs = grid_lib.expand(
      self.methods, self.model_sizes, self.fractions, self.seeds
    )
    if self.baseline_fractions is None:
      return specs
    return [
      s
      for s in specs
      if s.uses_rationales or s.fraction in self.baseline_fractions
    ]

  @property
  def teacher(self) -> jobs.TeacherConfig:
    """The teacher of the annotation stage (as `dss-jax annotate` has it)."""
    return jobs.TeacherConfig(
      backend=self.backend,
      model=self.teacher_model,
      base_url=self.base_url,
      source=self.source,
    )

  @property
  def source_name(self) -> str:
    """The annotation's name (`jobs.TeacherConfig.source_name`)."""
    return self.teacher.source_name

  @property
  def data_dir(self) -> str:
    return self.tfds_data_dir or str(pathlib.Path(self.out_dir) / "tfds")

  def run_identity(self, spec: grid_lib.RunSpec) -> dict[str, Any]:
    """Every value that decides the result of `spec`'s run (JSON-able).

    Where outputs go, progress bars, caches and the teacher client's pace
    are left out; a stored run is reused only under the same identity.
    """
    ignored = {
      "out_dir",
      "tfds_data_dir",
      "progress",
      "compilation_cache",
      "concurrency",
      "requests_per_minute",
      "max_retry_wait_s",
      "eval_batch_size",
      "paper_data_dir",
      "methods",
      "model_sizes",
      "fractions",
      "seeds",
      # Which runs a job has, how many train at once, what it shows after.
      "baseline_fractions",
      "workers",
      "show_examples",
    }
    values = {
      f.name: getattr(self, f.name)
      for f in dataclasses.fields(self)
      if f.name not in ignored
    }
    values["source"] = self.source_name
    # The card's contents and the data's, not the card's path: an edited
    # card or source file is another run.
    values.update(self.inputs)
    values.update(dataclasses.asdict(spec))
    return json.loads(json.dumps(values))


# Defaults of real runs (the paper's T5 recipe: AdamW 5e-5, batch 64, 10k
# steps, inputs up to 1024 tokens), used for cards other than the demo's.
PAPER_OVERRIDES: dict[str, Any] = dict(
  vocabulary="t5",
  model_sizes=("base",),
  train_steps=10_000,
  batch_size=64,
  learning_rate=5e-5,
  warmup_steps=0,
  dropout_rate=0.1,
  inputs_length=1024,
  targets_length=256,
  label_length=64,
  eval_batch_size=64,
  fractions=(1.0,),
  baseline_fractions=None,
  # One accelerator: runs one after another, each using all of it.
  workers=1,
  # The official code scores every 250 steps (its eval_steps).
  validation_period=250,
  validation_examples=None,
)
# `dss-jax grid` on the demo card: the paper's four methods and fractions,
# three student sizes.
GRID_OVERRIDES: dict[str, Any] = dict(
  methods=grid_lib.METHODS,
  fractions=grid_lib.PAPER_FRACTIONS,
  baseline_fractions=None,
  model_sizes=("demo-xs", "demo", "demo-l"),
  out_dir="runs/grid",
)


def make_config(
  overrides: Mapping[str, Any] | None = None, grid: bool = False
) -> DistillConfig:
  """The job for a card, with the defaults that suit it.

  The demo card (arith) keeps `DistillConfig`'s CPU-sized defaults; other
  cards start from the paper's recipe (`PAPER_OVERRIDES`, teacher "replay");
  a grid adds the paper's axes (`GRID_OVERRIDES`); `overrides` win over all
  of them.

  Args:
    overrides: `DistillConfig` fields set explicitly (a command line's).
    grid: fill the axes the overrides leave unset with the paper's grid.

  Returns:
    The job.

  Raises:
    ConfigError: a value the job cannot run with.
  """
  overrides = dict(overrides or {})
  card = overrides.get("card", DistillConfig.card)
  stem = pathlib.Path(card).stem
  values: dict[str, Any] = {"card": card}
  is_demo = stem == DistillConfig.card
  if not is_demo:
    values.update(PAPER_OVERRIDES)
    values["backend"] = "replay"
    values["out_dir"] = f"runs/{stem}"
  if grid:
    values.update(GRID_OVERRIDES)
    if not is_demo:
      values["model_sizes"] = ("small", "base", "large")
      values["out_dir"] = f"runs/{stem}_grid"
  values.update(overrides)
  return DistillConfig(**values)


def student_config(
  size: str, vocabulary_size: int, dropout_rate: float
) -> t5.T5Config:
  """The T5 configuration of a student size.

  Args:
    size: a `STUDENT_SIZES` name or a T5 v1.1 size.
    vocabulary_size: ids the vocabulary uses; the embedding is padded to a
      multiple of 128 (T5's 32,100 pieces -> 32,128), as T5X does for the
      matmul units.
    dropout_rate: dropout.

  Returns:
    The student's configuration.
  """
  vocab_size = -(-vocabulary_size // 128) * 128
  if size in STUDENT_SIZES:
    return t5.T5Config(
      vocab_size=vocab_size, dropout_rate=dropout_rate, **STUDENT_SIZES[size]
    )
  return t5.t5_1_1_config(
    size, vocab_size=vocab_size, dropout_rate=dropout_rate
  )


def vocabulary_size(name: str) -> int:
  """Ids of a vocabulary, without fetching T5's model from the cloud.

  Args:
    name: a `DistillConfig.vocabulary`.

  Returns:
    Its vocabulary size (a SentencePiece file of one's own is read).
  """
  if name in ("t5", vocab.T5_SPM_PATH):
    return 32_000 + vocab.T5_EXTRA_IDS  # cc_all.32000.100extra
  if name == "local":
    return vocab.LOCAL_VOCAB_SIZE + vocab.T5_EXTRA_IDS
  return vocab.get_vocabulary(name).vocab_size


def job_plan(
  config: DistillConfig, cpu_peak_flops: float | None = None
) -> plan_lib.Plan:
  """The job's cost before it starts (`dss_jax.plan`).

  Reads the card's source files and the students' shapes only: no teacher
  call, no TFDS build, no compiled model.

  Args:
    config: the job.
    cpu_peak_flops: this machine's float32 matmul FLOP/s (None: measured).

  Returns:
    The plan.
  """
  size = vocabulary_size(config.vocabulary)
  specs = config.specs()
  workers = config.workers or workers_lib.default_workers()
  return plan_lib.make_plan(
    config,
    lambda model_size: student_config(model_size, size, config.dropout_rate),
    workers=workers if len(specs) > 1 else 1,
    cpu_peak_flops=cpu_peak_flops,
  )


def _changed_keys(marker: pathlib.Path, identity: Mapping[str, Any]) -> str:
  """The values of `identity` that differ from those `marker` recorded."""
  try:
    stored = json.loads(marker.read_text()).get("identity")
  except (OSError, ValueError, AttributeError):
    stored = None
  if not isinstance(stored, dict):
    return "what it was made from (not recorded)"
  return ", ".join(
    f"{key} {stored.get(key)!r} -> {identity.get(key)!r}"
    if key not in ("card_sha256", "source_files")
    else {"card_sha256": "the card", "source_files": "the source files"}[key]
    for key in sorted(set(stored) | set(identity))
    if stored.get(key) != identity.get(key)
  )


def _stored_dollars(marker: pathlib.Path) -> float:
  """The teacher's cost a finished annotation recorded (0 if unreadable)."""
  try:
    return float(json.loads(marker.read_text())["stats"]["cost_usd"])
  except (OSError, ValueError, KeyError, TypeError):
    return 0.0


def _metric_value(metrics: Mapping[str, float], name: str) -> float:
  """The named metric, else the task's first (a card's custom metric)."""
  if name in metrics:
    return metrics[name]
  task = name.split("/")[0]
  return next(v for k, v in metrics.items() if k.startswith(f"{task}/"))


def _enable_compilation_cache(directory: pathlib.Path) -> None:
  # Runs of one grid share shapes: a persistent XLA cache turns every
  # compilation after the first into a disk read, also across restarts.
  if jax.config.jax_compilation_cache_dir:
    return  # the user's own cache wins
  jax.config.update("jax_compilation_cache_dir", str(directory))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


class Pipeline:
  """The stages of one job; each stage skips work that is already done."""

  def __init__(self, config: DistillConfig, log: Callable[[str], None] = print):
    """Prepares the output folder.

    Args:
      config: the job.
      log: where progress lines go.
    """
    self.config = config
    self.out_dir = pathlib.Path(config.out_dir)
    if self.out_dir.exists() and not self.out_dir.is_dir():
      raise ConfigError(
        "out_dir", f"={config.out_dir} is a file; give a folder for the job"
      )
    with store_lib.os_faults(self.out_dir, "creating the output folder"):
      self.out_dir.mkdir(parents=True, exist_ok=True)
    self.log = log
    self._card: cards.TaskCard | None = None
    # What the teacher's calls cost, as the runner counted them (the plan's
    # actual dollars in summary.md).
    self.teacher_dollars = 0.0

  @property
  def card(self) -> cards.TaskCard:
    if self._card is None:
      self._card = cards.load_card(self.config.card)
    return self._card

  @property
  def store_path(self) -> pathlib.Path:
    return (
      self.out_dir
      / "annotations"
      / f"{self.card.name}_{self.config.source_name}.jsonl"
    )

  # ------------------------------------------------------------- annotation
  def annotate(self) -> None:
    """Stage 1: the teacher writes rationales and labels (skipped for replay)."""
    config = self.config
    marker = (
      self.out_dir
      / "annotations"
      / f"{self.card.name}_{config.source_name}.done"
    )
    if config.backend == "replay":
      self.log("annotate: replaying the paper's released teacher outputs")
      return
    identity = config.annotation_identity()
    if marker.exists():
      changed = _changed_keys(marker, identity)
      if not changed:
        self.log(f"annotate: done before ({marker})")
        self.teacher_dollars = _stored_dollars(marker)
        return
      # The store keeps every answer; only what it lacks is asked for.
      self.log(
        f"annotate: {changed} changed since {marker} was written; asking the "
        "teacher for what the store lacks"
      )
    job = jobs.plan_job(
      self.card,
      config.annotate_splits,
      num_samples=config.num_samples,
      paper_data_dir=config.paper_data_dir,
      skip_missing_splits=True,
    )
    examples, requests = job.examples, job.requests
    backend = jobs.make_teacher(config.teacher, self.card, job.root)
    self.log(f"annotate: {len(requests)} teacher calls to {backend.name}")
    self.store_path.parent.mkdir(parents=True, exist_ok=True)
    stats = runner.annotate(
      backend,
      requests,
      str(self.store_path),
      runner.RunnerConfig(
        concurrency=config.concurrency,
        requests_per_minute=config.requests_per_minute,
        progress=config.progress,
        max_retry_wait_s=config.max_retry_wait_s,
      ),
    )
    summary = runner.summarize(
      self.card, examples, requests, str(self.store_path), backend.name
    )
    self.log(
      f"annotate: {stats.completed} calls made, {stats.already_stored} stored "
      f"before, {stats.failed} failed; {summary.unparsable} unparsable; "
      f"teacher accuracy {summary.accuracy:.1f}% over {summary.annotated}"
    )
    self.teacher_dollars = stats.cost_usd
    if stats.failed:
      raise AnnotationIncompleteError(
        f"{stats.failed} of {len(requests)} teacher calls failed; rerun the "
        "same command to retry them"
      )
    marker.write_text(
      json.dumps(
        {"identity": identity, "stats": dataclasses.asdict(stats)}, indent=2
      )
    )

  # -------------------------------------------------------------------- TFDS
  def build_dataset(self) -> None:
    """Stage 2: the annotated TFDS dataset (tfds skips a prepared one)."""
    config = self.config
    start = time.monotonic()
    # TFDS prints its own banners to stdout and draws nested bars for a
    # build of seconds; the stage line below says what happened.
    tfds.disable_progress_bar()
    banners = io.StringIO()
    with contextlib.redirect_stdout(banners):
      builder = self._build()
    if banners.getvalue().strip():
      logging.info("tfds: %s", banners.getvalue().strip())
    self.log(
      f"tfds: {datasets.tfds_name(self.card.name, config.source_name)} in "
      f"{builder.data_dir} ({time.monotonic() - start:.1f}s)"
    )
    self._check_counts(datasets.annotation_counts(builder))

  def _build(self) -> tfds.core.DatasetBuilder:
    """The job's annotated dataset (`datasets.build_annotated`)."""
    config = self.config
    return datasets.build_annotated(
      config.card,
      config.source_name,
      data_dir=config.data_dir,
      store=None if config.backend == "replay" else str(self.store_path),
      paper_data_dir=config.paper_data_dir,
      log=self.log,
    )

  def _check_counts(self, counts: Mapping[str, Mapping[str, int]]) -> None:
    """Refuses to train what the data cannot give: rationales for a
    distilling step-by-step run, gold labels to score the test split."""

    def count(split: str, what: str) -> tuple[int, int] | None:
      found = counts.get(self.card.source.splits.get(split, split))
      found = found or counts.get(split)
      return (found[what], found["examples"]) if found else None

    rationales = count("train", "rationales")
    uses_rationales = any(s.uses_rationales for s in self.config.specs())
    if uses_rationales and rationales is not None and not rationales[0]:
      where = (
        self.store_path
        if self.config.backend != "replay"
        else "the released outputs"
      )
      raise errors.UserError(
        f"no rationales to distill: 0 of {rationales[1]} train examples "
        f"have a parsable teacher answer (in {where}); check the teacher's "
        "answers against the card's parser, or train only "
        "--methods=finetune"
      )
    gold = count("test", "gold_labels")
    if gold is not None and not gold[0]:
      raise errors.UserError(
        f"the test split of {self.card.path or self.card.name} has no gold "
        f"labels (0 of {gold[1]} rows have field "
        f"{self.card.source.label_field!r}); the job scores its students on "
        "them: give a labeled test split"
      )

  def teacher_accuracy(self, split: str = "test") -> float | None:
    """The teacher's accuracy against gold on a split (None if unannotated)."""
    name = f"{self.card.name}_{self.config.source_name}_{split}"
    cache = self.out_dir / f"teacher_accuracy_{name}.json"
    builder = self._build()
    # Scored from this build of the dataset only.
    built = datasets.inputs_digest(builder)
    if cache.exists():
      cached = json.loads(cache.read_text())
      if cached.get("dataset") == built:
        return cached["accuracy"]
    if split not in builder.info.splits:
      return None
    total = correct = 0
    for row in builder.as_dataset(split=split).as_numpy_iterator():
      teacher = row["teacher_label"].decode()
      if not row["teacher"] or not row["gold_label"]:
        # Not annotated on this split, or no gold label to score against;
        # unparsable answers count as wrong.
        continue
      total += 1
      correct += self.card.is_correct(
        teacher or None, row["gold_label"].decode()
      )
    accuracy = correct / total if total else None
    cache.write_text(
      json.dumps({"accuracy": accuracy, "examples": total, "dataset": built})
    )
    return accuracy

  # ------------------------------------------------------- train and eval
  def task_names(self, method: str) -> tuple[str, str]:
    """(training task or mixture, evaluation task) of a method."""
    card, source = self.card.name, self.config.source_name
    if method == "finetune":
      return f"dss_{card}_gold_finetune", f"dss_{card}_gold_finetune"
    if method == "distill":
      return f"dss_{card}_{source}_distill", f"dss_{card}_{source}_distill"
    return f"dss_{card}_{source}", f"dss_{card}_{source}_label"

  def register_tasks(self, spec: grid_lib.RunSpec) -> seqio.Vocabulary:
    """Registers the SeqIO tasks of a run; returns its vocabulary."""
    config = self.config
    vocabulary = vocab.get_vocabulary(config.vocabulary)
    seqio_tasks.register_card(
      config.card,
      config.source_name,
      data_dir=config.data_dir,
      vocabulary=vocabulary,
      label_source="teacher" if spec.method == "dss_teacher" else "gold",
      rationale_rate=config.rationale_rate,
      train_fraction=spec.fraction,
      fraction_seed=spec.seed,
    )
    return vocabulary

  def train_kwargs(self, spec: grid_lib.RunSpec) -> dict[str, Any]:
    """What a run trains on: `dss_jax.trainer.train`'s data arguments.

    Baselines train `batch_size` examples a step. Distilling step-by-step
    trains 2 x `batch_size` sequences a step: the official step's
    `batch_size` inputs, each with its label and its rationale, exactly
    ("official") or in expectation ("mixture").
    """
    config = self.config
    train_name, _ = self.task_names(spec.method)
    targets = (
      config.targets_length if spec.uses_rationales else config.label_length
    )
    return dict(
      mixture_or_task_name=train_name,
      task_feature_lengths={"inputs": config.inputs_length, "targets": targets},
      batch_size=config.batch_size * (2 if spec.uses_rationales else 1),
      recipe=config.recipe if spec.uses_rationales else "mixture",
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
        spec.model_size, vocabulary.vocab_size, config.dropout_rate
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
      # A killed run loses at most a quarter of its steps.
      checkpoint_period=max(1, config.train_steps // 4),
      keep_checkpoints=1,
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

  # ---------------------------------------------------------------- report
  def write_report(
    self, rows: Sequence[Mapping[str, Any]]
  ) -> dict[str, pathlib.Path]:
    """Stage 4: results.csv, summary tables and plots."""
    results = grid_lib.write_results_csv(rows, self.out_dir / "results.csv")
    paths = report.write_report(
      results,
      self.out_dir,
      teacher_accuracy=self.teacher_accuracy("test"),
      teacher_name=self._teacher_name(),
      title=self.card.name,
    )
    return {"results_csv": results, **paths}

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
    directory = grid_lib.run_dir(self.out_dir, spec)
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
        spec.model_size, vocabulary.vocab_size, config.dropout_rate
      )
    )
    params = checkpoints.restore_params(directory / checkpoints.CHECKPOINTS)
    builder = self._build()
    teacher_rows = {
      row["input"].decode(): {
        k: v.decode() for k, v in row.items() if isinstance(v, bytes)
      }
      for row in builder.as_dataset(split="test").as_numpy_iterator()
    }
    card, source = self.card.name, config.source_name
    examples = showcase.student_examples(
      model=model,
      params=params,
      vocabulary=vocabulary,
      label_task=f"dss_{card}_{source}_label",
      rationale_task=f"dss_{card}_{source}_rationale",
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

  def _teacher_name(self) -> str:
    if self.config.backend == "replay":
      return "PaLM 540B"
    if self.config.backend == "offline":
      return "offline teacher"
    return self.config.teacher_model or self.config.backend


def run(
  config: DistillConfig, log: Callable[[str], None] = print
) -> dict[str, pathlib.Path]:
  """Runs every stage of a job, skipping finished work.

  Args:
    config: the job.
    log: where progress lines go.

  Returns:
    Name -> written file (results CSV, summary tables, plots).

  Raises:
    errors.UserError: another job writes `out_dir`, or a stale run folder.
    errors.MachineError: the disk is full or a folder read-only (what was
      stored or checkpointed before is kept; rerunning resumes).
  """
  pipeline = Pipeline(config, log)
  # One job writes a folder at a time; a second is refused in one line.
  with (
    store_lib.os_faults(pipeline.out_dir, "taking the job's lock"),
    store_lib.WriterLock(
      pipeline.out_dir / LOCK_FILE, "job folder", pipeline.out_dir
    ),
    store_lib.os_faults(pipeline.out_dir, "running the job"),
  ):
    return _run_stages(config, pipeline, log)


# Beside a job's outputs while it runs: who writes the folder.
LOCK_FILE = ".dss_job.lock"


def _run_stages(
  config: DistillConfig, pipeline: Pipeline, log: Callable[[str], None]
) -> dict[str, pathlib.Path]:
  start = time.monotonic()
  if config.compilation_cache:
    _enable_compilation_cache(pipeline.out_dir / "xla_cache")
  specs = config.specs()
  # Before any expensive stage: a stale run folder stops the job now.
  for spec in specs:
    grid_lib.check_run_config(
      grid_lib.run_dir(pipeline.out_dir, spec), config.run_identity(spec)
    )
  # And a student that cannot fit the device, before the teacher is paid.
  plan = job_plan(config)
  plan_lib.check_memory(plan)
  pipeline.annotate()
  pipeline.build_dataset()
  train_start = time.monotonic()
  workers = config.workers or workers_lib.default_workers()
  if workers > 1 and len(specs) > 1:
    rows = workers_lib.run_grid(
      specs,
      functools.partial(_run_in_worker, config),
      pipeline.out_dir,
      workers=workers,
      log_dir=pipeline.out_dir / "logs",
      identity=config.run_identity,
      setup=functools.partial(_setup_worker, config),
      log=log,
      progress=config.progress,
    )
  else:
    rows = grid_lib.run_grid(
      specs,
      pipeline.run,
      pipeline.out_dir,
      identity=config.run_identity,
      log=log,
    )
  train_seconds = time.monotonic() - train_start
  paths = pipeline.write_report(rows)
  _add_plan_to_summary(
    paths["summary_md"], plan, rows, pipeline.teacher_dollars, train_seconds
  )
  examples = pipeline.show_examples()
  log("")
  log(paths["summary_md"].read_text())
  pair = report.data_efficiency(
    report.summarize(report.read_results(paths["results_csv"]))
  )
  if pair is not None:
    log(report.data_efficiency_text(pair))
  if examples:
    log(examples)
  log(f"{'results_csv:':<20}{paths['results_csv']}")
  for name in (
    "summary_md",
    "summary_csv",
    "accuracy_by_method",
    "data_efficiency",
    "accuracy_vs_data",
    "accuracy_vs_size",
  ):
    if name in paths:
      log(f"{name + ':':<20}{paths[name]}")
  runs = pipeline.out_dir / "runs"
  teacher = (
    "the released PaLM outputs"
    if config.backend == "replay"
    else pipeline.store_path
  )
  log(f"{'checkpoints:':<20}{runs}/<method>/<size>/<frac>/<seed>/checkpoints")
  log(
    f"{'predictions:':<20}{runs}/<method>/<size>/<frac>/<seed>/inference_eval"
  )
  log(f"{'teacher answers:':<20}{teacher}")
  log(f"{'tfds data:':<20}{config.data_dir}")
  log(f"{'logs:':<20}{pipeline.out_dir / 'logs'}")
  log(f"{'wall time:':<20}{time.monotonic() - start:.0f}s")
  return paths


def _add_plan_to_summary(
  summary: pathlib.Path,
  plan: plan_lib.Plan,
  rows: Sequence[Mapping[str, Any]],
  dollars: float,
  train_seconds: float,
) -> None:
  """Appends the plan, with the job's actual times and dollars, to summary.md.

  A run's actual time is its `train_seconds` (training and validation; a
  run stored before this job counts with its own time), averaged over the
  runs of its method and size; the total is this job's training stage.
  """
  seconds: dict[tuple[str, str], list[float]] = {}
  for row in rows:
    key = (str(row["method"]), str(row["model_size"]))
    seconds.setdefault(key, []).append(float(row["train_seconds"]))
  actual = {
    "dollars": dollars,
    "seconds": {k: sum(v) / len(v) for k, v in seconds.items()},
    "total_seconds": train_seconds,
  }
  text = summary.read_text().rstrip("\n")
  summary.write_text(f"{text}\n\n{plan_lib.format_plan(plan, actual)}")


# A worker process's pipeline (`dss_jax.workers`), built on its first run.
_WORKER_PIPELINE: Pipeline | None = None


def _setup_worker(config: DistillConfig) -> None:
  host.keep_freed_memory()
  if config.compilation_cache:
    _enable_compilation_cache(pathlib.Path(config.out_dir) / "xla_cache")


def _run_in_worker(
  config: DistillConfig, spec: grid_lib.RunSpec, directory: pathlib.Path
) -> dict[str, Any]:
  global _WORKER_PIPELINE
  if _WORKER_PIPELINE is None:
    # The worker's output goes to its log file; bars there are noise.
    quiet = dataclasses.replace(config, progress=False)
    _WORKER_PIPELINE = Pipeline(quiet, log=logging.info)
  result = _WORKER_PIPELINE.run(spec, directory)
  if spec == _WORKER_PIPELINE.showcase_spec():
    # Here, beside the other runs still training, rather than in the main
    # process after the last one.
    _WORKER_PIPELINE.write_examples(spec, directory)
  return result
