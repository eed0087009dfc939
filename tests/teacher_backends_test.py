"""Gemini and OpenAI-compatible backends against a real local HTTP server."""

import asyncio

import pytest

from dss_jax.teacher import prompts
from dss_jax.teacher.backends import base, gemini, openai
from dss_jax.teacher.testing import FakeTeacherServer

_REQUEST = prompts.TeacherRequest(
  example_id="ex1",
  split="train",
  prompt="Q: Where do fish live?\nA:",
  prompt_hash="h",
  sample=0,
  sampling=prompts.SamplingConfig(stop=("\n\nQ:",)),
)


def _gemini(server, model="gemini-2.5-flash"):
  return gemini.GeminiBackend(model, base_url=server.url, timeout_s=0.5)


def _openai(server, model="test-model"):
  return openai.OpenAIBackend(model, base_url=server.url + "/v1", timeout_s=0.5)


def _outcomes(make_backend, server, n):
  async def run():
    backend = make_backend(server)
    results = []
    try:
      for _ in range(n):
        try:
          results.append(await backend.generate(_REQUEST))
        except base.TeacherError as e:
          results.append(e)
    finally:
      await backend.aclose()
    return results

  return asyncio.run(run())


@pytest.fixture(autouse=True)
def _keys(monkeypatch):
  monkeypatch.setenv("GEMINI_API_KEY", "test-key")
  monkeypatch.setenv("OPENAI_API_KEY", "test-key")


@pytest.mark.parametrize(
  "make_backend", [_gemini, _openai], ids=["gemini", "openai"]
)
def test_scripted_responses(make_backend):
  script = ["ok", "429", "500", "garbage", "empty", "badjson", "hang"]
  with FakeTeacherServer(
    script=script, retry_delay_s=7, api_key="test-key", hang_s=5
  ) as server:
    outcomes = _outcomes(make_backend, server, 7)
    ok, rate, error, garbage, empty, badjson, hang = outcomes
    paths = dict(server.paths)
  assert isinstance(ok, base.Completion)
  assert ok.text.startswith("The question needs choice")
  assert ok.input_tokens == len(_REQUEST.prompt) // 4 and ok.output_tokens > 0
  assert isinstance(rate, base.RetryableError) and rate.retry_after == 7.0
  assert isinstance(error, base.RetryableError) and "500" in str(error)
  assert garbage.text == "<<garbage>> 0x7f ??"
  # No usable text: this call failed (counted, not stored, retried later).
  assert isinstance(empty, base.RequestError)
  # A 200 that is not JSON is a transient fault: retried.
  assert isinstance(badjson, base.RetryableError), badjson
  assert isinstance(hang, base.RetryableError)
  if make_backend is _gemini:
    assert "BLOCKED:SAFETY" in str(empty)
    assert paths == {"/v1beta/models/gemini-2.5-flash:generateContent": 7}
  else:
    assert paths == {"/v1/chat/completions": 7}


@pytest.mark.parametrize(
  "make_backend", [_gemini, _openai], ids=["gemini", "openai"]
)
def test_bad_key_and_unknown_model_are_fatal(make_backend, monkeypatch):
  with FakeTeacherServer(api_key="right-key") as server:
    monkeypatch.setenv("GEMINI_API_KEY", "wrong-key")
    monkeypatch.setenv("OPENAI_API_KEY", "wrong-key")
    (bad_key,) = _outcomes(make_backend, server, 1)
    monkeypatch.setenv("GEMINI_API_KEY", "right-key")
    monkeypatch.setenv("OPENAI_API_KEY", "right-key")
    (unknown,) = _outcomes(
      lambda s: make_backend(s, model="no-such-model"), server, 1
    )
  assert isinstance(bad_key, base.FatalError)
  assert "API key" in str(bad_key)
  assert "wrong-key" not in str(bad_key)  # secrets never reach messages
  assert isinstance(unknown, base.FatalError)
  assert "no-such-model" in str(unknown)


def test_gemini_daily_quota_is_fatal():
  with FakeTeacherServer(script=["quota"]) as server:
    (quota,) = _outcomes(_gemini, server, 1)
  assert isinstance(quota, base.FatalError)
  assert "quota" in str(quota)


def test_gemini_without_key_is_fatal(monkeypatch):
  for name in gemini.KEY_ENV_VARS:
    monkeypatch.delenv(name, raising=False)
  with pytest.raises(base.FatalError, match="GEMINI_API_KEY"):
    gemini.GeminiBackend()


def test_gemini_batch_mode_resumes_submitted_jobs(tmp_path):
  from dss_jax.teacher import runner
  from dss_jax.teacher import store as store_lib
  from dss_jax.teacher.backends import gemini_batch

  requests = [
    prompts.TeacherRequest(
      f"ex{i}", "train", f"Q: {i}?\nA:", "h", 0, prompts.SamplingConfig()
    )
    for i in range(5)
  ]
  store = str(tmp_path / "s.jsonl")
  with FakeTeacherServer() as server:
    # A run that submitted its first job and was killed before storing it.
    async def submit_then_die():
      backend = _gemini(server)
      name = await gemini_batch._submit(backend, requests[:2])
      gemini_batch._remember_job(
        store, name, [gemini_batch._key_text(r) for r in requests[:2]]
      )
      await backend.aclose()

    asyncio.run(submit_then_die())
    stats = gemini_batch.annotate_batch(
      _gemini(server),
      requests,
      store,
      runner.RunnerConfig(),
      chunk_size=2,
      poll_s=0.01,
    )
    counts = dict(server.counts)
  assert stats.completed == 5
  # The killed run's job was polled, not resubmitted: 1 + ceil(3 / 2) jobs.
  assert counts["batch_jobs"] == 3 and counts["batch_requests"] == 5
  records = store_lib.read_records(store)
  assert sorted(r.id for r in records) == [f"ex{i}" for i in range(5)]
  assert all(r.completion.startswith("The question needs") for r in records)
