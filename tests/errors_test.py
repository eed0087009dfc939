"""User errors end in one `error:` line and exit status 2; bugs keep tracebacks.

Every entry point with a cheap bad input (each fails before anything
compiles), run as `python -m` runs it: one in a real subprocess, the others
in-process as `__main__` (no process start and imports each), plus
in-process checks of the files a user can garble: annotation stores, run
configurations, results CSVs, inference inputs and vocabulary records.
"""

import json
import os
import subprocess
import sys

import pytest

from dss_jax import errors, grid, inference, report, vocab
from dss_jax.teacher import store as store_lib

# This command line runs in a real process (interpreter exit, atexit
# handlers, output after main); the others run in-process as `__main__`.
_IN_A_SUBPROCESS = ["dss_jax.train", "--gin_file=tiny.gin"]


@pytest.mark.parametrize(
  "argv, words",
  [
    (["dss_jax.distill", "--seeds=-1"], "--seeds must be >= 0"),
    (["dss_jax.grid_job", "--model_sizes=giant"], "unknown model size"),
    (
      ["dss_jax.annotate", "--task_card=svamp", "--teacher_concurrency=0"],
      "--teacher_concurrency",
    ),
    (["dss_jax.annotate", "--task_card=no_such_card"], "no such task card"),
    (["dss_jax.train", "--gin_file=no_such.gin"], "--gin_file=no_such.gin"),
    (["dss_jax.train", "--gin_file=tiny.gin"], "MODEL_DIR is REQUIRED"),
    (["dss_jax.eval", "stray"], "unexpected arguments"),
    # The eval config stays open (not finalized): REQUIRED is checked too,
    # and `runs/`, `models/` folders in the working directory (made below)
    # do not hide the shipped gin files of the same names.
    (
      [
        "dss_jax.eval",
        "--gin_file=models/t5_1_1_tiny.gin",
        "--gin_file=runs/eval.gin",
      ],
      "CHECKPOINT_PATH is REQUIRED",
    ),
    (["dss_jax.infer", "--gin_file=bad.gin"], "gin in "),
    (["dss_jax.export"], "--checkpoint and --output_dir are required"),
    (["dss_jax.datasets", "--card=svamp", "--keep=all"], "--keep"),
    (["dss_jax.report", "--results=none.csv"], "no results in none.csv"),
    (["dss_jax", "trian"], "unknown command 'trian'"),
  ],
)
def test_every_entry_point_reports_a_user_error_in_one_line(
  tmp_path, repo_dir, monkeypatch, run_entry_point, argv, words
):
  (tmp_path / "bad.gin").write_text("TRAIN_STEPS = = 3\n")
  (tmp_path / "runs").mkdir()
  (tmp_path / "models").mkdir()
  annotations = str(tmp_path / "annotations")
  if argv == _IN_A_SUBPROCESS:
    proc = subprocess.run(
      [sys.executable, "-m", *argv],
      cwd=tmp_path,
      capture_output=True,
      text=True,
      timeout=240,
      env={
        **os.environ,
        "PYTHONPATH": str(repo_dir),
        "JAX_PLATFORMS": "cpu",
        "DSS_ANNOTATIONS_DIR": annotations,
      },
    )
  else:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DSS_ANNOTATIONS_DIR", annotations)
    proc = run_entry_point(*argv)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
  assert [ln for ln in lines if ln.startswith("error:")] == lines[-1:]
  assert words in lines[-1], lines[-1]
  assert not (tmp_path / "annotations").exists()


def test_user_errors_exit_2_and_bugs_keep_their_traceback(capsys):
  @errors.reports_user_errors
  def user_error(argv):
    raise grid.StaleRunError("run folder x holds another run\nmore detail")

  with pytest.raises(SystemExit) as e:
    user_error(["prog"])
  assert e.value.code == errors.USER_ERROR_STATUS == 2
  assert capsys.readouterr().err == "error: run folder x holds another run\n"

  @errors.reports_user_errors
  def bug(argv):
    raise ValueError("a bug, not the user's")

  with pytest.raises(ValueError, match="a bug"):
    bug(["prog"])


def test_a_garbled_store_line_is_named_not_a_traceback(tmp_path):
  path = tmp_path / "store.jsonl"
  good = {
    "id": "a",
    "prompt_hash": "h",
    "teacher": "t",
    "sample": 0,
    "completion": "x",
  }
  path.write_text(json.dumps(good) + "\n" + '{"id": "b"}\n')
  with pytest.raises(errors.UserError, match=r"store\.jsonl:2: not a comp"):
    store_lib.read_records(path)
  path.write_text(json.dumps(good) + "\n\n[1, 2]\n")
  with pytest.raises(errors.UserError, match=r"store\.jsonl:3: .*list"):
    store_lib.AnnotationStore(path)
  # A torn last line is still a kill's leftover, repaired, not an error.
  path.write_text(json.dumps(good) + "\n" + '{"id": "b", "pro')
  assert len(store_lib.AnnotationStore(path)) == 1


def test_a_garbled_run_config_is_a_stale_run(tmp_path):
  (tmp_path / grid.CONFIG_FILE).write_text('{"train_steps": 5,')
  with pytest.raises(grid.StaleRunError, match="not a run configuration"):
    grid.check_run_config(tmp_path, {"train_steps": 5})


def test_results_csv_errors_name_the_line(tmp_path):
  header = "method,model_size,fraction,seed,metric,value\n"
  path = tmp_path / "results.csv"
  path.write_text(header + "dss,s,1,0,accuracy,0.5\ndss,s,1,1,accuracy,hi\n")
  with pytest.raises(errors.UserError, match=r"results\.csv:3: value 'hi'"):
    report.write_report(path, tmp_path)
  path.write_text("a,b\n1,2\n")
  with pytest.raises(errors.UserError, match="not a results CSV"):
    report.write_report(path, tmp_path)
  path.write_text(header + "dss,s,1,0,accuracy,0.5\n")
  with pytest.raises(errors.UserError, match="--teacher_accuracy"):
    report.write_report(path, tmp_path, teacher_accuracy=57)
  with pytest.raises(errors.MissingFileError, match="no such file"):
    report.write_report(tmp_path / "none.csv", tmp_path)


def test_inference_input_errors_name_the_line(tmp_path):
  path = tmp_path / "in.jsonl"
  path.write_text('{"input": "a"}\n\n{"input": \n')
  with pytest.raises(errors.UserError, match=r"in\.jsonl:3: not JSON"):
    inference.read_input_file(str(path))
  path.write_text('["a"]\n')
  with pytest.raises(errors.UserError, match=r"in\.jsonl:1: a JSON list"):
    inference.read_input_file(str(path))
  path.write_text('{"question": "q"}\n')
  with pytest.raises(errors.UserError, match="do not fit card cqa"):
    inference.read_input_file(str(path), card="cqa")
  with pytest.raises(errors.MissingFileError, match="no such file"):
    inference.read_input_file(str(tmp_path / "none.jsonl"))


def test_a_garbled_vocabulary_record_is_refused(tmp_path):
  (tmp_path / vocab.VOCABULARY_FILE).write_text("{not json")
  with pytest.raises(errors.UserError, match="not a vocabulary record"):
    vocab.read_identity(str(tmp_path))
