"""SeqIO preprocessors and seeded split selection for the DSS tasks.

Examples of the annotated TFDS dataset (`dss_annotated`) carry the formatted
`input`, the `gold_label`, the teacher's `teacher_label` and `rationale`.
The functions here turn them into SeqIO's `inputs`/`targets`:

* `select_target` picks the target text (gold label, teacher label or
  rationale) and drops examples where it is empty (an unparsable teacher
  answer teaches nothing);
* `add_prefix_and_target` writes `inputs = prefix + input` (`"predict: "`,
  `"explain: "` or nothing for the baselines) and `targets`;
* `tokenize_at_eos` is SeqIO's `tokenize` except that the inputs' literal
  `</s>` becomes the EOS id, as Hugging Face's T5 tokenizer does in the
  official code (its NLI inputs are `premise</s>hypothesis`);
* `hash_keys` / `rank_threshold` / `filter_by_key` select deterministic subsets
  by a seeded hash of the example id: the validation hold-out (10% of train
  where a dataset has no validation split) and the training fractions of the
  paper (12.5 ... 100%). A subset keeps the `ceil(fraction * n)` examples with
  the smallest keys, so it depends only on the ids and the seed: it is the same
  for every method (label, rationale, baselines) and a smaller fraction is
  always inside a larger one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import numpy as np
import seqio
import tensorflow as tf

from dss_jax.cards import EOS_SEPARATOR

# Target kinds a task can train on.
TARGET_FIELDS: Mapping[str, str] = {
  "gold": "gold_label",
  "teacher": "teacher_label",
  "rationale": "rationale",
}

# SentencePiece's word-boundary piece, which the official tokenizer emits alone
# before an EOS that follows whitespace (see `encode_at_eos`).
_SPACE_PIECE = "\u2581"
# RE2 (TF) and Python agree on this: the text ends in whitespace.
_ENDS_IN_SPACE = r"(?s).*\s"

# SipHash keys must be two 64-bit integers; the salt keeps the hold-out hash
# and the fraction hash independent, so a fraction of train is not biased
# towards the ids the hold-out just removed.
HOLDOUT_SALT = 0x5EED_0001
FRACTION_SALT = 0x5EED_0002


def hash_keys(ids: tf.Tensor, seed: int, salt: int) -> tf.Tensor:
  """A stable pseudo-random int64 key per example id.

  SipHash (`tf.strings.to_hash_bucket_strong`) gives the same keys on every
  machine and TF version, unlike Python's salted `hash`.

  Args:
    ids: string tensor of example ids (any shape).
    seed: the user's seed.
    salt: separates independent uses (hold-out vs fraction).

  Returns:
    int64 tensor of the same shape, in [0, 2**62).
  """
  return tf.strings.to_hash_bucket_strong(ids, 2**62, key=[seed, salt])


def rank_threshold(keys: np.ndarray, fraction: float) -> int | None:
  """The largest key among the `ceil(fraction * n)` smallest keys.

  Args:
    keys: int64 keys of every example of a split.
    fraction: in (0, 1].

  Returns:
    The threshold (keep `key <= threshold`), or None for "keep everything"
    (fraction 1, or a split too small to cut).

  Raises:
    ValueError: for a fraction outside (0, 1].
  """
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"fraction must be in (0, 1], got {fraction}")
  n = len(keys)
  # The 1e-9 keeps 0.125 * 800 = 100, not 101 after float rounding.
  k = math.ceil(fraction * n - 1e-9)
  if fraction == 1.0 or k >= n:
    return None
  return int(np.partition(np.asarray(keys, np.int64), k - 1)[k - 1])


def filter_by_key(
  dataset: tf.data.Dataset,
  threshold: int | None,
  seed: int,
  salt: int,
  keep_below: bool = True,
) -> tf.data.Dataset:
  """Keeps examples whose key is <= threshold (or > threshold).

  Args:
    dataset: examples with a string `id`.
    threshold: from `rank_threshold`; None keeps all (or, with
      `keep_below=False`, none).
    seed: the seed used for the keys.
    salt: the salt used for the keys.
    keep_below: True keeps the selected subset, False its complement.

  Returns:
    The filtered dataset.
  """
  if threshold is None:
    return dataset if keep_below else dataset.take(0)

  def keep(example: Mapping[str, tf.Tensor]) -> tf.Tensor:
    below = hash_keys(example["id"], seed, salt) <= threshold
    return below if keep_below else tf.logical_not(below)

  return dataset.filter(keep)


def select_target(dataset: tf.data.Dataset, kind: str) -> tf.data.Dataset:
  """Adds `target` (gold label, teacher label or rationale); drops empties.

  Args:
    dataset: annotated examples (`gold_label`, `teacher_label`, `rationale`).
    kind: `"gold"`, `"teacher"` or `"rationale"`.

  Returns:
    Examples with `input` and `target`, only those with a non-empty target.

  Raises:
    ValueError: for an unknown kind.
  """
  if kind not in TARGET_FIELDS:
    raise ValueError(
      f"unknown target {kind!r}; expected one of {list(TARGET_FIELDS)}"
    )
  field = TARGET_FIELDS[kind]

  def pick(example: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {
      "id": example["id"],
      "input": example["input"],
      "target": tf.strings.strip(example[field]),
    }

  return dataset.map(pick, num_parallel_calls=tf.data.AUTOTUNE).filter(
    lambda ex: tf.strings.length(ex["target"]) > 0
  )


def add_prefix_and_target(
  dataset: tf.data.Dataset, prefix: str = ""
) -> tf.data.Dataset:
  """SeqIO preprocessor: `inputs = prefix + input`, `targets = target`.

  Args:
    dataset: examples with `input` and `target`.
    prefix: `"predict: "`, `"explain: "`, or empty for the baselines.

  Returns:
    Examples with exactly `inputs` and `targets` (strings).
  """

  def fmt(example: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {
      "inputs": tf.strings.join([prefix, example["input"]]),
      "targets": example["target"],
    }

  return dataset.map(fmt, num_parallel_calls=tf.data.AUTOTUNE)


def _space_piece_id(vocabulary: seqio.Vocabulary) -> int | None:
  """The id of SentencePiece's lone "\u2581" piece; None for other vocabularies."""
  # dss_jax.vocab.ConfiguredVocabulary stands for the vocabulary gin selects.
  vocabulary = getattr(vocabulary, "resolved", vocabulary)
  if isinstance(vocabulary, seqio.SentencePieceVocabulary):
    return vocabulary.tokenizer.piece_to_id(_SPACE_PIECE)
  return None


def encode_at_eos(vocabulary: seqio.Vocabulary, text: str) -> list[int]:
  """Token ids of `text` with each `EOS_SEPARATOR` read as the EOS id.

  This is what the official code's tokenizer (transformers 4.24's
  `T5TokenizerFast`, via `AutoTokenizer`) does to `premise</s>hypothesis`:
  each piece between separators is tokenized on its own, so the hypothesis
  starts a new word ("\u2581" prefix), and a piece that ends in whitespace
  keeps a lone "\u2581" before the EOS. The fast tokenizer is matched, not
  the slow `T5Tokenizer` (which drops that piece), because it is what the
  paper's runs used. The final EOS is not added here (SeqIO appends it after
  trimming).

  Args:
    vocabulary: the inputs' vocabulary (EOS id 1 for T5 and bytes).
    text: the input text, e.g. "predict: premise</s>hypothesis".

  Returns:
    The ids, without the final EOS.
  """
  pieces = text.split(EOS_SEPARATOR)
  # Without a separator the text tokenizes as SeqIO's `tokenize` does it.
  space_id = _space_piece_id(vocabulary) if len(pieces) > 1 else None
  ids = []
  for piece in pieces:
    ids += list(vocabulary.encode(piece))
    if space_id is not None and re.fullmatch(_ENDS_IN_SPACE, piece):
      ids.append(space_id)
    ids.append(vocabulary.eos_id)
  return ids[:-1]


def _encode_at_eos_tf(
  vocabulary: seqio.Vocabulary, text: tf.Tensor
) -> tf.Tensor:
  """`encode_at_eos` in TensorFlow, for one scalar string."""
  pieces = tf.strings.split(text, sep=EOS_SEPARATOR)
  count = tf.shape(pieces, out_type=tf.int64)[0]
  # Piece by piece: seqio.ByteVocabulary encodes only scalars.
  parts = [
    tf.map_fn(
      lambda piece: tf.cast(vocabulary.encode_tf(piece), tf.int32),
      pieces,
      fn_output_signature=tf.RaggedTensorSpec([None], tf.int32, ragged_rank=0),
    )
  ]
  space_id = _space_piece_id(vocabulary)
  if space_id is not None:
    # Without a separator the text tokenizes as SeqIO's `tokenize` does it.
    spaced = tf.cast(
      tf.logical_and(
        tf.strings.regex_full_match(pieces, _ENDS_IN_SPACE), count > 1
      ),
      tf.int64,
    )
    parts.append(
      tf.RaggedTensor.from_row_lengths(
        tf.fill([tf.reduce_sum(spaced)], space_id), spaced
      )
    )
  parts.append(
    tf.RaggedTensor.from_row_lengths(
      tf.fill([count], vocabulary.eos_id), tf.ones([count], tf.int64)
    )
  )
  return tf.concat(parts, axis=1).flat_values[:-1]


def tokenize_at_eos(
  dataset: tf.data.Dataset, output_features: Mapping[str, seqio.Feature]
) -> tf.data.Dataset:
  """SeqIO preprocessor: `seqio.preprocessors.tokenize`, EOS-aware inputs.

  Every input feature (`inputs`, and `rationale_inputs` of the paired task)
  is tokenized with `encode_at_eos` (an input without the separator, the
  readable format of every card, tokenizes exactly as SeqIO's `tokenize`
  would), the other features with their vocabulary; each keeps its text as
  `<feature>_pretokenized`.

  Args:
    dataset: examples with string features.
    output_features: the task's features (their vocabularies).

  Returns:
    The tokenized examples (no EOS appended yet).
  """

  def encode(example: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    out = dict(example)
    for key, feature in output_features.items():
      if key not in example:
        continue
      text = example[key]
      out[f"{key}_pretokenized"] = text
      if key.endswith("inputs"):
        out[key] = _encode_at_eos_tf(feature.vocabulary, text)
      else:
        out[key] = tf.cast(feature.vocabulary.encode_tf(text), tf.int32)
    return out

  return dataset.map(encode, num_parallel_calls=tf.data.AUTOTUNE)
