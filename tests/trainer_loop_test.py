"""The training loop: exact resume, NaN stop, paired loss, accumulation.

A tiny T5 trains on a deterministic "reverse the digits" SeqIO mixture built
here (byte vocabulary, no files), on one of the 8 fake CPU devices except in
the sharding test.
"""

import json
import logging
import math
import os
import signal

import jax
import numpy as np
import optax
import pytest
import seqio
import tensorflow as tf

from dss_jax import (
  checkpoints,
  errors,
  input_pipeline,
  optimizers,
  partitioning,
  trainer,
  vocab,
)
from dss_jax import step as step_lib
from dss_jax.models import t5

LENGTHS = {"inputs": 16, "targets": 16}


def _reverse_examples(split, shuffle_files=False, seed=None):
  del split, shuffle_files, seed
  rng = np.random.RandomState(0)
  digits = [
    "".join(rng.choice(list("0123456789"), rng.randint(2, 8)))
    for _ in range(64)
  ]
  return tf.data.Dataset.from_tensor_slices(
    {
      "inputs": [f"reverse: {d}" for d in digits],
      "targets": [d[::-1] for d in digits],
    }
  )


def _register_mixture(rate_b=0.5) -> str:
  features = {
    k: seqio.Feature(seqio.ByteVocabulary(), add_eos=True)
    for k in ("inputs", "targets")
  }
  for name in ("loop_label", "loop_rationale"):
    seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(_reverse_examples, splits=["train"]),
      preprocessors=[
        seqio.preprocessors.tokenize,
        seqio.preprocessors.append_eos,
      ],
      output_features=features,
    )
  seqio.MixtureRegistry.add(
    "loop_mix", [("loop_label", 1.0), ("loop_rationale", rate_b)]
  )
  return "loop_mix"


def _one_device():
  return partitioning.Partitioner(devices=jax.devices()[:1])


def _train(model_dir, steps=6, evaluator=None, eval_period=0, **kwargs):
  model, _ = t5.make_test_model()
  defaults = dict(
    model=model,
    mixture_or_task_name="loop_mix",
    task_feature_lengths=LENGTHS,
    train_steps=steps,
    # 2 inputs: 4 rows of the label and rationale tasks, sampled 1 : 0.5.
    step=step_lib.StepConfig(rationale_rate=0.5, inputs_per_step=2),
    model_dir=str(model_dir),
    optimizer=optimizers.AdamW(optimizers.LearningRateSchedule(1e-3)),
    partitioner=_one_device(),
    checkpoint_period=100,
    log_period=2,
    peak_flops=1e12,
    progress_bar=False,
    evaluator=evaluator,
    eval_period=eval_period,
  )
  defaults.update(kwargs)
  return trainer.train(**defaults)


class _SignalAt:
  """An evaluator that delivers a signal to this process at one step."""

  def __init__(self, step, signum=signal.SIGTERM):
    self.step = step
    self.signum = signum
    self.calls = []

  def evaluate(self, params, step):
    del params
    self.calls.append(step)
    if step == self.step:
      os.kill(os.getpid(), self.signum)
    return {"accuracy": float(step)}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path, signum):
  _register_mixture()
  straight = _train(tmp_path / "straight", steps=6)
  assert straight.step == 6 and not straight.preempted

  stopper = _SignalAt(2, signum)
  first = _train(
    tmp_path / "resumed", steps=6, evaluator=stopper, eval_period=2
  )
  # The signal during step 2's eval: the loop stops after the next step.
  assert first.preempted and first.step == 3
  assert checkpoints.checkpoint_steps(tmp_path / "resumed") == [2, 3]
  second = _train(tmp_path / "resumed", steps=6)
  assert second.step == 6 and not second.preempted

  want = checkpoints.restore_params(tmp_path / "straight")
  got = checkpoints.restore_params(tmp_path / "resumed")
  initial_kernel = None
  for (path, w), g in zip(
    jax.tree_util.tree_leaves_with_path(want),
    jax.tree.leaves(got),
    strict=True,
  ):
    np.testing.assert_array_equal(g, w, err_msg=jax.tree_util.keystr(path))
    initial_kernel = w
  assert initial_kernel is not None
  # Training moved the parameters (the check above is not vacuous).
  assert np.abs(np.asarray(second.metrics["loss"])) > 0
  assert np.isfinite(straight.metrics["loss"])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  _register_mixture()
  # A learning rate of 1e30 sends the parameters to ~1e30 after one update,
  # so the second step's loss overflows.
  huge = optimizers.AdamW(optimizers.LearningRateSchedule(1e30), clip_norm=None)
  with pytest.raises(trainer.NonFiniteLossError, match="step 2"):
    _train(tmp_path, steps=5, optimizer=huge, checkpoint_period=1)
  assert checkpoints.checkpoint_steps(tmp_path) == [1]
  params = checkpoints.restore_params(tmp_path)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


def _batch(task_ids, seed=0, length=16):
  rng = np.random.RandomState(seed)
  rows = len(task_ids)
  targets = rng.randint(3, 200, size=(rows, length))
  lengths = rng.randint(2, length + 1, size=rows)
  mask = np.arange(length)[None] < lengths[:, None]
  targets = np.where(mask, targets, 0).astype(np.int32)
  return {
    "encoder_input_tokens": rng.randint(3, 200, size=(rows, length)).astype(
      np.int32
    ),
    "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
    "decoder_target_tokens": targets,
    "decoder_loss_weights": mask.astype(np.int32),
    input_pipeline.TASK_IDS: (mask * np.array(task_ids)[:, None]).astype(
      np.int32
    ),
  }


def _trainer(model, **kwargs):
  return step_lib.Trainer(
    model,
    optax.sgd(0.1),
    _one_device(),
    task_names=("label", "rationale"),
    dropout=False,
    **kwargs,
  )


def test_official_recipe_loss_is_alpha_weighted_token_means():
  model, _ = t5.make_test_model()
  batch = _batch([1, 2, 1, 2])
  # lambda 3: alpha 0.25
  step = step_lib.StepConfig(recipe="official", rationale_rate=3.0)
  tr = _trainer(
    model,
    task_weights=step.task_weights(2),
    loss=step_lib.official_loss(step_lib.LossConfig()),
  )
  state = tr.init_state(jax.random.PRNGKey(0), batch)
  loss, metrics = jax.jit(tr._loss_fn)(
    state.params, batch, jax.random.PRNGKey(1)
  )
  logits = model.apply(
    {"params": state.params},
    batch["encoder_input_tokens"],
    batch["decoder_input_tokens"],
    batch["decoder_target_tokens"],
    enable_dropout=False,
  )
  # The official formula in numpy: each task's NLL averaged over its real
  # target tokens, then alpha * label + (1 - alpha) * rationale.
  logp = np.asarray(jax.nn.log_softmax(logits.astype(np.float32)))
  targets = batch["decoder_target_tokens"]
  nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  real = batch["decoder_loss_weights"] > 0

  def task_mean(rows):
    return nll[rows][real[rows]].mean()

  label, rationale = task_mean([0, 2]), task_mean([1, 3])
  np.testing.assert_allclose(loss, 0.25 * label + 0.75 * rationale, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss/label"], label, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss/rationale"], rationale, rtol=1e-5)


def test_gradient_accumulation_matches_one_big_batch():
  model, _ = t5.make_test_model()
  # Equal target lengths, so per-sequence means average the same either way.
  batch = _batch([1, 1, 2, 2])
  batch["decoder_loss_weights"][:] = 1
  batch["decoder_target_tokens"][batch["decoder_target_tokens"] == 0] = 5
  results = []
  for micro in (1, 2):
    tr = _trainer(model, num_microbatches=micro)
    state = tr.init_state(jax.random.PRNGKey(0), batch)
    state, metrics = tr.train_step(state, tr.device_batch(batch))
    results.append((jax.device_get(state.params), float(metrics["loss"])))
  (p1, l1), (p2, l2) = results
  assert math.isclose(l1, l2, rel_tol=1e-5)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_sharded_training_on_8_devices_logs_per_task_losses(tmp_path):
  assert jax.device_count() == 8
  _register_mixture()
  result = _train(
    tmp_path,
    steps=4,
    # 8 inputs, 16 examples a step, packed into 8 rows of 64 tokens (2 per
    # device).
    step=step_lib.StepConfig(inputs_per_step=8),
    task_feature_lengths={"inputs": 64, "targets": 64},
    partitioner=partitioning.Partitioner(data=4, model=2),
    pack=True,
    packed_rows=8,
  )
  assert result.step == 4
  for key in ("loss/loop_label", "loss/loop_rationale", "mfu", "learning_rate"):
    assert key in result.metrics and np.isfinite(result.metrics[key]), key
  assert result.metrics["real_tokens_per_sec"] > 0
  kernel = result.state.params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "model")
  events = list((tmp_path / "train").glob("events.out.tfevents.*"))
  assert events, "no TensorBoard event file written"
  # The training vocabulary is recorded for eval jobs to check.
  assert vocab.read_identity(str(tmp_path))["kind"] == "ByteVocabulary"


def test_a_model_axis_wider_than_the_heads_replicates_them():
  """tiny has 4 heads: on a model axis of 8 the heads-sharded position-bias
  table (and its moments) cannot be split, so it is replicated, and the
  state still initializes and trains."""
  model, _ = t5.make_test_model()
  assert model.config.num_heads == 4
  tr = step_lib.Trainer(
    model,
    optax.adamw(1e-3),
    partitioning.Partitioner(data=1, model=8),
    dropout=False,
  )
  batch = tr.device_batch(_batch([1] * 8))
  state = tr.init_state(jax.random.PRNGKey(0), batch)
  table = state.params["encoder"]["relpos_bias"]["rel_embedding"]
  assert table.sharding.is_fully_replicated
  kernel = state.params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "model")
  state, metrics = tr.train_step(state, batch)
  assert np.isfinite(float(metrics["loss"]))


def _flip_middle_byte(path):
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0x10
  path.write_bytes(bytes(data))


@pytest.mark.parametrize(
  "damage", ["flipped bits", "wrong checksum", "optimizer state changed"]
)
def test_a_corrupt_latest_step_resumes_from_the_newest_intact_one(
  tmp_path, caplog, damage
):
  _register_mixture()
  _train(tmp_path, steps=3, checkpoint_period=1, keep_checkpoints=3)
  latest = tmp_path / "checkpoints" / "3"
  if damage == "flipped bits":
    for path in (latest / "state").rglob("*"):
      if path.is_file() and path.parent.name == "d":
        _flip_middle_byte(path)
  else:
    # The arrays read fine but are not the ones saved with this step: the
    # parameters, or only the optimizer's moments (which resume the run).
    data = latest / "data" / "metadata"
    values = json.loads(data.read_text())
    key = "params" if damage == "wrong checksum" else "state"
    values[f"{key}_checksum"][-1] += 1
    data.write_text(json.dumps(values))
  with caplog.at_level(logging.INFO):
    result = _train(tmp_path, steps=4, checkpoint_period=1, keep_checkpoints=3)
  messages = [r.getMessage() for r in caplog.records]
  assert any("checkpoint step 3" in m and "corrupt" in m for m in messages)
  assert "resumed from step 2 (2 batches read)" in messages
  assert result.step == 4
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(result.state))


def test_no_intact_checkpoint_is_one_clear_error(tmp_path):
  _register_mixture()
  _train(tmp_path, steps=1, checkpoint_period=1)
  for path in (tmp_path / "checkpoints" / "1" / "state").rglob("*"):
    if path.is_file() and path.parent.name == "d":
      path.write_bytes(b"\0" * path.stat().st_size)
  with pytest.raises(checkpoints.CorruptCheckpointError, match="no intact"):
    _train(tmp_path, steps=2, checkpoint_period=1)


def test_step_config_derives_rows_rates_and_weights():
  step = step_lib.StepConfig(recipe="official", rationale_rate=3.0)
  assert step.rows_per_step(2) == 128 and step.rows_per_step(1) == 64
  assert step.rates(2) == (1.0, 3.0) and step.rates(1) == (1.0,)
  assert step.task_weights(2) == (0.25, 0.75)
  assert step_lib.StepConfig().task_weights(2) is None


@pytest.mark.parametrize(
  "values, message",
  [
    (dict(rationale_rate=-0.5), "RATIONALE_RATE .* >= 0, got -0.5"),
    (dict(rationale_rate=float("nan")), "RATIONALE_RATE"),
    (dict(inputs_per_step=0), "INPUTS_PER_STEP .* >= 1, got 0"),
    (dict(recipe="paired"), "RECIPE .* mixture, official, got 'paired'"),
  ],
)
def test_step_config_refuses_bad_values_where_they_enter(values, message):
  with pytest.raises(errors.UserError, match=message):
    step_lib.StepConfig(**values)


@pytest.mark.parametrize("rate", [-0.5, float("inf"), float("nan"), True])
def test_lambda_has_one_rule_at_every_entry(rate):
  # The gin path's StepConfig, the main job's DistillConfig (its plan and
  # dry run used to accept inf) and T5X's seqio_tasks.options.
  from dss_jax import seqio_tasks
  from dss_jax.distill import config as job_config

  with pytest.raises(errors.UserError, match="finite number >= 0"):
    step_lib.StepConfig(rationale_rate=rate)
  with pytest.raises(job_config.ConfigError, match="finite number >= 0") as e:
    job_config.DistillConfig(rationale_rate=rate)
  assert e.value.field == "rationale_rate"
  with pytest.raises(errors.UserError, match="finite number >= 0"):
    seqio_tasks.DataOptions(rationale_rate=rate)


def test_deprecated_batch_size_counts_rows(tmp_path, caplog):
  _register_mixture()
  with caplog.at_level(logging.INFO):
    result = _train(tmp_path, steps=1, batch_size=4)
  messages = [r.getMessage() for r in caplog.records]
  assert any("INPUTS_PER_STEP = 2" in m for m in messages)
  # BATCH_SIZE 4 rows of two tasks: 2 inputs, as the log line says.
  assert any(
    m.startswith("each step trains on") and "(2 inputs, 4 rows" in m
    for m in messages
  )
  assert result.step == 1


def test_train_gin_binds_one_step_config_and_refuses_lambda_elsewhere():
  import gin

  from dss_jax import gin_flags
  from dss_jax import train as train_main

  gin.clear_config()
  try:
    required = ['MIXTURE_OR_TASK_NAME = "loop_mix"', 'MODEL_DIR = "unused"']
    gin_flags.parse_gin(["runs/train.gin"], [*required, "RATIONALE_RATE = 2.0"])
    assert gin.query_parameter("%INPUTS_PER_STEP") == 64
    train_main.check_rationale_rate_binding()
    gin_flags.parse_gin(
      [], ["dss_jax.seqio_tasks.options.rationale_rate = 0.5"]
    )
    with pytest.raises(errors.UserError, match="--gin.RATIONALE_RATE=0.5"):
      train_main.check_rationale_rate_binding()
  finally:
    gin.clear_config()


def test_bad_lengths_and_model_dirs_are_one_error_before_training(tmp_path):
  model, _ = t5.make_test_model()
  values = dict(
    model=model,
    mixture_or_task_name=_register_mixture(),
    task_feature_lengths=LENGTHS,
    train_steps=1,
    batch_size=2,
    model_dir=str(tmp_path / "run"),
  )
  bad = [
    ({"task_feature_lengths": "long"}, "TASK_FEATURE_LENGTHS must be a dict"),
    ({"model_dir": ""}, "MODEL_DIR is empty"),
    # /proc takes no new folders: mkdir fails with ENOENT.
    ({"model_dir": "/proc/dss_run"}, "MODEL_DIR /proc/dss_run cannot be"),
    ({"num_microbatches": 3}, "NUM_MICROBATCHES=3 must divide the step's 2"),
  ]
  for overrides, words in bad:
    with pytest.raises(trainer.errors.UserError, match=words):
      trainer.train(**{**values, **overrides})
  assert not os.path.exists("/proc/dss_run")
