"""How every command line starts: absl flags parsed, user errors in one line.

Each entry point (layer 4 of docs/architecture.md) defines its flags when it
starts and hands its absl `main` to `run`:

    if __name__ == "__main__":
      define_flags()
      cli.run(main)

A bad flag, an `app.UsageError` or a `errors.UserError` then ends in one line
`error: ...` and exit status 2; any other exception is a bug and keeps its
traceback (`dss_jax.errors` lists the exit statuses).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
  app.run(
    errors.reports_user_errors(main),
    flags_parser=lambda argv: parse_flags(argv, rewrite),
  )
