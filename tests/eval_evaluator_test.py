"""Tests for dss_jax.evaluation.Evaluator: metrics, T5X's log layout, errors.

A tiny SeqIO task (byte vocabulary, in-memory examples) and the tiny model;
targets are chosen from the model's own greedy predictions so the expected
accuracy is known exactly.

Run: .venv/bin/pytest tests/eval_evaluator_test.py -q
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf

from dss_jax import evaluation, metrics
from dss_jax.models import t5

_LENGTHS = {"inputs": 16, "targets": 6}
_INPUTS = [f"predict: q{i}" for i in range(6)]


def _register(
  name: str, inputs, targets, vocabulary=None, metric_fns=None
) -> str:
  vocabulary = vocabulary or seqio.ByteVocabulary()

  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices(
      {"inputs": list(inputs), "targets": list(targets)}
    )

  features = {
    k: seqio.Feature(vocabulary, add_eos=True) for k in ("inputs", "targets")
  }
  seqio.TaskRegistry.add(
    name,
    source=seqio.FunctionDataSource(dataset_fn, splits=["validation", "test"]),
    preprocessors=[
      seqio.preprocessors.tokenize,
      seqio.preprocessors.append_eos_after_trim,
    ],
    output_features=features,
    postprocess_fn=metrics.postprocess_text,
    metric_fns=metric_fns or [metrics.label_accuracy],
  )
  return name


@pytest.fixture(scope="module")
def tiny():
  model, config = t5.make_test_model()
  tokens = np.ones((1, 4), np.int32)
  params = model.init(
    jax.random.PRNGKey(0), tokens, tokens, tokens, enable_dropout=False
  )["params"]
  return model, params


def _greedy_texts(model, params, texts):
  vocab = seqio.ByteVocabulary()
  rows = np.zeros((len(texts), _LENGTHS["inputs"]), np.int32)
  for i, t in enumerate(texts):
    ids = vocab.encode(t)[: _LENGTHS["inputs"] - 1] + [1]
    rows[i, : len(ids)] = ids
  # Same batch size and lengths as the evaluators below: one compilation.
  out = evaluation.predict_tokens(
    model,
    params,
    list(rows),
    batch_size=4,
    decode=evaluation.DecodeConfig(),
    max_decode_length=_LENGTHS["targets"],
  )
  return [metrics.postprocess_text(vocab.decode(r.tolist())) for r in out]


def test_scores_task_and_writes_t5x_layout(tmp_path, tiny):
  model, params = tiny
  predicted = _greedy_texts(model, params, _INPUTS)
  # Half the targets equal the model's prediction, half cannot: 50% exactly.
  targets = predicted[:3] + ["\u00e9no"] * 3
  task = _register("eval_test_task", _INPUTS, targets)
  out = tmp_path / "inference_eval"
  evaluator = evaluation.Evaluator(
    task, model, feature_lengths=_LENGTHS, batch_size=4, output_dir=str(out)
  )
  assert evaluator.task_names == [task]
  result = evaluator.evaluate(params, step=10)
  assert result == {f"{task}/accuracy": pytest.approx(50.0)}
  evaluator.evaluate({"params": params}, step=20)
  lines = [
    json.loads(x)
    for x in (out / f"{task}-metrics.jsonl").read_text().splitlines()
  ]
  assert [x["step"] for x in lines] == [10, 20]
  assert lines[0]["accuracy"] == pytest.approx(50.0)
  rows = [
    json.loads(x)
    for x in (out / f"{task}-000010.jsonl").read_text().splitlines()
  ]
  assert len(rows) == 6
  assert [r["prediction"] for r in rows] == predicted
  assert [r["target"] for r in rows] == targets
  assert rows[0]["input"]["inputs_pretokenized"] == _INPUTS[0]
  assert list((out / task).glob("events.out.tfevents*")), (
    "no TensorBoard events"
  )
  assert evaluation.scored_steps(str(out), [task]) == {10, 20}


def test_mixture_scores_each_task_and_num_examples(tmp_path, tiny):
  model, params = tiny
  a = _register("eval_test_a", _INPUTS, ["x"] * 6)
  b = _register("eval_test_b", _INPUTS[:2], ["y"] * 2)
  seqio.MixtureRegistry.add("eval_test_mix", [(a, 1.0), (b, 1.0)])
  evaluator = evaluation.Evaluator(
    "eval_test_mix",
    model,
    feature_lengths=_LENGTHS,
    num_examples=3,
    batch_size=4,
    output_dir=str(tmp_path),
  )
  result = evaluator.evaluate(params, step=1)
  assert set(result) == {f"{a}/accuracy", f"{b}/accuracy"}
  assert len((tmp_path / f"{a}-000001.jsonl").read_text().splitlines()) == 3
  assert len((tmp_path / f"{b}-000001.jsonl").read_text().splitlines()) == 2


def test_unknown_task_lists_close_matches(tiny):
  _register("eval_test_close_label", _INPUTS, _INPUTS)
  with pytest.raises(evaluation.UnknownTaskError) as err:
    evaluation.Evaluator(
      "eval_test_clsoe_label", tiny[0], feature_lengths=_LENGTHS
    )
  assert "did you mean: eval_test_close_label" in str(err.value)
  assert "\n" not in str(err.value)


def test_vocabulary_larger_than_model_fails(tiny):
  model, _ = t5.make_test_model(vocab_size=128)  # byte vocab needs 259 ids
  task = _register("eval_test_vocab", _INPUTS, _INPUTS)
  with pytest.raises(
    ValueError, match=r"259 ids but the model's embedding has 128 rows"
  ):
    evaluation.Evaluator(task, model, feature_lengths=_LENGTHS)


def test_score_metrics_get_sequence_log_likelihoods(tiny):
  model, params = tiny

  def mean_log_likelihood(targets, scores):
    del targets
    return {"mean_log_likelihood": float(np.mean(scores))}

  targets = ["ab", "c"]
  task = _register(
    "eval_test_score", _INPUTS[:2], targets, metric_fns=[mean_log_likelihood]
  )
  evaluator = evaluation.Evaluator(
    task, model, feature_lengths=_LENGTHS, batch_size=4
  )
  got = evaluator.evaluate(params, step=1)[f"{task}/mean_log_likelihood"]
  # The same quantity by hand: sum of log p(target token) over real tokens.
  vocab = seqio.ByteVocabulary()
  enc = np.zeros((2, 12), np.int32)
  tgt = np.zeros((2, 3), np.int32)
  for i, (text, target) in enumerate(zip(_INPUTS[:2], targets, strict=True)):
    ids, tids = vocab.encode(text) + [1], vocab.encode(target) + [1]
    enc[i, : len(ids)], tgt[i, : len(tids)] = ids, tids
  dec_in = np.concatenate([np.zeros((2, 1), np.int32), tgt[:, :-1]], axis=1)
  logits = model.apply(
    {"params": params}, enc, dec_in, tgt, enable_dropout=False
  )
  logp = jax.nn.log_softmax(np.asarray(logits, np.float64))
  token_logp = np.take_along_axis(logp, tgt[..., None], -1)[..., 0]
  expected = float((token_logp * (tgt > 0)).sum(-1).mean())
  assert got == pytest.approx(expected, rel=1e-4)
