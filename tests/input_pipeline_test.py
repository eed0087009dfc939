"""The training stream with `cache_examples`: each example preprocessed once.

A SeqIO task over 24 numbered examples whose preprocessor counts its calls
(in Python, through `tf.numpy_function`) shows what the cache changes: the
preprocessors run once per example, not once per example and epoch, while
every epoch still holds each example exactly once in a fresh order, the
stream is a function of the seed, and a resumed stream continues exactly.
"""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from dss_jax import input_pipeline

_EXAMPLES = 24
_BATCH = 4
_VOCAB = seqio.ByteVocabulary()


class _Counter:
  calls = 0


def _dataset_fn(split, shuffle_files, seed=None):
  del split, shuffle_files, seed
  texts = [f"example {i:02d}" for i in range(_EXAMPLES)]
  return tf.data.Dataset.from_tensor_slices({"inputs": texts, "targets": texts})


@seqio.map_over_dataset
def _count(ex):
  def bump(x):
    _Counter.calls += 1
    return x

  inputs = tf.numpy_function(bump, [ex["inputs"]], tf.string)
  return dict(ex, inputs=tf.ensure_shape(inputs, []))


@pytest.fixture(scope="module")
def task_name():
  name = "input_pipeline_test_counted"
  if name not in seqio.TaskRegistry.names():
    features = {
      k: seqio.Feature(_VOCAB, add_eos=True) for k in ("inputs", "targets")
    }
    seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(_dataset_fn, splits=["train"]),
      preprocessors=[
        _count,
        seqio.preprocessors.tokenize,
        seqio.preprocessors.append_eos_after_trim,
      ],
      output_features=features,
    )
  return name


def _config(task_name, **overrides):
  values = dict(
    mixture_or_task_name=task_name,
    task_feature_lengths={"inputs": 16, "targets": 16},
    batch_size=_BATCH,
    seed=3,
    cache_examples=True,
    # The preprocessor counts its calls; the truncation count's own pass
    # over the split is tested below.
    count_truncated=False,
  )
  values.update(overrides)
  return input_pipeline.DatasetConfig(**values)


def _example_ids(batch) -> list[int]:
  """The number of each row's example ("example 07" -> 7)."""
  return [
    int(_VOCAB.decode([int(t) for t in row if t > 1])[-2:])
    for row in batch["encoder_input_tokens"]
  ]


def _stream(config, batches, start=0) -> list[int]:
  _Counter.calls = 0
  it = input_pipeline.iterate(input_pipeline.make_dataset(config), start)
  return [i for _ in range(batches) for i in _example_ids(next(it))]


def test_cached_examples_are_preprocessed_once(task_name):
  epochs = 3
  batches = epochs * _EXAMPLES // _BATCH
  _stream(_config(task_name), batches)
  cached_calls = _Counter.calls
  _stream(_config(task_name, cache_examples=False), batches)
  # The uncached stream reruns the preprocessor every epoch (its prefetch
  # may read a little ahead); the cached one stops after one pass.
  assert cached_calls == _EXAMPLES
  assert _Counter.calls >= epochs * _EXAMPLES


def test_each_cached_epoch_is_a_new_permutation(task_name):
  ids = _stream(_config(task_name), 3 * _EXAMPLES // _BATCH)
  epochs = np.reshape(ids, (3, _EXAMPLES))
  for epoch in epochs:
    assert sorted(epoch) == list(range(_EXAMPLES))
  assert len({tuple(e) for e in epochs}) == 3
  assert list(epochs[0]) != list(range(_EXAMPLES))  # shuffled


def test_cached_stream_is_a_function_of_the_seed(task_name):
  batches = 2 * _EXAMPLES // _BATCH
  first = _stream(_config(task_name), batches)
  assert _stream(_config(task_name), batches) == first
  assert _stream(_config(task_name, seed=4), batches) != first


def test_cached_stream_resumes_exactly(task_name):
  batches = 2 * _EXAMPLES // _BATCH + 3
  full = _stream(_config(task_name), batches)
  start = _EXAMPLES // _BATCH + 1  # resume inside the second epoch
  resumed = _stream(_config(task_name), batches - start, start=start)
  assert resumed == full[start * _BATCH :]


def test_cached_unshuffled_stream_keeps_the_source_order(task_name):
  ids = _stream(_config(task_name, shuffle=False), 2 * _EXAMPLES // _BATCH)
  assert ids == 2 * list(range(_EXAMPLES))


def test_cached_stream_has_no_autotuning_thread(task_name):
  # tf.data's autotuning thread sleeps up to a minute between rounds, and
  # deleting an iterator waits for it: 42 s at the end of a 100 s demo run.
  cached = input_pipeline.make_dataset(_config(task_name))
  assert cached.options().autotune.enabled is False
  uncached = input_pipeline.make_dataset(
    _config(task_name, cache_examples=False)
  )
  assert uncached.options().autotune.enabled is not False


def _register_long(name: str, inputs: list[str], targets: list[str]) -> str:
  if name not in seqio.TaskRegistry.names():

    def dataset_fn(split, shuffle_files, seed=None):
      del split, shuffle_files, seed
      return tf.data.Dataset.from_tensor_slices(
        {"inputs": inputs, "targets": targets}
      )

    seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(dataset_fn, splits=["train"]),
      preprocessors=[
        seqio.preprocessors.tokenize,
        seqio.preprocessors.append_eos_after_trim,
      ],
      output_features={
        k: seqio.Feature(_VOCAB, add_eos=True) for k in ("inputs", "targets")
      },
    )
  return name


def test_examples_longer_than_the_lengths_are_counted(caplog):
  # Byte vocabulary + EOS: "abcdefg" is 8 tokens, "abc" 4.
  name = _register_long(
    "input_pipeline_test_rationale",
    ["abcdefg", "abc", "abcdefghijk", "ab"],
    ["a long rationale", "ok", "ok", "ok"],
  )
  lengths = {"inputs": 6, "targets": 4}
  (count,) = input_pipeline.count_truncated(name, "train", lengths)
  assert (count.examples, count.inputs_cut, count.targets_cut) == (4, 2, 1)
  assert count.message() == (
    "train: 2 of 4 inputs longer than 6 tokens were cut; 1 of 4 targets "
    "longer than 4 tokens were cut (input_pipeline_test_rationale)"
  )
  config = _config(name, task_feature_lengths=lengths, count_truncated=True)
  with caplog.at_level("INFO"):
    input_pipeline.make_dataset(config)
  assert count.message() in caplog.text


def test_a_label_that_would_be_cut_is_an_error():
  name = _register_long(
    "input_pipeline_test_label", ["q1", "q2", "q3"], ["17", "5", "123"]
  )
  config = _config(
    name,
    task_feature_lengths={"inputs": 8, "targets": 2},
    count_truncated=True,
  )
  with pytest.raises(ValueError) as e:
    input_pipeline.make_dataset(config)
  message = str(e.value)
  assert message.startswith(
    "train: 2 of 3 labels of input_pipeline_test_label are longer than 2 "
    "tokens and would be cut"
  )
  assert "raise TASK_FEATURE_LENGTHS['targets']" in message
  assert "--label_length" in message
  # Long enough: no error.
  input_pipeline.make_dataset(
    _config(
      name,
      task_feature_lengths={"inputs": 8, "targets": 4},
      count_truncated=True,
    )
  )


def test_feature_lengths_need_inputs_and_targets(task_name):
  with pytest.raises(ValueError, match="has no 'targets' length"):
    _config(task_name, task_feature_lengths={"inputs": 8})
  with pytest.raises(ValueError, match=r"\['inputs'\] must be a whole"):
    _config(task_name, task_feature_lengths={"inputs": 0, "targets": 8})
