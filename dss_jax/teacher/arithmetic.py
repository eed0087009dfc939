"""A safe evaluator for the arithmetic equations of math word problems.

SVAMP labels are equations such as "( 84.0 / 2.0 )" and the teacher writes its
answer as "(84 / 2)". Both are compared by value. Teacher output is data, never
code, so this module walks the Python AST of the text and accepts only numbers,
the four operators `+ - * /`, parentheses and unary minus/plus; anything else
(names, calls, attributes, powers, ...) is rejected.
"""

import ast
import math

# Equations in SVAMP are at most a few dozen characters; the cap bounds the
# parser's work and recursion depth on adversarial teacher output.
_MAX_CHARS = 512
_BIN_OPS = {
  ast.Add: lambda a, b: a + b,
  ast.Sub: lambda a, b: a - b,
  ast.Mult: lambda a, b: a * b,
  ast.Div: lambda a, b: a / b,
}


class _Rejected(ValueError):
  """The expression uses something other than plain arithmetic."""


def _value(node: ast.AST) -> float:
  if isinstance(node, ast.Constant):
    # bool is a subclass of int; "True + 1" is not an equation.
    if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
      raise _Rejected(f"not a number: {node.value!r}")
    return float(node.value)
  if isinstance(node, ast.BinOp) and type(node.op) in _BIN_OPS:
    return _BIN_OPS[type(node.op)](_value(node.left), _value(node.right))
  if isinstance(node, ast.UnaryOp) and isinstance(
    node.op, (ast.USub, ast.UAdd)
  ):
    operand = _value(node.operand)
    return -operand if isinstance(node.op, ast.USub) else operand
  raise _Rejected(f"not arithmetic: {type(node).__name__}")


def evaluate_equation(text: str | None) -> float | None:
  """Evaluates an arithmetic expression without `eval`.

  Args:
    text: an expression such as "( 10.0 - ( 6.0 + 3.0 ) )".

  Returns:
    The value as a float, or None when the text is empty, is not plain
    arithmetic, divides by zero or does not give a finite number.
  """
  if not text or len(text) > _MAX_CHARS:
    return None
  try:
    tree = ast.parse(text.strip(), mode="eval")
    value = _value(tree.body)
  except (SyntaxError, _Rejected, ZeroDivisionError, OverflowError):
    return None
  except (RecursionError, MemoryError, ValueError):
    return None
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
