"""A small arithmetic reasoning dataset: the demo card's problems.

The offline quickstart (`dss-jax distill`, no flags) needs a reasoning task whose
rationale carries the intermediate values the label depends on. This module
writes it:

* `generate_problems` writes multi-step word problems such as

      Mia has 3 boxes of 4 pens. She gives away 5.

  with the gold rationale `3 * 4 = 12. 12 - 5 = 7.` and the gold label `7`
  (how many the person has at the end; the card's prompt says so once, so
  the problems need no question sentence).
  `read_split` is the reader hook of the demo card, tasks/arith.yaml.

* `read_question` recovers the solution steps of a problem from its text
  only, with fixed regular expressions: the offline teacher
  (`dss_jax.teacher.backends.offline`) solves the problems this way.

Nothing in this module evaluates text as code.
"""

from __future__ import annotations

import dataclasses
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


def sample_problem(
  rng: random.Random,
  index: int,
  split: str,
  num_ops: int,
  max_operand: int,
  max_factor: int = 9,
) -> Problem:
  """Draws one problem with `num_ops` operations (start included).

  Args:
    rng: the random source; the problem is a function of its state.
    index: the problem's index, for its id (`<split>-<index>`).
    split: the split name, for its id.
    num_ops: arithmetic steps in the solution.
    max_operand: largest number added or subtracted.
    max_factor: largest factor of a multiplicative start.

  Returns:
    The problem.
  """
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
    problem = sample_problem(
      rng, len(problems), split, num_ops, max_operand, max_factor
    )
    if problem.question not in seen:
      seen.add(problem.question)
      problems.append(problem)
  return problems


# --------------------------------------------------------------------------
# Reading a problem back.


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


# --------------------------------------------------------------------------
# The demo card's data.

# The demo's problems (tasks/arith.yaml reads them through `read_split`):
# two steps with small numbers, so that a tiny byte-level student learns
# the task on one CPU core in two to three minutes per run.
DEMO_GENERATOR = {
  "min_ops": 2,
  "max_ops": 2,
  "max_operand": 9,
  "max_factor": 5,
}
DEMO_SIZES = {"train": 4000, "test": 300}
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
