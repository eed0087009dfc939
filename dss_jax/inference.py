"""Inference: label predictions and generated rationales from a trained student.

The library behind `python -m dss_jax.infer` (its docstring shows the command
lines): `infer` reads a task split (`read_task_split`) or a file of your own
inputs (`read_input_file`), decodes every input with the ``predict: `` prefix
(the label) and, with ``rationales``, with ``explain: `` (the rationale the
student learned from the teacher), and writes one JSON line per input with
``id``, ``input``, ``prediction`` and, when known, ``rationale`` and
``target``. `texts_of_tokens` turns decoded tokens into text, here and in
`dss_jax.showcase`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from absl import logging
from etils import epath

from dss_jax import cards, errors
from dss_jax.cards import LABEL_PREFIX, RATIONALE_PREFIX
from dss_jax.teacher import store as store_lib

# JAX, TensorFlow and SeqIO load inside the functions: `python -m
# dss_jax.infer` sets the host's malloc and XLA settings (`gin_flags.run`)
# before they start.
if TYPE_CHECKING:
  import seqio

  from dss_jax.evaluation import DecodeConfig
  from dss_jax.models import t5
  from dss_jax.partitioning import Partitioner


def _strip_prefix(text: str) -> str:
  for prefix in (LABEL_PREFIX, RATIONALE_PREFIX):
    if text.startswith(prefix):
      return text[len(prefix) :]
  return text


_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_TARGET_KEYS = ("label", "gold_label", "answer", "target")


def _input_records(path: str, text: str) -> list[tuple[str, Any]] | None:
  """(where, record) of a JSON or JSONL file; None for plain text.

  The format is told by the suffix (``.json``: one JSON list of objects or
  one object; ``.jsonl``/``.ndjson``: one object per line; any case) and,
  for other names, by the content: a file whose every non-blank line is a
  JSON object is JSONL, anything else is text.
  """
  suffix = os.path.splitext(path)[1].lower()
  numbered = [(n, x) for n, x in enumerate(text.splitlines(), 1) if x.strip()]
  if suffix == ".json":
    try:
      document = json.loads(text)
    except ValueError as e:
      if not all(_is_object_line(x) for _, x in numbered):
        raise errors.UserError(
          f"{path}:{getattr(e, 'lineno', 1)}: not JSON "
          f"({errors.one_line(e)}); a .json input is one JSON list of "
          "objects (or one object), a .jsonl input one object per line"
        ) from None
      document = None  # JSON Lines under a .json name
    if document is not None:
      items = document if isinstance(document, list) else [document]
      return [(f"{path}: item {i}", item) for i, item in enumerate(items)]
  elif suffix not in _JSONL_SUFFIXES:
    if not numbered or not all(_is_object_line(x) for _, x in numbered):
      return None
  out = []
  for number, line in numbered:
    where = f"{path}:{number}"
    try:
      out.append((where, json.loads(line)))
    except ValueError as e:
      raise errors.UserError(
        f"{where}: not JSON ({errors.one_line(e)}); write one JSON object "
        "per line"
      ) from None
  return out


def _is_object_line(line: str) -> bool:
  try:
    return isinstance(json.loads(line), dict)
  except ValueError:
    return False


def _target(
  record: dict[str, Any], task_card: cards.TaskCard | None, where: str
) -> str | None:
  """The gold label of a record as text: strings, or integer labels (named
  by the card's ``label_names`` where it has them)."""
  for key in _TARGET_KEYS:
    value = record.get(key)
    if value is None or isinstance(value, bool):
      continue
    if isinstance(value, str):
      return value
    if isinstance(value, int) and task_card is not None:
      names = task_card.source.label_names
      if names is not None:
        if not 0 <= value < len(names):
          raise errors.UserError(
            f"{where}: {key} {value} is not an index of card "
            f"{task_card.name}'s label_names ({len(names)} names)"
          )
        return names[value]
    if isinstance(value, (int, float)):
      return str(value)
    raise errors.UserError(
      f"{where}: {key} must be a string or a number, got {type(value).__name__}"
    )
  return None


def read_input_file(path: str, card: str | None = None) -> list[dict[str, Any]]:
  """Reads raw inputs: JSON, JSONL (fields or ``input``) or plain text lines.

  Args:
    path: a ``.json`` file (a list of JSON objects, or one object), a
      ``.jsonl`` file (one JSON object per line; suffixes in any case, and
      other names whose every line is a JSON object), or any text file (one
      formatted input per line; blank lines skipped).
    card: task card formatting JSON fields (`dss_jax.cards.load_card`);
      required for records without an ``input`` key.

  Returns:
    [{"id": ..., "input": formatted text, "target": optional gold}]; a gold
    ``label``/``gold_label``/``answer``/``target`` may be a string or a
    number (an integer label is named by the card's ``label_names``).

  Raises:
    errors.UserError: the file is missing, not UTF-8, or a record is not a
      JSON object that is formatted or formattable (the message names the
      file and line, or item).
  """
  if not epath.Path(path).exists():
    raise errors.MissingFileError(f"INPUT_FILE {path}: no such file")
  if epath.Path(path).is_dir():
    raise errors.UserError(f"INPUT_FILE {path} is a folder; give a file")
  try:
    text = epath.Path(path).read_bytes().decode("utf-8")
  except UnicodeDecodeError as e:
    line = epath.Path(path).read_bytes()[: e.start].count(b"\n") + 1
    raise errors.UserError(
      f"{path}:{line}: not UTF-8 text ({e.reason}); save the file as UTF-8"
    ) from None
  records = _input_records(path, text)
  if records is None:
    lines = [x for x in text.splitlines() if x.strip()]
    return [{"id": i, "input": line} for i, line in enumerate(lines)]
  task_card = None
  if card:
    task_card = cards.load_card(card)
  rows = []
  for i, (where, record) in enumerate(records):
    if not isinstance(record, dict):
      raise errors.UserError(
        f"{where}: a JSON {type(record).__name__}, not an object"
      )
    if "input" in record:
      formatted = record["input"]
    elif task_card is not None:
      fields = record.get("fields", record)
      try:
        if isinstance(fields, str):
          fields = json.loads(fields)
        formatted = task_card.format_student_input(fields)
      except (ValueError, KeyError, IndexError, TypeError) as e:
        raise errors.UserError(
          f"{where}: the fields do not fit card {task_card.name} "
          f"({type(e).__name__}: {errors.one_line(e)}); it reads "
          f"{task_card.source.input_fields}"
        ) from None
    else:
      raise errors.UserError(
        f"{where}: no 'input'; pass a task card (CARD) to format its fields"
      )
    if not isinstance(formatted, str):
      raise errors.UserError(f"{where}: 'input' must be a string")
    row = {"id": record.get("id", i), "input": _strip_prefix(formatted)}
    target = _target(record, task_card, where)
    if target is not None:
      row["target"] = target
    rows.append(row)
  return rows


@dataclasses.dataclass
class InferResult:
  """What `infer` wrote, and the task's metrics where targets were known.

  Attributes:
    rows: the output rows (also written as JSONL).
    metrics: {metric: value} over rows with a target (the task's metric
      functions, or the card's for an input file); empty without targets.
    inputs_cut: inputs longer than ``input_length`` tokens (cut to it).
    input_length: the input length they were cut to.
    split: the task split read (None for an input file).
  """

  rows: list[dict[str, Any]]
  metrics: dict[str, float]
  inputs_cut: int = 0
  input_length: int = 0
  split: str | None = None


def read_task_split(
  mixture_or_task_name: str, split: str, num_examples: int | None = None
) -> tuple[list[dict[str, Any]], seqio.Task]:
  """Reads a task's inputs (prefix removed) and targets.

  A mixture's first task is read.

  Returns:
    (rows, the seqio.Task).
  """
  # Imported here: JAX, TensorFlow and SeqIO start after the host settings
  # of `gin_flags.run` (see the top of this module).
  import seqio
  import tensorflow as tf

  from dss_jax import evaluation

  task = evaluation.get_task_or_mixture(mixture_or_task_name)
  subtasks = seqio.get_subtasks(task)
  first = subtasks[0]
  for feature in first.output_features.values():
    # Loaded here: an unreadable vocabulary (the GCS default offline) is
    # then its one line, not an error inside tf.data's tracing.
    _ = feature.vocabulary.vocab_size
  # Traced without AutoGraph, as the training pipeline is (see
  # dss_jax.input_pipeline).
  ds = tf.autograph.experimental.do_not_convert(first.get_dataset)(
    sequence_length=None, split=split, shuffle=False, num_epochs=1
  )
  if num_examples is not None:
    ds = ds.take(num_examples)
  rows = []
  for i, ex in enumerate(ds.as_numpy_iterator()):
    text = ex["inputs_pretokenized"].decode("utf-8")
    row = {"id": i, "input": _strip_prefix(text)}
    if "targets_pretokenized" in ex:
      row["target"] = ex["targets_pretokenized"].decode("utf-8")
    rows.append(row)
  return rows, first


def predict_texts(
  model: t5.Transformer,
  params: Any,
  vocabulary: seqio.Vocabulary,
  texts: Sequence[str],
  *,
  input_length: int,
  max_decode_length: int,
  batch_size: int,
  decode: DecodeConfig,
  cut: list[int] | None = None,
) -> list[str]:
  """Tokenizes (truncating to ``input_length`` with EOS), decodes, detokenizes.

  ``cut``, when given, gets the indices of the texts that were longer than
  ``input_length`` tokens (EOS included) appended.
  """
  # Imported here: JAX, TensorFlow and SeqIO start after the host settings
  # of `gin_flags.run` (see the top of this module).
  from dss_jax import evaluation, preprocessors

  eos = vocabulary.eos_id
  rows = []
  for index, text in enumerate(texts):
    # As the SeqIO tasks tokenize: "</s>" (NLI cards) is the EOS id.
    ids = preprocessors.encode_at_eos(vocabulary, text)
    if len(ids) + 1 > input_length and cut is not None:
      cut.append(index)
    ids = ids[: input_length - 1] + [eos]
    row = np.zeros(input_length, np.int32)
    row[: len(ids)] = ids
    rows.append(row)
  tokens = evaluation.predict_tokens(
    model,
    params,
    rows,
    batch_size=batch_size,
    decode=decode,
    max_decode_length=max_decode_length,
  )
  return texts_of_tokens(vocabulary, tokens)


def texts_of_tokens(
  vocabulary: seqio.Vocabulary, tokens: Sequence[Sequence[int]]
) -> list[str]:
  """Decoded rows of tokens as text: each cut at the vocabulary's EOS.

  Args:
    vocabulary: the vocabulary the model was trained with.
    tokens: rows of generated token ids (`evaluation.predict_tokens`).

  Returns:
    One text per row, without surrounding whitespace.
  """
  eos = vocabulary.eos_id
  out = []
  for row in tokens:
    ids = [int(t) for t in row]
    if eos in ids:
      ids = ids[: ids.index(eos)]
    out.append(vocabulary.decode(ids).strip())
  return out


def infer(
  model: t5.Transformer,
  checkpoint_path: str,
  output_file: str,
  *,
  mixture_or_task_name: str | None = None,
  split: str = "test",
  input_file: str | None = None,
  card: str | None = None,
  vocabulary: str = "t5",
  rationales: bool = False,
  input_length: int = 1024,
  max_decode_length: int = 256,
  batch_size: int = 32,
  num_examples: int | None = None,
  step: int | None = None,
  decode: DecodeConfig | None = None,
  partitioner: Partitioner | None = None,
) -> InferResult:
  """Predicts labels (and rationales) and writes them as JSONL.

  Args:
    model: the `dss_jax.models.t5.Transformer` (gin's MODEL).
    checkpoint_path: any checkpoint `dss_jax.checkpoints` reads (this
      project's or T5X's).
    output_file: the JSONL file to write.
    mixture_or_task_name: read inputs from this task's (or the mixture's
      first task's) ``split``; its vocabulary is used.
    split: the split to read.
    input_file: read inputs from this file instead (see `read_input_file`).
    card: task card formatting ``input_file``'s JSONL fields.
    vocabulary: vocabulary name or path for ``input_file`` inputs.
    rationales: also decode the ``explain: `` task.
    input_length: inputs are truncated to this many tokens.
    max_decode_length: tokens to generate at most.
    batch_size: decode batch size.
    num_examples: only the first this many inputs.
    step: the checkpoint step of a model dir (default: latest).
    decode: a `dss_jax.evaluation.DecodeConfig` (default greedy).
    partitioner: optional `dss_jax.partitioning.Partitioner` sharding the
      parameters (default: one device).

  On several hosts each host decodes its share of the inputs (see
  `dss_jax.evaluation.predict_tokens`); process 0 writes the file and
  computes the metrics (the others return no metrics).

  Returns:
    The rows written and, where targets are known, their metrics.

  Raises:
    ValueError: neither or both of ``mixture_or_task_name`` and
      ``input_file``; a vocabulary larger than the model's embedding.
  """
  # Imported here: JAX, TensorFlow and SeqIO start after the host settings
  # of `gin_flags.run` (see the top of this module).
  import jax

  from dss_jax import checkpoints, evaluation, metrics
  from dss_jax import vocab as vocab_lib

  if (mixture_or_task_name is None) == (input_file is None):
    raise errors.UserError(
      "give exactly one of MIXTURE_OR_TASK_NAME and INPUT_FILE"
    )
  evaluation.check_batch_size(batch_size)
  for setting, value in (
    ("INPUT_LENGTH", input_length),
    ("MAX_DECODE_LENGTH", max_decode_length),
  ):
    evaluation.check_batch_size(value, setting)
  if num_examples is not None:
    evaluation.check_batch_size(num_examples, "NUM_EXAMPLES")
  if epath.Path(output_file).is_dir():
    raise errors.UserError(
      f"OUTPUT_FILE {output_file} is a folder; give a .jsonl file path"
    )
  # Fails fast (one line) on a missing or empty path, before reading data.
  checkpoints.resolve_checkpoint(checkpoint_path, step)
  decode = decode or evaluation.DecodeConfig()
  postprocess = metrics.postprocess_text
  if input_file is not None:
    rows = read_input_file(input_file, card)[:num_examples]
    if not rows:
      raise errors.UserError(
        f"INPUT_FILE {input_file} holds no inputs (empty, blank lines or an "
        "empty JSON list); give one input per line or a JSON object each"
      )
    vocab = vocab_lib.get_vocabulary(vocabulary)
    metric_fns = [metrics.label_accuracy]
    if card:
      metric_fns = metrics.metric_fns_for(cards.load_card(card).metric)
  else:
    rows, task = read_task_split(mixture_or_task_name, split, num_examples)
    vocab = task.output_features["inputs"].vocabulary
    metric_fns = list(task.predict_metric_fns)
    postprocess = task.postprocess_fn or (lambda x, **_: x)
  evaluation.check_vocabulary(vocab, model.config.vocab_size, "the inputs")
  check_trained_vocabulary(checkpoint_path, vocab, "inference")
  params = checkpoints.restore_model_params(model, checkpoint_path, step=step)
  partitioner = checkpoints.decode_partitioner(partitioner)
  kwargs = dict(
    input_length=input_length,
    max_decode_length=max_decode_length,
    batch_size=batch_size,
    decode=decode,
  )
  context = partitioner.context() if partitioner else contextlib.nullcontext()
  read_split = None if input_file is not None else split
  cut: list[int] = []
  with context:
    params = checkpoints.place_params(params, partitioner)
    _predict_rows(model, params, vocab, rows, rationales, kwargs, cut)
  long_inputs = len(set(cut))
  if long_inputs:
    logging.warning(
      "infer: %d of %d inputs longer than %d tokens were cut (raise "
      "INPUT_LENGTH to keep them whole)",
      long_inputs,
      len(rows),
      input_length,
    )
  if jax.process_index() > 0:
    # Every host has all predictions; process 0 writes and scores them.
    return InferResult(rows, {}, long_inputs, input_length, read_split)
  out = epath.Path(output_file)
  # A full disk or a read-only folder: one line, not a traceback.
  with store_lib.os_faults(out, "writing the predictions (OUTPUT_FILE)"):
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    )
  logging.info("wrote %d predictions to %s", len(rows), out)
  return InferResult(
    rows,
    _score(rows, metric_fns, postprocess),
    long_inputs,
    input_length,
    read_split,
  )


def check_trained_vocabulary(
  checkpoint_path: str, vocabulary: seqio.Vocabulary, what: str
) -> None:
  """Refuses a vocabulary other than the one the checkpoint's run recorded.

  The same check eval makes (`dss_jax.vocab.check_same` on the model dir's
  ``vocabulary.json``); checkpoints without a record (T5X's) pass.
  """
  # Imported here: JAX, TensorFlow and SeqIO start after the host settings
  # of `gin_flags.run` (see the top of this module).
  from dss_jax import evaluation
  from dss_jax import vocab as vocab_lib

  trained = vocab_lib.read_identity(
    evaluation.model_dir_of(os.fspath(checkpoint_path))
  )
  if trained is not None:
    vocab_lib.check_same(trained, vocabulary, what)


def _predict_rows(model, params, vocab, rows, rationales, kwargs, cut) -> None:
  """Adds "prediction" (and "rationale") to each row, in place; appends the
  indices of inputs longer than the input length to ``cut``."""
  texts = [r["input"] for r in rows]
  labels = predict_texts(
    model, params, vocab, [LABEL_PREFIX + t for t in texts], cut=cut, **kwargs
  )
  for row, label in zip(rows, labels, strict=True):
    row["prediction"] = label
  if rationales:
    explained = predict_texts(
      model,
      params,
      vocab,
      [RATIONALE_PREFIX + t for t in texts],
      cut=cut,
      **kwargs,
    )
    for row, rationale in zip(rows, explained, strict=True):
      row["rationale"] = rationale


def _score(rows, metric_fns, postprocess) -> dict[str, float]:
  """The metric functions over the rows that have a target."""
  scored = [r for r in rows if "target" in r]
  if not scored:
    return {}
  targets = [
    postprocess(r["target"], example={}, is_target=True) for r in scored
  ]
  predictions = [
    postprocess(r["prediction"], example={}, is_target=False) for r in scored
  ]
  out: dict[str, float] = {}
  for fn in metric_fns:
    out.update({k: float(v) for k, v in fn(targets, predictions).items()})
  return out
