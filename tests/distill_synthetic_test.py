"""The demo's arithmetic problems (synthetic) and its offline teacher."""

import asyncio
import re

import pytest

from dss_jax import cards, synthetic
from dss_jax.teacher import backends, prompts
from dss_jax.teacher.backends import offline


def test_problems_are_deterministic_distinct_and_solved_by_their_rationale():
  problems = synthetic.generate_problems(300, seed=3)
  again = synthetic.generate_problems(300, seed=3)
  assert [p.question for p in problems] == [p.question for p in again]
  assert len({p.question for p in problems}) == 300
  for problem in problems:
    value = None
    for step in problem.steps:
      # Every step after the first starts from the previous result: the
      # rationale carries the intermediate value the label needs.
      if value is not None:
        assert step.left == value
      value = step.result
    assert value == problem.answer
    assert problem.rationale.endswith(f"= {problem.answer}.")


def test_reading_a_question_recovers_its_solution():
  for problem in synthetic.generate_problems(500, seed=1, max_ops=3):
    assert synthetic.read_question(problem.question) == list(problem.steps)
  with pytest.raises(synthetic.UnreadableQuestionError):
    synthetic.read_question("Mia paints a fence. How many pens now?")


def test_demo_splits_do_not_overlap_and_match_the_card():
  train = synthetic.read_split("train")
  test = synthetic.read_split("test")
  assert len(train) == synthetic.DEMO_SIZES["train"]
  assert len(test) == synthetic.DEMO_SIZES["test"]
  assert not {r["input"] for r in train} & {r["input"] for r in test}
  card = cards.load_card("arith")
  assert card.format_input(train[0]) == train[0]["input"]


def test_a_perfect_teacher_is_always_right_and_parses_with_the_card():
  card = cards.load_card("arith")
  teacher = offline.OfflineTeacher(offline.PERFECT)
  for problem in synthetic.generate_problems(100, seed=2):
    prompt = card.build_prompt({"input": problem.question})
    parsed = card.parse_completion(teacher.complete(prompt))
    assert parsed.label == str(problem.answer)
    assert parsed.rationale == problem.rationale


def test_the_default_teacher_errs_like_an_llm():
  card = cards.load_card("arith")
  teacher = offline.OfflineTeacher()
  problems = synthetic.demo_problems("test")
  completions = [
    teacher.complete(card.build_prompt({"input": p.question})) for p in problems
  ]
  parsed = [card.parse_completion(text) for text in completions]
  accuracy = sum(
    a.label == str(p.answer) for a, p in zip(parsed, problems, strict=True)
  ) / len(problems)
  # Wrong part of the time, but far better than chance.
  assert 0.7 < accuracy < 0.95
  # Some completions state no answer; many run on into a made-up exemplar.
  assert any(a.label is None for a in parsed)
  assert sum("\n\nQ:" in text for text in completions) > len(problems) // 3
  # Wrong answers are mostly faithful to a wrong rationale (a slip early in
  # the chain propagates), not random numbers.
  wrong = [
    a
    for a, p in zip(parsed, problems, strict=True)
    if a.label is not None and a.label != str(p.answer)
  ]
  faithful = [
    a for a in wrong if re.search(rf"= {a.label}\.$", a.rationale) is not None
  ]
  assert len(faithful) > len(wrong) // 2
  # The same prompt and sample give the same text; another sample may not.
  prompt = card.build_prompt({"input": problems[0].question})
  assert teacher.complete(prompt) == teacher.complete(prompt)


@pytest.mark.parametrize("by_name", [False, True])
def test_backend_answers_runner_requests(by_name):
  card = cards.load_card("arith")
  if by_name:  # as `dss-jax annotate --backend=offline` creates it
    backend = backends.make_backend("offline", error_model=offline.PERFECT)
  else:
    backend = offline.OfflineBackend(offline.PERFECT)
  problem = synthetic.demo_problems("train")[0]
  sampling = prompts.SamplingConfig()
  (request,) = prompts.build_requests(
    card, problem.id, "train", {"input": problem.question}, sampling
  )
  completion = asyncio.run(backend.generate(request))
  assert backend.name == "offline-arith"
  assert card.parse_completion(completion.text).label == str(problem.answer)
  assert completion.output_tokens > 0
