"""End to end: `python -m dss_jax.train` on a real DSS mixture (SVAMP, PaLM).

The TFDS dataset of the paper's released SVAMP outputs is built once into a
temporary data dir; the trainer runs as a subprocess with gin_configs/tiny.gin,
is stopped by SIGTERM (a preempted VM), and the same command resumes it.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dss_jax import checkpoints, input_pipeline


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory, paper_data_dir):
  from dss_jax import datasets

  data_dir = tmp_path_factory.mktemp("tfds")
  os.environ["DSS_PAPER_DATA_DIR"] = str(paper_data_dir)
  datasets.build_annotated("svamp", "palm", data_dir=str(data_dir))
  return data_dir


def _command(model_dir, train_steps):
  return [
    sys.executable,
    "-m",
    "dss_jax.train",
    "--gin_file=tiny.gin",
    f'--gin.MODEL_DIR="{model_dir}"',
    '--gin.MIXTURE_OR_TASK_NAME="dss_svamp_palm"',
    f"--gin.TRAIN_STEPS={train_steps}",
    "--gin.CHECKPOINT_PERIOD=5",
    "--gin.BATCH_SIZE=4",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 96, 'targets': 48}",
    # A fixed peak skips the CPU matmul measurement (faster start).
    "--gin.trainer.train.peak_flops=1e12",
  ]


def _env(repo_dir, tfds_dir):
  # The suite's compilation cache comes with os.environ (conftest.py): the
  # resumed run reuses the first run's compiled programs.
  env = dict(os.environ)
  env.update(
    TFDS_DATA_DIR=str(tfds_dir),
    PYTHONPATH=os.pathsep.join([str(repo_dir), env.get("PYTHONPATH", "")]),
    JAX_PLATFORMS="cpu",
    XLA_FLAGS="",
  )
  return env


@pytest.mark.slow
def test_train_sigterm_then_resume_on_svamp(tmp_path, repo_dir, tfds_dir):
  model_dir = tmp_path / "run"
  env = _env(repo_dir, tfds_dir)
  log = open(tmp_path / "first.log", "w")
  # Far more steps than it will run: SIGTERM ends it.
  first = subprocess.Popen(
    _command(model_dir, 100_000),
    cwd=repo_dir,
    env=env,
    stdout=log,
    stderr=subprocess.STDOUT,
  )
  deadline = time.time() + 240
  while not checkpoints.checkpoint_steps(model_dir):
    assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    assert time.time() < deadline, "no checkpoint within 240 s"
    time.sleep(0.5)
  first.send_signal(signal.SIGTERM)
  assert first.wait(timeout=120) == 0, (tmp_path / "first.log").read_text()[
    -3000:
  ]
  stopped = checkpoints.checkpoint_steps(model_dir)[-1]
  assert 5 <= stopped < 100_000
  first_log = (tmp_path / "first.log").read_text()
  assert "loss/dss_svamp_palm_label=" in first_log
  assert "loss/dss_svamp_palm_rationale=" in first_log
  # gin's search for tiny.gin logs no line per folder (nor "Path not found"
  # errors for a file it then found).
  assert "resource_reader" not in first_log
  assert "Path not found" not in first_log

  second = subprocess.run(
    _command(model_dir, stopped + 3),
    cwd=repo_dir,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert second.returncode == 0, second.stderr[-3000:]
  assert f"resumed from step {stopped}" in second.stderr
  assert checkpoints.checkpoint_steps(model_dir)[-1] == stopped + 3
  params = checkpoints.restore_params(model_dir)
  assert params["decoder"]["logits_dense"]["kernel"].shape == (32, 512)
  assert list((model_dir / "train").glob("events.out.tfevents.*"))


@pytest.fixture
def svamp_vocab(tfds_dir):
  """Registers the SVAMP card's tasks, reading `tfds_dir`; their vocabulary."""
  os.environ["TFDS_DATA_DIR"] = str(tfds_dir)
  import seqio

  from dss_jax import seqio_tasks

  vocab = seqio.ByteVocabulary()
  seqio_tasks.register_card("svamp", "palm", vocabulary=vocab)
  return vocab


def test_paired_mode_pairs_label_and_rationale_of_one_question(svamp_vocab):
  vocab = svamp_vocab
  config = input_pipeline.DatasetConfig(
    "dss_svamp_palm",
    {"inputs": 512, "targets": 512},
    batch_size=8,
    paired=True,
  )
  batch = next(input_pipeline.iterate(input_pipeline.make_dataset(config)))
  task_ids = batch[input_pipeline.TASK_IDS][:, 0]
  np.testing.assert_array_equal(task_ids, [1, 2] * 4)
  for row in range(0, 8, 2):
    label = vocab.decode(batch["encoder_input_tokens"][row].tolist())
    rationale = vocab.decode(batch["encoder_input_tokens"][row + 1].tolist())
    assert label.startswith("predict: ")
    assert rationale.startswith("explain: ")
    assert label.removeprefix("predict: ") == rationale.removeprefix(
      "explain: "
    )


@pytest.mark.parametrize("shards", [1, 2])
def test_paired_mode_trains_every_paired_input_on_any_number_of_shards(
  svamp_vocab, shards
):
  vocab = svamp_vocab
  # An input shard holds whole inputs (the paired task's examples). Joining
  # separately sharded label and rationale streams lost the pairs whose
  # halves fell into different shards once some input had no rationale:
  # 372 of SVAMP's 709 paired inputs on 2 shards.
  import seqio

  from dss_jax import seqio_tasks

  lengths = {"inputs": 512, "targets": 512}
  paired_task = seqio.get_mixture_or_task(
    seqio_tasks.paired_task("dss_svamp_palm")
  )
  inputs = [
    ex["inputs_pretokenized"].decode()
    for ex in paired_task.get_dataset(
      lengths, split="train", shuffle=False
    ).as_numpy_iterator()
  ]
  rows = 8  # 4 inputs a step, 4 // shards from each shard
  per_shard = rows // 2 // shards
  # Steps that stay within one epoch of the smallest shard.
  steps = len(inputs) // shards // per_shard
  config = input_pipeline.DatasetConfig(
    "dss_svamp_palm",
    lengths,
    batch_size=rows,
    shuffle=False,
    paired=True,
    data_shards=shards,
    count_truncated=False,
  )
  batches = input_pipeline.iterate(input_pipeline.make_dataset(config))
  seen = []
  for _ in range(steps):
    batch = next(batches)
    np.testing.assert_array_equal(
      batch[input_pipeline.TASK_IDS][:, 0], [1, 2] * (rows // 2)
    )
    seen += [vocab.decode(t.tolist()) for t in batch["encoder_input_tokens"]]
  labels = seen[0::2]
  assert [s.removeprefix("explain: ") for s in seen[1::2]] == [
    s.removeprefix("predict: ") for s in labels
  ]
  # Each input once, and all of them but the last step's remainder.
  assert len(set(labels)) == len(labels) == steps * per_shard * shards
  assert set(labels) <= set(inputs)
  assert len(inputs) - len(labels) < per_shard * shards


@pytest.mark.parametrize(
  "overrides",
  [
    {},
    {"paired": True, "shuffle": False},
    {"pack": True, "packed_rows": 8, "data_shards": 2, "cache_examples": True},
  ],
  ids=["sampled", "paired", "packed"],
)
def test_the_pipeline_built_without_autograph_gives_the_same_batches(
  svamp_vocab, overrides
):
  # make_dataset traces its functions (SeqIO's and ours) as written; the
  # undecorated function lets tf.data hand each to AutoGraph, as before.
  config = input_pipeline.DatasetConfig(
    "dss_svamp_palm",
    {"inputs": 256, "targets": 128},
    batch_size=8,
    count_truncated=False,
    **overrides,
  )
  with_autograph = input_pipeline.make_dataset.__wrapped__(config)
  streams = [
    input_pipeline.iterate(ds)
    for ds in (input_pipeline.make_dataset(config), with_autograph)
  ]
  for _ in range(12):
    plain, rewritten = (next(s) for s in streams)
    assert plain.keys() == rewritten.keys()
    for key in plain:
      np.testing.assert_array_equal(plain[key], rewritten[key], err_msg=key)


def test_every_dataset_is_built_without_autograph(svamp_vocab, monkeypatch):
  # What AutoGraph converts while each dataset of the commands is built
  # (training, evaluation, inference, the showcase); the undecorated
  # make_dataset shows that the count sees conversions.
  from tensorflow.python.autograph.impl import api

  from dss_jax import evaluation, inference, showcase
  from dss_jax.models import t5

  converted = []
  convert = api._convert_actual

  def counted(*args, **kwargs):
    converted.append(args[0])
    return convert(*args, **kwargs)

  monkeypatch.setattr(api, "_convert_actual", counted)
  config = input_pipeline.DatasetConfig(
    "dss_svamp_palm", {"inputs": 96, "targets": 48}, batch_size=8
  )
  input_pipeline.make_dataset(config)
  model, _ = t5.make_test_model()
  evaluation.Evaluator(
    "dss_svamp_palm_label",
    model,
    feature_lengths={"inputs": 96, "targets": 48},
    num_examples=4,
    batch_size=4,
  )
  inference.read_task_split("dss_svamp_palm_label", "test", num_examples=2)
  showcase._first_rows("dss_svamp_palm_label", config.task_feature_lengths, 2)
  assert converted == []
  input_pipeline.make_dataset.__wrapped__(config)
  assert converted
