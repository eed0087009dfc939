"""The main job end to end on the offline demo card, and its resumability.

Every stage runs for real (offline teacher through the annotation runner, a
TFDS build, SeqIO tasks, the built-in trainer, the evaluator, the report),
with a tiny student and two training steps per run.
"""

import json

import pytest

from dss_jax import grid
from dss_jax.distill import config as job_config
from dss_jax.distill import job as distill_job
from dss_jax.distill import stages, student
from dss_jax.teacher import runner

_PNG = b"\x89PNG\r\n\x1a\n"


def _config(out_dir, **overrides):
  values = dict(
    # Gold labels without rationales, and teacher labels with rationales:
    # between them every data path (gold, teacher label, rationale) runs.
    methods=("finetune", "dss_teacher"),
    model_sizes=("demo-xs",),
    seeds=(0,),
    fractions=(1.0,),
    train_steps=2,
    batch_size=8,
    label_length=4,
    eval_examples=16,
    eval_batch_size=16,
    # Validation at both steps: the picked checkpoint is scored on test too.
    validation_period=1,
    validation_examples=8,
    out_dir=str(out_dir),
    progress=False,
    compilation_cache=False,
    workers=1,
  )
  values.update(overrides)
  return job_config.DistillConfig(**values)


@pytest.mark.slow
def test_every_stage_runs_and_a_rerun_redoes_nothing(tmp_path, monkeypatch):
  # Two worker processes, as the demo trains, and examples at the end; each
  # student 2-way model parallel over the 8 fake devices (a 4 x 2 mesh), its
  # steps accumulated from 2 micro-batches.
  config = _config(
    tmp_path / "out",
    workers=2,
    show_examples=2,
    num_partitions=2,
    microbatches=2,
  )
  logs = []
  paths = distill_job.run(config, log=logs.append)

  out = tmp_path / "out"
  store = out / "annotations" / "arith_offline.jsonl"
  assert len(store.read_text().splitlines()) == 4300  # train + test
  assert (out / "tfds" / "dss_annotated" / "arith_offline" / "1.0.0").is_dir()
  for spec in grid.expand(config.methods, ["demo-xs"], [1.0], [0]):
    directory = grid.run_dir(out, spec)
    result = json.loads((directory / grid.RESULT_FILE).read_text())
    assert result["steps"] == 2 and 0.0 <= result["value"] <= 1.0
    assert 0.0 <= result["value_picked"] <= 1.0
    assert result["picked_step"] in (1, 2)
    assert (
      directory / "best_checkpoints" / str(result["picked_step"])
    ).is_dir()
    scored = (directory / "validation_eval").glob("*-metrics.jsonl")
    assert [json.loads(line)["step"] for f in scored for line in f.open()] == [
      1,
      2,
    ]
    assert result["num_params"] > 0
    assert any((directory / "checkpoints").iterdir())
  assert paths["accuracy_by_method"].read_bytes().startswith(_PNG)
  summary = paths["summary_md"].read_text()
  for title in ("Standard finetuning", "Distilling step-by-step (teacher"):
    assert title in summary
  assert "at the last step" in summary
  assert "checkpoint picked on validation" in summary
  assert "Teacher (few-shot CoT)" in summary
  # The plan beside what the runs took: the offline teacher's dollars, and
  # each method's time per run measured, not a dash.
  assert "## Plan" in summary
  assert "| actual/run |" in summary
  assert "$0.00 (actual $0.00)" in summary
  rows = {
    line.split("|")[1].strip(): line
    for line in summary.splitlines()
    if line.startswith(("| finetune | demo", "| dss_teacher | demo", "| total"))
  }
  assert set(rows) == {"finetune", "dss_teacher", "total"}
  assert "earlier job" not in rows["total"]
  for method in ("finetune", "dss_teacher"):
    assert rows[method].split("|")[7].strip().endswith("s"), rows[method]
  teacher = json.loads(
    (out / "teacher_accuracy_arith_offline_test.json").read_text()
  )
  assert 0.7 < teacher["accuracy"] < 0.95
  assert "checkpoints:" in "\n".join(logs)
  # Each worker's own output went to its log file, not to the terminal.
  assert sorted(p.name for p in (out / "logs").glob("worker*.log")) == [
    "worker1.log",
    "worker2.log",
  ]
  worker_logs = "".join(
    p.read_text() for p in (out / "logs").glob("worker*.log")
  )
  assert "on a mesh of 4 data x 2 model devices, in 2 micro-batch" in (
    worker_logs
  )
  # The dss_teacher student decoded two test examples, each with a
  # rationale line and a label line beside the teacher's.
  shown = "\n".join(logs).split("Test examples, dss_teacher/")[1]
  assert shown.count("   teacher  ") == 2 and shown.count("   student  ") == 2

  def must_not_run(*args, **kwargs):
    raise AssertionError("a finished stage ran again")

  monkeypatch.setattr(student.Student, "run", must_not_run)
  monkeypatch.setattr(runner, "annotate", must_not_run)
  logs.clear()
  again = distill_job.run(config, log=logs.append)
  assert "2/2 runs already finished" in "\n".join(logs)
  assert again["results_csv"].read_text() == paths["results_csv"].read_text()
  # The rerun trained nothing: its total says whose time the rows hold.
  total = next(
    line
    for line in again["summary_md"].read_text().splitlines()
    if line.startswith("| total")
  )
  assert "(2 run(s) trained by an earlier job)" in total


def test_task_names_follow_the_seqio_contract(tmp_path):
  config = _config(tmp_path)
  job = student.Student(config, stages.DataStages(config, log=lambda _: None))
  with pytest.raises(RuntimeError, match="register_tasks"):
    job.task_names("finetune")
  job.register_tasks(config.specs()[0])
  assert job.tasks.rationale == "dss_arith_offline_rationale"
  assert job.task_names("finetune") == ("dss_arith_gold_finetune",) * 2
  assert job.task_names("distill") == ("dss_arith_offline_distill",) * 2
  assert job.task_names("dss_teacher") == (
    "dss_arith_offline",
    "dss_arith_offline_label",
  )


def test_the_demo_trains_baselines_on_all_the_data_only():
  # Distilling step-by-step on 50% and 100%, finetuning on 100%: what the
  # data-efficiency comparison needs, three seeds each.
  specs = job_config.DistillConfig().specs()
  assert sorted({(s.method, s.fraction) for s in specs}) == [
    ("dss_gold", 0.5),
    ("dss_gold", 1.0),
    ("finetune", 1.0),
  ]
  assert len(specs) == 9
  every = job_config.DistillConfig(baseline_fractions=None).specs()
  assert len(every) == 12 and ("finetune", 0.5) in {
    (s.method, s.fraction) for s in every
  }


def test_student_sizes_pad_the_vocabulary():
  config = job_config.student_config("demo", 259, 0.0)
  assert config.vocab_size == 384 and config.emb_dim == 64
  assert job_config.student_config("base", 32100, 0.1).vocab_size == 32128
  with pytest.raises(ValueError, match="backend"):
    job_config.DistillConfig(backend="palm")


def test_a_stopped_run_is_not_marked_finished(tmp_path, monkeypatch, capsys):
  from dss_jax import trainer

  def stopped(**kwargs):
    return trainer.TrainResult(step=1, state=None, metrics={}, preempted=True)

  monkeypatch.setattr(trainer, "train", stopped)
  config = _config(tmp_path, validation_period=0)
  job = student.Student(config, stages.DataStages(config, log=lambda _: None))
  spec = grid.RunSpec("finetune", "demo-xs", 1.0, 0)
  directory = grid.run_dir(tmp_path, spec)
  with pytest.raises(SystemExit) as stop:
    grid.run_grid([spec], job.run, tmp_path, log=lambda _: None)
  assert stop.value.code == 130
  assert capsys.readouterr().err == (
    "error: stopped at step 1 of finetune/demo-xs/frac100/seed0 (checkpoint "
    "saved); rerun the same command to resume\n"
  )
  assert grid.read_result(directory) is None
