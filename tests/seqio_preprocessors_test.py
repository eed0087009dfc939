"""Tests for dss_jax.preprocessors: targets, prefixes, seeded subsets."""

import numpy as np
import pytest
import tensorflow as tf
from seqio import test_utils

from dss_jax import preprocessors


def _annotated(rows):
  keys = ["id", "input", "gold_label", "teacher_label", "rationale"]
  return tf.data.Dataset.from_tensor_slices(
    {k: [r[i] for r in rows] for i, k in enumerate(keys)}
  )


_ROWS = [
  ("a", "2 + 2?", "( 2.0 + 2.0 )", "(2 + 2)", "Two and two make 4."),
  ("b", "Sky?", "blue", "", ""),
  ("c", "Grass?", "", "green", " It is chlorophyll. "),
]


@pytest.mark.parametrize(
  "kind, expected",
  [
    (
      "gold",
      [
        {"id": "a", "input": "2 + 2?", "target": "( 2.0 + 2.0 )"},
        {"id": "b", "input": "Sky?", "target": "blue"},
      ],
    ),
    (
      "teacher",
      [
        {"id": "a", "input": "2 + 2?", "target": "(2 + 2)"},
        {"id": "c", "input": "Grass?", "target": "green"},
      ],
    ),
    (
      "rationale",
      [
        {"id": "a", "input": "2 + 2?", "target": "Two and two make 4."},
        {"id": "c", "input": "Grass?", "target": "It is chlorophyll."},
      ],
    ),
  ],
)
def test_select_target_drops_empty(kind, expected):
  ds = preprocessors.select_target(_annotated(_ROWS), kind)
  test_utils.assert_dataset(ds, expected)


def test_select_target_unknown():
  with pytest.raises(ValueError, match="unknown target"):
    preprocessors.select_target(_annotated(_ROWS), "silver")


def test_add_prefix_and_target():
  ds = tf.data.Dataset.from_tensor_slices(
    {"id": ["a"], "input": ["Sky?"], "target": ["blue"]}
  )
  test_utils.assert_dataset(
    preprocessors.add_prefix_and_target(ds, "explain: "),
    {"inputs": "explain: Sky?", "targets": "blue"},
  )
  test_utils.assert_dataset(
    preprocessors.add_prefix_and_target(ds),
    {"inputs": "Sky?", "targets": "blue"},
  )


def test_rank_threshold_exact_counts_and_nesting():
  ids = tf.constant([f"ex-{i}" for i in range(800)])
  keys = preprocessors.hash_keys(ids, 0, preprocessors.FRACTION_SALT).numpy()
  previous = set()
  for fraction, count in [(0.125, 100), (0.25, 200), (0.5, 400), (0.75, 600)]:
    threshold = preprocessors.rank_threshold(keys, fraction)
    chosen = {i for i, k in enumerate(keys) if k <= threshold}
    assert len(chosen) == count
    assert previous <= chosen
    previous = chosen
  assert preprocessors.rank_threshold(keys, 1.0) is None
  with pytest.raises(ValueError, match="fraction"):
    preprocessors.rank_threshold(keys, 0.0)


def test_hash_keys_are_stable_and_seeded():
  ids = tf.constant(["train-000000", "q17"])
  # Golden SipHash values: a change of hash would silently change every
  # published subset, so it must show up here.
  a = preprocessors.hash_keys(ids, 0, preprocessors.FRACTION_SALT).numpy()
  np.testing.assert_array_equal(a, [670964342382257229, 2768436269844117943])
  b = preprocessors.hash_keys(ids, 1, preprocessors.FRACTION_SALT).numpy()
  assert not np.array_equal(a, b)
  assert all(0 <= k < 2**62 for k in a)


def test_filter_by_key_splits_into_complements():
  ids = [f"ex-{i}" for i in range(50)]
  ds = tf.data.Dataset.from_tensor_slices({"id": ids})
  keys = preprocessors.hash_keys(tf.constant(ids), 3, 7).numpy()
  threshold = preprocessors.rank_threshold(keys, 0.1)
  kept = [
    x["id"]
    for x in preprocessors.filter_by_key(
      ds, threshold, 3, 7
    ).as_numpy_iterator()
  ]
  rest = [
    x["id"]
    for x in preprocessors.filter_by_key(
      ds, threshold, 3, 7, keep_below=False
    ).as_numpy_iterator()
  ]
  assert len(kept) == 5
  assert sorted(kept + rest) == sorted(i.encode() for i in ids)
  assert (
    list(preprocessors.filter_by_key(ds, None, 3, 7, keep_below=False)) == []
  )


def test_tokenize_at_eos_reads_the_separator_as_eos():
  import seqio

  byte = seqio.ByteVocabulary()
  features = {
    "inputs": seqio.Feature(byte, add_eos=True),
    "targets": seqio.Feature(byte, add_eos=True),
  }
  ds = tf.data.Dataset.from_tensor_slices(
    {"inputs": ["predict: A b.</s>C", "no separator "], "targets": ["x", "y"]}
  )
  ds = preprocessors.tokenize_at_eos(ds, features)
  ids = [b + 3 for b in b"predict: A b."] + [1] + [b"C"[0] + 3]
  test_utils.assert_dataset(
    ds,
    [
      {
        "inputs_pretokenized": "predict: A b.</s>C",
        "inputs": ids,
        "targets_pretokenized": "x",
        "targets": [b"x"[0] + 3],
      },
      # Without the separator: exactly SeqIO's tokenize.
      {
        "inputs_pretokenized": "no separator ",
        "inputs": list(byte.encode("no separator ")),
        "targets_pretokenized": "y",
        "targets": [b"y"[0] + 3],
      },
    ],
  )
  # Inference tokenizes the same way.
  assert preprocessors.encode_at_eos(byte, "predict: A b.</s>C") == ids
