"""Paired examples of the official recipe: SeqIO preprocessors and converter.

The official code of Distilling Step-by-Step trains each step on a batch of
inputs, each carrying both of its examples: `predict: <input>` -> label and
`explain: <input>` -> rationale. A paired example holds both halves in one
SeqIO example, so a batch of B paired examples is B inputs with their 2 B
sequences, and the rationales of a step come from the same inputs as its
labels (a sampled mixture only matches that in expectation):

    inputs, targets                      "predict: <input>" -> label
    rationale_inputs, rationale_targets  "explain: <input>" -> rationale

`PairedEncDecFeatureConverter` turns both halves into the encoder-decoder
model features (`encoder_input_tokens`, ... and `rationale_encoder_input_tokens`,
...), trimmed and padded to the same `inputs` / `targets` lengths. Examples
without the `rationale_*` features (inference and scoring on the `_label`
task) convert exactly as `seqio.EncDecFeatureConverter` does, so one converter
serves a model's training and evaluation datasets. Packing is refused for
paired examples: it would mix the halves of different inputs into one row.

The pairing rule of the official recipe lives here for both trainers: an
input trains when it has both a label and a rationale
(`select_paired_targets`, the paired task's source), and its two examples go
into the same step. T5X trains on the paired task's examples; the built-in
input pipeline reads the same task and feeds each example as its label and
rationale rows, side by side in one step (`dss_jax.input_pipeline`). The loss
weights of the pair are `dss_jax.step.StepConfig.task_weights`.

The T5X model that trains on these features is `dss_jax.t5x_official`; tests
are in tests/t5x_official_test.py.
"""

from __future__ import annotations

from collections.abc import Mapping

import seqio
import tensorflow as tf

from dss_jax import preprocessors

# The rationale half's features carry this prefix, in the task and the model.
RATIONALE = "rationale_"
TASK_FEATURES = ("inputs", "targets")
PAIRED_TASK_FEATURES = (*TASK_FEATURES, *(RATIONALE + k for k in TASK_FEATURES))


def select_paired_targets(
  dataset: tf.data.Dataset, label_kind: str
) -> tf.data.Dataset:
  """Adds `target` (label) and `rationale`; keeps inputs that have both.

  Args:
    dataset: annotated examples (`input`, `gold_label`, `teacher_label`,
      `rationale`).
    label_kind: `"gold"` or `"teacher"`, the label target.

  Returns:
    Examples with `id`, `input`, `target` and `rationale`, only those whose
    label and rationale are both non-empty.
  """
  label_field = preprocessors.TARGET_FIELDS[label_kind]
  rationale_field = preprocessors.TARGET_FIELDS["rationale"]

  def pick(example: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {
      "id": example["id"],
      "input": example["input"],
      "target": tf.strings.strip(example[label_field]),
      "rationale": tf.strings.strip(example[rationale_field]),
    }

  # An input without a parsable label or rationale has no pair to train on.
  return dataset.map(pick, num_parallel_calls=tf.data.AUTOTUNE).filter(
    lambda ex: tf.logical_and(
      tf.strings.length(ex["target"]) > 0,
      tf.strings.length(ex["rationale"]) > 0,
    )
  )


def add_paired_prefixes(
  dataset: tf.data.Dataset, label_prefix: str, rationale_prefix: str
) -> tf.data.Dataset:
  """SeqIO preprocessor: both halves' `inputs` and `targets` as text.

  Args:
    dataset: examples with `input`, `target` (label) and `rationale`.
    label_prefix: `"predict: "`.
    rationale_prefix: `"explain: "`.

  Returns:
    Examples with exactly the four `PAIRED_TASK_FEATURES` (strings).
  """

  def fmt(example: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {
      "inputs": tf.strings.join([label_prefix, example["input"]]),
      "targets": example["target"],
      RATIONALE + "inputs": tf.strings.join(
        [rationale_prefix, example["input"]]
      ),
      RATIONALE + "targets": example["rationale"],
    }

  return dataset.map(fmt, num_parallel_calls=tf.data.AUTOTUNE)


def paired_lengths(sequence_length: Mapping[str, int] | None) -> dict | None:
  """Lengths of all four features: the rationale half uses the label's.

  Args:
    sequence_length: `{"inputs": ..., "targets": ...}` as T5X passes it
      (TASK_FEATURE_LENGTHS), or None.

  Returns:
    The same lengths for `rationale_inputs` / `rationale_targets` too, or
    None when no lengths are given.
  """
  if sequence_length is None:
    return None
  lengths = dict(sequence_length)
  for key in TASK_FEATURES:
    if key in lengths:
      lengths.setdefault(RATIONALE + key, lengths[key])
  return lengths


def append_eos_after_trim(
  dataset: tf.data.Dataset,
  output_features: Mapping[str, seqio.Feature],
  sequence_length: Mapping[str, int] | None = None,
) -> tf.data.Dataset:
  """`seqio.preprocessors.append_eos_after_trim` for both halves.

  T5X passes lengths for `inputs` and `targets` only; without this, the
  rationale half would get its EOS cut off when the converter trims it.

  Args:
    dataset: tokenized paired examples.
    output_features: the task's output features.
    sequence_length: lengths of `inputs` and `targets`, or None.

  Returns:
    Examples with EOS appended within the length of each feature.
  """
  return seqio.preprocessors.append_eos_after_trim(
    dataset,
    output_features=output_features,
    sequence_length=paired_lengths(sequence_length),
  )


class PairedEncDecFeatureConverter(seqio.EncDecFeatureConverter):
  """EncDec features for both halves of paired examples (no packing).

  With `rationale_inputs` in the dataset, each output example has the four
  `seqio.EncDecFeatureConverter` model features of the label half and the
  same four with the `rationale_` prefix, both padded to the `inputs` and
  `targets` lengths. Without them, the output is that of
  `seqio.EncDecFeatureConverter` (with packing if asked), so inference and
  scoring datasets of ordinary tasks convert as usual.
  """

  def __call__(
    self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
  ) -> tf.data.Dataset:
    """Converts paired or ordinary examples; see the class docstring.

    Args:
      ds: tokenized examples.
      task_feature_lengths: lengths of `inputs` and `targets`.

    Returns:
      The model features.

    Raises:
      ValueError: for paired examples with packing, a missing half, or
        lengths for features other than `inputs` and `targets`.
    """
    if RATIONALE + "inputs" not in ds.element_spec:
      return super().__call__(ds, task_feature_lengths)
    missing = set(PAIRED_TASK_FEATURES) - set(ds.element_spec)
    if missing:
      raise ValueError(f"paired examples lack {sorted(missing)}")
    if set(task_feature_lengths) != set(TASK_FEATURES):
      raise ValueError(
        "paired examples take lengths for 'inputs' and 'targets' (both halves"
        f" use them), got {sorted(task_feature_lengths)}"
      )
    if self.pack:
      raise ValueError(
        "paired examples cannot be packed: a packed row would mix the halves"
        " of different inputs; use pack=False"
      )
    lengths = paired_lengths(task_feature_lengths)
    ds = seqio.utils.trim_and_pad_dataset(ds, lengths)

    def convert(features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
      label = self._convert_example(features)
      rationale = self._convert_example(
        {k: features[RATIONALE + k] for k in TASK_FEATURES}
      )
      return {
        **label,
        **{RATIONALE + k: v for k, v in rationale.items()},
      }

    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(
    self, task_feature_lengths: Mapping[str, int]
  ) -> Mapping[str, int]:
    """Model feature lengths; with `rationale_` copies for paired lengths.

    Args:
      task_feature_lengths: lengths of `inputs` and `targets`, and for paired
        examples of `rationale_inputs` and `rationale_targets`.

    Returns:
      The length of every model feature the converter writes.
    """
    label = super().get_model_feature_lengths(
      {k: task_feature_lengths[k] for k in TASK_FEATURES}
    )
    if RATIONALE + "inputs" not in task_feature_lengths:
      return label
    rationale = super().get_model_feature_lengths(
      {k: task_feature_lengths[RATIONALE + k] for k in TASK_FEATURES}
    )
    return {**label, **{RATIONALE + k: v for k, v in rationale.items()}}
