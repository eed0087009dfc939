"""Gemini Batch API mode: large annotation jobs at half the price.

Requests not yet in the store are submitted in chunks as batch jobs with
inlined requests (`client.batches.create`), each request tagged with its store
key; jobs are polled (`client.batches.get`) and their answers appended to the
store. Submitted job names are kept in a sidecar file next to the store
(`<store>.batches.jsonl`), so a killed run resumes by polling the same jobs
instead of submitting (and paying for) them again.
"""

import asyncio
import json
import logging
import os
import pathlib
import time
from collections.abc import Sequence
from typing import Any

from google.genai import errors, types

from dss_jax.teacher import prompts, runner
from dss_jax.teacher import store as store_lib
from dss_jax.teacher.backends import base, gemini

# Inlined batch requests are capped at 20 MB per job; 1,000 few-shot prompts
# of a few KB each stay well under it.
DEFAULT_CHUNK = 1000
_DONE = {"JOB_STATE_SUCCEEDED"}
_FAILED = {"JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}


def _key_text(request: prompts.TeacherRequest) -> str:
  return json.dumps([request.example_id, request.prompt_hash, request.sample])


def _sidecar(store_path: str) -> pathlib.Path:
  return pathlib.Path(f"{store_path}.batches.jsonl")


def _submitted_jobs(store_path: str) -> list[dict[str, Any]]:
  path = _sidecar(store_path)
  if not path.exists():
    return []
  jobs = []
  for line in path.read_text().splitlines():
    if line.strip():
      try:
        jobs.append(json.loads(line))
      except ValueError:
        continue  # a torn last line: the job was never acknowledged
  return jobs


def _remember_job(store_path: str, name: str, keys: Sequence[str]) -> None:
  with _sidecar(store_path).open("a") as f:
    f.write(json.dumps({"job": name, "keys": list(keys)}) + "\n")
    f.flush()
    os.fsync(f.fileno())


async def _submit(
  backend: gemini.GeminiBackend, chunk: Sequence[prompts.TeacherRequest]
) -> str:
  inlined = [
    types.InlinedRequest(
      contents=request.prompt,
      config=backend.generation_config(request.sampling),
      metadata={"key": _key_text(request)},
    )
    for request in chunk
  ]
  try:
    job = await backend._client.aio.batches.create(
      model=backend.name,
      src=types.BatchJobSource(inlined_requests=inlined),
      config=types.CreateBatchJobConfig(display_name="dss-annotate"),
    )
  except errors.APIError as e:
    raise gemini.classify_api_error(e, backend.name) from None
  return job.name


async def _wait(
  backend: gemini.GeminiBackend, name: str, poll_s: float
) -> types.BatchJob:
  while True:
    try:
      job = await backend._client.aio.batches.get(name=name)
    except errors.APIError as e:
      error = gemini.classify_api_error(e, backend.name)
      if not isinstance(error, base.RetryableError):
        raise error from None
      await asyncio.sleep(poll_s)
      continue
    state = getattr(job.state, "value", job.state)
    if state in _DONE:
      return job
    if state in _FAILED:
      raise base.FatalError(f"batch job {name} ended in {state}: {job.error}")
    await asyncio.sleep(poll_s)


def _store_answers(
  job: types.BatchJob,
  by_key: dict[str, prompts.TeacherRequest],
  store: store_lib.AnnotationStore,
  teacher: str,
  stats: runner.RunStats,
) -> None:
  responses = (job.dest.inlined_responses if job.dest else None) or []
  for item in responses:
    key = (item.metadata or {}).get("key")
    request = by_key.get(key)
    if request is None or item.response is None:
      stats.failed += 1
      continue
    completion = gemini.completion_from_response(item.response)
    store.append(store_lib.CompletionRecord.of(request, completion, teacher))
    stats.completed += 1
    stats.input_tokens += completion.input_tokens
    stats.output_tokens += completion.output_tokens


async def run_batch(
  backend: gemini.GeminiBackend,
  requests: Sequence[prompts.TeacherRequest],
  store_path: str,
  config: runner.RunnerConfig = runner.RunnerConfig(),
  *,
  chunk_size: int = DEFAULT_CHUNK,
  poll_s: float = 30.0,
) -> runner.RunStats:
  """Runs the not-yet-stored requests through the Batch API.

  Args:
    backend: a GeminiBackend (its client and generation settings are used).
    requests: the job's requests.
    store_path: the store.
    config: prices for the cost estimate (Batch API: half the listed price).
    chunk_size: requests per batch job.
    poll_s: seconds between status polls.

  Returns:
    Run statistics.
  """
  start = time.monotonic()
  stats = runner.RunStats(requested=len(requests))
  by_key = {_key_text(r): r for r in requests}
  with store_lib.AnnotationStore(store_path) as store:

    def stored(key: str) -> bool:
      r = by_key[key]
      return (
        store_lib.RecordKey(r.example_id, r.prompt_hash, backend.name, r.sample)
        in store
      )

    pending = [k for k in by_key if not stored(k)]
    stats.already_stored = len(by_key) - len(pending)
    in_flight = set()
    jobs = []
    for job in _submitted_jobs(store_path):
      keys = [k for k in job["keys"] if k in by_key and not stored(k)]
      if keys:
        jobs.append(job["job"])
        in_flight.update(keys)
    to_submit = [k for k in pending if k not in in_flight]
    for i in range(0, len(to_submit), chunk_size):
      keys = to_submit[i : i + chunk_size]
      name = await _submit(backend, [by_key[k] for k in keys])
      _remember_job(store_path, name, keys)
      logging.info("submitted batch job %s (%d requests)", name, len(keys))
      jobs.append(name)
    for name in jobs:
      job = await _wait(backend, name, poll_s)
      _store_answers(job, by_key, store, backend.name, stats)
  price = runner.price_of(backend.name, config)
  stats.cost_usd = (
    0.5 * (stats.input_tokens * price[0] + stats.output_tokens * price[1]) / 1e6
  )
  stats.elapsed_s = time.monotonic() - start
  return stats


def annotate_batch(
  backend: base.TeacherBackend,
  requests: Sequence[prompts.TeacherRequest],
  store_path: str,
  config: runner.RunnerConfig = runner.RunnerConfig(),
  **kwargs: Any,
) -> runner.RunStats:
  """Synchronous run_batch; the backend must be a GeminiBackend."""
  if not isinstance(backend, gemini.GeminiBackend):
    raise base.FatalError("--batch needs --teacher=gemini")

  async def _main() -> runner.RunStats:
    try:
      return await run_batch(backend, requests, store_path, config, **kwargs)
    finally:
      await backend.aclose()

  return asyncio.run(_main())
