"""A small arithmetic reasoning dataset and an offline teacher that annotates it.

The offline quickstart (`dss-jax distill`, no flags) needs a reasoning task whose
rationale carries the intermediate values the label depends on, and a teacher
that needs no network. This module provides both:

* `generate_problems` writes multi-step word problems such as

      Mia has 3 boxes of 4 pens. She gives away 5.

  with the gold rationale `3 * 4 = 12. 12 - 5 = 7.` and the gold label `7`
  (how many the person has at the end; the card's prompt says so once, so
  the problems need no question sentence).
  `read_split` is the reader hook of the demo card, tasks/arith.yaml.

* `OfflineTeacher` plays the part of a few-shot chain-of-thought LLM. It reads
  the last question of a prompt, solves it step by step and writes a completion
  in the style of the released PaLM outputs (`... The answer is 7.`, often
  followed by a hallucinated next exemplar). It is wrong part of the time, with
  an error model shaped like an LLM's: arithmetic slips that grow with the size
  of the numbers, misread operations, skipped steps, answers that contradict
  their own rationale, and completions with no parsable answer. Errors
  propagate through the later steps, as they do in real chains of thought. The
  output is a pure function of (prompt, sample index, seed), so an annotation
  run is reproducible and resumable.

Nothing in this module evaluates model text as code: the teacher reads
questions with fixed regular expressions and computes with integers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re

# The name of the demo task card (tasks/arith.yaml).
TASK_NAME = "arith"

_NAMES = (
  "Mia",
  "Tom",
  "Ava",
  "Sam",
  "Leo",
  "Zoe",
  "Ben",
  "Ivy",
  "Max",
  "Eva",
)
# Pronouns follow the name so the text reads naturally; the solver ignores them.
_PRONOUNS = {
  "Mia": "She",
  "Ava": "She",
  "Zoe": "She",
  "Ivy": "She",
  "Eva": "She",
  "Tom": "He",
  "Sam": "He",
  "Leo": "He",
  "Ben": "He",
  "Max": "He",
}
_ITEMS = ("pens", "cards", "books", "eggs", "cups", "toys", "shells", "coins")
_BOXES = ("boxes", "bags", "packs", "jars")

# One sentence per operation. Each template is (operation, text, pattern). The
# pattern reads the operand back from the sentence; the teacher solves problems
# with these patterns alone, so the question text is all it sees. Sentences
# are terse ("She sells 4.") and there is no question sentence because the
# demo's students are byte-level: input bytes are most of a training step's
# cost, and on the demo's budget a student reading at most 64 bytes learned
# the task better than one reading the 120 bytes of full sentences
# (docs/distill.md).
_START_TEMPLATES = (
  ("=", "{name} has {a} {item}.", r"has (\d+) \w+\.$"),
  (
    "*",
    "{name} has {a} {box} of {b} {item}.",
    r"has (\d+) \w+ of (\d+) \w+\.$",
  ),
)
_STEP_TEMPLATES = (
  ("+", "{pron} buys {c} more.", r"buys (\d+) more"),
  ("+", "{pron} finds {c} more.", r"finds (\d+) more"),
  ("+", "{pron} gets {c} more.", r"gets (\d+) more"),
  ("-", "{pron} gives away {c}.", r"gives away (\d+)"),
  ("-", "{pron} loses {c}.", r"loses (\d+)"),
  ("-", "{pron} sells {c}.", r"sells (\d+)"),
  ("*", "{pron} doubles them.", r"doubles"),
  ("*", "{pron} triples them.", r"triples"),
)
_WORD_FACTORS = {"doubles": 2, "triples": 3}
# Problems of older versions of this module ended with a question; the
# teacher still stops reading there.
_QUESTION_START = "How many"


@dataclasses.dataclass(frozen=True)
class Step:
  """One arithmetic step: `left op right = result`."""

  left: int
  op: str
  right: int

  @property
  def result(self) -> int:
    return _apply(self.left, self.op, self.right)

  def text(self, result: int | None = None) -> str:
    """The step as the rationale writes it, e.g. `12 - 5 = 7.`."""
    shown = self.result if result is None else result
    return f"{self.left} {self.op} {self.right} = {shown}."


@dataclasses.dataclass(frozen=True)
class Problem:
  """A word problem with its gold solution.

  Attributes:
    id: stable identifier, `<split>-<index>`.
    question: the problem text (the student's input).
    steps: the gold solution steps, in order.
    answer: the gold label.
  """

  id: str
  question: str
  steps: tuple[Step, ...]
  answer: int

  @property
  def rationale(self) -> str:
    """The gold rationale: the steps that lead to the label."""
    return " ".join(step.text() for step in self.steps)

  def to_json(self) -> dict[str, object]:
    return {
      "id": self.id,
      "input": self.question,
      "label": str(self.answer),
      "rationale": self.rationale,
      "num_steps": len(self.steps),
    }


def _apply(left: int, op: str, right: int) -> int:
  if op == "+":
    return left + right
  if op == "-":
    return left - right
  if op == "*":
    return left * right
  raise ValueError(f"unknown operation {op!r}")


def _sample_problem(
  rng: random.Random,
  index: int,
  split: str,
  num_ops: int,
  max_operand: int,
  max_factor: int = 9,
) -> Problem:
  """Draws one problem with `num_ops` operations (start included)."""
  name = rng.choice(_NAMES)
  pron = _PRONOUNS[name]
  item = rng.choice(_ITEMS)
  fill = {
    "name": name,
    "pron": pron,
    "item": item,
    "box": rng.choice(_BOXES),
  }
  steps: list[Step] = []
  # A multiplicative start makes the first step carry a product the label
  # needs; half the problems start that way.
  kind, text, _ = rng.choice(_START_TEMPLATES)
  if kind == "*":
    a, b = rng.randint(2, max_factor), rng.randint(2, max_factor)
    sentences = [text.format(a=a, b=b, **fill)]
    steps.append(Step(a, "*", b))
    value = a * b
  else:
    value = rng.randint(2, max_operand)
    sentences = [text.format(a=value, **fill)]
  while len(steps) < num_ops:
    op, text, _ = rng.choice(_STEP_TEMPLATES)
    if op == "*":
      # Keep numbers small enough for a tiny byte-level student.
      factor = 2 if "doubles" in text else 3
      if value * factor > 3 * max_operand or value == 0:
        continue
      operand = factor
    elif op == "-":
      if value < 2:
        continue
      operand = rng.randint(1, min(value, max_operand))
    else:
      operand = rng.randint(1, max_operand)
    sentences.append(text.format(c=operand, **fill))
    steps.append(Step(value, op, operand))
    value = steps[-1].result
  return Problem(
    id=f"{split}-{index}",
    question=" ".join(sentences),
    steps=tuple(steps),
    answer=value,
  )


def generate_problems(
  num: int,
  *,
  split: str = "train",
  seed: int = 0,
  min_ops: int = 2,
  max_ops: int = 3,
  max_operand: int = 20,
  max_factor: int = 9,
) -> list[Problem]:
  """Generates `num` distinct word problems.

  Args:
    num: how many problems.
    split: split name, used in ids and to decorrelate splits.
    seed: random seed; the same arguments give the same problems.
    min_ops: fewest arithmetic steps in a solution.
    max_ops: most arithmetic steps in a solution.
    max_operand: largest number added or subtracted.
    max_factor: largest factor of a multiplicative start (`3 boxes of 4`).

  Returns:
    The problems, with distinct question texts.
  """
  rng = random.Random(f"{TASK_NAME}:{split}:{seed}")
  problems: list[Problem] = []
  seen: set[str] = set()
  while len(problems) < num:
    num_ops = rng.randint(min_ops, max_ops)
    problem = _sample_problem(
      rng, len(problems), split, num_ops, max_operand, max_factor
    )
    if problem.question not in seen:
      seen.add(problem.question)
      problems.append(problem)
  return problems


# --------------------------------------------------------------------------
# The offline teacher.


class UnreadableQuestionError(ValueError):
  """The question does not follow the dataset's sentence templates."""


def read_question(question: str) -> list[Step]:
  """Recovers the solution steps of a question written by this module.

  Args:
    question: the problem text.

  Returns:
    The steps, computed exactly.

  Raises:
    UnreadableQuestionError: a sentence matches no template.
  """
  sentences = re.findall(r"[^.?!]+[.?!]", question)
  steps: list[Step] = []
  value: int | None = None
  for sentence in (s.strip() for s in sentences):
    if sentence.startswith(_QUESTION_START):
      break
    if value is None:
      for kind, _, pattern in _START_TEMPLATES:
        match = re.search(pattern, sentence)
        if match and len(match.groups()) == (2 if kind == "*" else 1):
          numbers = [int(g) for g in match.groups()]
          if kind == "*":
            steps.append(Step(numbers[0], "*", numbers[1]))
            value = steps[-1].result
          else:
            value = numbers[0]
          break
      else:
        raise UnreadableQuestionError(f"no start value in {sentence!r}")
      continue
    for op, _, pattern in _STEP_TEMPLATES:
      match = re.search(pattern, sentence)
      if match:
        if match.groups():
          operand = int(match.group(1))
        else:
          operand = _WORD_FACTORS[match.group(0)]
        steps.append(Step(value, op, operand))
        value = steps[-1].result
        break
    else:
      raise UnreadableQuestionError(f"no operation in {sentence!r}")
  if value is None:
    raise UnreadableQuestionError(f"no problem in {question!r}")
  return steps


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

  def slip_rate(self, step: Step, result: int) -> float:
    digits = len(str(abs(result)))
    rate = self.slip + self.slip_per_digit * (digits - 1)
    if step.op == "*":
      rate += self.slip_mul
    return rate


PERFECT = ErrorModel(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

# A misread turns "gives away" into an addition and the reverse.
_OPPOSITE = {"+": "-", "-": "+"}


def _slip(rng: random.Random, step: Step, result: int) -> int:
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
      gold = read_question(question)
    except UnreadableQuestionError:
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
      written = Step(left, op, step.right)
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
      made_up = _sample_problem(rng, 0, "run-on", 2, 20)
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


# --------------------------------------------------------------------------
# The demo card's data and the teacher backend the annotation runner drives.

# The demo's problems (tasks/arith.yaml reads them through `read_split`):
# two steps with small numbers, so that a tiny byte-level student learns
# the task on one CPU core in two to three minutes per run.
DEMO_GENERATOR = {
  "min_ops": 2,
  "max_ops": 2,
  "max_operand": 9,
  "max_factor": 5,
}
DEMO_SIZES = {"train": 2000, "test": 300}
DEMO_SEED = 0


def demo_problems(split: str) -> list[Problem]:
  """The demo card's problems of one split (deterministic).

  Test problems never repeat a training question.

  Args:
    split: "train" or "test".

  Returns:
    The problems.

  Raises:
    ValueError: for another split.
  """
  if split not in DEMO_SIZES:
    raise ValueError(f"no split {split!r}; the demo has {sorted(DEMO_SIZES)}")
  train = generate_problems(
    DEMO_SIZES["train"], split="train", seed=DEMO_SEED, **DEMO_GENERATOR
  )
  if split == "train":
    return train
  seen = {p.question for p in train}
  test = generate_problems(
    2 * DEMO_SIZES["test"], split="test", seed=DEMO_SEED, **DEMO_GENERATOR
  )
  return [p for p in test if p.question not in seen][: DEMO_SIZES["test"]]


def read_split(split: str) -> list[dict[str, object]]:
  """The reader hook of tasks/arith.yaml: rows with id, input and label."""
  return [p.to_json() for p in demo_problems(split)]


def make_backend(error_model: ErrorModel | None = None, seed: int = 0):
  """The offline teacher behind the annotation runner's backend interface.

  Args:
    error_model: how the teacher errs (`ErrorModel()` by default).
    seed: the teacher's seed.

  Returns:
    A `dss_jax.teacher.backends.TeacherBackend`.
  """
  # Imported here so the dataset generator needs no teacher machinery.
  from dss_jax.teacher.backends import base

  class OfflineTeacherBackend(base.TeacherBackend):
    """Answers each request with `OfflineTeacher.complete`, instantly."""

    def __init__(self):
      self.teacher = OfflineTeacher(error_model, seed)
      self.name = OfflineTeacher.name

    async def generate(self, request) -> base.Completion:
      text = self.teacher.complete(request.prompt, request.sample)
      # Four characters per token, the usual English estimate, so the
      # runner's token counters read sensibly.
      return base.Completion(
        text=text,
        finish_reason="STOP",
        input_tokens=len(request.prompt) // 4,
        output_tokens=len(text) // 4,
      )

  return OfflineTeacherBackend()
