"""The annotation runner: retries, rate limits, the store, votes, the CLI."""

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import time

import pytest

from dss_jax import cards
from dss_jax.teacher import aggregate, prompts, runner, sources
from dss_jax.teacher import store as store_lib
from dss_jax.teacher.backends import base, gemini, openai, replay
from dss_jax.teacher.testing import FakeTeacherServer

_FAST = runner.RunnerConfig(
  concurrency=3,
  max_retries=4,
  initial_backoff_s=0.01,
  max_backoff_s=0.05,
  timeout_s=2.0,
  progress=False,
)


@pytest.fixture
def svamp_job(paper_data_dir):
  card = cards.load_card("svamp")
  examples = sources.read_examples(
    card, "test", sources.find_root(paper_data_dir)
  )[:12]
  requests = runner.build_job(card, examples, "test", prompts.SamplingConfig())
  return card, examples, requests


def _svamp_answer(prompt: str) -> str:
  # Answer with the gold equation of the example in the query part.
  del prompt
  return "Add them up. The answer is (1 + 1).\n\nQ: next"


@pytest.mark.parametrize("kind", ["gemini", "openai"])
def test_runner_survives_scripted_failures(
  kind, svamp_job, tmp_path, monkeypatch
):
  monkeypatch.setenv("GEMINI_API_KEY", "k")
  card, examples, requests = svamp_job
  script = ["429", "500", "hang", "garbage", "empty", "badjson"]
  store = str(tmp_path / "s.jsonl")

  def backend_for(server):
    if kind == "gemini":
      return gemini.GeminiBackend(base_url=server.url, timeout_s=0.4)
    return openai.OpenAIBackend(
      "test-model", base_url=server.url + "/v1", timeout_s=0.4
    )

  with FakeTeacherServer(
    responder=_svamp_answer, script=script, retry_delay_s=0.2, hang_s=5
  ) as server:
    backend = backend_for(server)
    stats = runner.annotate(backend, requests, store, _FAST)
    total = server.counts["requests"]
  # 429, 500, the hang and the unreadable 200 are retried; a garbage answer
  # is the teacher's (stored, unparsable); an answer without text is a
  # failed call: counted, not stored.
  assert stats.failed == 1 and stats.completed == len(requests) - 1
  assert stats.retries == 4
  assert total == len(requests) + 4
  records = store_lib.read_records(store)
  assert len({r.key for r in records}) == len(records) == len(requests) - 1
  assert "" not in {r.completion for r in records}
  assert "<<garbage>> 0x7f ??" in {r.completion for r in records}
  # The next run retries only the failed call.
  with FakeTeacherServer(responder=_svamp_answer) as server:
    again = runner.annotate(backend_for(server), requests, store, _FAST)
    assert server.counts["requests"] == 1
  assert again.completed == 1 and again.failed == 0
  summary = runner.summarize(card, examples, requests, store, backend.name)
  assert summary.annotated == 12 and summary.unparsable == 1


def test_retry_waits_for_server_hint():
  config = runner.RunnerConfig(initial_backoff_s=0.01, max_backoff_s=0.02)
  for attempt in range(4):
    assert runner.backoff_delay(attempt, config, retry_after=2.0) >= 2.0
  delays = {
    round(runner.backoff_delay(3, runner.RunnerConfig()), 3) for _ in range(20)
  }
  assert len(delays) > 1  # jittered
  assert all(4.0 <= d <= 8.0 for d in delays)


def test_rate_limiter_spaces_requests():
  async def run():
    limiter = runner.RateLimiter(requests_per_minute=1200)  # one per 50 ms
    start = time.monotonic()
    await asyncio.gather(*(limiter.acquire() for _ in range(11)))
    requests_s = time.monotonic() - start
    limiter = runner.RateLimiter(tokens_per_minute=60_000)  # 1,000 tokens/s
    start = time.monotonic()
    for _ in range(3):
      await limiter.acquire(tokens=200)
    return requests_s, time.monotonic() - start

  requests_s, tokens_s = asyncio.run(run())
  assert 0.45 <= requests_s < 1.0
  assert 0.35 <= tokens_s < 0.8


def test_fatal_error_stops_run(svamp_job, tmp_path, monkeypatch):
  monkeypatch.setenv("GEMINI_API_KEY", "k")
  _, _, requests = svamp_job
  with FakeTeacherServer() as server:
    backend = gemini.GeminiBackend("gemini-9-imaginary", base_url=server.url)
    with pytest.raises(base.FatalError, match="gemini-9-imaginary"):
      runner.annotate(backend, requests, str(tmp_path / "s.jsonl"), _FAST)
  assert store_lib.read_records(tmp_path / "s.jsonl") == []


def test_persistent_429_is_fatal(svamp_job, tmp_path, monkeypatch):
  monkeypatch.setenv("GEMINI_API_KEY", "k")
  _, _, requests = svamp_job
  with FakeTeacherServer(script=["429"] * 50, retry_delay_s=0.01) as server:
    backend = gemini.GeminiBackend(base_url=server.url)
    config = runner.RunnerConfig(
      concurrency=1, max_retries=2, initial_backoff_s=0.01, progress=False
    )
    with pytest.raises(base.FatalError, match="rate limited"):
      runner.annotate(backend, requests[:1], str(tmp_path / "s.jsonl"), config)


def test_replay_backend_through_runner(svamp_job, paper_data_dir, tmp_path):
  card, examples, requests = svamp_job
  backend = replay.ReplayBackend(card, sources.find_root(paper_data_dir))
  path = str(tmp_path / "s.jsonl")
  first = runner.annotate(backend, requests, path, _FAST)
  backend = replay.ReplayBackend(card, sources.find_root(paper_data_dir))
  second = runner.annotate(backend, requests, path, _FAST)
  assert (first.completed, second.completed, second.already_stored) == (
    12,
    0,
    12,
  )
  summary = runner.summarize(card, examples, requests, path, "palm-540b")
  by_id = {r.id: r.completion for r in store_lib.read_records(path)}
  expected = sum(
    card.is_correct(card.parse_completion(by_id[e.id]).label, e.gold_label)
    for e in examples
  )
  assert summary.annotated == 12 and summary.correct == expected > 0


def test_store_repairs_torn_line_and_ignores_duplicates(tmp_path):
  path = tmp_path / "s.jsonl"
  record = store_lib.CompletionRecord("a", "h", "t", 0, "text")
  with store_lib.AnnotationStore(path) as store:
    store.append(record)
    store.append(record)
  with path.open("a") as f:
    f.write('{"id": "b", "prompt_ha')  # killed mid-write
  with store_lib.AnnotationStore(path) as store:
    assert len(store) == 1 and record.key in store
    store.append(store_lib.CompletionRecord("b", "h", "t", 0, "more"))
  lines = path.read_text().splitlines()
  assert [json.loads(line)["id"] for line in lines] == ["a", "b"]


def test_self_consistency_vote():
  card = cards.load_card("cqa")
  completions = [
    "r1. So the answer is (a) zoo.",
    "r2. So the answer is (b) park.",
    "r3. So the answer is (b) park.",
    "no answer",
  ]
  voted = aggregate.aggregate(card, completions)
  assert voted.teacher_label == "park"
  assert voted.rationales == ("r2.", "r3.")
  assert (voted.num_samples, voted.num_parsed) == (4, 3)
  with_gold = aggregate.aggregate(card, completions, "zoo", keep="vote_or_gold")
  assert with_gold.rationales == ("r1.", "r2.", "r3.")
  tie = aggregate.aggregate(card, completions[:2])
  assert tie.teacher_label == "zoo"  # first seen wins ties
  assert aggregate.aggregate(card, ["junk"]).teacher_label == ""


def test_cli_bad_model_is_one_line(repo_dir, paper_data_dir, tmp_path):
  with FakeTeacherServer() as server:
    result = subprocess.run(
      [
        sys.executable,
        "-m",
        "dss_jax.annotate",
        "--card=svamp",
        "--split=test",
        "--limit=3",
        f"--base_url={server.url}",
        "--model=gemini-0-nonexistent",
        f"--store={tmp_path / 's.jsonl'}",
        "--progress=false",
      ],
      env={
        **os.environ,
        "PYTHONPATH": str(repo_dir),
        "GEMINI_API_KEY": "k",
        "DSS_PAPER_DATA_DIR": str(paper_data_dir),
      },
      capture_output=True,
      text=True,
      timeout=60,
    )
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: unknown Gemini model 'gemini-0-nonexistent'")


def test_rows_without_a_gold_label_are_not_teacher_errors(svamp_job, tmp_path):
  card, examples, requests = svamp_job
  store = str(tmp_path / "s.jsonl")
  with FakeTeacherServer(responder=_svamp_answer) as server:
    backend = openai.OpenAIBackend("test-model", base_url=server.url + "/v1")
    runner.annotate(backend, requests, store, _FAST)
  full = runner.summarize(card, examples, requests, store, backend.name)
  unlabeled = [dataclasses.replace(examples[0], gold_label="")] + examples[1:]
  partial = runner.summarize(card, unlabeled, requests, store, backend.name)
  assert partial.annotated == full.annotated == 12
  assert partial.scored == 11
  assert partial.accuracy == pytest.approx(100.0 * partial.correct / 11)


# ----------------------------------------------------------------------------
# Bounded, visible waits; odd servers; secrets.
# ----------------------------------------------------------------------------


def _openai_at(server):
  return openai.OpenAIBackend("test-model", base_url=server.url + "/v1")


@pytest.mark.parametrize(
  "script,delay,words",
  [
    # A Retry-After of an hour fails the run at once instead of sleeping.
    (["ok", "ok", "429"], 3600, "asks to wait 3600 s before the next call"),
    # An answer in the wrong shape is the server's fault.
    (["ok", "ok", "choices_dict"], 1, "'choices' is a dict, not a list"),
  ],
)
def test_a_server_fault_stops_the_run_keeps_the_store_and_a_rerun_goes_on(
  svamp_job, tmp_path, script, delay, words
):
  _, _, requests = svamp_job
  store = str(tmp_path / "s.jsonl")
  config = dataclasses.replace(_FAST, concurrency=1)
  with FakeTeacherServer(script=script, retry_delay_s=delay) as server:
    start = time.monotonic()
    with pytest.raises(base.TeacherStoppedError) as raised:
      runner.annotate(_openai_at(server), requests, store, config)
    took = time.monotonic() - start
    url = server.url
  message = str(raised.value)
  assert words in message and f"{url}/v1" in message, message
  assert "2 calls stored and 10 left" in message
  assert took < 30
  assert len(store_lib.read_records(store)) == 2  # nothing stored is lost
  with FakeTeacherServer() as server:
    stats = runner.annotate(_openai_at(server), requests, store, config)
  assert (stats.already_stored, stats.completed) == (2, 10)


def test_a_long_wait_under_the_cap_is_said(
  svamp_job, tmp_path, monkeypatch, caplog
):
  _, _, requests = svamp_job
  monkeypatch.setattr(runner, "_VISIBLE_WAIT_S", 0.5)
  config = dataclasses.replace(_FAST, concurrency=1)
  with FakeTeacherServer(script=["429"], retry_delay_s=1) as server:
    with caplog.at_level("INFO"):
      stats = runner.annotate(
        _openai_at(server), requests[:1], str(tmp_path / "s.jsonl"), config
      )
  assert stats.completed == 1
  (line,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  assert line.startswith("waiting 1 s before retrying") and "429" in line


def _annotate_cli(args, env, tmp_path, paper_data_dir, repo_dir):
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "dss_jax.annotate",
      "--card=svamp",
      "--split=test",
      "--limit=4",
      f"--store={tmp_path / 'store' / 's.jsonl'}",
      "--progress=false",
      *args,
    ],
    env={
      **os.environ,
      "PYTHONPATH": str(repo_dir),
      "DSS_PAPER_DATA_DIR": str(paper_data_dir),
      **env,
    },
    capture_output=True,
    text=True,
    timeout=120,
  )


def _error_lines(text):
  return [ln for ln in text.splitlines() if ln.startswith("error:")]


def test_cli_a_key_the_server_echoes_is_nowhere(
  repo_dir, paper_data_dir, tmp_path
):
  key = "sk-proj-PLANTEDsecret0123456789abcdef"
  with FakeTeacherServer(api_key="right-key", echo_key=True) as server:
    result = _annotate_cli(
      ["--backend=openai", "--model=test-model", f"--base_url={server.url}/v1"],
      {"OPENAI_API_KEY": key},
      tmp_path,
      paper_data_dir,
      repo_dir,
    )
    assert server.counts["bad_key"] >= 1  # the server did echo it
  assert result.returncode == 2, result.stderr[-2000:]
  (line,) = _error_lines(result.stderr)
  assert "rejected the API key (401)" in line and "[REDACTED]" in line
  written = [p.read_text() for p in tmp_path.rglob("*") if p.is_file()]
  for text in [result.stdout, result.stderr, *written]:
    assert "PLANTED" not in text


@pytest.mark.parametrize(
  "script,delay,words",
  [
    (["ok", "429"], 3600, "asks to wait 3600 s"),
    (["ok", "usage_text"], 1, "'usage.prompt_tokens' is 'many'"),
  ],
)
def test_cli_a_server_fault_is_one_line_and_status_1(
  repo_dir, paper_data_dir, tmp_path, script, delay, words
):
  with FakeTeacherServer(script=script, retry_delay_s=delay) as server:
    result = _annotate_cli(
      [
        "--backend=openai",
        "--model=test-model",
        f"--base_url={server.url}/v1",
        "--concurrency=1",
      ],
      {"OPENAI_API_KEY": "k"},
      tmp_path,
      paper_data_dir,
      repo_dir,
    )
  assert result.returncode == 1, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  (line,) = _error_lines(result.stderr)
  assert words in line and "1 calls stored and 3 left" in line, line
  assert len(store_lib.read_records(tmp_path / "store" / "s.jsonl")) == 1


def test_cli_openai_without_a_model_is_a_flag_error(
  repo_dir, paper_data_dir, tmp_path
):
  result = _annotate_cli(
    ["--backend=openai", "--base_url=http://127.0.0.1:1/v1"],
    {},
    tmp_path,
    paper_data_dir,
    repo_dir,
  )
  assert result.returncode == 2, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  (line,) = _error_lines(result.stderr)
  assert "--teacher_model is required with --teacher=openai" in line
  # The old spellings still work, each with one deprecation line.
  for old, new in (("backend", "teacher"), ("base_url", "teacher_url")):
    warning = f"warning: --{old} is deprecated; use --{new}"
    assert result.stderr.count(warning) == 1, result.stderr[-2000:]


def test_an_answer_that_echoes_the_key_is_stored_without_it(
  svamp_job, tmp_path, monkeypatch
):
  key = "configured-secret-0123456789"
  monkeypatch.setenv("OPENAI_API_KEY", key)
  _, _, requests = svamp_job
  store = tmp_path / "s.jsonl"
  with FakeTeacherServer(
    responder=lambda prompt: f"My key is {key}. The answer is (1 + 1)."
  ) as server:
    stats = runner.annotate(_openai_at(server), requests[:2], str(store), _FAST)
  assert stats.completed == 2
  assert key not in store.read_text()
  (record, _) = store_lib.read_records(store)
  assert record.completion == "My key is [REDACTED]. The answer is (1 + 1)."
