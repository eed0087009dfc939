"""Planning an annotation job: which teacher, under which name, asked what.

`dss-jax annotate` and the main job's first stage
(`dss_jax.distill.stages.DataStages.annotate`) both plan their teacher calls
here, so the two choose the backend, name the annotation and build the requests the
same way:

  teacher = jobs.TeacherConfig(backend="gemini", model="gemini-2.5-flash")
  job = jobs.plan_job(card, ["train"], num_samples=1)
  backend = jobs.make_teacher(teacher, card, job.root)
  stats = runner.annotate(backend, job.requests, store_path)

The annotation's source name (`TeacherConfig.source_name`) names the TFDS
config and the SeqIO tasks built from it (`dss_<card>_<source>_label`).
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Sequence

from dss_jax import cards as cards_lib
from dss_jax import errors
from dss_jax.teacher import backends, prompts, runner, sources
from dss_jax.teacher.backends import gemini

# The teacher backends a job can name (`backends.make_backend`).
BACKENDS = backends.BACKENDS
# Where an OpenAI-compatible server listens unless told (vLLM's default).
DEFAULT_OPENAI_URL = "http://localhost:8000/v1"
# Sampling temperature of self-consistency samples (num_samples > 1); a
# single sample is greedy.
SAMPLES_TEMPERATURE = 0.7


def source_name_of_model(model: str) -> str:
  """A TFDS-safe source name: gemini-2.5-flash -> gemini_2_5_flash."""
  return re.sub(r"[^a-z0-9]+", "_", model.lower().split("/")[-1]).strip("_")


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
  """Which teacher answers and how it is reached.

  Attributes:
    backend: one of `BACKENDS`.
    model: the model name for "gemini" (default `gemini.DEFAULT_MODEL`) and
      "openai".
    base_url: the OpenAI-compatible /v1 root (default `DEFAULT_OPENAI_URL`),
      or a Gemini endpoint override.
    source: the annotation's name; default `source_name`'s rule.
    vertexai: Gemini on Vertex AI (ADC credentials).
    project: Google Cloud project (Vertex AI).
    location: Vertex AI region.
    timeout_s: per-attempt timeout of "gemini" and "openai" calls.
    thinking_budget: Gemini 2.5 thinking tokens (None: the model's default).
  """

  backend: str = "gemini"
  model: str | None = None
  base_url: str | None = None
  source: str | None = None
  vertexai: bool = False
  project: str | None = None
  location: str | None = None
  timeout_s: float = 120.0
  thinking_budget: int | None = 0

  def __post_init__(self):
    if self.backend not in BACKENDS:
      raise errors.UserError(
        f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}"
      )
    if self.model is not None and not self.model.strip():
      raise errors.UserError(
        "--teacher_model is empty: name the teacher model, or leave the flag out "
        f"for the default ({gemini.DEFAULT_MODEL} on gemini)"
      )
    if self.base_url and not re.match(r"https?://[^/\s]", self.base_url):
      # Else every call fails and is retried with backoff, for hours.
      raise errors.UserError(
        f"teacher URL {self.base_url!r} is not an http:// or https:// "
        "address (annotate: --base_url, distill: --teacher_url), e.g. "
        "http://localhost:8000/v1"
      )
    if self.backend == "openai" and self.model is None:
      raise errors.UserError(
        "--teacher_model is required with --teacher=openai: the model name "
        "the server serves, e.g. --teacher_model=Qwen/Qwen2.5-7B-Instruct"
      )

  @property
  def source_name(self) -> str:
    """The annotation's name: `source`, else "palm" for the released
    outputs, "offline" for the offline teacher, or the model's name made
    TFDS-safe (gemini-2.5-flash -> gemini_2_5_flash)."""
    if self.source:
      return self.source
    if self.backend == "replay":
      return sources.PALM_SOURCE
    if self.backend == "offline":
      return "offline"
    return source_name_of_model(self.model or gemini.DEFAULT_MODEL)


def make_teacher(
  teacher: TeacherConfig,
  card: cards_lib.TaskCard,
  root: pathlib.Path | None = None,
) -> backends.TeacherBackend:
  """The backend a `TeacherConfig` names.

  Args:
    teacher: the teacher.
    card: the task card (the replay backend reads its released outputs).
    root: the paper's data layout (replay; default: `sources.default_root`).

  Returns:
    The backend, ready for `runner.annotate`.
  """
  if teacher.backend == "replay":
    return backends.make_backend("replay", card=card, root=root)
  if teacher.backend == "offline":
    return backends.make_backend("offline")
  if teacher.backend == "openai":
    return backends.make_backend(
      "openai",
      model=teacher.model,
      base_url=teacher.base_url or DEFAULT_OPENAI_URL,
      timeout_s=teacher.timeout_s,
    )
  return backends.make_backend(
    "gemini",
    model=teacher.model or gemini.DEFAULT_MODEL,
    base_url=teacher.base_url,
    vertexai=teacher.vertexai,
    project=teacher.project,
    location=teacher.location,
    timeout_s=teacher.timeout_s,
    thinking_budget=teacher.thinking_budget,
  )


@dataclasses.dataclass(frozen=True)
class AnnotationJob:
  """The teacher calls of a job and the examples they annotate.

  Attributes:
    root: the paper's data layout the examples came from (None for cards
      with their own files or reader).
    examples: the source examples, split after split.
    requests: `num_samples` requests per example.
  """

  root: pathlib.Path | None
  examples: list[sources.SourceExample]
  requests: list[prompts.TeacherRequest]


def plan_job(
  card: cards_lib.TaskCard,
  splits: Sequence[str],
  *,
  num_samples: int = 1,
  paper_data_dir: str | None = None,
  temperature: float | None = None,
  max_output_tokens: int = prompts.SamplingConfig.max_output_tokens,
  limit: int | None = None,
  skip_missing_splits: bool = False,
) -> AnnotationJob:
  """Reads the examples of some splits and builds their teacher requests.

  Args:
    card: the task card.
    splits: splits to annotate, by TFDS name ("train") or the source's own
      name ("valid").
    num_samples: samples per example (self-consistency when > 1).
    paper_data_dir: the paper's data layout (cards with a `paper_folder`;
      default: $DSS_PAPER_DATA_DIR or the downloaded zip).
    temperature: sampling temperature (default: 0, or
      `SAMPLES_TEMPERATURE` with several samples).
    max_output_tokens: the completion length cap.
    limit: annotate only the first `limit` examples of each split.
    skip_missing_splits: leave out splits the source lacks (else a user
      error naming them).

  Returns:
    The job.

  Raises:
    errors.UserError: a split the source lacks (unless skipped).
  """
  root = None
  if card.source.paper_folder:
    root = (
      sources.find_root(paper_data_dir)
      if paper_data_dir
      else sources.default_root()
    )
  available = sources.source_splits(card, root)
  if temperature is None:
    temperature = SAMPLES_TEMPERATURE if num_samples > 1 else 0.0
  sampling = prompts.SamplingConfig(
    temperature=temperature,
    max_output_tokens=max_output_tokens,
    stop=tuple(card.prompt.stop),
  )
  examples, requests = [], []
  # A split named twice ("train,train", or "valid" and "validation") is
  # annotated once: never two calls for one example.
  splits = dict.fromkeys(available.get(s, s) for s in splits)
  for split in splits:
    if split not in available and split not in available.values():
      if skip_missing_splits:
        continue
      raise errors.UserError(
        f"split {split!r}: card {card.name} has no such split here "
        f"(it has {', '.join(sorted(available)) or 'none'})"
      )
    file_split = available.get(split, split)
    rows = sources.read_source(card, file_split, root)[:limit]
    examples += rows
    requests += runner.build_job(card, rows, file_split, sampling, num_samples)
  return AnnotationJob(root=root, examples=examples, requests=requests)
