"""The main job's settings: `DistillConfig`, its presets, the students' shapes.

`make_config` is the job a command line asks for: the demo's CPU-sized
defaults for the demo card, the paper's recipe (`PAPER_OVERRIDES`) for the
others, the paper's grid (`GRID_OVERRIDES`) for `dss-jax grid`. `job_plan`
is its cost before any work (`dss_jax.plan`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import jax

from dss_jax import (
  cards,
  datasets,
  errors,
  optimizers,
  vocab,
)
from dss_jax import grid as grid_lib
from dss_jax import plan as plan_lib
from dss_jax import step as step_lib
from dss_jax import workers as workers_lib
from dss_jax.models import t5
from dss_jax.models.config import STUDENT_SIZES, T5_SIZES
from dss_jax.teacher import jobs, sources

# The students' activation dtypes (`T5Config.dtype`, T5X's ACTIVATION_DTYPE).
ACTIVATION_DTYPES = ("bfloat16", "float32")


def default_activation_dtype() -> str:
  """bfloat16 where JAX runs on a GPU or TPU, float32 on CPU.

  CPUs have no fast bfloat16 matmul (XLA emulates it, slower than float32);
  accelerators' bfloat16 peak is several times their float32 one.
  """
  return "float32" if jax.default_backend() == "cpu" else "bfloat16"


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
    activation_dtype: the students' activation dtype (T5X's
      ACTIVATION_DTYPE), "bfloat16" or "float32"; parameters and optimizer
      state stay float32. None: bfloat16 where JAX runs on a GPU or TPU,
      float32 on CPU (decided when the job is made, and named in each run's
      identity).
    microbatches: gradient accumulation (T5X's num_microbatches): each step's
      batch is split into this many micro-batches, exactly (the loss's
      token and sequence counts are the whole step's).
    num_partitions: model-parallel ways (T5X's PjitPartitioner
      num_partitions); the remaining devices split the batch.
    keep_checkpoints: checkpoints each run keeps, a number or "all" (for an
      eval over a run's checkpoints later).
    checkpoint_period: save every this many steps (and at the end); None:
      a quarter of `train_steps`, so a killed run loses at most a quarter.
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
  activation_dtype: str | None = None
  microbatches: int = 1
  num_partitions: int = 1
  keep_checkpoints: int | str = 1
  checkpoint_period: int | None = None

  def __post_init__(self):
    if self.activation_dtype is None:
      object.__setattr__(self, "activation_dtype", default_activation_dtype())
    if self.recipe not in step_lib.RECIPES:
      raise ConfigError(
        "recipe",
        f" must be one of {', '.join(step_lib.RECIPES)}, got {self.recipe!r}",
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
    if self.backend == "replay" and self.source_name != sources.PALM_SOURCE:
      raise ConfigError(
        "source",
        f"={self.source}: the replay teacher is the paper's released PaLM "
        f"outputs, source {sources.PALM_SOURCE!r}; leave it unset",
      )
    if self.backend != "replay" and self.source_name == sources.PALM_SOURCE:
      raise ConfigError(
        "source",
        f"={sources.PALM_SOURCE} names the paper's released PaLM-540B "
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
    if not str(self.out_dir).strip():
      # Else the job writes into the working directory.
      raise ConfigError(
        "out_dir", " is empty; give a folder, or leave the flag out"
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

    check(
      "batch_size",
      step_lib.valid_inputs_per_step(self.batch_size),
      step_lib.INPUTS_PER_STEP_RULE,
    )
    for name in (
      "train_steps",
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
    check(
      "rationale_rate",
      step_lib.valid_rationale_rate(self.rationale_rate),
      step_lib.RATIONALE_RATE_RULE,
    )
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
    self._check_scale()
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

  def _check_scale(self) -> None:
    """Dtype, accumulation, partitions and checkpoints (before any stage)."""
    if self.activation_dtype not in ACTIVATION_DTYPES:
      raise ConfigError(
        "activation_dtype",
        f" must be one of {', '.join(ACTIVATION_DTYPES)}, got "
        f"{self.activation_dtype!r}",
      )
    for name in ("microbatches", "num_partitions"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ConfigError(name, f" must be >= 1, got {value!r}")
    if self.batch_size % self.microbatches:
      raise ConfigError(
        "microbatches",
        f"={self.microbatches} must divide --batch_size={self.batch_size} "
        "(each micro-batch holds batch_size / microbatches inputs)",
      )
    keep = self.keep_checkpoints
    if keep != "all" and not (isinstance(keep, int) and keep >= 1):
      raise ConfigError(
        "keep_checkpoints", f" must be a number >= 1 or all, got {keep!r}"
      )
    period = self.checkpoint_period
    if period is not None and not (isinstance(period, int) and period >= 1):
      raise ConfigError(
        "checkpoint_period", f" must be >= 1 (or unset), got {period!r}"
      )

  @property
  def steps_per_checkpoint(self) -> int:
    """`checkpoint_period`, or a quarter of the run when unset."""
    return self.checkpoint_period or max(1, self.train_steps // 4)

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
  size: str, vocabulary_size: int, dropout_rate: float, dtype: str = "float32"
) -> t5.T5Config:
  """The T5 configuration of a student size.

  Args:
    size: a `STUDENT_SIZES` name or a T5 v1.1 size.
    vocabulary_size: ids the vocabulary uses; the embedding is padded to a
      multiple of 128 (T5's 32,100 pieces -> 32,128), as T5X does for the
      matmul units.
    dropout_rate: dropout.
    dtype: activation dtype (`DistillConfig.activation_dtype`).

  Returns:
    The student's configuration.
  """
  vocab_size = -(-vocabulary_size // 128) * 128
  if size in STUDENT_SIZES:
    return t5.T5Config(
      vocab_size=vocab_size,
      dropout_rate=dropout_rate,
      dtype=dtype,
      **STUDENT_SIZES[size],
    )
  return t5.t5_1_1_config(
    size, vocab_size=vocab_size, dropout_rate=dropout_rate, dtype=dtype
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
    lambda model_size: student_config(
      model_size, size, config.dropout_rate, config.activation_dtype
    ),
    workers=workers if len(specs) > 1 else 1,
    cpu_peak_flops=cpu_peak_flops,
  )
