"""A few test examples: the student's rationale and label beside the teacher's.

The end of `dss-jax distill` shows what a distilling step-by-step student
learned: for the first test examples it decodes the `explain: ` task (the
rationale, which scoring never uses) and the `predict: ` task (the label that
is scored), greedily, and prints both beside the teacher's annotation and the
gold label:

    Mia has 4 boxes of 5 pens. She gives away 9. How many now?
      teacher   4 * 5 = 20. 20 - 9 = 11.  -> 11
      student   4 * 5 = 20. 20 - 9 = 11.  -> 11   (gold 11)

The inputs are the SeqIO tasks' own test examples, so the student reads
exactly what it was scored on.
"""

from __future__ import annotations

import dataclasses
import itertools
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import seqio
import tensorflow as tf

from dss_jax import cards, evaluation, inference
from dss_jax.models import t5


@dataclasses.dataclass(frozen=True)
class Example:
  """One test example with both models' outputs."""

  input: str
  gold_label: str
  teacher_rationale: str
  teacher_label: str
  student_rationale: str
  student_label: str


def _first_rows(
  task_name: str, lengths: dict[str, int], count: int
) -> list[dict[str, Any]]:
  task = seqio.get_mixture_or_task(task_name)
  # Traced without AutoGraph, as the training pipeline is (see
  # dss_jax.input_pipeline).
  ds = tf.autograph.experimental.do_not_convert(task.get_dataset)(
    lengths, split="test", shuffle=False, seed=0
  )
  return list(itertools.islice(ds.as_numpy_iterator(), count))


def _padded(rows: Sequence[dict[str, Any]], length: int) -> list[np.ndarray]:
  out = []
  for row in rows:
    tokens = np.zeros(length, np.int32)
    ids = row["inputs"][:length]
    tokens[: len(ids)] = ids
    out.append(tokens)
  return out


def _decode_text(
  vocabulary: seqio.Vocabulary,
  model: t5.Transformer,
  params: t5.Params,
  inputs: list[np.ndarray],
  length: int,
) -> list[str]:
  tokens = evaluation.predict_tokens(
    model,
    params,
    inputs,
    batch_size=len(inputs),
    decode=evaluation.DecodeConfig(),
    max_decode_length=length,
  )
  return inference.texts_of_tokens(vocabulary, tokens)


def student_examples(
  *,
  model: t5.Transformer,
  params: t5.Params,
  vocabulary: seqio.Vocabulary,
  label_task: str,
  rationale_task: str,
  teacher_rows: Mapping[str, Mapping[str, str]],
  inputs_length: int,
  targets_length: int,
  label_length: int,
  label_prefix: str = cards.LABEL_PREFIX,
  count: int = 3,
) -> list[Example]:
  """Decodes the first `count` test examples with both of a student's tasks.

  Args:
    model: the student (`dss_jax.models.t5.Transformer`).
    params: its parameters.
    vocabulary: the tasks' vocabulary.
    label_task: the registered `..._label` task ("predict: " inputs).
    rationale_task: the registered `..._rationale` task ("explain: ").
    teacher_rows: the annotated test split by student input (TFDS
      features `gold_label`, `teacher_label`, `rationale`, as text).
    inputs_length: input tokens.
    targets_length: rationale tokens to decode at most.
    label_length: label tokens to decode at most.
    label_prefix: the label task's input prefix.
    count: how many examples.

  Returns:
    The examples, in test-split order.
  """
  lengths = {"inputs": inputs_length, "targets": targets_length}
  explain = _first_rows(rationale_task, lengths, count)
  predict = _first_rows(label_task, lengths, count)
  rationales = _decode_text(
    vocabulary, model, params, _padded(explain, inputs_length), targets_length
  )
  labels = _decode_text(
    vocabulary, model, params, _padded(predict, inputs_length), label_length
  )
  examples = []
  for row, rationale, label in zip(predict, rationales, labels, strict=True):
    # Matched by text: TFDS and SeqIO need not read the split in one order.
    text = row["inputs_pretokenized"].decode().removeprefix(label_prefix)
    teacher = teacher_rows[text]
    examples.append(
      Example(
        input=text,
        gold_label=teacher["gold_label"],
        teacher_rationale=teacher["rationale"],
        teacher_label=teacher["teacher_label"] or "(none)",
        student_rationale=rationale,
        student_label=label,
      )
    )
  return examples


def format_examples(examples: Sequence[Example], width: int = 100) -> str:
  """The examples as aligned text blocks for the terminal."""
  blocks = []
  for i, ex in enumerate(examples, start=1):
    lines = textwrap.wrap(f"{i}. {ex.input}", width) or [f"{i}."]
    pad = max(len(ex.teacher_rationale), len(ex.student_rationale))
    lines.append(
      f"   teacher  {ex.teacher_rationale:<{pad}}  -> {ex.teacher_label}"
    )
    mark = "right" if ex.student_label == ex.gold_label else "wrong"
    lines.append(
      f"   student  {ex.student_rationale:<{pad}}  -> {ex.student_label}"
      f"   (gold {ex.gold_label}; student {mark})"
    )
    blocks.append("\n".join(lines))
  return "\n".join(blocks) + "\n"
