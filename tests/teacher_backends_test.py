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


# A key shaped like a real one, which a careless server echoes back.
_PLANTED_KEY = "sk-proj-PLANTEDsecret0123456789abcdef"


@pytest.mark.parametrize(
  "make_backend", [_gemini, _openai], ids=["gemini", "openai"]
)
def test_a_key_the_server_echoes_is_masked(make_backend, monkeypatch):
  monkeypatch.setenv("GEMINI_API_KEY", _PLANTED_KEY)
  monkeypatch.setenv("OPENAI_API_KEY", _PLANTED_KEY)
  with FakeTeacherServer(api_key="right-key", echo_key=True) as server:
    (bad_key,) = _outcomes(make_backend, server, 1)
  assert isinstance(bad_key, base.FatalError)
  assert "API key" in str(bad_key) and base.MASK in str(bad_key)
  assert "PLANTED" not in str(bad_key)


def test_mask_secrets_hides_keys_and_their_shapes(monkeypatch):
  monkeypatch.setenv("OPENAI_API_KEY", "configured-key-1234")
  text = (
    "Incorrect API key provided: Bearer sk-abc123456789; "
    "url ?key=AIzaSyA0123456789abcdefgh&alt=json; "
    '{"api_key": "zz-top-secret"}; the configured-key-1234 again; '
    "a bare AIzaSyB0123456789abcdefgh"
  )
  masked = base.mask_secrets(text)
  for secret in (
    "sk-abc123456789",
    "AIzaSyA0123456789abcdefgh",
    "zz-top-secret",
    "configured-key-1234",
    "AIzaSyB0123456789abcdefgh",
  ):
    assert secret not in masked
  assert masked.startswith("Incorrect API key provided: Bearer [REDACTED]")
  # Data keeps ordinary words; only the configured key goes.
  assert base.mask_configured_keys("key=3 and configured-key-1234") == (
    "key=3 and [REDACTED]"
  )


@pytest.mark.parametrize(
  "action,words",
  [
    ("choices_dict", "'choices' is a dict, not a list"),
    ("choices_strings", "'choices[0]' is a str, not an object"),
    ("usage_text", "'usage.prompt_tokens' is 'many', not a number"),
    ("no_choices", "no 'choices' field"),
  ],
)
def test_an_odd_openai_server_is_a_bad_answer_naming_the_field(action, words):
  with FakeTeacherServer(script=[action]) as server:
    (odd,) = _outcomes(_openai, server, 1)
    url = server.url
  assert isinstance(odd, base.BadAnswerError), odd
  assert words in str(odd) and f"{url}/v1" in str(odd)


@pytest.mark.parametrize(
  "action,words",
  [
    ("choices_dict", "'candidates' hold no content"),
    ("choices_strings", "'candidates' hold no content"),
    ("usage_text", "usage_metadata.promptTokenCount: Input should be"),
  ],
)
def test_an_odd_gemini_server_is_a_bad_answer(action, words):
  with FakeTeacherServer(script=[action]) as server:
    (odd,) = _outcomes(_gemini, server, 1)
    url = server.url
  assert isinstance(odd, base.BadAnswerError), odd
  assert words in str(odd) and url in str(odd)


def test_token_counts_and_error_bodies_of_any_json_shape():
  backend = openai.OpenAIBackend("m", base_url="http://127.0.0.1:1/v1")
  body = {"choices": [{"message": {"content": "The answer is 3."}}]}
  for count in (-7, float("inf")):
    with pytest.raises(base.BadAnswerError, match="not a token count"):
      backend._completion({**body, "usage": {"prompt_tokens": count}})
  assert backend._completion({**body, "usage": {}}).text == "The answer is 3."
  # An error answer whose body is a JSON list, not an object: quoted.
  listed = openai.httpx.Response(500, content=b"[1, 2, 3]")
  assert openai._message(listed) == "[1, 2, 3]"


def test_openai_without_a_model_is_a_fatal_error_not_an_attribute_error():
  for model in (None, "", "  "):
    with pytest.raises(base.FatalError, match="needs the model name"):
      openai.OpenAIBackend(model, base_url="http://127.0.0.1:1/v1")


def test_vertex_without_credentials_says_what_to_set(monkeypatch, tmp_path):
  # No ADC file, no gcloud config, no metadata server to ask.
  for name in (
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_CLOUD_PROJECT",
    "CLOUDSDK_CONFIG",
  ):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("HOME", str(tmp_path))
  monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
  monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:1")
  monkeypatch.setenv("NO_GCE_CHECK", "True")
  with pytest.raises(base.FatalError) as raised:
    gemini.GeminiBackend(vertexai=True, location="us-central1")
  message = str(raised.value)
  assert message.startswith("Vertex AI: ")
  assert "GOOGLE_APPLICATION_CREDENTIALS" in message
  assert "gcloud auth application-default login" in message
