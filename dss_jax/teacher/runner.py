"""The resumable annotation runner: many teacher calls, each made once.

    stats = annotate(card, backend, examples, store_path, config=RunnerConfig(
        concurrency=32, requests_per_minute=600))

* bounded concurrency: a fixed pool of workers;
* a client-side rate limit on requests and tokens per minute, spacing calls
  evenly (no bursts) so a server-side limit of the same size is not tripped;
* retries with exponential backoff and jitter on 429/5xx/timeouts, never
  sooner than the server's retry hint; a 429 also pauses all workers for the
  hinted time, since every other in-flight call would hit the same limit;
* bounded, visible waits: a wait of 10 s or more is logged (how long, why)
  and shown on the progress bar; a server hint longer than `max_retry_wait_s`
  (a `Retry-After: 3600`, a Gemini `retryDelay` of hours) stops the run
  instead of sleeping through it, as does an answer in the wrong shape
  (`base.BadAnswerError`): one line naming the server and what happened
  (`base.TeacherStoppedError`, exit status 1); the calls stored are kept
  and a rerun retries the rest;
* an append-only fsynced store (store.py): calls already stored are skipped,
  so a run killed at any moment repeats at most the calls in flight, i.e. at
  most `concurrency` calls;
* a progress bar with rate, ETA, tokens and an estimated cost.
"""

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Sequence

import tqdm

from dss_jax import cards as cards_lib
from dss_jax.teacher import aggregate, prompts, sources
from dss_jax.teacher import store as store_lib
from dss_jax.teacher.backends import base

# US$ per million (input, output) tokens, Gemini API paid tier, standard
# context, as listed on ai.google.dev/pricing in 2025. The Batch API halves
# these. Only an estimate for the progress bar; pass your own prices for other
# models.
PRICES_PER_MILLION = {
  "gemini-2.5-pro": (1.25, 10.00),
  "gemini-2.5-flash": (0.30, 2.50),
  "gemini-2.5-flash-lite": (0.10, 0.40),
  "gemini-2.0-flash": (0.10, 0.40),
  "gemini-2.0-flash-lite": (0.075, 0.30),
}
# A rough characters-per-token ratio for English, used only to reserve
# tokens-per-minute budget before a call (the bill uses the real counts).
_CHARS_PER_TOKEN = 4
# Non-retryable failures of this many consecutive requests stop the run.
_MAX_REQUEST_ERRORS_IN_A_ROW = 20
# Waits at least this long are said (log and progress bar), not slept
# through silently.
_VISIBLE_WAIT_S = 10.0


@dataclasses.dataclass(frozen=True)
class RunnerConfig:
  """How hard and how patiently to call the teacher.

  Attributes:
    concurrency: calls in flight at most.
    requests_per_minute: client-side request limit (None = unlimited).
    tokens_per_minute: client-side token limit, prompt + max output
      (None = unlimited).
    max_retries: retries per call after the first attempt.
    initial_backoff_s: the first backoff; doubles per retry.
    max_backoff_s: the backoff cap.
    timeout_s: per-attempt timeout enforced by the runner (backends have
      their own HTTP timeouts as well).
    price_per_million: (input, output) US$ per million tokens for the cost
      estimate; None looks the teacher up in PRICES_PER_MILLION.
    progress: show a progress bar.
    max_retry_wait_s: the longest server retry hint the run waits for; a
      longer one stops the run (rerun later to retry the calls left).
  """

  concurrency: int = 16
  requests_per_minute: float | None = None
  tokens_per_minute: float | None = None
  max_retries: int = 8
  initial_backoff_s: float = 1.0
  max_backoff_s: float = 60.0
  timeout_s: float = 120.0
  price_per_million: tuple[float, float] | None = None
  progress: bool = True
  max_retry_wait_s: float = 300.0


@dataclasses.dataclass
class RunStats:
  """What a run did."""

  requested: int = 0
  already_stored: int = 0
  completed: int = 0
  failed: int = 0
  retries: int = 0
  input_tokens: int = 0
  output_tokens: int = 0
  cost_usd: float = 0.0
  elapsed_s: float = 0.0
  errors: dict[str, int] = dataclasses.field(default_factory=dict)

  def count_error(self, error: Exception) -> None:
    kind = type(error).__name__
    self.errors[kind] = self.errors.get(kind, 0) + 1


class RateLimiter:
  """Spaces acquisitions evenly to stay under requests and tokens per minute.

  A call may start at the later of the request slot and the token slot; each
  call pushes both slots forward by its share of a minute. `pause_until`
  holds every caller back after a server rate-limit hint.
  """

  def __init__(
    self,
    requests_per_minute: float | None = None,
    tokens_per_minute: float | None = None,
  ):
    """Creates a limiter; a None limit is not enforced."""
    self._request_interval = (
      60.0 / requests_per_minute if requests_per_minute else 0.0
    )
    self._token_interval = (
      60.0 / tokens_per_minute if tokens_per_minute else 0.0
    )
    self._next_request = 0.0
    self._next_token = 0.0
    self._paused_until = 0.0
    self._lock = asyncio.Lock()

  async def acquire(self, tokens: int = 0) -> None:
    """Waits for a slot for one call of about `tokens` tokens."""
    async with self._lock:
      now = time.monotonic()
      start = max(now, self._next_request, self._next_token, self._paused_until)
      self._next_request = start + self._request_interval
      self._next_token = start + tokens * self._token_interval
    if start > now:
      await asyncio.sleep(start - now)

  def pause_until(self, deadline: float) -> None:
    """Holds back calls until the monotonic time `deadline`."""
    self._paused_until = max(self._paused_until, deadline)


def backoff_delay(
  attempt: int, config: RunnerConfig, retry_after: float | None = None
) -> float:
  """The wait before retry number `attempt` (0-based).

  Exponential with "equal jitter" (half fixed, half random) so that many
  workers failing together do not retry in lockstep; never shorter than the
  server's hint.

  Args:
    attempt: how many retries were made already.
    config: backoff settings.
    retry_after: the server's retry hint in seconds.

  Returns:
    Seconds to wait.
  """
  ceiling = min(config.max_backoff_s, config.initial_backoff_s * 2**attempt)
  delay = ceiling / 2 + random.uniform(0, ceiling / 2)
  if retry_after is not None:
    delay = max(
      delay, retry_after + random.uniform(0, 0.1 * retry_after + 0.05)
    )
  return delay


def price_of(teacher: str, config: RunnerConfig) -> tuple[float, float]:
  """(input, output) US$ per million tokens; (0, 0) when unknown."""
  if config.price_per_million is not None:
    return config.price_per_million
  return PRICES_PER_MILLION.get(teacher.removeprefix("models/"), (0.0, 0.0))


class _Run:
  """One run's shared state: queue, limiter, store, stats, progress bar."""

  def __init__(self, backend, store, config, pending, stats):
    self.backend = backend
    self.store = store
    self.config = config
    self.stats = stats
    self.limiter = RateLimiter(
      config.requests_per_minute, config.tokens_per_minute
    )
    self.queue: asyncio.Queue[prompts.TeacherRequest] = asyncio.Queue()
    for request in pending:
      self.queue.put_nowait(request)
    self.price = price_of(backend.name, config)
    self.request_errors_in_a_row = 0
    # Why the run stopped early (a server fault), if it did.
    self.stopped: str | None = None
    self.bar = tqdm.tqdm(
      total=len(pending),
      unit="call",
      disable=not config.progress,
      dynamic_ncols=True,
      desc=backend.name,
    )

  async def call(
    self, request: prompts.TeacherRequest
  ) -> base.Completion | None:
    """One request with retries; None when it cannot succeed."""
    estimate = len(request.prompt) // _CHARS_PER_TOKEN + (
      request.sampling.max_output_tokens
    )
    for attempt in range(self.config.max_retries + 1):
      await self.limiter.acquire(estimate)
      try:
        return await asyncio.wait_for(
          self.backend.generate(request), timeout=self.config.timeout_s
        )
      except TimeoutError:
        error = base.RetryableError(f"no answer in {self.config.timeout_s}s")
      except base.RetryableError as e:
        error = e
      except base.BadAnswerError as e:
        self.stats.count_error(e)
        self.stop(str(e))
        return None
      except base.RequestError as e:
        logging.warning("request %s failed: %s", request.example_id, e)
        self.stats.count_error(e)
        self.request_errors_in_a_row += 1
        if self.request_errors_in_a_row >= _MAX_REQUEST_ERRORS_IN_A_ROW:
          # Every request failing the same way is a setup problem (e.g. an
          # option the model rejects), not bad luck with some examples.
          raise base.FatalError(
            f"{self.request_errors_in_a_row} requests in a row failed: {e}"
          ) from None
        return None
      self.stats.count_error(error)
      if attempt == self.config.max_retries or self.stopped:
        break
      hint = error.retry_after
      if hint is not None and hint > self.config.max_retry_wait_s:
        self.stop(
          f"{self.backend.server} asks to wait {hint:.0f} s before the next "
          f"call ({error}), longer than --max_retry_wait="
          f"{self.config.max_retry_wait_s:g} s"
        )
        return None
      delay = backoff_delay(attempt, self.config, hint)
      if hint is not None:
        self.limiter.pause_until(time.monotonic() + hint)
      self.say_wait(delay, request, error)
      self.stats.retries += 1
      await asyncio.sleep(delay)
    if self.stopped:
      return None  # another call stopped the run; a rerun retries this one
    if error.retry_after is not None or str(error).startswith("429"):
      raise base.FatalError(
        f"still rate limited after {self.config.max_retries} retries "
        f"(quota exhausted?): {error}"
      )
    logging.warning("giving up on %s: %s", request.example_id, error)
    return None

  def stop(self, reason: str) -> None:
    """Stops the run: no new calls; the calls in flight finish."""
    if self.stopped is None:
      self.stopped = reason
      logging.warning("stopping the teacher calls: %s", reason)

  def say_wait(
    self, delay: float, request: prompts.TeacherRequest, error: Exception
  ) -> None:
    """Logs a retry; a long wait at WARNING and on the progress bar."""
    if delay < _VISIBLE_WAIT_S:
      logging.info("retry of %s in %.1fs: %s", request.example_id, delay, error)
      return
    logging.warning(
      "waiting %.0f s before retrying %s: %s", delay, request.example_id, error
    )
    self.bar.set_postfix_str(f"waiting {delay:.0f}s: {str(error)[:40]}")

  async def record(
    self, request: prompts.TeacherRequest, completion: base.Completion
  ) -> None:
    # A teacher that echoes the API key in its answer does not get it
    # into the store.
    text = base.mask_configured_keys(completion.text)
    if text != completion.text:
      completion = dataclasses.replace(completion, text=text)
    # The fsync runs in a thread so that other calls proceed meanwhile; the
    # call counts as done only once its line is durable.
    await asyncio.to_thread(
      self.store.append,
      store_lib.CompletionRecord.of(request, completion, self.backend.name),
    )
    self.request_errors_in_a_row = 0
    stats = self.stats
    stats.completed += 1
    stats.input_tokens += completion.input_tokens
    stats.output_tokens += completion.output_tokens
    stats.cost_usd = (
      stats.input_tokens * self.price[0] + stats.output_tokens * self.price[1]
    ) / 1e6
    self.bar.set_postfix(
      tok_in=stats.input_tokens,
      tok_out=stats.output_tokens,
      cost=f"${stats.cost_usd:.4f}",
      retries=stats.retries,
      failed=stats.failed,
      refresh=False,
    )
    self.bar.update(1)

  async def worker(self) -> None:
    while not self.stopped:
      try:
        request = self.queue.get_nowait()
      except asyncio.QueueEmpty:
        return
      completion = await self.call(request)
      if completion is None:
        self.stats.failed += 1
        self.bar.update(1)
      else:
        await self.record(request, completion)


async def run_requests(
  backend: base.TeacherBackend,
  requests: Sequence[prompts.TeacherRequest],
  store: store_lib.AnnotationStore,
  config: RunnerConfig = RunnerConfig(),
) -> RunStats:
  """Makes every request not yet in the store, persisting each answer.

  Args:
    backend: the teacher.
    requests: all requests of the job (stored ones are skipped).
    store: the job's store.
    config: concurrency, limits, retries.

  Returns:
    Run statistics.

  Raises:
    FatalError: on a bad key, an unknown model or an exhausted quota; calls
      finished before it are kept in the store.
    TeacherStoppedError: the server answered in the wrong shape, or asked
      for a wait longer than `config.max_retry_wait_s`; calls finished before
      it are kept in the store.
  """
  start = time.monotonic()
  stats = RunStats(requested=len(requests))
  pending = []
  for request in requests:
    key = store_lib.RecordKey(
      request.example_id, request.prompt_hash, backend.name, request.sample
    )
    if key in store:
      stats.already_stored += 1
    else:
      pending.append(request)
  run = _Run(backend, store, config, pending, stats)
  workers = [
    asyncio.create_task(run.worker())
    for _ in range(min(config.concurrency, len(pending)))
  ]
  try:
    await asyncio.gather(*workers)
  finally:
    for task in workers:
      task.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    run.bar.close()
    stats.elapsed_s = time.monotonic() - start
  if run.stopped:
    left = len(pending) - stats.completed
    stats.failed = left
    raise base.TeacherStoppedError(
      f"teacher {backend.name}: {run.stopped}; stopped with "
      f"{stats.completed + stats.already_stored} calls stored and {left} "
      "left: rerun the same command later to make them"
    )
  return stats


def build_job(
  card: cards_lib.TaskCard,
  examples: Sequence[sources.SourceExample],
  split: str,
  sampling: prompts.SamplingConfig,
  num_samples: int = 1,
) -> list[prompts.TeacherRequest]:
  """All requests for some examples: k samples each."""
  requests = []
  for example in examples:
    requests += prompts.build_requests(
      card, example.id, split, example.fields, sampling, num_samples
    )
  return requests


def annotate(
  backend: base.TeacherBackend,
  requests: Sequence[prompts.TeacherRequest],
  store_path: str,
  config: RunnerConfig = RunnerConfig(),
) -> RunStats:
  """Synchronous wrapper of run_requests that owns the store and backend."""

  async def _main() -> RunStats:
    try:
      with store_lib.AnnotationStore(store_path) as store:
        return await run_requests(backend, requests, store, config)
    finally:
      await backend.aclose()

  return asyncio.run(_main())


@dataclasses.dataclass(frozen=True)
class Summary:
  """Parse and accuracy counts of a store against its examples."""

  examples: int
  annotated: int
  unparsable: int
  correct: int
  # Annotated examples with a gold label: the accuracy's denominator (rows
  # without one, such as an unlabeled test split, cannot be scored).
  scored: int | None = None

  @property
  def accuracy(self) -> float:
    """Teacher accuracy against gold over scorable examples (percent)."""
    total = self.annotated if self.scored is None else self.scored
    return 100.0 * self.correct / total if total else 0.0


def summarize(
  card: cards_lib.TaskCard,
  examples: Sequence[sources.SourceExample],
  requests: Sequence[prompts.TeacherRequest],
  store_path: str,
  teacher: str,
) -> Summary:
  """Votes each example's stored samples and scores them against gold.

  Args:
    card: the task card.
    examples: the job's examples.
    requests: the job's requests (fix which prompt hashes count).
    store_path: the store.
    teacher: the backend name the records were made with.

  Returns:
    Counts; an example is unparsable when none of its samples parses.
  """
  by_key = {r.key: r for r in store_lib.read_records(store_path)}
  per_example: dict[str, list[str]] = {}
  for request in requests:
    record = by_key.get(
      store_lib.RecordKey(
        request.example_id, request.prompt_hash, teacher, request.sample
      )
    )
    if record is not None:
      per_example.setdefault(request.example_id, []).append(record.completion)
  annotated = unparsable = correct = scored = 0
  for example in examples:
    if example.id not in per_example:
      continue
    annotated += 1
    result = aggregate.aggregate(card, per_example[example.id])
    if not result.teacher_label:
      unparsable += 1
    if not example.gold_label:
      continue
    scored += 1
    if result.teacher_label and card.is_correct(
      result.teacher_label, example.gold_label
    ):
      correct += 1
  return Summary(len(examples), annotated, unparsable, correct, scored)
