"""Tests for dss_jax.infer: labels and rationales for files and task splits.

Run: .venv/bin/pytest tests/infer_test.py -q
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf

from dss_jax import decoding, infer, metrics, t5x_checkpoints
from dss_jax.models import t5

_INPUT_LENGTH, _DECODE_LENGTH = 48, 4
_CQA_FIELDS = {
  "question": "Where do you keep milk?",
  "choices": ["fridge", "oven", "car", "roof", "shoe"],
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  model, _ = t5.make_test_model()
  tokens = np.ones((1, 4), np.int32)
  params = model.init(
    jax.random.PRNGKey(3), tokens, tokens, tokens, enable_dropout=False
  )["params"]
  path = tmp_path_factory.mktemp("model")
  t5x_checkpoints.save_t5x_checkpoint(params, path, 100)
  return model, params, str(path)


def _direct_greedy(model, params, text: str) -> str:
  """Greedy decoding of one text, tokenized by hand (the reference)."""
  vocab = seqio.ByteVocabulary()
  ids = vocab.encode(text)[: _INPUT_LENGTH - 1] + [1]
  row = np.zeros((4, _INPUT_LENGTH), np.int32)  # the batch size infer uses
  row[0, : len(ids)] = ids
  out = np.asarray(
    decoding.decode(model, params, row, max_decode_length=_DECODE_LENGTH)
  )
  return vocab.decode(decoding.trim_after_eos(out[:1])[0]).strip()


def test_read_input_file_formats_with_the_card(tmp_path):
  from dss_jax import cards

  path = tmp_path / "in.jsonl"
  lines = [
    {"id": "q1", **_CQA_FIELDS, "answer": "fridge"},
    {"input": "predict: already formatted"},
  ]
  path.write_text("".join(json.dumps(x) + "\n" for x in lines))
  rows = infer.read_input_file(str(path), card="cqa")
  assert rows[0] == {
    "id": "q1",
    "input": cards.load_card("cqa").format_input(_CQA_FIELDS),
    "target": "fridge",
  }
  assert "(a) fridge" in rows[0]["input"]
  # A prefix already present is not doubled.
  assert rows[1] == {"id": 1, "input": "already formatted"}
  text = tmp_path / "in.txt"
  text.write_text("first input\n\nsecond input\n")
  assert [r["input"] for r in infer.read_input_file(str(text))] == [
    "first input",
    "second input",
  ]
  with pytest.raises(ValueError, match="jsonl:1: no 'input'; pass a task card"):
    infer.read_input_file(str(path))


def test_labels_and_rationales_for_a_file(tmp_path, checkpoint):
  model, params, path = checkpoint
  inputs = tmp_path / "in.jsonl"
  inputs.write_text(
    json.dumps(_CQA_FIELDS) + "\n" + json.dumps({"input": "2 + 3"}) + "\n"
  )
  out = tmp_path / "out" / "predictions.jsonl"
  rows = infer.infer(
    model,
    path,
    str(out),
    input_file=str(inputs),
    card="cqa",
    vocabulary="byte",
    rationales=True,
    input_length=_INPUT_LENGTH,
    max_decode_length=_DECODE_LENGTH,
    batch_size=4,
  ).rows
  written = [json.loads(x) for x in out.read_text().splitlines()]
  assert written == rows and len(rows) == 2
  assert set(rows[0]) == {"id", "input", "prediction", "rationale"}
  assert rows[1]["prediction"] == _direct_greedy(
    model, params, "predict: 2 + 3"
  )
  assert rows[1]["rationale"] == _direct_greedy(model, params, "explain: 2 + 3")


def test_labels_for_a_task_split(tmp_path, checkpoint):
  model, params, path = checkpoint
  # The first target is what the model predicts, the second is not: 50%.
  first = _direct_greedy(model, params, "predict: a")

  def dataset_fn(split, shuffle_files, seed=None):
    return tf.data.Dataset.from_tensor_slices(
      {
        "inputs": ["predict: a", "predict: b", "predict: c"],
        "targets": [first, first + "y", "z"],
      }
    )

  seqio.TaskRegistry.add(
    "infer_test_task",
    source=seqio.FunctionDataSource(dataset_fn, splits=["test"]),
    preprocessors=[
      seqio.preprocessors.tokenize,
      seqio.preprocessors.append_eos,
    ],
    output_features={
      k: seqio.Feature(seqio.ByteVocabulary()) for k in ("inputs", "targets")
    },
    postprocess_fn=metrics.postprocess_text,
    metric_fns=[metrics.label_accuracy],
  )
  result = infer.infer(
    model,
    path,
    str(tmp_path / "p.jsonl"),
    mixture_or_task_name="infer_test_task",
    num_examples=2,
    input_length=_INPUT_LENGTH,
    max_decode_length=_DECODE_LENGTH,
    batch_size=4,
  )
  assert [(r["input"], r["target"]) for r in result.rows] == [
    ("a", first),
    ("b", first + "y"),
  ]
  assert result.rows[0]["prediction"] == first
  assert result.metrics == {"accuracy": 50.0}
  with pytest.raises(ValueError, match="exactly one of"):
    infer.infer(model, path, str(tmp_path / "q.jsonl"))


def test_vocabulary_larger_than_model_fails(tmp_path, checkpoint):
  small, _ = t5.make_test_model(vocab_size=128)
  text = tmp_path / "in.txt"
  text.write_text("hello\n")
  with pytest.raises(
    ValueError, match="259 ids but the model's embedding has 128 rows"
  ):
    infer.infer(
      small,
      checkpoint[2],
      str(tmp_path / "o.jsonl"),
      input_file=str(text),
      vocabulary="byte",
    )
