"""Scores a model on SeqIO tasks: periodic eval in training and eval-only jobs.

`Evaluator` decodes a task's (or each task of a mixture's) evaluation split
with `dss_jax.decoding`, postprocesses the predictions, computes the task's
metric functions and logs them in the layout T5X's eval uses (it drives
`seqio.Evaluator`, as T5X does):

    <output_dir>/<task>-metrics.jsonl        {"step": 1000, "split": "test",
                                              "accuracy": 61.2}
    <output_dir>/<task>-<step:06>.jsonl      input, target and prediction
    <output_dir>/<task>/events.out.tfevents  TensorBoard scalars

With ``output_dir = MODEL_DIR/inference_eval`` this is exactly T5X's layout.

On several hosts (`jax.process_count() > 1`) with parameters every host
holds whole, each host decodes (and scores) only its consecutive share of the
examples, the shares are gathered in order on every host, and process 0
alone computes the metrics and writes the files: the same predictions and
scores as one process, in 1 / hosts of the time (tests/multihost_test.py).
The trainer calls ``evaluator.evaluate(params, step)`` every EVAL_PERIOD steps;
``evaluate_checkpoints`` scores saved checkpoints (``python -m dss_jax.eval``),
skipping steps already scored with the same settings (``eval_record.jsonl``
keys each score by task, split, example count, feature lengths, decoding,
vocabulary and the checkpoint's checksum), so it can follow a running job;
a change to any of them scores the step again. Metrics lines name the split.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import seqio
import tensorflow as tf
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from dss_jax import (
  checkpoints,
  decoding,
  errors,
  input_pipeline,
  t5x_checkpoints,
  vocab,
)

if TYPE_CHECKING:
  from dss_jax.models import t5
  from dss_jax.partitioning import Partitioner

Params = Any

# T5X's eval writes under MODEL_DIR/inference_eval.
INFERENCE_EVAL_DIR = "inference_eval"


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """How predictions are decoded (see `dss_jax.decoding.decode`).

  Attributes:
    method: "greedy", "beam" or "sample".
    num_beams: beam width for "beam".
    temperature: softmax temperature for "sample".
    max_decode_length: tokens to generate at most; None uses the "targets"
      feature length.
    alpha: beam search length-penalty exponent.
    seed: PRNG seed for "sample".
  """

  method: str = "greedy"
  num_beams: int = 4
  temperature: float = 1.0
  max_decode_length: int | None = None
  alpha: float = 0.6
  seed: int = 0

  def __post_init__(self):
    if self.method not in ("greedy", "beam", "sample"):
      raise errors.UserError(
        f"decode method {self.method!r} is not 'greedy', 'beam' or 'sample' "
        "(DECODE_METHOD)"
      )
    if not _is_positive_int(self.num_beams):
      raise errors.UserError(
        f"NUM_BEAMS (num_beams) must be a whole number >= 1, got "
        f"{self.num_beams!r}"
      )
    if self.max_decode_length is not None and not _is_positive_int(
      self.max_decode_length
    ):
      raise errors.UserError(
        f"MAX_DECODE_LENGTH must be None or a whole number >= 1, got "
        f"{self.max_decode_length!r}"
      )
    if not (math.isfinite(self.temperature) and self.temperature > 0):
      raise errors.UserError(
        f"decode temperature must be a finite number > 0, got "
        f"{self.temperature!r}"
      )
    if not math.isfinite(self.alpha):
      raise errors.UserError(f"beam alpha must be finite, got {self.alpha!r}")


def _is_positive_int(value: Any) -> bool:
  return (
    isinstance(value, (int, np.integer))
    and not isinstance(value, bool)
    and value >= 1
  )


def check_feature_lengths(
  feature_lengths: Mapping[str, int], setting: str = "TASK_FEATURE_LENGTHS"
) -> dict[str, int]:
  """Refuses feature lengths without "inputs" and "targets" >= 1.

  Args:
    feature_lengths: {"inputs": n, "targets": m}.
    setting: the name the user set them by, for the message.

  Returns:
    The lengths as a plain dict.

  Raises:
    errors.UserError: a missing or non-positive length.
  """
  lengths = dict(feature_lengths or {})
  for key in ("inputs", "targets"):
    if key not in lengths:
      raise errors.UserError(
        f"{setting} has no {key!r} length ({lengths}); give both, e.g. "
        '{"inputs": 1024, "targets": 256}'
      )
    if not _is_positive_int(lengths[key]):
      raise errors.UserError(
        f"{setting}[{key!r}] must be a whole number >= 1, got {lengths[key]!r}"
      )
  return lengths


def check_batch_size(batch_size: Any, setting: str = "BATCH_SIZE") -> int:
  """Refuses a decode batch size that is not a whole number >= 1."""
  if not _is_positive_int(batch_size):
    raise errors.UserError(
      f"{setting} must be a whole number >= 1, got {batch_size!r}"
    )
  return int(batch_size)


def inference_eval_dir(model_dir: str) -> str:
  """``<model_dir>/inference_eval``, where T5X's eval writes (for gin)."""
  return os.path.join(os.fspath(model_dir), INFERENCE_EVAL_DIR)


class UnknownTaskError(errors.UserError):
  """A task or mixture name that SeqIO does not know."""


def get_task_or_mixture(name: str) -> seqio.Task | seqio.Mixture:
  """Looks a name up in SeqIO's registries, suggesting close names if absent.

  Args:
    name: a registered task or mixture name.

  Returns:
    The task or mixture.

  Raises:
    UnknownTaskError: the name is not registered (the message lists close
      matches).
  """
  known = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
  if name in known:
    return seqio.get_mixture_or_task(name)
  close = difflib.get_close_matches(name, sorted(known), n=5, cutoff=0.5)
  hint = f"; did you mean: {', '.join(close)}?" if close else ""
  raise UnknownTaskError(
    f"task or mixture {name!r} is not registered ({len(known)} are){hint}"
  )


def check_vocabulary(
  vocabulary: seqio.Vocabulary, model_vocab_size: int, what: str
) -> None:
  """Fails when a vocabulary has ids beyond the model's embedding.

  A model's embedding may be larger than its vocabulary (T5 pads 32,100 ids to
  32,128 rows for the matrix units), never smaller.

  Args:
    vocabulary: the vocabulary used to tokenize.
    model_vocab_size: rows of the model's embedding.
    what: what the vocabulary belongs to, for the message.

  Raises:
    errors.UserError: the vocabulary is larger than the embedding.
  """
  size = vocabulary.vocab_size
  if size > model_vocab_size:
    raise errors.UserError(
      f"vocabulary of {what} has {size} ids but the model's embedding has "
      f"{model_vocab_size} rows; use the vocabulary the model was built for"
    )


# ---------------------------------------------------------------------------
# Batched model calls.


def _batches(
  rows: Sequence[np.ndarray], batch_size: int
) -> Iterable[tuple[int, np.ndarray]]:
  """Yields (real_rows, [batch_size, ...]) with the last batch zero-padded.

  A fixed batch shape keeps one compiled decode for the whole eval.
  """
  for start in range(0, len(rows), batch_size):
    chunk = np.stack(rows[start : start + batch_size])
    real = chunk.shape[0]
    if real < batch_size:
      pad = np.zeros((batch_size - real,) + chunk.shape[1:], chunk.dtype)
      chunk = np.concatenate([chunk, pad])
    yield real, chunk


def host_share(n: int) -> slice:
  """This process's consecutive share of `n` rows (all of them on one)."""
  per_host = -(-n // jax.process_count())
  start = min(n, jax.process_index() * per_host)
  return slice(start, min(n, start + per_host))


def gather_shares(local: np.ndarray, n: int) -> np.ndarray:
  """Every process's `host_share` rows of `n`, in order, on every process.

  Args:
    local: this process's rows, [len(host_share(n)), ...].
    n: rows in all.

  Returns:
    The [n, ...] rows of all processes (`local` itself on one process).
  """
  if jax.process_count() == 1:
    return local
  per_host = -(-n // jax.process_count())
  padded = np.zeros((per_host,) + local.shape[1:], local.dtype)
  padded[: len(local)] = local
  gathered = np.asarray(multihost_utils.process_allgather(padded))
  return gathered.reshape((-1,) + local.shape[1:])[:n]


def _split_over_hosts(params: Params) -> bool:
  """Whether each host can decode its own share: parameters held whole."""
  return jax.process_count() > 1 and all(
    not isinstance(x, jax.Array) or x.is_fully_addressable
    for x in jax.tree.leaves(params)
  )


def predict_tokens(
  model: t5.Transformer,
  params: Params,
  encoder_input_tokens: Sequence[np.ndarray],
  *,
  batch_size: int,
  decode: DecodeConfig,
  max_decode_length: int,
) -> np.ndarray:
  """Decodes rows of input tokens; [n, max_decode_length], 0 after EOS.

  On several hosts, with parameters each host holds whole, each host decodes
  its `host_share` and every host gets all rows back (`gather_shares`).
  """
  rows = list(encoder_input_tokens)
  kwargs = dict(
    batch_size=batch_size, decode=decode, max_decode_length=max_decode_length
  )
  if not _split_over_hosts(params):
    return _decode_rows(model, params, rows, **kwargs)
  share = host_share(len(rows))
  logging.info(
    "process %d decodes examples %d-%d of %d",
    jax.process_index(),
    share.start,
    share.stop,
    len(rows),
  )
  local = _decode_rows(model, params, rows[share], **kwargs)
  return gather_shares(local, len(rows))


def _decode_rows(
  model: t5.Transformer,
  params: Params,
  rows: Sequence[np.ndarray],
  *,
  batch_size: int,
  decode: DecodeConfig,
  max_decode_length: int,
) -> np.ndarray:
  outputs = []
  rng = jax.random.PRNGKey(decode.seed)
  for real, batch in _batches(list(rows), batch_size):
    rng, step_rng = jax.random.split(rng)
    tokens = decoding.decode(
      model,
      params,
      batch,
      max_decode_length=max_decode_length,
      method=decode.method,
      num_beams=decode.num_beams,
      temperature=decode.temperature,
      rng=step_rng,
      alpha=decode.alpha,
    )
    outputs.append(np.asarray(tokens)[:real])
  if not outputs:
    return np.zeros((0, max_decode_length), np.int32)
  return np.concatenate(outputs)


@functools.partial(jax.jit, static_argnums=0)
def _sequence_log_likelihood(model, params, enc, dec_in, targets):
  logits = model.apply(
    {"params": params}, enc, dec_in, targets, enable_dropout=False
  )
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  token_logp = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  return jnp.sum(token_logp * (targets > 0), axis=-1)


# ---------------------------------------------------------------------------
# The evaluator.


class SplitJSONLogger(seqio.JSONLogger):
  """SeqIO's JSON logger, whose metrics lines also name the split scored.

  ``<task>-metrics.jsonl`` lines read ``{"step": 10, "split": "test",
  "accuracy": 61.2}``: a file holding several splits' scores says which is
  which (T5X's reader takes the numeric fields and ignores the rest).
  """

  def __init__(self, output_dir: str, *, split: str, **kwargs: Any):
    super().__init__(output_dir, **kwargs)
    self._split = split

  def __call__(self, task_name, step, metrics, dataset, inferences, targets):
    if metrics:
      metrics = {"split": seqio.metrics.Text(self._split), **metrics}
    super().__call__(task_name, step, metrics, dataset, inferences, targets)


class Evaluator:
  """Scores parameters on a task's or mixture's eval split.

  Build it once (the dataset is read, tokenized and cached in memory then);
  call `evaluate(params, step)` as often as wanted.
  """

  def __init__(
    self,
    mixture_or_task_name: str,
    model: t5.Transformer,
    *,
    feature_lengths: Mapping[str, int],
    split: str = "validation",
    num_examples: int | None = None,
    batch_size: int = 32,
    vocabulary: seqio.Vocabulary | None = None,
    decode: DecodeConfig = DecodeConfig(),
    output_dir: str | None = None,
    write_predictions: bool = True,
    use_cached: bool = False,
    seed: int = 42,
  ):
    """Builds the evaluator.

    Args:
      mixture_or_task_name: a registered SeqIO task or mixture; a mixture is
        scored task by task (tasks without metrics or without `split` are
        skipped, as in T5X).
      model: the `dss_jax.models.t5.Transformer`.
      feature_lengths: {"inputs": n, "targets": m}; inputs are truncated to n,
        at most ``max_decode_length`` (default m) tokens are decoded.
      split: the split to score.
      num_examples: score only the first this many examples of each task (a
        fixed set: no shuffling), None for all.
      batch_size: decode batch size.
      vocabulary: optional; checked against each task's and the model's.
      decode: decoding settings.
      output_dir: where metrics, predictions and TensorBoard summaries go
        (T5X: MODEL_DIR/inference_eval); None logs nothing to disk.
      write_predictions: also write the per-step predictions JSONL.
      use_cached: read SeqIO's offline cache of the tasks.
      seed: SeqIO's preprocessing seed.

    Raises:
      UnknownTaskError: the name is not registered.
      ValueError: a vocabulary larger than the model's embedding, or no task
        with metrics and this split.
    """
    root = get_task_or_mixture(mixture_or_task_name)
    feature_lengths = check_feature_lengths(feature_lengths)
    if num_examples is not None and not _is_positive_int(num_examples):
      raise errors.UserError(
        f"NUM_EXAMPLES must be None (all) or a whole number >= 1, got "
        f"{num_examples!r}"
      )
    self.model = model
    self.split = split
    self.batch_size = check_batch_size(batch_size)
    self.decode = decode
    self.max_decode_length = int(
      decode.max_decode_length or feature_lengths["targets"]
    )
    self.output_dir = output_dir
    model_vocab = model.config.vocab_size
    if vocabulary is not None:
      check_vocabulary(vocabulary, model_vocab, "the given vocabulary")
    for task in seqio.get_subtasks(root):
      for key, feature in task.output_features.items():
        if (
          vocabulary is not None
          and feature.vocabulary.vocab_size != vocabulary.vocab_size
        ):
          raise errors.UserError(
            f"task {task.name} feature {key!r} uses a vocabulary of "
            f"{feature.vocabulary.vocab_size} ids, not the given one of "
            f"{vocabulary.vocab_size}"
          )
        check_vocabulary(feature.vocabulary, model_vocab, f"task {task.name}")
    loggers: list[Callable[..., Any]] = []
    if output_dir:
      loggers = [
        seqio.TensorBoardLogger,
        functools.partial(
          SplitJSONLogger,
          split=split,
          write_n_results=None if write_predictions else 0,
        ),
      ]
    # Built without AutoGraph, as the training pipeline is (see
    # dss_jax.input_pipeline): the datasets are traced here.
    self._seqio = tf.autograph.experimental.do_not_convert(seqio.Evaluator)(
      mixture_or_task_name=mixture_or_task_name,
      feature_converter=seqio.EncDecFeatureConverter(pack=False),
      eval_split=split,
      use_cached=use_cached,
      seed=seed,
      sequence_length=dict(feature_lengths),
      num_examples=num_examples,
      shuffle=False,
      logger_cls=loggers,
      log_dir=output_dir,
      # Metrics are needed right away (keep-best), and a second thread
      # would only compete with the next train steps for the host.
      async_compute_metrics=False,
    )
    if not self._seqio.eval_tasks:
      raise errors.UserError(
        f"{mixture_or_task_name!r} has no task with metric functions and a "
        f"{split!r} split"
      )
    # SeqIO cuts long inputs without a word: count them once, per task.
    self.truncation = [
      count
      for count in input_pipeline.count_truncated(
        mixture_or_task_name,
        split,
        {**feature_lengths, "targets": self.max_decode_length},
        num_examples=num_examples,
        use_cached=use_cached,
      )
      if count.task in self.task_names
    ]
    for count in self.truncation:
      if count.inputs_cut or count.targets_cut:
        logging.warning("eval %s", self.truncation_message(count))

  @staticmethod
  def truncation_message(count: input_pipeline.Truncation) -> str:
    """What a count means for scoring: inputs cut, targets out of reach."""
    text = dataclasses.replace(count, targets_cut=0).message()
    if count.targets_cut:
      text += (
        f"; {count.targets_cut} of {count.examples} targets are longer than "
        f"the {count.targets_length} tokens decoded (MAX_DECODE_LENGTH), so "
        "no prediction can match them"
      )
    return text

  @property
  def task_names(self) -> list[str]:
    """The tasks that are scored."""
    return [t.name for t in self._seqio.eval_tasks]

  def _examples(self, ds: tf.data.Dataset, keys: Sequence[str]):
    indices, rows = [], {k: [] for k in keys}
    for index, features in ds.as_numpy_iterator():
      indices.append(int(index))
      for key in keys:
        rows[key].append(features[key])
    return indices, rows

  def _predict_fn(self, params: Params, ds: tf.data.Dataset):
    indices, rows = self._examples(ds, ["encoder_input_tokens"])
    tokens = predict_tokens(
      self.model,
      params,
      rows["encoder_input_tokens"],
      batch_size=self.batch_size,
      decode=self.decode,
      max_decode_length=self.max_decode_length,
    )
    return list(zip(indices, tokens, strict=True))

  def _score_fn(self, params: Params, ds: tf.data.Dataset):
    keys = [
      "encoder_input_tokens",
      "decoder_input_tokens",
      "decoder_target_tokens",
    ]
    indices, rows = self._examples(ds, keys)
    share = (
      host_share(len(indices)) if _split_over_hosts(params) else slice(None)
    )
    scores = []
    batches = [list(_batches(rows[k][share], self.batch_size)) for k in keys]
    for (real, enc), (_, dec_in), (_, targets) in zip(*batches, strict=True):
      out = _sequence_log_likelihood(self.model, params, enc, dec_in, targets)
      scores.extend(np.asarray(out)[:real].tolist())
    if share != slice(None):
      scores = gather_shares(np.asarray(scores, np.float32), len(indices))
      scores = scores.tolist()
    return list(zip(indices, scores, strict=True))

  def evaluate(self, params: Params, step: int) -> dict[str, float]:
    """Decodes, scores and logs one set of parameters.

    Args:
      params: the model's parameters (host or device arrays, any sharding).
      step: the training step, for the logs.

    Returns:
      ``{"<task>/<metric>": value}`` for every scored task.
    """
    start = time.time()
    if isinstance(params, Mapping) and set(params) == {"params"}:
      params = params["params"]
    future, _ = self._seqio.evaluate(
      compute_metrics=jax.process_index() == 0,
      step=int(step),
      predict_fn=functools.partial(self._predict_fn, params),
      score_fn=functools.partial(self._score_fn, params),
    )
    results = future.result() or {}
    flat = {}
    for task, metrics in results.items():
      for name, value in metrics.items():
        value = getattr(value, "value", value)
        try:
          flat[f"{task}/{name}"] = float(value)
        except (TypeError, ValueError):
          continue  # text or image metrics have no scalar form
    logging.info(
      "eval of split %s at step %d in %.1fs: %s",
      self.split,
      step,
      time.time() - start,
      flat,
    )
    return flat


# ---------------------------------------------------------------------------
# Eval-only jobs over saved checkpoints.


def scored_steps(output_dir: str, task_names: Sequence[str]) -> set[int]:
  """Steps that every task already has in ``<task>-metrics.jsonl``."""
  per_task = []
  for task in task_names:
    path = epath.Path(output_dir) / f"{task}-metrics.jsonl"
    steps = set()
    if path.exists():
      for line in path.read_text().splitlines():
        if line.strip():
          steps.add(int(json.loads(line)["step"]))
    per_task.append(steps)
  return set.intersection(*per_task) if per_task else set()


# Beside the metrics files: what each eval-only score was computed from.
EVAL_RECORD = "eval_record.jsonl"


class EvalResults(dict):
  """{step: {"<task>/<metric>": value}} scored now, and what was reused.

  Attributes:
    split: the split scored.
    task: the task or mixture scored.
    reused: steps not scored again: the record shows them scored with the
      same identity (task, split, examples, checkpoint, decoding,
      vocabulary, feature lengths).
    record: the record file, for the messages.
    truncation: per task, the examples longer than the feature lengths
      (lines such as "test: 3 of 200 inputs longer than 512 tokens were
      cut"), when any.
  """

  def __init__(self, task: str, split: str, record: str):
    super().__init__()
    self.task = task
    self.split = split
    self.reused: list[int] = []
    self.record = record
    self.truncation: list[str] = []


def checkpoint_checksum(ref: checkpoints.CheckpointRef) -> str:
  """A short digest of a checkpoint's content, without reading its arrays.

  This project's steps have their parameters' checksums recorded; other
  layouts are identified by their files' names, sizes and modification
  times.
  """
  digest = hashlib.sha256()
  recorded = checkpoints.recorded_checksums(ref)
  if recorded is not None:
    digest.update(json.dumps(recorded).encode())
    return digest.hexdigest()[:16]
  root = os.fspath(ref.path)
  files = [root]
  if tf.io.gfile.isdir(root):
    files = sorted(
      os.path.join(folder, name)
      for folder, _, names in tf.io.gfile.walk(root)
      for name in names
    )
  for path in files:
    stat = tf.io.gfile.stat(path)
    name = os.path.relpath(path, root)
    digest.update(f"{name}:{stat.length}:{stat.mtime_nsec};".encode())
  return digest.hexdigest()[:16]


def eval_identity(
  mixture_or_task_name: str,
  task_names: Sequence[str],
  *,
  split: str,
  num_examples: int | None,
  feature_lengths: Mapping[str, int],
  decode: DecodeConfig,
  max_decode_length: int,
  vocabulary: Mapping[str, Any],
  use_cached: bool,
) -> dict[str, Any]:
  """Everything besides the checkpoint that changes an eval's result."""
  return {
    "task": mixture_or_task_name,
    "tasks": list(task_names),
    "split": split,
    "num_examples": num_examples,
    "feature_lengths": dict(sorted(feature_lengths.items())),
    "decode": dataclasses.asdict(decode)
    | {"max_decode_length": max_decode_length},
    "vocabulary": dict(vocabulary),
    "use_cached": bool(use_cached),
  }


def read_eval_record(output_dir: str) -> dict[int, dict[str, Any]]:
  """{step: identity} of the newest record of each step (malformed lines
  are ignored: they only cause a rescore)."""
  path = epath.Path(output_dir) / EVAL_RECORD
  out: dict[int, dict[str, Any]] = {}
  if not path.exists():
    return out
  for line in path.read_text().splitlines():
    try:
      entry = json.loads(line)
      out[int(entry["step"])] = dict(entry["identity"])
    except (ValueError, KeyError, TypeError):
      continue
  return out


def _append_eval_record(
  output_dir: str, step: int, identity: Mapping[str, Any]
) -> None:
  path = os.path.join(output_dir, EVAL_RECORD)
  tf.io.gfile.makedirs(output_dir)
  line = json.dumps({"step": step, "identity": identity}, sort_keys=True)
  # Rewritten whole and renamed, as SeqIO's JSON logger appends (gs:// has
  # no append).
  text = ""
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      text = f.read()
  with tf.io.gfile.GFile(path + ".tmp", "w") as f:
    f.write(text + line + "\n")
  tf.io.gfile.rename(path + ".tmp", path, overwrite=True)


def identity_changes(
  old: Mapping[str, Any], new: Mapping[str, Any]
) -> list[str]:
  """What differs between two eval identities, as "key old -> new"."""
  changes = []
  for key in sorted(set(old) | set(new)):
    if old.get(key) != new.get(key):
      changes.append(f"{key} {old.get(key)!r} -> {new.get(key)!r}")
  return changes


def model_dir_of(checkpoint_path: str) -> str:
  """The run directory above a step dir, msgpack file or orbax item dir."""
  path = os.fspath(checkpoint_path).rstrip("/")
  step_parts = re.compile(
    r"^(checkpoint|checkpoint_\d+|\d+|state|checkpoints)$"
  )
  while step_parts.match(os.path.basename(path)) and os.path.dirname(path):
    path = os.path.dirname(path)
  return path


def _checkpoints_to_score(checkpoint_path: str, mode: str, step: int | None):
  if mode == "specific":
    return [checkpoints.resolve_checkpoint(checkpoint_path, step)]
  refs = checkpoints.list_checkpoints(checkpoint_path)
  if not refs:
    # Raises the one-line "missing" or "empty" error, or finds a step dir.
    return [checkpoints.resolve_checkpoint(checkpoint_path)]
  return refs[-1:] if mode == "latest" else refs


def evaluate_checkpoints(
  model: t5.Transformer,
  checkpoint_path: str,
  mixture_or_task_name: str,
  *,
  feature_lengths: Mapping[str, int],
  output_dir: str | None = None,
  mode: str = "latest",
  step: int | None = None,
  split: str = "validation",
  batch_size: int = 32,
  num_examples: int | None = None,
  decode: DecodeConfig = DecodeConfig(),
  vocabulary: seqio.Vocabulary | None = None,
  follow_until_step: int | None = None,
  poll_seconds: float = 60.0,
  use_cached: bool = False,
  partitioner: Partitioner | None = None,
) -> dict[int, dict[str, float]]:
  """Scores saved checkpoints: one, the latest, or all of a model dir.

  Args:
    model: the `dss_jax.models.t5.Transformer`.
    checkpoint_path: a model dir, step dir or T5X checkpoint.
    mixture_or_task_name: what to score.
    feature_lengths: {"inputs": n, "targets": m}.
    output_dir: where logs go (default: ``<model dir>/inference_eval``).
    mode: "specific" (``checkpoint_path`` itself, or ``step`` of it),
      "latest" or "all" (every checkpoint not scored yet).
    step: with "specific" and a model dir, the step to score.
    split: the split to score.
    batch_size: decode batch size.
    num_examples: examples per task (None: all).
    decode: decoding settings.
    vocabulary: optional; checked against the tasks and the model.
    follow_until_step: with "all", keep polling for new checkpoints until one
      of at least this step has been scored (follows a running job).
    poll_seconds: how often to look for new checkpoints when following.
    use_cached: read SeqIO's offline cache.

  A step is scored again, in "all" mode too, when anything that changes its
  result differs from the record of its last score (``eval_record.jsonl``
  beside the metrics: task, split, example count, feature lengths, decoding,
  vocabulary, the checkpoint's checksum); the log names what changed.

  Returns:
    An `EvalResults`: {step: {"<task>/<metric>": value}} for the
    checkpoints scored now, and the steps reused.

  Raises:
    ValueError: unknown mode; see also `Evaluator` and
      `checkpoints.resolve_checkpoint`.
  """
  if mode not in ("specific", "latest", "all"):
    raise errors.UserError(
      f"mode must be 'specific', 'latest' or 'all', got {mode!r}"
    )
  feature_lengths = check_feature_lengths(feature_lengths)
  check_batch_size(batch_size)
  # Fails fast (one line) on a missing or empty path, before reading data,
  # and before the default output folder (inside the model folder) makes
  # a missing path exist.
  _checkpoints_to_score(checkpoint_path, mode, step)
  if output_dir is None:
    output_dir = inference_eval_dir(model_dir_of(checkpoint_path))
  try:
    # Here, not after minutes of scoring: a path below a file, read-only.
    tf.io.gfile.makedirs(output_dir)
  except (tf.errors.OpError, OSError) as e:
    raise errors.UserError(
      f"eval output folder {output_dir} cannot be made "
      f"({errors.one_line(e)}); set EVAL_OUTPUT_DIR to a writable folder"
    ) from e
  partitioner = checkpoints.decode_partitioner(partitioner)
  trained = vocab.read_identity(model_dir_of(checkpoint_path))
  if trained is not None:
    for task in seqio.get_subtasks(get_task_or_mixture(mixture_or_task_name)):
      vocab.check_same(
        trained,
        task.output_features["targets"].vocabulary,
        f"task {task.name}",
      )
  evaluator = Evaluator(
    mixture_or_task_name,
    model,
    feature_lengths=feature_lengths,
    split=split,
    num_examples=num_examples,
    batch_size=batch_size,
    vocabulary=vocabulary,
    decode=decode,
    output_dir=output_dir,
    use_cached=use_cached,
  )
  reference = checkpoints.abstract_params(model)
  base_identity = eval_identity(
    mixture_or_task_name,
    evaluator.task_names,
    split=split,
    num_examples=num_examples,
    feature_lengths=feature_lengths,
    decode=decode,
    max_decode_length=evaluator.max_decode_length,
    vocabulary=vocab.identity(
      seqio.get_mixture_or_task(evaluator.task_names[0])
      .output_features["targets"]
      .vocabulary
    ),
    use_cached=use_cached,
  )
  results = EvalResults(
    mixture_or_task_name, split, os.path.join(output_dir, EVAL_RECORD)
  )
  results.truncation = [
    evaluator.truncation_message(c)
    for c in evaluator.truncation
    if c.inputs_cut or c.targets_cut
  ]
  done: set[int] = set()
  while True:
    recorded = read_eval_record(output_dir)
    for ref in _checkpoints_to_score(checkpoint_path, mode, step):
      step_num = ref.step if ref.step is not None else 0
      if step_num in done:
        continue
      identity = base_identity | {
        "step": step_num,
        "checkpoint": checkpoint_checksum(ref),
      }
      if recorded.get(step_num) == identity:
        logging.info(
          "step %s reused: scored before on split %s with the same "
          "settings and checkpoint (%s)",
          step_num,
          split,
          results.record,
        )
        results.reused.append(step_num)
        done.add(step_num)
        continue
      if step_num in recorded:
        logging.info(
          "step %s scored again: %s",
          step_num,
          "; ".join(identity_changes(recorded[step_num], identity)),
        )
      params, _ = t5x_checkpoints.match_params(
        checkpoints.read_ref(ref), reference, source=f"checkpoint {ref.path}"
      )
      context = (
        partitioner.context() if partitioner else contextlib.nullcontext()
      )
      with context:
        params = checkpoints.place_params(params, partitioner)
        results[step_num] = evaluator.evaluate(params, step_num)
      if jax.process_index() == 0:
        _append_eval_record(output_dir, step_num, identity)
      done.add(step_num)
    if mode != "all" or follow_until_step is None:
      return results
    if done and max(done) >= follow_until_step:
      return results
    time.sleep(poll_seconds)
