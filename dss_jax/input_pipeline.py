"""Training input pipeline: SeqIO mixture -> packed or padded model batches.

Each host reads its own shard (`seqio.ShardInfo` from the JAX process index)
and yields its slice of the global batch as numpy arrays with the features of
SeqIO's `EncDecFeatureConverter`, plus `decoder_task_ids`: for every target
token, 1 + the index of the task it came from (0 on padding), so the trainer
can log the loss of each task of a mixture and weight tasks in paired mode.

Two ways to feed a distilling step-by-step mixture:
  * sampled (default): SeqIO's mixing, each example drawn from one task with
    probability proportional to its rate, so the rationale rate is lambda in
    expectation.
  * paired: the official implementation's way. The unshuffled tasks of one
    source (label and rationale) are joined example by example (on the input
    text after the prefix, since a rationale task drops examples without a
    rationale), shuffled together, and both halves of each pair go into the
    same batch, so the trainer can optimize L_label + lambda * L_rationale
    exactly.

The position in the stream is the number of batches already consumed; the
pipeline is deterministic given its seed, so a resumed run skips that many
batches and sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import seqio
import tensorflow as tf

Batch = dict[str, np.ndarray]

TASK_IDS = "decoder_task_ids"
_SHUFFLE_BUFFER = 10_000


class TaskIdEncDecFeatureConverter(seqio.EncDecFeatureConverter):
  """`EncDecFeatureConverter` that also carries per-token task ids.

  SeqIO's pass-through features cannot be packed, so the task id travels as a
  target-aligned token feature (`task_ids`, same length as `targets`) that is
  packed and padded exactly like the targets.
  """

  TASK_FEATURES = {
    **seqio.EncDecFeatureConverter.TASK_FEATURES,
    "task_ids": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
  }
  MODEL_FEATURES = {
    **seqio.EncDecFeatureConverter.MODEL_FEATURES,
    TASK_IDS: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
  }

  def _convert_example(
    self, features: Mapping[str, tf.Tensor]
  ) -> Mapping[str, tf.Tensor]:
    d = dict(super()._convert_example(features))
    d[TASK_IDS] = features["task_ids"]
    return d

  def get_model_feature_lengths(
    self, task_feature_lengths: Mapping[str, int]
  ) -> Mapping[str, int]:
    lengths = dict(super().get_model_feature_lengths(task_feature_lengths))
    lengths[TASK_IDS] = task_feature_lengths["targets"]
    return lengths


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
  """What the trainer reads; gin binds it from the T5X-named macros.

  Attributes:
    mixture_or_task_name: a registered SeqIO task or mixture.
    task_feature_lengths: {"inputs": ..., "targets": ...}.
    batch_size: the global batch size (all hosts together).
    split: the split to read.
    shuffle: shuffle the examples (training) or not.
    seed: seed of shuffling and mixing; fixed so a resume is exact.
    pack: pack several examples into one row (SeqIO packing).
    use_cached: read the SeqIO cache of the tasks.
    paired: feed each source example with all of the mixture's tasks in the
      same batch (the official implementation's way); the mixture's tasks must
      be aligned example by example when read unshuffled.
  """

  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  batch_size: int
  split: str = "train"
  shuffle: bool = True
  seed: int = 0
  pack: bool = False
  use_cached: bool = False
  paired: bool = False


def task_rates(name: str) -> dict[str, float]:
  """Returns {task name: rate} of a mixture, or {name: 1.0} for a task."""
  if name in seqio.MixtureRegistry.names():
    mixture = seqio.get_mixture_or_task(name)
    return {t.name: float(mixture.get_rate(t)) for t in mixture.tasks}
  return {seqio.get_mixture_or_task(name).name: 1.0}


def shard_info() -> seqio.ShardInfo:
  """This host's shard of the data: one shard per JAX process."""
  return seqio.ShardInfo(
    index=jax.process_index(), num_shards=jax.process_count()
  )


def _with_task_ids(ds: tf.data.Dataset, task_index: int) -> tf.data.Dataset:
  def add(ex):
    return {
      "inputs": ex["inputs"],
      "targets": ex["targets"],
      "task_ids": tf.fill(tf.shape(ex["targets"]), task_index + 1),
    }

  return ds.map(add, num_parallel_calls=tf.data.AUTOTUNE)


def _task_dataset(
  config: DatasetConfig, task_name: str, shuffle: bool, seed: int
) -> tf.data.Dataset:
  task = seqio.get_mixture_or_task(task_name)
  return task.get_dataset(
    sequence_length=dict(config.task_feature_lengths),
    split=config.split,
    use_cached=config.use_cached,
    shuffle=shuffle,
    seed=seed,
    shard_info=shard_info(),
    num_epochs=None if shuffle else 1,
  )


def _sampled_examples(
  config: DatasetConfig, names: Sequence[str], rates: Sequence[float]
) -> tf.data.Dataset:
  datasets = [
    _with_task_ids(
      _task_dataset(config, name, config.shuffle, config.seed + i), i
    ).repeat()
    for i, name in enumerate(names)
  ]
  if len(datasets) == 1:
    return datasets[0]
  total = sum(rates)
  return tf.data.Dataset.sample_from_datasets(
    datasets, weights=[r / total for r in rates], seed=config.seed
  )


def _source_key(inputs_pretokenized: bytes) -> bytes:
  """The source input of an example: its text after the task prefix."""
  _, sep, rest = inputs_pretokenized.partition(b": ")
  return rest if sep else inputs_pretokenized


def join_by_source(
  streams: Sequence[Iterator[Mapping[str, Any]]],
) -> Iterator[tuple[Mapping[str, Any], ...]]:
  """Pairs up the examples of several tasks that share a source input.

  Each stream must list its examples in the source's order, possibly with
  some left out (a rationale task drops examples whose teacher gave no
  rationale). Examples are matched on `inputs_pretokenized` minus the task
  prefix; an example missing from any stream is skipped.

  Args:
    streams: iterators of examples with `inputs_pretokenized`.

  Yields:
    One tuple per source example present in every stream.
  """
  buffers = [collections.OrderedDict() for _ in streams]
  seen = [collections.Counter() for _ in streams]
  live = list(streams)
  while any(it is not None for it in live):
    for i, it in enumerate(live):
      if it is None:
        continue
      example = next(it, None)
      if example is None:
        live[i] = None
        continue
      key = _source_key(example["inputs_pretokenized"])
      # Repeated inputs get an occurrence number so they pair in order.
      seen[i][key] += 1
      buffers[i][(key, seen[i][key])] = example
    for key in [k for k in buffers[0] if all(k in b for b in buffers[1:])]:
      yield tuple(b[key] for b in buffers)
      for b in buffers:
        # Older entries can no longer match: the streams share one order.
        while b:
          k, _ = b.popitem(last=False)
          if k == key:
            break


def _paired_examples(
  config: DatasetConfig, names: Sequence[str]
) -> tf.data.Dataset:
  """Joins the unshuffled tasks by source, shuffles the tuples, flattens."""
  datasets = [_task_dataset(config, name, False, config.seed) for name in names]
  token_spec = tf.TensorSpec([None], tf.int32)
  example_spec = {"inputs": token_spec, "targets": token_spec}

  def generate():
    streams = [ds.as_numpy_iterator() for ds in datasets]
    for examples in join_by_source(streams):
      yield tuple(
        {"inputs": ex["inputs"], "targets": ex["targets"]} for ex in examples
      )

  ds = tf.data.Dataset.from_generator(
    generate, output_signature=tuple(example_spec for _ in names)
  )
  if config.shuffle:
    ds = ds.shuffle(_SHUFFLE_BUFFER, seed=config.seed)
  ds = ds.repeat()

  def flatten(*examples):
    # One pair (label, rationale, ...) becomes consecutive examples, so with
    # padding (no packing) and a batch size divisible by the number of tasks
    # both halves of a pair land in the same batch.
    flat = None
    for i, ex in enumerate(examples):
      ex = dict(ex, task_ids=tf.fill(tf.shape(ex["targets"]), i + 1))
      one = tf.data.Dataset.from_tensors(ex)
      flat = one if flat is None else flat.concatenate(one)
    return flat

  return ds.flat_map(flatten)


def make_dataset(config: DatasetConfig) -> tf.data.Dataset:
  """Returns this host's infinite stream of model-feature batches.

  Args:
    config: what to read.

  Returns:
    A `tf.data.Dataset` of dicts with the `EncDecFeatureConverter` features
    (plus segment ids and positions when packing) and `decoder_task_ids`,
    batched to this host's share of `config.batch_size`.

  Raises:
    ValueError: if the batch does not split evenly over hosts, or paired mode
      is asked for a single task.
  """
  if config.batch_size % jax.process_count():
    raise ValueError(
      f"batch size {config.batch_size} does not split over "
      f"{jax.process_count()} hosts"
    )
  rates = task_rates(config.mixture_or_task_name)
  names = list(rates)
  if config.paired:
    if len(names) < 2:
      raise ValueError("paired mode needs a mixture of at least two tasks")
    if not config.pack and config.batch_size % len(names):
      raise ValueError(
        f"paired mode: batch size {config.batch_size} must be a multiple of "
        f"the {len(names)} tasks so each pair stays in one batch"
      )
    examples = _paired_examples(config, names)
  else:
    examples = _sampled_examples(config, names, list(rates.values()))
  lengths = dict(config.task_feature_lengths)
  lengths["task_ids"] = lengths["targets"]
  converter = TaskIdEncDecFeatureConverter(pack=config.pack)
  ds = converter(examples, lengths)
  ds = ds.batch(config.batch_size // jax.process_count(), drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE)


def iterate(ds: tf.data.Dataset, start_batch: int = 0) -> Iterator[Batch]:
  """Iterates numpy batches from position `start_batch` of `ds`.

  Args:
    ds: from `make_dataset`.
    start_batch: batches to skip (the checkpointed stream position).

  Returns:
    An iterator of numpy batches.
  """
  if start_batch:
    ds = ds.skip(start_batch)
  return ds.as_numpy_iterator()
