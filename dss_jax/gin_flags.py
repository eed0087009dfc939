"""T5X-style gin command lines, shared by every gin-driven entry point.

    python -m dss_jax.train --gin_file=tiny.gin --gin.TRAIN_STEPS=100

`--gin_file` (repeatable), `--gin_bindings` (repeatable), `--gin_search_paths`
and T5X's shorthand `--gin.NAME=value` for `--gin_bindings=NAME=value`. Gin
files are looked up in the current folder, `gin_configs/` (the checkout's, or
the copy an installed wheel ships) and every `--gin_search_paths` folder.
"""

from __future__ import annotations

# gin's include lookup calls importlib.util without importing it.
import importlib.util  # noqa: F401
import os
import sys
from collections.abc import Callable, Sequence

import gin
from absl import app, flags

from dss_jax import resources

# `gin_configs/` of a checkout, or the copy a wheel ships.
GIN_CONFIGS_DIR = resources.gin_configs_dir()


def define_gin_flags(what: str = "gin files to parse, in order") -> None:
  """Defines the gin flags unless they exist.

  Entry points call this before `app.run`, so a process that imports several
  of them (tests, notebooks, `dss-jax`) never defines a flag twice.

  Args:
    what: the help text of `--gin_file`.
  """
  if "gin_file" not in flags.FLAGS:
    flags.DEFINE_multi_string("gin_file", [], f"Gin files: {what}.")
  if "gin_bindings" not in flags.FLAGS:
    flags.DEFINE_multi_string(
      "gin_bindings", [], "Gin bindings, applied after the files."
    )
  if "gin_search_paths" not in flags.FLAGS:
    flags.DEFINE_list(
      "gin_search_paths", [], "Folders to look for gin files and includes."
    )


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
  """Turns T5X's `--gin.NAME=value` into `--gin_bindings=NAME = value`."""
  out = []
  for arg in argv:
    if arg.startswith("--gin.") and "=" in arg:
      name, value = arg[len("--gin.") :].split("=", 1)
      out.append(f"--gin_bindings={name} = {value}")
    else:
      out.append(arg)
  return out


def parse_gin(
  files: Sequence[str],
  bindings: Sequence[str],
  search_paths: Sequence[str] = (),
  finalize: bool = False,
) -> None:
  """Parses gin files, then bindings, with `gin_configs/` searchable.

  Args:
    files: gin files, in order.
    bindings: bindings applied after the files.
    search_paths: more folders to find gin files and their includes in.
    finalize: lock the config. Eval jobs leave it open, since modules they
      import later (vocabularies, task registries) still declare
      configurables.
  """
  for path in [os.getcwd(), str(GIN_CONFIGS_DIR), *search_paths]:
    gin.add_config_file_search_path(path)
  gin.parse_config_files_and_bindings(
    list(files), list(bindings), finalize_config=False
  )
  if finalize:
    gin.finalize()


def parse_gin_flags(finalize: bool = False) -> None:
  """Parses the gin flags of this process's command line."""
  parse_gin(
    flags.FLAGS.gin_file,
    flags.FLAGS.gin_bindings,
    flags.FLAGS.gin_search_paths,
    finalize=finalize,
  )


def run(main: Callable[[Sequence[str]], None], what: str) -> None:
  """`app.run(main)` with the gin flags defined and `--gin.X=` accepted."""
  from dss_jax import host

  host.keep_freed_memory()
  host.add_xla_flag_defaults()
  define_gin_flags(what)
  app.run(main, flags_parser=lambda argv: flags.FLAGS(rewrite_gin_args(argv)))


def cli_main(
  cli: Callable[[Sequence[str], Sequence[str]], int],
) -> Callable[[Sequence[str]], None]:
  """An absl `main` for a `cli(gin_files, gin_bindings)` -> exit status."""

  def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    sys.exit(cli(flags.FLAGS.gin_file, flags.FLAGS.gin_bindings))

  return main
