"""How every command line starts: absl flags parsed, user errors in one line.

Each entry point (layer 4 of docs/architecture.md) defines its flags when it
starts and hands its absl `main` to `run`:

    if __name__ == "__main__":
      define_flags()
      cli.run(main)

A bad flag, an `app.UsageError` or a `errors.UserError` then ends in one line
`error: ...` and exit status 2; any other exception is a bug and keeps its
traceback (`dss_jax.errors` lists the exit statuses). A command that ends
(done, or with its status) leaves through `exit_process`: what a normal exit
does, without the interpreter's teardown.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn

from absl import app, flags

from dss_jax import errors


def parse_flags(
  argv: Sequence[str],
  rewrite: Callable[[Sequence[str]], Sequence[str]] | None = None,
) -> list[str]:
  """absl's flag parsing, with a bad flag reported in one line (status 2).

  Args:
    argv: the command line.
    rewrite: turns the command line into what absl parses (gin's shorthand).

  Returns:
    The arguments left after the flags.
  """
  try:
    return flags.FLAGS(list(rewrite(argv) if rewrite else argv))
  except flags.Error as e:
    errors.exit_with_error(
      f"{errors.one_line(e)} (--helpshort lists the flags)"
    )
    raise  # unreachable: exit_with_error exits


def run(
  main: Callable[[Sequence[str]], None],
  rewrite: Callable[[Sequence[str]], Sequence[str]] | None = None,
) -> None:
  """`app.run(main)` where user errors end in one line and exit status 2.

  Args:
    main: the entry point's absl `main`.
    rewrite: turns the command line into what absl parses (gin's shorthand).
  """
  try:
    app.run(
      errors.reports_user_errors(main),
      flags_parser=lambda argv: parse_flags(argv, rewrite),
    )
  except SystemExit as stop:  # app.run always ends in sys.exit
    exit_process(stop.code)


def exit_process(code: object = 0) -> NoReturn:
  """Ends the process as `sys.exit(code)` does, without the teardown.

  After its last exit hook, a normal exit tears every module down and runs
  the C++ destructors of TensorFlow and JAX: 1.3-1.5 s of every command
  whose work is done (importing seqio, building a tf.data pipeline and one
  JAX array, then exiting: 6.1 s, against 4.7 s here). This does the steps
  of a normal exit that anything waits for, in the interpreter's order:

    1. waits for every non-daemon thread (an unfinished checkpoint write),
       after the thread pools' own exit hooks have stopped their idle
       workers (`threading._shutdown`, what the interpreter calls);
    2. runs the `atexit` hooks: jax.distributed's shutdown barrier on a
       multi-process job, logging's flush of its files;
    3. flushes stdout and stderr;

  and then leaves with `os._exit`. A bug's traceback does not come here:
  an uncaught exception leaves the normal way.

  Args:
    code: `SystemExit.code`: None or an int status; a message (any other
      object) is printed to stderr and exits 1, as Python does.
  """
  if code is None:
    status = 0
  elif isinstance(code, int):
    status = code
  else:
    print(code, file=sys.stderr)
    status = 1
  threading._shutdown()  # private, as atexit._run_exitfuncs: no public form
  atexit._run_exitfuncs()
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):  # a closed pipe or stream: nothing to keep
      pass
  os._exit(status)


def renamed_flags(
  renames: Mapping[str, str],
) -> Callable[[Sequence[str]], list[str]]:
  """A `rewrite` for `run` that accepts flags under their old names.

  Each old name in use prints one line, `warning: --OLD is deprecated; use
  --NEW`, to stderr; arguments after `--` are left alone.

  Args:
    renames: old flag name -> new flag name.

  Returns:
    The rewrite, which returns the command line with the new names.
  """

  def rewrite(argv: Sequence[str]) -> list[str]:
    out = list(argv[:1])
    warned = set()
    for index, arg in enumerate(argv[1:], start=1):
      if arg == "--":
        out.extend(argv[index:])
        break
      match = re.fullmatch(r"(--?)(\w+)(=.*)?", arg, re.DOTALL)
      if match is None or match.group(2) not in renames:
        out.append(arg)
        continue
      dashes, old, value = match.groups()
      new = renames[old]
      if old not in warned:
        warned.add(old)
        print(f"warning: --{old} is deprecated; use --{new}", file=sys.stderr)
      out.append(f"{dashes}{new}{value or ''}")
    return out

  return rewrite
