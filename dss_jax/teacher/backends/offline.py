"""The offline teacher: the demo's built-in few-shot teacher, no network.

`OfflineTeacher` plays the part of a few-shot chain-of-thought LLM on the demo
card's problems (`dss_jax.synthetic`, tasks/arith.yaml). It reads the last
question of a prompt, solves it step by step and writes a completion in the
style of the released PaLM outputs (`... The answer is 7.`, often followed by a
hallucinated next exemplar). It is wrong part of the time, with an error model
shaped like an LLM's: arithmetic slips that grow with the size of the numbers,
misread operations, skipped steps, answers that contradict their own rationale,
and completions with no parsable answer. Errors propagate through the later
steps, as they do in real chains of thought. The output is a pure function of
(prompt, sample index, seed), so an annotation run is reproducible and
resumable. `OfflineBackend` puts it behind the runner's `TeacherBackend`
interface (`make_backend("offline")`).

Nothing here evaluates model text as code: the teacher reads questions with
fixed regular expressions and computes with integers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re

from dss_jax import synthetic
from dss_jax.teacher import prompts
from dss_jax.teacher.backends import base


@dataclasses.dataclass(frozen=True)
class ErrorModel:
  """How often, and how, the offline teacher goes wrong.

  The rates are per step unless said otherwise, and `slip_*` rates grow with the
  size of the result (an LLM multiplies 3 * 4 reliably and 8 * 7 less so). The
  defaults give about 85% label accuracy on the demo data (78% on problems of
  up to three steps with numbers up to 20): a strong but fallible teacher.

  Attributes:
    slip: chance of an arithmetic slip on a one-digit result.
    slip_per_digit: added slip chance for each further digit of the result.
    slip_mul: added slip chance on multiplications.
    misread: chance of applying the wrong operation (adds instead of
      subtracts, and so on).
    skip: chance of leaving out a step (per problem, for problems of 3+ steps).
    inconsistent: chance that the final answer contradicts the last step.
    unparsable: chance that the completion states no answer (per problem).
    run_on: chance that the completion runs on into a hallucinated next
      exemplar, as the released PaLM outputs do.
  """

  slip: float = 0.01
  slip_per_digit: float = 0.04
  slip_mul: float = 0.04
  misread: float = 0.03
  skip: float = 0.04
  inconsistent: float = 0.02
  unparsable: float = 0.02
  run_on: float = 0.6

  def slip_rate(self, step: synthetic.Step, result: int) -> float:
    digits = len(str(abs(result)))
    rate = self.slip + self.slip_per_digit * (digits - 1)
    if step.op == "*":
      rate += self.slip_mul
    return rate


PERFECT = ErrorModel(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

# A misread turns "gives away" into an addition and the reverse.
_OPPOSITE = {"+": "-", "-": "+"}


def _slip(rng: random.Random, step: synthetic.Step, result: int) -> int:
  """A wrong result of the kind people and LLMs produce."""
  if step.op == "*" and rng.random() < 0.5:
    # A neighbouring entry of the times table: 7 * 8 -> 7 * 9.
    return step.left * (step.right + rng.choice((-1, 1)))
  if result >= 10 and rng.random() < 0.4:
    return result + rng.choice((-10, 10))  # a dropped or doubled carry
  return result + rng.choice((-2, -1, 1, 1, 2))


class OfflineTeacher:
  """A rule-based few-shot chain-of-thought teacher that needs no network.

  `complete(prompt)` reads the prompt's last question (the text after the last
  `Q:` and before the final `A:`), solves it with the error model and returns
  the completion text an LLM would write after `A:`.

  Attributes:
    name: the teacher's name as stored with each annotation.
  """

  name = "offline-arith"

  def __init__(self, error_model: ErrorModel | None = None, seed: int = 0):
    """Initializes the teacher.

    Args:
      error_model: how it errs; `ErrorModel()` by default, `PERFECT` never errs.
      seed: decorrelates teachers; the same seed gives the same completions.
    """
    self.error_model = ErrorModel() if error_model is None else error_model
    self.seed = seed

  def _rng(self, question: str, sample: int) -> random.Random:
    digest = hashlib.sha256(
      f"{self.seed}\x00{sample}\x00{question}".encode()
    ).hexdigest()
    return random.Random(int(digest[:16], 16))

  def solve(self, question: str, sample: int = 0) -> tuple[str, int | None]:
    """Writes a step-by-step answer to one question.

    Args:
      question: the problem text.
      sample: index of the sample, for several rationales per question.

    Returns:
      (rationale with the final answer sentence, the stated answer or None
      when the completion states none).
    """
    errors = self.error_model
    rng = self._rng(question, sample)
    try:
      gold = synthetic.read_question(question)
    except synthetic.UnreadableQuestionError:
      return "I am not sure how to solve this problem.", None
    if len(gold) >= 3 and rng.random() < errors.skip:
      del gold[rng.randrange(1, len(gold))]
    sentences: list[str] = []
    value: int | None = None
    for step in gold:
      left = step.left if value is None else value
      op = step.op
      if op != "*" and rng.random() < errors.misread:
        op = _OPPOSITE[op]
      written = synthetic.Step(left, op, step.right)
      result = written.result
      if rng.random() < errors.slip_rate(written, result):
        result = _slip(rng, written, result)
      sentences.append(written.text(result))
      value = result
    if not gold:  # a problem with a start value only
      value = int(re.search(r"(\d+)", question).group(1))
    if rng.random() < errors.unparsable:
      return " ".join(sentences), None
    answer = value
    if rng.random() < errors.inconsistent:
      answer = value + rng.choice((-1, 1, 10))
    sentences.append(f"The answer is {answer}.")
    return " ".join(sentences), answer

  def complete(self, prompt: str, sample: int = 0) -> str:
    """The completion for a few-shot prompt that ends with `Q: ...\\nA:`.

    Args:
      prompt: the full prompt; only its last question is answered.
      sample: index of the sample.

    Returns:
      The completion text, possibly running on into a made-up next exemplar.
    """
    question = extract_last_question(prompt)
    text, _ = self.solve(question, sample)
    rng = self._rng(question, sample + 1_000_003)
    if rng.random() < self.error_model.run_on:
      # Like the released PaLM outputs, keep writing the next few-shot block.
      made_up = synthetic.sample_problem(rng, 0, "run-on", 2, 20)
      text += f"\n\nQ: {made_up.question}\nA: {made_up.steps[0].text()}"
    return text


def extract_last_question(prompt: str) -> str:
  """The text of the last `Q:` block of a few-shot prompt.

  Prompts that have no `Q:` marker are taken to be the question itself.
  """
  start = prompt.rfind("Q:")
  body = prompt[start + 2 :] if start >= 0 else prompt
  end = body.rfind("\nA:")
  if end >= 0:
    body = body[:end]
  return body.strip()


class OfflineBackend(base.TeacherBackend):
  """Answers each request with `OfflineTeacher.complete`, instantly."""

  name = OfflineTeacher.name

  def __init__(self, error_model: ErrorModel | None = None, seed: int = 0):
    """Initializes the backend.

    Args:
      error_model: how the teacher errs (`ErrorModel()` by default).
      seed: the teacher's seed.
    """
    self.teacher = OfflineTeacher(error_model, seed)

  async def generate(self, request: prompts.TeacherRequest) -> base.Completion:
    """The offline teacher's completion of the request's prompt."""
    text = self.teacher.complete(request.prompt, request.sample)
    # Four characters per token, the usual English estimate, so the
    # runner's token counters read sensibly.
    return base.Completion(
      text=text,
      finish_reason="STOP",
      input_tokens=len(request.prompt) // 4,
      output_tokens=len(text) // 4,
    )
