"""The teacher backend interface and the errors the runner acts on.

A backend turns one TeacherRequest into one Completion. It never retries: the
runner owns retries, pacing and persistence, so every backend behaves the same
under 429s, 5xx and timeouts. Backends classify failures:

* RetryableError: rate limits (429), server errors (5xx), timeouts, dropped
  connections; `retry_after` carries the server's hint when it gave one;
* FatalError: nothing later will succeed (bad API key, unknown model, an
  exhausted quota); the run stops with the error's one-line message;
* RequestError: this request cannot succeed (e.g. prompt too long) but others
  may; the runner counts it and moves on without storing it;
* BadAnswerError: the server answered 200 with a body of the wrong shape
  (`choices` a dict, `usage` not a number, a field missing): a fault of the
  server, so the runner stops the run (status 1) and a rerun retries the
  calls left.

Every message is masked (`mask_secrets`) when the error is made, since many
quote a server's body: a server that echoes the API key (OpenAI's 401 does,
"Incorrect API key provided: sk-...") never gets it into a log, a store or an
`error:` line.
"""

import abc
import dataclasses
import os
import re
from collections.abc import Iterable

from dss_jax import errors
from dss_jax.teacher import prompts

# Environment variables that hold a teacher's API key; their values are
# masked wherever a server's words are shown.
SECRET_ENV_VARS = (
  "OPENAI_API_KEY",
  "GEMINI_API_KEY",
  "GOOGLE_API_KEY",
)
MASK = "[REDACTED]"
# Shapes of credentials in a server's words: a bearer token, OpenAI-style
# sk-... keys, Google API keys (AIza...), key=... query parameters and
# "api_key": "..." fields. Keys shorter than 8 characters are left alone
# (too likely to be ordinary words).
_SECRET_PATTERNS = (
  re.compile(r"(?i)(bearer\s+)[^\s\"',;]+"),
  re.compile(r"\bsk-[A-Za-z0-9_\-*.]{6,}"),
  re.compile(r"\bAIza[0-9A-Za-z_\-]{10,}"),
  re.compile(r"(?i)(\b(?:api[_-]?)?key=)[^\s&\"',;]+"),
  re.compile(
    r"(?i)([\"']?(?:api[_-]?key|access[_-]?token|authorization)[\"']?"
    r"\s*[:=]\s*[\"']?)[^\s\"',;}]+"
  ),
)


def secret_values(extra: Iterable[str | None] = ()) -> list[str]:
  """The configured API keys: the environment's and `extra`, longest first."""
  values = {os.environ.get(name) for name in SECRET_ENV_VARS}
  values.update(extra)
  return sorted((v for v in values if v and len(v) >= 8), key=len, reverse=True)


def mask_secrets(text: str, extra: Iterable[str | None] = ()) -> str:
  """`text` with every configured key and anything shaped like one masked.

  Args:
    text: a message that may quote a server's body or headers.
    extra: more secret values (a key passed in code, not the environment).

  Returns:
    The text with secrets replaced by `[REDACTED]`.
  """
  for value in secret_values(extra):
    text = text.replace(value, MASK)
  for pattern in _SECRET_PATTERNS:
    text = pattern.sub(
      lambda m: (m.group(1) if m.groups() else "") + MASK, text
    )
  return text


def mask_configured_keys(text: str) -> str:
  """`text` with the configured keys masked, and nothing else changed.

  For data such as a stored completion, where a pattern could hit an
  ordinary word (a rationale may well say "key=3").
  """
  for value in secret_values():
    text = text.replace(value, MASK)
  return text


@dataclasses.dataclass(frozen=True)
class Completion:
  """What a teacher returned for one request.

  Attributes:
    text: the completion ('' when the teacher returned no candidate).
    finish_reason: the backend's stop reason ("STOP", "MAX_TOKENS",
      "BLOCKED:SAFETY", ...).
    input_tokens: prompt tokens billed.
    output_tokens: completion tokens billed.
  """

  text: str
  finish_reason: str = ""
  input_tokens: int = 0
  output_tokens: int = 0


class TeacherError(Exception):
  """Base class of backend errors; the message is masked (`mask_secrets`)."""

  def __init__(self, message: str = "", *args: object):
    super().__init__(mask_secrets(str(message)), *args)


class RetryableError(TeacherError):
  """A transient failure; the request may succeed later."""

  def __init__(self, message: str, retry_after: float | None = None):
    super().__init__(message)
    self.retry_after = retry_after


class BadAnswerError(TeacherError):
  """The server answered, but not in its API's shape: a server fault."""


class TeacherStoppedError(TeacherError, errors.FaultError):
  """The run stopped on a server fault; stored calls are kept (status 1)."""


class RequestError(TeacherError):
  """This request cannot succeed; other requests may."""


class FatalError(TeacherError, errors.UserError):
  """No request can succeed (credentials, model name, quota)."""


class TeacherBackend(abc.ABC):
  """One teacher model behind one small async interface."""

  #: The teacher's name as stored with every record, e.g. "gemini-2.5-flash".
  name: str
  #: Where the teacher answers, for messages ("http://localhost:8000/v1").
  server: str = "the teacher's server"

  @abc.abstractmethod
  async def generate(self, request: prompts.TeacherRequest) -> Completion:
    """Makes one call.

    Args:
      request: the prompt, its sample index and sampling settings.

    Returns:
      The completion.

    Raises:
      RetryableError, RequestError, FatalError: as described in the module.
    """

  async def aclose(self) -> None:  # noqa: B027 - optional hook.
    """Releases connections."""
