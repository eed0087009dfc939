"""User errors, and how every command reports them.

Library code raises `UserError` (or a subclass: `cards.CardError`,
`grid.StaleRunError`, `checkpoints.CorruptCheckpointError`, ...) where it
finds input the user can fix: a missing file, an unknown task, a malformed
card, a vocabulary that does not match the checkpoint. Each entry point runs
its absl `main` through `dss_jax.cli.run` (which wraps it with
`reports_user_errors`), so

    python -m dss_jax.eval --gin_file=no_such.gin
    error: --gin_file=no_such.gin: no such gin file here, ...   (status 2)

prints one line and exits with status 2, as do absl flag errors and
`app.UsageError`. Any other exception is a bug and keeps its traceback.

Exit statuses of every command:
  0  done (`train` also after SIGTERM or Ctrl-C saved a checkpoint)
  1  the run stopped on something to look at: a NaN/Inf loss, teacher calls
     left failed (`annotate`, `distill`), a fault of the machine or a server
     (`FaultError`: a teacher answering in the wrong shape, a rate-limit
     wait longer than allowed; `MachineError`: disk full, a read-only
     folder), reported in one line `error: ...`; what was stored is kept
  2  a user error, reported in one line `error: ...`
  130  interrupted (Ctrl-C) where the command keeps its state to resume
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

from absl import app

# The exit status of a user error (argparse's and absl's usage convention).
USER_ERROR_STATUS = 2


class UserError(ValueError):
  """Input the user can fix: the message says what is wrong and what to do."""


class FaultError(Exception):
  """A fault of the machine or a server, not the user's input: the message
  says what happened and what to do; one line and exit status 1."""


# The exit status of a fault of the machine or a server.
FAULT_STATUS = 1


class MissingFileError(UserError, FileNotFoundError):
  """A file or folder the user named (or must provide) does not exist."""


class MachineError(FaultError):
  """A fault of the machine, not the input (disk full, a read-only folder):
  one line, exit status 1; the message says what was kept."""


# A machine fault is a fault: the same status. Ctrl-C: the shell's 128 + SIGINT.
MACHINE_ERROR_STATUS = FAULT_STATUS
INTERRUPTED_STATUS = 130


def one_line(error: BaseException) -> str:
  """The first line of an error's message (gin and TFDS append context)."""
  text = str(error).strip() or type(error).__name__
  return text.splitlines()[0]


def reported(error: BaseException) -> tuple[str, int] | None:
  """(`error: <first line>`, exit status) of a user error or a fault.

  Returns:
    Status 2 for `UserError` and `app.UsageError`, 1 for `FaultError`; None
    for anything else (a bug, which keeps its traceback).
  """
  if isinstance(error, (UserError, app.UsageError)):
    return f"error: {one_line(error)}", USER_ERROR_STATUS
  if isinstance(error, FaultError):
    return f"error: {one_line(error)}", FAULT_STATUS
  return None


def exit_with_error(message: str) -> None:
  """Prints `error: <message>` to stderr and exits with status 2."""
  sys.stdout.flush()
  print(f"error: {message}", file=sys.stderr)
  sys.exit(USER_ERROR_STATUS)


def reports_user_errors(main: Callable[..., Any]) -> Callable[..., Any]:
  """Wraps an absl `main`: user errors become one line and exit status 2.

  Args:
    main: the entry point's `main(argv, ...)`.

  Returns:
    `main`, with `UserError` and `app.UsageError` reported as
    `error: <first line>` on stderr and exit status 2, and `FaultError` the
    same with exit status 1.
  """

  @functools.wraps(main)
  def wrapped(*args: Any, **kwargs: Any) -> Any:
    try:
      return main(*args, **kwargs)
    except (UserError, app.UsageError) as e:
      exit_with_error(one_line(e))
    except FaultError as e:  # MachineError too
      sys.stdout.flush()
      print(f"error: {one_line(e)}", file=sys.stderr)
      sys.exit(FAULT_STATUS)
    except KeyboardInterrupt:
      sys.stdout.flush()
      print(
        "error: interrupted; what finished is kept: rerun the same command "
        "to resume",
        file=sys.stderr,
      )
      sys.exit(INTERRUPTED_STATUS)

  return wrapped
