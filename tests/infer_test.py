"""Tests for dss_jax.inference and python -m dss_jax.infer: labels and rationales for files and task splits.

Run: .venv/bin/pytest tests/infer_test.py -q
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf

from dss_jax import decoding, errors, inference, metrics, t5x_checkpoints
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
  rows = inference.read_input_file(str(path), card="cqa")
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
  assert [r["input"] for r in inference.read_input_file(str(text))] == [
    "first input",
    "second input",
  ]
  with pytest.raises(ValueError, match="jsonl:1: no 'input'; pass a task card"):
    inference.read_input_file(str(path))


def test_labels_and_rationales_for_a_file(tmp_path, checkpoint):
  model, params, path = checkpoint
  inputs = tmp_path / "in.jsonl"
  inputs.write_text(
    json.dumps(_CQA_FIELDS) + "\n" + json.dumps({"input": "2 + 3"}) + "\n"
  )
  out = tmp_path / "out" / "predictions.jsonl"
  rows = inference.infer(
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
  result = inference.infer(
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
    inference.infer(model, path, str(tmp_path / "q.jsonl"))


def test_a_task_whose_vocabulary_cannot_be_read_is_one_error(
  tmp_path, checkpoint
):
  from dss_jax import vocab

  model, _, path = checkpoint
  unreadable = vocab.SentencePieceVocabulary(str(tmp_path / "gone.model"))
  seqio.TaskRegistry.add(
    "infer_test_unreadable_vocab",
    source=seqio.FunctionDataSource(
      lambda split, shuffle_files, seed=None: (
        tf.data.Dataset.from_tensor_slices({"inputs": ["a"], "targets": ["b"]})
      ),
      splits=["test"],
    ),
    preprocessors=[seqio.preprocessors.tokenize],
    output_features={
      k: seqio.Feature(unreadable) for k in ("inputs", "targets")
    },
  )
  # Raised inside tf.data's tracing it came wrapped in a StagingError.
  with pytest.raises(errors.UserError, match="cannot read the vocabulary"):
    inference.infer(
      model,
      path,
      str(tmp_path / "p.jsonl"),
      mixture_or_task_name="infer_test_unreadable_vocab",
    )


def test_vocabulary_larger_than_model_fails(tmp_path, checkpoint):
  small, _ = t5.make_test_model(vocab_size=128)
  text = tmp_path / "in.txt"
  text.write_text("hello\n")
  with pytest.raises(
    ValueError, match="259 ids but the model's embedding has 128 rows"
  ):
    inference.infer(
      small,
      checkpoint[2],
      str(tmp_path / "o.jsonl"),
      input_file=str(text),
      vocabulary="byte",
    )


@pytest.mark.parametrize("text", ["", "\n  \n", "[]"])
def test_an_input_file_without_inputs_is_refused(tmp_path, checkpoint, text):
  model, _, path = checkpoint
  empty = tmp_path / "in.json"
  empty.write_text(text)
  with pytest.raises(ValueError, match="holds no inputs"):
    inference.infer(
      model,
      path,
      str(tmp_path / "o.jsonl"),
      input_file=str(empty),
      vocabulary="byte",
    )
  assert not (tmp_path / "o.jsonl").exists()


def test_folders_and_a_full_disk_are_one_line(tmp_path, checkpoint):
  model, _, path = checkpoint
  text = tmp_path / "in.txt"
  text.write_text("1 + 2\n")
  kwargs = dict(vocabulary="byte", batch_size=2, max_decode_length=4)
  with pytest.raises(errors.UserError, match="INPUT_FILE .* is a folder"):
    inference.infer(model, path, str(tmp_path / "o"), input_file=str(tmp_path))
  with pytest.raises(errors.UserError, match="OUTPUT_FILE .* is a folder"):
    inference.infer(model, path, str(tmp_path), input_file=str(text), **kwargs)
  # /dev/full: every write fails with ENOSPC, as on a full disk.
  with pytest.raises(errors.MachineError, match="No space left"):
    inference.infer(model, path, "/dev/full", input_file=str(text), **kwargs)


def test_input_formats_are_read_by_content(tmp_path):
  nli = {"premise": "A man sleeps.", "hypothesis": "A man is awake."}
  records = [{"id": "a", **nli, "label": 2}, {"id": "b", **nli, "label": 0}]
  want = ["contradiction", "entailment"]
  as_list = tmp_path / "in.json"
  as_list.write_text(json.dumps(records, indent=2))
  as_object = tmp_path / "one.json"
  as_object.write_text(json.dumps(records[0]))
  upper = tmp_path / "in.JSONL"
  upper.write_text("".join(json.dumps(r) + "\n" for r in records))
  unnamed = tmp_path / "in.data"
  unnamed.write_text(upper.read_text())
  for path, targets in (
    (as_list, want),
    (as_object, want[:1]),
    (upper, want),
    (unnamed, want),
  ):
    rows = inference.read_input_file(str(path), card="anli1")
    assert [r["target"] for r in rows] == targets, path
    assert rows[0]["id"] == "a" and "A man sleeps." in rows[0]["input"]
  # Numbers are labels too (SVAMP's answers), without a card's names.
  numbers = tmp_path / "svamp.jsonl"
  numbers.write_text(json.dumps({"input": "2 + 3", "answer": 5}) + "\n")
  assert inference.read_input_file(str(numbers))[0]["target"] == "5"
  # Garbled input: one line naming the file and line.
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps(records[0]) + "\n{not json\n")
  with pytest.raises(ValueError, match=r"bad.jsonl:2: not JSON"):
    inference.read_input_file(str(bad), card="anli1")
  broken = tmp_path / "broken.json"
  broken.write_text('[{"input": "a"},\n {"input": }]')
  with pytest.raises(ValueError, match=r"broken.json:2: not JSON"):
    inference.read_input_file(str(broken))
  out_of_range = tmp_path / "range.jsonl"
  out_of_range.write_text(json.dumps({**nli, "label": 7}) + "\n")
  with pytest.raises(ValueError, match=r"range.jsonl:1: label 7 is not an"):
    inference.read_input_file(str(out_of_range), card="anli1")
  latin = tmp_path / "latin.txt"
  latin.write_bytes(b"fine\ncaf\xe9\n")
  with pytest.raises(ValueError, match=r"latin.txt:2: not UTF-8"):
    inference.read_input_file(str(latin))
  # Text whose lines are not all JSON objects stays text.
  text = tmp_path / "in.txt"
  text.write_text('{"input": "x"}\nplain words\n')
  assert [r["input"] for r in inference.read_input_file(str(text))] == [
    '{"input": "x"}',
    "plain words",
  ]


def test_long_inputs_counted_and_the_run_vocabulary_checked(
  tmp_path, checkpoint
):
  import shutil

  from dss_jax import vocab

  model, _, path = checkpoint
  run = tmp_path / "run"
  shutil.copytree(path, run)
  inputs = tmp_path / "in.txt"
  inputs.write_text("short\n" + "long " * 40 + "\n")
  kwargs = dict(
    input_file=str(inputs),
    vocabulary="byte",
    input_length=_INPUT_LENGTH,
    max_decode_length=_DECODE_LENGTH,
    batch_size=4,
  )
  result = inference.infer(model, str(run), str(tmp_path / "o.jsonl"), **kwargs)
  assert (result.inputs_cut, result.input_length) == (1, _INPUT_LENGTH)
  smaller = {**vocab.identity(seqio.ByteVocabulary()), "vocab_size": 131}
  (run / vocab.VOCABULARY_FILE).write_text(json.dumps(smaller))
  with pytest.raises(ValueError, match="trained with a ByteVocabulary of 131"):
    inference.infer(model, str(run), str(tmp_path / "o.jsonl"), **kwargs)
  for setting in ("batch_size", "input_length", "max_decode_length"):
    with pytest.raises(ValueError, match="must be a whole number >= 1"):
      inference.infer(
        model, path, str(tmp_path / "o.jsonl"), **(kwargs | {setting: 0})
      )


def _infer_command(tmp_path, *bindings):
  (tmp_path / "tiny_model.gin").write_text(
    "from __gin__ import dynamic_registration\n"
    "from dss_jax.models import t5\n"
    "MODEL = @t5.Transformer()\n"
    "t5.Transformer.config = @t5.t5_1_1_config()\n"
    't5.t5_1_1_config.size = "tiny"\n'
  )
  return [
    "dss_jax.infer",
    f"--gin_file={tmp_path / 'tiny_model.gin'}",
    "--gin_file=runs/infer.gin",
    *[f"--gin.{b}" for b in bindings],
  ]


def test_entry_point_reads_a_jsonl_file_and_counts_cut_inputs(
  tmp_path, checkpoint, repo_dir, monkeypatch, run_entry_point
):
  # `python -m dss_jax.infer`, in-process as `__main__`.
  monkeypatch.chdir(repo_dir)
  _, _, path = checkpoint
  inputs = tmp_path / "questions.JSONL"
  inputs.write_text(
    json.dumps({"input": "2 + 3", "answer": 5})
    + "\n"
    + json.dumps({"input": "long " * 30, "answer": 1})
    + "\n"
  )
  out = tmp_path / "answers.jsonl"
  common = [
    f'CHECKPOINT_PATH="{path}"',
    f'OUTPUT_FILE="{out}"',
    f'INPUT_FILE="{inputs}"',
    'VOCABULARY="byte"',
    f"INPUT_LENGTH={_INPUT_LENGTH}",
    f"MAX_DECODE_LENGTH={_DECODE_LENGTH}",
  ]
  run = run_entry_point(*_infer_command(tmp_path, *common, "BATCH_SIZE=4"))
  assert run.returncode == 0, run.stderr[-2000:]
  lines = run.stdout.strip().splitlines()
  assert lines[-2] == (
    f"1 of 2 inputs longer than {_INPUT_LENGTH} tokens were cut (INPUT_LENGTH)"
  )
  summary = json.loads(lines[-1])
  assert summary["examples"] == 2 and summary["inputs_cut"] == 1
  rows = [json.loads(x) for x in out.read_text().splitlines()]
  assert [r["target"] for r in rows] == ["5", "1"]
  # A batch size of 0 is one line before anything is read.
  run = run_entry_point(*_infer_command(tmp_path, *common, "BATCH_SIZE=0"))
  assert run.returncode == 2
  assert run.stderr.strip().splitlines()[-1] == (
    "error: BATCH_SIZE must be a whole number >= 1, got 0"
  )
