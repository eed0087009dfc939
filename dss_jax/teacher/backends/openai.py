"""OpenAI-compatible teacher backend: vLLM, llama.cpp, Ollama, hosted APIs.

Plain async HTTP against `{base_url}/chat/completions` (base_url ends in /v1,
e.g. http://localhost:8000/v1 for vLLM). The key, if the server needs one, is
read from OPENAI_API_KEY and sent as a bearer token; it is never logged.
"""

import os
from typing import Any

from dss_jax.teacher import prompts
from dss_jax.teacher.backends import base

try:  # google-genai ships the httpx successor; plain httpx works the same.
  import httpx2 as httpx
except ImportError:  # pragma: no cover - depends on the install
  import httpx

KEY_ENV = "OPENAI_API_KEY"
# The OpenAI API accepts at most four stop sequences.
_MAX_STOP = 4


def _retry_after(response: Any) -> float | None:
  try:
    return float(response.headers.get("retry-after"))
  except (TypeError, ValueError):
    return None


def _message(response: Any) -> str:
  try:
    error = response.json().get("error")
  except ValueError:
    return response.text[:200]
  if isinstance(error, dict):
    return str(error.get("message", error))
  return str(error or response.text[:200])


class OpenAIBackend(base.TeacherBackend):
  """Chat completions on any OpenAI-compatible server."""

  def __init__(
    self,
    model: str,
    *,
    base_url: str = "http://localhost:8000/v1",
    timeout_s: float = 120.0,
    api_key: str | None = None,
  ):
    """Creates the backend.

    Args:
      model: the served model name.
      base_url: the server's /v1 root.
      timeout_s: per-request timeout; a hung call becomes a retryable error.
      api_key: overrides $OPENAI_API_KEY.
    """
    self.name = model
    self._model = model
    key = api_key or os.environ.get(KEY_ENV)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    self._client = httpx.AsyncClient(
      base_url=base_url.rstrip("/") + "/",
      headers=headers,
      timeout=timeout_s,
      # Connections are reused across requests; the runner bounds concurrency.
      limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
    )

  def payload(self, request: prompts.TeacherRequest) -> dict[str, Any]:
    """The JSON body of one chat-completions request."""
    sampling = request.sampling
    body: dict[str, Any] = {
      "model": self._model,
      "messages": [{"role": "user", "content": request.prompt}],
      "temperature": sampling.temperature,
      "max_tokens": sampling.max_output_tokens,
    }
    if sampling.top_p is not None:
      body["top_p"] = sampling.top_p
    if sampling.stop:
      body["stop"] = list(sampling.stop)[:_MAX_STOP]
    return body

  async def generate(self, request: prompts.TeacherRequest) -> base.Completion:
    try:
      response = await self._client.post(
        "chat/completions", json=self.payload(request)
      )
    except (httpx.TimeoutException, httpx.TransportError) as e:
      raise base.RetryableError(f"{type(e).__name__}: {e}") from None
    except TimeoutError as e:
      raise base.RetryableError("timeout") from e
    code = response.status_code
    if code in (401, 403):
      raise base.FatalError(
        f"the server rejected the API key ({code}): {_message(response)}"
      )
    if code == 404:
      raise base.FatalError(
        f"unknown model {self._model!r} or wrong base URL ({code}): "
        f"{_message(response)}"
      )
    if code in (408, 429) or code >= 500:
      raise base.RetryableError(
        f"{code} {_message(response)}", _retry_after(response)
      )
    if code >= 400:
      raise base.RequestError(f"{code} {_message(response)}")
    try:
      data = response.json()
      choices = data.get("choices") or []
      usage = data.get("usage") or {}
    except (ValueError, AttributeError):
      raise base.RetryableError("response is not JSON") from None
    if not choices:
      raise base.RequestError("no choices in the answer")
    choice = choices[0]
    text = (choice.get("message") or {}).get("content") or ""
    if not isinstance(text, str) or not text.strip():
      raise base.RequestError(
        f"empty text in the answer (finish {choice.get('finish_reason')})"
      )
    return base.Completion(
      text,
      str(choice.get("finish_reason") or ""),
      int(usage.get("prompt_tokens") or 0),
      int(usage.get("completion_tokens") or 0),
    )

  async def aclose(self) -> None:
    await self._client.aclose()
