"""The teacher backend interface and the errors the runner acts on.

A backend turns one TeacherRequest into one Completion. It never retries: the
runner owns retries, pacing and persistence, so every backend behaves the same
under 429s, 5xx and timeouts. Backends classify failures:

* RetryableError: rate limits (429), server errors (5xx), timeouts, dropped
  connections; `retry_after` carries the server's hint when it gave one;
* FatalError: nothing later will succeed (bad API key, unknown model, an
  exhausted quota); the run stops with the error's one-line message;
* RequestError: this request cannot succeed (e.g. prompt too long) but others
  may; the runner counts it and moves on without storing it.
"""

import abc
import dataclasses

from dss_jax import errors
from dss_jax.teacher import prompts


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
  """Base class of backend errors."""


class RetryableError(TeacherError):
  """A transient failure; the request may succeed later."""

  def __init__(self, message: str, retry_after: float | None = None):
    super().__init__(message)
    self.retry_after = retry_after


class RequestError(TeacherError):
  """This request cannot succeed; other requests may."""


class FatalError(TeacherError, errors.UserError):
  """No request can succeed (credentials, model name, quota)."""


class TeacherBackend(abc.ABC):
  """One teacher model behind one small async interface."""

  #: The teacher's name as stored with every record, e.g. "gemini-2.5-flash".
  name: str

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
