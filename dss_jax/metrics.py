"""Metrics and postprocessors for the DSS SeqIO evaluation tasks.

SeqIO calls a task's `postprocess_fn` on every decoded prediction and target,
then its `metric_fns(targets, predictions)`. The metrics here follow the
official Distilling Step-by-Step evaluation:

* label accuracy: exact match of the label strings, after a light
  normalization (case, surrounding whitespace, a final period) so that
  `"Neutral."` and `"neutral"` count as the same answer;
* SVAMP equation accuracy: a predicted equation is right when it evaluates to
  the same number as the gold equation. The official code calls Python's
  `eval`; teacher and student output is data, never code, so equations go
  through `evaluate_equation`, a small arithmetic evaluator over Python's
  parse tree that knows numbers, `+ - * /`, parentheses and unary signs and
  nothing else. Anything else (`__import__('os')`, names, calls, `**`) scores
  as wrong and is never run;
* rationale overlap: ROUGE-L F-measure (the `rouge_score` package), reported
  for the rationale tasks.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

# Longer inputs are not equations a student or teacher writes; the cap bounds
# the parser's work on hostile input.
MAX_EQUATION_CHARS = 2_000

_BINARY_OPS: Mapping[type[ast.operator], Callable[[Any, Any], Any]] = {
  ast.Add: operator.add,
  ast.Sub: operator.sub,
  ast.Mult: operator.mul,
  ast.Div: operator.truediv,
}
_UNARY_OPS: Mapping[type[ast.unaryop], Callable[[Any], Any]] = {
  ast.USub: operator.neg,
  # Python's eval accepts "+3"; keeping it scores such answers as the official
  # code does, and it cannot do anything but return its operand.
  ast.UAdd: operator.pos,
}


class UnsafeExpressionError(ValueError):
  """An equation uses something other than numbers and + - * /."""


def _evaluate_node(node: ast.AST) -> int | float:
  """Evaluates one node of an arithmetic parse tree.

  Args:
    node: a node from `ast.parse(..., mode="eval")`.

  Returns:
    The value, with Python's int and float semantics (as `eval` would give).

  Raises:
    UnsafeExpressionError: for any node that is not a number or an allowed
      operator.
  """
  if isinstance(node, ast.Expression):
    return _evaluate_node(node.body)
  if isinstance(node, ast.Constant):
    value = node.value
    # bool is an int subclass; "True" is not a number in an equation.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return value
    raise UnsafeExpressionError(f"not a number: {value!r}")
  if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
    left = _evaluate_node(node.left)
    right = _evaluate_node(node.right)
    return _BINARY_OPS[type(node.op)](left, right)
  if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPS:
    return _UNARY_OPS[type(node.op)](_evaluate_node(node.operand))
  raise UnsafeExpressionError(
    f"not allowed in an equation: {type(node).__name__}"
  )


def evaluate_equation(equation: str) -> float:
  """Evaluates an arithmetic equation without executing it.

  The text is parsed with `ast.parse` (so numbers and precedence read exactly
  as Python reads them) and the tree is walked by hand; only numeric
  literals, binary `+ - * /`, unary `-`/`+` and parentheses are accepted.

  Args:
    equation: text such as `"( 84.0 / 2.0 )"` or `"(10 - (3 + 6))"`.

  Returns:
    The value as a float, or NaN when the text is not such an equation, is
    too long, divides by zero or overflows. NaN never equals anything, so an
    unusable equation always scores as wrong, as in the official code.
  """
  if not isinstance(equation, str) or len(equation) > MAX_EQUATION_CHARS:
    return math.nan
  try:
    tree = ast.parse(equation.strip(), mode="eval")
    return float(_evaluate_node(tree))
  # Parse errors, unsafe nodes, division by zero, overflow, too deep nesting.
  except (
    SyntaxError,
    ValueError,
    ArithmeticError,
    RecursionError,
    MemoryError,
  ):
    return math.nan


def equation_accuracy(
  targets: Sequence[str], predictions: Sequence[str]
) -> dict[str, float]:
  """SVAMP accuracy: the share of predictions equal in value to the target.

  Args:
    targets: gold equations.
    predictions: predicted equations (same length).

  Returns:
    `{"accuracy": percent}`; values are compared as float64, exactly as
    the official `np.array(preds) == np.array(labels)`.

  Raises:
    ValueError: if the lengths differ.
  """
  _check_lengths(targets, predictions)
  if not targets:
    return {"accuracy": 0.0}
  gold = np.array([evaluate_equation(t) for t in targets], dtype=np.float64)
  pred = np.array([evaluate_equation(p) for p in predictions], dtype=np.float64)
  return {"accuracy": 100.0 * float(np.mean(gold == pred))}


_SPACES = re.compile(r"\s+")


def normalize_label(text: str) -> str:
  """Normalizes a label for exact-match comparison.

  Lower-cases, collapses runs of whitespace and drops surrounding whitespace
  and one final period: the teacher and the student both end labels with a
  period now and then, which the paper's parsers also strip.

  Args:
    text: a label string.

  Returns:
    The normalized label.
  """
  text = _SPACES.sub(" ", text).strip().lower()
  if text.endswith("."):
    text = text[:-1].rstrip()
  return text


def label_accuracy(
  targets: Sequence[str], predictions: Sequence[str]
) -> dict[str, float]:
  """Normalized exact-match accuracy of labels, in percent.

  Args:
    targets: gold labels.
    predictions: predicted labels (same length).

  Returns:
    `{"accuracy": percent}`.

  Raises:
    ValueError: if the lengths differ.
  """
  _check_lengths(targets, predictions)
  if not targets:
    return {"accuracy": 0.0}
  hits = [
    normalize_label(t) == normalize_label(p)
    for t, p in zip(targets, predictions, strict=True)
  ]
  return {"accuracy": 100.0 * float(np.mean(hits))}


def rationale_rouge_l(
  targets: Sequence[str], predictions: Sequence[str]
) -> dict[str, float]:
  """Mean ROUGE-L F-measure of predicted rationales, in percent.

  Args:
    targets: reference rationales (the teacher's).
    predictions: generated rationales (same length).

  Returns:
    `{"rougeL": percent}`.

  Raises:
    ValueError: if the lengths differ.
  """
  # Imported here: rouge_score loads nltk (about 1 s), and only rationale
  # evaluation needs it, not training or label evaluation.
  from rouge_score import rouge_scorer

  _check_lengths(targets, predictions)
  if not targets:
    return {"rougeL": 0.0}
  scorer = rouge_scorer.RougeScorer(["rougeL"])
  scores = [
    scorer.score(t, p)["rougeL"].fmeasure
    for t, p in zip(targets, predictions, strict=True)
  ]
  return {"rougeL": 100.0 * float(np.mean(scores))}


def postprocess_text(
  output: str | bytes,
  example: Mapping[str, Any] | None = None,
  is_target: bool = False,
) -> str:
  """SeqIO postprocessor: decoded text with surrounding whitespace removed.

  Args:
    output: the decoded prediction or target.
    example: the input example (unused; part of SeqIO's signature).
    is_target: whether `output` is a target (unused).

  Returns:
    The stripped text.
  """
  del example, is_target
  if isinstance(output, bytes):
    output = output.decode("utf-8", errors="replace")
  return output.strip()


def metric_fns_for(metric: str) -> list[Callable[..., dict[str, float]]]:
  """The label-task metric functions for a task card's `metric` field.

  Args:
    metric: `"accuracy"` or `"equation_accuracy"`.

  Returns:
    A list of SeqIO metric functions.

  Raises:
    ValueError: for an unknown metric name.
  """
  if metric == "accuracy":
    return [label_accuracy]
  if metric == "equation_accuracy":
    return [equation_accuracy]
  raise ValueError(
    f"unknown metric {metric!r}; expected 'accuracy' or 'equation_accuracy'"
  )


def _check_lengths(targets: Sequence[Any], predictions: Sequence[Any]) -> None:
  if len(targets) != len(predictions):
    raise ValueError(
      f"{len(targets)} targets but {len(predictions)} predictions"
    )
