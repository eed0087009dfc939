"""Gemini teacher backend (google-genai async client).

The key comes from GEMINI_API_KEY or GOOGLE_API_KEY (never logged or stored);
`vertexai=True` uses Vertex AI with application-default credentials instead.
`base_url` points the client at another endpoint (tests use a local server
speaking `POST /v1beta/models/{model}:generateContent`). The SDK's own retries
are switched off: the runner retries, paces and persists every call.
"""

import asyncio
import os
import re
from typing import Any

import pydantic
from google import genai
from google.auth import exceptions as auth_exceptions
from google.genai import errors, types

from dss_jax import errors as errors_lib
from dss_jax.teacher import prompts
from dss_jax.teacher.backends import base

DEFAULT_MODEL = "gemini-2.5-flash"
KEY_ENV_VARS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")


def api_key_from_env() -> str | None:
  """The first of GEMINI_API_KEY, GOOGLE_API_KEY that is set."""
  for name in KEY_ENV_VARS:
    if os.environ.get(name):
      return os.environ[name]
  return None


def make_client(
  *,
  base_url: str | None = None,
  vertexai: bool = False,
  project: str | None = None,
  location: str | None = None,
  timeout_s: float = 120.0,
) -> genai.Client:
  """A google-genai client with SDK retries off.

  Args:
    base_url: another endpoint (a local server, a proxy).
    vertexai: use Vertex AI (project/location, application credentials).
    project: the Google Cloud project (Vertex AI).
    location: the Vertex AI region.
    timeout_s: the HTTP timeout.

  Returns:
    A `google.genai.Client`.

  Raises:
    FatalError: when no API key is set (Gemini API).
  """
  http_options = types.HttpOptions(
    base_url=base_url,
    # The Gemini API's v1beta surface carries every generation option used
    # here (thinking budgets included); Vertex AI picks its own version.
    api_version=None if vertexai else "v1beta",
    timeout=int(timeout_s * 1000),  # milliseconds
    retry_options=types.HttpRetryOptions(attempts=1),
  )
  if vertexai:
    try:
      return genai.Client(
        vertexai=True,
        project=project,
        location=location,
        http_options=http_options,
      )
    except (auth_exceptions.GoogleAuthError, ValueError) as e:
      raise base.FatalError(
        f"Vertex AI: {errors_lib.one_line(e)}; {VERTEX_SETUP}"
      ) from None
  key = api_key_from_env()
  if not key:
    raise base.FatalError(
      "no Gemini API key: set GEMINI_API_KEY (or GOOGLE_API_KEY), "
      "or use --vertexai"
    )
  return genai.Client(api_key=key, http_options=http_options)


# What Vertex AI needs, said when it is missing.
VERTEX_SETUP = (
  "Vertex AI needs Google Cloud credentials (run `gcloud auth "
  "application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS to a "
  "service-account key file) and a project (--project or "
  "GOOGLE_CLOUD_PROJECT); without --vertexai, set GEMINI_API_KEY instead"
)


def _duration_s(text: Any) -> float | None:
  match = re.fullmatch(r"\s*([0-9.]+)s\s*", str(text))
  return float(match.group(1)) if match else None


def _error_details(error: Any) -> list[dict[str, Any]]:
  body = error.details if isinstance(error.details, dict) else {}
  details = body.get("error", body).get("details") or []
  return [d for d in details if isinstance(d, dict)]


def retry_delay_of(error: errors.APIError) -> float | None:
  """The server's retry hint: RetryInfo.retryDelay, else Retry-After."""
  for detail in _error_details(error):
    if detail.get("@type", "").endswith("google.rpc.RetryInfo"):
      delay = _duration_s(detail.get("retryDelay", ""))
      if delay is not None:
        return delay
  headers = getattr(getattr(error, "response", None), "headers", None) or {}
  try:
    return float(headers.get("retry-after"))
  except (TypeError, ValueError):
    return None


def classify_api_error(error: errors.APIError, model: str) -> base.TeacherError:
  """Maps a google-genai APIError to the runner's error kinds.

  Args:
    error: a `google.genai.errors.APIError`.
    model: the model name, for the message.

  Returns:
    The error to raise.
  """
  code, message = error.code, (error.message or str(error)).strip()
  details = _error_details(error)
  reasons = {d.get("reason", "") for d in details}
  if code in (401, 403) or "API_KEY_INVALID" in reasons:
    return base.FatalError(f"Gemini rejected the API key ({code}): {message}")
  if code == 400 and "api key" in message.lower():
    return base.FatalError(f"Gemini rejected the API key ({code}): {message}")
  if code == 404:
    return base.FatalError(
      f"unknown Gemini model {model!r} ({code}): {message}"
    )
  if code == 429:
    quota_ids = " ".join(
      str(v.get("quotaId", ""))
      for d in details
      for v in d.get("violations", []) or []
    )
    if "PerDay" in quota_ids:
      return base.FatalError(f"Gemini daily quota exhausted (429): {message}")
    return base.RetryableError(f"429 {message}", retry_delay_of(error))
  if code == 408 or code >= 500:
    return base.RetryableError(f"{code} {message}", retry_delay_of(error))
  return base.RequestError(f"{code} {message}")


def _first_problem(error: Any) -> str:
  """The first field pydantic found wrong, e.g. "candidates: list expected"."""
  try:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"{where}: {first.get('msg', '')}"
  except (AttributeError, IndexError, TypeError):
    return errors_lib.one_line(error)


def is_transport_error(error: BaseException) -> bool:
  """Timeouts and dropped connections from any HTTP stack the SDK uses."""
  if isinstance(error, (asyncio.TimeoutError, TimeoutError, ConnectionError)):
    return True
  module = type(error).__module__.split(".")[0]
  return module in ("httpx", "httpx2", "httpcore", "httpcore2", "aiohttp")


def completion_from_response(
  response: types.GenerateContentResponse,
) -> base.Completion:
  """Text, stop reason and token counts of a GenerateContentResponse.

  Raises:
    RequestError: the answer holds no usable text (no candidates, a blocked
      prompt, an empty or missing text): the call counts as failed, is not
      stored, and is retried on the next run.
    BadAnswerError: the answer is not in the API's shape.
  """
  usage = response.usage_metadata
  input_tokens = (usage.prompt_token_count or 0) if usage else 0
  output_tokens = (
    (usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)
    if usage
    else 0
  )
  if not response.candidates:
    feedback = response.prompt_feedback
    reason = feedback.block_reason if feedback else None
    reason = getattr(reason, "value", reason) or "NO_CANDIDATES"
    raise base.RequestError(f"no candidates in the answer (BLOCKED:{reason})")
  candidate = response.candidates[0]
  if candidate.content is None and candidate.finish_reason is None:
    # The SDK reads `candidates` of any shape (a dict, a list of strings)
    # as empty candidates; a real one always says why it finished.
    raise base.BadAnswerError(
      "the server's 'candidates' hold no content and no finishReason: not "
      "Gemini's GenerateContentResponse"
    )
  parts = candidate.content.parts if candidate.content else None
  # Thought parts are the model's hidden reasoning, not the rationale asked for.
  text = "".join(p.text for p in parts or [] if p.text and not p.thought)
  finish = getattr(candidate.finish_reason, "value", candidate.finish_reason)
  if not text.strip():
    raise base.RequestError(f"empty text in the answer (finish {finish})")
  return base.Completion(text, str(finish or ""), input_tokens, output_tokens)


def _thinks(model: str) -> bool:
  """Whether a model takes a thinking budget (Gemini 2.5 and later)."""
  match = re.search(r"gemini-(\d+(?:\.\d+)?)", model)
  return bool(match) and float(match.group(1)) >= 2.5


class GeminiBackend(base.TeacherBackend):
  """Gemini through google-genai's async client (`client.aio`)."""

  def __init__(
    self,
    model: str = DEFAULT_MODEL,
    *,
    base_url: str | None = None,
    vertexai: bool = False,
    project: str | None = None,
    location: str | None = None,
    timeout_s: float = 120.0,
    thinking_budget: int | None = 0,
    client: genai.Client | None = None,
  ):
    """Creates the backend.

    Args:
      model: the model name, e.g. "gemini-2.5-flash".
      base_url: another endpoint (tests: a local server).
      vertexai: use Vertex AI instead of the Gemini API.
      project: Google Cloud project (Vertex AI).
      location: Vertex AI region.
      timeout_s: per-request timeout; a hung call becomes a retryable error.
      thinking_budget: thinking tokens for 2.5 models; 0 (default) asks
        Flash models for the rationale in the answer itself and avoids paying
        for hidden reasoning (other models keep their default, as they reject
        0); None leaves the model's default.
      client: an existing google.genai.Client (overrides the options above).
    """
    self.name = model
    self._model = model
    self.server = base_url or ("Vertex AI" if vertexai else "the Gemini API")
    self._timeout_s = timeout_s
    self._thinking_budget = thinking_budget
    self._client = client or make_client(
      base_url=base_url,
      vertexai=vertexai,
      project=project,
      location=location,
      timeout_s=timeout_s,
    )

  def generation_config(
    self, sampling: prompts.SamplingConfig
  ) -> types.GenerateContentConfig:
    """The GenerateContentConfig for a request's sampling settings."""
    thinking = None
    if self._thinking_budget is not None and _thinks(self._model):
      # Only Flash models accept a zero budget (Pro models always think).
      if self._thinking_budget or "flash" in self._model:
        thinking = types.ThinkingConfig(thinking_budget=self._thinking_budget)
    return types.GenerateContentConfig(
      temperature=sampling.temperature,
      max_output_tokens=sampling.max_output_tokens,
      top_p=sampling.top_p,
      stop_sequences=list(sampling.stop) or None,
      thinking_config=thinking,
    )

  async def generate(self, request: prompts.TeacherRequest) -> base.Completion:
    try:
      response = await asyncio.wait_for(
        self._client.aio.models.generate_content(
          model=self._model,
          contents=request.prompt,
          config=self.generation_config(request.sampling),
        ),
        # The HTTP timeout should fire first; this bounds connection setup
        # and retries inside the transport as well.
        timeout=self._timeout_s + 5.0,
      )
    except errors.APIError as e:
      raise classify_api_error(e, self._model) from None
    except auth_exceptions.GoogleAuthError as e:
      raise base.FatalError(
        f"{self.server}: {errors_lib.one_line(e)}; {VERTEX_SETUP}"
      ) from None
    except Exception as e:
      if is_transport_error(e):
        raise base.RetryableError(f"{type(e).__name__}: {e}") from None
      if isinstance(e, pydantic.ValidationError):
        # A 200 in JSON, but not a GenerateContentResponse: the server's
        # fault (`choices`-style lists where objects belong, counts that are
        # not numbers).
        raise base.BadAnswerError(
          f"{self.server} answered in a shape that is not Gemini's "
          f"GenerateContentResponse: {_first_problem(e)}"
        ) from None
      if isinstance(e, ValueError):
        # A 200 whose body is not JSON, or not a response's shape.
        raise base.RetryableError(
          f"unreadable answer ({type(e).__name__}: {str(e)[:100]})"
        ) from None
      raise
    try:
      return completion_from_response(response)
    except base.BadAnswerError as e:
      raise base.BadAnswerError(f"{self.server}: {e}") from None

  async def aclose(self) -> None:
    close = getattr(self._client.aio, "aclose", None)
    if close is not None:
      await close()
