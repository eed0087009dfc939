"""A result is reused only when what it was made from is unchanged.

An edited card is another distill run (refused in one line, not the old
table); changed gold labels or released data rebuild the TFDS dataset, and a
line says which file changed; more teacher samples reach the teacher; a
finished MODEL_DIR rerun with another task is refused. Annotations never
come from the wrong source, and a job without rationales stops and says so.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds
import user_cards

from dss_jax import datasets
from dss_jax.distill import config as job_config
from dss_jax.distill import stages
from dss_jax.teacher import sources
from dss_jax.teacher import store as store_lib


def _env(**extra):
  return {**os.environ, "JAX_PLATFORMS": "cpu", **extra}


def _errors(proc):
  return [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]


def _distill_args(card, out, *flags):
  return [
    f"--task_card={card}",
    "--teacher=offline",
    "--student_vocabulary=byte",
    "--methods=finetune,dss_gold",
    "--model_sizes=demo-xs",
    "--fractions=1.0",
    "--seeds=0",
    "--train_steps=2",
    "--batch_size=8",
    "--learning_rate=1e-3",
    "--inputs_length=64",
    "--targets_length=26",
    "--label_length=4",
    "--eval_examples=8",
    "--validation_period=0",
    "--workers=1",
    "--noprogress_bars",
    f"--out_dir={out}",
    *flags,
  ]


@pytest.mark.slow
def test_an_edited_card_is_another_run(tmp_path, run_entry_point):
  # `python -m dss_jax.distill`, run in this process (the docs' commands
  # start it as its own process).
  card = user_cards.files_card(tmp_path / "card")
  out = tmp_path / "out"
  first = run_entry_point("dss_jax.distill", *_distill_args(card, out))
  assert first.returncode == 0, first.stderr[-3000:]
  again = run_entry_point("dss_jax.distill", *_distill_args(card, out))
  assert again.returncode == 0, again.stderr[-3000:]
  assert "2/2 runs already finished" in again.stdout

  path = pathlib.Path(card)
  path.write_text(
    path.read_text().replace("one equation per step", "one step a line")
  )
  edited = run_entry_point("dss_jax.distill", *_distill_args(card, out))
  assert edited.returncode == 2, edited.stderr[-3000:]
  [line] = _errors(edited)
  assert "holds a run of another configuration (card_sha256 " in line
  assert "runs already finished" not in edited.stdout


def _config(card, out, **overrides):
  values = dict(
    card=card,
    backend="offline",
    out_dir=str(out),
    progress=False,
    compilation_cache=False,
  )
  return job_config.DistillConfig(**{**values, **overrides})


def test_more_teacher_samples_reach_the_teacher(tmp_path):
  card = user_cards.files_card(tmp_path / "card", train=8, test=4)
  logs = []
  stages.DataStages(_config(card, tmp_path / "out"), logs.append).annotate()
  store = tmp_path / "out" / "annotations" / "mini_offline.jsonl"
  assert len(store_lib.read_records(store)) == 12

  config = _config(card, tmp_path / "out", num_samples=3)
  stages.DataStages(config, logs.append).annotate()
  [line] = [x for x in logs if "changed since" in x]
  assert line.startswith("annotate: num_samples 1 -> 3 changed since ")
  records = store_lib.read_records(store)
  assert sorted({r.sample for r in records}) == [0, 1, 2]
  assert len(records) == 12 + 36  # 3 samples at temperature 0.7: new prompts
  # Done now: the same settings ask nothing.
  stages.DataStages(config, logs.append).annotate()
  assert logs[-1].startswith("annotate: done before")


def test_changed_gold_labels_rebuild_the_dataset(tmp_path):
  card = user_cards.files_card(tmp_path / "card", train=8, test=4)
  out = tmp_path / "out"
  logs = []
  job = stages.DataStages(_config(card, out), logs.append)
  job.annotate()
  job.build_dataset()
  test_file = tmp_path / "card" / "test.jsonl"
  rows = [json.loads(line) for line in test_file.read_text().splitlines()]
  rows[0]["label"] = 12345
  test_file.write_text("".join(json.dumps(r) + "\n" for r in rows))

  job.build_dataset()
  [line] = [x for x in logs if x.startswith("rebuilding")]
  assert f"source file {test_file} changed since it was built" in line
  builder = job.build()
  labels = {
    row["gold_label"]
    for row in builder.as_dataset(split="test").as_numpy_iterator()
  }
  assert b"12345" in labels


def test_changed_released_data_rebuilds_the_palm_dataset(
  paper_data_dir, tmp_path
):
  root = tmp_path / "paper"
  shutil.copytree(paper_data_dir / "svamp", root / "svamp")
  command = [
    sys.executable,
    "-m",
    "dss_jax.datasets",
    "--card=svamp",
    "--source=palm",
    f"--data_dir={tmp_path / 'tfds'}",
  ]
  env = _env(**{sources.PAPER_DATA_ENV: str(root)})
  first = subprocess.run(
    command, capture_output=True, text=True, timeout=300, env=env
  )
  assert first.returncode == 0, first.stderr[-2000:]
  test_file = root / "svamp" / "svamp_test.json"
  rows = [json.loads(line) for line in test_file.read_text().splitlines()]
  rows[0]["label"] = "( 1.0 + 41.0 )"
  test_file.write_text("".join(json.dumps(r) + "\n" for r in rows))

  second = subprocess.run(
    command, capture_output=True, text=True, timeout=300, env=env
  )
  assert second.returncode == 0, second.stderr[-2000:]
  assert f"source file {test_file} changed since it was built" in (
    second.stderr
  )
  path = tmp_path / "tfds" / "dss_annotated" / "svamp_palm" / "1.0.0"
  rows = tfds.builder_from_directory(str(path)).as_dataset(split="test")
  labels = {row["gold_label"] for row in rows.as_numpy_iterator()}
  assert b"( 1.0 + 41.0 )" in labels


@pytest.mark.parametrize(
  "flag, words",
  [
    ("--teacher_source=palm", "--teacher_source=palm names the paper's"),
    ("--teacher_source=../x", "source name '../x': use lower-case letters"),
    ("--teacher_source=My Run", "source name 'My Run': use lower-case"),
  ],
)
def test_source_names_say_what_they_were_built_from(
  tmp_path, run_entry_point, flag, words
):
  out = tmp_path / "out"
  proc = run_entry_point("dss_jax.distill", flag, f"--out_dir={out}")
  assert proc.returncode == 2, proc.stderr[-2000:]
  [line] = _errors(proc)
  assert words in line
  assert not out.exists()


def test_palm_is_only_the_released_outputs(tmp_path):
  with pytest.raises(job_config.ConfigError, match="teacher_model is empty"):
    _config("arith", tmp_path, backend="gemini", teacher_model="")
  (tmp_path / "file").write_text("")
  with pytest.raises(job_config.ConfigError, match="out_dir=.* is a file"):
    _config("arith", tmp_path / "file")
  # An empty --out_dir (an unset shell variable) would write into the
  # working directory.
  with pytest.raises(job_config.ConfigError, match="out_dir is empty"):
    _config("arith", "")
  with pytest.raises(datasets.errors.UserError, match="released PaLM-540B"):
    datasets.build_annotated(
      "svamp", "palm", data_dir=str(tmp_path), store=str(tmp_path / "s")
    )
  with pytest.raises(datasets.errors.UserError, match="released PaLM-540B"):
    datasets.build_annotated(
      "svamp",
      "palm",
      data_dir=str(tmp_path),
      store=str(tmp_path / "s"),
      teacher="gemini-2.5-flash",
    )
  # The replayed outputs' own store (annotate --backend=replay --build_tfds)
  # passes the name check (and then reads the store as usual).
  datasets.check_source_name(
    "palm", store=str(tmp_path / "s"), teacher=sources.PALM_TEACHER
  )


def test_a_job_without_rationales_stops_and_says_so(tmp_path):
  card = user_cards.files_card(tmp_path / "card", train=8, test=4)
  path = pathlib.Path(card)
  # A parser that never finds the offline teacher's answer.
  path.write_text(
    path.read_text().replace(
      'answer_marker: "The answer is"', 'answer_marker: "Result:"'
    )
  )
  logs = []
  job = stages.DataStages(
    _config(card, tmp_path / "out", methods=("dss_gold",)), logs.append
  )
  job.annotate()
  with pytest.raises(datasets.errors.UserError) as error:
    job.build_dataset()
  assert str(error.value).startswith(
    "no rationales to distill: 0 of 8 train examples have a parsable "
    "teacher answer"
  )
  assert any(
    "mini_offline train: 0 of 8 examples have a rationale" in x for x in logs
  )


@pytest.fixture(scope="module")
def svamp_tfds(tmp_path_factory, paper_data_dir):
  data_dir = tmp_path_factory.mktemp("tfds")
  datasets.build_annotated(
    "svamp", "palm", data_dir=str(data_dir), paper_data_dir=str(paper_data_dir)
  )
  return data_dir


def _train_args(model_dir, task):
  return [
    "--gin_file=tiny.gin",
    f'--gin.MODEL_DIR="{model_dir}"',
    f'--gin.MIXTURE_OR_TASK_NAME="{task}"',
    "--gin.TRAIN_STEPS=2",
    "--gin.BATCH_SIZE=4",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 96, 'targets': 48}",
    "--gin.trainer.train.peak_flops=1e12",
  ]


@pytest.mark.slow
def test_a_finished_model_dir_refuses_another_task(
  tmp_path, svamp_tfds, run_entry_point, monkeypatch
):
  model_dir = tmp_path / "run"
  done = subprocess.run(
    [
      sys.executable,
      "-m",
      "dss_jax.train",
      *_train_args(model_dir, "dss_svamp_palm"),
    ],
    capture_output=True,
    text=True,
    timeout=600,
    env=_env(TFDS_DATA_DIR=str(svamp_tfds), XLA_FLAGS=""),
  )
  assert done.returncode == 0, done.stderr[-3000:]
  # The refusal comes before anything compiles: in this process.
  monkeypatch.setenv("TFDS_DATA_DIR", str(svamp_tfds))
  other = run_entry_point(
    "dss_jax.train", *_train_args(model_dir, "dss_svamp_palm_label")
  )
  assert other.returncode == 2, other.stderr[-3000:]
  [line] = _errors(other)
  assert (
    f"MODEL_DIR {model_dir} holds a run of another configuration "
    "(MIXTURE_OR_TASK_NAME 'dss_svamp_palm' -> 'dss_svamp_palm_label')"
  ) in line
