"""Answer parsing and the safe equation evaluator, on the paper's outputs."""

import pytest

from dss_jax import answers, cards
from dss_jax.teacher import sources


def _replay_stats(card_name, split, paper_data_dir):
  card = cards.load_card(card_name)
  pairs = sources.read_replay(card, split, sources.find_root(paper_data_dir))
  parsed = [card.parse_completion(text) for _, text in pairs]
  failures = sum(not p.ok for p in parsed)
  correct = sum(
    card.is_correct(p.label, e.gold_label)
    for p, (e, _) in zip(parsed, pairs, strict=True)
  )
  return len(pairs), failures, round(100 * correct / len(pairs), 2)


# Numbers of the official parsing rules on the released PaLM-540B outputs.
@pytest.mark.parametrize(
  "card,split,expected",
  [
    ("cqa", "test", (1221, 0, 77.23)),
    ("cqa", "train", (9741, 3, 74.26)),
    ("svamp", "test", (200, 2, 74.00)),
    # The official eval() also accepts "(a) and (b)" (Python's `and`); the safe
    # evaluator does not, which costs two train examples (73.50 -> 73.25).
    ("svamp", "train", (800, 13, 73.25)),
  ],
)
def test_replay_accuracy_full_release(
  card, split, expected, full_paper_data_dir
):
  assert _replay_stats(card, split, full_paper_data_dir) == expected


# The same rules on the slices in tests/testdata (the first rows of each split;
# SVAMP test and the NLI samples, 64 rows each in the release, whole).
@pytest.mark.parametrize(
  "card,split,expected",
  [
    ("cqa", "test", (200, 0, 77.5)),
    ("cqa", "train", (300, 0, 72.67)),
    ("svamp", "test", (200, 2, 74.00)),
    ("svamp", "train", (300, 4, 75.33)),
    ("anli1", "valid", (64, 0, 71.88)),
    ("esnli", "valid", (64, 0, 73.44)),
  ],
)
def test_replay_accuracy_slices(card, split, expected, paper_data_slices):
  assert _replay_stats(card, split, paper_data_slices) == expected


def test_cqa_cuts_run_on_example():
  card = cards.load_card("cqa")
  text = (
    "Beavers build with wood. So the answer is (c) wooded area.\n\n"
    "Q: What is red?\nAnswer Choices:\n(a) sky\nA: So the answer is (a) sky."
  )
  assert card.parse_completion(text) == cards.ParsedAnswer(
    "Beavers build with wood.", "wooded area"
  )
  assert card.parse_completion("I do not know.").label is None
  assert card.parse_completion("So the answer is unclear.").label is None


def test_svamp_label_is_parenthesised_equation():
  card = cards.load_card("svamp")
  parsed = card.parse_completion(
    "10 * 45 is 450. The answer is (10 * 45).\n\nQ: next"
  )
  assert parsed == cards.ParsedAnswer("10 * 45 is 450.", "(10 * 45)")
  assert card.is_correct(parsed.label, "( 10.0 * 45.0 )")
  assert not card.is_correct(parsed.label, "( 10.0 + 45.0 )")
  assert card.parse_completion("The answer is 450.").label is None


def test_esnli_and_anli_formats():
  esnli = cards.load_card("esnli")
  parsed = esnli.parse_completion(
    "Packages may not be lunch.\nAnswer: neutral\n\nPremise: x\nHypothesis: y"
  )
  assert parsed == cards.ParsedAnswer("Packages may not be lunch.", "neutral")
  # A label outside the NLI label space is unparsable.
  assert esnli.parse_completion("r\nAnswer: maybe").label is None
  anli = cards.load_card("anli1")
  parsed = anli.parse_completion(
    "He was a senator. So the answer is Entailment.\n\nPremise: more"
  )
  assert parsed == cards.ParsedAnswer("He was a senator.", "entailment")


@pytest.mark.parametrize(
  "text,value",
  [
    ("( 84.0 / 2.0 )", 42.0),
    ("(10 - (3 + 6))", 1.0),
    ("-(2 * 3) + +1", -5.0),
    ("1e3 / 4", 250.0),
  ],
)
def test_arithmetic_values(text, value):
  assert answers.evaluate_equation(text) == value


@pytest.mark.parametrize(
  "text",
  [
    "__import__('os').system('true')",
    "(1).__class__",
    "2 ** 10",
    "x + 1",
    "abs(-1)",
    "(1) and (2)",
    "True + 1",
    "'a' * 3",
    "1 / 0",
    "(" * 400 + "1" + ")" * 400,
    "",
    None,
  ],
)
def test_arithmetic_rejects_non_arithmetic(text):
  assert answers.evaluate_equation(text) is None
