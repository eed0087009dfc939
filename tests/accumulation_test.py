"""Gradient accumulation is exact: an accumulated step is the full-batch step.

A tiny float32 T5 takes a few SGD and Adam steps on one batch of 8 rows whose
target lengths and tasks differ between micro-batches (so a mean per
micro-batch, averaged, would not be the step's mean), for both recipes
(mixture: one loss over the batch; official: alpha-weighted per-task losses)
and both loss normalizations, with 1, 2 and 4 micro-batches. The parameters
after the steps agree to 1e-6 relative (what float32 summation order allows),
and the test first checks that the naive per-micro-batch mean misses that
bound, so it can fail.
"""

import re

import jax
import numpy as np
import optax
import pytest

from dss_jax import partitioning
from dss_jax import step as step_lib
from dss_jax.models import t5

STEPS = 3
# Micro-batch i of m holds rows i, i + m, ... (see step.Trainer). The even
# rows (the first micro-batch of 2) are label rows with short targets, one
# packed segment each; the odd rows mostly rationale rows with long targets,
# two segments each.
TASKS = [1, 2, 1, 2, 1, 2, 2, 1]
LENGTHS = [2, 16, 3, 14, 2, 15, 4, 12]


def _batch(length=16, packed=False):
  rng = np.random.RandomState(0)
  rows = len(TASKS)
  mask = np.arange(length)[None] < np.array(LENGTHS)[:, None]
  targets = np.where(mask, rng.randint(3, 200, (rows, length)), 0)
  batch = {
    "encoder_input_tokens": rng.randint(3, 200, (rows, length)),
    "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
    "decoder_target_tokens": targets,
    "decoder_loss_weights": mask,
    step_lib.TASK_IDS: mask * np.array(TASKS)[:, None],
  }
  if packed:
    # Two segments in each long row: per-sequence counts become segments.
    second = np.arange(length)[None] >= length // 2
    batch["decoder_segment_ids"] = np.where(mask, 1 + second, 0)
    batch["encoder_segment_ids"] = np.broadcast_to(1 + second, mask.shape)
  return {k: np.asarray(v, np.int32) for k, v in batch.items()}


def _run(
  micro,
  recipe,
  normalization,
  optimizer,
  packed=False,
  naive=False,
  partitioner=None,
  trainers=None,
):
  # One layer each side: the check is about the loss, and compiling is
  # most of this test's time.
  model, _ = t5.make_test_model(num_encoder_layers=1, num_decoder_layers=1)
  loss = step_lib.LossConfig(normalizing_factor=normalization)
  weights = None
  if recipe == "official":
    weights = step_lib.StepConfig(
      recipe="official", rationale_rate=3.0
    ).task_weights(2)
  tr = step_lib.Trainer(
    model,
    optimizer,
    partitioner or partitioning.Partitioner(devices=jax.devices()[:1]),
    task_names=("label", "rationale"),
    task_weights=weights,
    loss=loss,
    num_microbatches=micro,
    dropout=False,
  )
  if naive:
    # What accumulation did before: each micro-batch's own means, averaged.
    tr._normalizers = lambda batch: None  # noqa: SLF001
    grads = tr._grads  # noqa: SLF001

    def averaged(params, batch, rng):
      g, m = grads(params, batch, rng)
      return jax.tree.map(lambda x: x / micro, (g, m))

    tr._grads = averaged  # noqa: SLF001
  if trainers is not None:
    trainers.append(tr)
  batch = _batch(packed=packed)
  state = tr.init_state(jax.random.PRNGKey(0), batch)
  device_batch = tr.device_batch(batch)
  for _ in range(STEPS):
    state, metrics = tr.train_step(state, device_batch)
  return jax.device_get(state.params), jax.device_get(metrics)


def _max_relative_error(a, b):
  """The largest leaf-wise |a - b| / |b| (norms over each parameter)."""
  return max(
    float(np.linalg.norm(x - y) / np.linalg.norm(y))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


CASES = [
  # Packed: with one sequence per row, every micro-batch would hold the same
  # number of sequences and its mean would already be exact.
  ("mixture", "AVERAGE_PER_SEQUENCE", True),
  ("mixture", "NUM_REAL_TARGET_TOKENS", False),
  ("official", "NUM_REAL_TARGET_TOKENS", False),
  ("official", "AVERAGE_PER_SEQUENCE", False),
]


@pytest.mark.parametrize("recipe,normalization,packed", CASES)
def test_accumulated_steps_equal_the_full_batch_steps(
  recipe, normalization, packed
):
  # SGD: Adam's g / sqrt(v) turns rounding noise in near-zero gradients
  # into learning-rate-sized steps, which no summation order could match.
  optimizer = optax.sgd(1.0)
  full, full_metrics = _run(1, recipe, normalization, optimizer, packed)
  naive, _ = _run(2, recipe, normalization, optimizer, packed, naive=True)
  naive_error = _max_relative_error(naive, full)
  assert naive_error > 1e-5, f"the batch is too easy: {naive_error}"
  for micro in (2, 4):
    got, metrics = _run(micro, recipe, normalization, optimizer, packed)
    error = _max_relative_error(got, full)
    print(f"{recipe} {normalization} packed={packed} micro={micro}: {error}")
    assert error < 1e-6, (micro, error)
    for key in ("loss", "loss/label", "loss/rationale"):
      np.testing.assert_allclose(
        metrics[key], full_metrics[key], rtol=1e-5, err_msg=key
      )


def _collectives(trainer, batch):
  """Counts of the compiled step's ops that move data between devices."""
  state = trainer.init_state(jax.random.PRNGKey(0), batch)
  step = trainer._train_step  # noqa: SLF001 (compiled by the steps run)
  text = step.lower(state, batch).compile().as_text()
  return {
    op: len(re.findall(rf"= \S+ {op}\(", text))
    for op in ("all-gather", "all-to-all", "collective-permute")
  }


def test_micro_batches_stay_split_over_the_data_axis():
  # 4-way data x 2-way model parallel on the 8 fake devices, 2 micro-batches
  # of 4 rows: each device computes its row of every micro-batch, so the
  # step moves no batch data (contiguous micro-batches of rows 0-3 and 4-7
  # would sit on half the data devices: XLA moves them with all-gathers and
  # collective permutes) and still equals the one-device full-batch step.
  assert jax.device_count() == 8
  optimizer = optax.sgd(1.0)
  full, _ = _run(1, "official", "NUM_REAL_TARGET_TOKENS", optimizer)
  trainers = []
  got, _ = _run(
    2,
    "official",
    "NUM_REAL_TARGET_TOKENS",
    optimizer,
    partitioner=partitioning.Partitioner(data=4, model=2),
    trainers=trainers,
  )
  assert _max_relative_error(got, full) < 1e-5
  (tr,) = trainers
  batch = tr.device_batch(_batch())
  moved = _collectives(tr, batch)
  assert moved == {"all-gather": 0, "all-to-all": 0, "collective-permute": 0}
