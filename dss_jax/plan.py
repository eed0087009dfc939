"""A job's cost before it starts: teacher calls, FLOPs, time and memory.

`make_plan(config, ...)` reads only the card's source files (row counts and
the prompts the teacher would get) and the students' shapes; it calls no
teacher, builds no dataset and compiles no model, so `dss-jax distill
--dry_run` prints it in seconds. The same plan, with the job's actual times
and dollars beside it, closes the job's `summary.md` (`actual_table`).

What is estimated, and how:

* Teacher: calls = rows of the annotated splits x samples; input tokens =
  the built prompts' characters / 4 (a rough English ratio; the bill uses
  the real counts); output tokens = the mean length of the paper's released
  completions for the card (cut at the card's stop sequences, characters /
  4) where those files are here, else the completion cap (an upper bound);
  dollars at `runner.PRICES_PER_MILLION` (replay and offline cost nothing).
* Training: `flops.train_flops_per_step` x steps for each run; time =
  FLOPs / (peak x MFU), on this machine (a float32 matmul measured for a
  second) and on named accelerators (datasheet bfloat16 peaks), each MFU
  with its source (`CPU_MFU`, `ACCELERATOR_MFU`).
* Memory per device: parameters, gradients and AdamW's two moments in
  float32 (exact byte counts, `parameter_count`), plus the activations kept
  for the backward pass (`activation_bytes`, a per-token formula) in the
  activation dtype, for one micro-batch (`--microbatches`, which adds an
  accumulated gradient), the state and the model-parallel parts of the
  activations split over `--num_partitions` (on accelerators; a CPU host's
  devices share its RAM). `check_memory` refuses a job whose largest run
  does not fit, naming the flag values that would.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import jax

from dss_jax import cards, errors, flops, host
from dss_jax.teacher import jobs, prompts, runner, sources
from dss_jax.teacher.backends import gemini

if TYPE_CHECKING:
  from dss_jax import grid
  from dss_jax.models.config import T5Config


class JobSettings(Protocol):
  """What the plan reads of a job (`distill.config.DistillConfig`'s fields).

  A protocol, not the class, so that the main job (which prints and checks
  the plan) imports this module and not the other way round.
  """

  card: str
  backend: str
  teacher_model: str | None
  annotate_splits: tuple[str, ...]
  num_samples: int
  paper_data_dir: str | None
  train_steps: int
  batch_size: int
  inputs_length: int
  targets_length: int
  label_length: int
  # `DistillConfig`'s scale settings; a settings object without them plans
  # float32, one micro-batch, one partition.
  activation_dtype: str | None
  microbatches: int
  num_partitions: int


# The runner's ratio (`runner._CHARS_PER_TOKEN`): English prose runs about
# 4 characters per token in SentencePiece and in the Gemini tokenizer.
CHARS_PER_TOKEN = 4
GIB = 2**30

# Model-step MFU measured by benchmarks/gpu_t5_base.py on one H100 (T5 v1.1
# base, bfloat16, batch 64, docs/training.md): 37.3% of the 989 TFLOP/s
# datasheet peak. No TPU or A100 figure was measured here, so the same MFU
# is assumed on every accelerator, and the table says so.
_H100_MFU = 0.373
_H100_MFU_SOURCE = (
  "37.3%: the T5-Base model step measured on an H100 (docs/training.md, "
  "benchmarks/gpu_t5_base.py); assumed the same on the other chips"
)


@dataclasses.dataclass(frozen=True)
class Accelerator:
  """A named chip: datasheet bfloat16 peak and memory per chip."""

  name: str
  peak_flops: float
  memory_bytes: float


# Dense bfloat16 peaks per chip (`flops.PEAK_FLOPS_BY_DEVICE_KIND`, the
# table MFU is reported against) and memory per chip, from the datasheets.
_PEAKS = flops.PEAK_FLOPS_BY_DEVICE_KIND
ACCELERATORS = (
  Accelerator("TPU v4", _PEAKS["TPU v4"], 32 * GIB),
  Accelerator("TPU v5e", _PEAKS["TPU v5e"], 16 * GIB),
  Accelerator("TPU v5p", _PEAKS["TPU v5p"], 95 * GIB),
  Accelerator("A100 80GB", _PEAKS["NVIDIA A100-SXM4-80GB"], 80e9),
  Accelerator("H100 SXM", _PEAKS["NVIDIA H100"], 80e9),
)


# CPU MFU against the measured float32 matmul peak, by student kind.
# T5 sizes: 70.4%, the lowest of three runs of T5 v1.1 small (batch 8,
# 256/128 tokens) on a 2-core VM (docs/training.md, train_cpu_throughput).
# The demo's students: 38%, from docs/distill.md's "about 9 steps/s per
# worker" for a demo distilling step-by-step run (4.3 GFLOP a step, one
# core of a ~200 GFLOP/s two-core machine): 9 x 4.3 / 100.
CPU_MFU = {"t5": 0.704, "demo": 0.38}
CPU_MFU_SOURCE = (
  "70% for T5 sizes (T5 v1.1 small measured, docs/training.md), 38% for "
  "the demo's students (demo steps/s measured, docs/distill.md)"
)


@dataclasses.dataclass(frozen=True)
class TeacherPlan:
  """The annotation stage's calls, tokens and dollars (None: unknown).

  Attributes:
    calls: teacher calls (replayed or offline ones included, at $0).
    rows: source rows per annotated split.
    input_tokens: prompt tokens, characters / 4.
    output_tokens: completion tokens, per `output_note`.
    dollars: at the teacher model's price; None when unknown.
    output_note: where the output length comes from.
    price_note: the price used.
  """

  calls: int | None
  rows: dict[str, int]
  input_tokens: int | None
  output_tokens: int | None
  dollars: float | None
  output_note: str
  price_note: str


@dataclasses.dataclass(frozen=True)
class RunGroup:
  """Runs of one method and size: the same step, so the same cost.

  Attributes:
    method: the grid method.
    model_size: the student size.
    runs: how many runs (fractions x seeds).
    rows_per_step: sequences per step (distilling step-by-step: 2 x batch).
    targets_length: decoder length.
    flops_per_run: training FLOPs of one run.
  """

  method: str
  model_size: str
  runs: int
  rows_per_step: int
  targets_length: int
  flops_per_run: float


@dataclasses.dataclass(frozen=True)
class Memory:
  """Estimated bytes per device of one student's training step."""

  model_size: str
  parameters: float
  optimizer: float
  gradients: float
  activations: float

  @property
  def total(self) -> float:
    return self.parameters + self.optimizer + self.gradients + self.activations


# A CPU process that keeps the memory it frees (`host.keep_freed_memory`,
# which every entry point applies) holds more than a step's live
# temporaries: its heap settles at 2.5-2.7 times the step's gradients and
# activations, or at 3.6 times in some runs of the same step (peak RSS over
# 10 steps of a 65M-parameter student, float32 and bfloat16, 1 to 4
# micro-batches; float32 x1 gave 1,296 MB or 1,727 MB against an estimate
# of 477 MB, about half the runs each; tests/plan_test.py). The host-RAM
# check counts them this many times.
KEPT_HEAP_FACTOR = 4.0


@dataclasses.dataclass(frozen=True)
class Plan:
  """What a job will cost (`make_plan`).

  Attributes:
    teacher: the annotation stage.
    groups: the training runs, by method and size.
    memory: per student size, the largest step's memory per device.
    cpu_peak_flops: measured float32 matmul FLOP/s of this machine.
    workers: runs trained side by side on this machine.
    device_memory_bytes: memory of the device the job runs on.
    device_name: that device, in words.
    activation_dtype: the students' activation dtype.
    microbatches: micro-batches a step.
    num_partitions: model-parallel ways.
    memory_with: the memory of a size at other (microbatches,
      num_partitions, activation dtype), for the refusal's advice; None: no
      advice.
    batch_size: inputs a step (micro-batches must divide it).
    kept_heap: the process keeps the memory it frees (CPU, see
      `KEPT_HEAP_FACTOR`): the memory check counts a step's temporaries
      that many times.
  """

  teacher: TeacherPlan
  groups: list[RunGroup]
  memory: list[Memory]
  cpu_peak_flops: float
  workers: int
  device_memory_bytes: float
  device_name: str
  activation_dtype: str = "float32"
  microbatches: int = 1
  num_partitions: int = 1
  memory_with: Callable[[str, int, int, str], Memory] | None = None
  batch_size: int = 1
  kept_heap: bool = False

  def needs(self, memory: Memory) -> float:
    """Bytes per device that `memory`'s step holds in this process."""
    if not self.kept_heap:
      return memory.total
    temporaries = memory.gradients + memory.activations
    return memory.total + (KEPT_HEAP_FACTOR - 1) * temporaries

  @property
  def total_flops(self) -> float:
    return sum(g.flops_per_run * g.runs for g in self.groups)

  def cpu_seconds(self, group: RunGroup) -> float:
    """Estimated seconds of one run of `group` on this machine's CPU."""
    kind = "demo" if group.model_size.startswith("demo") else "t5"
    # Workers split the cores, so each run gets 1/workers of the peak.
    rate = self.cpu_peak_flops * CPU_MFU[kind] / self.workers
    return group.flops_per_run / rate

  def cpu_total_seconds(self) -> float:
    """Estimated wall seconds of all training runs on this machine."""
    return sum(self.cpu_seconds(g) * g.runs for g in self.groups) / self.workers


def parameter_count(config: T5Config) -> int:
  """Parameters of a T5 v1.1 student (`models/t5.py`), exactly.

  Untied input embedding and output projection, no biases; per layer the
  attention projections, the gated MLP and RMS norm scales; one relative
  position bias table per stack; a final norm per stack.
  """
  d, hd = config.emb_dim, config.num_heads * config.head_dim
  mlp = (len(config.mlp_activations) + 1) * d * config.mlp_dim
  attention = 4 * d * hd
  bias = config.relative_attention_num_buckets * config.num_heads
  encoder = config.num_encoder_layers * (attention + mlp + 2 * d) + d + bias
  decoder = config.num_decoder_layers * (2 * attention + mlp + 3 * d) + d + bias
  return 2 * config.vocab_size * d + encoder + decoder


def activation_bytes(
  config: T5Config,
  rows: int,
  inputs_length: int,
  targets_length: int,
  num_partitions: int = 1,
) -> float:
  """Bytes of a training step's working memory beyond its state.

  What the backward pass keeps and the step's temporaries, per token and
  layer (encoder and decoder layers alike): 6 model-width, 5 head-width
  (heads x head_dim) and 5 MLP-width vectors, and 3.5 x heads x the keys
  it attends to (attention scores, probabilities and their gradients);
  per decoder token, 2 x vocabulary (the logits and their gradient). All
  in the activation dtype's bytes (4 for float32, and on CPU) except the
  logits, which
  the model computes in float32 whatever the dtype. Model parallelism
  (T5X's standard rules) splits the head-width, MLP-width, attention and
  vocabulary terms over `num_partitions`; the model-width ones are
  replicated. The coefficients were
  fit to XLA:CPU's compiled buffer sizes of the float32 step
  (`memory_analysis()`) over 8 settings from demo-xs to T5 small, batches
  8-64, inputs 64-256 and targets 4-64, which the formula meets within
  13% (tests/plan_test.py checks two of them within 20%); the fit is a
  per-token rule, not XLA's exact buffer assignment.

  Args:
    config: the student.
    rows: sequences per step.
    inputs_length: encoder length.
    targets_length: decoder length.
    num_partitions: model-parallel ways.

  Returns:
    Bytes for the whole step (divide by data-parallel devices).
  """
  # XLA:CPU has no bfloat16 arithmetic: it computes in float32 and keeps
  # float32 buffers (a bfloat16 demo-l step measured 92% of the float32
  # step's peak RSS), so a CPU step counts 4 bytes whatever the dtype.
  on_cpu = jax.default_backend() == "cpu"
  item = 2 if config.dtype == "bfloat16" and not on_cpu else 4
  p = num_partitions
  d, hd, m = config.emb_dim, config.num_heads * config.head_dim, config.mlp_dim
  heads, li, lt = config.num_heads / p, inputs_length, targets_length
  width = 6 * d + (5 * hd + 5 * m) / p
  encoder = config.num_encoder_layers * li * (width + 3.5 * heads * li)
  decoder = config.num_decoder_layers * lt * (width + 3.5 * heads * (li + lt))
  logits = 4 * 2 * lt * config.vocab_size / p
  return float(rows * (item * (encoder + decoder) + logits))


def memory_of(
  size: str,
  config: T5Config,
  rows: int,
  inputs_length: int,
  targets_length: int,
  data_devices: int = 1,
  microbatches: int = 1,
  num_partitions: int = 1,
) -> Memory:
  """Estimated memory per device of a training step (float32 state).

  Args:
    size: the student size's name.
    config: the student.
    rows: sequences per step (the global batch).
    inputs_length: encoder length.
    targets_length: decoder length.
    data_devices: devices the batch is split over.
    microbatches: gradient accumulation: activations are one micro-batch's,
      and the accumulated gradient is kept beside the micro-batch's.
    num_partitions: model-parallel ways the state (and part of the
      activations) is split over.

  Returns:
    The estimate.
  """
  # The state is float32 whatever the activation dtype.
  params = 4.0 * parameter_count(config) / num_partitions
  micro_rows = -(-rows // microbatches)
  activations = activation_bytes(
    config, micro_rows, inputs_length, targets_length, num_partitions
  )
  return Memory(
    model_size=size,
    parameters=params,
    optimizer=2 * params,  # AdamW's first and second moments, float32
    gradients=params * (2 if microbatches > 1 else 1),
    activations=activations / max(1, data_devices),
  )


def device_memory() -> tuple[float, str]:
  """(bytes, name) of the memory one device of this process has.

  CPU: the host's RAM (/proc/meminfo's MemTotal, else sysconf), which all
  of a process's CPU devices share; an accelerator: its allocator's limit.
  """
  device = jax.local_devices()[0]
  if device.platform == "cpu":
    try:
      for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
          return float(line.split()[1]) * 1024, "host RAM"
    except OSError:
      pass
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return float(pages), "host RAM"
  stats = device.memory_stats() or {}
  limit = stats.get("bytes_limit")
  return float(limit or "nan"), device.device_kind


def _output_tokens(
  card: cards.TaskCard, root: pathlib.Path | None, cap: int
) -> tuple[float, str]:
  """Mean completion tokens: the released outputs' length, else the cap."""
  if card.source.paper_folder and root is not None:
    lengths = []
    for split in sources.available_splits(card, root).values():
      try:
        completions = sources.read_completions(card, split, root)
      except errors.UserError:
        continue
      for text in completions:
        for stop in card.prompt.stop:
          text = text.split(stop)[0]
        lengths.append(len(text) / CHARS_PER_TOKEN)
    if lengths:
      mean = statistics.fmean(lengths)
      return mean, (
        f"{mean:.0f} tokens a call: the mean of the paper's released "
        "PaLM completions for this card (characters / 4)"
      )
  return float(cap), (
    f"{cap} tokens a call: the completion cap (an upper bound; no released "
    "completions for this card here)"
  )


def teacher_plan(config: JobSettings) -> TeacherPlan:
  """The annotation stage's calls, tokens and dollars, from the source files.

  Args:
    config: the job.

  Returns:
    The plan; counts are None where the paper's data is not here (it would
    be downloaded by the real run).
  """
  card = cards.load_card(config.card)
  local = config.paper_data_dir or os.environ.get(sources.PAPER_DATA_ENV)
  model = config.teacher_model or gemini.DEFAULT_MODEL
  if config.backend in ("replay", "offline"):
    price, price_note = (0.0, 0.0), f"{config.backend}: $0"
  else:
    price = runner.price_of(model, runner.RunnerConfig())
    price_note = (
      f"{model}: ${price[0]:g} in / ${price[1]:g} out per million tokens"
      if price != (0.0, 0.0)
      else f"{model}: price unknown (not in runner.PRICES_PER_MILLION)"
    )
  cap = prompts.SamplingConfig.max_output_tokens
  if card.source.paper_folder and not local:
    return TeacherPlan(
      calls=None,
      rows={},
      input_tokens=None,
      output_tokens=None,
      dollars=None,
      output_note="unknown: the paper's data is not here (set "
      f"${sources.PAPER_DATA_ENV} or --paper_data)",
      price_note=price_note,
    )
  job = jobs.plan_job(
    card,
    config.annotate_splits,
    num_samples=config.num_samples,
    paper_data_dir=local,
    skip_missing_splits=True,
  )
  rows: dict[str, int] = {}
  for request in job.requests:
    if request.sample == 0:
      rows[request.split] = rows.get(request.split, 0) + 1
  input_tokens = sum(len(r.prompt) for r in job.requests) / CHARS_PER_TOKEN
  per_call, note = _output_tokens(card, job.root, cap)
  output_tokens = per_call * len(job.requests)
  dollars = (input_tokens * price[0] + output_tokens * price[1]) / 1e6
  return TeacherPlan(
    calls=len(job.requests),
    rows=rows,
    input_tokens=round(input_tokens),
    output_tokens=round(output_tokens),
    dollars=None if "unknown" in price_note else dollars,
    output_note=note,
    price_note=price_note,
  )


def run_groups(
  config: JobSettings,
  model_config: Callable[[str], T5Config],
  specs: Sequence[grid.RunSpec],
) -> list[RunGroup]:
  """The job's runs by method and size, with one run's training FLOPs."""
  counts: dict[tuple[str, str], list[grid.RunSpec]] = {}
  for spec in specs:
    counts.setdefault((spec.method, spec.model_size), []).append(spec)
  groups = []
  for (method, size), members in counts.items():
    spec = members[0]
    rows = config.batch_size * (2 if spec.uses_rationales else 1)
    targets = (
      config.targets_length if spec.uses_rationales else config.label_length
    )
    step = flops.train_flops_per_step(
      model_config(size), rows, config.inputs_length, targets
    )
    groups.append(
      RunGroup(
        method=method,
        model_size=size,
        runs=len(members),
        rows_per_step=rows,
        targets_length=targets,
        flops_per_run=step * config.train_steps,
      )
    )
  return groups


def memory_by_size(
  config: JobSettings,
  model_config: Callable[[str], T5Config],
  groups: Sequence[RunGroup],
  data_devices: int = 1,
  microbatches: int = 1,
  num_partitions: int = 1,
) -> list[Memory]:
  """Per student size, the memory of its largest step (per device)."""
  by_size: dict[str, Memory] = {}
  for group in groups:
    memory = memory_of(
      group.model_size,
      model_config(group.model_size),
      group.rows_per_step,
      config.inputs_length,
      group.targets_length,
      data_devices,
      microbatches,
      num_partitions,
    )
    known = by_size.get(group.model_size)
    if known is None or memory.total > known.total:
      by_size[group.model_size] = memory
  return list(by_size.values())


def make_plan(
  config: JobSettings,
  model_config: Callable[[str], T5Config],
  workers: int,
  cpu_peak_flops: float | None = None,
) -> Plan:
  """The whole job's plan (no teacher call, no dataset, no compiled model).

  Args:
    config: the job.
    model_config: the student configuration of a size.
    workers: runs trained side by side on this machine.
    cpu_peak_flops: this machine's float32 matmul FLOP/s; None measures it
      (under a second, once per process: `flops.measured_cpu_peak`).

  Returns:
    The plan.
  """
  groups = run_groups(config, model_config, config.specs())
  on_cpu = jax.local_devices()[0].platform == "cpu"
  microbatches = getattr(config, "microbatches", 1)
  num_partitions = getattr(config, "num_partitions", 1)
  # CPU devices share the host's RAM: the whole batch and the whole state
  # count against it, however the mesh splits them.
  partitions = 1 if on_cpu else num_partitions
  data_devices = 1 if on_cpu else max(1, jax.device_count() // partitions)

  def memory_with(size: str, micro: int, parts: int, dtype: str) -> Memory:
    """`size`'s largest step at other accumulation, partitions, dtype."""
    devices = 1 if on_cpu else max(1, jax.device_count() // parts)
    mine = [g for g in groups if g.model_size == size]

    def with_dtype(name: str) -> T5Config:
      return dataclasses.replace(model_config(name), dtype=dtype)

    return max(
      memory_by_size(config, with_dtype, mine, devices, micro, parts),
      key=lambda m: m.total,
    )

  if cpu_peak_flops is None:
    cpu_peak_flops = flops.measured_cpu_peak()
  memory_bytes, device_name = device_memory()
  try:
    teacher = teacher_plan(config)
  except errors.UserError as e:
    # The annotation stage reports a bad source in its own words; the plan
    # only says it could not count.
    teacher = TeacherPlan(
      calls=None,
      rows={},
      input_tokens=None,
      output_tokens=None,
      dollars=None,
      output_note=f"unknown: {errors.one_line(e)}",
      price_note="unknown",
    )
  return Plan(
    teacher=teacher,
    groups=groups,
    memory=memory_by_size(
      config, model_config, groups, data_devices, microbatches, partitions
    ),
    cpu_peak_flops=cpu_peak_flops,
    workers=workers if on_cpu else 1,
    device_memory_bytes=memory_bytes,
    device_name=device_name,
    activation_dtype=getattr(config, "activation_dtype", None) or "float32",
    microbatches=microbatches,
    num_partitions=num_partitions,
    memory_with=memory_with,
    batch_size=config.batch_size,
    kept_heap=on_cpu and host.keeps_freed_memory(),
  )


def check_memory(plan: Plan) -> None:
  """Refuses a job whose largest step does not fit the device.

  On CPU the runs trained side by side (--workers) share the host's RAM.
  The message names the smallest --num_partitions (on accelerators) and
  --microbatches (a divisor of --batch_size) that would fit, where one does.

  Args:
    plan: the job's plan.

  Raises:
    errors.UserError: one line naming the size and the flags to change.
  """
  limit = plan.device_memory_bytes
  if not math.isfinite(limit):
    return
  for memory in plan.memory:
    need = plan.needs(memory) * plan.workers
    if need > limit:
      side = f" ({plan.workers} runs side by side)" if plan.workers > 1 else ""
      workers = ", or --workers=1" if plan.workers > 1 else ""
      fixes = _fixes(plan, memory.model_size, limit / plan.workers)
      use = " or ".join(fixes) + ", or " if fixes else ""
      kept = (
        f", its step's temporaries x{KEPT_HEAP_FACTOR:g} for the heap "
        "this process keeps"
        if plan.kept_heap
        else ""
      )
      raise errors.UserError(
        f"t5 {memory.model_size} {plan.activation_dtype} needs "
        f"~{_gib(need)} per device{side}{kept}, more than this "
        f"{plan.device_name}'s {_gib(limit)}; use {use}a smaller "
        f"--model_sizes or --batch_size (or shorter "
        f"--inputs_length/--targets_length){workers}"
      )


def _fixes(plan: Plan, size: str, limit: float) -> list[str]:
  """The flag values, one each, that bring `size` under `limit` bytes."""
  if plan.memory_with is None:
    return []
  fixes = []
  on_cpu = plan.device_name == "host RAM"
  micro, parts, dtype = (
    plan.microbatches,
    plan.num_partitions,
    plan.activation_dtype,
  )
  # Model parallelism over a CPU host's devices shares the same RAM.
  for p in (2**k for k in range(1, 11)):
    if on_cpu or p <= parts:
      continue
    if plan.needs(plan.memory_with(size, micro, p, dtype)) <= limit:
      fixes.append(f"--num_partitions={p}")
      break
  for m in range(micro + 1, plan.batch_size + 1):
    if plan.batch_size % m == 0 and m % micro == 0:
      if plan.needs(plan.memory_with(size, m, parts, dtype)) <= limit:
        fixes.append(f"--microbatches={m}")
        break
  if dtype == "float32":
    if plan.needs(plan.memory_with(size, micro, parts, "bfloat16")) <= limit:
      fixes.append("--activation_dtype=bfloat16")
  return fixes


def _gib(value: float) -> str:
  if value < GIB:
    return f"{value / 2**20:.0f} MiB"
  return (
    f"{value / GIB:.1f} GiB" if value < 10 * GIB else f"{value / GIB:.0f} GiB"
  )


def _seconds(value: float) -> str:
  if value < 1:
    return "<1 s"
  if value < 120:
    return f"{value:.0f} s"
  if value < 7200:
    return f"{value / 60:.0f} min"
  if value < 3 * 86400:
    return f"{value / 3600:.1f} h"
  return f"{value / 86400:.1f} days"


def _number(value: float | None) -> str:
  return "unknown" if value is None else f"{value:,.0f}"


def _dollars(value: float | None) -> str:
  return "unknown" if value is None else f"${value:,.2f}"


def format_plan(plan: Plan, actual: Mapping[str, object] | None = None) -> str:
  """The plan as Markdown tables; with `actual`, measured values beside.

  Args:
    plan: the plan.
    actual: "dollars" (float), "seconds" ({(method, size): mean train
      seconds of a run}), "total_seconds" (the runs' wall time),
      "stored_runs" (runs an earlier job trained, not in that time); None
      for the dry run.

  Returns:
    Markdown.
  """
  teacher = plan.teacher
  lines = ["## Plan", "", "Teacher (annotation):", ""]
  lines += ["| calls | rows | input tokens | output tokens | dollars |"]
  lines += ["|---:|---|---:|---:|---:|"]
  rows = ", ".join(f"{k} {v:,}" for k, v in teacher.rows.items()) or "unknown"
  dollars = _dollars(teacher.dollars)
  if actual is not None and "dollars" in actual:
    dollars += f" (actual ${float(actual['dollars']):,.2f})"
  lines.append(
    f"| {_number(teacher.calls)} | {rows} | {_number(teacher.input_tokens)} "
    f"| {_number(teacher.output_tokens)} | {dollars} |"
  )
  lines += [
    "",
    "Input tokens: the built prompts' characters / 4. Output tokens: "
    f"{teacher.output_note}. Price: {teacher.price_note}.",
    "",
    "Training (FLOPs: `flops.train_flops_per_step` x steps; time = FLOPs / "
    "(peak x MFU)):",
    "",
  ]
  names = [a.name for a in ACCELERATORS]
  header = "| method | size | runs | seq/step | FLOPs/run | this machine/run"
  if actual is not None:
    header += " | actual/run"
  lines.append(header + "".join(f" | {n}/run" for n in names) + " |")
  lines.append("|---" * (6 + len(names) + (actual is not None)) + "|")
  seconds = actual.get("seconds", {}) if actual else {}
  for g in plan.groups:
    row = (
      f"| {g.method} | {g.model_size} | {g.runs} | {g.rows_per_step} | "
      f"{g.flops_per_run:.3g} | {_seconds(plan.cpu_seconds(g))}"
    )
    if actual is not None:
      got = seconds.get((g.method, g.model_size))
      row += f" | {_seconds(got) if got is not None else '-'}"
    row += "".join(
      f" | {_seconds(g.flops_per_run / (a.peak_flops * _H100_MFU))}"
      for a in ACCELERATORS
    )
    lines.append(row + " |")
  total = (
    f"| total | | {sum(g.runs for g in plan.groups)} | | "
    f"{plan.total_flops:.3g} | {_seconds(plan.cpu_total_seconds())}"
  )
  if actual is not None:
    got = actual.get("total_seconds")
    total += f" | {_seconds(float(got)) if got is not None else '-'}"
    if actual.get("stored_runs"):
      # Their time is in their rows, not in this job's.
      total += f" ({actual['stored_runs']} run(s) trained by an earlier job)"
  total += "".join(
    f" | {_seconds(plan.total_flops / (a.peak_flops * _H100_MFU))}"
    for a in ACCELERATORS
  )
  lines += [total + " |", ""]
  lines += [
    f"This machine: {plan.cpu_peak_flops / 1e9:.0f} GFLOP/s float32 matmul "
    f"(measured now), {plan.workers} run(s) side by side, MFU "
    f"{CPU_MFU_SOURCE}; training steps only (no compilation, evaluation "
    "or data).",
    "Accelerators: one chip each, datasheet dense bfloat16 peaks "
    + ", ".join(f"{a.name} {a.peak_flops / 1e12:.0f}" for a in ACCELERATORS)
    + f" TFLOP/s; MFU {_H100_MFU_SOURCE}.",
    "",
    f"Memory per device (float32 parameters, gradients, AdamW's two "
    f"moments; activations of the largest step; this device: "
    f"{plan.device_name}, {_gib(plan.device_memory_bytes)}):",
    "",
    "| size | parameters | optimizer | gradients | activations | total |"
    + "".join(f" {a.name} |" for a in ACCELERATORS),
    "|---" * (6 + len(ACCELERATORS)) + "|",
  ]
  for m in plan.memory:
    fits = "".join(
      " fits |" if m.total <= a.memory_bytes else " no |" for a in ACCELERATORS
    )
    lines.append(
      f"| {m.model_size} | {_gib(m.parameters)} | {_gib(m.optimizer)} | "
      f"{_gib(m.gradients)} | {_gib(m.activations)} | {_gib(m.total)} |" + fits
    )
  lines += [
    "",
    "Activations: `plan.activation_bytes`'s per-token formula at the run's "
    f"batch and lengths, {plan.activation_dtype} (logits float32), "
    f"{plan.microbatches} micro-batch(es) a step, state split over "
    f"{plan.num_partitions} model partition(s) (the accelerator columns: "
    "the same step per chip).",
  ]
  if plan.kept_heap:
    lines[-1] += (
      f" The check against {plan.device_name} counts a step's gradients and "
      f"activations x{KEPT_HEAP_FACTOR:g}: the heap a CPU process keeps "
      "(`plan.KEPT_HEAP_FACTOR`)."
    )
  return "\n".join(lines) + "\n"
