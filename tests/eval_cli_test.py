"""Tests for eval-only jobs: dss_jax.evaluation.evaluate_checkpoints and the
`python -m dss_jax.eval` entry point.

Checkpoints are written in both layouts a model dir may hold: T5X's legacy
`checkpoint_<step>` and this project's orbax `checkpoints/<step>/state`.

Run: .venv/bin/pytest tests/eval_cli_test.py -q
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import seqio

from dss_jax import evaluation, partitioning, t5x_checkpoints
from dss_jax.models import t5

_LENGTHS = {"inputs": 16, "targets": 4}
_TASK = "eval_cli_test_task"

# Registers the task in this process and in the entry point's (gin imports
# it).
_TASK_MODULE = textwrap.dedent(
  f'''
  import seqio
  import tensorflow as tf
  from dss_jax import metrics

  def _dataset_fn(split, shuffle_files, seed=None):
    return tf.data.Dataset.from_tensor_slices(
      {{"inputs": ["predict: a", "predict: b", "predict: c"],
        "targets": ["yes", "no", "yes"]}}
    )

  if "{_TASK}" not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(
      "{_TASK}",
      source=seqio.FunctionDataSource(
        _dataset_fn, splits=["validation", "test"]
      ),
      preprocessors=[
        seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim
      ],
      output_features={{
        k: seqio.Feature(seqio.ByteVocabulary()) for k in ("inputs", "targets")
      }},
      postprocess_fn=metrics.postprocess_text,
      metric_fns=[metrics.label_accuracy],
    )
  '''
)


def _register_task(tmp_path):
  """Imports the task module from a file, as the entry point's gin does."""
  path = tmp_path / "eval_cli_tasks.py"
  path.write_text(_TASK_MODULE)
  spec = importlib.util.spec_from_file_location("eval_cli_tasks", path)
  spec.loader.exec_module(importlib.util.module_from_spec(spec))


@pytest.fixture
def task_module(tmp_path, monkeypatch):
  """eval_cli_tasks.py, for the entry point's gin to import in-process.

  Importing it registers the task; the registry is cleared after each
  test, so the module must not stay imported either.
  """
  (tmp_path / "eval_cli_tasks.py").write_text(_TASK_MODULE)
  monkeypatch.syspath_prepend(str(tmp_path))
  sys.modules.pop("eval_cli_tasks", None)
  yield
  sys.modules.pop("eval_cli_tasks", None)


@pytest.fixture()
def model_dir(tmp_path):
  """A run with a T5X-layout checkpoint at step 5 and an orbax one at 10."""
  model, _ = t5.make_test_model()
  tokens = np.ones((1, 4), np.int32)
  init = lambda seed: model.init(  # noqa: E731
    jax.random.PRNGKey(seed), tokens, tokens, tokens, enable_dropout=False
  )["params"]
  t5x_checkpoints.save_t5x_checkpoint(init(0), tmp_path, 5)
  manager = ocp.CheckpointManager(
    tmp_path / "checkpoints",
    item_handlers={"state": ocp.StandardCheckpointHandler()},
  )
  state = {"params": init(1), "step": 10}
  manager.save(10, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
  manager.wait_until_finished()
  manager.close()
  return model, tmp_path, init


def test_scores_every_checkpoint_once(model_dir, tmp_path):
  model, path, init = model_dir
  _register_task(tmp_path)
  kwargs = dict(feature_lengths=_LENGTHS, mode="all", batch_size=4)
  results = evaluation.evaluate_checkpoints(model, str(path), _TASK, **kwargs)
  assert sorted(results) == [5, 10]
  assert set(results[5]) == {f"{_TASK}/accuracy"}
  out = path / "inference_eval"
  lines = (out / f"{_TASK}-metrics.jsonl").read_text().splitlines()
  assert [json.loads(x)["step"] for x in lines] == [5, 10]
  # Following a running job: only new checkpoints are scored.
  assert (
    evaluation.evaluate_checkpoints(model, str(path), _TASK, **kwargs) == {}
  )
  t5x_checkpoints.save_t5x_checkpoint(init(2), path, 15)
  results = evaluation.evaluate_checkpoints(
    model, str(path), _TASK, follow_until_step=15, poll_seconds=0, **kwargs
  )
  assert sorted(results) == [15]


def test_specific_and_missing_checkpoints(model_dir, tmp_path):
  model, path, _ = model_dir
  _register_task(tmp_path)
  results = evaluation.evaluate_checkpoints(
    model,
    str(path / "checkpoint_5"),
    _TASK,
    feature_lengths=_LENGTHS,
    mode="specific",
    output_dir=str(tmp_path / "out"),
    batch_size=4,
  )
  assert list(results) == [5]
  # Sharded over a (4, 2) mesh of the 8 fake devices: the same metrics.
  sharded = evaluation.evaluate_checkpoints(
    model,
    str(path / "checkpoint_5"),
    _TASK,
    feature_lengths=_LENGTHS,
    mode="specific",
    output_dir=str(tmp_path / "out_sharded"),
    batch_size=4,
    partitioner=partitioning.Partitioner(data=-1, model=2),
  )
  assert sharded == results
  with pytest.raises(t5x_checkpoints.CheckpointError, match="does not exist"):
    evaluation.evaluate_checkpoints(
      model,
      str(path / "nope"),
      _TASK,
      feature_lengths=_LENGTHS,
      mode="specific",
    )
  big, _ = t5.make_test_model(emb_dim=48)
  with pytest.raises(
    t5x_checkpoints.CheckpointError,
    match=r"parameter \S+ has shape \(32,\) in the checkpoint but \(48,\)",
  ):
    evaluation.evaluate_checkpoints(
      big,
      str(path),
      _TASK,
      feature_lengths=_LENGTHS,
      mode="latest",
      output_dir=str(tmp_path / "out2"),
    )


def test_entry_point(
  model_dir, tmp_path, repo_dir, monkeypatch, task_module, run_entry_point
):
  _, path, _ = model_dir
  monkeypatch.chdir(repo_dir)
  (tmp_path / "tiny_model.gin").write_text(
    textwrap.dedent(
      """
      from __gin__ import dynamic_registration
      import eval_cli_tasks
      from dss_jax.models import t5
      MODEL = @t5.Transformer()
      t5.Transformer.config = @t5.t5_1_1_config()
      t5.t5_1_1_config.size = "tiny"
      """
    )
  )
  run = run_entry_point(
    "dss_jax.eval",
    f"--gin_file={tmp_path / 'tiny_model.gin'}",
    "--gin_file=runs/eval.gin",
    f'--gin.CHECKPOINT_PATH="{path}"',
    f'--gin.MIXTURE_OR_TASK_NAME="{_TASK}"',
    '--gin.CHECKPOINT_MODE="all"',
    '--gin.TASK_FEATURE_LENGTHS={"inputs": 16, "targets": 4}',
    "--gin.BATCH_SIZE=4",
    '--gin.EVAL_SPLIT="test"',
  )
  assert run.returncode == 0, run.stderr[-3000:]
  printed = [
    json.loads(x) for x in run.stdout.splitlines() if x.startswith("{")
  ]
  assert [x["step"] for x in printed] == [5, 10]
  # Every summary line and metrics line names the split and the task.
  assert {(x["split"], x["task"]) for x in printed} == {("test", _TASK)}
  metrics = (path / "inference_eval" / f"{_TASK}-metrics.jsonl").read_text()
  assert [json.loads(x)["split"] for x in metrics.splitlines()] == ["test"] * 2
  assert (path / "inference_eval" / f"{_TASK}-000010.jsonl").exists()


def test_entry_point_errors_are_one_line(tmp_path, run_entry_point):
  import gin

  (tmp_path / "tiny_model.gin").write_text(
    "from __gin__ import dynamic_registration\n"
    "from dss_jax.models import t5\n"
    "MODEL = @t5.Transformer()\n"
    "t5.Transformer.config = @t5.t5_1_1_config()\n"
    't5.t5_1_1_config.size = "tiny"\n'
  )
  seqio.TaskRegistry.add(
    "eval_cli_close_name",
    source=seqio.FunctionDataSource(
      lambda split, shuffle_files: None, ["validation"]
    ),
    preprocessors=[],
    output_features={},
  )
  # Checkpoints are looked up first (no data is read for a wrong path), then
  # the task; each error is one line. Listing needs only the msgpack file.
  (tmp_path / "run" / "checkpoint_1").mkdir(parents=True)
  (tmp_path / "run" / "checkpoint_1" / "checkpoint").write_bytes(b"")
  files = [str(tmp_path / "tiny_model.gin"), "runs/eval.gin"]
  errors = []
  for path, task in (
    (tmp_path / "nowhere", "eval_cli_close_name"),
    (tmp_path / "run", "eval_cli_close_nmae"),
  ):
    try:
      ran = run_entry_point(
        "dss_jax.eval",
        *(f"--gin_file={f}" for f in files),
        f'--gin.CHECKPOINT_PATH="{path}"',
        f'--gin.MIXTURE_OR_TASK_NAME="{task}"',
      )
    finally:
      gin.clear_config()
    assert ran.returncode == 2, ran.stderr[-2000:]
    errors.append(ran.stderr.strip().splitlines()[-1])
  assert (
    errors[0] == f"error: checkpoint path does not exist: {tmp_path}/nowhere"
  )
  assert errors[1].startswith(
    "error: task or mixture 'eval_cli_close_nmae' is not"
  )
  assert "did you mean: eval_cli_close_name" in errors[1]


def test_a_vocabulary_other_than_the_training_one_is_refused(
  model_dir, tmp_path
):
  from dss_jax import vocab

  model, path, _ = model_dir
  _register_task(tmp_path)
  kwargs = dict(feature_lengths=_LENGTHS, mode="latest", batch_size=4)
  # Trained with a byte vocabulary of another size (the eval task's has 259).
  smaller = {**vocab.identity(seqio.ByteVocabulary()), "vocab_size": 131}
  (path / vocab.VOCABULARY_FILE).write_text(json.dumps(smaller))
  with pytest.raises(ValueError, match="trained with a ByteVocabulary of 131"):
    evaluation.evaluate_checkpoints(model, str(path), _TASK, **kwargs)
  vocab.write_identity(str(tmp_path / "fresh"), seqio.ByteVocabulary())
  (path / vocab.VOCABULARY_FILE).write_text(
    (tmp_path / "fresh" / vocab.VOCABULARY_FILE).read_text()
  )
  assert evaluation.evaluate_checkpoints(model, str(path), _TASK, **kwargs)


def test_entry_point_reads_the_data_of_tfds_data_dir(
  model_dir, tmp_path, repo_dir, paper_data_dir
):
  """`--tfds_data_dir` (T5X's flag) is where the tasks read, over the env.

  A real process: the tasks are registered when the gin file first imports
  `dss_jax.seqio_tasks`, which happens once per process.
  """
  from dss_jax import datasets

  _, path, _ = model_dir
  built = tmp_path / "tfds"
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("DSS_PAPER_DATA_DIR", str(paper_data_dir))
    datasets.build_annotated("svamp", "palm", data_dir=str(built))
  (tmp_path / "tiny_model.gin").write_text(
    textwrap.dedent(
      """
      from __gin__ import dynamic_registration
      from dss_jax.models import t5
      MODEL = @t5.Transformer()
      t5.Transformer.config = @t5.t5_1_1_config()
      t5.t5_1_1_config.size = "tiny"
      """
    )
  )
  empty = tmp_path / "empty"
  empty.mkdir()
  env = dict(os.environ, PYTHONPATH=str(repo_dir), TFDS_DATA_DIR=str(empty))
  out = tmp_path / "scores"
  cmd = [
    *(sys.executable, "-m", "dss_jax.eval"),
    f"--gin_file={tmp_path / 'tiny_model.gin'}",
    "--gin_file=runs/eval.gin",
    f'--gin.CHECKPOINT_PATH="{path}"',
    '--gin.MIXTURE_OR_TASK_NAME="dss_svamp_palm_label"',
    '--gin.dss_jax.vocab.get_vocabulary.name="byte"',
    '--gin.TASK_FEATURE_LENGTHS={"inputs": 64, "targets": 8}',
    f'--gin.EVAL_OUTPUT_DIR="{out}"',
    "--gin.BATCH_SIZE=4",
    "--gin.NUM_EXAMPLES=4",
  ]
  run = subprocess.run(
    [*cmd, f"--tfds_data_dir={built}"],
    capture_output=True,
    text=True,
    cwd=tmp_path,
    env=env,
    timeout=300,
  )
  assert run.returncode == 0, run.stderr[-3000:]
  assert list(out.glob("dss_svamp_palm_label*metrics.jsonl"))
  # Without the flag the same command reads TFDS_DATA_DIR, where nothing is.
  run = subprocess.run(
    cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
  )
  assert run.returncode == 2, run.stderr[-3000:]
  assert str(empty) in run.stderr.strip().splitlines()[-1]


def test_a_changed_split_count_or_checkpoint_is_scored_again(
  model_dir, tmp_path, caplog
):
  model, path, init = model_dir
  _register_task(tmp_path)
  kwargs = dict(feature_lengths=_LENGTHS, mode="all", batch_size=4)

  def score(**more):
    return evaluation.evaluate_checkpoints(
      model, str(path), _TASK, **kwargs, **more
    )

  assert sorted(score()) == [5, 10]
  again = score()
  assert again == {} and again.reused == [5, 10]
  with caplog.at_level("INFO", logger="absl"):
    test = score(split="test")
  assert sorted(test) == [5, 10] and test.split == "test"
  assert any(
    "split 'validation' -> 'test'" in r.message for r in caplog.records
  )
  assert sorted(score(split="test", num_examples=2)) == [5, 10]
  beam = evaluation.DecodeConfig(method="beam", num_beams=2)
  assert sorted(score(split="test", num_examples=2, decode=beam)) == [5, 10]
  # Another checkpoint under the same step.
  shutil.rmtree(path / "checkpoint_5")
  t5x_checkpoints.save_t5x_checkpoint(init(3), path, 5)
  changed = score(split="test", num_examples=2, decode=beam)
  assert sorted(changed) == [5] and changed.reused == [10]
  lines = (path / "inference_eval" / f"{_TASK}-metrics.jsonl").read_text()
  splits = [json.loads(x)["split"] for x in lines.splitlines()]
  assert splits == ["validation"] * 2 + ["test"] * 7


def _checkpointed_run(path, init):
  """A run written by the trainer's checkpointer (checksums recorded)."""
  from dss_jax import checkpoints

  saver = checkpoints.Checkpointer(path, async_save=False)
  saver.save(7, {"params": init(1), "step": np.int32(7)}, batches=7)
  saver.close()
  return path / "checkpoints" / "7" / "state"


def _flip_bits(state_dir):
  for p in state_dir.rglob("*"):
    if p.is_file() and p.parent.name == "d":
      data = bytearray(p.read_bytes())
      data[len(data) // 2] ^= 0x10
      p.write_bytes(bytes(data))


def test_a_damaged_checkpoint_is_refused_by_the_entry_point(
  model_dir, tmp_path, repo_dir, monkeypatch, task_module, run_entry_point
):
  model, _, init = model_dir
  run_dir = tmp_path / "trained"
  state = _checkpointed_run(run_dir, init)
  _register_task(tmp_path)
  kwargs = dict(feature_lengths=_LENGTHS, batch_size=4)
  assert evaluation.evaluate_checkpoints(model, str(run_dir), _TASK, **kwargs)
  _flip_bits(state)
  (tmp_path / "eval_cli_tasks.py").write_text(_TASK_MODULE)
  (tmp_path / "tiny_model.gin").write_text(
    "from __gin__ import dynamic_registration\n"
    "import eval_cli_tasks\n"
    "from dss_jax.models import t5\n"
    "MODEL = @t5.Transformer()\n"
    "t5.Transformer.config = @t5.t5_1_1_config()\n"
    't5.t5_1_1_config.size = "tiny"\n'
  )
  monkeypatch.chdir(repo_dir)
  run = run_entry_point(
    "dss_jax.eval",
    f"--gin_file={tmp_path / 'tiny_model.gin'}",
    "--gin_file=runs/eval.gin",
    f'--gin.CHECKPOINT_PATH="{run_dir}"',
    f'--gin.MIXTURE_OR_TASK_NAME="{_TASK}"',
    '--gin.TASK_FEATURE_LENGTHS={"inputs": 16, "targets": 4}',
    "--gin.BATCH_SIZE=4",
    '--gin.EVAL_SPLIT="test"',
  )
  assert run.returncode == 2, run.stderr[-3000:]
  assert "Traceback" not in run.stderr
  last = run.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: checkpoint {state}"), last
  assert "checksum" in last or "cannot be read" in last
  assert not run.stdout.strip()
  # A truncated file: one line too.
  for p in state.rglob("*"):
    if p.is_file() and p.parent.name == "d":
      p.write_bytes(p.read_bytes()[:10])
  from dss_jax import checkpoints

  with pytest.raises(checkpoints.CorruptCheckpointError, match="cannot be"):
    evaluation.evaluate_checkpoints(
      model, str(run_dir), _TASK, split="test", **kwargs
    )


@pytest.mark.parametrize(
  "setting, value, message",
  [
    ("batch_size", 0, "BATCH_SIZE must be a whole number >= 1, got 0"),
    ("feature_lengths", {"inputs": 16}, "has no 'targets' length"),
    ("decode", None, "NUM_BEAMS"),
    ("output_dir", "below_a_file", "eval output folder .* cannot be made"),
  ],
)
def test_values_that_would_break_later_are_refused_up_front(
  model_dir, tmp_path, setting, value, message
):
  model, path, _ = model_dir
  _register_task(tmp_path)
  kwargs = dict(feature_lengths=_LENGTHS, batch_size=4)
  if setting == "decode":
    with pytest.raises(ValueError, match=message):
      evaluation.DecodeConfig(method="beam", num_beams=0)
    return
  if value == "below_a_file":
    (tmp_path / "a_file").write_text("")
    value = str(tmp_path / "a_file" / "eval")
  kwargs[setting] = value
  with pytest.raises(ValueError, match=message):
    evaluation.evaluate_checkpoints(model, str(path), _TASK, **kwargs)


def test_long_inputs_and_unreachable_targets_are_counted(model_dir, tmp_path):
  model, path, _ = model_dir
  _register_task(tmp_path)
  results = evaluation.evaluate_checkpoints(
    model,
    str(path),
    _TASK,
    feature_lengths={"inputs": 8, "targets": 3},
    batch_size=4,
    output_dir=str(tmp_path / "out"),
  )
  # "predict: a" + EOS is 11 bytes; "yes" + EOS 4 (two of the three).
  assert results.truncation == [
    "validation: 3 of 3 inputs longer than 8 tokens were cut "
    f"({_TASK}); 2 of 3 targets are longer than the 3 tokens decoded "
    "(MAX_DECODE_LENGTH), so no prediction can match them"
  ]
