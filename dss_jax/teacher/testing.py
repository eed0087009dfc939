"""Test double: a local HTTP server that fakes the Gemini and OpenAI APIs.

Test support that ships with the package (as `seqio.test_utils` does): the
teacher tests and benchmarks run the real backends against it, with no network
and no API key. It is not a teacher; nothing in the library uses it.

    POST /v1beta/models/{model}:generateContent   (Gemini REST)
    POST /v1/chat/completions                     (OpenAI-compatible)

Behaviour is scripted: a queue of actions ("ok", "429", "500", "garbage",
"empty", "badjson", "hang") is consumed one per request, then every request answers
"ok". Odd servers (200s that are not the API's shape) have actions of their
own, "choices_dict", "choices_strings", "usage_text" and "no_choices"
(`ODD_ACTIONS`; on the Gemini path the same names answer with
`candidates` in that shape). `echo_key=True` makes a rejected key come back
in the error body, as OpenAI's 401 does ("Incorrect API key provided: ..."). On top of that: a fixed latency, a server-side rate limit (requests per
rolling minute, answered with 429 and a retry hint), an API key check and a
list of known models. Answers come from a `responder(prompt) -> text` so
they are deterministic. The server counts every request it receives.

    with FakeTeacherServer(latency_s=1.0, requests_per_minute=600) as server:
      backend = GeminiBackend(base_url=server.url)

Run standalone (e.g. to try the annotation CLI by hand):

    python -m dss_jax.teacher.testing --port=8765
"""

import collections
import hashlib
import http.server
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from absl import app, flags

from dss_jax import cli

_GEMINI_PATH = re.compile(r"^/v1beta/models/([^/:]+):generateContent$")
_BATCH_CREATE = re.compile(r"^/v1beta/models/([^/:]+):batchGenerateContent$")
_BATCH_GET = re.compile(r"^/v1beta/(batches/[^/:?]+)$")

# 200 answers whose body is not the API's shape, by action name.
ODD_ACTIONS = ("choices_dict", "choices_strings", "usage_text", "no_choices")


def default_responder(prompt: str) -> str:
  """A deterministic made-up completion in the CQA answer format."""
  digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest()
  letter = "abcde"[int(digest[:2], 16) % 5]
  return (
    f"The question needs choice {letter} for reason {digest[:8]}. "
    f"So the answer is ({letter}) option {letter}.\n\nQ: made-up next question"
  )


class FakeTeacherServer:
  """A threaded HTTP server on 127.0.0.1 with scripted failures."""

  def __init__(
    self,
    *,
    responder: Callable[[str], str] = default_responder,
    script: Iterable[str] = (),
    latency_s: float = 0.0,
    requests_per_minute: int | None = None,
    retry_delay_s: float = 1.0,
    api_key: str | None = None,
    models: Iterable[str] = ("gemini-2.5-flash", "test-model"),
    hang_s: float = 30.0,
    port: int = 0,
    echo_key: bool = False,
  ):
    """Creates (not starts) the server.

    Args:
      responder: prompt -> completion text for "ok" answers.
      script: actions for the first requests, in order.
      latency_s: delay before every answer.
      requests_per_minute: answer 429 beyond this many requests in any
        rolling 60 s window (None = no limit).
      retry_delay_s: the retry hint sent with 429s.
      api_key: when set, requests with another key get 400/401.
      models: known model names; others get 404.
      echo_key: a rejected request's key comes back in the error message.
      hang_s: how long a "hang" action stalls (until stop() at the latest).
      port: the port (0 = any free port).
    """
    self.responder = responder
    self.script = collections.deque(script)
    self.latency_s = latency_s
    self.requests_per_minute = requests_per_minute
    self.retry_delay_s = retry_delay_s
    self.api_key = api_key
    self.models = set(models)
    self.hang_s = hang_s
    self.echo_key = echo_key
    self.lock = threading.Lock()
    self.stop_event = threading.Event()
    self.counts: collections.Counter[str] = collections.Counter()
    self.prompts: collections.Counter[str] = collections.Counter()
    self.paths: collections.Counter[str] = collections.Counter()
    self.batches: dict[str, dict[str, Any]] = {}
    self.answered_times: list[float] = []
    self._window: collections.deque[float] = collections.deque()
    self._httpd = http.server.ThreadingHTTPServer(
      ("127.0.0.1", port), self._handler_class()
    )
    self._httpd.daemon_threads = True
    # The default backlog (5) drops connections under bursts of clients.
    self._httpd.request_queue_size = 256
    self._thread: threading.Thread | None = None

  @property
  def url(self) -> str:
    """The base URL, e.g. http://127.0.0.1:43127."""
    host, port = self._httpd.server_address[:2]
    return f"http://{host}:{port}"

  def start(self) -> "FakeTeacherServer":
    """Serves in a background thread."""
    self._thread = threading.Thread(
      target=self._httpd.serve_forever, daemon=True
    )
    self._thread.start()
    return self

  def stop(self) -> None:
    """Stops serving and releases hung requests."""
    self.stop_event.set()
    self._httpd.shutdown()
    self._httpd.server_close()

  def __enter__(self) -> "FakeTeacherServer":
    return self.start()

  def __exit__(self, *exc: object) -> None:
    self.stop()

  # ------------------------------------------------------------- decisions
  def _next_action(self) -> str:
    with self.lock:
      self.counts["requests"] += 1
      action = self.script.popleft() if self.script else "ok"
      if action == "ok" and self.requests_per_minute:
        now = time.monotonic()
        while self._window and self._window[0] <= now - 60.0:
          self._window.popleft()
        if len(self._window) >= self.requests_per_minute:
          action = "429"
        else:
          self._window.append(now)
      self.counts[action] += 1
      return action

  def _handler_class(self) -> type:
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"

      def log_message(self, *args: Any) -> None:
        del args  # quiet

      def _send(
        self,
        code: int,
        body: Any,
        headers: dict[str, str] | None = None,
      ) -> None:
        data = (
          body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
        )
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
          self.send_header(name, value)
        self.end_headers()
        try:
          self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
          pass

      def do_POST(self) -> None:  # noqa: N802 - http.server's naming.
        length = int(self.headers.get("Content-Length") or 0)
        try:
          body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
          body = {}
        match = _GEMINI_PATH.match(self.path.split("?")[0])
        with server.lock:
          server.paths[self.path.split("?")[0]] += 1
        batch = _BATCH_CREATE.match(self.path.split("?")[0])
        if match:
          server._gemini(self, match.group(1), body)
        elif batch:
          server._batch_create(self, batch.group(1), body)
        elif self.path.rstrip("/").endswith("/chat/completions"):
          server._openai(self, body)
        else:
          self._send(
            404,
            {"error": {"code": 404, "message": f"no such path {self.path}"}},
          )

      def do_GET(self) -> None:  # noqa: N802 - http.server's naming.
        match = _BATCH_GET.match(self.path.split("?")[0])
        if match:
          server._batch_get(self, match.group(1))
        else:
          self._send(404, {"error": {"code": 404, "message": "no such path"}})

    return Handler

  def _delay(self, action: str) -> bool:
    """Sleeps the latency (or the hang); False when the server is stopping."""
    wait = self.hang_s if action == "hang" else self.latency_s
    return not self.stop_event.wait(wait) if wait > 0 else True

  # ---------------------------------------------------------------- Gemini
  def _gemini(self, handler: Any, model: str, body: dict[str, Any]) -> None:
    key = handler.headers.get("x-goog-api-key") or ""
    if self.api_key is not None and key != self.api_key:
      self.counts["bad_key"] += 1
      return handler._send(
        400,
        _gemini_error(
          400,
          "API key not valid. Please pass a valid API key."
          + (f" Key given: {key}" if self.echo_key else ""),
          "INVALID_ARGUMENT",
          [
            {
              "@type": "type.googleapis.com/google.rpc.ErrorInfo",
              "reason": "API_KEY_INVALID",
              "domain": "googleapis.com",
            }
          ],
        ),
      )
    if model not in self.models:
      self.counts["unknown_model"] += 1
      return handler._send(
        404,
        _gemini_error(
          404,
          f"models/{model} is not found for API version v1beta.",
          "NOT_FOUND",
        ),
      )
    action = self._next_action()
    if not self._delay(action):
      return None
    prompt = "".join(
      part.get("text", "")
      for content in body.get("contents", [])
      for part in content.get("parts", [])
    )
    if action == "429":
      return handler._send(
        429,
        _gemini_error(
          429,
          "Resource has been exhausted (e.g. check quota).",
          "RESOURCE_EXHAUSTED",
          [
            {
              "@type": "type.googleapis.com/google.rpc.RetryInfo",
              "retryDelay": f"{self.retry_delay_s}s",
            }
          ],
        ),
      )
    if action == "quota":
      return handler._send(
        429,
        _gemini_error(
          429,
          "You exceeded your current quota.",
          "RESOURCE_EXHAUSTED",
          [
            {
              "@type": "type.googleapis.com/google.rpc.QuotaFailure",
              "violations": [
                {"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}
              ],
            }
          ],
        ),
      )
    if action == "500":
      return handler._send(
        500, _gemini_error(500, "An internal error has occurred.", "INTERNAL")
      )
    usage = {"promptTokenCount": len(prompt) // 4}
    if action in ODD_ACTIONS:
      return handler._send(200, _odd_gemini(action, prompt))
    if action == "badjson":
      return handler._send(200, b'{"candidates": [{"content": ')
    if action == "empty":
      return handler._send(
        200,
        {
          "promptFeedback": {"blockReason": "SAFETY"},
          "usageMetadata": usage,
        },
      )
    text = (
      "<<garbage>> 0x7f ??" if action == "garbage" else self.responder(prompt)
    )
    with self.lock:
      self.prompts[prompt] += 1
      self.answered_times.append(time.monotonic())
    usage.update(candidatesTokenCount=len(text) // 4)
    usage["totalTokenCount"] = (
      usage["promptTokenCount"] + usage["candidatesTokenCount"]
    )
    handler._send(
      200,
      {
        "candidates": [
          {
            "content": {"parts": [{"text": text}], "role": "model"},
            "finishReason": "STOP",
            "index": 0,
          }
        ],
        "usageMetadata": usage,
        "modelVersion": model,
      },
    )

  # ------------------------------------------------------- Gemini Batch API
  def _batch_create(
    self, handler: Any, model: str, body: dict[str, Any]
  ) -> None:
    requests = (
      body.get("batch", {})
      .get("inputConfig", {})
      .get("requests", {})
      .get("requests", [])
    )
    with self.lock:
      self.counts["batch_jobs"] += 1
      self.counts["batch_requests"] += len(requests)
      name = f"batches/job{len(self.batches)}"
      # Each job reports RUNNING once before it succeeds, as real jobs do.
      self.batches[name] = {"model": model, "requests": requests, "polls": 0}
    handler._send(
      200,
      {
        "name": name,
        "metadata": {
          "model": f"models/{model}",
          "state": "BATCH_STATE_PENDING",
        },
      },
    )

  def _batch_get(self, handler: Any, name: str) -> None:
    with self.lock:
      job = self.batches.get(name)
      if job is not None:
        job["polls"] += 1
    if job is None:
      return handler._send(
        404, _gemini_error(404, f"{name} not found", "NOT_FOUND")
      )
    metadata: dict[str, Any] = {"model": f"models/{job['model']}"}
    if job["polls"] < 2:
      metadata["state"] = "BATCH_STATE_RUNNING"
      return handler._send(200, {"name": name, "metadata": metadata})
    responses = []
    for item in job["requests"]:
      prompt = "".join(
        part.get("text", "")
        for content in item.get("request", {}).get("contents", [])
        for part in content.get("parts", [])
      )
      text = self.responder(prompt)
      responses.append(
        {
          "response": {
            "candidates": [
              {
                "content": {"parts": [{"text": text}], "role": "model"},
                "finishReason": "STOP",
              }
            ],
            "usageMetadata": {
              "promptTokenCount": len(prompt) // 4,
              "candidatesTokenCount": len(text) // 4,
            },
          },
          "metadata": item.get("metadata", {}),
        }
      )
    metadata.update(
      state="BATCH_STATE_SUCCEEDED",
      output={"inlinedResponses": {"inlinedResponses": responses}},
    )
    handler._send(200, {"name": name, "metadata": metadata, "done": True})

  # ---------------------------------------------------------------- OpenAI
  def _openai(self, handler: Any, body: dict[str, Any]) -> None:
    auth = handler.headers.get("Authorization") or ""
    if self.api_key is not None and auth != f"Bearer {self.api_key}":
      self.counts["bad_key"] += 1
      return handler._send(
        401,
        {
          "error": {
            "message": "Incorrect API key provided"
            + (f": {auth}" if self.echo_key else "."),
            "type": "invalid_request_error",
            "code": "invalid_api_key",
          }
        },
      )
    model = body.get("model", "")
    if model not in self.models:
      self.counts["unknown_model"] += 1
      return handler._send(
        404,
        {
          "error": {
            "message": f"The model `{model}` does not exist.",
            "type": "NotFoundError",
            "code": 404,
          }
        },
      )
    action = self._next_action()
    if not self._delay(action):
      return None
    prompt = "".join(
      str(m.get("content", "")) for m in body.get("messages", [])
    )
    if action in ("429", "quota"):
      return handler._send(
        429,
        {
          "error": {
            "message": "Rate limit reached.",
            "type": "rate_limit_exceeded",
          }
        },
        {"Retry-After": f"{self.retry_delay_s:g}"},
      )
    if action == "500":
      return handler._send(500, {"error": {"message": "internal error"}})
    if action in ODD_ACTIONS:
      return handler._send(200, _odd_openai(action))
    if action == "badjson":
      return handler._send(200, b'{"choices": [{"message": ')
    if action == "empty":
      return handler._send(
        200,
        {"id": "x", "object": "chat.completion", "choices": [], "usage": {}},
      )
    text = (
      "<<garbage>> 0x7f ??" if action == "garbage" else self.responder(prompt)
    )
    with self.lock:
      self.prompts[prompt] += 1
      self.answered_times.append(time.monotonic())
    handler._send(
      200,
      {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "model": model,
        "choices": [
          {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
          }
        ],
        "usage": {
          "prompt_tokens": len(prompt) // 4,
          "completion_tokens": len(text) // 4,
          "total_tokens": (len(prompt) + len(text)) // 4,
        },
      },
    )


def _odd_openai(action: str) -> dict[str, Any]:
  """A chat-completions 200 with one field in the wrong shape."""
  message = {"role": "assistant", "content": "So the answer is (a)."}
  choice = {"index": 0, "message": message, "finish_reason": "stop"}
  body: dict[str, Any] = {
    "id": "x",
    "object": "chat.completion",
    "choices": [choice],
    "usage": {"prompt_tokens": 5, "completion_tokens": 5},
  }
  if action == "choices_dict":
    body["choices"] = {"0": choice}
  elif action == "choices_strings":
    body["choices"] = ["So the answer is (a)."]
  elif action == "usage_text":
    body["usage"] = {"prompt_tokens": "many", "completion_tokens": 5}
  else:
    del body["choices"]
  return body


def _odd_gemini(action: str, prompt: str) -> dict[str, Any]:
  """A generateContent 200 with one field in the wrong shape."""
  candidate = {
    "content": {"parts": [{"text": "So the answer is (a)."}], "role": "model"},
    "finishReason": "STOP",
  }
  body: dict[str, Any] = {
    "candidates": [candidate],
    "usageMetadata": {"promptTokenCount": len(prompt) // 4},
  }
  if action == "choices_dict":
    body["candidates"] = {"0": candidate}
  elif action == "choices_strings":
    body["candidates"] = ["So the answer is (a)."]
  elif action == "usage_text":
    body["usageMetadata"] = {"promptTokenCount": "many"}
  else:
    body = {"answer": "So the answer is (a)."}
  return body


def _gemini_error(
  code: int, message: str, status: str, details: list[Any] | None = None
) -> dict[str, Any]:
  error = {"code": code, "message": message, "status": status}
  if details:
    error["details"] = details
  return {"error": error}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the command line of the standalone server."""
  flags.DEFINE_integer(
    "port", 8765, "Port on 127.0.0.1.", flag_values=flag_values
  )
  flags.DEFINE_float(
    "latency_s",
    0.0,
    "Delay before every answer, in seconds.",
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "requests_per_minute",
    None,
    "Answer 429 beyond this rate (no limit: unset).",
    flag_values=flag_values,
  )


def main(argv: Sequence[str]) -> None:
  """Serves until interrupted."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  server = FakeTeacherServer(
    port=flags.FLAGS.port,
    latency_s=flags.FLAGS.latency_s,
    requests_per_minute=flags.FLAGS.requests_per_minute,
  )
  print(f"serving on {server.url}", flush=True)
  try:
    server._httpd.serve_forever()
  except KeyboardInterrupt:
    pass


if __name__ == "__main__":
  define_flags()
  cli.run(main)
