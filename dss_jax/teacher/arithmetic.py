"""Equation answers of math word problems, compared by value.

SVAMP labels are equations such as "( 84.0 / 2.0 )" and the teacher writes its
answer as "(84 / 2)". Both are compared by value through
`dss_jax.metrics.evaluate_equation`, the project's one safe evaluator (numbers,
`+ - * /`, parentheses and unary signs; never Python's eval). This module only
adapts it to the teacher's needs: None for an unusable answer, and a tolerant
comparison for votes between differently ordered equations.
"""

import math

from dss_jax import metrics


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
