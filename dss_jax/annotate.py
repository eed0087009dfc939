r"""Annotates a dataset with a teacher LLM: rationales and labels, resumable.

    export GEMINI_API_KEY=...
    python -m dss_jax.annotate --task_card=cqa --split=train \
      --teacher=gemini --teacher_model=gemini-2.5-flash \
      --teacher_concurrency=32 --teacher_rpm=1000 --teacher_samples=1

    # any OpenAI-compatible server (vLLM, llama.cpp, Ollama):
    python -m dss_jax.annotate --task_card=svamp --teacher=openai \
      --teacher_model=Qwen/Qwen2.5-7B-Instruct \
      --teacher_url=http://localhost:8000/v1

The teacher's flags are spelled as in `dss-jax distill`. The old spellings
(`--card`, `--backend`, `--model`, `--base_url`, `--source`,
`--num_samples`, `--concurrency`, `--rpm`, `--paper_data_dir`) still work for
this release and print one deprecation line each.

Completions go to an append-only store (default
$DSS_ANNOTATIONS_DIR/<card>_<source>.jsonl); rerunning the same command after
a crash or a kill continues where it stopped. `--build_tfds` then builds
`dss_annotated/<card>_<source>` from the store. A bad key, an unknown model or
an exhausted quota ends the run with one line on stderr.

A server that asks to wait longer than `--max_retry_wait` (default 300 s;
a `Retry-After` or Gemini `retryDelay`) or answers in a shape that is not
its API's stops the run with one line naming it; shorter waits of 10 s or
more are logged with their reason. Messages that quote a server never show
an API key (masked).

Exit status: 0 when every call is stored; 1 when calls are left failed or a
server fault stopped the run (one `error:` line; rerunning retries them); 2
for a user error (a bad flag, card, data folder, key or model name, an
openai teacher without `--teacher_model`, Vertex AI without credentials; one
`error:` line).
"""

import logging
import math
import os
import re
from collections.abc import Sequence

from absl import flags

from dss_jax import cards, cli, datasets, errors
from dss_jax.teacher import jobs, runner
from dss_jax.teacher import store as store_lib
from dss_jax.teacher.backends import gemini_batch

FLAGS = flags.FLAGS
# The teacher's flags are spelled as `dss-jax distill` spells them; the old
# spellings still work for one release, with a deprecation line.
RENAMED_FLAGS = {
  "card": "task_card",
  "backend": "teacher",
  "model": "teacher_model",
  "base_url": "teacher_url",
  "source": "teacher_source",
  "num_samples": "teacher_samples",
  "concurrency": "teacher_concurrency",
  "rpm": "teacher_rpm",
  "paper_data_dir": "paper_data",
}


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines the command line (called when the command starts)."""

  def define(kind: str, name: str, default, help_text: str, **kwargs) -> None:
    getattr(flags, f"DEFINE_{kind}")(
      name, default, help_text, flag_values=flag_values, **kwargs
    )

  define(
    "string",
    "task_card",
    None,
    "Task card: a built-in name, a card in --task_cards, or a path.",
    required=True,
  )
  define(
    "multi_string",
    "task_cards",
    [],
    "Cards of your own: card files or folders of *.yaml cards, "
    "':'-separated or repeated; added to $DSS_TASK_CARDS.",
  )
  define("list", "split", ["train"], "Source splits to annotate.")
  flags.DEFINE_enum(
    "teacher",
    "gemini",
    jobs.BACKENDS,
    "Teacher backend.",
    flag_values=flag_values,
  )
  define(
    "string",
    "teacher_model",
    None,
    "Teacher model name (gemini: default gemini-2.5-flash; openai: the "
    "name the server serves, required).",
  )
  define(
    "string",
    "teacher_url",
    None,
    "Endpoint override (gemini) or the /v1 root (openai).",
  )
  define("bool", "vertexai", False, "Gemini on Vertex AI (ADC credentials).")
  define("string", "project", None, "Google Cloud project (Vertex AI).")
  define("string", "location", "us-central1", "Vertex AI region.")
  define(
    "bool", "batch", False, "Gemini Batch API (half price, hours of latency)."
  )
  define(
    "string",
    "teacher_source",
    None,
    "Source name (default: from the model, e.g. gemini_2_5_flash).",
  )
  define(
    "string",
    "store",
    None,
    "Store path (default: $DSS_ANNOTATIONS_DIR/<card>_<source>.jsonl).",
  )
  define(
    "string",
    "paper_data",
    None,
    "The paper's data layout (default: $DSS_PAPER_DATA_DIR or the "
    "downloaded zip).",
  )
  define(
    "integer",
    "limit",
    None,
    "Annotate only the first N examples of each split.",
    lower_bound=1,
  )
  define(
    "integer",
    "teacher_samples",
    1,
    "Samples per example (self-consistency vote when > 1).",
    lower_bound=1,
  )
  define(
    "float",
    "temperature",
    None,
    "Sampling temperature (default 0, or 0.7 with --num_samples > 1).",
    lower_bound=0.0,
  )
  define(
    "integer", "max_output_tokens", 256, "Completion length cap.", lower_bound=1
  )
  define(
    "integer", "teacher_concurrency", 16, "Calls in flight.", lower_bound=1
  )
  define("float", "teacher_rpm", None, "Client-side requests-per-minute limit.")
  define("float", "tpm", None, "Client-side tokens-per-minute limit.")
  define("integer", "max_retries", 8, "Retries per call.", lower_bound=0)
  define("float", "timeout_s", 120.0, "Per-attempt timeout.")
  define(
    "float",
    "max_retry_wait",
    300.0,
    "Longest server retry hint (Retry-After, retryDelay) to wait for, in "
    "seconds; a longer one stops the run (rerun later to go on).",
    lower_bound=0,
  )
  define(
    "integer",
    "thinking_budget",
    0,
    "Gemini 2.5 thinking tokens (-1: model default).",
    lower_bound=-1,
  )
  define(
    "list",
    "price",
    None,
    "US$ per million input,output tokens for the cost estimate.",
  )
  define("bool", "progress", True, "Show a progress bar.")
  define(
    "bool",
    "build_tfds",
    False,
    "Build dss_annotated/<card>_<source> afterwards.",
  )
  define("string", "data_dir", None, "TFDS data dir for --build_tfds.")
  define(
    "bool",
    "allow_incomplete",
    False,
    "With --build_tfds: build even when teacher calls failed (their examples "
    "are left out).",
  )
  # Checked when the flags are parsed, before any file is read or call made.
  for name in ("teacher_rpm", "tpm", "timeout_s"):
    flags.register_validator(
      name,
      lambda v: v is None or v > 0,
      f"--{name} must be > 0",
      flag_values=flag_values,
    )
  # nan passes a lower bound (every comparison with nan is False).
  for name in ("temperature", "max_retry_wait", "timeout_s"):
    flags.register_validator(
      name,
      lambda v: v is None or math.isfinite(v),
      f"--{name} must be a finite number",
      flag_values=flag_values,
    )
  flags.register_validator(
    "split",
    lambda v: bool(v) and all(name.strip() for name in v),
    "--split must name one or more splits, e.g. --split=train",
    flag_values=flag_values,
  )
  flags.register_validator(
    "price",
    lambda v: v is None or (len(v) == 2 and all(_is_price(p) for p in v)),
    "--price must be two non-negative numbers: input,output US$ per million",
    flag_values=flag_values,
  )
  flags.register_validator(
    "teacher_source",
    lambda v: v is None or re.fullmatch(r"[a-z][a-z0-9_]*", v) is not None,
    "--teacher_source must be lower-case letters, digits and _ (it names the dataset)",
    flag_values=flag_values,
  )


def _is_price(text: str) -> bool:
  try:
    return float(text) >= 0
  except ValueError:
    return False


def teacher_from_flags(
  flag_values: flags.FlagValues = FLAGS,
) -> jobs.TeacherConfig:
  """The teacher the command line names."""
  f = flag_values
  return jobs.TeacherConfig(
    backend=f.teacher,
    model=f.teacher_model,
    base_url=f.teacher_url,
    source=f.teacher_source,
    vertexai=f.vertexai,
    project=f.project,
    location=f.location,
    timeout_s=f.timeout_s,
    thinking_budget=None if f.thinking_budget < 0 else f.thinking_budget,
  )


def main(argv: Sequence[str]) -> None:
  """Annotates the splits the flags name; builds the TFDS dataset if asked."""
  del argv
  f = FLAGS
  # One INFO line per HTTP request would bury the progress bar.
  for name in ("httpx", "httpx2", "google_genai"):
    logging.getLogger(name).setLevel(logging.WARNING)
  cards.add_task_cards(f.task_cards)
  teacher = teacher_from_flags()
  source = teacher.source_name
  try:
    card = cards.load_card(f.task_card)
    job = jobs.plan_job(
      card,
      f.split,
      num_samples=f.teacher_samples,
      paper_data_dir=f.paper_data,
      temperature=f.temperature,
      max_output_tokens=f.max_output_tokens,
      limit=f.limit,
    )
    backend = jobs.make_teacher(teacher, card, job.root)
    store = f.store or store_lib.default_store_path(card.name, source)
    price = tuple(float(p) for p in f.price) if f.price else None
    config = runner.RunnerConfig(
      concurrency=f.teacher_concurrency,
      requests_per_minute=f.teacher_rpm,
      tokens_per_minute=f.tpm,
      max_retries=f.max_retries,
      max_retry_wait_s=f.max_retry_wait,
      timeout_s=f.timeout_s + 5.0,
      price_per_million=price,
      progress=f.progress,
    )
    if f.batch:
      stats = gemini_batch.annotate_batch(backend, job.requests, store, config)
    else:
      stats = runner.annotate(backend, job.requests, store, config)
  except FileNotFoundError as e:
    # A missing data folder or split file: the user's to provide.
    raise errors.UserError(str(e)) from None
  requests = job.requests
  summary = runner.summarize(card, job.examples, requests, store, backend.name)
  print(
    f"{card.name}: {stats.completed} calls made, {stats.already_stored} already "
    f"stored, {stats.failed} failed, {stats.retries} retries in "
    f"{stats.elapsed_s:.1f}s; tokens in/out {stats.input_tokens}/"
    f"{stats.output_tokens}, est. ${stats.cost_usd:.4f}"
  )
  print(
    f"{summary.annotated}/{summary.examples} examples annotated, "
    f"{summary.unparsable} unparsable, teacher accuracy vs gold "
    f"{summary.accuracy:.2f}%; store: {store}"
  )
  if stats.failed:
    share = stats.failed / max(1, len(requests))
    message = (
      f"{stats.failed} of {len(requests)} teacher calls failed "
      f"({100 * share:.1f}%); rerun the same command to retry them"
    )
    if not (f.build_tfds and f.allow_incomplete):
      if f.build_tfds:
        message += ", or pass --allow_incomplete to build without them"
      raise SystemExit(f"error: {message}")
    print(f"warning: {message}; building without them (--allow_incomplete)")
  if f.build_tfds:
    if f.paper_data:
      # The builder reads the source rows from the same place (the flag wins
      # over the environment).
      os.environ["DSS_PAPER_DATA_DIR"] = f.paper_data
    builder = datasets.build_annotated(
      f.task_card,
      source,
      data_dir=f.data_dir,
      store=store,
      teacher=backend.name,
    )
    print(
      f"built {datasets.tfds_name(card.name, source)} in {builder.data_dir}"
    )


if __name__ == "__main__":
  define_flags()
  cli.run(main, cli.renamed_flags(RENAMED_FLAGS))
