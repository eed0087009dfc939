"""Self-consistency: k teacher samples of one example -> one annotation.

The label is the majority vote over parsable samples (equations vote by value,
see TaskCard.label_key); ties go to the label seen first. Kept rationales are
those whose own label agrees with the vote, or, with `keep="vote_or_gold"`,
with the gold label (the issue's "agree with the vote or with the gold label").
"""

import collections
import dataclasses
from collections.abc import Sequence
from typing import Literal

from dss_jax import cards as cards_lib


@dataclasses.dataclass(frozen=True)
class Annotation:
  """The teacher's annotation of one example.

  Attributes:
    teacher_label: the voted label ('' when no sample parsed).
    rationale: the first kept rationale ('' when none).
    rationales: all kept rationales, in sample order.
    num_samples: samples seen.
    num_parsed: samples with a parsable label.
  """

  teacher_label: str
  rationale: str
  rationales: tuple[str, ...]
  num_samples: int
  num_parsed: int


def aggregate(
  card: cards_lib.TaskCard,
  completions: Sequence[str],
  gold_label: str = "",
  keep: Literal["vote", "vote_or_gold"] = "vote",
) -> Annotation:
  """Parses k completions and votes.

  Args:
    card: the task card (parser and label equivalence).
    completions: the raw completions, in sample order.
    gold_label: the gold label, used only when keep="vote_or_gold".
    keep: which rationales to keep.

  Returns:
    The annotation.
  """
  parsed = [card.parse_completion(text) for text in completions]
  labelled = [p for p in parsed if p.ok and p.rationale]
  if not labelled:
    return Annotation("", "", (), len(parsed), 0)
  counts = collections.Counter(card.label_key(p.label) for p in labelled)
  order = {}
  for p in labelled:
    order.setdefault(card.label_key(p.label), p.label)
  winner = max(order, key=lambda k: counts[k])  # first-seen wins ties
  gold_key = card.label_key(gold_label) if gold_label else None
  kept = tuple(
    p.rationale
    for p in labelled
    if card.label_key(p.label) == winner
    or (keep == "vote_or_gold" and card.label_key(p.label) == gold_key)
  )
  return Annotation(
    teacher_label=order[winner],
    rationale=kept[0],
    rationales=kept,
    num_samples=len(parsed),
    num_parsed=len(labelled),
  )
