"""Training input pipeline: SeqIO mixture -> packed or padded model batches.

The data is split into `data_shards` input shards (`seqio.ShardInfo`; one per
JAX process by default). Each global batch is the concatenation of one
`batch_size / data_shards` slice from every shard, in shard order, and each
host reads only its own consecutive shards, yielding its slice of the global
batch as numpy arrays with the features of SeqIO's `EncDecFeatureConverter`,
plus `decoder_task_ids`: for every target token, 1 + the index of the task it
came from (0 on padding), so the trainer can log the loss of each task of a
mixture and weight tasks in paired mode. The global batches therefore depend
on `data_shards`, never on the number of processes: 2 processes reading one
shard each and 1 process reading both see the same global batches (the
multi-host tests pin this), and a run resumes exactly on another host count.

Two ways to feed a distilling step-by-step mixture:
  * sampled (default): SeqIO's mixing, each example drawn from one task with
    probability proportional to its rate, so the rationale rate is lambda in
    expectation.
  * paired: the official implementation's way. The mixture's paired task
    (`dss_jax.seqio_tasks.paired_task`: each example one input with its
    label and rationale, the task T5X's official recipe trains on) is
    shuffled, and both halves of each input go into the same batch, so the
    trainer can optimize alpha * L_label + (1 - alpha) * L_rationale
    exactly. An input shard holds whole inputs, so every paired input
    trains once per epoch on any number of shards.

With `cache_examples`, each task's examples are read through SeqIO once
(one unshuffled epoch: source, preprocessors, tokenization, trimming), kept in
memory with `tf.data.Dataset.cache`, and every epoch is a fresh shuffle of
that cache (a buffer of `_SHUFFLE_BUFFER` examples, so all of a small
dataset). Without it SeqIO reruns its preprocessors on every example of every
epoch: on the demo's 64-row steps that was 36 ms of CPU per step, as much as a
third of a training step of its student on one core; cached, 10 ms.

Packing (`pack=True`) never changes how many examples a step trains on: the
step's `batch_size` examples are taken first, then packed first-fit into
`packed_rows` rows (segment ids and positions as SeqIO's packed features), so
packing is an optimization of the same recipe, not a larger batch.

The pipeline's functions are traced as written, without AutoGraph
(`tf.autograph.experimental.do_not_convert` around each construction):
they, SeqIO's and ours, are TF ops already, and AutoGraph's reparse and
rewrite of every `map` function was 1.6 s of each pipeline's construction
(SVAMP's mixture to its first batch: 4.0 s -> 2.4 s) for the same batches,
bit for bit. A function that needed the rewrite (a Python `if` on a tensor)
fails at construction, loudly.

The position in the stream is the number of batches already consumed; the
pipeline is deterministic given its seed, so a resumed run skips that many
batches and sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import seqio
import tensorflow as tf
from absl import logging

from dss_jax import errors, paired, seqio_tasks
from dss_jax.step import TASK_IDS

Batch = dict[str, np.ndarray]

_SHUFFLE_BUFFER = 10_000


class DataShardsError(errors.UserError):
  """The input shards do not fit the process count or the checkpoint."""


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
    batch_size: the global number of examples a step trains on (all hosts
      together); without packing, also the number of rows.
    split: the split to read.
    shuffle: shuffle the examples (training) or not.
    seed: seed of shuffling and mixing; fixed so a resume is exact.
    pack: pack each step's `batch_size` examples into `packed_rows` rows.
    packed_rows: global rows of a packed step (required with `pack`); a
      step whose examples do not fit stops with an error naming the rows
      they need.
    use_cached: read the SeqIO cache of the tasks.
    cache_examples: keep each task's preprocessed examples in memory after
      one pass and shuffle the cache every epoch, instead of rerunning the
      SeqIO preprocessors every epoch (see the module docstring). Meant for
      datasets that fit in host memory; the order of the examples differs
      from the uncached stream's.
    data_shards: input shards the global batch is assembled from (see the
      module docstring); None: one per JAX process. Must be a multiple of
      the process count and divide `batch_size` (and `packed_rows`).
    paired: feed each input of the mixture's paired task as its label and
      its rationale example, in the same batch (the official recipe); the
      mixture must be a DSS mixture (`seqio_tasks.register_card`).
    rates: the sampling rates of the mixture's tasks, in its order (the
      trainer's `step.StepConfig.rates`: 1 and lambda); None: the rates the
      mixture was registered with, as SeqIO samples it.
  """

  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  batch_size: int
  split: str = "train"
  shuffle: bool = True
  seed: int = 0
  pack: bool = False
  packed_rows: int | None = None
  use_cached: bool = False
  cache_examples: bool = False
  paired: bool = False
  data_shards: int | None = None
  count_truncated: bool = True
  rates: Sequence[float] | None = None

  def __post_init__(self):
    lengths = dict(self.task_feature_lengths or {})
    for key in ("inputs", "targets"):
      value = lengths.get(key)
      if value is None:
        raise errors.UserError(
          f"TASK_FEATURE_LENGTHS has no {key!r} length ({lengths}); give "
          'both, e.g. {"inputs": 1024, "targets": 256}'
        )
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise errors.UserError(
          f"TASK_FEATURE_LENGTHS[{key!r}] must be a whole number >= 1, got "
          f"{value!r}"
        )


def task_names(name: str) -> list[str]:
  """The tasks of a mixture, in its order, or [name] for a task.

  Raises:
    errors.UserError: the name is not registered (close names suggested).
  """
  if name in seqio.MixtureRegistry.names():
    return [t.name for t in seqio.get_mixture_or_task(name).tasks]
  if name not in seqio.TaskRegistry.names():
    known = sorted(
      {*seqio.TaskRegistry.names(), *seqio.MixtureRegistry.names()}
    )
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f"; did you mean: {', '.join(close)}?" if close else ""
    raise errors.UserError(
      f"MIXTURE_OR_TASK_NAME {name!r} is not a registered task or mixture "
      f"({len(known)} are){hint}"
    )
  return [name]


def _sampling_rates(config: DatasetConfig, names: Sequence[str]) -> list:
  """The rates `config` samples `names` at: its own, else the registry's."""
  if config.rates is not None:
    if len(config.rates) != len(names):
      raise errors.UserError(
        f"{len(config.rates)} sampling rates for the {len(names)} tasks of "
        f"{config.mixture_or_task_name}"
      )
    return [float(r) for r in config.rates]
  if len(names) == 1:
    return [1.0]
  mixture = seqio.get_mixture_or_task(config.mixture_or_task_name)
  return [float(mixture.get_rate(t)) for t in mixture.tasks]


def targets_vocabulary(name: str) -> seqio.Vocabulary:
  """The targets vocabulary of a task, or of a mixture's first task."""
  task = seqio.get_subtasks(seqio.get_mixture_or_task(name))[0]
  return task.output_features["targets"].vocabulary


def num_data_shards(config: DatasetConfig) -> int:
  """The input shards of `config`: `data_shards`, or one per JAX process."""
  return config.data_shards or jax.process_count()


def host_shards(config: DatasetConfig) -> list[seqio.ShardInfo]:
  """The input shards this host reads: consecutive, in global-batch order.

  Process p of P reads shards [p * S / P, (p + 1) * S / P) of S, so
  `jax.make_array_from_process_local_data` puts each shard's rows where a
  single process reading all S shards puts them.

  Raises:
    DataShardsError: S is not a multiple of P.
  """
  shards = num_data_shards(config)
  processes = jax.process_count()
  if shards % processes:
    raise DataShardsError(
      f"DATA_SHARDS {shards} is not a multiple of the {processes} processes: "
      "set DATA_SHARDS (DatasetConfig.data_shards) to a multiple of them"
    )
  per_host = shards // processes
  first = jax.process_index() * per_host
  return [
    seqio.ShardInfo(index=i, num_shards=shards)
    for i in range(first, first + per_host)
  ]


def _with_task_ids(ds: tf.data.Dataset, task_index: int) -> tf.data.Dataset:
  def add(ex):
    return {
      "inputs": ex["inputs"],
      "targets": ex["targets"],
      "task_ids": tf.fill(tf.shape(ex["targets"]), task_index + 1),
    }

  return ds.map(add, num_parallel_calls=tf.data.AUTOTUNE)


def _task_dataset(
  config: DatasetConfig,
  task_name: str,
  shuffle: bool,
  seed: int,
  shard: seqio.ShardInfo,
) -> tf.data.Dataset:
  task = seqio.get_mixture_or_task(task_name)
  cache = config.cache_examples
  ds = task.get_dataset(
    sequence_length=dict(config.task_feature_lengths),
    split=config.split,
    use_cached=config.use_cached,
    # A cached task is read once, in order, and shuffled from the cache.
    shuffle=shuffle and not cache,
    seed=seed,
    shard_info=shard,
    num_epochs=None if shuffle and not cache else 1,
  )
  if cache:
    ds = ds.cache()
    if shuffle:
      ds = ds.shuffle(_SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
  return ds


def _sampled_examples(
  config: DatasetConfig,
  names: Sequence[str],
  rates: Sequence[float],
  shard: seqio.ShardInfo,
) -> tf.data.Dataset:
  datasets = [
    _with_task_ids(
      _task_dataset(config, name, config.shuffle, config.seed + i, shard), i
    ).repeat()
    for i, name in enumerate(names)
  ]
  if len(datasets) == 1:
    return datasets[0]
  total = sum(rates)
  return tf.data.Dataset.sample_from_datasets(
    datasets, weights=[r / total for r in rates], seed=config.seed
  )


def _paired_examples(
  config: DatasetConfig, names: Sequence[str], shard: seqio.ShardInfo
) -> tf.data.Dataset:
  """The mixture's paired task, shuffled, each input as its two examples.

  The pairing is the paired task's (`dss_jax.paired.select_paired_targets`,
  the one T5X trains on too): an input trains when it has both a label and
  a rationale. Each of its examples here becomes the label example and the
  rationale example, consecutive, so with padding (no packing) and a batch
  size divisible by two both halves of an input land in the same batch.
  """
  task_name = seqio_tasks.paired_task(config.mixture_or_task_name)
  if task_name is None:
    raise errors.UserError(
      f"the official recipe (paired mode) reads the paired task of a DSS "
      f"mixture; {config.mixture_or_task_name!r} ({', '.join(names)}) has "
      "none: train a mixture registered by dss_jax.seqio_tasks.register_card, "
      'or use RECIPE "mixture"'
    )
  ds = _task_dataset(config, task_name, False, config.seed, shard)
  halves = ("", paired.RATIONALE)

  def split(ex):
    return tuple(
      {"inputs": ex[half + "inputs"], "targets": ex[half + "targets"]}
      for half in halves
    )

  ds = ds.map(split, num_parallel_calls=tf.data.AUTOTUNE)
  if config.shuffle:
    ds = ds.shuffle(_SHUFFLE_BUFFER, seed=config.seed)
  ds = ds.repeat()

  def flatten(*examples):
    flat = None
    for i, ex in enumerate(examples):
      ex = dict(ex, task_ids=tf.fill(tf.shape(ex["targets"]), i + 1))
      one = tf.data.Dataset.from_tensors(ex)
      flat = one if flat is None else flat.concatenate(one)
    return flat

  return ds.flat_map(flatten)


# Targets of these tasks are labels: cutting one trains a wrong answer
# (a label "17" cut to 2 tokens trains as "1"). Rationales may be cut.
_LABEL_TASK_SUFFIXES = ("_label", "_finetune", "_distill")


@dataclasses.dataclass(frozen=True)
class Truncation:
  """How many examples of one task's split are longer than the lengths.

  Lengths count tokens with the EOS the task appends.

  Attributes:
    task: the SeqIO task.
    split: the split read.
    examples: examples read.
    inputs_cut: examples whose inputs are longer than `inputs_length`.
    targets_cut: examples whose targets are longer than `targets_length`.
    inputs_length: the inputs feature length.
    targets_length: the targets feature length.
  """

  task: str
  split: str
  examples: int
  inputs_cut: int
  targets_cut: int
  inputs_length: int
  targets_length: int

  @property
  def labels(self) -> bool:
    """Whether the task's targets are labels (never to be cut)."""
    return self.task.endswith(_LABEL_TASK_SUFFIXES)

  def message(self) -> str:
    """E.g. "train: 12 of 400 inputs longer than 512 tokens were cut"."""
    parts = []
    if self.inputs_cut:
      parts.append(
        f"{self.inputs_cut} of {self.examples} inputs longer than "
        f"{self.inputs_length} tokens were cut"
      )
    if self.targets_cut:
      what = "labels" if self.labels else "targets"
      parts.append(
        f"{self.targets_cut} of {self.examples} {what} longer than "
        f"{self.targets_length} tokens were cut"
      )
    if not parts:
      return f"{self.split}: no example of {self.examples} was cut"
    return f"{self.split}: {'; '.join(parts)} ({self.task})"


@tf.autograph.experimental.do_not_convert
def count_truncated(
  mixture_or_task_name: str,
  split: str,
  feature_lengths: Mapping[str, int],
  *,
  num_examples: int | None = None,
  use_cached: bool = False,
) -> list[Truncation]:
  """Counts, per task, the examples longer than the feature lengths.

  Reads each task's split once, tokenized but not trimmed (SeqIO trims to
  the feature lengths without a word; this says how often it does).

  Args:
    mixture_or_task_name: a registered task or mixture.
    split: the split to read.
    feature_lengths: {"inputs": n, "targets": m}.
    num_examples: only the first this many examples of each task.
    use_cached: read SeqIO's offline cache.

  Returns:
    One `Truncation` per task that has the split.
  """
  out = []
  root = seqio.get_mixture_or_task(mixture_or_task_name)
  for task in seqio.get_subtasks(root):
    if split not in task.splits:
      continue
    ds = task.get_dataset(
      sequence_length=None,
      split=split,
      use_cached=use_cached,
      shuffle=False,
      num_epochs=1,
    )
    if num_examples is not None:
      ds = ds.take(num_examples)
    sizes = ds.map(
      lambda ex: (tf.size(ex["inputs"]), tf.size(ex["targets"])),
      num_parallel_calls=tf.data.AUTOTUNE,
    ).batch(4096)
    examples = inputs_cut = targets_cut = 0
    for inputs, targets in sizes.as_numpy_iterator():
      examples += len(inputs)
      inputs_cut += int(np.sum(inputs > feature_lengths["inputs"]))
      targets_cut += int(np.sum(targets > feature_lengths["targets"]))
    out.append(
      Truncation(
        task=task.name,
        split=split,
        examples=examples,
        inputs_cut=inputs_cut,
        targets_cut=targets_cut,
        inputs_length=int(feature_lengths["inputs"]),
        targets_length=int(feature_lengths["targets"]),
      )
    )
  return out


def report_truncation(
  counts: Sequence[Truncation],
  length_setting: str = (
    "TASK_FEATURE_LENGTHS['targets'] (dss-jax distill: --label_length)"
  ),
) -> None:
  """Logs each count, and refuses labels that would be cut.

  Args:
    counts: `count_truncated`'s result.
    length_setting: the setting that raises the targets length on the
      user's path, for the message.

  Raises:
    errors.UserError: a label task has targets longer than its length.
  """
  for count in counts:
    if count.labels and count.targets_cut:
      raise errors.UserError(
        f"{count.split}: {count.targets_cut} of {count.examples} labels of "
        f"{count.task} are longer than {count.targets_length} tokens and "
        f"would be cut (a label '17' cut to 1 token trains as '1'); raise "
        f"{length_setting}"
      )
    if count.inputs_cut or count.targets_cut:
      logging.warning("%s", count.message())
    else:
      logging.info("%s", count.message())


@tf.autograph.experimental.do_not_convert
def make_dataset(config: DatasetConfig) -> tf.data.Dataset:
  """Returns this host's infinite stream of model-feature batches.

  Args:
    config: what to read.

  Returns:
    A `tf.data.Dataset` of dicts with the `EncDecFeatureConverter` features
    (plus segment ids and positions when packing) and `decoder_task_ids`,
    batched to this host's share of `config.batch_size`: one slice per input
    shard it reads, concatenated in shard order.

  Raises:
    ValueError: if the batch does not split evenly over the input shards,
      the shards not over the hosts, or paired mode is asked for a single
      task.
  """
  shards = num_data_shards(config)
  if config.batch_size % shards:
    raise errors.UserError(
      f"batch size {config.batch_size} does not split over {shards} input "
      "shards (one per host unless DATA_SHARDS is set)"
    )
  names = task_names(config.mixture_or_task_name)
  if config.paired:
    if len(names) < 2:
      raise errors.UserError(
        "paired mode needs a mixture of at least two tasks"
      )
    if (config.batch_size // shards) % len(names):
      raise errors.UserError(
        f"paired mode: batch size {config.batch_size} must be a multiple of "
        f"the {len(names)} tasks times the {shards} input shards so each "
        "pair stays in one batch"
      )
  if config.count_truncated:
    # Every host counts the whole split, so a refused label stops them all.
    report_truncation(
      count_truncated(
        config.mixture_or_task_name,
        config.split,
        config.task_feature_lengths,
        use_cached=config.use_cached,
      )
    )
  per_shard = [_shard_batches(config, s) for s in host_shards(config)]
  if len(per_shard) == 1:
    ds = per_shard[0]
  else:
    ds = tf.data.Dataset.zip(tuple(per_shard)).map(
      lambda *batches: {
        k: tf.concat([b[k] for b in batches], axis=0) for k in batches[0]
      }
    )
  ds = ds.prefetch(tf.data.AUTOTUNE)
  if config.cache_examples:
    # A cached stream leaves little to tune, and tf.data's autotuning thread
    # sleeps up to a minute between rounds: deleting the iterator at the end
    # of a run waits for it to wake (42 s measured after a 100 s run).
    options = tf.data.Options()
    options.autotune.enabled = False
    ds = ds.with_options(options)
  return ds


def _shard_batches(
  config: DatasetConfig, shard: seqio.ShardInfo
) -> tf.data.Dataset:
  """One input shard's slices of the global batches, packed if asked."""
  names = task_names(config.mixture_or_task_name)
  if config.paired:
    examples = _paired_examples(config, names, shard)
  else:
    examples = _sampled_examples(
      config, names, _sampling_rates(config, names), shard
    )
  lengths = dict(config.task_feature_lengths)
  lengths["task_ids"] = lengths["targets"]
  converter = TaskIdEncDecFeatureConverter(pack=False)
  ds = converter(examples, lengths)
  ds = ds.batch(config.batch_size // shard.num_shards, drop_remainder=True)
  if config.pack:
    ds = _packed(ds, config, shard.num_shards)
  return ds


PACKED_FEATURES = (
  "encoder_input_tokens",
  "encoder_segment_ids",
  "encoder_positions",
  "decoder_target_tokens",
  "decoder_input_tokens",
  "decoder_loss_weights",
  "decoder_segment_ids",
  "decoder_positions",
  TASK_IDS,
)


def pack_examples(batch: Mapping[str, np.ndarray], rows: int) -> Batch:
  """Packs one step's padded examples first-fit into `rows` rows.

  Every example keeps its tokens, its own decoder inputs (each segment's
  starts at 0, as SeqIO's packed `decoder_input_tokens`), loss weights and
  task ids; segment ids number the examples of a row from 1 and positions
  restart at 0 per segment.

  Args:
    batch: unpacked `EncDecFeatureConverter` features (+ task ids), one
      example per row, padded with 0.
    rows: rows to pack into.

  Returns:
    The packed features (`PACKED_FEATURES`; task ids only when given),
    [rows, length] each.

  Raises:
    ValueError: the examples need more than `rows` rows (says how many).
  """
  enc = batch["encoder_input_tokens"]
  dec = batch["decoder_target_tokens"]
  enc_len, dec_len = enc.shape[1], dec.shape[1]
  enc_real = np.count_nonzero(enc, axis=1)
  dec_real = np.count_nonzero(dec, axis=1)
  fill_enc, fill_dec, where = [], [], []
  for a, b in zip(enc_real, dec_real, strict=True):
    fits = (
      r
      for r in range(len(fill_enc))
      if fill_enc[r] + a <= enc_len and fill_dec[r] + b <= dec_len
    )
    row = next(fits, None)
    if row is None:
      row = len(fill_enc)
      fill_enc.append(0)
      fill_dec.append(0)
    where.append((row, fill_enc[row], fill_dec[row]))
    fill_enc[row] += a
    fill_dec[row] += b
  if len(fill_enc) > rows:
    raise errors.UserError(
      f"the {len(enc)} examples of a step need {len(fill_enc)} packed rows "
      f"of {enc_len}/{dec_len} tokens, but only {rows} are set: raise the "
      f"gin macro PACKED_ROWS (--gin.PACKED_ROWS={len(fill_enc)} or more, "
      "with runs/train.gin or gin_configs/t5x/packing.gin)"
    )
  out = {
    "encoder_input_tokens": np.zeros((rows, enc_len), enc.dtype),
    "encoder_segment_ids": np.zeros((rows, enc_len), np.int32),
    "encoder_positions": np.zeros((rows, enc_len), np.int32),
  }
  sources = [
    ("decoder_target_tokens", dec),
    ("decoder_input_tokens", batch["decoder_input_tokens"]),
    ("decoder_loss_weights", batch["decoder_loss_weights"]),
  ]
  if TASK_IDS in batch:
    sources.append((TASK_IDS, batch[TASK_IDS]))
  for name, _ in sources:
    out[name] = np.zeros((rows, dec_len), np.int32)
  out["decoder_segment_ids"] = np.zeros((rows, dec_len), np.int32)
  out["decoder_positions"] = np.zeros((rows, dec_len), np.int32)
  segments = [0] * rows
  for i, (row, at_enc, at_dec) in enumerate(where):
    segments[row] += 1
    a, b = enc_real[i], dec_real[i]
    out["encoder_input_tokens"][row, at_enc : at_enc + a] = enc[i, :a]
    out["encoder_segment_ids"][row, at_enc : at_enc + a] = segments[row]
    out["encoder_positions"][row, at_enc : at_enc + a] = np.arange(a)
    for name, source in sources:
      out[name][row, at_dec : at_dec + b] = source[i, :b]
    out["decoder_segment_ids"][row, at_dec : at_dec + b] = segments[row]
    out["decoder_positions"][row, at_dec : at_dec + b] = np.arange(b)
  return out


def _packed(
  ds: tf.data.Dataset, config: DatasetConfig, shards: int
) -> tf.data.Dataset:
  """Packs each shard's slice of a step into its share of the packed rows."""
  if not config.packed_rows:
    raise errors.UserError(
      "packing needs the gin macro PACKED_ROWS (--gin.PACKED_ROWS=N; in "
      "Python DatasetConfig.packed_rows): the rows a step's "
      f"{config.batch_size} examples are packed into"
    )
  if config.packed_rows % shards:
    raise errors.UserError(
      f"packed rows {config.packed_rows} do not split over {shards} input "
      "shards (one per host unless DATA_SHARDS is set)"
    )
  return pack_batches(
    ds, config.packed_rows // shards, config.task_feature_lengths
  )


def _host_share(count: int, what: str) -> int:
  if count % jax.process_count():
    raise errors.UserError(
      f"{what} {count} do not split over {jax.process_count()} hosts"
    )
  return count // jax.process_count()


def pack_batches(
  ds: tf.data.Dataset, rows: int, task_feature_lengths: Mapping[str, int]
) -> tf.data.Dataset:
  """Maps batches of unpacked examples to `rows` packed rows each.

  Args:
    ds: batches of `EncDecFeatureConverter(pack=False)` features (task ids
      optional), one step's examples per batch.
    rows: rows per packed batch.
    task_feature_lengths: {"inputs": ..., "targets": ...}.

  Returns:
    Batches of packed features (see `pack_examples`).
  """
  names = list(ds.element_spec)
  features = [f for f in PACKED_FEATURES if f != TASK_IDS or f in names]
  lengths = {
    name: task_feature_lengths[
      "inputs" if name.startswith("encoder") else "targets"
    ]
    for name in features
  }

  def pack(*arrays):
    packed = pack_examples(dict(zip(names, arrays, strict=True)), rows)
    return tuple(packed[name].astype(np.int32) for name in features)

  def to_packed(batch):
    arrays = tf.numpy_function(
      pack,
      [batch[name] for name in names],
      [tf.int32] * len(features),
      stateful=False,
    )
    return {
      name: tf.ensure_shape(array, [rows, lengths[name]])
      for name, array in zip(features, arrays, strict=True)
    }

  return ds.map(to_packed, num_parallel_calls=tf.data.AUTOTUNE)


class StepPackedEncDecFeatureConverter(seqio.EncDecFeatureConverter):
  """T5X's feature converter, packing that keeps a step's examples.

  T5X counts BATCH_SIZE in rows and packs a stream, so a packed step holds a
  varying number of examples. With `pack=True` this converter takes
  `examples_per_step` examples, packs them first-fit into `rows_per_step`
  rows (`pack_examples`) and emits those rows in order; with T5X's
  BATCH_SIZE equal to `rows_per_step`, every step trains on exactly
  `examples_per_step` examples (gin_configs/t5x/packing.gin binds both).
  Without packing (eval, inference) it is SeqIO's `EncDecFeatureConverter`.

  Args:
    pack: pack (training) or not.
    use_custom_packing_ops: unused (T5X passes it).
    examples_per_step: global examples of one step.
    rows_per_step: global rows of one step (T5X's BATCH_SIZE).
    **kwargs: `seqio.EncDecFeatureConverter`'s.
  """

  def __init__(
    self,
    pack: bool = True,
    use_custom_packing_ops: bool = False,
    examples_per_step: int = 0,
    rows_per_step: int = 0,
    **kwargs: Any,
  ):
    super().__init__(pack=pack, use_custom_packing_ops=False, **kwargs)
    del use_custom_packing_ops
    self.examples_per_step = examples_per_step
    self.rows_per_step = rows_per_step

  def __call__(
    self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
  ) -> tf.data.Dataset:
    if not self.pack:
      return super().__call__(ds, task_feature_lengths)
    if not (self.examples_per_step and self.rows_per_step):
      raise errors.UserError(
        "step packing needs examples_per_step and rows_per_step "
        "(EXAMPLES_PER_STEP and PACKED_ROWS in gin_configs/t5x/packing.gin)"
      )
    unpacked = seqio.EncDecFeatureConverter(pack=False)
    ds = unpacked(ds, task_feature_lengths)
    examples = _host_share(self.examples_per_step, "examples per step")
    rows = _host_share(self.rows_per_step, "packed rows")
    ds = ds.batch(examples, drop_remainder=True)
    return pack_batches(ds, rows, task_feature_lengths).unbatch()


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
