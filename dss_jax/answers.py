"""Answers: a raw teacher completion as (rationale, label), equations by value.

A task card states how its answers are parsed and scored (`cards.TaskCard`'s
`parse_completion`, `is_correct`, `label_key`); this module does the work, so
that cards and everything above them share one parser and one comparison.

Parsing. The rules follow the official Distilling Step-by-Step repository
(`data_utils.py`, `_parse_llm_output`), written as data so that a task card can
state them:

1. cut the completion at the first occurrence of each `cut_at` string (few-shot
   teachers run on into a made-up next example, "\\n\\nQ: ..."), then strip;
2. split on the answer marker ("So the answer is", "The answer is",
   "Answer:"); the marker must occur exactly once, as in the official code,
   where any other count is a failure;
3. the rationale is the text before the marker; the label is the text after it,
   optionally narrowed by a regular expression (CQA: the text after "(c)";
   SVAMP: the parenthesised equation), stripped, with one trailing period
   removed;
4. where the card has a closed label space, a label outside it is unparsable.

A card whose answers need more than this names a hook instead: a dotted path
`package.module:function` taking the completion and returning
`(rationale, label or None)`.

Equations. SVAMP labels are equations such as "( 84.0 / 2.0 )" and the teacher
writes its answer as "(84 / 2)". Both are compared by value through
`dss_jax.metrics.evaluate_equation`, the project's one safe evaluator (numbers,
`+ - * /`, parentheses and unary signs; never Python's eval), adapted here to
the teacher's needs: None for an unusable answer, and a tolerant comparison
for votes between differently ordered equations.
"""

import dataclasses
import functools
import importlib
import math
import re
from collections.abc import Callable, Sequence

from dss_jax import errors, metrics


@dataclasses.dataclass(frozen=True)
class ParsedAnswer:
  """A parsed teacher completion.

  Attributes:
    rationale: the reasoning text before the answer ('' when none).
    label: the answer, or None when the completion has no parsable answer.
  """

  rationale: str
  label: str | None

  @property
  def ok(self) -> bool:
    """Whether a label was found."""
    return self.label is not None


UNPARSABLE = ParsedAnswer(rationale="", label=None)


@functools.lru_cache(maxsize=64)
def _compile(pattern: str) -> re.Pattern[str]:
  return re.compile(pattern)


def parse_with_rules(
  text: str,
  *,
  answer_marker: str,
  cut_at: Sequence[str] = (),
  label_regex: str | None = None,
  label_group: int = 0,
  strip_suffix: str = ".",
  labels: Sequence[str] | None = None,
) -> ParsedAnswer:
  """Parses a completion with the official repository's rules.

  Args:
    text: the raw completion.
    answer_marker: the phrase that introduces the answer.
    cut_at: strings where a run-on completion is cut (first occurrence each).
    label_regex: when set, the label is this regex's `label_group` in the text
      after the marker (searched, not matched); no match is a failure.
    label_group: the regex group that holds the label.
    strip_suffix: removed once from the end of the stripped label.
    labels: a closed label space; a label outside it (compared without case) is
      a failure and a label inside it is returned in its canonical spelling.

  Returns:
    The rationale and the label (None when unparsable).
  """
  for stop in cut_at:
    text = text.split(stop, 1)[0]
  text = text.rstrip()
  parts = text.split(answer_marker)
  if len(parts) != 2:
    return UNPARSABLE
  rationale, label = parts[0].strip(), parts[1]
  if label_regex is not None:
    match = _compile(label_regex).search(label)
    if match is None:
      return ParsedAnswer(rationale=rationale, label=None)
    label = match.group(label_group) or ""
  label = label.strip()
  if strip_suffix and label.endswith(strip_suffix):
    label = label[: -len(strip_suffix)].rstrip()
  if not label:
    return ParsedAnswer(rationale=rationale, label=None)
  if labels is not None:
    canonical = {name.lower(): name for name in labels}
    label = canonical.get(label.lower())
  return ParsedAnswer(rationale=rationale, label=label)


def load_hook(path: str) -> Callable[[str], tuple[str, str | None]]:
  """Imports a parser hook given as "package.module:function".

  Args:
    path: the dotted path.

  Returns:
    The function.

  Raises:
    ValueError: when the path is malformed or names nothing callable.
  """
  module_name, sep, attr = path.partition(":")
  if not sep or not module_name or not attr:
    raise errors.UserError(f"expected 'package.module:function', got {path!r}")
  try:
    fn = getattr(importlib.import_module(module_name), attr)
  except (ImportError, AttributeError) as e:
    raise errors.UserError(f"cannot import {path!r}: {e}") from e
  if not callable(fn):
    raise errors.UserError(f"{path!r} is not callable")
  return fn


def parse_with_hook(text: str, hook: str) -> ParsedAnswer:
  """Parses a completion with a user hook.

  Args:
    text: the raw completion.
    hook: "package.module:function"; the function returns (rationale, label).

  Returns:
    The parsed answer; a hook that raises counts as unparsable.
  """
  fn = load_hook(hook)
  try:
    rationale, label = fn(text)
  except Exception:  # noqa: BLE001 - a user's parser failing = unparsable.
    return UNPARSABLE
  label = label.strip() if isinstance(label, str) and label.strip() else None
  return ParsedAnswer(rationale=(rationale or "").strip(), label=label)


def evaluate_equation(text: str | None) -> float | None:
  """Evaluates an arithmetic expression without `eval`.

  Args:
    text: an expression such as "( 10.0 - ( 6.0 + 3.0 ) )".

  Returns:
    The value as a float, or None when the text is empty, is not plain
    arithmetic, divides by zero or does not give a finite number.
  """
  if not text:
    return None
  value = metrics.evaluate_equation(text)
  return value if math.isfinite(value) else None


def equations_equal(predicted: str | None, gold: str | None) -> bool:
  """Whether two equations have the same value.

  A relative tolerance of 1e-9 absorbs float rounding from a different order of
  operations ("(3 + 6) / 10" vs "0.9") without equating different answers.

  Args:
    predicted: the teacher's or student's equation.
    gold: the reference equation.

  Returns:
    True when both evaluate and their values agree; False otherwise.
  """
  a, b = evaluate_equation(predicted), evaluate_equation(gold)
  if a is None or b is None:
    return False
  return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
