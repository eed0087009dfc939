r"""Annotates a dataset with a teacher LLM: rationales and labels, resumable.

    export GEMINI_API_KEY=...
    python -m dss_jax.annotate --card=cqa --split=train \
      --backend=gemini --model=gemini-2.5-flash \
      --concurrency=32 --rpm=1000 --num_samples=1

    # any OpenAI-compatible server (vLLM, llama.cpp, Ollama):
    python -m dss_jax.annotate --card=svamp --backend=openai \
      --model=Qwen/Qwen2.5-7B-Instruct --base_url=http://localhost:8000/v1

Completions go to an append-only store (default
$DSS_ANNOTATIONS_DIR/<card>_<source>.jsonl); rerunning the same command after
a crash or a kill continues where it stopped. `--build_tfds` then builds
`dss_annotated/<card>_<source>` from the store. A bad key, an unknown model or
an exhausted quota ends the run with one line on stderr.

Exit status: 0 when every call is stored; 1 when calls are left failed (one
`error:` line with their share; rerunning retries them); 2 for a user error
(a bad flag, card, data folder, key or model name; one `error:` line).
"""

import logging
import os
import re
from collections.abc import Sequence

from absl import flags

from dss_jax import cards, errors
from dss_jax.teacher import backends, prompts, runner, sources
from dss_jax.teacher import store as store_lib

_CARD = flags.DEFINE_string(
  "card", None, "Task card name or path.", required=True
)
_SPLITS = flags.DEFINE_list("split", ["train"], "Source splits to annotate.")
_BACKEND = flags.DEFINE_enum(
  "backend", "gemini", backends.BACKENDS, "Teacher backend."
)
_MODEL = flags.DEFINE_string("model", "gemini-2.5-flash", "Teacher model name.")
_BASE_URL = flags.DEFINE_string(
  "base_url", None, "Endpoint override (gemini) or the /v1 root (openai)."
)
_VERTEXAI = flags.DEFINE_bool(
  "vertexai", False, "Gemini on Vertex AI (ADC credentials)."
)
_PROJECT = flags.DEFINE_string(
  "project", None, "Google Cloud project (Vertex AI)."
)
_LOCATION = flags.DEFINE_string("location", "us-central1", "Vertex AI region.")
_BATCH = flags.DEFINE_bool(
  "batch", False, "Gemini Batch API (half price, hours of latency)."
)
_SOURCE = flags.DEFINE_string(
  "source",
  None,
  "Source name (default: from the model, e.g. gemini_2_5_flash).",
)
_STORE = flags.DEFINE_string(
  "store",
  None,
  "Store path (default: $DSS_ANNOTATIONS_DIR/<card>_<source>.jsonl).",
)
_PAPER_DATA_DIR = flags.DEFINE_string(
  "paper_data_dir",
  None,
  "The paper's data layout (default: $DSS_PAPER_DATA_DIR or the downloaded zip).",
)
_LIMIT = flags.DEFINE_integer(
  "limit",
  None,
  "Annotate only the first N examples of each split.",
  lower_bound=1,
)
_NUM_SAMPLES = flags.DEFINE_integer(
  "num_samples",
  1,
  "Samples per example (self-consistency vote when > 1).",
  lower_bound=1,
)
_TEMPERATURE = flags.DEFINE_float(
  "temperature",
  None,
  "Sampling temperature (default 0, or 0.7 with --num_samples > 1).",
  lower_bound=0.0,
)
_MAX_OUTPUT_TOKENS = flags.DEFINE_integer(
  "max_output_tokens", 256, "Completion length cap.", lower_bound=1
)
_CONCURRENCY = flags.DEFINE_integer(
  "concurrency", 16, "Calls in flight.", lower_bound=1
)
_RPM = flags.DEFINE_float("rpm", None, "Client-side requests-per-minute limit.")
_TPM = flags.DEFINE_float("tpm", None, "Client-side tokens-per-minute limit.")
_MAX_RETRIES = flags.DEFINE_integer(
  "max_retries", 8, "Retries per call.", lower_bound=0
)
_TIMEOUT_S = flags.DEFINE_float("timeout_s", 120.0, "Per-attempt timeout.")
_THINKING_BUDGET = flags.DEFINE_integer(
  "thinking_budget",
  0,
  "Gemini 2.5 thinking tokens (-1: model default).",
  lower_bound=-1,
)
_PRICE = flags.DEFINE_list(
  "price", None, "US$ per million input,output tokens for the cost estimate."
)
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
_BUILD_TFDS = flags.DEFINE_bool(
  "build_tfds", False, "Build dss_annotated/<card>_<source> afterwards."
)
_DATA_DIR = flags.DEFINE_string(
  "data_dir", None, "TFDS data dir for --build_tfds."
)
_ALLOW_INCOMPLETE = flags.DEFINE_bool(
  "allow_incomplete",
  False,
  "With --build_tfds: build even when teacher calls failed (their examples "
  "are left out).",
)

# Checked when the flags are parsed, before any file is read or call made.
for _flag in ("rpm", "tpm", "timeout_s"):
  flags.register_validator(
    _flag, lambda v: v is None or v > 0, f"--{_flag} must be > 0"
  )
flags.register_validator(
  "price",
  lambda v: v is None or (len(v) == 2 and all(_is_price(p) for p in v)),
  "--price must be two non-negative numbers: input,output US$ per million",
)
flags.register_validator(
  "source",
  lambda v: v is None or re.fullmatch(r"[a-z][a-z0-9_]*", v) is not None,
  "--source must be lower-case letters, digits and _ (it names the dataset)",
)


def _is_price(text: str) -> bool:
  try:
    return float(text) >= 0
  except ValueError:
    return False


def source_name(model: str) -> str:
  """A TFDS-safe source name: gemini-2.5-flash -> gemini_2_5_flash."""
  return re.sub(r"[^a-z0-9]+", "_", model.lower().split("/")[-1]).strip("_")


def _backend(card: cards.TaskCard, root) -> backends.TeacherBackend:
  if _BACKEND.value == "replay":
    return backends.make_backend("replay", card=card, root=root)
  if _BACKEND.value == "offline":
    return backends.make_backend("offline")
  if _BACKEND.value == "openai":
    return backends.make_backend(
      "openai",
      model=_MODEL.value,
      base_url=_BASE_URL.value or "http://localhost:8000/v1",
      timeout_s=_TIMEOUT_S.value,
    )
  budget = None if _THINKING_BUDGET.value < 0 else _THINKING_BUDGET.value
  return backends.make_backend(
    "gemini",
    model=_MODEL.value,
    base_url=_BASE_URL.value,
    vertexai=_VERTEXAI.value,
    project=_PROJECT.value,
    location=_LOCATION.value,
    timeout_s=_TIMEOUT_S.value,
    thinking_budget=budget,
  )


def main(argv: Sequence[str]) -> None:
  del argv
  # One INFO line per HTTP request would bury the progress bar.
  for name in ("httpx", "httpx2", "google_genai"):
    logging.getLogger(name).setLevel(logging.WARNING)
  try:
    card = cards.load_card(_CARD.value)
    root = None
    if card.source.paper_folder:
      root = (
        sources.find_root(_PAPER_DATA_DIR.value)
        if _PAPER_DATA_DIR.value
        else sources.default_root()
      )
    splits = sources.source_splits(card, root)
    temperature = _TEMPERATURE.value
    if temperature is None:
      temperature = 0.7 if _NUM_SAMPLES.value > 1 else 0.0
    sampling = prompts.SamplingConfig(
      temperature=temperature,
      max_output_tokens=_MAX_OUTPUT_TOKENS.value,
      stop=tuple(card.prompt.stop),
    )
    examples, requests = [], []
    for split in _SPLITS.value:
      if split not in splits and split not in splits.values():
        raise errors.UserError(
          f"--split={split}: card {card.name} has no such split here "
          f"(it has {', '.join(sorted(splits)) or 'none'})"
        )
      file_split = splits.get(split, split)
      rows = sources.read_source(card, file_split, root)[: _LIMIT.value]
      examples += rows
      requests += runner.build_job(
        card, rows, file_split, sampling, _NUM_SAMPLES.value
      )
    backend = _backend(card, root)
    source = _SOURCE.value or (
      "palm" if _BACKEND.value == "replay" else source_name(_MODEL.value)
    )
    store = _STORE.value or store_lib.default_store_path(card.name, source)
    price = tuple(float(p) for p in _PRICE.value) if _PRICE.value else None
    config = runner.RunnerConfig(
      concurrency=_CONCURRENCY.value,
      requests_per_minute=_RPM.value,
      tokens_per_minute=_TPM.value,
      max_retries=_MAX_RETRIES.value,
      timeout_s=_TIMEOUT_S.value + 5.0,
      price_per_million=price,
      progress=_PROGRESS.value,
    )
    if _BATCH.value:
      from dss_jax.teacher.backends import gemini_batch

      stats = gemini_batch.annotate_batch(backend, requests, store, config)
    else:
      stats = runner.annotate(backend, requests, store, config)
  except FileNotFoundError as e:
    # A missing data folder or split file: the user's to provide.
    raise errors.UserError(str(e)) from None
  summary = runner.summarize(card, examples, requests, store, backend.name)
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
    if not (_BUILD_TFDS.value and _ALLOW_INCOMPLETE.value):
      if _BUILD_TFDS.value:
        message += ", or pass --allow_incomplete to build without them"
      raise SystemExit(f"error: {message}")
    print(f"warning: {message}; building without them (--allow_incomplete)")
  if _BUILD_TFDS.value:
    from dss_jax import datasets

    if _PAPER_DATA_DIR.value:
      # The builder reads the source rows from the same place (the flag wins
      # over the environment).
      os.environ["DSS_PAPER_DATA_DIR"] = _PAPER_DATA_DIR.value

    builder = datasets.build_annotated(
      _CARD.value,
      source,
      data_dir=_DATA_DIR.value,
      store=store,
      teacher=backend.name,
    )
    print(
      f"built {datasets.tfds_name(card.name, source)} in {builder.data_dir}"
    )


if __name__ == "__main__":
  errors.run(main)
