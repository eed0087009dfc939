"""The trainer learns: a tiny T5 reverses unseen digit strings (greedy decode).

Training strings and test strings are disjoint, so >= 95% exact match means
the model learned the task, not the examples. 500 AdamW steps of batch 32
take a few seconds of CPU; the tiny model reaches 100% there (95% is the bar).
"""

import jax
import numpy as np
import seqio
import tensorflow as tf

from dss_jax import decoding, optimizers, partitioning, trainer
from dss_jax import step as step_lib
from dss_jax.models import t5

LENGTH = 8  # up to 6 digits + EOS, padded


def _digit_strings(seed, count):
  rng = np.random.RandomState(seed)
  return [
    "".join(rng.choice(list("0123456789"), rng.randint(3, 7)))
    for _ in range(count)
  ]


def _train_strings():
  return _digit_strings(0, 4000)


def _reverse_source(split, shuffle_files=False, seed=None):
  del split, shuffle_files, seed
  strings = _train_strings()
  return tf.data.Dataset.from_tensor_slices(
    {"inputs": strings, "targets": [s[::-1] for s in strings]}
  )


def test_tiny_t5_learns_to_reverse_unseen_digit_strings(tmp_path):
  vocab = seqio.ByteVocabulary()
  seqio.TaskRegistry.add(
    "learn_reverse_digits",
    source=seqio.FunctionDataSource(_reverse_source, splits=["train"]),
    preprocessors=[
      seqio.preprocessors.tokenize,
      seqio.preprocessors.append_eos,
    ],
    output_features={
      k: seqio.Feature(vocab, add_eos=True) for k in ("inputs", "targets")
    },
  )
  model, _ = t5.make_test_model()
  result = trainer.train(
    model=model,
    mixture_or_task_name="learn_reverse_digits",
    task_feature_lengths={"inputs": LENGTH, "targets": LENGTH},
    train_steps=500,
    step=step_lib.StepConfig(inputs_per_step=32),
    model_dir=str(tmp_path),
    optimizer=optimizers.AdamW(
      optimizers.LearningRateSchedule(5e-3, warmup_steps=20)
    ),
    partitioner=partitioning.Partitioner(devices=jax.devices()[:1]),
    checkpoint_period=10_000,
    log_period=100,
    peak_flops=1e12,
    progress_bar=False,
  )

  seen = set(_train_strings())
  test = [s for s in _digit_strings(1, 400) if s not in seen][:200]
  assert len(test) == 200
  inputs = np.zeros((len(test), LENGTH), np.int32)
  for i, s in enumerate(test):
    ids = vocab.encode(s) + [1]  # EOS, as the task's add_eos
    inputs[i, : len(ids)] = ids
  tokens = decoding.decode(
    model, result.state.params, inputs, max_decode_length=LENGTH
  )
  predictions = [
    vocab.decode(ids) for ids in decoding.trim_after_eos(np.asarray(tokens))
  ]
  accuracy = np.mean(
    [p == s[::-1] for p, s in zip(predictions, test, strict=True)]
  )
  assert accuracy >= 0.95, (
    accuracy,
    list(zip(test, predictions, strict=True))[:10],
  )
