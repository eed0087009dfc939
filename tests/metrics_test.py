"""Tests for dss_jax.metrics: safe SVAMP evaluator, accuracy, ROUGE-L."""

import json
import math
import re

import pytest

from dss_jax import metrics


@pytest.mark.parametrize(
  "equation, value",
  [
    ("( 84.0 / 2.0 )", 42.0),
    ("(84 / 2)", 42.0),
    ("(10 - (3 + 6))", 1.0),
    ("2 + 3 * 4", 14.0),
    ("(2 + 3) * 4", 20.0),
    ("-(5 - 8)", 3.0),
    ("(45 - (-1))", 46.0),
    ("+7", 7.0),
    ("  ( 1.5 * 2 )\n", 3.0),
  ],
)
def test_evaluate_equation_values(equation, value):
  assert metrics.evaluate_equation(equation) == value


@pytest.mark.parametrize(
  "text",
  [
    "__import__('os')",
    "__import__('os').system('true')",
    "(2 ** 10)",
    "(7 // 2)",
    "(7 % 2)",
    "(23 + x)",
    "(14, 21)",
    "(8 / 4) and (6 / 4)",
    "True + 1",
    "'a' * 3",
    "[1][0]",
    "(lambda: 1)()",
    "1 / 0",
    "",
    " ",
    "1 +",
    "(" * 500 + "1" + ")" * 500,
    "1+" * 5000 + "1",
  ],
)
def test_evaluate_equation_rejects(text):
  assert math.isnan(metrics.evaluate_equation(text))


def test_malicious_equation_is_never_executed(tmp_path, monkeypatch):
  marker = tmp_path / "executed"
  payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"
  calls = []
  real_import = __import__

  def spy_import(name, *args, **kwargs):
    calls.append(name)
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr("builtins.__import__", spy_import)
  score = metrics.equation_accuracy(["( 1.0 + 1.0 )"], [payload])
  monkeypatch.undo()
  assert score == {"accuracy": 0.0}
  assert not marker.exists()
  assert "pathlib" not in calls


def _official_svamp_label(completion: str) -> str:
  """SVAMPDatasetLoader._parse_llm_output of the official repository."""
  text = completion.split("Q:")[0].rstrip()
  try:
    _, label = text.split("The answer is")
  except ValueError:
    return " "
  found = re.search(r"\(.*\)", label)
  return found.group(0) if found else " "


def _svamp(paper_data_dir, split, batches):
  folder = paper_data_dir / "svamp"
  with open(folder / f"svamp_{split}.json") as f:
    gold = [json.loads(line)["label"] for line in f]
  completions = []
  for i in range(batches):
    completions += json.loads(
      (folder / "llm" / f"{split}_CoT_{i}.json").read_text()
    )
  assert len(gold) == len(completions)
  return gold, [_official_svamp_label(c) for c in completions]


def test_svamp_teacher_accuracy_matches_official_rules(paper_data_dir):
  # The paper's released PaLM-540B outputs, parsed by the official rules:
  # 148 of 200 test equations have the gold value; 2 have no answer at all.
  gold, teacher = _svamp(paper_data_dir, "test", 1)
  assert teacher.count(" ") == 2
  assert metrics.equation_accuracy(gold, teacher)["accuracy"] == pytest.approx(
    74.0
  )
  # Train: 13 of 800 without an answer in the release; the first 300 rows (the
  # slice in tests/testdata) have 4.
  gold, teacher = _svamp(paper_data_dir, "train", 2)
  failures, accuracy = {800: (13, 73.25), 300: (4, 75.33)}[len(gold)]
  assert teacher.count(" ") == failures
  assert metrics.equation_accuracy(gold, teacher)["accuracy"] == pytest.approx(
    accuracy, abs=0.005
  )


def test_svamp_card_parser_agrees_with_official_rules(paper_data_dir):
  from dss_jax import cards

  card = cards.load_card("svamp")
  gold, official = _svamp(paper_data_dir, "test", 1)
  completions = json.loads(
    (paper_data_dir / "svamp" / "llm" / "test_CoT_0.json").read_text()
  )
  parsed = [card.parse_completion(c).label or "" for c in completions]
  assert metrics.equation_accuracy(gold, parsed) == metrics.equation_accuracy(
    gold, official
  )


def test_label_accuracy_normalizes():
  targets = ["neutral", "bank", "Heading North", "yes"]
  predictions = [" Neutral.", "bank ", "heading  north", "no"]
  assert metrics.label_accuracy(targets, predictions) == {"accuracy": 75.0}
  assert metrics.normalize_label("  The  Bank.\n") == "the bank"


def test_rationale_rouge_l():
  same = metrics.rationale_rouge_l(
    ["a cat sat on the mat"], ["a cat sat on the mat"]
  )
  assert same["rougeL"] == pytest.approx(100.0)
  none = metrics.rationale_rouge_l(["a cat sat"], ["dogs run fast"])
  assert none["rougeL"] == pytest.approx(0.0)
  half = metrics.rationale_rouge_l(["a b c d"], ["a b x y"])
  assert half["rougeL"] == pytest.approx(50.0)


def test_length_mismatch_raises():
  with pytest.raises(ValueError, match="2 targets but 1 predictions"):
    metrics.label_accuracy(["a", "b"], ["a"])


def test_postprocess_and_metric_selection():
  assert metrics.postprocess_text(b" (1 + 2) \n") == "(1 + 2)"
  assert metrics.metric_fns_for("equation_accuracy") == [
    metrics.equation_accuracy
  ]
  assert metrics.metric_fns_for("accuracy") == [metrics.label_accuracy]
  with pytest.raises(ValueError, match="unknown metric"):
    metrics.metric_fns_for("bleu")
