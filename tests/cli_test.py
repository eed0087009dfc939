"""The `dss-jax` command lists every entry point, and each one exists.

The listing runs as a real `python -m dss_jax`; the commands behind it run
in-process as `__main__` (`run_entry_point` in conftest.py).
"""

import importlib
import os
import subprocess
import sys

import gin
import pytest

from dss_jax import __main__ as cli
from dss_jax import cli as cli_lib


def test_lists_entry_points():
  out = subprocess.run(
    [sys.executable, "-m", "dss_jax"],
    capture_output=True,
    text=True,
    check=True,
  ).stdout
  for name, (module, _) in cli.ENTRY_POINTS.items():
    assert name in out and module in out


def test_unknown_command_fails_with_usage(capsys):
  assert cli.main(["dss-jax", "no-such-command"]) == 2
  assert "unknown command 'no-such-command'" in capsys.readouterr().err


def test_every_entry_point_has_an_absl_main():
  for module, _ in cli.ENTRY_POINTS.values():
    entry = importlib.import_module(module)
    if hasattr(entry, "__path__"):  # a package: its command line is __main__
      entry = importlib.import_module(f"{module}.__main__")
    assert callable(entry.main), module


def test_a_command_shows_its_own_flags(run_entry_point):
  # `dss-jax COMMAND` runs the module as `python -m` does, so its help is
  # the command's docstring and flags, not the dispatcher's.
  for command, flag in (
    ("distill", "--task_card"),
    ("grid", "--task_card"),
    ("report", "--results"),
  ):
    out = run_entry_point("dss_jax", command, "--helpshort").stdout
    assert flag in out and "dispatches" not in out, (command, out[-2000:])


def test_gin_entry_points_take_t5x_style_flags(run_entry_point):
  """`dss-jax eval --gin.X=...` reaches gin (and fails on the missing path)."""
  out = run_entry_point(
    "dss_jax",
    "eval",
    "--gin_file=models/t5_1_1_tiny.gin",
    "--gin_file=runs/eval.gin",
    '--gin.CHECKPOINT_PATH="/nonexistent/model_dir"',
    '--gin.MIXTURE_OR_TASK_NAME="no_such_task"',
  )
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.strip().splitlines()[-1].startswith("error: ")


def test_gin_entry_points_refuse_stray_arguments(run_entry_point):
  for module in ("dss_jax.eval", "dss_jax.infer"):
    out = run_entry_point(module, "stray")
    assert out.returncode == 2, (module, out.stderr[-2000:])
    assert "unexpected arguments: ['stray']" in out.stderr, module


def test_renamed_flags_take_the_old_spelling_with_one_warning(capsys):
  rewrite = cli_lib.renamed_flags({"rpm": "teacher_rpm", "card": "task_card"})
  argv = ["annotate", "--rpm=5", "-card", "cqa", "--tpm=1", "--rpm=6"]
  argv += ["--", "--rpm=7"]
  assert rewrite(argv) == [
    "annotate",
    "--teacher_rpm=5",
    "-task_card",
    "cqa",
    "--tpm=1",
    "--teacher_rpm=6",
    "--",
    "--rpm=7",
  ]
  assert capsys.readouterr().err.splitlines() == [
    "warning: --rpm is deprecated; use --teacher_rpm",
    "warning: --card is deprecated; use --task_card",
  ]


def test_an_unquoted_string_binding_says_to_quote_it():
  from dss_jax import errors, gin_flags

  with pytest.raises(errors.UserError) as error:
    gin_flags.parse_gin(["tiny.gin"], ["MIXTURE_OR_TASK_NAME = dss_svamp_palm"])
  gin.clear_config()
  assert str(error.value) == (
    "gin binding MIXTURE_OR_TASK_NAME=dss_svamp_palm: a string value needs "
    "quotes: --gin.MIXTURE_OR_TASK_NAME='\"dss_svamp_palm\"'"
  )


# A command whose end leaves work to a normal exit: a thread still writing,
# an idle thread pool, an exit hook, stdout without a newline (a pipe is
# block-buffered), and how its main ends. NORMAL=1 ends it with sys.exit.
_ENDING = """\
import atexit, concurrent.futures, os, sys, threading, time
from dss_jax import cli, errors

def main(argv):
  def late():
    time.sleep(0.5)
    with open(os.environ["OUT"], "w") as f:
      f.write("written")
  threading.Thread(target=late).start()
  pool = concurrent.futures.ThreadPoolExecutor(2)
  pool.submit(print, "pooled", file=sys.stderr).result()
  atexit.register(print, "exit hook", file=sys.stderr)
  sys.stdout.write("no newline")
  ending = os.environ["ENDING"]
  if ending == "user error":
    raise errors.UserError("a bad input")
  return eval(ending)

if os.environ["NORMAL"] == "1":
  cli.exit_process = sys.exit
cli.run(main)
"""


@pytest.mark.parametrize(
  "ending,status,stderr",
  [
    ("None", 0, ["pooled", "exit hook"]),
    ("3", 3, ["pooled", "exit hook"]),
    ("'a message'", 1, ["pooled", "a message", "exit hook"]),
    ("user error", 2, ["pooled", "error: a bad input", "exit hook"]),
  ],
)
def test_a_command_ends_as_a_normal_exit_would(
  tmp_path, ending, status, stderr
):
  # cli.exit_process skips only the interpreter's teardown: the same status,
  # output and written file as sys.exit.
  ends = []
  for normal in "10":
    out = tmp_path / f"written{normal}"
    done = subprocess.run(
      [sys.executable, "-c", _ENDING],
      capture_output=True,
      text=True,
      timeout=60,
      env={**os.environ, "OUT": str(out), "ENDING": ending, "NORMAL": normal},
    )
    ends.append(
      (done.returncode, done.stdout, done.stderr.splitlines(), out.read_text())
    )
  assert ends[0] == ends[1] == (status, "no newline", stderr, "written")
