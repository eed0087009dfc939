"""The `dss-jax` command lists every entry point, and each one exists."""

import importlib
import subprocess
import sys

import gin
import pytest

from dss_jax import __main__ as cli


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


def test_a_command_shows_its_own_flags():
  # `dss-jax COMMAND` runs the module as `python -m` does, so its help is
  # the command's docstring and flags, not the dispatcher's.
  for command, flag in (
    ("distill", "--task_card"),
    ("grid", "--task_card"),
    ("report", "--results"),
  ):
    out = subprocess.run(
      [sys.executable, "-m", "dss_jax", command, "--helpshort"],
      capture_output=True,
      text=True,
    ).stdout
    assert flag in out and "dispatches" not in out, (command, out[-2000:])


def test_gin_entry_points_take_t5x_style_flags():
  """`dss-jax eval --gin.X=...` reaches gin (and fails on the missing path)."""
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "dss_jax",
      "eval",
      "--gin_file=models/t5_1_1_tiny.gin",
      "--gin_file=runs/eval.gin",
      '--gin.CHECKPOINT_PATH="/nonexistent/model_dir"',
      '--gin.MIXTURE_OR_TASK_NAME="no_such_task"',
    ],
    capture_output=True,
    text=True,
  )
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.strip().splitlines()[-1].startswith("error: ")


def test_gin_entry_points_refuse_stray_arguments():
  for module in ("dss_jax.eval", "dss_jax.infer"):
    out = subprocess.run(
      [sys.executable, "-m", module, "stray"], capture_output=True, text=True
    )
    assert out.returncode == 2, (module, out.stderr[-2000:])
    assert "unexpected arguments: ['stray']" in out.stderr, module


def test_an_unquoted_string_binding_says_to_quote_it():
  from dss_jax import errors, gin_flags

  with pytest.raises(errors.UserError) as error:
    gin_flags.parse_gin(["tiny.gin"], ["MIXTURE_OR_TASK_NAME = dss_svamp_palm"])
  gin.clear_config()
  assert str(error.value) == (
    "gin binding MIXTURE_OR_TASK_NAME=dss_svamp_palm: a string value needs "
    "quotes: --gin.MIXTURE_OR_TASK_NAME='\"dss_svamp_palm\"'"
  )
