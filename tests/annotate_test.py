"""`python -m dss_jax.annotate` against a local OpenAI-compatible server.

The command runs in-process as `__main__` (`run_entry_point`, conftest.py).

A failed teacher call leaves the command with a non-zero status and one line,
and no dataset is built from an incomplete store unless asked. Values that
pass a flag's bound but mean nothing (nan, an empty split list) are refused
when the flags are parsed.
"""

import pytest
from absl import flags

from dss_jax import annotate
from dss_jax.teacher.testing import FakeTeacherServer


def _answer(prompt: str) -> str:
  del prompt
  return "Add them up. The answer is (1 + 1).\n\nQ: next"


def _annotate(run, server, paper_data_dir, tmp_path, *flags):
  """`python -m dss_jax.annotate`, in-process as `__main__`."""
  return run(
    "dss_jax.annotate",
    "--task_card=svamp",
    "--split=test",
    "--limit=4",
    "--teacher=openai",
    "--teacher_model=test-model",
    f"--teacher_url={server.url}/v1",
    f"--paper_data={paper_data_dir}",
    f"--store={tmp_path / 'store.jsonl'}",
    f"--data_dir={tmp_path / 'tfds'}",
    "--noprogress",
    "--max_retries=1",
    *flags,
  )


def test_failed_calls_stop_the_build_unless_allowed(
  paper_data_dir, tmp_path, monkeypatch, run_entry_point
):
  monkeypatch.setenv("OPENAI_API_KEY", "k")
  run = run_entry_point
  tfds = tmp_path / "tfds"
  with FakeTeacherServer(responder=_answer, script=["empty"]) as server:
    failed = _annotate(run, server, paper_data_dir, tmp_path, "--build_tfds")
  assert failed.returncode != 0
  errors = [ln for ln in failed.stderr.splitlines() if ln.startswith("error:")]
  assert errors == [
    "error: 1 of 4 teacher calls failed (25.0%); rerun the same command to "
    "retry them, or pass --allow_incomplete to build without them"
  ], failed.stderr[-2000:]
  assert "Traceback" not in failed.stderr
  assert not tfds.exists()

  with FakeTeacherServer(responder=_answer, script=["empty"]) as server:
    allowed = _annotate(
      run,
      server,
      paper_data_dir,
      tmp_path,
      "--build_tfds",
      "--allow_incomplete",
    )
    # Only the failed call is made again (and fails again).
    assert server.counts["requests"] == 1
  assert allowed.returncode == 0, allowed.stderr[-2000:]
  assert "building without them" in allowed.stdout
  assert (tfds / "dss_annotated" / "svamp_test_model").is_dir()

  assert _annotated(tfds) == 3

  with FakeTeacherServer(responder=_answer) as server:
    done = _annotate(run, server, paper_data_dir, tmp_path, "--build_tfds")
  assert done.returncode == 0, done.stderr[-2000:]
  assert "1 calls made, 3 already stored, 0 failed" in done.stdout
  # The store changed, so the dataset is rebuilt, not reused.
  assert _annotated(tfds) == 4


def _annotated(tfds_dir) -> int:
  """Test rows of the built dataset that carry a teacher annotation."""
  import tensorflow_datasets as tfds

  path = tfds_dir / "dss_annotated" / "svamp_test_model" / "1.0.0"
  rows = tfds.builder_from_directory(str(path)).as_dataset(split="test")
  return sum(bool(row["teacher"]) for row in rows.as_numpy_iterator())


@pytest.mark.parametrize(
  "flag, words",
  [
    ("--temperature=nan", "--temperature must be a finite number"),
    ("--max_retry_wait=nan", "--max_retry_wait must be a finite number"),
    ("--timeout_s=inf", "--timeout_s must be a finite number"),
    ("--split=", "--split must name one or more splits"),
  ],
)
def test_values_a_bound_lets_through_are_refused_at_the_flag(flag, words):
  flag_values = flags.FlagValues()
  annotate.define_flags(flag_values)
  with pytest.raises(flags.IllegalFlagValueError, match=words):
    flag_values(["annotate", "--task_card=arith", flag])
  # The same flags with ordinary values parse.
  flag_values = flags.FlagValues()
  annotate.define_flags(flag_values)
  flag_values(
    ["annotate", "--task_card=arith", "--temperature=0.5", "--split=a"]
  )
