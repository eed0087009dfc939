"""What one training step holds, per path, on the paper's released CQA data.

The official code (google-research/distilling-step-by-step) trains each step
on 64 inputs, each with its label and its rationale example, and its
baselines on 64 examples. These tests build the first batches through each
built-in path itself (the `python -m dss_jax.train` gin files and
`dss-jax distill`'s paper defaults), count examples and tasks per step, and
check the official recipe's loss against the official formula in numpy.
The T5X path has its own tests (tests/t5x_gin_test.py).
"""

import dataclasses
import os

import gin
import jax
import numpy as np
import pytest
import seqio

from dss_jax import (
  gin_flags,
  grid,
  input_pipeline,
  partitioning,
  trainer,
)
from dss_jax import step as step_lib
from dss_jax.distill import config as job_config
from dss_jax.distill import stages, student
from dss_jax.models import t5

_STEPS = 10
_BYTES = seqio.ByteVocabulary()


@pytest.fixture(scope="module")
def cqa_data_dir(tmp_path_factory, paper_data_dir):
  """The released CQA outputs (PaLM 540B) as the TFDS dataset."""
  from dss_jax import datasets

  data_dir = tmp_path_factory.mktemp("tfds")
  os.environ["DSS_PAPER_DATA_DIR"] = str(paper_data_dir)
  datasets.build_annotated("cqa", "palm", data_dir=str(data_dir))
  return str(data_dir)


@pytest.fixture
def cqa_tasks(cqa_data_dir):
  from dss_jax import seqio_tasks

  seqio_tasks.register_card(
    "cqa", "palm", data_dir=cqa_data_dir, vocabulary=_BYTES
  )


def _gin_data_config(run_file: str, task: str):
  """The DatasetConfig `trainer.train` builds from a run gin file."""
  gin.clear_config()
  try:
    gin_flags.parse_gin(
      [f"runs/{run_file}"],
      [f'MIXTURE_OR_TASK_NAME = "{task}"', 'MODEL_DIR = "unused"'],
    )

    def macro(name):
      return gin.query_parameter(f"%{name}")

    return trainer.dataset_config(
      mixture_or_task_name=macro("MIXTURE_OR_TASK_NAME"),
      task_feature_lengths=macro("TASK_FEATURE_LENGTHS"),
      step=step_lib.StepConfig(
        recipe=macro("RECIPE"),
        rationale_rate=macro("RATIONALE_RATE"),
        inputs_per_step=macro("INPUTS_PER_STEP"),
      ),
      pack=macro("PACK"),
      random_seed=macro("RANDOM_SEED"),
    )
  finally:
    gin.clear_config()


def _first_batches(config, steps=_STEPS):
  # The batches alone: the truncation count before them (a pass over the
  # whole split per task, seconds each on the full CQA release) changes no
  # batch; input_pipeline_test and the end-to-end runs take it.
  config = dataclasses.replace(config, count_truncated=False)
  batches = input_pipeline.iterate(input_pipeline.make_dataset(config))
  return [next(batches) for _ in range(steps)]


def _text(tokens) -> str:
  return _BYTES.decode([int(t) for t in tokens if t > 0])


def _row_tasks(batch) -> np.ndarray:
  # Unpacked rows: one example each, its task id on every target token.
  return batch[input_pipeline.TASK_IDS][:, 0]


def _assert_mixture_step(batches, rows):
  assert all(b["encoder_input_tokens"].shape[0] == rows for b in batches)
  # No packing: one example per row.
  assert not any("encoder_segment_ids" in b for b in batches)
  tasks = np.stack([_row_tasks(b) for b in batches])
  assert set(np.unique(tasks)) == {1, 2}
  labels_per_step = (tasks == 1).sum(axis=1)
  # Binomial(128, 1/2): 64 +- 5.7 per step, so 64 +- 24 is a 4-sigma band,
  # and the share over 1280 rows 0.5 +- 0.014.
  assert np.all(np.abs(labels_per_step - rows // 2) <= 24), labels_per_step
  assert abs((tasks == 1).mean() - 0.5) < 0.06
  for batch in batches:
    for row, task in zip(
      batch["encoder_input_tokens"], _row_tasks(batch), strict=True
    ):
      prefix = "predict: " if task == 1 else "explain: "
      assert _text(row).startswith(prefix)


def _assert_official_step(batches, inputs):
  for batch in batches:
    assert batch["encoder_input_tokens"].shape[0] == 2 * inputs
    assert "encoder_segment_ids" not in batch
    np.testing.assert_array_equal(_row_tasks(batch), [1, 2] * inputs)
    rows = batch["encoder_input_tokens"]
    questions = set()
    for label_row, rationale_row in zip(rows[0::2], rows[1::2], strict=True):
      label, rationale = _text(label_row), _text(rationale_row)
      # The step's rationale examples are of the same inputs as its labels.
      assert label.removeprefix("predict: ") == rationale.removeprefix(
        "explain: "
      )
      assert label.startswith("predict: ")
      assert rationale.startswith("explain: ")
      questions.add(label)
    assert len(questions) == inputs  # 64 distinct inputs, each once


def _assert_baseline_step(batches, rows):
  for batch in batches:
    assert batch["encoder_input_tokens"].shape[0] == rows
    assert "encoder_segment_ids" not in batch
    np.testing.assert_array_equal(_row_tasks(batch), np.ones(rows))
    for row in batch["encoder_input_tokens"]:
      text = _text(row)
      assert not text.startswith(("predict: ", "explain: "))


def test_train_gin_steps_hold_64_label_and_64_rationale_examples(cqa_tasks):
  config = _gin_data_config("train.gin", "dss_cqa_palm")
  assert (config.batch_size, config.pack, config.paired) == (128, False, False)
  _assert_mixture_step(_first_batches(config), 128)


def test_official_gin_steps_pair_64_inputs_with_both_tasks(cqa_tasks):
  config = _gin_data_config("train_official.gin", "dss_cqa_palm")
  assert (config.batch_size, config.pack, config.paired) == (128, False, True)
  _assert_official_step(_first_batches(config, 3), 64)


def test_finetune_gin_steps_hold_64_examples(cqa_tasks):
  config = _gin_data_config("finetune.gin", "dss_cqa_gold_finetune")
  assert (config.batch_size, config.pack) == (64, False)
  _assert_baseline_step(_first_batches(config, 3), 64)


def _paper_student(cqa_data_dir, paper_data_dir, tmp_path, **overrides):
  values = dict(job_config.PAPER_OVERRIDES)
  values.update(
    card="cqa",
    backend="replay",
    paper_data_dir=str(paper_data_dir),
    vocabulary="byte",
    tfds_data_dir=cqa_data_dir,
    out_dir=str(tmp_path),
  )
  values.update(overrides)
  config = job_config.DistillConfig(**values)
  return student.Student(config, stages.DataStages(config, log=lambda _: None))


@pytest.mark.parametrize("recipe", ["mixture", "official"])
def test_distill_paper_defaults_per_method(
  cqa_data_dir, paper_data_dir, tmp_path, recipe
):
  job = _paper_student(cqa_data_dir, paper_data_dir, tmp_path, recipe=recipe)
  assert job.config.seeds == (0, 1, 2)
  assert job.config.validation_period == 250
  for method in ("dss_gold", "finetune"):
    spec = grid.RunSpec(method, "base", 1.0, 0)
    job.register_tasks(spec)
    kwargs = job.train_kwargs(spec)
    config = trainer.dataset_config(**kwargs)
    if method == "finetune":
      assert config.batch_size == 64
      _assert_baseline_step(_first_batches(config, 2), 64)
    elif recipe == "official":
      _assert_official_step(_first_batches(config, 2), 64)
    else:
      _assert_mixture_step(_first_batches(config), 128)


@pytest.mark.slow
def test_official_loss_on_a_real_step_equals_the_official_formula(cqa_tasks):
  config = _gin_data_config("train_official.gin", "dss_cqa_palm")
  batch = _first_batches(config, 1)[0]
  # 8 inputs of the step, cut to lengths a tiny model runs fast.
  batch = {k: v[:16, :192] for k, v in batch.items()}
  model, _ = t5.make_test_model(vocab_size=384)
  names = input_pipeline.task_names("dss_cqa_palm")
  official = step_lib.StepConfig(recipe="official")
  step = step_lib.Trainer(
    model,
    optimizer=None,
    partitioner=partitioning.Partitioner(
      devices=jax.devices()[:1], logical_axis_rules=()
    ),
    task_names=names,
    task_weights=official.task_weights(len(names)),
    loss=step_lib.official_loss(step_lib.LossConfig()),
    dropout=False,
  )
  params = model.init(
    jax.random.PRNGKey(0),
    batch["encoder_input_tokens"],
    batch["decoder_input_tokens"],
    batch["decoder_target_tokens"],
    enable_dropout=False,
  )["params"]
  loss, metrics = jax.jit(step._loss_fn)(params, batch, jax.random.PRNGKey(1))

  # The official formula, in numpy: alpha * mean token NLL of the label
  # rows + (1 - alpha) * mean token NLL of the rationale rows (alpha 0.5).
  logits = model.apply(
    {"params": params},
    batch["encoder_input_tokens"],
    batch["decoder_input_tokens"],
    batch["decoder_target_tokens"],
    enable_dropout=False,
  )
  logits = np.asarray(logits, np.float64)
  log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1))
  log_z += logits.max(-1)
  targets = batch["decoder_target_tokens"]
  nll = log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  real = targets > 0
  label = nll[0::2][real[0::2]].mean()
  rationale = nll[1::2][real[1::2]].mean()
  np.testing.assert_allclose(loss, 0.5 * label + 0.5 * rationale, atol=1e-5)
  np.testing.assert_allclose(
    metrics["loss/dss_cqa_palm_rationale"], rationale, atol=1e-5
  )


def test_pack_examples_keeps_every_example_as_one_segment():
  # Three examples (inputs / targets of real lengths 3/2, 2/3, 4/1) into
  # rows of 6 input and 4 target tokens: the first two share row 0 by
  # inputs (5 <= 6) and targets (5 > 4 fails), so first-fit gives
  # row 0: ex 0; row 1: ex 1 and ex 2 (2 + 4 <= 6, 3 + 1 <= 4).
  enc = np.array([[5, 6, 1, 0, 0, 0], [7, 1, 0, 0, 0, 0], [8, 9, 10, 1, 0, 0]])
  dec = np.array([[11, 1, 0, 0], [12, 13, 1, 0], [1, 0, 0, 0]])
  batch = {
    "encoder_input_tokens": enc,
    "decoder_target_tokens": dec,
    "decoder_input_tokens": np.pad(dec[:, :-1], ((0, 0), (1, 0))),
    "decoder_loss_weights": (dec > 0).astype(np.int32),
    input_pipeline.TASK_IDS: (dec > 0) * np.array([[1], [2], [1]]),
  }
  packed = input_pipeline.pack_examples(batch, rows=3)
  np.testing.assert_array_equal(
    packed["encoder_input_tokens"],
    [[5, 6, 1, 0, 0, 0], [7, 1, 8, 9, 10, 1], [0] * 6],
  )
  np.testing.assert_array_equal(
    packed["encoder_segment_ids"],
    [[1, 1, 1, 0, 0, 0], [1, 1, 2, 2, 2, 2], [0] * 6],
  )
  np.testing.assert_array_equal(
    packed["encoder_positions"][1], [0, 1, 0, 1, 2, 3]
  )
  np.testing.assert_array_equal(
    packed["decoder_target_tokens"], [[11, 1, 0, 0], [12, 13, 1, 1], [0] * 4]
  )
  # Each segment's decoder inputs start at 0 (its own shift).
  np.testing.assert_array_equal(
    packed["decoder_input_tokens"], [[0, 11, 0, 0], [0, 12, 13, 0], [0] * 4]
  )
  np.testing.assert_array_equal(
    packed["decoder_segment_ids"], [[1, 1, 0, 0], [1, 1, 1, 2], [0] * 4]
  )
  np.testing.assert_array_equal(
    packed[input_pipeline.TASK_IDS], [[1, 1, 0, 0], [2, 2, 2, 1], [0] * 4]
  )
  with pytest.raises(ValueError, match="need 2 packed rows.*only 1"):
    input_pipeline.pack_examples(batch, rows=1)


def _segments(batch, task=None):
  """(row, segment) pairs of real examples, optionally of one task."""
  ids = batch["decoder_segment_ids"]
  keep = batch["decoder_loss_weights"] > 0
  if task is not None:
    keep &= batch[input_pipeline.TASK_IDS] == task
  rows, _ = np.nonzero(keep)
  return set(zip(rows.tolist(), ids[keep].tolist(), strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("run_file", ["train.gin", "train_official.gin"])
def test_packing_keeps_the_examples_of_a_step(cqa_tasks, run_file):
  unpacked = _gin_data_config(run_file, "dss_cqa_palm")
  # Byte tokens: a CQA rationale fills most of a 256-token target row.
  packed = dataclasses.replace(unpacked, pack=True, packed_rows=64)
  for plain, batch in zip(
    _first_batches(unpacked, 3), _first_batches(packed, 3), strict=True
  ):
    assert batch["encoder_input_tokens"].shape == (64, 1024)
    assert len(_segments(batch)) == 128  # every example of the step
    # The same examples as the unpacked step, each once.
    assert len(_segments(batch, task=1)) == (_row_tasks(plain) == 1).sum()
    # The same examples: the multiset of input lengths is the step's.
    assert _segment_lengths(batch["encoder_segment_ids"]) == sorted(
      np.count_nonzero(plain["encoder_input_tokens"], axis=1).tolist()
    )


def _segment_lengths(segment_ids) -> list[int]:
  return sorted(
    int(np.sum(row == s)) for row in segment_ids for s in set(row) - {0}
  )
