"""One plan for every annotation job: backend, source name, requests.

`dss-jax annotate` and the main job's first stage both plan through
`dss_jax.teacher.jobs`; these pin the rules they share.
"""

import pytest

from dss_jax import cards, errors
from dss_jax.teacher import jobs


@pytest.mark.parametrize(
  "teacher, name",
  [
    (jobs.TeacherConfig(backend="replay"), "palm"),
    (jobs.TeacherConfig(backend="offline"), "offline"),
    (jobs.TeacherConfig(), "gemini_2_5_flash"),
    (
      jobs.TeacherConfig(backend="openai", model="Qwen/Qwen2.5-7B"),
      "qwen2_5_7b",
    ),
    (jobs.TeacherConfig(backend="offline", source="mine"), "mine"),
  ],
)
def test_source_name_rule(teacher, name):
  assert teacher.source_name == name


def test_unknown_backend_is_a_user_error():
  with pytest.raises(errors.UserError, match="backend must be one of"):
    jobs.TeacherConfig(backend="palm")


def test_plan_reads_splits_and_builds_samples_per_example():
  card = cards.load_card("arith")
  job = jobs.plan_job(card, ["train", "test"], num_samples=3, limit=2)
  assert [r.split for r in job.requests[::3]] == ["train"] * 2 + ["test"] * 2
  assert len(job.requests) == 4 * 3
  # Several samples are sampled, one is greedy.
  assert {r.sampling.temperature for r in job.requests} == {0.7}
  (greedy,) = jobs.plan_job(card, ["train"], limit=1).requests
  assert greedy.sampling.temperature == 0.0
  assert greedy.sampling.stop == tuple(card.prompt.stop)


def test_a_missing_split_is_named_or_skipped():
  card = cards.load_card("arith")
  with pytest.raises(errors.UserError, match="'valid': card arith has no"):
    jobs.plan_job(card, ["valid"])
  job = jobs.plan_job(
    card, ["valid", "test"], limit=1, skip_missing_splits=True
  )
  assert [r.split for r in job.requests] == ["test"]


def test_make_teacher_builds_the_named_backend():
  card = cards.load_card("arith")
  backend = jobs.make_teacher(jobs.TeacherConfig(backend="offline"), card)
  assert backend.name == "offline-arith"
  openai = jobs.make_teacher(
    jobs.TeacherConfig(backend="openai", model="m", timeout_s=7.0), card
  )
  assert openai.name == "m"
  assert str(openai._client.base_url) == jobs.DEFAULT_OPENAI_URL + "/"
  assert openai._client.timeout.read == 7.0


def test_openai_needs_a_model_and_no_model_is_empty():
  with pytest.raises(errors.UserError, match="--teacher_model is required"):
    jobs.TeacherConfig(backend="openai")
  for backend in ("openai", "gemini"):
    with pytest.raises(errors.UserError, match="--teacher_model is empty"):
      jobs.TeacherConfig(backend=backend, model=" ")


@pytest.mark.parametrize(
  "url", ["localhost:8000/v1", "127.0.0.1:9/v1", "ftp://host/v1", "http://"]
)
def test_a_teacher_url_without_http_is_refused(url):
  with pytest.raises(errors.UserError, match="is not an http:// or https://"):
    jobs.TeacherConfig(backend="openai", model="m", base_url=url)
  for good in ("http://localhost:8000/v1", "https://example.com/v1"):
    jobs.TeacherConfig(backend="openai", model="m", base_url=good)
