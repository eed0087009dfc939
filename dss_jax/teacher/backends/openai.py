"""OpenAI-compatible teacher backend: vLLM, llama.cpp, Ollama, hosted APIs.

Plain async HTTP against `{base_url}/chat/completions` (base_url ends in /v1,
e.g. http://localhost:8000/v1 for vLLM). The key, if the server needs one, is
read from OPENAI_API_KEY and sent as a bearer token; it is never logged.
"""

import math
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
    body = response.json()
  except ValueError:
    return response.text[:200]
  # An odd server's body may be any JSON value, not an object.
  error = body.get("error") if isinstance(body, dict) else None
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
    if not model or not str(model).strip():
      raise base.FatalError(
        "the openai teacher needs the model name the server serves: pass "
        "--teacher_model, e.g. "
        "Qwen/Qwen2.5-7B-Instruct"
      )
    self.name = model
    self._model = model
    self.server = base_url
    key = api_key or os.environ.get(KEY_ENV)
    self._secrets = (key,)
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
    # The server's words may echo the key (OpenAI's 401 does).
    said = base.mask_secrets(_message(response), self._secrets)
    if code in (401, 403):
      raise base.FatalError(
        f"{self.server} rejected the API key ({code}): {said}; check ${KEY_ENV}"
      )
    if code == 404:
      raise base.FatalError(
        f"unknown model {self._model!r} or wrong base URL {self.server} "
        f"({code}): {said}"
      )
    if code in (408, 429) or code >= 500:
      raise base.RetryableError(f"{code} {said}", _retry_after(response))
    if code >= 400:
      raise base.RequestError(f"{code} {said}")
    try:
      data = response.json()
    except ValueError:
      raise base.RetryableError("response is not JSON") from None
    return self._completion(data)

  def _completion(self, data: Any) -> base.Completion:
    """The Completion of a chat-completions body; its shape is checked."""

    def bad(what: str) -> base.BadAnswerError:
      return base.BadAnswerError(
        f"{self.server} answered in a shape that is not OpenAI's "
        f"chat-completions: {what}"
      )

    if not isinstance(data, dict):
      raise bad(f"the body is a JSON {type(data).__name__}, not an object")
    if "choices" not in data:
      raise bad("no 'choices' field")
    choices = data["choices"]
    if not isinstance(choices, list):
      raise bad(f"'choices' is a {type(choices).__name__}, not a list")
    if not choices:
      raise base.RequestError("no choices in the answer")
    choice = choices[0]
    if not isinstance(choice, dict):
      raise bad(f"'choices[0]' is a {type(choice).__name__}, not an object")
    message = choice.get("message")
    if not isinstance(message, dict):
      raise bad("'choices[0].message' is missing or not an object")
    text = message.get("content")
    if text is not None and not isinstance(text, str):
      raise bad(f"'message.content' is a {type(text).__name__}, not text")
    if not text or not text.strip():
      raise base.RequestError(
        f"empty text in the answer (finish {choice.get('finish_reason')})"
      )
    usage = data.get("usage") or {}
    if not isinstance(usage, dict):
      raise bad(f"'usage' is a {type(usage).__name__}, not an object")
    tokens = []
    for name in ("prompt_tokens", "completion_tokens"):
      value = usage.get(name) or 0
      if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad(f"'usage.{name}' is {value!r}, not a number")
      if not math.isfinite(value) or value < 0:
        raise bad(f"'usage.{name}' is {value!r}, not a token count")
      tokens.append(int(value))
    return base.Completion(
      base.mask_configured_keys(text),
      str(choice.get("finish_reason") or ""),
      *tokens,
    )

  async def aclose(self) -> None:
    await self._client.aclose()
