"""Teacher requests: the few-shot prompt of an example and its hash.

The prompt text comes from the task card (`TaskCard.build_prompt`). The hash
covers the prompt and the sampling settings, because the same prompt sampled at
another temperature is a different call; it is one part of the store key.
"""

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from dss_jax import cards as cards_lib


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """Generation settings sent with every request.

  Attributes:
    temperature: 0 for greedy decoding; > 0 for self-consistency samples.
    max_output_tokens: a cap on completion length (rationales are short; the
      cap also bounds cost when a teacher runs on).
    top_p: nucleus sampling mass (None = backend default).
    stop: stop sequences (the card's prompt.stop).
  """

  temperature: float = 0.0
  max_output_tokens: int = 256
  top_p: float | None = None
  stop: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class TeacherRequest:
  """One call to make: a prompt for one sample of one example."""

  example_id: str
  split: str
  prompt: str
  prompt_hash: str
  sample: int
  sampling: SamplingConfig


def prompt_hash(prompt: str, sampling: SamplingConfig) -> str:
  """A short stable hash of the prompt and sampling settings.

  Args:
    prompt: the full prompt text.
    sampling: the generation settings.

  Returns:
    16 hex digits of SHA-256 (collisions are irrelevant at dataset scale).
  """
  payload = json.dumps(
    {"prompt": prompt, "sampling": dataclasses.asdict(sampling)},
    sort_keys=True,
    ensure_ascii=False,
  )
  return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def build_requests(
  card: cards_lib.TaskCard,
  example_id: str,
  split: str,
  fields: Mapping[str, Any],
  sampling: SamplingConfig,
  num_samples: int = 1,
) -> list[TeacherRequest]:
  """The k requests for one example.

  Args:
    card: the task card.
    example_id: the example's id.
    split: its source split.
    fields: its input fields.
    sampling: generation settings.
    num_samples: k (self-consistency); 1 for a single greedy answer.

  Returns:
    One request per sample index.
  """
  prompt = card.build_prompt(fields)
  digest = prompt_hash(prompt, sampling)
  return [
    TeacherRequest(example_id, split, prompt, digest, i, sampling)
    for i in range(num_samples)
  ]
